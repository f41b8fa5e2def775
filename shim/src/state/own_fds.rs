//! The shim's own fds (the table's memfd and the tombstone source): kept
//! at [`super::HIGH`], marked INTERNAL in the table, moved out of the
//! program's way and given up to it under fd pressure.

use core::sync::atomic::{AtomicI32, Ordering::*};

use handles_model::table::state;

use super::*;
use crate::sys;

pub static TABLE_FD: AtomicI32 = AtomicI32::new(-1);
pub static TOMB_SRC: AtomicI32 = AtomicI32::new(-1);

pub(super) fn is_internal(fd: i32) -> bool {
    fd >= 0 && (fd == TABLE_FD.load(Relaxed) || fd == TOMB_SRC.load(Relaxed))
}

/// True for the shim's own fds (the table and the tombstone source).
pub fn internal(fd: i32) -> bool {
    is_internal(fd)
}

/// The shim's own fd at `fd` disappeared behind its back (the kernel
/// handed the number out again). The tombstone source is re-made on
/// demand; the table mapping outlives its fd, only `handles <pid>` loses
/// sight of it.
pub(super) fn lost_internal(fd: i32) {
    if TOMB_SRC.load(Relaxed) == fd {
        TOMB_SRC.store(-1, Relaxed);
    }
    if TABLE_FD.load(Relaxed) == fd {
        TABLE_FD.store(-1, Relaxed);
    }
}

pub(super) fn mark_internal(fd: i32) {
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
