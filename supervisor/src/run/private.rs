//! A forked child's private table, read in its memory.
//!
//! A forked child that only moves its fds writes its snapshot of its
//! parent's table as its own (private copy-on-write pages; the shim's
//! `state::fork`) and makes no shared table. The snapshot sits at the
//! same address in parent and child, which the parent's table header
//! names (`Header::mirror`); the child still holds that table's fd. A
//! reader rebuilds the part of the table it needs: the parent's header,
//! then the child's slots and records for the fds asked, copied from the
//! child's memory into a zeroed table-sized buffer (allocated lazily, so
//! only the pages written are touched), which the model's checked view
//! then reads like any table.

use handles_model::table::{self, SlotValue};

use super::shimtable::ShimRecord;
use crate::inspect::shared;

pub(super) struct PrivateTable {
    tid: i32,
    at: u64,
    cap: u32,
    words: Vec<u64>,
    /// The child took the snapshot as its table (the copy's header names
    /// it): its slots hold its own writes. Otherwise the child never
    /// wrote, and the snapshot is its parent's table as at the fork.
    own: bool,
    /// The fd bound the child's own creations left in the copy's header
    /// (`Header::fd_bound`).
    bound: u32,
}

impl PrivateTable {
    /// The private table of thread `tid` of process `tgid`, found through
    /// the table it inherited (its parent's, at the fd the shim keeps its
    /// table at); None when it holds none or its parent never forked
    /// through the shim.
    pub(super) fn of(tid: i32, tgid: i32) -> Option<PrivateTable> {
        let (fd, owner) = shared::inherited_table_at_own_fds(tgid)?;
        super::shimtable::read_table(tgid, fd, owner, table::HEADER_SIZE, |view| {
            PrivateTable::from_header(tid, tgid, view)
        })?
    }

    /// The private table of thread `tid` of process `tgid`, a forked
    /// child of the process whose table `parent` is (read through the
    /// child's fd on it).
    pub(super) fn from_header(
        tid: i32,
        tgid: i32,
        parent: &table::TableView,
    ) -> Option<PrivateTable> {
        let at = parent.mirror();
        let cap = parent.header_capacity();
        if at == 0 || cap == 0 || cap > table::MAX_CAPACITY {
            return None;
        }
        // Zeroed words, so the rebuilt table is aligned like a mapping;
        // as lazy as an anonymous mapping (calloc maps fresh zero pages).
        let mut words = vec![0u64; table::table_size(cap).div_ceil(8)];
        let header = parent.header_bytes();
        // SAFETY: our own u64 buffer, at least HEADER_SIZE bytes, as bytes.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), table::HEADER_SIZE)
        };
        dst.copy_from_slice(header);
        // The copy's header: its pid and flags (the rest is unwritten).
        let mut copy = [0u8; table::HEADER_SIZE];
        let read = crate::backtrace::memory::read_partial(tid, at, &mut copy);
        if read.ok() != Some(table::HEADER_SIZE) {
            return None;
        }
        let field = |off: usize, n: usize| copy.get(off..off + n);
        let pid = field(std::mem::offset_of!(table::Header, pid), 4)?;
        let flags = field(std::mem::offset_of!(table::Header, flags), 8)?;
        let pid = u32::from_ne_bytes(pid.try_into().ok()?);
        let flags = u64::from_ne_bytes(flags.try_into().ok()?);
        Some(PrivateTable {
            tid,
            at,
            cap,
            words,
            own: i64::from(pid) == i64::from(tgid),
            bound: table::fd_bound_in(flags).min(cap),
        })
    }

    /// Whether the child wrote the snapshot as its own table (see `own`).
    pub(super) fn is_own(&self) -> bool {
        self.own
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = table::table_size(self.cap);
        // SAFETY: our own zeroed u64 buffer of at least len bytes, as bytes.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    /// Copies `len` bytes at offset `off` of the child's table into ours.
    fn load(&mut self, off: usize, len: usize) -> bool {
        let (tid, at) = (self.tid, self.at);
        let dst = &mut self.bytes()[off..off + len];
        crate::backtrace::memory::read_partial(tid, at + off as u64, dst).is_ok_and(|n| n == len)
    }

    fn index(&self, fd: i32) -> Option<usize> {
        usize::try_from(fd).ok().filter(|&i| i < self.cap as usize)
    }

    /// The child's open slots below the bound its creations noted, read
    /// with one `process_vm_readv`: its leak check's candidates.
    pub(super) fn made_open_slots(&mut self) -> Vec<(i32, SlotValue)> {
        let n = self.bound as usize;
        if n == 0 || !self.load(table::HEADER_SIZE, n * table::SLOT_SIZE) {
            return Vec::new();
        }
        let bytes = &self.bytes()[..];
        table::TableView::new(bytes)
            .map(|view| super::shimtable::open_slots_in(&view, 0..n as i32))
            .unwrap_or_default()
    }

    /// The child's slot for `fd` with its records.
    pub(super) fn record(&mut self, fd: i32) -> Option<ShimRecord> {
        let i = self.index(fd)?;
        let cap = self.cap;
        let parts = [
            (table::HEADER_SIZE + i * table::SLOT_SIZE, table::SLOT_SIZE),
            (
                table::stacks_offset(cap) + i * table::STACKS_SIZE,
                table::STACKS_SIZE,
            ),
            (
                table::py_offset(cap) + i * table::PY_STACKS_SIZE,
                table::PY_STACKS_SIZE,
            ),
            (
                table::earlier_offset(cap) + i * table::EARLIER_SIZE,
                table::EARLIER_SIZE,
            ),
        ];
        for (off, len) in parts {
            if !self.load(off, len) {
                return None;
            }
        }
        let bytes = &self.bytes()[..];
        let view = table::TableView::new(bytes).ok()?;
        let (d, c, x) = view.detail_py(fd)?;
        Some((d, (c, x), view.earlier(fd)))
    }
}
