//! Hiding the shim's numbers from the process's own listings of its fds.
//!
//! The kernel lists a tombstone, the table's fd and the tombstone source
//! in `/proc/self/fd` like any fd. A program that lists its fds to close
//! them all (gdb's close_most_fds, daemons before exec) would close a
//! tombstone, a double close, and one that shows them would show numbers
//! it closed. The supervisor filters the `getdents64` it sees, but libc's
//! readdir issues that from libc, which its prefilter lets through
//! unseen, and with no supervisor nobody filters at all. So the readdir
//! wrappers (`stdio.rs`) skip those entries themselves.
//!
//! Whether a stream lists this process's fds is decided once, when
//! opendir/fdopendir made it, from the link of its fd (the path the
//! kernel resolved: `/dev/fd`, `/proc/self/fd`, `/proc/thread-self/fd`
//! all end up as `/proc/PID/fd` or `/proc/PID/task/TID/fd`, and the same
//! for `fdinfo`, which lists the same numbers), and kept as
//! one bit per fd number. A readdir on any other stream costs one load.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use handles_model::fdpath::{self, Whose};
use handles_model::table::{state, MAX_CAPACITY};

use crate::state as st;
use crate::sys;

/// One bit per fd number: its directory stream lists this process's fds.
static FD_DIR: [AtomicU64; MAX_CAPACITY as usize / 64] =
    [const { AtomicU64::new(0) }; MAX_CAPACITY as usize / 64];
/// Set once any bit of [`FD_DIR`] was: until then readdir and the
/// creating wrappers skip the bitmap altogether.
static ANY: AtomicBool = AtomicBool::new(false);

fn word(fd: i32) -> Option<(&'static AtomicU64, u64)> {
    let i = usize::try_from(fd).ok()?;
    Some((FD_DIR.get(i / 64)?, 1 << (i % 64)))
}

/// Whether any stream was found to list this process's fds.
#[inline(always)]
pub fn any() -> bool {
    ANY.load(Relaxed)
}

/// Whether the stream on `fd` lists this process's fds.
#[inline(always)]
pub fn is_fd_dir(fd: i32) -> bool {
    any() && word(fd).is_some_and(|(w, bit)| w.load(Relaxed) & bit != 0)
}

/// `fd` was closed or is a new handle: whatever stream was on it is gone.
#[inline(always)]
pub fn forget(fd: i32) {
    if !ANY.load(Relaxed) {
        return;
    }
    if let Some((w, bit)) = word(fd) {
        if w.load(Relaxed) & bit != 0 {
            w.fetch_and(!bit, Relaxed);
            crate::peer::forget(fd);
        }
    }
}

/// A directory stream was just made on `fd` (opendir, fdopendir):
/// decides whether it lists this process's fds, or another process's
/// (see `peer`).
pub fn note(fd: i32) {
    let Some((w, bit)) = word(fd) else { return };
    let lists = match listed(fd) {
        Listed::Own => true,
        Listed::Other(pid) => crate::peer::note(fd, pid),
        Listed::No => false,
    };
    if lists {
        ANY.store(true, Relaxed);
        w.fetch_or(bit, Relaxed);
    } else {
        forget(fd);
    }
}

/// Whether `fd` is a number the program must not see in its fd table:
/// a tombstone, or an fd the shim (or the supervisor, in the shim's
/// table) keeps for itself. The supervisor's rule.
pub fn hidden_fd(fd: i32) -> bool {
    match st::state_of(fd) {
        Some(state::TOMBSTONE | state::INTERNAL) => true,
        None | Some(state::OPEN) => st::internal(fd),
        // Free or closed in the table, yet listed by the kernel: a
        // tombstone whose record was lost (a supervisor's, written while
        // the slot's lock was contended), or a handle made behind the
        // shim's back, which the fd's flags and link tell apart.
        Some(_) => st::internal(fd) || sys::is_tombstone_like(fd),
    }
}

/// Whether a readdir entry named `name` (NUL-terminated) of the stream on
/// `dirfd`, which lists a process's fds, is a number the program must not
/// see ([`hidden_fd`], or the listed process's rule).
///
/// # Safety
/// `name` points at a NUL-terminated string (a dirent's `d_name`).
pub unsafe fn hidden(dirfd: i32, name: *const core::ffi::c_char) -> bool {
    // More bytes than any fd number has.
    let mut b = [0u8; 12];
    // SAFETY: the caller's promise.
    let n = unsafe { sys::c_head(name, &mut b) };
    fdpath::number(&b[..n])
        .is_some_and(|fd| crate::peer::listed_hidden(dirfd, fd).unwrap_or_else(|| hidden_fd(fd)))
}

/// Whose fds a directory stream lists.
#[derive(Debug, PartialEq, Eq)]
enum Listed {
    Own,
    Other(i32),
    No,
}

/// Whose fd directory the directory open at `fd` is. Two syscalls at
/// most, both with the cookie (nothing for a supervisor).
fn listed(fd: i32) -> Listed {
    // Most directories a program opens are not on procfs: one fstatfs
    // (~1 µs) spares them the readlink of /proc/self/fd/N (~20 µs: a
    // lookup of this process in /proc and a d_path; `grep -r` opens a
    // directory per ten files).
    // SAFETY: an all-zero statfs is valid to be overwritten.
    let mut fs: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs into a local of that type.
    let r = unsafe {
        sys::sc(
            libc::SYS_fstatfs,
            [fd as u64, (&mut fs as *mut libc::statfs) as u64, 0, 0, 0, 0],
        )
    };
    if r == 0 && fs.f_type != libc::PROC_SUPER_MAGIC {
        return Listed::No;
    }
    let mut path = [0u8; 48];
    let path = sys::with_number(&mut path, b"/proc/self/fd/", fd);
    let mut target = [0u8; 64];
    // SAFETY: readlinkat of a NUL-terminated path into a local buffer of
    // the length given.
    let n = unsafe {
        sys::sc(
            libc::SYS_readlinkat,
            [
                libc::AT_FDCWD as u64,
                path.as_ptr() as u64,
                target.as_mut_ptr() as u64,
                target.len() as u64,
                0,
                0,
            ],
        )
    };
    // A target that fills the buffer is longer than any /proc fd
    // directory's.
    let Some(target) = usize::try_from(n)
        .ok()
        .filter(|&n| n < target.len())
        .map(|n| &target[..n])
    else {
        return Listed::No;
    };
    // The link of an open directory names its process by pid.
    let Some(Whose::Pid(pid)) = fdpath::listing(target) else {
        return Listed::No;
    };
    if pid == sys::getpid() {
        return Listed::Own;
    }
    // Another of this process's threads (`/proc/TID` works for any
    // thread), or a /proc that counts pids in another namespace than
    // getpid(): either way /proc/self/task lists it.
    let mut task = [0u8; 48];
    let task = sys::with_number(&mut task, b"/proc/self/task/", pid);
    if sys::stat_path(task, libc::AT_SYMLINK_NOFOLLOW).is_some() {
        Listed::Own
    } else {
        Listed::Other(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let mut b = [0u8; 48];
        assert_eq!(
            sys::with_number(&mut b, b"/proc/self/fd/", 0),
            b"/proc/self/fd/0\0"
        );
        assert_eq!(
            sys::with_number(&mut b, b"/proc/self/task/", i32::MAX),
            b"/proc/self/task/2147483647\0"
        );
    }

    #[test]
    fn this_process_fd_directories() {
        use std::os::fd::AsRawFd;
        let own = std::fs::File::open("/proc/self/fd").expect("open /proc/self/fd");
        assert_eq!(Listed::Own, listed(own.as_raw_fd()));
        let dev = std::fs::File::open("/dev/fd").expect("open /dev/fd");
        assert_eq!(Listed::Own, listed(dev.as_raw_fd()));
        let task = format!("/proc/self/task/{}/fd", sys::gettid());
        let task = std::fs::File::open(task).expect("open the task's fd dir");
        assert_eq!(Listed::Own, listed(task.as_raw_fd()));
        // A thread of this process, by its own /proc entry.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(sys::gettid()).expect("send tid");
            let _ = done_rx.recv();
        });
        let tid = rx.recv().expect("tid");
        let other = std::fs::File::open(format!("/proc/{tid}/fd")).expect("open");
        assert_eq!(Listed::Own, listed(other.as_raw_fd()));
        drop(done_tx);
        t.join().expect("join");
        let info = std::fs::File::open("/proc/self/fdinfo").expect("open fdinfo");
        assert_eq!(Listed::Own, listed(info.as_raw_fd()));
        for not in ["/proc/self", "/tmp", "/proc/1/fd"] {
            if let Ok(f) = std::fs::File::open(not) {
                assert_ne!(listed(f.as_raw_fd()), Listed::Own, "{not}");
            }
        }
    }
}
