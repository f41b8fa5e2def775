//! The shim's process-wide state and its handle table: a sealed memfd
//! named `handles-table:<pid>`, mapped MAP_SHARED, in the layout of
//! `handles_model::table`.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use handles_model::table::{self, state, Locked, Slot, SlotStacks, SlotValue, STACK_DEPTH};

use crate::sys;

/// Set once the constructor has published the table; never in a setuid
/// context. Every wrapper is a plain pass-through while it is false.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The table in the memfd: what readers map, what a supervisor may update
/// (under the same slot locks), and what the wrappers check.
static PUB: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// A private anonymous mirror of the shim's own writes, made under the
/// slot lock. It exists for fork: the child gets an exact copy of it at
/// the instant of the fork, while the shared memfd keeps changing under
/// the child (the parent's other threads go on writing it).
static BASE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
static CAP: AtomicU32 = AtomicU32::new(0);
pub static TABLE_FD: AtomicI32 = AtomicI32::new(-1);
pub static TOMB_SRC: AtomicI32 = AtomicI32::new(-1);
pub static MIXER: AtomicU32 = AtomicU32::new(0);
/// RLIMIT_NOFILE (soft) at start-up.
pub static LIMIT: AtomicU64 = AtomicU64::new(1024);
/// Open and quarantined fds the shim knows of (not its own).
pub static USED: AtomicI32 = AtomicI32::new(0);
/// Where the shim puts its own fds: just under min(limit, 65536). Higher
/// would make the kernel grow every fd table (and every fork's copy of
/// it) to the size of a huge RLIMIT_NOFILE.
pub static HIGH: AtomicI32 = AtomicI32::new(960);
/// A word in a MADV_WIPEONFORK page: the kernel zeroes it in any child
/// made without CLONE_VM, so a child that skipped the atfork handler (raw
/// fork/clone) notices before it writes its parent's table.
static FORK_MARK: AtomicPtr<AtomicU32> = AtomicPtr::new(ptr::null_mut());

/// Tombstones a forked child got from its parent, one bit per fd: the
/// child never had those handles, so closing one (a close-every-fd sweep,
/// as gdb's close_most_fds does) releases it instead of being a double
/// close. Uses are still reported.
static INHERITED: [AtomicU64; 1 << 14] = [const { AtomicU64::new(0) }; 1 << 14];

pub fn is_inherited_tombstone(fd: i32) -> bool {
    let i = fd as u32 as usize;
    INHERITED
        .get(i / 64)
        .is_some_and(|w| w.load(Relaxed) & (1 << (i % 64)) != 0)
}

fn set_inherited(fd: i32, on: bool) {
    let i = fd as u32 as usize;
    if let Some(w) = INHERITED.get(i / 64) {
        if on {
            w.fetch_or(1 << (i % 64), Relaxed);
        } else if w.load(Relaxed) & (1 << (i % 64)) != 0 {
            w.fetch_and(!(1 << (i % 64)), Relaxed);
        }
    }
}

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
/// into the private copy. The caller holds the slot's lock, so it is the
/// only writer of the mirror slot.
fn mirror(fd: i32, s: &Slot, l: &Locked) {
    let dirty = DIRTY.with(|d| d.replace(0));
    if dirty & DIRTY_CLOSED != 0 || s.load(l).state != state::TOMBSTONE {
        // A new close by this process, or no tombstone any more.
        set_inherited(fd, false);
    }
    let cap = CAP.load(Relaxed);
    let base = BASE.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() || base.is_null() {
        return;
    }
    let m = slot_at(base, fd);
    let ml = m.steal_lock();
    m.store(&ml, s.load(l));
    if dirty != 0 {
        let (dst, src) = (stacks_at(base, cap, fd), stacks_at(pb, cap, fd));
        if dirty & DIRTY_CREATED != 0 {
            dst.set_created(&ml, src.created_stack().frames());
        }
        if dirty & DIRTY_CLOSED != 0 {
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

/// Records a new handle at `fd` (its number may be reused: the generation
/// moves on). `ty` is an obj_type code, 0 when the call did not tell.
pub fn created(fd: i32, ty: u32, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    created_locked(fd, s, &l, ty, pcs);
    unlock(fd, s, l);
}

/// [`created`] for a caller that already holds the slot's lock.
pub fn created_locked(fd: i32, s: &Slot, l: &Locked, ty: u32, pcs: &Pcs) {
    let old = s.load(l);
    if old.state == state::INTERNAL {
        lost_internal(fd);
    }
    s.store(
        l,
        SlotValue {
            state: state::OPEN,
            generation: old.generation.wrapping_add(1),
            obj_type: ty,
            koid: 0,
            rights: 0,
            how: table::how::UNKNOWN,
        },
    );
    if let Some(st) = stacks(fd) {
        st.set_created(l, pcs.frames());
        mark_dirty(DIRTY_CREATED | DIRTY_CLOSED);
    }
    if !counted(old.state) {
        USED.fetch_add(1, Relaxed);
    }
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
        s.store(&l, v);
        if let Some(st) = stacks(fd) {
            st.set_created(&l, &[]);
            mark_dirty(DIRTY_CREATED | DIRTY_CLOSED);
        }
        USED.fetch_add(1, Relaxed);
    }
    unlock(fd, s, l);
}

/// Records that the handle at `fd` was closed, quarantined or not; the
/// caller holds the lock.
pub fn closed_locked(fd: i32, s: &Slot, l: &Locked, tombstone: bool, pcs: &Pcs) {
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
    if counted(was) && !tombstone {
        USED.fetch_sub(1, Relaxed);
    } else if !counted(was) && tombstone {
        USED.fetch_add(1, Relaxed);
    }
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
        if counted(v.state) {
            USED.fetch_sub(1, Relaxed);
        }
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

/// Moves a fresh fd of the shim's up to [`HIGH`] (close-on-exec), closes
/// the original and returns the new number (or the original when that
/// fails, e.g. under a tiny RLIMIT_NOFILE).
fn move_high(fd: i32) -> i32 {
    let high = HIGH.load(Relaxed);
    let n = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, high as u64);
    if n < 0 {
        return fd;
    }
    sys::close(fd);
    n as i32
}

/// Opens the tombstone source (an O_PATH fd on "/") if there is none.
pub fn tomb_src() -> i32 {
    let cur = TOMB_SRC.load(Relaxed);
    if cur >= 0 {
        return cur;
    }
    // SAFETY: openat on a static NUL-terminated path.
    let fd = unsafe {
        sys::sc(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                c"/".as_ptr() as u64,
                (libc::O_PATH | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )
    };
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
    let high = HIGH.load(Relaxed);
    let n = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, high as u64);
    if TOMB_SRC.load(Relaxed) == fd {
        TOMB_SRC.store(if n >= 0 { n as i32 } else { -1 }, Relaxed);
    }
    if TABLE_FD.load(Relaxed) == fd {
        TABLE_FD.store(if n >= 0 { n as i32 } else { -1 }, Relaxed);
    }
    if n >= 0 {
        mark_internal(n as i32);
    }
}

/// Formats `handles-table:<pid>` into `buf` (NUL-terminated).
fn table_name(pid: i32, buf: &mut [u8; 40]) {
    let prefix = b"handles-table:";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut k = 0;
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 || k == digits.len() {
            break;
        }
    }
    let mut at = prefix.len();
    for i in (0..k).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = 0;
}

/// Creates, sizes, seals and maps a new table memfd; returns (fd, base).
fn new_table(pid: i32, cap: u32) -> Option<(i32, *mut u8)> {
    let mut name = [0u8; 40];
    table_name(pid, &mut name);
    // SAFETY: memfd_create with a NUL-terminated name in a local buffer.
    let fd = unsafe {
        sys::sc(
            libc::SYS_memfd_create,
            [
                name.as_ptr() as u64,
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
    let Some(private) = anon(table::table_size(cap)) else {
        return false;
    };
    let Some((fd, base)) = new_table(pid, cap) else {
        return false;
    };
    let mixer = sys::random_u32();
    MIXER.store(mixer, Relaxed);
    CAP.store(cap, Relaxed);
    BASE.store(private, Relaxed);
    PUB.store(base, Relaxed);
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
    let Some(p) = anon(4096) else { return };
    let p = p as i64;
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
    let mark = p as *mut AtomicU32;
    // SAFETY: the page is mapped, writable and aligned.
    unsafe { (*mark).store(1, Relaxed) };
    FORK_MARK.store(mark, Release);
}

/// Called before every table write: a child of a fork that bypassed the
/// atfork handler still maps its parent's table, and must get its own
/// first.
#[inline(always)]
pub fn ensure_own_table() {
    let m = FORK_MARK.load(Relaxed);
    // SAFETY: the mark page stays mapped for the life of the process (and
    // is inherited, zeroed, by children).
    if !m.is_null() && unsafe { (*m).load(Relaxed) } == 0 {
        after_fork_child();
    }
}

/// The child side of fork: a new published table named with the
/// child's pid, filled from the private table (the child's exact
/// snapshot of it), a new mixer, and the parent's table fd replaced by
/// the child's at the same number. Raw syscalls only: runs in the child
/// of a possibly multi-threaded parent.
pub extern "C" fn after_fork_child() {
    if !active() {
        return;
    }
    let m = FORK_MARK.load(Relaxed);
    if !m.is_null() {
        // SAFETY: see ensure_own_table.
        unsafe { (*m).store(1, Relaxed) };
    }
    let pid = sys::getpid();
    let cap = CAP.load(Relaxed);
    let old_pub = PUB.load(Relaxed);
    let base = BASE.load(Relaxed);
    // Until the new table exists nothing may be published: the old one is
    // the parent's.
    PUB.store(ptr::null_mut(), Relaxed);
    if !old_pub.is_null() {
        // SAFETY: unmapping the parent's table from this process only.
        unsafe {
            sys::sc(
                libc::SYS_munmap,
                [old_pub as u64, table::table_size(cap) as u64, 0, 0, 0, 0],
            )
        };
    }
    let Some((fd, pb)) = new_table(pid, cap) else {
        // The child goes on without a published table.
        return;
    };
    let mixer = sys::random_u32();
    for i in 0..cap as i32 {
        // The mirror: this child's exact copy of the parent's table at the
        // fork (a slot a thread of the parent was writing may be torn).
        let s = slot_at(base, i);
        set_inherited(i, s.state.load(Relaxed) == state::TOMBSTONE);
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
        stacks_at(pb, cap, i).copy_from(&l, stacks_at(base, cap, i));
        p.unlock(l);
    }
    header(pb).init(cap, pid as u32, mixer, table::writer::SHIM);
    MIXER.store(mixer, Relaxed);
    PUB.store(pb, Release);
    let old_fd = TABLE_FD.load(Relaxed);
    if old_fd >= 0 && sys::dup3(fd, old_fd, libc::O_CLOEXEC) == old_fd as i64 {
        sys::close(fd);
    } else {
        let fd = move_high(fd);
        TABLE_FD.store(fd, Relaxed);
        mark_internal(fd);
    }
}

/// Registers every fd open at start-up (inherited across exec, or opened
/// by constructors that ran before ours) as open, generation 0.
pub fn register_inherited() {
    let mut fds: [i32; 256] = [-1; 256];
    let mut n = 0;
    let mut more = false;
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if n < fds.len() {
                    fds[n] = fd;
                    n += 1;
                } else {
                    more = true;
                }
            }
        }
    }
    let reg = |fd: i32| {
        if !is_internal(fd) && sys::is_open(fd) {
            if let Some(s) = slot(fd) {
                let l = lock(s);
                let v = s.load(&l);
                if v.state == state::FREE {
                    s.store(
                        &l,
                        SlotValue {
                            state: state::OPEN,
                            ..v
                        },
                    );
                    USED.fetch_add(1, Relaxed);
                }
                unlock(fd, s, l);
            }
        }
    };
    for &fd in &fds[..n] {
        reg(fd);
    }
    if more {
        // More than 256 inherited fds: probe every number instead.
        for fd in 0..CAP.load(Relaxed) as i32 {
            reg(fd);
        }
    }
}

/// Number of slots.
pub fn capacity() -> u32 {
    CAP.load(Relaxed)
}

static EXE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Remembers the executable's file name (dladdr gives the main program an
/// empty module name).
pub fn init_exe_name() {
    if let Ok(p) = std::fs::read_link("/proc/self/exe") {
        if let Some(n) = p.file_name() {
            use std::os::unix::ffi::OsStrExt;
            let _ = EXE.set(n.as_bytes().to_vec());
        }
    }
}

pub fn exe_name() -> &'static [u8] {
    EXE.get().map_or(b"?", |v| v.as_slice())
}

/// Releases a tombstone the process inherited at fork, for real (a close
/// of it by the child). Returns whether it was one.
pub fn release_inherited(fd: i32) -> bool {
    let Some(s) = slot(fd) else { return false };
    let l = lock(s);
    let mut v = s.load(&l);
    let ok = v.state == state::TOMBSTONE && is_inherited_tombstone(fd);
    if ok {
        sys::close(fd);
        v.state = state::FREE;
        s.store(&l, v);
        USED.fetch_sub(1, Relaxed);
    }
    unlock(fd, s, l);
    ok
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
        USED.fetch_sub(1, Relaxed);
    }
    unlock(fd, s, l);
}

/// The obj_type code recorded for `fd` (0 when unknown).
pub fn type_of(fd: i32) -> u32 {
    slot(fd).map_or(0, |s| s.obj_type.load(Relaxed))
}
