//! The quarantine: closed fd numbers held by tombstones, released oldest
//! first.
//!
//! The FIFO is lock-free, so a signal handler that closes an fd never
//! waits for the code it interrupted: a ring of tagged entries with two
//! counters. A push takes a position with `fetch_add` on the tail and
//! writes `(position + 1) << 32 | fd` there; once more than `capacity`
//! entries are pending, one thread claims the oldest ones by moving the
//! head with a compare-and-swap and releases them. An entry whose tag does
//! not match its position (its pusher was interrupted between the two
//! steps, or the ring lapped) is skipped: the number stays a tombstone
//! until the next full release. The table, not the ring, is the truth: a
//! number is released only if its slot still says TOMBSTONE, under the
//! slot's lock, so a stale ring entry never closes a live fd.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use handles_model::table::{state, Locked, Slot};

use crate::state::{self as st, capacity, lock, slot, Pcs, LIMIT, USED};
use crate::sys;

const RING: usize = 4096;
static RING_SLOTS: [AtomicU64; RING] = [const { AtomicU64::new(0) }; RING];
static HEAD: AtomicU64 = AtomicU64::new(0);
static TAIL: AtomicU64 = AtomicU64::new(0);
/// Quarantine bound (`HANDLES_QUARANTINE`, default 64; 0 turns it off).
pub static CAPACITY: AtomicU32 = AtomicU32::new(64);

/// Largest bound (`handles run --quarantine` accepts up to this): the ring
/// must stay well ahead of the pending entries.
pub const MAX_CAPACITY: u32 = (RING / 4) as u32;

/// Whether the fd numbers in use (open and quarantined) come within 16
/// of RLIMIT_NOFILE or of FD_SETSIZE (1024, for select() users): the
/// supervisor's rule. The quarantine then takes no more numbers, and
/// gives back those it holds.
#[inline(always)]
pub fn crowded() -> bool {
    let used = i64::from(USED.load(Relaxed).max(0)) as u64;
    used + 16 >= LIMIT.load(Relaxed).min(1024)
}

/// Whether one more tombstone fits: quarantine on and not [`crowded`].
pub fn room() -> bool {
    CAPACITY.load(Relaxed) != 0 && !crowded()
}

/// Whether the ring holds entries not yet released.
#[inline(always)]
pub fn pending() -> bool {
    TAIL.load(Relaxed) != HEAD.load(Relaxed)
}

/// After a creation: when the numbers in use come near FD_SETSIZE or the
/// limit, the quarantine gives every number back, so that the program's
/// next fds are the numbers it would get natively (below 1024 for a
/// select() user that holds many fds). The caller is inside the shim.
#[inline(always)]
pub fn after_create() {
    if pending() && crowded() {
        evict(0);
    }
}

/// Queues a fresh tombstone, releasing the oldest half past the bound.
pub fn push(fd: i32) {
    let p = TAIL.fetch_add(1, AcqRel);
    RING_SLOTS[p as usize % RING].store(((p + 1) << 32) | u64::from(fd as u32), Release);
    let cap = u64::from(CAPACITY.load(Relaxed));
    if (p + 1).wrapping_sub(HEAD.load(Acquire)) > cap {
        evict(cap);
    }
}

fn evict(cap: u64) {
    loop {
        let h = HEAD.load(Acquire);
        let t = TAIL.load(Acquire);
        let n = t.wrapping_sub(h);
        if n <= cap || n > 1 << 32 {
            return;
        }
        let k = n - cap / 2;
        if HEAD.compare_exchange(h, h + k, AcqRel, Acquire).is_err() {
            continue;
        }
        let mut batch = [0i32; BATCH];
        let mut nb = 0;
        for i in h..h + k {
            let e = RING_SLOTS[i as usize % RING].load(Acquire);
            if e >> 32 != (i + 1) & 0xffff_ffff {
                continue;
            }
            batch[nb] = e as u32 as i32;
            nb += 1;
            if nb == BATCH {
                release_batch(&mut batch[..nb]);
                nb = 0;
            }
        }
        release_batch(&mut batch[..nb]);
        return;
    }
}

const BATCH: usize = 64;

/// Releases a batch of tombstones, closing runs of consecutive numbers
/// with one close_range each (a loop that churns fds quarantines mostly
/// consecutive numbers). Slots are locked in ascending order, so two
/// threads evicting at once cannot deadlock; every other writer holds at
/// most one slot lock.
fn release_batch(fds: &mut [i32]) {
    fds.sort_unstable();
    let mut i = 0;
    while i < fds.len() {
        // The run fds[i..j]: consecutive, still tombstones, all locked.
        let mut locks: [Option<Locked>; BATCH] = [const { None }; BATCH];
        let mut j = i;
        while j < fds.len() && (j == i || fds[j] == fds[j - 1] + 1) {
            let fd = fds[j];
            let Some(s) = slot(fd) else { break };
            if s.state.load(Relaxed) != state::TOMBSTONE {
                break;
            }
            let l = lock(s);
            if s.load(&l).state != state::TOMBSTONE {
                st::unlock(fd, s, l);
                break;
            }
            locks[j - i] = Some(l);
            j += 1;
        }
        if j == i {
            // fds[i] is no tombstone any more (reused, or released).
            i += 1;
            continue;
        }
        let (lo, hi) = (fds[i], fds[j - 1]);
        if lo == hi {
            sys::close(lo);
        } else {
            // SAFETY: closing a run of the shim's own tombstones, each
            // locked above.
            unsafe { sys::sc(libc::SYS_close_range, [lo as u64, hi as u64, 0, 0, 0, 0]) };
        }
        for (fd, l) in (lo..=hi).zip(locks.iter_mut()) {
            if let (Some(s), Some(l)) = (slot(fd), l.take()) {
                let mut v = s.load(&l);
                v.state = state::FREE;
                s.store(&l, v);
                st::unlock(fd, s, l);
                st::account(state::TOMBSTONE, state::FREE);
            }
        }
        i = j;
    }
}

/// Closes the tombstone at `fd` if the slot still says so; whether it did.
pub fn release(fd: i32) -> bool {
    let Some(s) = slot(fd) else { return false };
    if s.state.load(Relaxed) != state::TOMBSTONE {
        return false;
    }
    let l = lock(s);
    let mut v = s.load(&l);
    let was = v.state == state::TOMBSTONE;
    if was {
        sys::close(fd);
        v.state = state::FREE;
        s.store(&l, v);
        st::account(state::TOMBSTONE, state::FREE);
    }
    st::unlock(fd, s, l);
    was
}

/// Releases every tombstone below the soft limit (numbers beyond it
/// cannot help): the answer to EMFILE/ENFILE. Scans the table rather than
/// the ring, so tombstones the ring lost, and those a supervisor wrote
/// there, are released too. Whether any was.
pub fn release_all() -> bool {
    HEAD.store(TAIL.load(Acquire), Release);
    let end = u64::from(capacity()).min(LIMIT.load(Relaxed)) as i32;
    let mut any = false;
    for fd in 0..end {
        any |= release(fd);
    }
    any
}

/// Gives the program every fd number the shim holds below the soft limit,
/// one kind at a time (`step` 0: the tombstones, 1: the tombstone source,
/// 2: the table's fd), the answer to EMFILE/ENFILE. Returns whether that
/// step freed anything (the call is then worth retrying).
pub fn relieve(step: u32) -> bool {
    match step {
        0 => release_all(),
        1 => st::yield_internal(&st::TOMB_SRC),
        2 => st::yield_internal(&st::TABLE_FD),
        _ => false,
    }
}

/// Whether the slot's type code says the object's close cannot fail
/// (`ObjType::close_cannot_fail`). 0 (a plain open, an inherited or
/// adopted fd: not classified) takes the honest path.
fn close_cannot_fail(ty: u32) -> bool {
    handles_model::table::obj_type_from_code(ty).is_some_and(|t| t.close_cannot_fail())
}

/// Closes the program's `fd` (fd > 2 is quarantined while there is
/// [`room`]), records the close in its slot `s`, whose lock `l` the caller
/// took, and releases that lock. Returns close's raw result (what the
/// program gets: exactly the native result) and whether the number is now
/// a tombstone.
///
/// `dup3(tomb_src, fd)` would hold the number without a gap, but its
/// implicit close throws away the file's flush result: on NFS/FUSE/9p/CIFS
/// that is where a failed write-back is reported, and a careful program
/// (cp) would report success for a file that was not saved. So unless the
/// slot's type says the object's close cannot fail (where the single dup3
/// is kept: one syscall instead of two), the fd is closed for real and its
/// number taken back with `F_DUPFD_CLOEXEC(tomb_src, fd)`, which returns
/// the lowest free number >= fd: `fd` itself, or, if another thread or a
/// signal handler got `fd` in between, a higher one, which is closed
/// again: that number belongs to whoever got it and is left alone.
///
/// The slot is recorded closed and unlocked *before* that close: the
/// kernel frees the number before it flushes, and a flush may wait on a
/// server for seconds, while a thread that gets the number meanwhile
/// records its creation under the same lock, and would steal a lock held
/// that long (`state::lock`) and have its record overwritten after.
pub fn close_and_hold(fd: i32, s: &Slot, l: Locked, pcs: &Pcs, quarantine: bool) -> (i64, bool) {
    let src = if quarantine && fd > 2 && room() {
        st::tomb_src()
    } else {
        -1
    };
    if src >= 0 && close_cannot_fail(s.load(&l).obj_type) {
        let d = sys::dup3(src, fd, libc::O_CLOEXEC);
        if d == i64::from(fd) {
            st::closed_locked(fd, s, &l, true, pcs);
            st::unlock(fd, s, l);
            push(fd);
            return (0, true);
        }
        if d == -i64::from(libc::EBADF) {
            // The source vanished under another name.
            st::TOMB_SRC.store(-1, Relaxed);
        }
    }
    st::closed_locked(fd, s, &l, false, pcs);
    st::unlock(fd, s, l);
    let r = sys::close(fd);
    // EBADF: it was not open, so the number is not ours to take.
    if src < 0 || r == -i64::from(libc::EBADF) || !hold(src, fd) {
        return (r, false);
    }
    mark_held(fd, s, pcs);
    (r, true)
}

/// Records the number `fd`, taken back by [`hold`], as a tombstone and
/// queues it. Whatever the slot says now (FREE, or OPEN if another
/// thread's use adopted the fd in the window), the kernel gave the number
/// to the tombstone, so that is the truth.
fn mark_held(fd: i32, s: &Slot, pcs: &Pcs) {
    let l = lock(s);
    st::tombstoned_locked(fd, s, &l, pcs);
    st::unlock(fd, s, l);
    push(fd);
}

/// Takes the number `fd`, just closed by the caller (the stdio functions'
/// libc close), back as a tombstone, recording it in its slot `s` and
/// queueing it; whether it got exactly that number (false: another thread
/// or a signal handler got it first, or there is no tombstone source).
pub fn hold_closed(fd: i32, s: &Slot, pcs: &Pcs) -> bool {
    let src = st::tomb_src();
    if src >= 0 && hold(src, fd) {
        mark_held(fd, s, pcs);
        return true;
    }
    false
}

/// `F_DUPFD_CLOEXEC(src, fd)`: whether it got exactly `fd`.
fn hold(src: i32, fd: i32) -> bool {
    let d = sys::fcntl(src, libc::F_DUPFD_CLOEXEC, fd as u64);
    if d == i64::from(fd) {
        return true;
    }
    if d >= 0 {
        // Someone else's handle sits at fd now; ours is the spare above.
        sys::close(d as i32);
    } else if d == -i64::from(libc::EBADF) {
        st::TOMB_SRC.store(-1, Relaxed);
    }
    false
}
