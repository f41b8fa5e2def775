//! The shared handle table: the layout the shim (in-process) and the
//! supervisor (for the processes it traces) publish, and `handles <pid>`
//! reads while the process runs.
//!
//! One table per process, in a memfd mapped MAP_SHARED by its writer:
//!
//! ```text
//! offset 0                      Header (64 bytes)
//! offset 64                     Slot[capacity] (32 bytes each), indexed by fd
//! offset 64 + 32 * capacity     SlotStacks[capacity] (1088 bytes each)
//! ```
//!
//! Every field is an atomic, and each slot has a sequence counter (a
//! seqlock: odd while being written), so a reader in another process gets a
//! consistent slot without locks and without stopping the writer. A slot's
//! stacks (the return addresses of the calls that created and closed the
//! fd, [`STACK_DEPTH`] each, 0-terminated) are written under the same
//! counter, so a slot and its stacks are read as one snapshot. The counter
//! also serialises writers: [`Slot::lock`] takes it from even to odd with a
//! compare-and-swap, so two threads of one process that race on one fd
//! number cannot interleave their writes.
//!
//! A reader must treat the bytes as hostile: a buggy program can scribble on
//! its own shim's table. [`TableView`] checks everything and never panics.
//!
//! Version 2 added the stack area (version 1 had slots only). Version 3
//! added how each handle was made (`Slot::how`) and the name it was
//! opened by (a path, 63 bytes at most, in the stack record): what a
//! report needs to say what a closed handle was when the writer closed it
//! without anybody else looking.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// `b"HNDLTBL1"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"HNDLTBL1");
pub const VERSION: u32 = 4;
pub const HEADER_SIZE: usize = 64;
pub const SLOT_SIZE: usize = 32;
/// Return addresses kept per stack record (creation, close): the most
/// `--stack-depth` accepts. 64 frames hold a deep native stack (an
/// interpreter's C frames, a GUI toolkit's) whole; a record is then
/// 1,088 bytes, touched only for fds a process opens (a process with
/// 1,000 fds touches about 1 MiB of its table's memfd).
pub const STACK_DEPTH: usize = 64;
/// Frames recorded when nobody says (`--stack-depth`'s default, and the
/// shim's without `HANDLES_STACK_DEPTH`).
pub const DEFAULT_STACK_DEPTH: usize = 32;
/// Bytes of the name recorded per slot (NUL-padded; cut at the front
/// when longer, with a leading `...`).
pub const NAME_SIZE: usize = 64;
/// Bytes of one slot's stack records: creation, close, then the name.
pub const STACKS_SIZE: usize = 2 * STACK_DEPTH * 8 + NAME_SIZE;
/// Largest table a reader accepts (the kernel's default fs.nr_open).
pub const MAX_CAPACITY: u32 = 1 << 20;

/// Markers: values the shim puts in a syscall's cookie register in place
/// of the cookie when it wants the call to stop at the supervisor. A
/// marker has the cookie's high 32 bits and a tag XORed into the low 32;
/// the prefilter lets the exact cookie through and stops on any other
/// value with the cookie's high half, in every filter mode (also for
/// calls the filter would otherwise let through because they come from a
/// shared library).
pub mod marker {
    /// `fcntl(table_fd, F_GETFD)`: the shim has made its table; the
    /// supervisor maps it from /proc/PID/fd/<arg0>.
    pub const ANNOUNCE: u32 = u32::from_le_bytes(*b"ANNC");
    /// The program's own call, which the shim found bad and passes on
    /// unchanged for the supervisor to judge and report.
    pub const CHECK: u32 = u32::from_le_bytes(*b"CHEK");
    /// `fstat(fd, buf, marker, nr)`: stands for syscall `nr` on `fd`, a
    /// call the shim found bad that has no register free for a marker
    /// (six arguments, such as mmap). Judged and reported as `nr`; the
    /// fstat itself changes nothing, and the shim returns EBADF.
    pub const PROXY: u32 = u32::from_le_bytes(*b"PRXY");
    /// `fstat(fd, buf, marker, nr, pcs, n)`: the shim's judge held its
    /// call `nr` on `fd` (a close that may begin a sweep): the supervisor
    /// builds the report now, from the `n` return addresses at `pcs` (the
    /// call's stack), and keeps it for the thread. The fstat does not run.
    pub const HOLD: u32 = u32::from_le_bytes(*b"HOLD");
    /// `fstat(fd, buf, marker)`: no sweep followed the held close: the
    /// supervisor writes the report it keeps and raises the exception now.
    pub const HELD_RAISE: u32 = u32::from_le_bytes(*b"HRAI");
    /// `fstat(fd, buf, marker)`: a sweep followed: the kept report goes.
    pub const HELD_DROP: u32 = u32::from_le_bytes(*b"HDRP");
    /// The shim's own bookkeeping (its table's memfd, its tombstone source,
    /// moving them, a quarantine's dup3): not the program's handles. Used
    /// only where the job stops every creating call (a new-* entry, a
    /// handle budget); the supervisor lets it run unjudged.
    pub const OWN: u32 = u32::from_le_bytes(*b"OWN!");
    /// `fstat(fd, buf, marker)`: the shim gives the quarantined number `fd`
    /// back to the kernel (a sweep's or a shell's close, see the judge's
    /// `Verdict::Release`): a tombstone the supervisor put there is no
    /// longer one. Sent before the shim closes it.
    pub const RELEASE: u32 = u32::from_le_bytes(*b"RLSE");
    /// `fcntl(fd, F_SETFD, flags)` with FD_CLOEXEC clear: the program
    /// makes `fd` inheritable on purpose (`--inherit-check`, see
    /// `inherit`). The supervisor remembers it and lets the call run.
    pub const INHERIT: u32 = u32::from_le_bytes(*b"INHR");
    /// `fcntl(-1, CHECKPOINT_CMD, name)`: `handles_checkpoint(name)`, a
    /// test boundary (docs/per-test.md). Answered by the supervisor.
    pub const CHECKPOINT: u32 = u32::from_le_bytes(*b"CKPT");

    /// The register value that carries `tag` for a job with `cookie`.
    pub const fn make(cookie: u64, tag: u32) -> u64 {
        cookie ^ tag as u64
    }

    /// The tag a cookie register holds, if it holds a marker.
    pub const fn tag(cookie: u64, reg: u64) -> Option<u32> {
        if reg >> 32 == cookie >> 32 && reg != cookie {
            Some((reg ^ cookie) as u32)
        } else {
            None
        }
    }
}

/// The fcntl command no kernel knows that carries a test boundary:
/// `fcntl(-1, CHECKPOINT_CMD, name)` (a NUL-terminated name, or 0 for
/// "the current test ended"). The shim's `handles_checkpoint` issues it
/// marked; without the shim, anything that can make a raw syscall can
/// (every fd syscall stops at the supervisor then). fd -1 keeps it
/// harmless where nothing answers: the kernel fails it with EBADF.
pub const CHECKPOINT_CMD: u32 = u32::from_le_bytes(*b"HCKP");

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
    /// [`STACK_DEPTH`]: lets a reader refuse a layout it does not know.
    pub stack_depth: AtomicU32,
    /// Byte offset of the stack area ([`stacks_offset`]).
    pub stacks_offset: AtomicU64,
    /// [`HEADER_PYTHON`] in the low bits; the fd bound
    /// ([`Header::fd_bound`]) in bits 32 to 63. Zero in a table written
    /// before they existed.
    pub flags: AtomicU64,
    /// Where the writing process keeps the private copy of its table that
    /// a child it forks reads as its snapshot, and writes as its own table
    /// until it makes a shared one (the shim's `state::fork`): an address
    /// in that process and in every child it forks (0: it never forked).
    /// The copy has a table's layout from the slots on: a reader of such
    /// a child finds its slot and records there, with the child's memory.
    /// Of the copy's header only `pid` and `flags` are written, by a child
    /// that took the copy as its table: whose writes the copy holds, and
    /// the fd bound of what that child made.
    pub mirror: AtomicU64,
}

/// `Header::flags`: a writer has put a Python record (with frames) into
/// the table. Until then every record of the Python area is empty, and a
/// writer need not clear one: writing an empty record would fault in a
/// page of the area in every process that never runs Python.
pub const HEADER_PYTHON: u64 = 1;

#[repr(C)]
pub struct Slot {
    pub seq: AtomicU32,
    pub state: AtomicU32,
    pub generation: AtomicU32,
    /// `ObjType` index + 1, 0 when the writer did not classify it.
    pub obj_type: AtomicU32,
    pub koid: AtomicU64,
    pub rights: AtomicU32,
    /// How the handle came to be: a [`how`] code.
    pub how: AtomicU32,
}

/// `Slot::how` codes: the creating syscall's number + 1, or one of the
/// ways a handle arrives without a creating call of the writer's.
pub mod how {
    pub const UNKNOWN: u32 = 0;
    /// Open when the process image started (inherited across exec).
    pub const INHERITED: u32 = 1 << 16;
    /// Received through SCM_RIGHTS.
    pub const RECEIVED: u32 = (1 << 16) + 1;
    /// Found open without its creation having been seen.
    pub const ADOPTED: u32 = (1 << 16) + 2;
    /// A flag on any of the codes above: the handle came to this process
    /// through fork, made by its parent (or before), the rest of the code
    /// saying how. A forked child's own table is a copy of its parent's,
    /// and its leak check must not take those handles for its own; the
    /// flag tells them apart without the supervisor reading the table
    /// when the child makes it.
    pub const FORKED: u32 = 1 << 31;

    /// The code without [`FORKED`].
    pub const fn base(code: u32) -> u32 {
        code & !FORKED
    }

    /// Whether the handle came through fork ([`FORKED`]).
    pub const fn forked(code: u32) -> bool {
        code & FORKED != 0
    }

    /// The code for a handle made by syscall `nr`.
    pub const fn syscall(nr: u32) -> u32 {
        if nr < 1 << 16 {
            nr + 1
        } else {
            UNKNOWN
        }
    }

    /// The syscall number a code names, if it names one.
    pub const fn syscall_nr(code: u32) -> Option<u32> {
        let code = base(code);
        if code >= 1 && code <= 1 << 16 {
            Some(code - 1)
        } else {
            None
        }
    }
}

/// The creation and close stacks of one fd number, 0-terminated return
/// addresses, innermost first. Guarded by the slot's sequence counter.
#[repr(C)]
pub struct SlotStacks {
    pub created: [AtomicU64; STACK_DEPTH],
    pub closed: [AtomicU64; STACK_DEPTH],
    /// The name the handle was opened by, NUL-padded bytes.
    pub name: [AtomicU64; NAME_SIZE / 8],
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(core::mem::size_of::<Slot>() == SLOT_SIZE);
const _: () = assert!(core::mem::size_of::<SlotStacks>() == STACKS_SIZE);

/// What a slot held at one consistent moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotValue {
    pub state: u32,
    pub generation: u32,
    pub obj_type: u32,
    pub koid: u64,
    pub rights: u32,
    pub how: u32,
}

/// FD_SETSIZE: programs that use select() need their fds below it.
const SELECT_LIMIT: u64 = 1024;

/// The number from which the shim puts its own fds (the table first, then
/// the tombstone source), for RLIMIT_NOFILE `soft`/`hard` at its start-up;
/// the supervisor looks there for a process's table before listing
/// /proc/PID/fd. They must cost the program no fd number it would get
/// natively, in particular none below FD_SETSIZE, and must not grow the
/// kernel's fd table (every fork copies it, every /proc/PID/fd listing
/// walks it) to a huge limit's size:
///
/// - a soft limit of at most 1024 that the hard limit lets the shim
///   exceed: just above the soft limit. The program can never get those
///   numbers (nor dup2 onto them) unless it raises its limit;
/// - a soft limit above 1026: 1024 and up, clear of select() users; the
///   kernel's table grows to 2048 entries (16 KiB) whatever the limit;
/// - otherwise (a small limit that is also the hard one): the top two
///   numbers under the limit, which a program meets only once it has
///   filled its table; under EMFILE the shim then gives them up.
pub fn own_fds_at(soft: u64, hard: u64) -> i32 {
    if soft > SELECT_LIMIT + 2 {
        SELECT_LIMIT as i32
    } else if hard >= soft + 2 {
        soft.max(3) as i32
    } else {
        soft.saturating_sub(2).max(3) as i32
    }
}

/// Where the stack area of a table of `capacity` slots starts.
pub const fn stacks_offset(capacity: u32) -> usize {
    HEADER_SIZE + capacity as usize * SLOT_SIZE
}

/// Bytes a table of `capacity` slots needs (slots, stacks and the Python
/// frames area, see [`PyStacks`]). Pages that are never written cost
/// nothing in a memfd.
pub const fn table_size(capacity: u32) -> usize {
    earlier_offset(capacity) + capacity as usize * EARLIER_SIZE
}

/// A stack as read from a table: `len` return addresses, innermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub pcs: [u64; STACK_DEPTH],
    pub len: usize,
}

// Arrays longer than 32 have no derived Default.
impl Default for Stack {
    fn default() -> Stack {
        Stack {
            pcs: [0; STACK_DEPTH],
            len: 0,
        }
    }
}

impl Stack {
    pub fn frames(&self) -> &[u64] {
        &self.pcs[..self.len]
    }
}

/// A recorded name: `len` bytes (not UTF-8 checked: paths are bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    pub bytes: [u8; NAME_SIZE],
    pub len: usize,
}

impl Default for Name {
    fn default() -> Name {
        Name {
            bytes: [0; NAME_SIZE],
            len: 0,
        }
    }
}

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len.min(NAME_SIZE)]
    }

    /// Packs `name` as stored: at most NAME_SIZE - 1 bytes; a longer name
    /// keeps its tail (the file name is the useful part) behind `...`.
    pub fn pack(name: &[u8]) -> Name {
        let mut n = Name::default();
        let max = NAME_SIZE - 1;
        if name.len() <= max {
            n.bytes[..name.len()].copy_from_slice(name);
            n.len = name.len();
        } else {
            n.bytes[..3].copy_from_slice(b"...");
            let tail = &name[name.len() - (max - 3)..];
            n.bytes[3..max].copy_from_slice(tail);
            n.len = max;
        }
        n
    }
}

/// A slot and its stacks, read as one snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotDetail {
    pub value: SlotValue,
    pub created: Stack,
    pub closed: Stack,
    pub name: Name,
}

/// The `obj_type` code of a slot for `t` ([`crate::ObjType::code`]).
pub fn obj_type_code(t: crate::ObjType) -> u32 {
    t.code()
}

/// The type a slot's `obj_type` code names; None for 0 (not classified by
/// the writer) and for codes no type has.
pub fn obj_type_from_code(code: u32) -> Option<crate::ObjType> {
    crate::ObjType::from_code(code)
}

/// `Header::flags` bits 32 to 63: one more than the highest fd a writer
/// made a handle at (the shim's creations, the supervisor's writes; not
/// inherited handles), 0 when none. A leak check reads the slots below
/// it instead of listing `/proc/PID/fd`, which makes an inode for every
/// fd (a process with a quarantine holds some seventy).
const FD_BOUND_SHIFT: u32 = 32;

/// The fd bound a header's `flags` word holds (for a reader that has the
/// word's bytes, not a header: another process's private copy).
pub fn fd_bound_in(flags: u64) -> u32 {
    (flags >> FD_BOUND_SHIFT) as u32
}

impl Header {
    /// Notes that a Python record with frames is (about to be) written.
    pub fn note_python(&self) {
        if self.flags.load(Ordering::Relaxed) & HEADER_PYTHON == 0 {
            self.flags.fetch_or(HEADER_PYTHON, Ordering::Relaxed);
        }
    }

    /// Whether the Python area may hold a record with frames.
    pub fn has_python(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & HEADER_PYTHON != 0
    }

    /// Notes that `fd` gets a handle made by this table's writers: the
    /// bound ([`Header::fd_bound`]) covers it afterwards. A load when it
    /// does already (nearly every call).
    pub fn note_fd(&self, fd: i32) {
        let Ok(fd) = u64::try_from(fd) else { return };
        let want = (fd + 1) << FD_BOUND_SHIFT;
        let mut cur = self.flags.load(Ordering::Relaxed);
        while cur >> FD_BOUND_SHIFT < fd + 1 {
            let new = (cur & ((1 << FD_BOUND_SHIFT) - 1)) | want;
            match self
                .flags
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Every fd a writer made a handle at is below this.
    pub fn fd_bound(&self) -> u32 {
        fd_bound_in(self.flags.load(Ordering::Relaxed))
    }

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
        self.stack_depth
            .store(STACK_DEPTH as u32, Ordering::Relaxed);
        self.stacks_offset
            .store(stacks_offset(capacity) as u64, Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }
}

/// A held slot lock (the sequence counter is odd); release it with
/// [`Slot::unlock`].
#[must_use]
#[derive(Debug)]
pub struct Locked(u32);

impl Slot {
    /// Takes the slot's sequence counter from even to odd, or None when
    /// another writer holds it. Writers that may be interrupted by a
    /// writer of the same slot on the same thread must not spin on this.
    pub fn try_lock(&self) -> Option<Locked> {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0 {
            return None;
        }
        self.seq
            .compare_exchange_weak(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // Field stores must not become visible before the odd counter.
        fence(Ordering::Release);
        Some(Locked(s.wrapping_add(1)))
    }

    /// Takes the lock even if a writer left the counter odd (it died, or
    /// the bytes were scribbled on): the caller decided that waiting
    /// longer is worse than one torn slot.
    pub fn steal_lock(&self) -> Locked {
        let s = self.seq.load(Ordering::Relaxed) | 1;
        self.seq.store(s, Ordering::Relaxed);
        fence(Ordering::Release);
        Locked(s)
    }

    /// Spins for the lock, stealing it after `spins` failed attempts.
    pub fn lock(&self, spins: u32) -> Locked {
        for _ in 0..spins {
            if let Some(l) = self.try_lock() {
                return l;
            }
            core::hint::spin_loop();
        }
        self.steal_lock()
    }

    /// Stores a value; only while holding the lock.
    pub fn store(&self, _lock: &Locked, v: SlotValue) {
        self.state.store(v.state, Ordering::Relaxed);
        self.generation.store(v.generation, Ordering::Relaxed);
        self.obj_type.store(v.obj_type, Ordering::Relaxed);
        self.koid.store(v.koid, Ordering::Relaxed);
        self.rights.store(v.rights, Ordering::Relaxed);
        self.how.store(v.how, Ordering::Relaxed);
    }

    /// The current value, as seen by the lock holder.
    pub fn load(&self, _lock: &Locked) -> SlotValue {
        self.load_relaxed()
    }

    fn load_relaxed(&self) -> SlotValue {
        SlotValue {
            state: self.state.load(Ordering::Relaxed),
            generation: self.generation.load(Ordering::Relaxed),
            obj_type: self.obj_type.load(Ordering::Relaxed),
            koid: self.koid.load(Ordering::Relaxed),
            rights: self.rights.load(Ordering::Relaxed),
            how: self.how.load(Ordering::Relaxed),
        }
    }

    /// Makes the stores visible to readers and releases the lock.
    pub fn unlock(&self, lock: Locked) {
        self.seq.store(lock.0.wrapping_add(1), Ordering::Release);
    }

    /// Writes the slot under its sequence counter.
    pub fn write(&self, v: SlotValue) {
        let l = self.lock(1 << 20);
        self.store(&l, v);
        self.unlock(l);
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
            let v = self.load_relaxed();
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return Some(v);
            }
        }
        None
    }

    /// Reads the slot and its stacks as one consistent snapshot.
    pub fn read_detail(&self, stacks: &SlotStacks, tries: u32) -> Option<SlotDetail> {
        for _ in 0..tries {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let value = self.load_relaxed();
            let created = stacks.created_stack();
            let closed = stacks.closed_stack();
            let name = stacks.name();
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return Some(SlotDetail {
                    value,
                    created,
                    closed,
                    name,
                });
            }
        }
        None
    }
}

fn load_name(words: &[AtomicU64; NAME_SIZE / 8]) -> Name {
    let mut n = Name::default();
    for (i, w) in words.iter().enumerate() {
        n.bytes[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    // A scribbled record may lack the NUL: the last byte is never part of
    // a name.
    n.len = n.bytes[..NAME_SIZE - 1]
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(NAME_SIZE - 1);
    n
}

/// Stores `pcs` (cut at [`STACK_DEPTH`]) and a 0 after them: readers
/// stop at the first 0, so the words beyond are left as they are (a
/// record is 1 KiB; an open and a close write only what they recorded).
fn store_stack(dst: &[AtomicU64; STACK_DEPTH], pcs: &[u64]) {
    let n = pcs.len().min(STACK_DEPTH);
    for (d, &pc) in dst.iter().zip(&pcs[..n]) {
        d.store(pc, Ordering::Relaxed);
    }
    if let Some(end) = dst.get(n) {
        end.store(0, Ordering::Relaxed);
    }
}

fn load_stack(src: &[AtomicU64; STACK_DEPTH]) -> Stack {
    let mut st = Stack::default();
    for (i, s) in src.iter().enumerate() {
        let pc = s.load(Ordering::Relaxed);
        if pc == 0 {
            break;
        }
        st.pcs[i] = pc;
        st.len = i + 1;
    }
    st
}

impl SlotStacks {
    /// Stores the creation stack (at most [`STACK_DEPTH`] frames) and
    /// clears the close stack and the name, which belonged to an earlier
    /// incarnation. Only while holding the slot's lock.
    pub fn set_created(&self, _lock: &Locked, pcs: &[u64]) {
        store_stack(&self.created, pcs);
        store_stack(&self.closed, &[]);
        for w in &self.name {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Stores the name the handle was opened by ([`Name::pack`] rules).
    /// Only while holding the slot's lock.
    pub fn set_name(&self, _lock: &Locked, name: &[u8]) {
        let n = Name::pack(name);
        for (i, w) in self.name.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&n.bytes[i * 8..i * 8 + 8]);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    pub fn name(&self) -> Name {
        load_name(&self.name)
    }

    /// Stores the close stack. Only while holding the slot's lock.
    pub fn set_closed(&self, _lock: &Locked, pcs: &[u64]) {
        store_stack(&self.closed, pcs);
    }

    /// Copies another slot's stacks (a writer's own copy, e.g. after fork).
    pub fn copy_from(&self, _lock: &Locked, other: &SlotStacks) {
        for (d, s) in self.created.iter().zip(&other.created) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (d, s) in self.closed.iter().zip(&other.closed) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (d, s) in self.name.iter().zip(&other.name) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub fn created_stack(&self) -> Stack {
        load_stack(&self.created)
    }

    pub fn closed_stack(&self) -> Stack {
        load_stack(&self.closed)
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
    /// As many stack records as the mapping holds (may be fewer than slots).
    stacks: &'a [SlotStacks],
    /// As many Python records as the mapping holds (none in a table made
    /// before the area existed).
    py: &'a [PyStacks],
    codes: &'a [CodeEntry],
    /// As many earlier-handle records as the mapping holds.
    earlier: &'a [Earlier],
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
            || header.stack_depth.load(Ordering::Relaxed) as usize != STACK_DEPTH
        {
            return Err(TableError::BadLayout);
        }
        let capacity = header.capacity.load(Ordering::Relaxed);
        if capacity > MAX_CAPACITY
            || header.stacks_offset.load(Ordering::Relaxed) != stacks_offset(capacity) as u64
        {
            return Err(TableError::BadLayout);
        }
        let capacity = capacity as usize;
        let fits = (mem.len() - HEADER_SIZE) / SLOT_SIZE;
        let n = capacity.min(fits);
        // SAFETY: n slots of SLOT_SIZE bytes follow the header inside mem;
        // the offset keeps 8-byte alignment; Slot is all atomics.
        let slots =
            unsafe { core::slice::from_raw_parts(mem.as_ptr().add(HEADER_SIZE) as *const Slot, n) };
        let off = stacks_offset(capacity as u32);
        let stack_n = mem.len().saturating_sub(off) / STACKS_SIZE;
        let stack_n = stack_n.min(n);
        // SAFETY: when stack_n > 0, off + stack_n * STACKS_SIZE <= mem.len();
        // off is a multiple of 8 (64 + 32 * capacity) so the records are
        // aligned; SlotStacks is all atomics. With stack_n == 0 the pointer
        // is not dereferenced but must still be non-null and aligned: use
        // the slot area's start.
        let stacks = unsafe {
            let p = if stack_n > 0 {
                mem.as_ptr().add(off)
            } else {
                mem.as_ptr().add(HEADER_SIZE)
            };
            core::slice::from_raw_parts(p as *const SlotStacks, stack_n)
        };
        let py = py_records(mem, capacity as u32, stack_n);
        let codes = if py.len() == capacity {
            code_entries(mem, capacity as u32)
        } else {
            &[]
        };
        let earlier = if codes.is_empty() {
            &[]
        } else {
            earlier_records(mem, capacity as u32, n)
        };
        Ok(TableView {
            header,
            slots,
            stacks,
            py,
            codes,
            earlier,
        })
    }

    pub fn mixer(&self) -> u32 {
        self.header.mixer.load(Ordering::Relaxed)
    }

    /// [`Header::note_python`], for a writer outside the shim.
    pub fn note_python(&self) {
        self.header.note_python();
    }

    /// [`Header::note_fd`].
    pub fn note_fd(&self, fd: i32) {
        self.header.note_fd(fd);
    }

    /// [`Header::fd_bound`].
    pub fn fd_bound(&self) -> u32 {
        self.header.fd_bound()
    }

    pub fn pid(&self) -> u32 {
        self.header.pid.load(Ordering::Relaxed)
    }

    pub fn writer(&self) -> u32 {
        self.header.writer.load(Ordering::Relaxed)
    }

    /// The capacity the header gives (the view's own is clamped to what
    /// the memory it was made from holds).
    pub fn header_capacity(&self) -> u32 {
        self.header.capacity.load(Ordering::Relaxed)
    }

    /// [`Header::mirror`].
    pub fn mirror(&self) -> u64 {
        self.header.mirror.load(Ordering::Relaxed)
    }

    /// The table's header, as raw bytes (a reader that rebuilds a table
    /// from another process's memory starts from it).
    pub fn header_bytes(&self) -> &[u8] {
        // SAFETY: the header is HEADER_SIZE bytes of atomics, mapped and
        // alive as long as the view; any bit pattern is a valid u8.
        unsafe {
            core::slice::from_raw_parts((self.header as *const Header).cast::<u8>(), HEADER_SIZE)
        }
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

    /// The cells of `fd`'s slot and stack record, for a writer that holds
    /// a writable mapping (a supervisor updating a shim's table takes the
    /// slot's lock like the shim does). None beyond the mapped areas.
    pub fn cells(&self, fd: i32) -> Option<(&'a Slot, &'a SlotStacks)> {
        let i = usize::try_from(fd).ok()?;
        Some((self.slots.get(i)?, self.stacks.get(i)?))
    }

    /// The slot for `fd` with its creation and close stacks, read as one
    /// snapshot; None beyond the table or the mapped stack area.
    pub fn detail(&self, fd: i32) -> Option<SlotDetail> {
        let i = usize::try_from(fd).ok()?;
        self.slots.get(i)?.read_detail(self.stacks.get(i)?, 64)
    }
}

// ---------------------------------------------------------------------
// Python frames (appended area, after the stack records).
//
// For a CPython program the shim records, next to each native stack, the
// Python frames of the calling thread at that moment: per frame the code
// object's address, the line and a check word of the code object's own
// fields (`crate::python::PyFrame`). Written under the slot's sequence
// counter like the stacks; zero in every other program. The file and
// function of each code object go once into the code registry after
// the records ([`CodeEntry`]), so that a frame still resolves once its
// code object is freed (a leak check runs after the interpreter freed
// everything).

/// Python frames kept per record (creation, close).
pub const PY_DEPTH: usize = 12;
/// Bytes of one slot's Python records: two words per frame, two records.
pub const PY_STACKS_SIZE: usize = 2 * PY_DEPTH * 16;

/// Where the Python area of a table of `capacity` slots starts.
pub const fn py_offset(capacity: u32) -> usize {
    stacks_offset(capacity) + capacity as usize * STACKS_SIZE
}

/// One slot's Python records: per frame `code`, then the line (low 31
/// bits) | entry (bit 31) | check (high 32 bits); a 0 code ends a record.
#[repr(C)]
pub struct PyStacks {
    pub created: [AtomicU64; 2 * PY_DEPTH],
    pub closed: [AtomicU64; 2 * PY_DEPTH],
}

const _: () = assert!(core::mem::size_of::<PyStacks>() == PY_STACKS_SIZE);

/// Python frames as read from a table, innermost first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyStack {
    pub frames: [crate::python::PyFrame; PY_DEPTH],
    pub len: usize,
}

impl PyStack {
    pub fn frames(&self) -> &[crate::python::PyFrame] {
        &self.frames[..self.len.min(PY_DEPTH)]
    }
}

fn store_py(dst: &[AtomicU64; 2 * PY_DEPTH], frames: &[crate::python::PyFrame]) {
    for (i, pair) in dst.chunks_exact(2).enumerate() {
        let (a, b) = match frames.get(i) {
            Some(f) => (
                f.code,
                u64::from(f.line & 0x7fff_ffff)
                    | (u64::from(f.entry) << 31)
                    | (u64::from(f.check) << 32),
            ),
            None => (0, 0),
        };
        pair[0].store(a, Ordering::Relaxed);
        pair[1].store(b, Ordering::Relaxed);
        if a == 0 {
            break;
        }
    }
}

/// Copies a Python record up to and including its end (a 0 code).
fn copy_py(dst: &[AtomicU64; 2 * PY_DEPTH], src: &[AtomicU64; 2 * PY_DEPTH]) {
    for (d, s) in dst.chunks_exact(2).zip(src.chunks_exact(2)) {
        let code = s[0].load(Ordering::Relaxed);
        d[0].store(code, Ordering::Relaxed);
        d[1].store(s[1].load(Ordering::Relaxed), Ordering::Relaxed);
        if code == 0 {
            break;
        }
    }
}

fn load_py(src: &[AtomicU64; 2 * PY_DEPTH]) -> PyStack {
    let mut st = PyStack::default();
    for (i, pair) in src.chunks_exact(2).enumerate() {
        let code = pair[0].load(Ordering::Relaxed);
        if code == 0 {
            break;
        }
        let w = pair[1].load(Ordering::Relaxed);
        st.frames[i] = crate::python::PyFrame {
            code,
            lasti: 0,
            line: (w & 0x7fff_ffff) as u32,
            entry: w & (1 << 31) != 0,
            check: (w >> 32) as u32,
        };
        st.len = i + 1;
    }
    st
}

impl PyStacks {
    /// Copies another slot's Python records (a writer's own copy, e.g.
    /// after fork), up to each record's end. Only while holding the
    /// slot's lock.
    pub fn copy_from(&self, _lock: &Locked, other: &PyStacks) {
        copy_py(&self.created, &other.created);
        copy_py(&self.closed, &other.closed);
    }

    /// Copies another slot's close record only.
    pub fn copy_closed_from(&self, _lock: &Locked, other: &PyStacks) {
        copy_py(&self.closed, &other.closed);
    }

    /// Stores the creation record and clears the close record. Only while
    /// holding the slot's lock.
    pub fn set_created(&self, _lock: &Locked, frames: &[crate::python::PyFrame]) {
        store_py(&self.created, frames);
        store_py(&self.closed, &[]);
    }

    /// Stores the close record. Only while holding the slot's lock.
    pub fn set_closed(&self, _lock: &Locked, frames: &[crate::python::PyFrame]) {
        store_py(&self.closed, frames);
    }

    pub fn created(&self) -> PyStack {
        load_py(&self.created)
    }

    pub fn closed(&self) -> PyStack {
        load_py(&self.closed)
    }
}

/// The Python records a mapping of `mem.len()` bytes holds, at most `n`.
fn py_records(mem: &[u8], capacity: u32, n: usize) -> &[PyStacks] {
    let off = py_offset(capacity);
    let count = (mem.len().saturating_sub(off) / PY_STACKS_SIZE).min(n);
    if count == 0 {
        return &[];
    }
    // SAFETY: off + count * PY_STACKS_SIZE <= mem.len(); off is a multiple
    // of 8 (the header, slots and stack records are) and mem is 8-aligned
    // (checked by TableView::new); PyStacks is all atomics.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().add(off) as *const PyStacks, count) }
}

/// Code objects the registry holds (open addressing).
pub const CODE_SLOTS: usize = 4096;
/// Bytes of one registry entry.
pub const CODE_ENTRY_SIZE: usize = 256;
/// Bytes of a code object's (qualified) name an entry keeps.
pub const CODE_NAME_SIZE: usize = 64;
/// Bytes of a code object's file name an entry keeps (the tail of a
/// longer one, behind `...`).
pub const CODE_FILE_SIZE: usize = 160;
/// Entries probed from a key's home slot.
const CODE_PROBES: usize = 16;

/// Where the code registry of a table of `capacity` slots starts.
pub const fn codes_offset(capacity: u32) -> usize {
    py_offset(capacity) + capacity as usize * PY_STACKS_SIZE
}

/// One code object's file and function, written once by the shim the
/// first time a record names it. `state`: 0 free, 1 being written, 2
/// ready (then never written again).
#[repr(C)]
pub struct CodeEntry {
    pub state: AtomicU64,
    pub code: AtomicU64,
    /// check (low 32 bits) | first line (high 32 bits).
    pub meta: AtomicU64,
    /// name length (low 16 bits) | file length (bits 16-31).
    pub lens: AtomicU64,
    pub name: [AtomicU64; CODE_NAME_SIZE / 8],
    pub file: [AtomicU64; CODE_FILE_SIZE / 8],
}

const _: () = assert!(core::mem::size_of::<CodeEntry>() == CODE_ENTRY_SIZE);

/// A registry entry as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    pub firstlineno: u32,
    pub name: [u8; CODE_NAME_SIZE],
    pub name_len: usize,
    pub file: [u8; CODE_FILE_SIZE],
    pub file_len: usize,
}

impl CodeRecord {
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len.min(CODE_NAME_SIZE)]
    }
    pub fn file(&self) -> &[u8] {
        &self.file[..self.file_len.min(CODE_FILE_SIZE)]
    }
}

/// Registry entries per 4 KiB page.
pub const CODES_PER_PAGE: usize = 4096 / CODE_ENTRY_SIZE;

/// The registry pages an entry for (`code`, `check`) can land in: those
/// of the first and the last entry of its probe sequence (a writer marks
/// them, so that a copy of the registry reads only pages that hold
/// something).
pub fn code_pages(code: u64, check: u32) -> [usize; 2] {
    let home = code_home(code, check);
    [
        home / CODES_PER_PAGE,
        (home + CODE_PROBES - 1) % CODE_SLOTS / CODES_PER_PAGE,
    ]
}

fn code_home(code: u64, check: u32) -> usize {
    let h = (code >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(check);
    (h >> 20) as usize % CODE_SLOTS
}

fn put_bytes(dst: &[AtomicU64], src: &[u8]) {
    for (i, w) in dst.iter().enumerate() {
        let mut b = [0u8; 8];
        for (j, x) in b.iter_mut().enumerate() {
            *x = src.get(i * 8 + j).copied().unwrap_or(0);
        }
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

fn get_bytes(src: &[AtomicU64], out: &mut [u8]) {
    for (i, w) in src.iter().enumerate() {
        let b = w.load(Ordering::Relaxed).to_le_bytes();
        if let Some(d) = out.get_mut(i * 8..i * 8 + 8) {
            d.copy_from_slice(&b);
        }
    }
}

/// The registry of a table: `entries` is its whole area.
pub struct CodeRegistry<'a> {
    pub entries: &'a [CodeEntry],
}

impl CodeRegistry<'_> {
    /// Whether (`code`, `check`) is there.
    pub fn contains(&self, code: u64, check: u32) -> bool {
        self.find(code, check).is_some()
    }

    fn find(&self, code: u64, check: u32) -> Option<&CodeEntry> {
        if self.entries.is_empty() {
            return None;
        }
        let home = code_home(code, check);
        for k in 0..CODE_PROBES {
            let e = &self.entries[(home + k) % self.entries.len()];
            match e.state.load(Ordering::Acquire) {
                0 => return None,
                2 if e.code.load(Ordering::Relaxed) == code
                    && e.meta.load(Ordering::Relaxed) as u32 == check =>
                {
                    return Some(e)
                }
                _ => {}
            }
        }
        None
    }

    /// Adds an entry unless one for (`code`, `check`) is there; false when
    /// its probe sequence is full (the reader then reads the live code
    /// object, if it still can).
    pub fn insert(
        &self,
        code: u64,
        check: u32,
        firstlineno: u32,
        name: &[u8],
        file: &[u8],
    ) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let home = code_home(code, check);
        for k in 0..CODE_PROBES {
            let e = &self.entries[(home + k) % self.entries.len()];
            match e.state.load(Ordering::Acquire) {
                0 => {
                    if e.state
                        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        // Another thread took it: look again at what it
                        // writes only if it is ours, later.
                        continue;
                    }
                    e.code.store(code, Ordering::Relaxed);
                    e.meta.store(
                        u64::from(check) | (u64::from(firstlineno) << 32),
                        Ordering::Relaxed,
                    );
                    let (n, f) = (
                        name.len().min(CODE_NAME_SIZE),
                        file.len().min(CODE_FILE_SIZE),
                    );
                    e.lens
                        .store(n as u64 | ((f as u64) << 16), Ordering::Relaxed);
                    put_bytes(&e.name, &name[..n]);
                    put_bytes(&e.file, &file[..f]);
                    e.state.store(2, Ordering::Release);
                    return true;
                }
                2 if e.code.load(Ordering::Relaxed) == code
                    && e.meta.load(Ordering::Relaxed) as u32 == check =>
                {
                    return true
                }
                _ => {}
            }
        }
        false
    }

    /// Copies every entry `other` holds ready into the same place here,
    /// where this registry's is free: a fork child's new table names the
    /// code objects its parent recorded (the records it inherited point
    /// at them). Entries are written once, so a ready one can be read
    /// while its writer goes on.
    pub fn copy_from(&self, other: &CodeRegistry<'_>) {
        self.copy_pages_from(other, |_| true);
    }

    /// [`CodeRegistry::copy_from`], reading only the pages (of
    /// [`CODES_PER_PAGE`] entries) `page` says may hold entries: a page
    /// never written reads as zeroes, but reading it faults it in.
    pub fn copy_pages_from(&self, other: &CodeRegistry<'_>, page: impl Fn(usize) -> bool) {
        for (i, (d, s)) in self.entries.iter().zip(other.entries).enumerate() {
            if !page(i / CODES_PER_PAGE)
                || s.state.load(Ordering::Acquire) != 2
                || d.state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            d.code
                .store(s.code.load(Ordering::Relaxed), Ordering::Relaxed);
            d.meta
                .store(s.meta.load(Ordering::Relaxed), Ordering::Relaxed);
            d.lens
                .store(s.lens.load(Ordering::Relaxed), Ordering::Relaxed);
            for (x, y) in d.name.iter().zip(&s.name) {
                x.store(y.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            for (x, y) in d.file.iter().zip(&s.file) {
                x.store(y.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            d.state.store(2, Ordering::Release);
        }
    }

    /// The entry for (`code`, `check`).
    pub fn get(&self, code: u64, check: u32) -> Option<CodeRecord> {
        let e = self.find(code, check)?;
        let lens = e.lens.load(Ordering::Relaxed);
        let mut r = CodeRecord {
            firstlineno: (e.meta.load(Ordering::Relaxed) >> 32) as u32,
            name: [0; CODE_NAME_SIZE],
            name_len: (lens & 0xffff) as usize,
            file: [0; CODE_FILE_SIZE],
            file_len: ((lens >> 16) & 0xffff) as usize,
        };
        get_bytes(&e.name, &mut r.name);
        get_bytes(&e.file, &mut r.file);
        Some(r)
    }
}

/// The registry a mapping of `mem.len()` bytes holds (empty when the
/// mapping ends before it).
fn code_entries(mem: &[u8], capacity: u32) -> &[CodeEntry] {
    let off = codes_offset(capacity);
    if mem.len() < off + CODE_SLOTS * CODE_ENTRY_SIZE {
        return &[];
    }
    // SAFETY: the whole registry lies inside mem; off is a multiple of 8
    // and mem is 8-aligned; CodeEntry is all atomics.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().add(off) as *const CodeEntry, CODE_SLOTS) }
}

impl<'a> TableView<'a> {
    /// The table's code registry (empty in a table without one).
    pub fn codes(&self) -> CodeRegistry<'a> {
        CodeRegistry {
            entries: self.codes,
        }
    }

    /// `fd`'s Python record cell, for a writer (see [`TableView::cells`]).
    pub fn py_cell(&self, fd: i32) -> Option<&'a PyStacks> {
        self.py.get(usize::try_from(fd).ok()?)
    }

    /// [`TableView::detail`] with the slot's Python records (creation,
    /// close), all read as one snapshot. Records are empty when the table
    /// has no Python area.
    pub fn detail_py(&self, fd: i32) -> Option<(SlotDetail, PyStack, PyStack)> {
        let i = usize::try_from(fd).ok()?;
        let slot = self.slots.get(i)?;
        let stacks = self.stacks.get(i)?;
        let Some(py) = self.py.get(i) else {
            return slot
                .read_detail(stacks, 64)
                .map(|d| (d, PyStack::default(), PyStack::default()));
        };
        for _ in 0..64 {
            let s1 = slot.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let created = py.created();
            let closed = py.closed();
            // read_detail takes its own snapshot; the same even counter
            // before and after both means nothing was written between.
            let Some(detail) = slot.read_detail(stacks, 1) else {
                continue;
            };
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) == s1 {
                return Some((detail, created, closed));
            }
        }
        None
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

    /// The header at the start of `b`, initialised for `capacity` slots.
    fn header_of(b: &[u8], capacity: u32, pid: u32, mixer: u32, writer: u32) -> &Header {
        assert!(b.len() >= HEADER_SIZE);
        // SAFETY: the tests' buffers are u64-aligned (`aligned`) and hold
        // a header (asserted); the header is all atomics.
        let header = unsafe { &*(b.as_ptr() as *const Header) };
        header.init(capacity, pid, mixer, writer);
        header
    }

    fn bytes(v: &[u64]) -> &[u8] {
        // SAFETY: reinterpreting initialised u64s as bytes.
        unsafe { core::slice::from_raw_parts(v.as_ptr().cast(), v.len() * 8) }
    }

    #[test]
    fn the_fd_bound_only_grows_and_keeps_the_python_flag() {
        let mem = aligned(table_size(8));
        let b = bytes(&mem);
        let header = header_of(b, 8, 42, 1, writer::SHIM);
        assert_eq!(header.fd_bound(), 0);
        header.note_fd(3);
        assert_eq!(header.fd_bound(), 4);
        header.note_python();
        header.note_fd(1);
        assert_eq!(header.fd_bound(), 4, "a lower fd leaves it");
        header.note_fd(-1);
        assert_eq!(header.fd_bound(), 4, "no fd, no change");
        header.note_fd(1_000_000);
        assert_eq!(header.fd_bound(), 1_000_001);
        assert!(header.has_python(), "the flag survives");
        let view = TableView::new(b).expect("valid");
        assert_eq!(view.fd_bound(), 1_000_001);
    }

    #[test]
    fn the_handle_before_the_last_is_kept_aside_at_a_new_creation() {
        let mem = aligned(table_size(8));
        let b = bytes(&mem);
        header_of(b, 8, 42, 1, writer::SHIM);
        let view = TableView::new(b).expect("valid");
        let (slot, stacks) = view.cells(5).expect("slot 5");
        let e = view.earlier_cell(5).expect("earlier record 5");
        assert!(view.earlier_cell(8).is_none());
        // A number's first handle: nothing before it.
        let l = slot.lock(100);
        e.keep(&l, &slot.load(&l), stacks, None);
        stacks.set_created(&l, &[0x1000, 0x2000]);
        stacks.set_name(&l, b"/tmp/first");
        let mut v = slot.load(&l);
        v.state = state::OPEN;
        v.generation = 7;
        v.obj_type = 1;
        v.koid = 1234;
        slot.store(&l, v);
        slot.unlock(l);
        assert_eq!(view.earlier(5), None);
        // Closed, then a new handle at the number: the first is kept.
        let l = slot.lock(100);
        let mut v = slot.load(&l);
        v.state = state::TOMBSTONE;
        slot.store(&l, v);
        let close: std::vec::Vec<u64> = (1..=40).map(|i| 0x4000 + i).collect();
        stacks.set_closed(&l, &close);
        slot.unlock(l);
        let l = slot.lock(100);
        e.keep(&l, &slot.load(&l), stacks, None);
        stacks.set_created(&l, &[0x3000]);
        stacks.set_name(&l, b"/tmp/second");
        slot.unlock(l);
        let r = view.earlier(5).expect("earlier handle");
        assert_eq!((r.generation, r.obj_type, r.koid), (7, 1, 1234));
        assert_eq!(r.name.as_bytes(), b"/tmp/first");
        assert_eq!(r.closed.pcs[..r.closed.len], close[..EARLIER_DEPTH]);
        // A new handle where the slot holds an open one (adopted, never
        // seen closed) clears the record rather than keep a stale one.
        let l = slot.lock(100);
        let mut v = slot.load(&l);
        v.state = state::OPEN;
        slot.store(&l, v);
        e.keep(&l, &slot.load(&l), stacks, None);
        slot.unlock(l);
        assert_eq!(view.earlier(5), None);
    }

    #[test]
    fn python_records_round_trip_and_are_cleared_by_a_new_creation() {
        use crate::python::PyFrame;
        let mem = aligned(table_size(8));
        let b = bytes(&mem);
        header_of(b, 8, 42, 1, writer::SHIM);
        let view = TableView::new(b).expect("valid");
        let (slot, _) = view.cells(5).expect("slot 5");
        let py = view.py_cell(5).expect("python record 5");
        let f = PyFrame {
            code: 0x7f00_1234_5670,
            lasti: 0,
            check: 0xfeed_f00d,
            entry: true,
            line: 77,
        };
        let l = slot.lock(100);
        py.set_created(&l, &[f, PyFrame { entry: false, ..f }]);
        py.set_closed(&l, &[f]);
        slot.unlock(l);
        let (_, created, closed) = view.detail_py(5).expect("detail");
        assert_eq!(created.frames(), &[f, PyFrame { entry: false, ..f }]);
        assert_eq!(closed.frames(), &[f]);
        let l = slot.lock(100);
        py.set_created(&l, &[]);
        slot.unlock(l);
        let (_, created, closed) = view.detail_py(5).expect("detail");
        assert_eq!((created.len, closed.len), (0, 0));
        assert!(view.py_cell(8).is_none());
        let codes = view.codes();
        assert!(codes.get(f.code, f.check).is_none());
        assert!(codes.insert(f.code, f.check, 12, b"helper", b"/srv/app.py"));
        assert!(codes.insert(f.code, f.check, 99, b"other", b"/x.py"));
        let r = codes.get(f.code, f.check).expect("registered");
        assert_eq!(
            (r.name(), r.file(), r.firstlineno),
            (&b"helper"[..], &b"/srv/app.py"[..], 12)
        );
        // Same address, another code object: not that entry.
        assert!(codes.get(f.code, f.check ^ 1).is_none());
        // A full probe sequence refuses, never overwrites.
        for i in 0..100u64 {
            codes.insert(f.code, i as u32 + 7, 1, b"n", b"f");
        }
        assert_eq!(codes.get(f.code, f.check).map(|r| r.firstlineno), Some(12));
    }

    #[test]
    fn write_then_read() {
        let mem = aligned(table_size(8));
        let b = bytes(&mem);
        header_of(b, 8, 42, 0xabcd_0000, writer::SUPERVISOR);
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
        let header = header_of(b, MAX_CAPACITY, 1, 0, writer::SHIM);
        // Capacity far beyond the mapping is clamped to what is there, and
        // a mapping without room for stacks still gives slots.
        assert_eq!(TableView::new(b).map(|v| v.capacity()), Ok(2));
        assert!(TableView::new(b).is_ok_and(|v| v.slot(1).is_some() && v.detail(1).is_none()));
        header.capacity.store(MAX_CAPACITY + 1, Ordering::Relaxed);
        assert_eq!(TableView::new(b).err(), Some(TableError::BadLayout));
        header.capacity.store(MAX_CAPACITY, Ordering::Relaxed);
        header.stacks_offset.store(12, Ordering::Relaxed);
        assert_eq!(TableView::new(b).err(), Some(TableError::BadLayout));
        header.init(MAX_CAPACITY, 1, 0, writer::SHIM);
        header.stack_depth.store(8, Ordering::Relaxed);
        assert_eq!(TableView::new(b).err(), Some(TableError::BadLayout));
        header.init(MAX_CAPACITY, 1, 0, writer::SHIM);
        header.version.store(9, Ordering::Relaxed);
        assert_eq!(TableView::new(b).err(), Some(TableError::BadVersion(9)));
    }

    fn parts(b: &[u8], cap: u32) -> (&Header, &[Slot], &[SlotStacks]) {
        // SAFETY: b is aligned and holds table_size(cap) bytes; all
        // atomics.
        unsafe {
            (
                &*(b.as_ptr() as *const Header),
                core::slice::from_raw_parts(
                    b.as_ptr().add(HEADER_SIZE) as *const Slot,
                    cap as usize,
                ),
                core::slice::from_raw_parts(
                    b.as_ptr().add(stacks_offset(cap)) as *const SlotStacks,
                    cap as usize,
                ),
            )
        }
    }

    #[test]
    fn stacks_round_trip_under_the_slot_lock() {
        let mem = aligned(table_size(4));
        let b = bytes(&mem);
        let (header, slots, stacks) = parts(b, 4);
        header.init(4, 7, 0x1230, writer::SHIM);
        let l = slots[2].try_lock().expect("free lock");
        assert!(slots[2].try_lock().is_none(), "the lock excludes writers");
        slots[2].store(
            &l,
            SlotValue {
                state: state::OPEN,
                generation: 3,
                ..SlotValue::default()
            },
        );
        stacks[2].set_created(&l, &[0x10, 0x20, 0x30]);
        let view = TableView::new(b).expect("valid");
        assert_eq!(
            view.slot(2),
            None,
            "no snapshot while the writer holds the slot"
        );
        slots[2].unlock(l);
        let d = view.detail(2).expect("consistent");
        assert_eq!(d.value.generation, 3);
        assert_eq!(d.created.frames(), &[0x10, 0x20, 0x30]);
        assert!(d.closed.frames().is_empty());

        let l = slots[2].lock(10);
        let many: std::vec::Vec<u64> = (1..=100).collect();
        stacks[2].set_closed(&l, &many);
        slots[2].unlock(l);
        let d = view.detail(2).expect("consistent");
        assert_eq!(d.closed.len, STACK_DEPTH, "stacks are cut at STACK_DEPTH");
        assert_eq!(d.created.frames(), &[0x10, 0x20, 0x30]);

        // Only the recorded words and a 0 are written: a shorter stack
        // over a longer one still reads as itself.
        let l = slots[2].lock(10);
        stacks[2].set_closed(&l, &[7, 8]);
        slots[2].unlock(l);
        assert_eq!(view.detail(2).map(|d| d.closed.len), Some(2));

        // A new incarnation forgets the old close stack.
        let l = slots[2].lock(10);
        stacks[2].set_created(&l, &[0x99]);
        slots[2].unlock(l);
        let d = view.detail(2).expect("consistent");
        assert_eq!(d.created.frames(), &[0x99]);
        assert!(d.closed.frames().is_empty());

        let l = slots[2].lock(10);
        stacks[2].set_name(&l, b"/tmp/a.txt");
        slots[2].unlock(l);
        assert_eq!(
            view.detail(2).map(|d| d.name.as_bytes().to_vec()),
            Some(b"/tmp/a.txt".to_vec())
        );
        let long: std::vec::Vec<u8> = (0..200).map(|i| b'a' + (i % 26) as u8).collect();
        let l = slots[2].lock(10);
        stacks[2].set_name(&l, &long);
        slots[2].unlock(l);
        let n = view.detail(2).expect("consistent").name;
        assert_eq!(n.len, NAME_SIZE - 1);
        assert!(n.as_bytes().starts_with(b"..."));
        assert!(long.ends_with(&n.as_bytes()[3..]), "the tail is kept");
        assert_eq!(view.detail(4), None);
        assert_eq!(view.detail(-3), None);
    }

    #[test]
    fn stuck_lock_is_stolen() {
        let mem = aligned(table_size(1));
        let (header, slots, _) = parts(bytes(&mem), 1);
        header.init(1, 1, 0, writer::SHIM);
        slots[0].seq.store(41, Ordering::Relaxed);
        slots[0].write(SlotValue {
            state: state::OPEN,
            ..SlotValue::default()
        });
        assert_eq!(slots[0].seq.load(Ordering::Relaxed) & 1, 0);
        assert_eq!(slots[0].read(1).map(|v| v.state), Some(state::OPEN));
    }

    #[test]
    fn racing_writers_never_tear() {
        use std::sync::atomic::AtomicBool;
        let mem = aligned(table_size(1));
        let b = bytes(&mem);
        let (header, slots, stacks) = parts(b, 1);
        header.init(1, 1, 0, writer::SHIM);
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for t in 1..=3u32 {
                let (slot, st, stop) = (&slots[0], &stacks[0], &stop);
                sc.spawn(move || {
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        i = i.wrapping_add(1);
                        let g = t * 1_000_000 + i % 1000;
                        let l = slot.lock(u32::MAX);
                        slot.store(
                            &l,
                            SlotValue {
                                state: state::OPEN,
                                generation: g,
                                obj_type: g,
                                koid: u64::from(g),
                                rights: g,
                                how: g,
                            },
                        );
                        st.set_created(&l, &[u64::from(g); STACK_DEPTH]);
                        slot.unlock(l);
                        // Leave readers a window, as real writers (one
                        // syscall per write) do.
                        for _ in 0..200 {
                            core::hint::spin_loop();
                        }
                    }
                });
            }
            let view = TableView::new(b).expect("valid");
            let mut seen = 0;
            let start = std::time::Instant::now();
            while seen < 2_000 && start.elapsed() < std::time::Duration::from_secs(20) {
                if let Some(d) = view.detail(0) {
                    let g = d.value.generation;
                    assert_eq!(d.value.obj_type, g);
                    assert_eq!(d.value.rights, g);
                    assert_eq!(d.value.koid, u64::from(g));
                    assert!(d.created.frames().iter().all(|&pc| pc == u64::from(g)));
                    seen += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert!(seen > 0, "no consistent read while writers ran");
        });
    }

    #[test]
    fn obj_type_codes_round_trip() {
        for t in crate::ObjType::ALL {
            assert_eq!(obj_type_from_code(obj_type_code(t)), Some(t));
        }
        assert_eq!(obj_type_from_code(0), None);
        assert_eq!(obj_type_from_code(999), None);
    }

    #[test]
    fn stuck_odd_sequence_gives_up() {
        let mem = aligned(table_size(1));
        let b = bytes(&mem);
        header_of(b, 1, 1, 0, writer::SHIM);
        // SAFETY: one slot follows the header.
        let slot = unsafe { &*(b.as_ptr().add(HEADER_SIZE) as *const Slot) };
        slot.seq.store(5, Ordering::Relaxed);
        assert_eq!(TableView::new(b).ok().and_then(|v| v.slot(0)), None);
    }
}

// ---------------------------------------------------------------------
// The handle before the last at each number (appended area, after the
// code registry).
//
// A stale copy of a number may be of the handle closed last there or of
// one before it, when the number was handed out again and closed again
// before the stale use (the quarantine makes that take as many closes in
// between as it holds). Neither layer can tell which, since the program
// passes only the number, so a report names both: the slot's record and
// this one, copied aside by the writer when it records a new handle at a
// number whose slot holds a closed one. A name, the type, koid and
// generation, and the innermost close frames.

/// Close frames kept of the earlier handle.
pub const EARLIER_DEPTH: usize = 16;
/// Bytes of one earlier-handle record.
pub const EARLIER_SIZE: usize = (2 + NAME_SIZE / 8 + EARLIER_DEPTH + 2 * PY_DEPTH) * 8;

/// Where the earlier-handle area of a table of `capacity` slots starts.
pub const fn earlier_offset(capacity: u32) -> usize {
    codes_offset(capacity) + CODE_SLOTS * CODE_ENTRY_SIZE
}

/// One slot's earlier handle; written under the slot's lock.
#[repr(C)]
pub struct Earlier {
    /// [`EARLIER_PRESENT`] | obj_type (bits 32-62) | generation (low 32).
    pub meta: AtomicU64,
    pub koid: AtomicU64,
    pub name: [AtomicU64; NAME_SIZE / 8],
    pub closed: [AtomicU64; EARLIER_DEPTH],
    /// The Python frames of its close ([`PyStacks`]' encoding).
    pub py_closed: [AtomicU64; 2 * PY_DEPTH],
}

const _: () = assert!(core::mem::size_of::<Earlier>() == EARLIER_SIZE);

/// `Earlier::meta`'s bit for "a record is here".
pub const EARLIER_PRESENT: u64 = 1 << 63;

/// An earlier handle as read from a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EarlierRecord {
    pub generation: u32,
    pub obj_type: u32,
    pub koid: u64,
    pub name: Name,
    /// At most [`EARLIER_DEPTH`] frames.
    pub closed: Stack,
    /// The Python frames of its close (CPython programs).
    pub py_closed: PyStack,
}

impl Earlier {
    /// Before a new handle is recorded at this slot (`prior` its value,
    /// `stacks` its records, not yet overwritten): keeps the closed handle
    /// the slot holds, or clears the record when it holds none (a number
    /// never closed, or closed without a record). Only while holding the
    /// slot's lock.
    pub fn keep(
        &self,
        _lock: &Locked,
        prior: &SlotValue,
        stacks: &SlotStacks,
        py: Option<&PyStacks>,
    ) {
        let first = stacks.closed[0].load(Ordering::Relaxed);
        if first == 0 || prior.state == state::OPEN {
            self.meta.store(0, Ordering::Relaxed);
            return;
        }
        for (d, s) in self.closed.iter().zip(&stacks.closed) {
            let pc = s.load(Ordering::Relaxed);
            d.store(pc, Ordering::Relaxed);
            if pc == 0 {
                break;
            }
        }
        for (d, s) in self.name.iter().zip(&stacks.name) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        match py {
            Some(py) => copy_py(&self.py_closed, &py.closed),
            None => self.py_closed[0].store(0, Ordering::Relaxed),
        }
        self.koid.store(prior.koid, Ordering::Relaxed);
        self.meta.store(
            EARLIER_PRESENT
                | (u64::from(prior.obj_type & 0x7fff_ffff) << 32)
                | u64::from(prior.generation),
            Ordering::Relaxed,
        );
    }

    /// Copies another slot's record (a writer's own copy, e.g. after
    /// fork). Only while holding the slot's lock.
    pub fn copy_from(&self, _lock: &Locked, other: &Earlier) {
        let meta = other.meta.load(Ordering::Relaxed);
        self.meta.store(meta, Ordering::Relaxed);
        if meta & EARLIER_PRESENT == 0 {
            return;
        }
        self.koid
            .store(other.koid.load(Ordering::Relaxed), Ordering::Relaxed);
        for (d, s) in self.name.iter().zip(&other.name) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (d, s) in self.closed.iter().zip(&other.closed) {
            let pc = s.load(Ordering::Relaxed);
            d.store(pc, Ordering::Relaxed);
            if pc == 0 {
                break;
            }
        }
        copy_py(&self.py_closed, &other.py_closed);
    }

    fn load(&self) -> Option<EarlierRecord> {
        let meta = self.meta.load(Ordering::Relaxed);
        if meta & EARLIER_PRESENT == 0 {
            return None;
        }
        let mut closed = Stack::default();
        for (i, s) in self.closed.iter().enumerate() {
            let pc = s.load(Ordering::Relaxed);
            if pc == 0 {
                break;
            }
            closed.pcs[i] = pc;
            closed.len = i + 1;
        }
        Some(EarlierRecord {
            generation: meta as u32,
            obj_type: ((meta >> 32) & 0x7fff_ffff) as u32,
            koid: self.koid.load(Ordering::Relaxed),
            name: load_name(&self.name),
            closed,
            py_closed: load_py(&self.py_closed),
        })
    }
}

/// The earlier-handle records a mapping of `mem.len()` bytes holds, at
/// most `n`.
fn earlier_records(mem: &[u8], capacity: u32, n: usize) -> &[Earlier] {
    let off = earlier_offset(capacity);
    let count = (mem.len().saturating_sub(off) / EARLIER_SIZE).min(n);
    if count == 0 {
        return &[];
    }
    // SAFETY: off + count * EARLIER_SIZE <= mem.len(); off is a multiple
    // of 8 and mem is 8-aligned (checked by TableView::new); Earlier is
    // all atomics.
    unsafe { core::slice::from_raw_parts(mem.as_ptr().add(off) as *const Earlier, count) }
}

impl<'a> TableView<'a> {
    /// `fd`'s earlier-handle cell, for a writer.
    pub fn earlier_cell(&self, fd: i32) -> Option<&'a Earlier> {
        self.earlier.get(usize::try_from(fd).ok()?)
    }

    /// The handle that held `fd` before the one its slot records, read
    /// under the slot's counter; None when there is none or it cannot be
    /// read consistently.
    pub fn earlier(&self, fd: i32) -> Option<EarlierRecord> {
        let i = usize::try_from(fd).ok()?;
        self.slots.get(i)?.read_earlier(self.earlier.get(i)?, 64)
    }
}

impl Slot {
    /// Reads the slot's earlier-handle record `e` under the slot's
    /// counter; None when there is none or no consistent read came in
    /// `tries` attempts.
    pub fn read_earlier(&self, e: &Earlier, tries: u32) -> Option<EarlierRecord> {
        for _ in 0..tries {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let r = e.load();
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return r;
            }
        }
        None
    }
}
