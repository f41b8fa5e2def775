//! The fds open when the shim starts: listed before it makes its own,
//! registered as inherited once the table exists.

use core::sync::atomic::Ordering::*;

use handles_model::table::{self, state, SlotValue};

use super::*;
use crate::sys;

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

/// Fds [`list_open_fds`] asks about with one poll before it lists
/// /proc/self/fd.
const PROBED: usize = 256;

/// Lists the fds open now (the constructor, before the table exists).
///
/// Linux 6.2 and later give the number of open fds as the size of
/// /proc/self/fd. When that many answer one `poll` of the lowest
/// [`PROBED`] numbers (stdio, a few more: POLLNVAL is the kernel's "not
/// open"), they are all of them, found with one stat and one poll:
/// listing the directory makes a dentry and an inode for every entry
/// (~40 µs for six fds on a test VM), and probing the numbers one
/// `F_GETFD` at a time cost a syscall per number up to the highest fd
/// (a shell's 10, a CI runner's 255). Otherwise (a higher fd, an O_PATH
/// fd, which poll does not see, an older kernel, whose size is 0) the
/// directory is listed.
pub fn list_open_fds() -> Listing {
    let mut l = Listing {
        fds: [-1; 256],
        n: 0,
        incomplete: false,
    };
    let count = sys::stat_path(b"/proc/self/fd\0", 0).map_or(0, |st| st.st_size);
    // poll refuses more entries than RLIMIT_NOFILE allows fds.
    let probed = (LIMIT.load(Relaxed).min(PROBED as u64)) as usize;
    if (1..=probed as i64).contains(&count) {
        let mut p = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; PROBED];
        for (fd, e) in p.iter_mut().enumerate().take(probed) {
            e.fd = fd as i32;
        }
        // SAFETY: poll with a zero timeout over a local array of `probed`
        // entries, which the kernel reads and writes back.
        let r = unsafe {
            sys::sc(
                libc::SYS_poll,
                [p.as_mut_ptr() as u64, probed as u64, 0, 0, 0, 0],
            )
        };
        if r >= 0 {
            for e in &p[..probed] {
                if e.revents & libc::POLLNVAL == 0 && l.n < l.fds.len() {
                    l.fds[l.n] = e.fd;
                    l.n += 1;
                }
            }
            if l.n as i64 == count {
                return l;
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
