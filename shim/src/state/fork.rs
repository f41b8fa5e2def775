//! The fork mirror: a private copy of the table a forked child reads
//! until its first write, when it makes a table of its own (the atfork
//! handlers, the MADV_WIPEONFORK mark for forks that bypass them).

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering, Ordering::*,
};

use handles_model::table::{self, state, Locked, Slot, SlotValue};

use super::*;
use crate::sys;

/// A private anonymous mirror of the shim's own writes, made under the
/// slot lock. It exists for fork: the child gets an exact copy of it at
/// the instant of the fork, while the shared memfd keeps changing under
/// the child (the parent's other threads go on writing it). Null until
/// the process first forks (the atfork prepare handler makes it from the
/// table, [`before_fork`]): a process that never forks never pays for
/// the pages and the copies.
pub(super) static BASE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
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
/// Set in a forked child that writes its snapshot ([`BASE`], private
/// copy-on-write pages) as its table instead of making a shared one: most
/// forked children (a shell's `$(...)`, a pipeline's stages) only move
/// fds around (dup2, close) and then exec or exit, and a memfd table
/// made, filled and torn down for that cost as much as the rest of the
/// child's work (half of a dash subshell's time under the shim). The
/// child publishes a shared table ([`publish`]) when someone outside may
/// need to read it: at a creating call other than a dup, before a
/// second thread starts, after [`PUBLISH_AFTER`] writes, at a per-test
/// checkpoint. Never under a supervisor that reads every child's table
/// through its fd ([`SHARED_TABLES`]: the inherit check at its exec, the
/// strict filter); a leak check reads a private one in the child's
/// memory at its exit. Threads the program starts through
/// `pthread_create` publish first; writers of other threads (glibc's
/// own, a raw `clone`) are counted ([`PRIVATE_WRITERS`]), so that the
/// switch to a shared table races none of them.
static PRIVATE: AtomicBool = AtomicBool::new(false);
/// Table writes made while [`PRIVATE`].
static PRIVATE_WRITES: AtomicU32 = AtomicU32::new(0);
/// Threads inside a wrapper that may write the private table
/// ([`count_in`]): the thread that publishes it waits for them to leave
/// before it copies the table, and while it copies ([`SWITCHING`]) new
/// writers wait for the shared table. A private table is a one-thread
/// table by construction (the `pthread_create` wrapper publishes first),
/// but glibc starts threads of its own past that wrapper (`timer_create`
/// with `SIGEV_THREAD`, POSIX aio) and a program may `clone` one: a write
/// of theirs made to the snapshot after the copy would be lost, and with
/// it a close the shim must report a later use of.
static PRIVATE_WRITERS: AtomicU32 = AtomicU32::new(0);
/// Set while a thread turns the private table into a shared one.
static SWITCHING: AtomicBool = AtomicBool::new(false);
/// How long the publisher waits for counted writers to leave. A writer
/// is in a wrapper for microseconds, unless it blocks in a syscall
/// there (a close that flushes to a slow file system): past this the
/// copy goes ahead, as it did before writers were counted.
const WRITERS_WAIT_NS: u64 = 50_000_000;
/// How long a thread waits for another's copy of the table (a
/// publication, the mirror's first fill), which takes microseconds: a
/// bound, not an expected time.
const COPY_WAIT_NS: u64 = 2_000_000_000;
/// `HANDLES_DEBUG_PUBLISH_STALL_MS`: a test hook that holds the
/// publisher between its copy and the switch, the window in which an
/// uncounted writer's write would be lost (tests/run.rs).
pub static PUBLISH_STALL_MS: AtomicU32 = AtomicU32::new(0);
/// A child that goes on writing its fds this much is doing real work:
/// its table is published for `handles <pid>`.
const PUBLISH_AFTER: u32 = 64;
/// A bitmap of atomic words (one bit per fd, per page, per group of
/// slots), in .bss: pages of it never touched cost nothing. Bits beyond
/// it read as clear and are never set.
struct Bits<const W: usize>([AtomicU64; W]);

impl<const W: usize> Bits<W> {
    const fn new() -> Self {
        Bits([const { AtomicU64::new(0) }; W])
    }

    fn get(&self, i: usize, order: Ordering) -> bool {
        self.0
            .get(i / 64)
            .is_some_and(|w| w.load(order) & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; a bit already set costs a load, not a locked
    /// instruction.
    fn set(&self, i: usize, order: Ordering) {
        if let Some(w) = self.0.get(i / 64) {
            let bit = 1u64 << (i % 64);
            if w.load(order) & bit == 0 {
                w.fetch_or(bit, order);
            }
        }
    }

    fn clear(&self, i: usize) {
        if let Some(w) = self.0.get(i / 64) {
            let bit = 1u64 << (i % 64);
            if w.load(Relaxed) & bit != 0 {
                w.fetch_and(!bit, Relaxed);
            }
        }
    }
}

/// One bit per page of the code registry an entry may have gone into
/// (only a Python program writes one), inherited by forked children: a
/// child copies those pages of its parent's registry, not all 1 MiB of
/// it, which every fork of a shell would fault in and map for nothing.
static CODE_PAGES: Bits<{ table::CODE_SLOTS / table::CODES_PER_PAGE / 64 }> = Bits::new();

/// Called before an entry for (`code`, `check`) goes into the registry.
pub fn note_code_written(code: u64, check: u32) {
    for p in table::code_pages(code, check) {
        CODE_PAGES.set(p, SeqCst);
    }
}

fn code_page_written(p: usize) -> bool {
    CODE_PAGES.get(p, SeqCst)
}

/// One bit per fd whose records (stacks, Python records, the handle
/// before it) a forked child left in its snapshot ([`BASE`]) when it made
/// its own table: a closed handle's records are read only if a call
/// reports it or a new handle takes the number, and copying them all (a
/// shell holds a quarantine of 64 tombstones and leaves as many released
/// numbers behind) faulted in some 50 pages of the new table per child,
/// most of which exec'd a moment later. A reader outside the process
/// finds the slot's value there without those records (the supervisor
/// reaches an inherited tombstone's through the tombstone itself).
static LAZY: Bits<{ table::MAX_CAPACITY as usize / 64 }> = Bits::new();

/// One bit per fd the child wrote while its table was private
/// ([`PRIVATE`]): when it publishes, those records (its own closes among
/// them, which a supervisor reports from the shared table) go over with
/// the values; the rest stay in the snapshot as after a fork ([`LAZY`]).
static WRITTEN_PRIVATELY: Bits<{ table::MAX_CAPACITY as usize / 64 }> = Bits::new();

fn set_lazy(fd: i32, on: bool) {
    let i = fd as u32 as usize;
    if on {
        LAZY.set(i, Relaxed);
    } else {
        LAZY.clear(i);
    }
}

/// The table whose records of `fd` are this process's: the snapshot
/// when the child left them there and the slot still holds the handle
/// the snapshot has (a supervisor that rewrote the slot wrote its
/// records too), else the published table `pb`.
pub(super) fn records_base(fd: i32, pb: *mut u8) -> *mut u8 {
    let lazy = LAZY.get(fd as u32 as usize, Relaxed);
    let base = BASE.load(Relaxed);
    if !lazy || base.is_null() || base == pb {
        return pb;
    }
    let (a, b) = (slot_at(pb, fd), slot_at(base, fd));
    let same = a.generation.load(Relaxed) == b.generation.load(Relaxed)
        && a.koid.load(Relaxed) == b.koid.load(Relaxed)
        && a.obj_type.load(Relaxed) == b.obj_type.load(Relaxed);
    if same {
        base
    } else {
        pb
    }
}

/// Before the shim writes the records of `fd` (holding its lock): those
/// left in the snapshot come over first, so that the new table holds
/// the whole record again (what a writer keeps, e.g. the close stack of
/// the handle before, and what readers outside the process see).
pub(super) fn materialize(fd: i32, l: &Locked) {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return;
    }
    let src = records_base(fd, pb);
    set_lazy(fd, false);
    if src != pb {
        copy_records_into_new(pb, src, cap, fd, l);
    }
}

/// Copies the records of slot `fd` from the table at `src` into the
/// published table `pb`, where they are still empty (a forked child's
/// new table, or a slot it left in its snapshot until now). The empty
/// ones are not written: a program with no Python frames, or a number
/// with no handle before it, leaves those pages untouched.
fn copy_records_into_new(pb: *mut u8, src: *mut u8, cap: u32, fd: i32, l: &Locked) {
    stacks_at(pb, cap, fd).copy_from(l, stacks_at(src, cap, fd));
    let py = py_at(src, cap, fd);
    if !py.created().frames().is_empty() || !py.closed().frames().is_empty() {
        header(pb).note_python();
        py_at(pb, cap, fd).copy_from(l, py);
    }
    let e = earlier_at(src, cap, fd);
    if e.meta.load(Relaxed) != 0 {
        earlier_at(pb, cap, fd).copy_from(l, e);
    }
}

/// Slots per bit of [`WRITTEN`]: one 4 KiB page of slots.
const GROUP: usize = 4096 / table::SLOT_SIZE;
/// One bit per group of [`GROUP`] slots the shim ever wrote: a forked
/// child copies those groups of the mirror, not the whole capacity (up to
/// 2^20 slots, most never touched: reading them would fault in page after
/// page of zeroes in every child).
static WRITTEN: Bits<{ table::MAX_CAPACITY as usize / GROUP / 64 }> = Bits::new();

/// Sequentially consistent with the load of [`BASE`] that follows it in
/// [`mirror`] and with [`enable_mirror`]'s store and scan: a writer that
/// did not see the mirror yet has marked its group before the scan reads
/// it (plain loads and one `lock or` on x86).
fn mark_written(fd: i32) {
    WRITTEN.set(fd as u32 as usize / GROUP, SeqCst);
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
        .filter(|&g| WRITTEN.get(g / GROUP, SeqCst))
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
pub(super) static OWN_PID: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// Which stack records of the slot being written changed (bit 0:
    /// creation, bit 1: close), so that publishing copies only those.
    static DIRTY: Cell<u8> = const { Cell::new(0) };
}

pub(super) const DIRTY_CREATED: u8 = 1;
pub(super) const DIRTY_CLOSED: u8 = 2;

pub(super) fn mark_dirty(bits: u8) {
    DIRTY.with(|d| d.set(d.get() | bits));
}

/// Mirrors slot `fd` (the value, and the stack records that changed)
/// into the private copy, once there is one. The caller holds the slot's
/// lock, so it is the only writer of the mirror slot.
pub(super) fn mirror(fd: i32, s: &Slot, l: &Locked) {
    let dirty = DIRTY.with(|d| d.replace(0));
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return;
    }
    mark_written(fd);
    let base = BASE.load(SeqCst);
    // No mirror yet (no fork so far), or the mirror is the table itself
    // (a private table, or a child that could not make its own): nothing
    // to copy, and taking the mirror slot's lock would take the caller's.
    if base.is_null() || base == pb {
        if PRIVATE.load(Relaxed) {
            WRITTEN_PRIVATELY.set(fd as u32 as usize, Relaxed);
        }
        return;
    }
    let m = slot_at(base, fd);
    let ml = m.steal_lock();
    m.store(&ml, s.load(l));
    if dirty != 0 {
        let (dst, src) = (stacks_at(base, cap, fd), stacks_at(pb, cap, fd));
        let (py_dst, py_src) = (py_at(base, cap, fd), py_at(pb, cap, fd));
        // Without Python records in the table, the mirror's (private
        // pages shared copy-on-write with the last child) stay as they are.
        let py = header(pb).has_python();
        if dirty & DIRTY_CREATED != 0 {
            // A new handle: creation stack, (empty) close stack and name,
            // its Python records, and the handle it replaced.
            dst.copy_from(&ml, src);
            if py {
                py_dst.copy_from(&ml, py_src);
            }
            let (e_dst, e_src) = (earlier_at(base, cap, fd), earlier_at(pb, cap, fd));
            if e_src.meta.load(Relaxed) != 0 || e_dst.meta.load(Relaxed) != 0 {
                e_dst.copy_from(&ml, e_src);
            }
        } else {
            dst.set_closed(&ml, src.closed_stack().frames());
            if py {
                py_dst.copy_closed_from(&ml, py_src);
            }
        }
    }
    m.unlock(ml);
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

pub(super) fn init_fork_mark() {
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
        own_table(false);
    }
    if private_or_switching() {
        private_write(false);
    }
}

/// [`ensure_own_table`] before a call that makes a new object (an open,
/// a socket, a pipe; not a dup of a handle the process holds): such a
/// child is doing more than moving its fds before an exec, and its table
/// is made shared now.
#[inline(always)]
pub fn ensure_published() {
    if needs_own_table() {
        own_table(true);
    }
    if private_or_switching() {
        private_write(true);
    }
}

/// Whether this write must go through [`private_write`]: the table is
/// private, or being published ([`publish`] clears PRIVATE before it
/// copies; Acquire, so that a writer that sees it cleared sees the
/// publication's SWITCHING, set before, too).
#[inline(always)]
fn private_or_switching() -> bool {
    PRIVATE.load(Acquire) || SWITCHING.load(Acquire)
}

/// A write of a private table: this thread is counted among its writers
/// for the rest of its wrapper call, and the table is published when the
/// call makes a new object (`now`) or the child has written enough.
#[cold]
#[inline(never)]
fn private_write(now: bool) {
    if !super::counted() && !count_in() {
        // Published while this thread waited: it writes the shared table.
        return;
    }
    if now || PRIVATE_WRITES.fetch_add(1, Relaxed) >= PUBLISH_AFTER {
        publish();
    }
}

/// Counts this thread among the private table's writers; false when the
/// table was published meanwhile. Sequentially consistent with
/// [`publish`]: either the publisher sees this thread's count and waits
/// for it, or this thread sees [`SWITCHING`] and waits for the switch.
fn count_in() -> bool {
    loop {
        PRIVATE_WRITERS.fetch_add(1, SeqCst);
        if !SWITCHING.load(SeqCst) {
            if PRIVATE.load(SeqCst) {
                super::set_counted(true);
                return true;
            }
            PRIVATE_WRITERS.fetch_sub(1, SeqCst);
            return false;
        }
        PRIVATE_WRITERS.fetch_sub(1, SeqCst);
        wait_until(|| !SWITCHING.load(SeqCst), COPY_WAIT_NS);
        if !PRIVATE.load(SeqCst) {
            return false;
        }
    }
}

/// The end of a counted writer's wrapper call (`leave`).
pub(super) fn writer_left() {
    // Never below zero: a count reset by a fork (`after_fork_child`)
    // is not decremented again.
    let _ = PRIVATE_WRITERS.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
}

/// Polls `done` with sched_yield until it holds or about `bound_ns`
/// nanoseconds passed.
fn wait_until(done: impl Fn() -> bool, bound_ns: u64) {
    let start = sys::monotonic_ns();
    while !done() {
        if sys::monotonic_ns().saturating_sub(start) > bound_ns {
            return;
        }
        // SAFETY: sched_yield has no arguments.
        unsafe { sys::raw(libc::SYS_sched_yield, [0; 6]) };
    }
}

/// Makes a forked child's table shared now, outside any wrapper: before
/// the process starts a second thread (the pthread_create wrapper: a
/// table that changes to another one under a running writer could lose
/// its write), and at a per-test checkpoint (the supervisor reads the
/// table there).
pub fn publish_now() {
    if !active() || !enter() {
        return;
    }
    ensure_published();
    leave();
}

fn needs_own_table() -> bool {
    let m = FORK_MARK.load(Relaxed);
    // SAFETY: the mark page stays mapped for the life of the process (and
    // is inherited, zeroed, by children).
    PENDING.load(Acquire) || (!m.is_null() && unsafe { (*m).load(Acquire) } == 0)
}

/// Whether the table the wrappers use is this process's own published
/// one (not a forked child's snapshot, nor its parent's table).
pub(super) fn has_own_table() -> bool {
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
        wait_until(|| MIRROR.load(Acquire) != 1, COPY_WAIT_NS);
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
    header(pb).mirror.store(base as u64, Relaxed);
    for i in maybe_written(0, cap) {
        let s = slot_at(pb, i);
        let l = lock(s);
        let v = s.load(&l);
        if v.state != state::FREE || v.generation != 0 {
            let m = slot_at(base, i);
            let ml = m.steal_lock();
            m.store(&ml, v);
            stacks_at(base, cap, i).copy_from(&ml, stacks_at(pb, cap, i));
            py_at(base, cap, i).copy_from(&ml, py_at(pb, cap, i));
            earlier_at(base, cap, i).copy_from(&ml, earlier_at(pb, cap, i));
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
    // A thread of the parent making its own table is not in this child,
    // nor are the writers of a private table it may have had.
    MAKER.store(0, Relaxed);
    PRIVATE_WRITERS.store(0, Relaxed);
    SWITCHING.store(false, Relaxed);
    super::set_counted(false);
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
fn own_table(publish: bool) {
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
        } else if !publish && can_go_private() {
            go_private();
        } else {
            make_own_table(true);
        }
    }
    MAKER.store(0, Release);
}

/// Whether a child about to make its own table may keep its snapshot as
/// a private one ([`PRIVATE`]): it reads a complete snapshot (not its
/// parent's live table after a raw fork), no supervisor asked to be told
/// of tables, and it runs one thread (a fork child starts with one; a
/// thread made since went through [`publish_now`], which made the
/// table already, so a pending child here has only this one).
fn can_go_private() -> bool {
    let base = ready_mirror();
    if base.is_null() || PUB.load(Relaxed) != base || SHARED_TABLES.load(Relaxed) {
        return false;
    }
    let announcing = sys::COOKIE_ON.load(Relaxed) && ANNOUNCE.load(Relaxed);
    !announcing
}

/// `HANDLES_SHARED_TABLES=1`: a supervisor reads every child's table
/// through its fd (the inherit check at its exec, the strict filter), so
/// none keeps a private one.
pub static SHARED_TABLES: AtomicBool = AtomicBool::new(false);

/// The child's snapshot becomes its table: what it holds open now came
/// from its parent (FORKED, for leak checks), the code objects its
/// parent's Python records name are copied in, and its parent's table is
/// unmapped. No memfd, no announcement: outside readers see this process
/// as one with no table of its own yet, as before its first write.
fn go_private() {
    let cap = CAP.load(Relaxed);
    let base = BASE.load(Relaxed);
    for i in maybe_written(0, cap) {
        let s = slot_at(base, i);
        if s.state.load(Relaxed) == state::OPEN {
            let l = s.steal_lock();
            let mut v = s.load(&l);
            v.how |= table::how::FORKED;
            s.store(&l, v);
            s.unlock(l);
        }
    }
    let stale = STALE.swap(ptr::null_mut(), Relaxed);
    if !stale.is_null() {
        codes_at(base, cap).copy_pages_from(&codes_at(stale, cap), code_page_written);
        // SAFETY: unmapping the parent's table from this process only;
        // nothing points into it any more (PUB is the snapshot).
        unsafe {
            sys::sc(
                libc::SYS_munmap,
                [stale as u64, table::table_size(cap) as u64, 0, 0, 0, 0],
            )
        };
    }
    let pid = sys::getpid();
    // The snapshot's header (written by nobody else) names the process
    // whose table it now is: a reader tells this child's own writes from
    // a snapshot still as its parent left it (a child that never wrote).
    header(base).pid.store(pid as u32, Relaxed);
    OWN_PID.store(pid, Relaxed);
    rearm_fork_mark();
    PRIVATE_WRITES.store(0, Relaxed);
    PRIVATE.store(true, Relaxed);
    PENDING.store(false, Release);
}

/// Makes a private table shared ([`make_own_table`] from it). The process
/// is single-threaded (see [`PRIVATE`]).
#[cold]
#[inline(never)]
fn publish() {
    if SWITCHING
        .compare_exchange(false, true, SeqCst, SeqCst)
        .is_err()
    {
        // Another thread publishes: out of its way until it is done.
        if super::counted() {
            super::set_counted(false);
            writer_left();
        }
        wait_until(|| !SWITCHING.load(SeqCst), COPY_WAIT_NS);
        return;
    }
    let me = u32::from(super::counted());
    wait_until(|| PRIVATE_WRITERS.load(SeqCst) <= me, WRITERS_WAIT_NS);
    if PRIVATE.swap(false, SeqCst) {
        make_own_table(false);
    }
    SWITCHING.store(false, SeqCst);
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
fn make_own_table(mark_forked: bool) {
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
            set_lazy(i, false);
            continue;
        }
        let p = slot_at(pb, i);
        let l = p.steal_lock();
        let st = s.state.load(Relaxed);
        // What is open is the parent's (or came to it): FORKED, for the
        // child's leak check.
        let how = s.how.load(Relaxed);
        p.store(
            &l,
            SlotValue {
                state: st,
                generation: s.generation.load(Relaxed),
                obj_type: s.obj_type.load(Relaxed),
                koid: s.koid.load(Relaxed),
                rights: s.rights.load(Relaxed),
                how: if st == state::OPEN && mark_forked {
                    how | table::how::FORKED
                } else {
                    how
                },
            },
        );
        // An open handle's records go over now (a leak check and
        // `handles <pid>` read them from outside); a closed one's stay in
        // the snapshot, which is this child's own and stays mapped, until
        // the shim needs them ([`materialize`], [`records_base`]). A
        // supervisor that reports a raw use of an inherited tombstone
        // reads its record through the tombstone (an O_PATH fd on the
        // parent's table). Not from a parent's live table (a raw fork):
        // that one changes.
        let lazy = src == base && st != state::OPEN && !WRITTEN_PRIVATELY.get(i as usize, Relaxed);
        set_lazy(i, lazy);
        if !lazy {
            copy_records_into_new(pb, src, cap, i, &l);
        }
        p.unlock(l);
    }
    // The code objects the inherited Python records name: the parent's
    // registry (the snapshot has none of its own).
    let named = if stale.is_null() { src } else { stale };
    codes_at(pb, cap).copy_pages_from(&codes_at(named, cap), code_page_written);
    header(pb).init(cap, pid as u32, mixer, table::writer::SHIM);
    // What the child made while its table was the snapshot is in it now.
    if let Some(b) = header(src).fd_bound().checked_sub(1) {
        header(pb).note_fd(b as i32);
    }
    if !base.is_null() {
        header(pb).mirror.store(base as u64, Relaxed);
    }
    MIXER.store(mixer, Relaxed);
    let stall = PUBLISH_STALL_MS.load(Relaxed);
    if stall != 0 {
        sys::sleep_ms(stall);
    }
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
        if old_fd >= 0 {
            // The parent's table must not stay at the number a reader
            // tries first for this process's own (the supervisor takes
            // another's table there for a child with none of its own).
            sys::close(old_fd);
            free_internal(old_fd);
        }
        let fd = move_high(fd);
        TABLE_FD.store(fd, Relaxed);
        mark_internal(fd);
    }
    done();
    announce();
}
