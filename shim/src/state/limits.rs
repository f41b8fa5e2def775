//! RLIMIT_NOFILE: the limit at start-up, the fds the shim counts against
//! it, and placing the shim's own fds beyond the soft limit.

use core::sync::atomic::{AtomicI32, AtomicU64, Ordering::*};

use handles_model::table::state;

use crate::sys;

/// RLIMIT_NOFILE (soft) at start-up.
pub static LIMIT: AtomicU64 = AtomicU64::new(1024);
/// Open and quarantined fds the shim knows of (not its own).
pub static USED: AtomicI32 = AtomicI32::new(0);
/// Where the shim puts its own fds ([`table::own_fds_at`]: in the model,
/// so that the supervisor finds the table without listing /proc/PID/fd).
pub static HIGH: AtomicI32 = AtomicI32::new(1024);

pub(super) fn counted(st: u32) -> bool {
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
pub(super) fn beyond_soft(at: i32, f: impl FnOnce() -> i64) -> Option<i64> {
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
pub(super) fn dup_high(fd: i32) -> i64 {
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
pub(super) fn move_high(fd: i32) -> i32 {
    let n = dup_high(fd);
    if n < 0 {
        return fd;
    }
    sys::close(fd);
    n as i32
}
