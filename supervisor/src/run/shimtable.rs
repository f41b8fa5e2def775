//! The shim's table, as the supervisor sees and updates it.
//!
//! Calls the shim makes carry the job's cookie and never stop at the
//! supervisor, so for the fds they create and close the supervisor's own
//! model knows nothing: the shim's table (a memfd in the process, named
//! `handles-table:<pid>`, layout `handles_model::table`) is the truth for
//! them. The shim announces the table once it has made it (an `fcntl`
//! whose cookie register holds the `marker::ANNOUNCE` marker, see
//! [`is_announcement`]); the supervisor maps it read-write from
//! /proc/PID/fd and from then on:
//!
//! - reads it for every fd its own model has no answer for (a tombstone
//!   there is a closed handle, with the shim's stacks and the name and
//!   call it was made by);
//! - writes into it what it catches itself (libc-internal and raw
//!   syscalls, static parts): new handles, its tombstones, its tombstone
//!   source, real closes. So one table per process holds every handle,
//!   values and generations agree between the shim, the supervisor's
//!   reports and `handles <pid>`, and the shim sees the supervisor's
//!   tombstones (a use of one goes to the supervisor, which reports it).
//!
//! Writes take the slot's sequence lock exactly as the shim does. The
//! memory is the program's: it may be scribbled on, so every read is
//! checked and a lock held too long is stolen rather than waited for.

use std::os::fd::OwnedFd;

use handles_model::protocol::{self, Message};
use handles_model::table::{self, how, state, EarlierRecord, Name, PyStack, SlotDetail, SlotValue};
use handles_model::ObjType;

use crate::inspect::shared::{sealed_against_shrinking, MappedTable};

/// Lock spins before a held slot lock is stolen: the shim holds it for
/// one syscall; a holder that is stopped or dead must not stop us.
const LOCK_SPINS: u32 = 100_000;

/// A shim's announced table, mapped at its first use: most processes
/// never need it mapped (a short-lived process under the lenient filter
/// has no stop between the announcement and its exit), and mapping,
/// checking and unmapping a table cost every process ~60 µs of /proc
/// lookup, page faults and a TLB flush.
pub(super) struct ShimTable {
    tgid: i32,
    fd: i32,
    mapped: std::cell::OnceCell<Option<MappedTable>>,
    /// The supervisor's model of the process has taken this table's
    /// mixer (see `Job::sync_shim`).
    pub(super) synced: std::cell::Cell<bool>,
}

/// A closed handle's record in the shim's table: the slot, its Python
/// records, and the handle the number held before it.
pub(super) type ShimRecord = (SlotDetail, PyRecords, Option<EarlierRecord>);

/// What the shim's table says of an fd.
pub(super) enum ShimSays {
    /// Open, at this generation.
    Open(u32),
    /// Closed by the program through the shim (quarantined there).
    Tombstone(Box<ShimRecord>),
    /// One of the shim's own fds (its table, its tombstone source).
    Internal,
    /// Closed through the shim without a tombstone (stdio, which is never
    /// quarantined, or a full quarantine): its record says what it was.
    Closed(Box<ShimRecord>),
    /// Not open as far as the shim knows.
    Free,
    /// No table, or a slot that cannot be read.
    Unknown,
}

/// What the supervisor knows of one fd it changed, to write into the
/// shim's table.
pub(super) enum Update<'a> {
    /// A handle the supervisor saw created (or found open).
    Open {
        how: u32,
        ty: Option<ObjType>,
        name: &'a str,
        created: &'a [u64],
    },
    /// Closed by a call the supervisor caught, and quarantined.
    Tombstone { generation: u32, closed: &'a [u64] },
    /// The supervisor's tombstone source.
    Internal,
    /// Closed for real (or a tombstone released) by the supervisor.
    Free,
}

/// Is this syscall the shim's announcement of its table
/// ([`Message::Announce`])?
pub(super) fn is_announcement(nr: i64, a: &[u64; 6], cookie: u64) -> bool {
    matches!(
        Message::decode(nr, a, cookie),
        Some(Message::Announce { .. })
    )
}

/// The marker tag a call carries in its cookie register, if any: the
/// shim's word that it judged the call itself (CHECK, PROXY, HELD).
pub(super) fn marker_of(nr: i64, a: &[u64; 6], cookie: u64) -> Option<u32> {
    protocol::marker_of(nr, a, cookie)
}

/// What the shim says of a close its judge held (`marker::HOLD`,
/// `HELD_RAISE`, `HELD_DROP`) or of a number it gives back (`RELEASE`),
/// carried by an fstat that does not run.
pub(super) struct HeldByShim {
    pub(super) tag: u32,
    pub(super) fd: i32,
    /// HOLD: the held call and its stack, in the tracee's memory.
    pub(super) nr: i64,
    pub(super) pcs: u64,
    pub(super) n: usize,
}

pub(super) fn held_by_shim(nr: i64, a: &[u64; 6], cookie: u64) -> Option<HeldByShim> {
    use table::marker::{HELD_DROP, HELD_RAISE, HOLD, RELEASE};
    let held = |tag, fd| HeldByShim {
        tag,
        fd,
        nr: 0,
        pcs: 0,
        n: 0,
    };
    Some(match Message::decode(nr, a, cookie)? {
        Message::Hold { fd, nr, pcs, n } => HeldByShim {
            tag: HOLD,
            fd,
            nr,
            pcs,
            n,
        },
        Message::HeldRaise { fd } => held(HELD_RAISE, fd),
        Message::HeldDrop { fd } => held(HELD_DROP, fd),
        Message::Release { fd } => held(RELEASE, fd),
        Message::Announce { .. } | Message::Proxy { .. } => return None,
    })
}

/// The call a shim proxy stands for ([`Message::Proxy`]): the shim handing
/// on a bad six-argument call on an fd (no register was free for a
/// marker). Returns the call's description and arguments that put the fd
/// where it takes it, for the checks and the report; the fstat itself is
/// what runs.
pub(super) fn proxied(
    nr: i64,
    a: &[u64; 6],
    cookie: u64,
) -> Option<(&'static handles_model::syscalls::Desc, [u64; 6])> {
    match Message::decode(nr, a, cookie)? {
        Message::Proxy { fd, nr } => protocol::proxied_call(nr, fd),
        _ => None,
    }
}

impl ShimTable {
    /// The table the shim of process `tgid` announced at `fd`; nothing is
    /// opened or mapped until it is used.
    pub(super) fn announced(tgid: i32, fd: i32) -> ShimTable {
        ShimTable {
            tgid,
            fd,
            mapped: std::cell::OnceCell::new(),
            synced: std::cell::Cell::new(false),
        }
    }

    /// The mapped table; None when the announced fd is not a shim's table
    /// of this process (a program playing games with the announcement).
    pub(super) fn table(&self) -> Option<&MappedTable> {
        self.mapped
            .get_or_init(|| {
                // Found at its first number during the shim's start-up
                // (a stop there, where every creating call stops), the
                // table may have moved to the shim's own number since, and
                // the first one been given to the program.
                map_announced(self.tgid, self.fd).or_else(|| {
                    crate::inspect::shared::own_table_fd(self.tgid)
                        .filter(|&fd| fd != self.fd)
                        .and_then(|fd| map_announced(self.tgid, fd))
                })
            })
            .as_ref()
    }

    /// The table's mixer. Until something needs the slots it is read
    /// from the header alone (one pread), not from a mapping: each
    /// mapping's munmap at exit flushed the TLBs of every CPU the
    /// supervisor had run on, an IPI that cost ~150 µs on a VM, and a
    /// fork's sync needs only the mixer.
    pub(super) fn mixer(&self) -> Option<u32> {
        match self.mapped.get() {
            Some(m) => m.as_ref()?.view().ok().map(|v| v.mixer()),
            None => announced_header_mixer(self.tgid, self.fd),
        }
    }

    /// Whether the shim holds `fd` open as a handle the image inherited
    /// (registered by its constructor, not made since).
    pub(super) fn holds_inherited(&self, fd: i32) -> bool {
        let Some(view) = self.table().and_then(|m| m.view().ok()) else {
            return false;
        };
        view.slot(fd)
            .is_some_and(|v| v.state == state::OPEN && how::base(v.how) == how::INHERITED)
    }

    pub(super) fn says(&self, fd: i32) -> ShimSays {
        let Some(Ok(view)) = self.table().map(|m| m.view()) else {
            return ShimSays::Unknown;
        };
        // Every checked call asks: read the 32-byte slot, and the stack
        // record (320 bytes) only for the tombstone a report needs.
        match view.slot(fd) {
            Some(v) if v.state == state::OPEN => ShimSays::Open(v.generation),
            Some(v) if v.state == state::TOMBSTONE => match view.detail_py(fd) {
                Some((d, c, x)) if d.value.state == state::TOMBSTONE => {
                    ShimSays::Tombstone(Box::new((d, (c, x), view.earlier(fd))))
                }
                _ => ShimSays::Unknown,
            },
            Some(v) if v.state == state::INTERNAL => ShimSays::Internal,
            Some(v)
                if v.state == state::FREE
                    && (v.generation > 0 || how::base(v.how) != how::UNKNOWN) =>
            {
                match view.detail_py(fd) {
                    Some((d, c, x)) if d.value.state == state::FREE => {
                        ShimSays::Closed(Box::new((d, (c, x), view.earlier(fd))))
                    }
                    _ => ShimSays::Free,
                }
            }
            Some(v) if v.state == state::FREE => ShimSays::Free,
            _ => ShimSays::Unknown,
        }
    }

    /// Which of `fds` (the numbers open in the kernel) the shim holds open,
    /// with their slots only: a caller reads the records of those it
    /// keeps ([`ShimTable::records`]).
    pub(super) fn open_slots(&self, fds: &[i32]) -> Vec<(i32, SlotValue)> {
        if self.mapped.get().is_none() {
            if let Some(v) = announced_open_slots(self.tgid, self.fd, fds) {
                return v;
            }
        }
        let Some(Ok(view)) = self.table().map(|m| m.view()) else {
            return Vec::new();
        };
        open_slots_in(&view, fds.iter().copied())
    }

    /// The slots the table's writers made handles at that are open
    /// (below the header's fd bound): a leak check's candidates, found
    /// without listing `/proc/PID/fd`.
    pub(super) fn made_open_slots(&self) -> Vec<(i32, SlotValue)> {
        if self.mapped.get().is_none() {
            if let Some(v) = announced_made_open_slots(self.tgid, self.fd) {
                return v;
            }
        }
        let Some(Ok(view)) = self.table().map(|m| m.view()) else {
            return Vec::new();
        };
        open_slots_in(&view, 0..view.fd_bound() as i32)
    }

    /// The records of `fd`: its slot, stacks and name, and Python records.
    pub(super) fn records(&self, fd: i32) -> Option<(SlotDetail, PyRecords)> {
        let view = self.table()?.view().ok()?;
        let (d, c, x) = view.detail_py(fd)?;
        Some((d, (c, x)))
    }

    /// Which of `fds` (the numbers open in the kernel) the shim holds open,
    /// with their records. Asking only for those keeps this cheap in a
    /// table with a million slots.
    pub(super) fn open_fds(&self, fds: &[i32]) -> Vec<(i32, SlotDetail, PyRecords)> {
        let Some(Ok(view)) = self.table().map(|m| m.view()) else {
            return Vec::new();
        };
        fds.iter()
            .copied()
            .filter_map(|fd| {
                let (d, c, x) = view.detail_py(fd)?;
                (d.value.state == state::OPEN).then_some((fd, d, (c, x)))
            })
            .collect()
    }

    /// Writes what the supervisor knows of `fd`; returns the generation
    /// the slot holds afterwards (the supervisor takes it over, so that
    /// its handle values are the shim's), None when the slot is out of
    /// the table.
    pub(super) fn update(&self, fd: i32, u: &Update) -> Option<u32> {
        let view = self.table()?.view().ok()?;
        let (slot, stacks) = view.cells(fd)?;
        let l = slot.lock(LOCK_SPINS);
        let old = slot.load(&l);
        let generation = match u {
            Update::Open {
                how,
                ty,
                name,
                created,
            } => {
                if old.state == state::OPEN {
                    // The shim has it already (it was there first, or
                    // adopted it): same handle, same value.
                    old.generation
                } else if old.state == state::TOMBSTONE {
                    // A creation this supervisor confirms late (at the
                    // thread's next stop), which the shim has closed since:
                    // the number is its tombstone now (a new handle cannot
                    // get a number a tombstone holds). Found by fopen
                    // under --strict: libc's openat stops, the shim's
                    // close of that fd does not, and the stale write made
                    // the next use of the closed number look fine.
                    old.generation
                } else {
                    let g = old.generation.wrapping_add(1);
                    view.note_fd(fd);
                    slot.store(
                        &l,
                        SlotValue {
                            state: state::OPEN,
                            generation: g,
                            obj_type: ty.map_or(0, table::obj_type_code),
                            koid: 0,
                            rights: 0,
                            how: *how,
                        },
                    );
                    // The supervisor's stacks carry Python frames as tagged
                    // words; the table keeps them in its Python area.
                    let (native, py) = crate::backtrace::python::decode(created);
                    stacks.set_created(&l, &native);
                    stacks.set_name(&l, name.as_bytes());
                    if let Some(cell) = view.py_cell(fd) {
                        if !py.is_empty() {
                            view.note_python();
                        }
                        cell.set_created(&l, &py[..py.len().min(table::PY_DEPTH)]);
                    }
                    g
                }
            }
            Update::Tombstone { generation, closed } => {
                slot.store(
                    &l,
                    SlotValue {
                        state: state::TOMBSTONE,
                        generation: *generation,
                        ..old
                    },
                );
                let (native, py) = crate::backtrace::python::decode(closed);
                stacks.set_closed(&l, &native);
                if let Some(cell) = view.py_cell(fd) {
                    if !py.is_empty() {
                        view.note_python();
                    }
                    cell.set_closed(&l, &py[..py.len().min(table::PY_DEPTH)]);
                }
                *generation
            }
            Update::Internal => {
                slot.store(
                    &l,
                    SlotValue {
                        state: state::INTERNAL,
                        ..old
                    },
                );
                old.generation
            }
            Update::Free => {
                if matches!(old.state, state::OPEN | state::TOMBSTONE) {
                    slot.store(
                        &l,
                        SlotValue {
                            state: state::FREE,
                            ..old
                        },
                    );
                }
                old.generation
            }
        };
        slot.unlock(l);
        Some(generation)
    }
}

/// Opens, read-write, what the shim of process `tgid` announced at `fd`,
/// if it is a file sealed against shrinking.
fn open_announced(tgid: i32, fd: i32) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    // The program names the fd: it must not be able to make us block
    // (a FIFO) or lose mapped pages (a file it can truncate).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/{tgid}/fd/{fd}"))
        .ok()?;
    let f = OwnedFd::from(f);
    sealed_against_shrinking(&f).then_some(f)
}

/// Whether a checked view is the table of process `tgid` written by a
/// shim: anything else is a program playing games with the announcement.
fn is_shims_table_of(view: &table::TableView<'_>, tgid: i32) -> bool {
    view.pid() == tgid as u32 && view.writer() == table::writer::SHIM
}

/// Maps, read-write, the table the shim of process `tgid` announced at
/// `fd`, if it is one.
fn map_announced(tgid: i32, fd: i32) -> Option<MappedTable> {
    let mapped = MappedTable::map_rw(&open_announced(tgid, fd)?)?;
    is_shims_table_of(&mapped.view().ok()?, tgid).then_some(mapped)
}

/// The mixer in the header of the table the shim of process `tgid`
/// announced at `fd`, read without mapping it, if it is one.
fn announced_header_mixer(tgid: i32, fd: i32) -> Option<u32> {
    read_announced(tgid, fd, table::HEADER_SIZE, |view| view.mixer())
}

/// The slots among `fds` that `view` has open.
pub(super) fn open_slots_in(
    view: &table::TableView<'_>,
    fds: impl IntoIterator<Item = i32>,
) -> Vec<(i32, SlotValue)> {
    fds.into_iter()
        .filter_map(|fd| {
            view.slot(fd)
                .filter(|v| v.state == state::OPEN)
                .map(|v| (fd, v))
        })
        .collect()
}

/// Reads the first `len` bytes (at least the header) of the table the
/// shim of process `tgid` announced at `fd` with one `pread`, no mapping,
/// and hands `f` a view of them if they are that shim's table.
fn read_announced<T>(
    tgid: i32,
    fd: i32,
    len: usize,
    f: impl FnOnce(&table::TableView<'_>) -> T,
) -> Option<T> {
    read_table(tgid, fd, tgid, len, f)
}

/// [`read_announced`] for the table of process `owner` that process
/// `holder` holds at `fd` (a forked child's parent's).
pub(super) fn read_table<T>(
    holder: i32,
    fd: i32,
    owner: i32,
    len: usize,
    f: impl FnOnce(&table::TableView<'_>) -> T,
) -> Option<T> {
    use std::os::fd::AsRawFd;
    let file = open_announced(holder, fd)?;
    // u64s: the header's and the slots' alignment.
    let mut buf = vec![0u64; len.div_ceil(8)];
    // SAFETY: pread into a local buffer of at least len bytes.
    let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), len, 0) };
    if n < table::HEADER_SIZE as isize {
        return None;
    }
    // SAFETY: the first n bytes of buf, initialised, viewed as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
    let view = table::TableView::new(bytes).ok()?;
    is_shims_table_of(&view, owner).then(|| f(&view))
}

/// The open slots among `fds` of the table the shim of process `tgid`
/// announced at `fd`, read with one `pread` (the header and the slots up
/// to the highest fd asked) instead of a mapping: a leak check at exit
/// mostly finds nothing to read records of, and the mapping's `munmap`
/// would flush the TLBs of every CPU the supervisor ran on (an IPI).
/// None when it cannot be read that way (the caller maps it).
fn announced_open_slots(tgid: i32, fd: i32, fds: &[i32]) -> Option<Vec<(i32, SlotValue)>> {
    let Some(max) = fds.iter().copied().filter(|&f| f >= 0).max() else {
        return Some(Vec::new());
    };
    let len = slots_len(max as usize + 1)?;
    read_announced(tgid, fd, len, |view| {
        open_slots_in(view, fds.iter().copied())
    })
}

/// [`ShimTable::made_open_slots`] with `pread`s, no mapping: the header
/// and the first page of slots, then the rest below the bound if there
/// is more. None when the table cannot be read that way.
fn announced_made_open_slots(tgid: i32, fd: i32) -> Option<Vec<(i32, SlotValue)>> {
    const FIRST: usize = 4096;
    let fits = (FIRST - table::HEADER_SIZE) / table::SLOT_SIZE;
    let (bound, first) = read_announced(tgid, fd, FIRST, |view| {
        let bound = view.fd_bound() as usize;
        (bound, open_slots_in(view, 0..bound.min(fits) as i32))
    })?;
    if bound <= fits {
        return Some(first);
    }
    read_announced(tgid, fd, slots_len(bound)?, |view| {
        open_slots_in(view, 0..bound as i32)
    })
}

/// Bytes of a table's header and first `n` slots, which one `pread`
/// reads; None past 1 MiB (the table is mapped instead).
fn slots_len(n: usize) -> Option<usize> {
    let len = table::HEADER_SIZE + n * table::SLOT_SIZE;
    (len <= 1 << 20).then_some(len)
}

/// Will the image process `tgid` just exec'd load the
/// shim at `shim`? It does when its LD_PRELOAD (`preload`) names it, it is
/// dynamically linked by glibc's loader (the auxiliary vector has an
/// interpreter base) and not set-ID (AT_SECURE; the shim also stays out
/// of images the kernel ran without their privileges, but it says so
/// with no announcement, which only leaves quarantine on). `info`, the
/// exec stop's initial stack, answers without /proc when it could be read;
/// `glibc_at` then says whether the loader at a base is glibc's (the
/// caller keeps the answer per image file, `images.rs`).
pub(super) fn will_load(
    tgid: i32,
    shim: &std::path::Path,
    preload: Option<&[u8]>,
    info: Option<&super::execinfo::ExecInfo>,
    mut glibc_at: impl FnMut(u64) -> bool,
) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let want = shim.as_os_str().as_bytes();
    let preloads = preload.is_some_and(|v| v.split(|&b| b == b':' || b == b' ').any(|p| p == want));
    if !preloads {
        return false;
    }
    let (base, secure) = match info {
        Some(i) => (i.auxv(libc::AT_BASE), i.auxv(libc::AT_SECURE)),
        None => match super::procfs::Auxv::read(tgid) {
            Some(a) => (a.get(libc::AT_BASE), a.get(libc::AT_SECURE)),
            None => return false,
        },
    };
    let base = base.unwrap_or(0);
    if base == 0 || secure.unwrap_or(1) != 0 {
        return false;
    }
    match info {
        Some(_) => glibc_at(base),
        None => glibc_loader_at(tgid, base),
    }
}

/// Whether the dynamic loader mapped at `base` is glibc's, the only one
/// that can load the shim (musl's honours LD_PRELOAD too, but the shim
/// links against glibc and would not load).
fn glibc_loader_at(tgid: i32, base: u64) -> bool {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
        return false;
    };
    let start = format!("{base:x}-");
    maps.lines()
        .find(|l| l.starts_with(&start))
        .and_then(|l| l.rsplit('/').next())
        .is_some_and(|name| name.starts_with("ld-linux-x86-64.so"))
}

/// Where a handle of a shim record came from, in the supervisor's terms
/// (a record with no `how` is simply "made through the shim").
pub(super) fn origin_of(code: u32) -> super::fdtable::Origin {
    use super::fdtable::Origin;
    match how::base(code) {
        how::INHERITED => Origin::Inherited,
        how::RECEIVED => Origin::Received,
        how::ADOPTED => Origin::Discovered,
        c => how::syscall_nr(c)
            .and_then(|nr| handles_model::syscalls::lookup(i64::from(nr)))
            .map_or(Origin::Shim, |d| Origin::Syscall(d.name)),
    }
}

/// A slot's Python records (creation, close): empty outside CPython.
pub(super) type PyRecords = (PyStack, PyStack);

/// A shim stack record as the symbolizer wants it: return addresses, so
/// frame 0 is pointed into its call instruction; the Python frames
/// recorded with it follow as tagged words (backtrace/python.rs).
pub(super) fn call_stack(pcs: &[u64], py: &PyStack) -> Option<super::fdtable::Stack> {
    (!pcs.is_empty()).then(|| {
        let mut v = pcs.to_vec();
        v[0] = v[0].saturating_sub(1);
        crate::backtrace::python::encode(py.frames(), &mut v);
        std::sync::Arc::new(v)
    })
}

/// A tombstone of the shim's table of process `tgid` (which made and
/// closed it), as the supervisor remembers a closed handle for reports.
pub(super) fn closed_handle(
    tgid: i32,
    d: &SlotDetail,
    py: &PyRecords,
    earlier: Option<&EarlierRecord>,
) -> super::fdtable::ClosedHandle {
    let (ty, target) = object_of(tgid, d);
    super::fdtable::ClosedHandle {
        generation: d.value.generation,
        origin: origin_of(d.value.how),
        created: call_stack(d.created.frames(), &py.0),
        closed: call_stack(d.closed.frames(), &py.1),
        creator: tgid,
        closer: tgid,
        facts: super::fdtable::ObjectFacts {
            ty,
            koid: d.value.koid,
            target,
        },
        how: "close()",
        earlier: earlier
            .filter(|e| e.generation != d.value.generation)
            .map(|e| Box::new(earlier_handle(tgid, e))),
    }
}

/// The handle a shim slot held before its last one, as the supervisor
/// remembers a closed handle (no creation stack: the shim keeps only the
/// innermost frames of its close).
fn earlier_handle(tgid: i32, e: &EarlierRecord) -> super::fdtable::ClosedHandle {
    let d = SlotDetail {
        value: SlotValue {
            obj_type: e.obj_type,
            koid: e.koid,
            ..SlotValue::default()
        },
        name: e.name,
        ..SlotDetail::default()
    };
    let (ty, target) = object_of(tgid, &d);
    super::fdtable::ClosedHandle {
        generation: e.generation,
        origin: super::fdtable::Origin::Shim,
        created: None,
        closed: call_stack(e.closed.frames(), &e.py_closed),
        creator: tgid,
        closer: tgid,
        facts: super::fdtable::ObjectFacts {
            ty,
            koid: e.koid,
            target,
        },
        how: "close()",
        earlier: None,
    }
}

/// What a shim record says the object was: its type name and its name.
/// The shim does not stat what it opens (that would cost every open a
/// syscall), so for a handle opened by path with no type from the call,
/// the path is looked up now, as process `tgid` sees it (through its
/// /proc/PID/root): a report says "chardev /dev/null", not "file". A path
/// that is gone (or unreachable) leaves it a file.
pub(super) fn object_of(tgid: i32, d: &SlotDetail) -> (&'static str, String) {
    use std::os::unix::fs::FileTypeExt;
    let name = name_text(&d.name);
    let ty = match table::obj_type_from_code(d.value.obj_type) {
        Some(t) => t,
        None if name.starts_with("memfd:") => ObjType::Vmo,
        None if name.starts_with('/') => {
            match std::fs::metadata(format!("/proc/{tgid}/root{name}")).map(|m| m.file_type()) {
                Ok(t) if t.is_dir() => ObjType::Dir,
                Ok(t) if t.is_char_device() => ObjType::Chardev,
                Ok(t) if t.is_block_device() => ObjType::Blockdev,
                Ok(t) if t.is_fifo() => ObjType::Pipe,
                _ => ObjType::File,
            }
        }
        None if !name.is_empty() => ObjType::File,
        None => return ("", name),
    };
    (ty.name(), name)
}

fn name_text(n: &Name) -> String {
    String::from_utf8_lossy(n.as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    /// A memfd in this process holding a table header with these fields,
    /// sealed against shrinking or not.
    fn table_file(pid: u32, mixer: u32, writer: u32, seal: bool) -> OwnedFd {
        // SAFETY: memfd_create with a NUL-terminated name; owned right away.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: fresh fd, ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = table::table_size(64);
        // SAFETY: ftruncate of our own memfd.
        let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
        assert_eq!(r, 0);
        // SAFETY: a fresh shared mapping of the memfd, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: the mapping starts with HEADER_SIZE writable bytes,
        // page-aligned; Header is all atomics.
        unsafe { &*(base as *const table::Header) }.init(64, pid, mixer, writer);
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(base, len) };
        if seal {
            // SAFETY: F_ADD_SEALS on our own memfd.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(r, 0);
        }
        fd
    }

    /// What the header read and the mapping say of the same file, as
    /// this process's table.
    fn both(fd: &OwnedFd) -> (Option<u32>, Option<u32>) {
        let me = std::process::id() as i32;
        let fd = fd.as_raw_fd();
        let mapped = map_announced(me, fd).and_then(|m| m.view().ok().map(|v| v.mixer()));
        (announced_header_mixer(me, fd), mapped)
    }

    #[test]
    fn the_header_read_accepts_and_refuses_what_the_mapping_does() {
        let me = std::process::id();
        let good = table_file(me, 0xabc, table::writer::SHIM, true);
        assert_eq!(both(&good), (Some(0xabc), Some(0xabc)));
        let no_magic = table_file(me, 1, table::writer::SHIM, true);
        // SAFETY: a memfd we own, written at offset 0.
        let n = unsafe { libc::pwrite(no_magic.as_raw_fd(), [0u8; 8].as_ptr().cast(), 8, 0) };
        assert_eq!(n, 8);
        for (what, f) in [
            (
                "supervisor's",
                table_file(me, 1, table::writer::SUPERVISOR, true),
            ),
            (
                "another pid's",
                table_file(me + 1, 1, table::writer::SHIM, true),
            ),
            ("unsealed", table_file(me, 1, table::writer::SHIM, false)),
            ("no magic", no_magic),
        ] {
            assert_eq!(both(&f), (None, None), "{what}");
        }
    }
}
