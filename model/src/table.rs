//! The shared handle table: the layout the shim (in-process) and the
//! supervisor (for the processes it traces) publish, and `handles <pid>`
//! reads while the process runs.
//!
//! One table per process, in a memfd mapped MAP_SHARED by its writer:
//!
//! ```text
//! offset 0   Header (64 bytes)
//! offset 64  Slot[capacity] (32 bytes each), indexed by fd number
//! ```
//!
//! Every field is an atomic, and each slot has a sequence counter (a
//! seqlock: odd while being written), so a reader in another process gets a
//! consistent slot without locks and without stopping the writer. A reader
//! must treat the bytes as hostile: a buggy program can scribble on its own
//! shim's table. [`TableView`] checks everything and never panics.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// `b"HNDLTBL1"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"HNDLTBL1");
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 64;
pub const SLOT_SIZE: usize = 32;
/// Largest table a reader accepts (the kernel's default fs.nr_open).
pub const MAX_CAPACITY: u32 = 1 << 20;

/// Who writes the table.
pub mod writer {
    pub const SHIM: u32 = 1;
    pub const SUPERVISOR: u32 = 2;
}

/// Slot states.
pub mod state {
    pub const FREE: u32 = 0;
    pub const OPEN: u32 = 1;
    /// A closed fd number held by a tombstone (hidden from reports).
    pub const TOMBSTONE: u32 = 2;
    /// An fd the writer uses for itself (hidden from reports).
    pub const INTERNAL: u32 = 3;
}

#[repr(C)]
pub struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub header_size: AtomicU32,
    pub slot_size: AtomicU32,
    pub capacity: AtomicU32,
    pub pid: AtomicU32,
    pub mixer: AtomicU32,
    pub writer: AtomicU32,
    _reserved0: AtomicU32,
    _reserved: [AtomicU64; 3],
}

#[repr(C)]
pub struct Slot {
    pub seq: AtomicU32,
    pub state: AtomicU32,
    pub generation: AtomicU32,
    /// `ObjType` index + 1, 0 when the writer did not classify it.
    pub obj_type: AtomicU32,
    pub koid: AtomicU64,
    pub rights: AtomicU32,
    _reserved: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(core::mem::size_of::<Slot>() == SLOT_SIZE);

/// What a slot held at one consistent moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotValue {
    pub state: u32,
    pub generation: u32,
    pub obj_type: u32,
    pub koid: u64,
    pub rights: u32,
}

/// Bytes a table of `capacity` slots needs.
pub const fn table_size(capacity: u32) -> usize {
    HEADER_SIZE + capacity as usize * SLOT_SIZE
}

impl Header {
    /// Initialises a zeroed header. The magic goes last, so a reader never
    /// sees a valid magic over a half-written header.
    pub fn init(&self, capacity: u32, pid: u32, mixer: u32, writer: u32) {
        self.version.store(VERSION, Ordering::Relaxed);
        self.header_size
            .store(HEADER_SIZE as u32, Ordering::Relaxed);
        self.slot_size.store(SLOT_SIZE as u32, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
        self.mixer.store(mixer, Ordering::Relaxed);
        self.writer.store(writer, Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }
}

impl Slot {
    /// Writes the slot under its sequence counter.
    pub fn write(&self, v: SlotValue) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.state.store(v.state, Ordering::Relaxed);
        self.generation.store(v.generation, Ordering::Relaxed);
        self.obj_type.store(v.obj_type, Ordering::Relaxed);
        self.koid.store(v.koid, Ordering::Relaxed);
        self.rights.store(v.rights, Ordering::Relaxed);
        self.seq.store((s | 1).wrapping_add(1), Ordering::Release);
    }

    /// Reads a consistent value, retrying while a writer is mid-update.
    /// Gives up (None) after `tries` attempts rather than spin forever on a
    /// scribbled counter that stays odd.
    pub fn read(&self, tries: u32) -> Option<SlotValue> {
        for _ in 0..tries {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let v = SlotValue {
                state: self.state.load(Ordering::Relaxed),
                generation: self.generation.load(Ordering::Relaxed),
                obj_type: self.obj_type.load(Ordering::Relaxed),
                koid: self.koid.load(Ordering::Relaxed),
                rights: self.rights.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return Some(v);
            }
        }
        None
    }
}

/// Why a table was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    TooSmall,
    BadMagic,
    BadVersion(u32),
    BadLayout,
    Misaligned,
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TableError::TooSmall => write!(f, "table shorter than its header"),
            TableError::BadMagic => write!(f, "not a handles table (bad magic)"),
            TableError::BadVersion(v) => write!(f, "unsupported table version {v}"),
            TableError::BadLayout => write!(f, "table header describes an impossible layout"),
            TableError::Misaligned => write!(f, "table memory is misaligned"),
        }
    }
}

/// A checked view of a mapped table.
pub struct TableView<'a> {
    header: &'a Header,
    slots: &'a [Slot],
}

impl<'a> TableView<'a> {
    /// Validates `mem` (a mapping of a table, possibly hostile) and returns
    /// a view. Capacity is clamped to what the mapping holds.
    pub fn new(mem: &'a [u8]) -> Result<TableView<'a>, TableError> {
        if mem.len() < HEADER_SIZE {
            return Err(TableError::TooSmall);
        }
        if !(mem.as_ptr() as usize).is_multiple_of(core::mem::align_of::<Header>()) {
            return Err(TableError::Misaligned);
        }
        // SAFETY: the pointer is aligned for Header, the slice holds at
        // least HEADER_SIZE bytes, and Header is all atomics (any bit pattern
        // is valid; concurrent writes are fine).
        let header = unsafe { &*(mem.as_ptr() as *const Header) };
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(TableError::BadMagic);
        }
        let version = header.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(TableError::BadVersion(version));
        }
        if header.header_size.load(Ordering::Relaxed) as usize != HEADER_SIZE
            || header.slot_size.load(Ordering::Relaxed) as usize != SLOT_SIZE
        {
            return Err(TableError::BadLayout);
        }
        let capacity = header.capacity.load(Ordering::Relaxed).min(MAX_CAPACITY) as usize;
        let fits = (mem.len() - HEADER_SIZE) / SLOT_SIZE;
        let n = capacity.min(fits);
        // SAFETY: n slots of SLOT_SIZE bytes follow the header inside mem;
        // the offset keeps 8-byte alignment; Slot is all atomics.
        let slots =
            unsafe { core::slice::from_raw_parts(mem.as_ptr().add(HEADER_SIZE) as *const Slot, n) };
        Ok(TableView { header, slots })
    }

    pub fn mixer(&self) -> u32 {
        self.header.mixer.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> u32 {
        self.header.pid.load(Ordering::Relaxed)
    }

    pub fn writer(&self) -> u32 {
        self.header.writer.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The slot for `fd`; None beyond the table or when it cannot be read
    /// consistently.
    pub fn slot(&self, fd: i32) -> Option<SlotValue> {
        let i = usize::try_from(fd).ok()?;
        self.slots.get(i)?.read(64)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn aligned(len: usize) -> std::vec::Vec<u64> {
        vec![0u64; len.div_ceil(8)]
    }

    fn bytes(v: &[u64]) -> &[u8] {
        // SAFETY: reinterpreting initialised u64s as bytes.
        unsafe { core::slice::from_raw_parts(v.as_ptr().cast(), v.len() * 8) }
    }

    #[test]
    fn write_then_read() {
        let mem = aligned(table_size(8));
        let b = bytes(&mem);
        // SAFETY: b is aligned and large enough; all-atomic layout.
        let header = unsafe { &*(b.as_ptr() as *const Header) };
        header.init(8, 42, 0xabcd_0000, writer::SUPERVISOR);
        let view = TableView::new(b).expect("valid");
        assert_eq!(view.pid(), 42);
        assert_eq!(view.capacity(), 8);
        // SAFETY: 8 slots follow the header inside b.
        let slots =
            unsafe { core::slice::from_raw_parts(b.as_ptr().add(HEADER_SIZE) as *const Slot, 8) };
        slots[3].write(SlotValue {
            state: state::OPEN,
            generation: 7,
            ..SlotValue::default()
        });
        assert_eq!(view.slot(3).map(|s| s.generation), Some(7));
        assert_eq!(view.slot(9), None);
        assert_eq!(view.slot(-1), None);
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let mem = aligned(128);
        assert_eq!(
            TableView::new(&bytes(&mem)[..10]).err(),
            Some(TableError::TooSmall)
        );
        assert_eq!(
            TableView::new(bytes(&mem)).err(),
            Some(TableError::BadMagic)
        );
        let b = bytes(&mem);
        // SAFETY: aligned, large enough, all atomics.
        let header = unsafe { &*(b.as_ptr() as *const Header) };
        header.init(u32::MAX, 1, 0, writer::SHIM);
        // Capacity far beyond the mapping is clamped to what is there.
        assert_eq!(TableView::new(b).map(|v| v.capacity()), Ok(2));
        header.version.store(9, Ordering::Relaxed);
        assert_eq!(TableView::new(b).err(), Some(TableError::BadVersion(9)));
    }

    #[test]
    fn stuck_odd_sequence_gives_up() {
        let mem = aligned(table_size(1));
        let b = bytes(&mem);
        // SAFETY: aligned, large enough, all atomics.
        let header = unsafe { &*(b.as_ptr() as *const Header) };
        header.init(1, 1, 0, writer::SHIM);
        // SAFETY: one slot follows the header.
        let slot = unsafe { &*(b.as_ptr().add(HEADER_SIZE) as *const Slot) };
        slot.seq.store(5, Ordering::Relaxed);
        assert_eq!(TableView::new(b).ok().and_then(|v| v.slot(0)), None);
    }
}
