//! The shim's process-wide state and its handle table: a sealed memfd
//! named `handles-table:<pid>`, mapped MAP_SHARED, in the layout of
//! `handles_model::table`.

use core::cell::Cell;
use core::ffi::c_char;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use handles_model::protocol::{Message, TableName};
use handles_model::table::{self, state, Locked, Slot, SlotStacks, SlotValue, STACK_DEPTH};

use crate::{fddir, sys};

/// Set once the constructor has published the table; never in a setuid
/// context. Every wrapper is a plain pass-through while it is false.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The table the wrappers check and write: the memfd's mapping (what
/// readers map, what a supervisor may update under the same slot locks);
/// in a forked child that has not made its own table yet, the mirror
/// [`BASE`] (its snapshot of the parent's table at the fork).
static PUB: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// A private anonymous mirror of the shim's own writes, made under the
/// slot lock. It exists for fork: the child gets an exact copy of it at
/// the instant of the fork, while the shared memfd keeps changing under
/// the child (the parent's other threads go on writing it). Null until
/// the process first forks (the atfork prepare handler makes it from the
/// table, [`before_fork`]): a process that never forks never pays for
/// the pages and the copies.
static BASE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// [`BASE`] is 0: not made, 1: being filled (writes mirror themselves
/// already), 2: complete, a child's exact snapshot.
static MIRROR: AtomicU32 = AtomicU32::new(0);
const MIRROR_READY: u32 = 2;
/// In a forked child with no table of its own yet: the parent's table,
/// still mapped here (nothing reads it; unmapped when the child makes its
/// own).
static STALE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// Set in a forked child until it has a table of its own: it makes one
/// at its first table write ([`ensure_own_table`]), or never if it execs
/// or exits first. Until then its wrappers read its snapshot (`PUB` is
/// `BASE`).
static PENDING: AtomicBool = AtomicBool::new(false);
/// The thread id of the thread making the child's own table (0: none).
static MAKER: AtomicI32 = AtomicI32::new(0);
static CAP: AtomicU32 = AtomicU32::new(0);
pub static TABLE_FD: AtomicI32 = AtomicI32::new(-1);
pub static TOMB_SRC: AtomicI32 = AtomicI32::new(-1);
pub static MIXER: AtomicU32 = AtomicU32::new(0);
/// RLIMIT_NOFILE (soft) at start-up.
pub static LIMIT: AtomicU64 = AtomicU64::new(1024);
/// Open and quarantined fds the shim knows of (not its own).
pub static USED: AtomicI32 = AtomicI32::new(0);
/// Where the shim puts its own fds ([`table::own_fds_at`]: in the model,
/// so that the supervisor finds the table without listing /proc/PID/fd).
pub static HIGH: AtomicI32 = AtomicI32::new(1024);
/// Slots per bit of [`WRITTEN`]: one 4 KiB page of slots.
const GROUP: usize = 4096 / table::SLOT_SIZE;
/// One bit per group of [`GROUP`] slots the shim ever wrote: a forked
/// child copies those groups of the mirror, not the whole capacity (up to
/// 2^20 slots, most never touched: reading them would fault in page after
/// page of zeroes in every child).
static WRITTEN: [AtomicU64; table::MAX_CAPACITY as usize / GROUP / 64] =
    [const { AtomicU64::new(0) }; table::MAX_CAPACITY as usize / GROUP / 64];

/// Sequentially consistent with the load of [`BASE`] that follows it in
/// [`mirror`] and with [`enable_mirror`]'s store and scan: a writer that
/// did not see the mirror yet has marked its group before the scan reads
/// it (plain loads and one `lock or` on x86).
fn mark_written(fd: i32) {
    let g = fd as u32 as usize / GROUP;
    if let Some(w) = WRITTEN.get(g / 64) {
        let bit = 1u64 << (g % 64);
        if w.load(SeqCst) & bit == 0 {
            w.fetch_or(bit, SeqCst);
        }
    }
}
/// The fds in `lo..=hi` (within the table) whose slots the shim may have
/// written: the rest are FREE with generation 0, and reading them would
/// only fault in pages of zeroes.
pub fn maybe_written(lo: u32, hi: u32) -> impl Iterator<Item = i32> {
    let cap = CAP.load(Relaxed);
    let end = hi.min(cap.saturating_sub(1)) as usize;
    let start = lo as usize;
    (start / GROUP * GROUP..=end)
        .step_by(GROUP)
        .filter(|&g| {
            WRITTEN
                .get(g / GROUP / 64)
                .is_some_and(|w| w.load(SeqCst) & (1 << (g / GROUP % 64)) != 0)
        })
        .flat_map(move |g| g.max(start)..(g + GROUP).min(end + 1))
        .map(|i| i as i32)
        .filter(move |_| cap > 0)
}

/// A word in a MADV_WIPEONFORK page: the kernel zeroes it in any child
/// made without CLONE_VM, so a child that skipped the atfork handler (raw
/// fork/clone) notices before it writes its parent's table.
static FORK_MARK: AtomicPtr<AtomicU32> = AtomicPtr::new(ptr::null_mut());
/// The pid the table was made by: tells a mark page the kernel dropped
/// (MAP_DROPPABLE) from a child's.
static OWN_PID: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// Set while this thread runs shim code: a nested call (from a signal
    /// handler, or from a libc function the shim calls) goes straight to
    /// the raw syscall.
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside the shim; false if it already was.
#[inline(always)]
pub fn enter() -> bool {
    IN_SHIM.with(|c| !c.replace(true))
}

#[inline(always)]
pub fn leave() {
    IN_SHIM.with(|c| c.set(false));
}

#[inline(always)]
pub fn active() -> bool {
    ACTIVE.load(Relaxed)
}

/// The slot of `fd`; None for negative fds and fds beyond the table.
#[inline(always)]
pub fn slot(fd: i32) -> Option<&'static Slot> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    Some(slot_at(pb, fd))
}

pub fn stacks(fd: i32) -> Option<&'static SlotStacks> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    Some(stacks_at(pb, cap, fd))
}

/// The Python records of `fd` in the published table.
pub fn py_stacks(fd: i32) -> Option<&'static table::PyStacks> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    // SAFETY: as slot_at; the Python area follows the stack records, and
    // the table is mapped table_size(cap) bytes long.
    Some(unsafe {
        &*(pb.add(table::py_offset(cap) + fd as usize * table::PY_STACKS_SIZE)
            as *const table::PyStacks)
    })
}

/// The code registry of the published table.
pub fn codes() -> Option<table::CodeRegistry<'static>> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if pb.is_null() {
        return None;
    }
    // SAFETY: the table is mapped table_size(cap) bytes long and ends with
    // the registry; its offset is a multiple of 8; all atomics.
    let entries = unsafe {
        core::slice::from_raw_parts(
            pb.add(table::codes_offset(cap)) as *const table::CodeEntry,
            table::CODE_SLOTS,
        )
    };
    Some(table::CodeRegistry { entries })
}

/// The calling thread's Python frames for a record whose native stack is
/// `pcs`: none when no stack is recorded at all (HANDLES_STACK_DEPTH=0,
/// fds registered at start-up).
fn py_frames(pcs: &Pcs) -> crate::python::PyPcs {
    if pcs.n == 0 {
        crate::python::PyPcs::EMPTY
    } else {
        crate::python::capture()
    }
}

/// The slot's state, one relaxed load: the wrappers' fast path.
#[inline(always)]
pub fn state_of(fd: i32) -> Option<u32> {
    slot(fd).map(|s| s.state.load(Relaxed))
}

fn slot_at(base: *mut u8, fd: i32) -> &'static Slot {
    // SAFETY: callers pass a live table mapping of CAP slots and fd < CAP.
    unsafe { &*(base.add(table::HEADER_SIZE + fd as usize * table::SLOT_SIZE) as *const Slot) }
}

fn stacks_at(base: *mut u8, cap: u32, fd: i32) -> &'static SlotStacks {
    // SAFETY: as slot_at; the stack area follows the slots.
    unsafe {
        &*(base.add(table::stacks_offset(cap) + fd as usize * table::STACKS_SIZE)
            as *const SlotStacks)
    }
}

thread_local! {
    /// Which stack records of the slot being written changed (bit 0:
    /// creation, bit 1: close), so that publishing copies only those.
    static DIRTY: Cell<u8> = const { Cell::new(0) };
}

const DIRTY_CREATED: u8 = 1;
const DIRTY_CLOSED: u8 = 2;

fn mark_dirty(bits: u8) {
    DIRTY.with(|d| d.set(d.get() | bits));
}

/// Mirrors slot `fd` (the value, and the stack records that changed)
/// into the private copy, once there is one. The caller holds the slot's
/// lock, so it is the only writer of the mirror slot.
fn mirror(fd: i32, s: &Slot, l: &Locked) {
    let dirty = DIRTY.with(|d| d.replace(0));
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return;
    }
    mark_written(fd);
    let base = BASE.load(SeqCst);
    // No mirror yet (no fork so far), or the mirror is the table itself
    // (a child that could not make its own): nothing to copy, and taking
    // the mirror slot's lock would take the caller's.
    if base.is_null() || base == pb {
        return;
    }
    let m = slot_at(base, fd);
    let ml = m.steal_lock();
    m.store(&ml, s.load(l));
    if dirty != 0 {
        let (dst, src) = (stacks_at(base, cap, fd), stacks_at(pb, cap, fd));
        if dirty & DIRTY_CREATED != 0 {
            // A new handle: creation stack, (empty) close stack and name.
            dst.copy_from(&ml, src);
        } else {
            dst.set_closed(&ml, src.closed_stack().frames());
        }
    }
    m.unlock(ml);
}

/// Mirrors slot `fd` and releases its lock.
pub fn unlock(fd: i32, s: &Slot, l: Locked) {
    mirror(fd, s, &l);
    s.unlock(l);
}

/// Takes a slot's lock. Another thread holds it for at most one syscall;
/// the same thread never waits for itself (nested calls skip the table).
pub fn lock(s: &Slot) -> Locked {
    for i in 0u32..200_000 {
        if let Some(l) = s.try_lock() {
            return l;
        }
        if i > 100 {
            // SAFETY: sched_yield has no arguments.
            unsafe { sys::raw(libc::SYS_sched_yield, [0; 6]) };
        } else {
            core::hint::spin_loop();
        }
    }
    // A holder that stays away this long is stopped (debugger) or gone.
    s.steal_lock()
}

/// Return addresses, innermost first.
#[derive(Clone, Copy)]
pub struct Pcs {
    pub pcs: [u64; STACK_DEPTH],
    pub n: usize,
}

impl Pcs {
    pub const EMPTY: Pcs = Pcs {
        pcs: [0; STACK_DEPTH],
        n: 0,
    };
    pub fn frames(&self) -> &[u64] {
        &self.pcs[..self.n.min(STACK_DEPTH)]
    }
}

fn is_internal(fd: i32) -> bool {
    fd >= 0 && (fd == TABLE_FD.load(Relaxed) || fd == TOMB_SRC.load(Relaxed))
}

/// True for the shim's own fds (the table and the tombstone source).
pub fn internal(fd: i32) -> bool {
    is_internal(fd)
}

fn counted(st: u32) -> bool {
    st == state::OPEN || st == state::TOMBSTONE
}

/// Keeps [`USED`] in step with a slot going from state `old` to `new`.
pub fn account(old: u32, new: u32) {
    match (counted(old), counted(new)) {
        (false, true) => {
            USED.fetch_add(1, Relaxed);
        }
        (true, false) => {
            USED.fetch_sub(1, Relaxed);
        }
        _ => {}
    }
}

/// The name a new handle is recorded with (table v3: the path as the
/// program passed it, cut to its tail past 63 bytes).
#[derive(Clone, Copy)]
pub enum Named {
    No,
    /// The program's NUL-terminated path (null: none). Read after the
    /// call succeeded, so the kernel has already read it.
    Path(*const c_char),
    /// `memfd:` and the program's NUL-terminated memfd name.
    Memfd(*const c_char),
    /// A duplicate of the handle at this fd: its name and its type.
    DupOf(i32),
}

/// Longest path the kernel accepts (PATH_MAX, with its NUL).
const PATH_MAX: usize = 4096;

/// The bytes of a NUL-terminated string, at most `max` of them.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string (or at least `max`
/// readable bytes) that stays alive while the slice is used.
unsafe fn c_bytes<'a>(p: *const c_char, max: usize) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    let mut n = 0;
    // SAFETY: the caller's promise; the scan stops at the NUL or at max.
    while n < max && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the n bytes just scanned.
    unsafe { core::slice::from_raw_parts(p.cast::<u8>(), n) }
}

/// Stores `name` for the new handle at `fd`; runs under its lock after
/// `set_created` (which cleared the old name). `dup` is the source's name,
/// read before `set_created` (the source may be the same slot: freopen).
fn set_name(st: &SlotStacks, l: &Locked, name: Named, dup: &table::Name) {
    match name {
        Named::No => {}
        Named::Path(p) => {
            // SAFETY: see Named::Path.
            let b = unsafe { c_bytes(p, PATH_MAX) };
            if !b.is_empty() {
                st.set_name(l, b);
            }
        }
        Named::Memfd(p) => {
            // memfd names are at most 249 bytes (MFD_NAME_MAX_LEN).
            let mut buf = [0u8; 6 + 249];
            buf[..6].copy_from_slice(b"memfd:");
            // SAFETY: see Named::Memfd; the kernel accepted at most 249
            // bytes before the NUL.
            let b = unsafe { c_bytes(p, 249) };
            buf[6..6 + b.len()].copy_from_slice(b);
            st.set_name(l, &buf[..6 + b.len()]);
        }
        Named::DupOf(_) => {
            if dup.len > 0 {
                st.set_name(l, dup.as_bytes());
            }
        }
    }
}

/// Records a new handle at `fd` (its number may be reused: the generation
/// moves on). `ty` is an obj_type code, 0 when the call did not tell;
/// `how` a `table::how` code (the creating syscall's); `name` what the
/// handle was opened by. A [`Named::DupOf`] takes the source's type too.
pub fn created(fd: i32, ty: u32, how: u32, name: Named, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    created_locked(fd, s, &l, ty, how, name, pcs);
    unlock(fd, s, l);
}

/// [`created`] for a caller that already holds the slot's lock.
pub fn created_locked(fd: i32, s: &Slot, l: &Locked, ty: u32, how: u32, name: Named, pcs: &Pcs) {
    fddir::forget(fd);
    crate::report::note_created(fd);
    let old = s.load(l);
    if old.state == state::INTERNAL {
        lost_internal(fd);
    }
    // A dup's source is read without its lock (taking a second slot lock
    // here could deadlock): only a program that races a close of the
    // source against the dup sees a torn name.
    let (ty, dup) = match name {
        Named::DupOf(src) => (
            slot(src).map_or(ty, |x| x.obj_type.load(Relaxed)),
            stacks(src).map(|x| x.name()).unwrap_or_default(),
        ),
        _ => (ty, table::Name::default()),
    };
    s.store(
        l,
        SlotValue {
            state: state::OPEN,
            generation: old.generation.wrapping_add(1),
            obj_type: ty,
            koid: 0,
            rights: 0,
            how,
        },
    );
    if let Some(st) = stacks(fd) {
        st.set_created(l, pcs.frames());
        set_name(st, l, name, &dup);
        mark_dirty(DIRTY_CREATED | DIRTY_CLOSED);
    }
    if let Some(py) = py_stacks(fd) {
        py.set_created(l, py_frames(pcs).frames());
    }
    account(old.state, state::OPEN);
}

/// Takes over an fd the kernel has open but the shim never saw created
/// (inherited, or opened by a path that bypasses the wrappers).
pub fn adopt(fd: i32) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    let mut v = s.load(&l);
    if v.state == state::FREE {
        v.state = state::OPEN;
        v.obj_type = 0;
        v.how = table::how::ADOPTED;
        s.store(&l, v);
        if let Some(st) = stacks(fd) {
            st.set_created(&l, &[]);
            mark_dirty(DIRTY_CREATED | DIRTY_CLOSED);
        }
        if let Some(py) = py_stacks(fd) {
            py.set_created(&l, &[]);
        }
        account(state::FREE, state::OPEN);
    }
    unlock(fd, s, l);
}

/// Records that the handle at `fd` was closed, quarantined or not; the
/// caller holds the lock.
pub fn closed_locked(fd: i32, s: &Slot, l: &Locked, tombstone: bool, pcs: &Pcs) {
    fddir::forget(fd);
    let mut v = s.load(l);
    let was = v.state;
    v.state = if tombstone {
        state::TOMBSTONE
    } else {
        state::FREE
    };
    s.store(l, v);
    if let Some(st) = stacks(fd) {
        st.set_closed(l, pcs.frames());
        mark_dirty(DIRTY_CLOSED);
    }
    if let Some(py) = py_stacks(fd) {
        py.set_closed(l, py_frames(pcs).frames());
    }
    account(was, v.state);
}

/// The shim's own fd at `fd` disappeared behind its back (the kernel
/// handed the number out again). The tombstone source is re-made on
/// demand; the table mapping outlives its fd, only `handles <pid>` loses
/// sight of it.
fn lost_internal(fd: i32) {
    if TOMB_SRC.load(Relaxed) == fd {
        TOMB_SRC.store(-1, Relaxed);
    }
    if TABLE_FD.load(Relaxed) == fd {
        TABLE_FD.store(-1, Relaxed);
    }
}

fn mark_internal(fd: i32) {
    if let Some(s) = slot(fd) {
        let l = lock(s);
        let mut v = s.load(&l);
        account(v.state, state::INTERNAL);
        v.state = state::INTERNAL;
        v.obj_type = 0;
        s.store(&l, v);
        unlock(fd, s, l);
    }
}

/// The shim gave up its own fd `fd`: the slot is free again.
pub fn free_internal(fd: i32) {
    if let Some(s) = slot(fd) {
        let l = lock(s);
        let mut v = s.load(&l);
        if v.state == state::INTERNAL {
            v.state = state::FREE;
            s.store(&l, v);
        }
        unlock(fd, s, l);
    }
}

/// RLIMIT_NOFILE now, (soft, hard); None when it cannot be read.
pub fn nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 on this process, reading into a local struct.
    let r = unsafe {
        sys::sc(
            libc::SYS_prlimit64,
            [
                0,
                libc::RLIMIT_NOFILE as u64,
                0,
                (&raw mut lim) as u64,
                0,
                0,
            ],
        )
    };
    (r == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

fn set_soft_nofile(soft: u64, hard: u64) -> bool {
    let lim = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit64 on this process from a local struct.
    let r = unsafe {
        sys::sc(
            libc::SYS_prlimit64,
            [
                0,
                libc::RLIMIT_NOFILE as u64,
                (&raw const lim) as u64,
                0,
                0,
                0,
            ],
        )
    };
    r == 0
}

/// Runs `f`, which makes an fd at number `at` or a few above, with the
/// soft RLIMIT_NOFILE raised past it for the moment when `at` is at or
/// beyond it and the hard limit allows (the kernel refuses fd numbers
/// beyond the soft limit, but keeps fds made there). The shim issues
/// this with the cookie: a supervisor never sees the short raise.
fn beyond_soft(at: i32, f: impl FnOnce() -> i64) -> Option<i64> {
    let (soft, hard) = nofile()?;
    if (at as u64) < soft {
        return Some(f());
    }
    let want = (at as u64 + 8).min(hard);
    if want <= at as u64 || !set_soft_nofile(want, hard) {
        return None;
    }
    let r = f();
    set_soft_nofile(soft, hard);
    Some(r)
}

/// A close-on-exec duplicate of `fd` at [`HIGH`] or the first free
/// number above it (raw result).
fn dup_high(fd: i32) -> i64 {
    let high = HIGH.load(Relaxed);
    let n = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, high as u64);
    if n != -(libc::EINVAL as i64) {
        return n;
    }
    // EINVAL: HIGH is at or beyond the soft limit.
    beyond_soft(high, || sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, high as u64)).unwrap_or(n)
}

/// Moves a fresh fd of the shim's up to [`HIGH`] (close-on-exec), closes
/// the original and returns the new number (or the original when that
/// fails: every number from HIGH up is taken).
fn move_high(fd: i32) -> i32 {
    let n = dup_high(fd);
    if n < 0 {
        return fd;
    }
    sys::close(fd);
    n as i32
}

/// EMFILE: gives the program the shim's own fd `which` (the tombstone
/// source first, the table fd last) when it sits below the soft limit.
/// The table fd is moved beyond the soft limit when the hard limit
/// allows (and announced there), else closed: the mapping outlives it,
/// only `handles <pid>` loses sight of the table. Returns whether a
/// number below the limit was freed.
pub fn yield_internal(which: &AtomicI32) -> bool {
    let fd = which.load(Relaxed);
    let Some((soft, _)) = nofile() else {
        return false;
    };
    if fd < 0 || fd as u64 >= soft {
        return false;
    }
    let is_table = core::ptr::eq(which, &TABLE_FD);
    let moved = if is_table {
        beyond_soft(soft as i32, || sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, soft)).filter(|&n| n >= 0)
    } else {
        None
    };
    which.store(moved.map_or(-1, |n| n as i32), Relaxed);
    sys::close(fd);
    free_internal(fd);
    if let Some(n) = moved {
        mark_internal(n as i32);
        announce();
    }
    true
}

/// Opens the tombstone source if there is none: an O_PATH fd on the
/// table's memfd, so that every quarantined number fails read, write,
/// ioctl, mmap... with EBADF and, not being a directory, every *at call
/// that takes it as dirfd with ENOTDIR; where open_tree is refused
/// (valgrind, a seccomp sandbox), an O_PATH fd on `/dev/null`, not a
/// directory either. An O_PATH fd on "/" (the first choice) made a
/// relative fstatat/faccessat/unlinkat on a closed dirfd resolve from the
/// root directory whenever nobody checked the call: a silent
/// wrong-object access. The calls that would still answer on an O_PATH
/// fd (fstatat with AT_EMPTY_PATH, statx, ...) are judged by `lookup`.
pub fn tomb_src() -> i32 {
    let cur = TOMB_SRC.load(Relaxed);
    if cur >= 0 {
        return cur;
    }
    let table = TABLE_FD.load(Relaxed);
    let mut fd = -1;
    if table >= 0 {
        // SAFETY: open_tree(fd, "", AT_EMPTY_PATH) reopens our own memfd
        // as O_PATH; the path is a static empty C string.
        fd = unsafe {
            sys::own(
                libc::SYS_open_tree,
                [
                    table as u64,
                    c"".as_ptr() as u64,
                    (libc::AT_EMPTY_PATH | libc::O_CLOEXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
    if fd < 0 {
        // SAFETY: openat on a static NUL-terminated path.
        fd = unsafe {
            sys::own(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    c"/dev/null".as_ptr() as u64,
                    (libc::O_PATH | libc::O_CLOEXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
    if fd < 0 {
        return -1;
    }
    let fd = move_high(fd as i32);
    TOMB_SRC.store(fd, Relaxed);
    mark_internal(fd);
    fd
}

/// The shim's own fd `fd` is about to be overwritten by the program
/// (dup2 onto it): move it out of the way first.
pub fn relocate_internal(fd: i32) {
    let n = dup_high(fd);
    if TOMB_SRC.load(Relaxed) == fd {
        TOMB_SRC.store(if n >= 0 { n as i32 } else { -1 }, Relaxed);
    }
    let table = TABLE_FD.load(Relaxed) == fd;
    if table {
        TABLE_FD.store(if n >= 0 { n as i32 } else { -1 }, Relaxed);
    }
    if n >= 0 {
        mark_internal(n as i32);
        if table {
            announce();
        }
    }
}

/// Whether the supervisor wants announcements (`HANDLES_ANNOUNCE=0`: it
/// finds the table by its name when it needs it, which under its lenient
/// filter and without leak checks is rarely; each announcement is a
/// ptrace stop).
pub static ANNOUNCE: AtomicBool = AtomicBool::new(true);

/// Tells a supervisor where the table is: `fcntl(TABLE_FD, F_GETFD)`
/// with the ANNOUNCE marker in the cookie register. Its prefilter stops
/// on every marker, so the supervisor learns of the table without
/// scanning /proc/PID/fd, and maps it from /proc/PID/fd/<arg0>. Nothing
/// without a cookie (no supervisor to tell).
pub fn announce() {
    let fd = TABLE_FD.load(Relaxed);
    if !sys::COOKIE_ON.load(Relaxed) || !ANNOUNCE.load(Relaxed) || fd < 0 || !has_own_table() {
        return;
    }
    let e = Message::Announce { fd }.encode(0);
    // SAFETY: F_GETFD on the table's fd reads its flags, nothing else.
    unsafe { sys::marked(e.nr, e.args, e.tag) };
}

/// Creates, sizes, seals and maps a new table memfd; returns (fd, base).
fn new_table(pid: i32, cap: u32) -> Option<(i32, *mut u8)> {
    let name = TableName::new(pid);
    // SAFETY: memfd_create with a NUL-terminated name in a local buffer.
    let fd = unsafe {
        sys::own(
            libc::SYS_memfd_create,
            [
                name.as_cstr().as_ptr() as u64,
                (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as u64,
                0,
                0,
                0,
                0,
            ],
        )
    };
    if fd < 0 {
        return None;
    }
    let fd = fd as i32;
    let len = table::table_size(cap);
    // SAFETY: ftruncate on our memfd.
    let r = unsafe { sys::sc(libc::SYS_ftruncate, [fd as u64, len as u64, 0, 0, 0, 0]) };
    // Readers map the whole file: it must never shrink under them.
    let sealed = sys::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK as u64);
    if r < 0 || sealed < 0 {
        sys::close(fd);
        return None;
    }
    // SAFETY: a fresh shared mapping of our memfd.
    let base = unsafe {
        sys::sc(
            libc::SYS_mmap,
            [
                0,
                len as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                libc::MAP_SHARED as u64,
                fd as u64,
                0,
            ],
        )
    };
    if (-4095..0).contains(&base) {
        sys::close(fd);
        return None;
    }
    Some((fd, base as *mut u8))
}

fn header(base: *mut u8) -> &'static table::Header {
    // SAFETY: base is a live, page-aligned table mapping; all atomics.
    unsafe { &*(base as *const table::Header) }
}

/// Makes the process's table (constructor only, single-threaded in
/// practice). Returns false when the shim must stay inactive.
pub fn create_table(pid: i32, cap: u32) -> bool {
    let Some((fd, base)) = new_table(pid, cap) else {
        return false;
    };
    let mixer = sys::random_u32();
    MIXER.store(mixer, Relaxed);
    CAP.store(cap, Relaxed);
    PUB.store(base, Relaxed);
    OWN_PID.store(pid, Relaxed);
    header(base).init(cap, pid as u32, mixer, table::writer::SHIM);
    let fd = move_high(fd);
    TABLE_FD.store(fd, Relaxed);
    mark_internal(fd);
    init_fork_mark();
    true
}

/// A private anonymous read-write mapping.
fn anon(len: usize) -> Option<*mut u8> {
    // SAFETY: a new private anonymous mapping, ours.
    let p = unsafe {
        sys::sc(
            libc::SYS_mmap,
            [
                0,
                len as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u64,
                u64::MAX,
                0,
            ],
        )
    };
    (!(-4095..0).contains(&p)).then_some(p as *mut u8)
}

fn init_fork_mark() {
    // A droppable page is wiped in a child in one syscall; the madvise a
    // private page needs cost ~6 µs a process on the test VM (the advice
    // on a page of the shim's .bss instead split that mapping in three,
    // which cost as much). A dropped page reads as zero like a child's:
    // own_table tells them apart by the pid.
    // SAFETY: a new anonymous page, ours.
    let p = unsafe {
        sys::sc(
            libc::SYS_mmap,
            [
                0,
                4096,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_ANONYMOUS | libc::MAP_DROPPABLE) as u64,
                u64::MAX,
                0,
            ],
        )
    };
    let p = if (-4095..0).contains(&p) {
        // Before 6.11: a private page, advised.
        let Some(p) = anon(4096) else { return };
        // SAFETY: advising our own page.
        let r = unsafe {
            sys::raw(
                libc::SYS_madvise,
                [p as u64, 4096, libc::MADV_WIPEONFORK as u64, 0, 0, 0],
            )
        };
        if r < 0 {
            // Kernels before 4.14: rely on the atfork handler alone.
            return;
        }
        p as i64
    } else {
        p
    };
    let mark = p as *mut AtomicU32;
    // SAFETY: the page is mapped, writable and aligned.
    unsafe { (*mark).store(1, Relaxed) };
    FORK_MARK.store(mark, Release);
}

/// Called before every table write: a forked child makes its own table
/// first (after a fork that bypassed the atfork handlers too, noticed
/// by the MADV_WIPEONFORK mark: such a child still maps its parent's
/// table as its own).
#[inline(always)]
pub fn ensure_own_table() {
    if needs_own_table() {
        own_table();
    }
}

fn needs_own_table() -> bool {
    let m = FORK_MARK.load(Relaxed);
    // SAFETY: the mark page stays mapped for the life of the process (and
    // is inherited, zeroed, by children).
    PENDING.load(Acquire) || (!m.is_null() && unsafe { (*m).load(Acquire) } == 0)
}

/// Whether the table the wrappers use is this process's own published
/// one (not a forked child's snapshot, nor its parent's table).
fn has_own_table() -> bool {
    let pb = PUB.load(Relaxed);
    !pb.is_null() && pb != BASE.load(Relaxed) && !needs_own_table()
}

/// The atfork prepare handler: the mirror a child will read is made at
/// the first fork, from the table, then kept up to date by every write.
/// Runs in the parent, as an ordinary (non-nested) call of the shim.
pub extern "C" fn before_fork() {
    if !active() || MIRROR.load(Acquire) == MIRROR_READY || PUB.load(Relaxed).is_null() {
        return;
    }
    if !enter() {
        // A fork from a signal handler that interrupted the shim: this
        // thread may hold a slot lock. The child copies its parent's
        // table as after a raw fork.
        return;
    }
    if MIRROR.compare_exchange(0, 1, Acquire, Acquire).is_ok() {
        let made = enable_mirror();
        MIRROR.store(if made { MIRROR_READY } else { 0 }, Release);
    } else {
        // Another thread forking at the same time is filling it: this
        // child must not get it half filled.
        for _ in 0..100_000 {
            if MIRROR.load(Acquire) != 1 {
                break;
            }
            // SAFETY: sched_yield has no arguments.
            unsafe { sys::raw(libc::SYS_sched_yield, [0; 6]) };
        }
    }
    leave();
}

/// Makes the mirror: publishes it first, so that every write from then
/// on mirrors itself, then copies every slot written so far, each under
/// its lock. A writer either marked its group before the scan below (and
/// the copy, locking the slot after it, takes its value) or sees the
/// mirror (both sides sequentially consistent, see [`mark_written`]).
fn enable_mirror() -> bool {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    let Some(base) = anon(table::table_size(cap)) else {
        return false;
    };
    BASE.store(base, SeqCst);
    for i in maybe_written(0, cap) {
        let s = slot_at(pb, i);
        let l = lock(s);
        let v = s.load(&l);
        if v.state != state::FREE || v.generation != 0 {
            let m = slot_at(base, i);
            let ml = m.steal_lock();
            m.store(&ml, v);
            stacks_at(base, cap, i).copy_from(&ml, stacks_at(pb, cap, i));
            m.unlock(ml);
        }
        s.unlock(l);
    }
    true
}

/// The mirror, when it is complete (a child's exact snapshot).
fn ready_mirror() -> *mut u8 {
    if MIRROR.load(Acquire) == MIRROR_READY {
        BASE.load(Relaxed)
    } else {
        ptr::null_mut()
    }
}

/// The atfork child handler: the child goes on reading its snapshot (the
/// mirror, inherited copy-on-write) and makes a table of its own only at
/// its first write. A child that execs or exits first never makes one:
/// no memfd, no copy, no announcement (most forked children exec at
/// once). Runs in the child, single-threaded; raw syscalls only (none
/// here).
pub extern "C" fn after_fork_child() {
    if !active() {
        return;
    }
    // A thread of the parent making its own table is not in this child.
    MAKER.store(0, Relaxed);
    let base = ready_mirror();
    let pb = PUB.load(Relaxed);
    if !base.is_null() && pb != base {
        STALE.store(pb, Relaxed);
        PUB.store(base, Relaxed);
    }
    // Without a complete mirror (the fork came from inside the shim)
    // the child reads its parent's table until it makes its own, as
    // after a raw fork.
    PENDING.store(true, Release);
}

/// Makes this forked child's own table, once: the first thread to get
/// here makes it, any other waits until it is there (it is about to
/// write it).
#[cold]
#[inline(never)]
fn own_table() {
    let me = sys::gettid();
    loop {
        match MAKER.compare_exchange(0, me, Acquire, Relaxed) {
            Ok(_) => break,
            Err(owner) => {
                if !needs_own_table() {
                    return;
                }
                if !sys::thread_alive(owner) {
                    // Its maker is not in this process (a raw fork while
                    // a parent's thread was making its table).
                    if MAKER.compare_exchange(owner, me, Acquire, Relaxed).is_ok() {
                        break;
                    }
                    continue;
                }
                // SAFETY: sched_yield has no arguments.
                unsafe { sys::raw(libc::SYS_sched_yield, [0; 6]) };
            }
        }
    }
    if needs_own_table() {
        if !PENDING.load(Acquire) && sys::getpid() == OWN_PID.load(Relaxed) {
            // Not a child: the kernel dropped the mark's page (memory
            // pressure), which then reads as zero.
            rearm_fork_mark();
        } else {
            make_own_table();
        }
    }
    MAKER.store(0, Release);
}

fn rearm_fork_mark() {
    let m = FORK_MARK.load(Relaxed);
    if !m.is_null() {
        // SAFETY: see ensure_own_table.
        unsafe { (*m).store(1, Release) };
    }
}

/// The child side of fork, made lazily: a new published table named with
/// the child's pid, filled from the child's snapshot (the mirror; the
/// parent's table as it is now when there is none, after a raw fork of a
/// process that never forked through glibc), a new mixer, and the
/// parent's table fd replaced by the child's at the same number. Raw
/// syscalls only: runs in the child of a possibly multi-threaded parent.
fn make_own_table() {
    let pid = sys::getpid();
    let done = || {
        OWN_PID.store(pid, Relaxed);
        rearm_fork_mark();
        PENDING.store(false, Release);
    };
    let cap = CAP.load(Relaxed);
    let cur = PUB.load(Relaxed);
    // A mirror a raw fork caught half filled is no snapshot.
    let base = ready_mirror();
    let (src, stale) = if cur == base {
        (base, STALE.swap(ptr::null_mut(), Relaxed))
    } else if base.is_null() {
        (cur, cur)
    } else {
        (base, cur)
    };
    let unmap = |p: *mut u8| {
        if !p.is_null() && p != base {
            // SAFETY: unmapping the parent's table from this process
            // only; nothing here points into it any more.
            unsafe {
                sys::sc(
                    libc::SYS_munmap,
                    [p as u64, table::table_size(cap) as u64, 0, 0, 0, 0],
                )
            };
        }
    };
    let Some((fd, pb)) = (!src.is_null()).then(|| new_table(pid, cap)).flatten() else {
        // No memfd (fds exhausted, no memory): the child goes on with its
        // snapshot as a private table nobody else sees, or, without one,
        // with no table at all (never with its parent's).
        PUB.store(if src == base { base } else { ptr::null_mut() }, Release);
        unmap(stale);
        done();
        return;
    };
    let mixer = sys::random_u32();
    for i in maybe_written(0, cap) {
        // The child's exact copy of the parent's table at the fork (a
        // slot a thread of the parent was writing may be torn).
        let s = slot_at(src, i);
        if s.state.load(Relaxed) == state::FREE && s.generation.load(Relaxed) == 0 {
            continue;
        }
        let p = slot_at(pb, i);
        let l = p.steal_lock();
        p.store(
            &l,
            SlotValue {
                state: s.state.load(Relaxed),
                generation: s.generation.load(Relaxed),
                obj_type: s.obj_type.load(Relaxed),
                koid: s.koid.load(Relaxed),
                rights: s.rights.load(Relaxed),
                how: s.how.load(Relaxed),
            },
        );
        stacks_at(pb, cap, i).copy_from(&l, stacks_at(src, cap, i));
        p.unlock(l);
    }
    header(pb).init(cap, pid as u32, mixer, table::writer::SHIM);
    MIXER.store(mixer, Relaxed);
    PUB.store(pb, Release);
    unmap(stale);
    let old_fd = TABLE_FD.load(Relaxed);
    let replaced = old_fd >= 0 && {
        let mut r = sys::dup3(fd, old_fd, libc::O_CLOEXEC);
        if r == -(libc::EBADF as i64) {
            // The parent's table fd sits beyond the soft limit.
            r = beyond_soft(old_fd, || sys::dup3(fd, old_fd, libc::O_CLOEXEC)).unwrap_or(r);
        }
        r == old_fd as i64
    };
    if replaced {
        sys::close(fd);
    } else {
        let fd = move_high(fd);
        TABLE_FD.store(fd, Relaxed);
        mark_internal(fd);
    }
    done();
    announce();
}

/// The fds open when the constructor started, listed before the shim
/// made its own (so the listing walks the program's small fd table).
pub struct Listing {
    fds: [i32; 256],
    n: usize,
    /// More than fit, or /proc could not be read.
    incomplete: bool,
}

/// Calls `f` with every fd open now, listed from /proc/self/fd with raw
/// syscalls that carry the cookie: no allocation, and no close for a
/// supervisor to quarantine. False when the listing failed.
fn each_open_fd(mut f: impl FnMut(i32)) -> bool {
    // SAFETY: openat on a static NUL-terminated path.
    let dfd = unsafe {
        sys::own(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                c"/proc/self/fd".as_ptr() as u64,
                (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )
    };
    if dfd < 0 {
        return false;
    }
    let mut buf = [0u64; 512];
    let ok = loop {
        // SAFETY: getdents64 into a local buffer of its length.
        let n = unsafe {
            sys::sc(
                libc::SYS_getdents64,
                [dfd as u64, buf.as_mut_ptr() as u64, 4096, 0, 0, 0],
            )
        };
        if n <= 0 {
            break n == 0;
        }
        // SAFETY: the kernel wrote n bytes of records into buf.
        let bytes = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut at = 0;
        // Each record: d_ino (8), d_off (8), d_reclen (2), d_type (1),
        // then the NUL-terminated name.
        while at + 19 < bytes.len() {
            let reclen = usize::from(u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]));
            if reclen == 0 || at + reclen > bytes.len() {
                break;
            }
            let mut fd: i64 = 0;
            let mut digits = 0;
            for &b in &bytes[at + 19..at + reclen] {
                if !b.is_ascii_digit() || digits > 9 {
                    break;
                }
                fd = fd * 10 + i64::from(b - b'0');
                digits += 1;
            }
            if digits > 0 && fd != dfd && fd <= i64::from(i32::MAX) {
                f(fd as i32);
            }
            at += reclen;
        }
    };
    sys::close(dfd as i32);
    ok
}

/// Fds probed one by one before [`list_open_fds`] lists /proc/self/fd.
const PROBED: i32 = 32;

/// Lists the fds open now (the constructor, before the table exists).
///
/// Linux 6.2 and later give the number of open fds as the size of
/// /proc/self/fd. When that many answer `F_GETFD` among the lowest
/// numbers (stdio, a few more), they are all of them, found with one
/// stat and a few fcntl: listing the directory makes a dentry and an
/// inode for every entry (~40 µs for six fds on a test VM, against ~10 µs
/// for the stat). Otherwise (a high inherited fd, an older kernel, whose
/// size is 0) the directory is listed.
pub fn list_open_fds() -> Listing {
    let mut l = Listing {
        fds: [-1; 256],
        n: 0,
        incomplete: false,
    };
    let count = sys::stat_path(b"/proc/self/fd\0", 0).map_or(0, |st| st.st_size);
    if (1..=i64::from(PROBED)).contains(&count) {
        for fd in 0..PROBED {
            if sys::is_open(fd) {
                l.fds[l.n] = fd;
                l.n += 1;
                if l.n as i64 == count {
                    return l;
                }
            }
            if count - l.n as i64 > i64::from(PROBED - 1 - fd) {
                // The rest cannot all be below PROBED.
                break;
            }
        }
        l.n = 0;
    }
    let ok = each_open_fd(|fd| {
        if l.n < l.fds.len() {
            l.fds[l.n] = fd;
            l.n += 1;
        } else {
            l.incomplete = true;
        }
    });
    l.incomplete |= !ok;
    l
}

/// Registers every fd open at start-up (inherited across exec, or opened
/// by constructors that ran before ours) as open, generation 0, how
/// INHERITED.
pub fn register_inherited(first: &Listing) {
    let reg = |fd: i32| {
        if is_internal(fd) {
            return;
        }
        if let Some(s) = slot(fd) {
            let l = lock(s);
            let v = s.load(&l);
            if v.state == state::FREE {
                s.store(
                    &l,
                    SlotValue {
                        state: state::OPEN,
                        how: table::how::INHERITED,
                        ..v
                    },
                );
                account(state::FREE, state::OPEN);
            }
            unlock(fd, s, l);
        }
    };
    for &fd in &first.fds[..first.n] {
        // Listed before the shim's own fds existed: still open unless a
        // constructor closed it since (none of ours does).
        reg(fd);
    }
    if first.incomplete && !each_open_fd(reg) {
        // No /proc: probe every number instead.
        for fd in 0..CAP.load(Relaxed) as i32 {
            if sys::is_open(fd) {
                reg(fd);
            }
        }
    }
}

/// Number of slots.
pub fn capacity() -> u32 {
    CAP.load(Relaxed)
}

/// The executable's file name, for reports (dladdr gives the main program
/// an empty module name). Read at the first report that needs it, not at
/// start-up: most processes never report.
struct ExeName {
    /// 0: not read, 1: being read, 2: read (`bytes` never changes again).
    state: AtomicU32,
    len: AtomicU32,
    bytes: core::cell::UnsafeCell<[u8; 256]>,
}

// SAFETY: `bytes` is written only by the one thread that moved `state`
// from 0 to 1, and read only after `state` says 2 (release/acquire).
unsafe impl Sync for ExeName {}

static EXE: ExeName = ExeName {
    state: AtomicU32::new(0),
    len: AtomicU32::new(0),
    bytes: core::cell::UnsafeCell::new([0; 256]),
};

/// The last component of what `/proc/self/exe` links to (`?` when it
/// cannot be read). Runs inside wrappers (reports): a raw readlink into
/// a local buffer, no allocation. A thread that finds another reading it
/// waits a little, then makes do with `?` (it may be the reader itself,
/// interrupted by a signal handler that reports).
pub fn exe_name() -> &'static [u8] {
    if EXE.state.compare_exchange(0, 1, Acquire, Acquire).is_ok() {
        let mut link = [0u8; PATH_MAX];
        // SAFETY: readlink of a static NUL-terminated path into a local
        // buffer of the length given.
        let n = unsafe {
            sys::sc(
                libc::SYS_readlink,
                [
                    c"/proc/self/exe".as_ptr() as u64,
                    link.as_mut_ptr() as u64,
                    link.len() as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        let link = &link[..n.clamp(0, PATH_MAX as i64) as usize];
        let name = &link[link.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)..];
        let len = name.len().min(256);
        // SAFETY: this thread alone moved the state to 1 (see ExeName).
        unsafe { (&mut *EXE.bytes.get())[..len].copy_from_slice(&name[..len]) };
        EXE.len.store(len as u32, Relaxed);
        EXE.state.store(2, Release);
    }
    for _ in 0..100_000 {
        if EXE.state.load(Acquire) == 2 {
            let len = (EXE.len.load(Relaxed) as usize).min(256);
            if len == 0 {
                break;
            }
            // SAFETY: read, and never written again (see ExeName).
            return unsafe { &(&*EXE.bytes.get())[..len] };
        }
        core::hint::spin_loop();
    }
    b"?"
}

/// Records a close of `fd` that the shim did not quarantine.
pub fn closed(fd: i32, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    closed_locked(fd, s, &l, false, pcs);
    unlock(fd, s, l);
}

/// Marks `fd` free because it was closed wholesale (close_range): an open
/// handle gets the close stack, a tombstone keeps the stack of the close
/// that made it.
pub fn closed_in_range(fd: i32, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let st = s.state.load(Relaxed);
    if st != state::OPEN && st != state::TOMBSTONE {
        return;
    }
    let l = lock(s);
    let mut v = s.load(&l);
    if v.state == state::OPEN {
        closed_locked(fd, s, &l, false, pcs);
    } else if v.state == state::TOMBSTONE {
        v.state = state::FREE;
        s.store(&l, v);
        account(state::TOMBSTONE, state::FREE);
    }
    unlock(fd, s, l);
}

/// The obj_type code recorded for `fd` (0 when unknown).
pub fn type_of(fd: i32) -> u32 {
    slot(fd).map_or(0, |s| s.obj_type.load(Relaxed))
}
