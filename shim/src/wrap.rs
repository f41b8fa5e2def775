//! The interposed fd functions.
//!
//! Calls that create or close fds enter through a naked trampoline that
//! pushes a frame pointer and passes it to the implementation in the
//! first free argument register (the cheap creation/close stacks of
//! `stack.rs`). Every wrapper checks its fds with one atomic load of the
//! slot state, then issues the syscall itself (with the cookie).

use core::ffi::{c_char, c_int, c_uint, c_void};

use handles_model::syscalls;
use handles_model::table::{self, obj_type_code, state};
use handles_model::ObjType;
use libc::{size_t, ssize_t};

use crate::quarantine;
use handles_model::judge::{Arg, Known, Op};

use crate::check::check;
use crate::report::{self, After, Call, Verdict};
use crate::stack;
use crate::state::{self as st, active, enter, leave, Named};
use crate::sys::{self, ret, sc, sc_cancel};

fn code(t: ObjType) -> u32 {
    obj_type_code(t)
}

/// A creating syscall's failure that the shim's own fd numbers may cause.
#[inline(always)]
fn emfile(r: i64) -> bool {
    r == -(libc::EMFILE as i64) || r == -(libc::ENFILE as i64)
}

/// Runs a creating syscall `f` (raw result); on EMFILE/ENFILE gives the
/// program the numbers the shim holds and retries; records the new fd
/// with its type, how (`table::how`) and name.
#[inline(always)]
fn create(frame: usize, ty: u32, how: u32, name: Named, f: impl Fn() -> i64) -> i64 {
    if !active() {
        return f();
    }
    let mut r = f();
    if emfile(r) {
        r = retry_after_release(&f, r);
    }
    if r >= 0 && enter() {
        // A dup only moves what the process holds (a forked child's
        // redirections before its exec); anything else makes a new object.
        if matches!(name, Named::DupOf(_)) {
            st::ensure_own_table();
        } else {
            st::ensure_published();
        }
        st::created(r as i32, ty, how, name, &stack::capture(frame));
        quarantine::after_create();
        leave();
    }
    r
}

/// The answer to EMFILE/ENFILE: the quarantine's numbers, then the
/// tombstone source, then the table's fd, each followed by a retry while
/// the call still fails so. A program that fills its fd table gets as
/// many fds as natively. (Under a supervisor, its own tombstones are its
/// to give back: see shim/README.md.)
#[cold]
fn retry_after_release(f: &dyn Fn() -> i64, mut r: i64) -> i64 {
    if !enter() {
        return r;
    }
    st::ensure_own_table();
    let mut step = 0;
    while emfile(r) && step < 3 {
        if quarantine::relieve(step) {
            r = f();
        }
        step += 1;
    }
    leave();
    r
}

/// [`create`] for calls that return two fds in an int[2].
fn create_pair(frame: usize, ty: u32, how: u32, fds: *mut c_int, f: impl Fn() -> i64) -> i64 {
    if !active() {
        return f();
    }
    let mut r = f();
    if emfile(r) {
        r = retry_after_release(&f, r);
    }
    if r == 0 && enter() {
        // A pipe is a process's plumbing (a shell's `$(a | b)` subshell
        // makes one for its pipeline, forks its stages and exits): a
        // forked child keeps its private table for it. A socket pair is
        // a new object like any other.
        if ty == code(ObjType::Pipe) {
            st::ensure_own_table();
        } else {
            st::ensure_published();
        }
        let pcs = stack::capture(frame);
        // SAFETY: the kernel just wrote both fds there.
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        st::created(a, ty, how, Named::No, &pcs);
        st::created(b, ty, how, Named::No, &pcs);
        quarantine::after_create();
        leave();
    }
    r
}

/// The `table::how` code of a handle made by syscall `nr`.
fn how(nr: i64) -> u32 {
    table::how::syscall(nr as u32)
}

/// A function that only uses fds: the arguments the syscall table says
/// syscall `$nr` takes fds in (`Desc::fd_args`), checked in order. The
/// wrapper's arity must be the table's, as the cookie goes in the first
/// register past it.
macro_rules! use_call {
    ($name:ident, $nr:expr, $cancel:tt, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            const FDS: u8 = match syscalls::desc($nr) {
                Some(d) => d.fd_args,
                None => 0,
            };
            const NARGS: usize = match syscalls::desc($nr) {
                Some(d) => d.nargs as usize,
                None => 0,
            };
            const {
                assert!(FDS != 0, concat!(stringify!($name), ": the syscall table gives no fd"));
                assert!(
                    NARGS == [$(stringify!($arg)),*].len(),
                    concat!(stringify!($name), ": not the syscall table's arity")
                );
            }
            let a = args!($($arg),*);
            let mut i = 0;
            while i < 6 {
                if FDS & (1 << i) != 0 {
                    if let Some(r) = check(a[i] as c_int, Op::Use, $nr, a, 0) {
                        return r as $ret;
                    }
                }
                i += 1;
            }
            // SAFETY: the program's syscall with the program's arguments.
            ret(unsafe { use_call!(@issue $cancel, $nr, a) }) as $ret
        }
    };
    (@issue cancel, $nr:expr, $a:expr) => { sc_cancel($nr, $a) };
    (@issue plain, $nr:expr, $a:expr) => { sc($nr, $a) };
    (@issue ioctl, $nr:expr, $a:expr) => { issue_ioctl($a) };
}

/// `ioctl(FIONCLEX)` makes the handle inheritable on purpose (CPython's
/// `os.set_inheritable`): under `--inherit-check` it carries
/// `marker::INHERIT` so that the supervisor learns it
/// (handles_model::inherit).
///
/// # Safety
/// As for [`sc`]: the program's call.
unsafe fn issue_ioctl(a: [u64; 6]) -> i64 {
    if a[1] == libc::FIONCLEX && sys::MARK_INHERIT.load(core::sync::atomic::Ordering::Relaxed) {
        // SAFETY: the program's call; the marker fills a register ioctl
        // does not read.
        unsafe { sys::marked(libc::SYS_ioctl, a, table::marker::INHERIT) }
    } else {
        // SAFETY: the program's call.
        unsafe { sc(libc::SYS_ioctl, a) }
    }
}

use libc::{
    SYS_bind, SYS_connect, SYS_epoll_ctl, SYS_epoll_wait, SYS_fchdir, SYS_fchmod, SYS_fchown,
    SYS_fdatasync, SYS_flock, SYS_fstatfs, SYS_fsync, SYS_ftruncate, SYS_getpeername,
    SYS_getsockname, SYS_getsockopt, SYS_ioctl, SYS_listen, SYS_lseek, SYS_pread64, SYS_pwrite64,
    SYS_read, SYS_readv, SYS_sendfile, SYS_sendmsg, SYS_setsockopt, SYS_shutdown, SYS_write,
    SYS_writev,
};

use_call!(read, SYS_read, cancel, (fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t);
use_call!(write, SYS_write, cancel, (fd: c_int, buf: *const c_void, n: size_t) -> ssize_t);
use_call!(readv, SYS_readv, cancel, (fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t);
use_call!(writev, SYS_writev, cancel, (fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t);
use_call!(pread, SYS_pread64, cancel, (fd: c_int, buf: *mut c_void, n: size_t, off: i64) -> ssize_t);
use_call!(pread64, SYS_pread64, cancel, (fd: c_int, buf: *mut c_void, n: size_t, off: i64) -> ssize_t);
use_call!(pwrite, SYS_pwrite64, cancel, (fd: c_int, buf: *const c_void, n: size_t, off: i64) -> ssize_t);
use_call!(pwrite64, SYS_pwrite64, cancel, (fd: c_int, buf: *const c_void, n: size_t, off: i64) -> ssize_t);
use_call!(sendmsg, SYS_sendmsg, cancel, (fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t);
use_call!(connect, SYS_connect, cancel, (fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int);
use_call!(epoll_wait, SYS_epoll_wait, cancel, (epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int);
use_call!(fsync, SYS_fsync, cancel, (fd: c_int) -> c_int);
use_call!(fdatasync, SYS_fdatasync, cancel, (fd: c_int) -> c_int);
use_call!(fstatfs, SYS_fstatfs, plain, (fd: c_int, buf: *mut libc::statfs) -> c_int);
use_call!(fstatfs64, SYS_fstatfs, plain, (fd: c_int, buf: *mut libc::statfs) -> c_int);
use_call!(lseek, SYS_lseek, plain, (fd: c_int, off: i64, whence: c_int) -> i64);
use_call!(lseek64, SYS_lseek, plain, (fd: c_int, off: i64, whence: c_int) -> i64);
use_call!(ioctl, SYS_ioctl, ioctl, (fd: c_int, req: libc::c_ulong, arg: libc::c_ulong) -> c_int);
use_call!(ftruncate, SYS_ftruncate, plain, (fd: c_int, len: i64) -> c_int);
use_call!(ftruncate64, SYS_ftruncate, plain, (fd: c_int, len: i64) -> c_int);
use_call!(bind, SYS_bind, plain, (fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int);
use_call!(listen, SYS_listen, plain, (fd: c_int, backlog: c_int) -> c_int);
use_call!(shutdown, SYS_shutdown, plain, (fd: c_int, how: c_int) -> c_int);
use_call!(getsockopt, SYS_getsockopt, plain, (fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut libc::socklen_t) -> c_int);
use_call!(setsockopt, SYS_setsockopt, plain, (fd: c_int, level: c_int, name: c_int, val: *const c_void, len: libc::socklen_t) -> c_int);
use_call!(getsockname, SYS_getsockname, plain, (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int);
use_call!(getpeername, SYS_getpeername, plain, (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int);
use_call!(sendfile, SYS_sendfile, plain, (out_fd: c_int, in_fd: c_int, off: *mut i64, n: size_t) -> ssize_t);
use_call!(sendfile64, SYS_sendfile, plain, (out_fd: c_int, in_fd: c_int, off: *mut i64, n: size_t) -> ssize_t);
use_call!(epoll_ctl, SYS_epoll_ctl, plain, (epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int);
use_call!(flock, SYS_flock, cancel, (fd: c_int, op: c_int) -> c_int);
use_call!(fchdir, SYS_fchdir, plain, (fd: c_int) -> c_int);
use_call!(fchmod, SYS_fchmod, plain, (fd: c_int, mode: libc::mode_t) -> c_int);
use_call!(fchown, SYS_fchown, plain, (fd: c_int, uid: libc::uid_t, gid: libc::gid_t) -> c_int);
use_call!(fgetxattr, libc::SYS_fgetxattr, plain, (fd: c_int, name: *const c_char, val: *mut c_void, size: size_t) -> ssize_t);
use_call!(fsetxattr, libc::SYS_fsetxattr, plain, (fd: c_int, name: *const c_char, val: *const c_void, size: size_t, flags: c_int) -> c_int);
use_call!(flistxattr, libc::SYS_flistxattr, plain, (fd: c_int, list: *mut c_char, size: size_t) -> ssize_t);
use_call!(fremovexattr, libc::SYS_fremovexattr, plain, (fd: c_int, name: *const c_char) -> c_int);
use_call!(readahead, libc::SYS_readahead, plain, (fd: c_int, off: i64, count: size_t) -> ssize_t);
use_call!(syncfs, libc::SYS_syncfs, plain, (fd: c_int) -> c_int);
use_call!(fallocate, libc::SYS_fallocate, cancel, (fd: c_int, mode: c_int, off: i64, len: i64) -> c_int);
use_call!(fallocate64, libc::SYS_fallocate, cancel, (fd: c_int, mode: c_int, off: i64, len: i64) -> c_int);

/// fstat issues `newfstatat(fd, "", buf, AT_EMPTY_PATH)`, as glibc's own
/// fstat does (since 2.33): a report, or a supervisor, names the syscall
/// the program would have made natively.
#[no_mangle]
pub unsafe extern "C-unwind" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    let a = args!(fd, c"".as_ptr(), buf, libc::AT_EMPTY_PATH);
    if let Some(r) = check(fd, Op::Question, libc::SYS_newfstatat, a, 0) {
        return r as c_int;
    }
    // SAFETY: the program's call, with an empty path.
    ret(unsafe { sc(libc::SYS_newfstatat, a) }) as c_int
}

#[no_mangle]
pub unsafe extern "C-unwind" fn fstat64(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarding.
    unsafe { fstat(fd, buf) }
}

/// send/recv and friends: six-argument syscalls, with no register left
/// for the cookie (a supervisor that traces them stops on each).
#[no_mangle]
pub unsafe extern "C-unwind" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> ssize_t {
    let a = args!(fd, buf, n, flags, addr, len);
    if let Some(r) = check(fd, Op::Use, libc::SYS_sendto, a, 0) {
        return r as ssize_t;
    }
    // SAFETY: the program's call.
    ret(unsafe { sc_cancel(libc::SYS_sendto, a) }) as ssize_t
}

#[no_mangle]
pub unsafe extern "C-unwind" fn send(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: send is sendto without an address.
    unsafe { sendto(fd, buf, n, flags, core::ptr::null(), 0) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> ssize_t {
    let a = args!(fd, buf, n, flags, addr, len);
    if let Some(r) = check(fd, Op::Use, libc::SYS_recvfrom, a, 0) {
        return r as ssize_t;
    }
    // SAFETY: the program's call.
    ret(unsafe { sc_cancel(libc::SYS_recvfrom, a) }) as ssize_t
}

#[no_mangle]
pub unsafe extern "C-unwind" fn recv(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: recv is recvfrom without an address.
    unsafe {
        recvfrom(
            fd,
            buf,
            n,
            flags,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    }
}

extern "C" {
    fn __chk_fail() -> !;
}

#[no_mangle]
pub unsafe extern "C-unwind" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: glibc's fortify failure, as its own __read_chk does.
        unsafe { __chk_fail() }
    }
    // SAFETY: forwarding.
    unsafe { read(fd, buf, n) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: i64,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: as __read_chk.
        unsafe { __chk_fail() }
    }
    // SAFETY: forwarding.
    unsafe { pread64(fd, buf, n, off) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: i64,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: forwarding.
    unsafe { __pread64_chk(fd, buf, n, off, buflen) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        // SAFETY: as __read_chk.
        unsafe { __chk_fail() }
    }
    // SAFETY: forwarding.
    unsafe { recv(fd, buf, n, flags) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: as __read_chk.
        unsafe { __chk_fail() }
    }
    // SAFETY: forwarding.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
) -> *mut c_void {
    let a = args!(addr, len, prot, flags, fd, off);
    if flags & libc::MAP_ANONYMOUS == 0 {
        if let Some(r) = check(fd, Op::Use, libc::SYS_mmap, a, 0) {
            return r as *mut c_void;
        }
    }
    // SAFETY: the program's call.
    ret(unsafe { sc(libc::SYS_mmap, a) }) as *mut c_void
}

#[no_mangle]
pub unsafe extern "C-unwind" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
) -> *mut c_void {
    // SAFETY: forwarding.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// poll: a quarantined fd must look like a closed one (POLLNVAL), not
/// like the always-ready O_PATH tombstone.
#[no_mangle]
pub unsafe extern "C-unwind" fn poll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: c_int,
) -> c_int {
    let a = args!(fds, n, timeout);
    if active() && !fds.is_null() {
        for i in 0..n as usize {
            // SAFETY: the program passes n pollfds.
            let fd = unsafe { (*fds.add(i)).fd };
            if fd >= 0 && !matches!(st::state_of(fd), None | Some(state::OPEN)) {
                // SAFETY: as above.
                return unsafe { poll_slow(fds, n, timeout) };
            }
        }
    }
    // SAFETY: the program's call.
    ret(unsafe { sc_cancel(libc::SYS_poll, a) }) as c_int
}

#[cold]
unsafe fn poll_slow(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let mut masked = [(0usize, 0 as c_int); 64];
    let mut nm = 0;
    let nested = !enter();
    if !nested {
        st::ensure_own_table();
    }
    for i in 0..n as usize {
        // SAFETY: the program passes n pollfds.
        let p = unsafe { &mut *fds.add(i) };
        let fd = p.fd;
        let s = st::state_of(fd);
        let stale = s == Some(state::TOMBSTONE) || (s == Some(state::INTERNAL) && st::internal(fd));
        if s == Some(state::FREE) && !nested {
            // poll answers POLLNVAL for a closed entry: a question
            // (findutils' xargs asks which fds are open this way).
            if sys::is_open(fd) {
                st::adopt(fd);
            }
        } else if stale && nm < masked.len() {
            masked[nm] = (i, fd);
            nm += 1;
            // The kernel skips negative fds; restored below.
            p.fd = -1;
        }
    }
    if !nested {
        leave();
    }
    // A closed fd makes poll return at once with POLLNVAL: do not block.
    let t = if nm > 0 { 0 } else { timeout };
    // SAFETY: the program's array, with the stale entries disabled.
    let r = unsafe { sc_cancel(libc::SYS_poll, args!(fds, n, t)) };
    for &(i, fd) in &masked[..nm] {
        // SAFETY: i < n.
        let p = unsafe { &mut *fds.add(i) };
        p.fd = fd;
        p.revents = libc::POLLNVAL;
    }
    let r = if r >= 0 { r + nm as i64 } else { r };
    ret(r) as c_int
}

/// select: a bad fd in any set fails the call with EBADF, as natively.
#[no_mangle]
pub unsafe extern "C-unwind" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    let a = args!(n, r, w, e, tv);
    if active() {
        let lim = n.clamp(0, libc::FD_SETSIZE as c_int);
        for set in [r, w, e] {
            if set.is_null() {
                continue;
            }
            for fd in 0..lim {
                // SAFETY: the program passes fd_sets of FD_SETSIZE bits.
                if unsafe { libc::FD_ISSET(fd, set) } {
                    if let Some(x) = check(fd, Op::Use, libc::SYS_select, a, 0) {
                        return x as c_int;
                    }
                }
            }
        }
    }
    // SAFETY: the program's call.
    ret(unsafe { sc_cancel(libc::SYS_select, a) }) as c_int
}

// ---- creating calls ----

fn open_type(flags: c_int) -> u32 {
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        code(ObjType::File)
    } else if flags & libc::O_PATH != 0 {
        code(ObjType::Path)
    } else if flags & libc::O_DIRECTORY != 0 {
        code(ObjType::Dir)
    } else {
        0
    }
}

/// Is `path` relative (so that a dirfd matters)?
fn relative(path: *const c_char) -> bool {
    // SAFETY: the program passes a C string (or NULL, which the kernel
    // rejects with EFAULT).
    !path.is_null() && unsafe { *path } != b'/' as c_char
}

unsafe extern "C-unwind" fn openat_impl(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
    frame: usize,
) -> c_int {
    let a = args!(dirfd, path, flags, mode);
    if dirfd != libc::AT_FDCWD && relative(path) {
        if let Some(r) = check(dirfd, Op::Use, libc::SYS_openat, a, frame) {
            return r as c_int;
        }
    } else if crate::lookup::names_hidden(path) {
        return ret(-(libc::ENOENT as i64)) as c_int;
    }
    // Opening a FIFO blocks: a cancellation point.
    // SAFETY: the program's call.
    ret(create(
        frame,
        open_type(flags),
        how(libc::SYS_openat),
        Named::Path(path),
        || unsafe { sc_cancel(libc::SYS_openat, a) },
    )) as c_int
}

unsafe extern "C-unwind" fn open_impl(
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
    frame: usize,
) -> c_int {
    // SAFETY: forwarding.
    unsafe { openat_impl(libc::AT_FDCWD, path, flags, mode, frame) }
}

unsafe extern "C-unwind" fn open2_impl(path: *const c_char, flags: c_int, frame: usize) -> c_int {
    // SAFETY: forwarding (the fortified entry has no mode).
    unsafe { openat_impl(libc::AT_FDCWD, path, flags, 0, frame) }
}

unsafe extern "C-unwind" fn openat2_impl(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    frame: usize,
) -> c_int {
    // SAFETY: forwarding.
    unsafe { openat_impl(dirfd, path, flags, 0, frame) }
}

unsafe extern "C-unwind" fn creat_impl(path: *const c_char, mode: c_uint, frame: usize) -> c_int {
    // SAFETY: forwarding; creat is open with these flags.
    unsafe {
        openat_impl(
            libc::AT_FDCWD,
            path,
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            mode,
            frame,
        )
    }
}

trampoline!(open => open_impl, (path: *const c_char, flags: c_int, mode: c_uint) -> c_int);
trampoline!(open64 => open_impl, (path: *const c_char, flags: c_int, mode: c_uint) -> c_int);
trampoline!(__open_2 => open2_impl, (path: *const c_char, flags: c_int) -> c_int);
trampoline!(__open64_2 => open2_impl, (path: *const c_char, flags: c_int) -> c_int);
trampoline!(openat => openat_impl, (dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int);
trampoline!(openat64 => openat_impl, (dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int);
trampoline!(__openat_2 => openat2_impl, (dirfd: c_int, path: *const c_char, flags: c_int) -> c_int);
trampoline!(__openat64_2 => openat2_impl, (dirfd: c_int, path: *const c_char, flags: c_int) -> c_int);
trampoline!(creat => creat_impl, (path: *const c_char, mode: c_uint) -> c_int);
trampoline!(creat64 => creat_impl, (path: *const c_char, mode: c_uint) -> c_int);

fn socket_type(domain: c_int) -> u32 {
    if domain == libc::AF_UNIX {
        code(ObjType::Channel)
    } else {
        code(ObjType::Socket)
    }
}

unsafe extern "C-unwind" fn socket_impl(
    domain: c_int,
    ty: c_int,
    proto: c_int,
    frame: usize,
) -> c_int {
    let a = args!(domain, ty, proto);
    // SAFETY: the program's call.
    ret(create(
        frame,
        socket_type(domain),
        how(libc::SYS_socket),
        Named::No,
        || unsafe { sc(libc::SYS_socket, a) },
    )) as c_int
}
trampoline!(socket => socket_impl, (domain: c_int, ty: c_int, proto: c_int) -> c_int);

unsafe extern "C-unwind" fn socketpair_impl(
    domain: c_int,
    ty: c_int,
    proto: c_int,
    sv: *mut c_int,
    frame: usize,
) -> c_int {
    let a = args!(domain, ty, proto, sv);
    // SAFETY: the program's call.
    ret(create_pair(
        frame,
        socket_type(domain),
        how(libc::SYS_socketpair),
        sv,
        || unsafe { sc(libc::SYS_socketpair, a) },
    )) as c_int
}
trampoline!(socketpair => socketpair_impl, (domain: c_int, ty: c_int, proto: c_int, sv: *mut c_int) -> c_int);

unsafe extern "C-unwind" fn accept4_impl(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
    frame: usize,
) -> c_int {
    let a = args!(fd, addr, len, flags);
    if let Some(r) = check(fd, Op::Use, libc::SYS_accept4, a, frame) {
        return r as c_int;
    }
    let ty = st::type_of(fd);
    // SAFETY: the program's call.
    ret(create(
        frame,
        ty,
        how(libc::SYS_accept4),
        Named::No,
        || unsafe { sc_cancel(libc::SYS_accept4, a) },
    )) as c_int
}

unsafe extern "C-unwind" fn accept_impl(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    frame: usize,
) -> c_int {
    let a = args!(fd, addr, len);
    if let Some(r) = check(fd, Op::Use, libc::SYS_accept, a, frame) {
        return r as c_int;
    }
    let ty = st::type_of(fd);
    // SAFETY: the program's call.
    ret(create(
        frame,
        ty,
        how(libc::SYS_accept),
        Named::No,
        || unsafe { sc_cancel(libc::SYS_accept, a) },
    )) as c_int
}
trampoline!(accept => accept_impl, (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int);
trampoline!(accept4 => accept4_impl, (fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int);

unsafe extern "C-unwind" fn pipe2_impl(fds: *mut c_int, flags: c_int, frame: usize) -> c_int {
    let a = args!(fds, flags);
    // SAFETY: the program's call.
    ret(create_pair(
        frame,
        code(ObjType::Pipe),
        how(libc::SYS_pipe2),
        fds,
        || unsafe { sc(libc::SYS_pipe2, a) },
    )) as c_int
}
unsafe extern "C-unwind" fn pipe_impl(fds: *mut c_int, frame: usize) -> c_int {
    // SAFETY: forwarding.
    unsafe { pipe2_impl(fds, 0, frame) }
}
trampoline!(pipe => pipe_impl, (fds: *mut c_int) -> c_int);
trampoline!(pipe2 => pipe2_impl, (fds: *mut c_int, flags: c_int) -> c_int);

/// A creating call with integer arguments and a fixed type.
macro_rules! simple_create {
    ($name:ident, $imp:ident, $nr:expr, $ty:expr, ($($arg:ident: $t:ty),*), [$($sysarg:expr),*]) => {
        simple_create!($name, $imp, $nr, $ty, Named::No, ($($arg: $t),*), [$($sysarg),*]);
    };
    ($name:ident, $imp:ident, $nr:expr, $ty:expr, $named:expr, ($($arg:ident: $t:ty),*), [$($sysarg:expr),*]) => {
        unsafe extern "C-unwind" fn $imp($($arg: $t,)* frame: usize) -> c_int {
            let a = args!($($sysarg),*);
            // SAFETY: the program's call.
            ret(create(frame, $ty, how($nr), $named, || unsafe { sc($nr, a) })) as c_int
        }
        trampoline!($name => $imp, ($($arg: $t),*) -> c_int);
    };
}

simple_create!(eventfd, eventfd_impl, libc::SYS_eventfd2, code(ObjType::Event), (init: c_uint, flags: c_int), [init, flags]);
simple_create!(epoll_create, epoll_create_impl, libc::SYS_epoll_create, code(ObjType::Port), (size: c_int), [size]);
simple_create!(epoll_create1, epoll_create1_impl, libc::SYS_epoll_create1, code(ObjType::Port), (flags: c_int), [flags]);
simple_create!(timerfd_create, timerfd_create_impl, libc::SYS_timerfd_create, code(ObjType::Timer), (clock: c_int, flags: c_int), [clock, flags]);
simple_create!(
    inotify_init,
    inotify_init_impl,
    libc::SYS_inotify_init1,
    code(ObjType::Inotify),
    (),
    [0]
);
simple_create!(inotify_init1, inotify_init1_impl, libc::SYS_inotify_init1, code(ObjType::Inotify), (flags: c_int), [flags]);
simple_create!(fanotify_init, fanotify_init_impl, libc::SYS_fanotify_init, code(ObjType::Fanotify), (flags: c_uint, evflags: c_uint), [flags, evflags]);
simple_create!(memfd_create, memfd_create_impl, libc::SYS_memfd_create, code(ObjType::Vmo), Named::Memfd(name), (name: *const c_char, flags: c_uint), [name, flags]);
simple_create!(pidfd_open, pidfd_open_impl, libc::SYS_pidfd_open, code(ObjType::Process), (pid: libc::pid_t, flags: c_uint), [pid, flags]);

unsafe extern "C-unwind" fn signalfd_impl(
    fd: c_int,
    mask: *const libc::sigset_t,
    flags: c_int,
    frame: usize,
) -> c_int {
    // The kernel's sigset is 8 bytes, whatever glibc's sigset_t size.
    let a = args!(fd, mask, 8, flags);
    if fd != -1 {
        if let Some(r) = check(fd, Op::Use, libc::SYS_signalfd4, a, frame) {
            return r as c_int;
        }
        // SAFETY: the program's call (updates an existing signalfd).
        return ret(unsafe { sc(libc::SYS_signalfd4, a) }) as c_int;
    }
    // SAFETY: the program's call.
    ret(create(
        frame,
        code(ObjType::Signalfd),
        how(libc::SYS_signalfd4),
        Named::No,
        || unsafe { sc(libc::SYS_signalfd4, a) },
    )) as c_int
}
trampoline!(signalfd => signalfd_impl, (fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int);

unsafe extern "C-unwind" fn dup_impl(fd: c_int, frame: usize) -> c_int {
    let a = args!(fd);
    if let Some(r) = check(fd, Op::Dup, libc::SYS_dup, a, frame) {
        return r as c_int;
    }
    // SAFETY: the program's call.
    ret(create(
        frame,
        0,
        how(libc::SYS_dup),
        Named::DupOf(fd),
        || unsafe { sc(libc::SYS_dup, a) },
    )) as c_int
}
trampoline!(dup => dup_impl, (fd: c_int) -> c_int);

/// dup2/dup3: the target slot is locked across the syscall so that the
/// quarantine's eviction can never close the new fd.
fn dup_to(nr: i64, old: c_int, new: c_int, flags: c_int, frame: usize) -> c_int {
    let a = if nr == libc::SYS_dup2 {
        args!(old, new)
    } else {
        args!(old, new, flags)
    };
    if let Some(r) = check(old, Op::Dup, nr, a, frame) {
        return r as c_int;
    }
    if old == new || !active() || !enter() {
        // SAFETY: the program's call.
        return ret(unsafe { sc(nr, a) }) as c_int;
    }
    st::ensure_own_table();
    if st::internal(new) {
        st::relocate_internal(new);
    }
    let r = match st::slot(new) {
        Some(s) => {
            let l = st::lock(s);
            // SAFETY: the program's call.
            let r = unsafe { sc(nr, a) };
            if r >= 0 {
                st::created_locked(
                    new,
                    s,
                    &l,
                    0,
                    how(nr),
                    Named::DupOf(old),
                    &stack::capture(frame),
                );
            }
            st::unlock(new, s, l);
            r
        }
        // SAFETY: the program's call.
        None => unsafe { sc(nr, a) },
    };
    leave();
    ret(r) as c_int
}

unsafe extern "C-unwind" fn dup2_impl(old: c_int, new: c_int, frame: usize) -> c_int {
    dup_to(libc::SYS_dup2, old, new, 0, frame)
}
unsafe extern "C-unwind" fn dup3_impl(old: c_int, new: c_int, flags: c_int, frame: usize) -> c_int {
    dup_to(libc::SYS_dup3, old, new, flags, frame)
}
trampoline!(dup2 => dup2_impl, (old: c_int, new: c_int) -> c_int);
trampoline!(dup3 => dup3_impl, (old: c_int, new: c_int, flags: c_int) -> c_int);

unsafe extern "C-unwind" fn fcntl_impl(
    fd: c_int,
    cmd: c_int,
    arg: libc::c_ulong,
    frame: usize,
) -> c_int {
    let a = args!(fd, cmd, arg);
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            if let Some(r) = check(fd, Op::Dup, libc::SYS_fcntl, a, frame) {
                return r as c_int;
            }
            // SAFETY: the program's call.
            ret(create(
                frame,
                0,
                how(libc::SYS_fcntl),
                Named::DupOf(fd),
                || unsafe { sc(libc::SYS_fcntl, a) },
            )) as c_int
        }
        libc::F_GETFD | libc::F_GETFL | libc::F_SETFD => {
            // Questions ("is this fd open?"): never reported; a
            // quarantined number answers as a closed one.
            if let Some(r) = check(fd, Op::Question, libc::SYS_fcntl, a, frame) {
                return r as c_int;
            }
            if cmd == libc::F_SETFD
                && arg & libc::FD_CLOEXEC as libc::c_ulong == 0
                && sys::MARK_INHERIT.load(core::sync::atomic::Ordering::Relaxed)
            {
                // Made inheritable on purpose: the supervisor's inherit
                // check must know (handles_model::inherit).
                // SAFETY: the program's call; the marker fills a register
                // fcntl does not read.
                return ret(unsafe { sys::marked(libc::SYS_fcntl, a, table::marker::INHERIT) })
                    as c_int;
            }
            // SAFETY: the program's call.
            ret(unsafe { sc(libc::SYS_fcntl, a) }) as c_int
        }
        _ => {
            if let Some(r) = check(fd, Op::Use, libc::SYS_fcntl, a, frame) {
                return r as c_int;
            }
            // SAFETY: the program's call; lock waits are cancellation
            // points.
            let r = unsafe {
                if cmd == libc::F_SETLKW || cmd == libc::F_OFD_SETLKW {
                    sc_cancel(libc::SYS_fcntl, a)
                } else {
                    sc(libc::SYS_fcntl, a)
                }
            };
            ret(r) as c_int
        }
    }
}
trampoline!(fcntl => fcntl_impl, (fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int);
trampoline!(fcntl64 => fcntl_impl, (fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int);

unsafe extern "C-unwind" fn recvmsg_impl(
    fd: c_int,
    msg: *mut libc::msghdr,
    flags: c_int,
    frame: usize,
) -> ssize_t {
    let a = args!(fd, msg, flags);
    if let Some(r) = check(fd, Op::Use, libc::SYS_recvmsg, a, frame) {
        return r as ssize_t;
    }
    // SAFETY: the program's call.
    let r = unsafe { sc_cancel(libc::SYS_recvmsg, a) };
    if r >= 0 && active() && !msg.is_null() && enter() {
        st::ensure_published();
        // SAFETY: the kernel filled msg's control buffer; the CMSG macros
        // stay inside msg_controllen.
        unsafe { note_rights(msg, frame) };
        leave();
    }
    ret(r) as ssize_t
}
trampoline!(recvmsg => recvmsg_impl, (fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t);

/// Records the fds received through SCM_RIGHTS.
unsafe fn note_rights(msg: *mut libc::msghdr, frame: usize) {
    let mut pcs = None;
    // SAFETY: see recvmsg_impl.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const c_int;
                let hdr = libc::CMSG_LEN(0) as usize;
                let n = ((*c).cmsg_len as usize).saturating_sub(hdr) / 4;
                for i in 0..n {
                    let fd = data.add(i).read_unaligned();
                    let p = pcs.get_or_insert_with(|| stack::capture(frame));
                    st::created(fd, 0, table::how::RECEIVED, Named::No, p);
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    if pcs.is_some() {
        quarantine::after_create();
    }
}

// ---- closing calls ----

/// close(fd) with fd > 2 closes the fd and puts a tombstone on its number
/// (`quarantine::close_and_hold`): the number stays taken, so a stale use
/// fails with EBADF instead of reaching the next object that would have
/// got it, and the program still gets close's own result.
unsafe extern "C-unwind" fn close_impl(fd: c_int, frame: usize) -> c_int {
    if !active() || fd < 0 || !enter() {
        return ret(sys::close(fd)) as c_int;
    }
    st::ensure_own_table();
    let (r, after) = do_close(fd, frame);
    leave();
    report::apply(after);
    ret(r) as c_int
}
trampoline!(close => close_impl, (fd: c_int) -> c_int);

fn do_close(fd: c_int, frame: usize) -> (i64, After) {
    let Some(s) = st::slot(fd) else {
        return (sys::close(fd), After::Nothing);
    };
    let call = Call::syscall(libc::SYS_close, args!(fd));
    // Every close goes to the judge, open ones too: a sweep is told by
    // the closes before.
    let known = report::known(fd);
    let (v, sweeping) = report::judged_close(
        &[Arg {
            op: Op::Close,
            fd,
            known,
        }],
        &call,
        frame,
    );
    let after = match v {
        Some(Verdict {
            result: Some(r),
            after,
        }) => return (r, after),
        v => v.map_or(After::Nothing, |v| v.after),
    };
    if known != Known::Open {
        // The judge lets a close of a number that is not open run: the
        // kernel answers EBADF, as natively.
        return (sys::close(fd), after);
    }
    let pcs = stack::capture(frame);
    let l = st::lock(s);
    if s.load(&l).state == state::TOMBSTONE {
        // Another thread closed it first: a close racing another.
        st::unlock(fd, s, l);
        let v = report::judged(
            &[Arg {
                op: Op::Close,
                fd,
                known: Known::Closed { quarantined: true },
            }],
            &call,
            frame,
        );
        return match v {
            Some(Verdict {
                result: Some(r),
                after,
            }) => (r, after),
            Some(v) => (-(libc::EBADF as i64), v.after),
            None => (-(libc::EBADF as i64), After::Nothing),
        };
    }
    // Closes, records, unlocks, and quarantines the number unless the
    // close is a sweep's: the program gets close's own result.
    let (r, _held) = quarantine::close_and_hold(fd, s, l, &pcs, !sweeping);
    (r, after)
}

/// close_range: tombstones and open fds in the range are released, the
/// shim's own fds are stepped around.
fn do_close_range(lo: c_uint, hi: c_uint, flags: c_uint, frame: usize) -> i64 {
    let a = args!(lo, hi, flags);
    if !active() || lo > hi || flags & libc::CLOSE_RANGE_CLOEXEC as c_uint != 0 || !enter() {
        // SAFETY: the program's call (CLOEXEC closes nothing now; the
        // shim's fds are close-on-exec anyway).
        return unsafe { sc(libc::SYS_close_range, a) };
    }
    st::ensure_own_table();
    let pcs = stack::capture(frame);
    // closefrom(3) is close_range(3, ~0U): only the slots ever written
    // can hold anything to mark.
    for fd in st::maybe_written(lo, hi) {
        st::closed_in_range(fd, &pcs);
    }
    let mut keep = [
        st::TABLE_FD.load(core::sync::atomic::Ordering::Relaxed),
        st::TOMB_SRC.load(core::sync::atomic::Ordering::Relaxed),
    ];
    keep.sort_unstable();
    let mut from = u64::from(lo);
    let mut r = 0;
    for k in keep {
        if k < 0 || (k as u64) < from || (k as u64) > u64::from(hi) {
            continue;
        }
        if (k as u64) > from {
            // SAFETY: closing part of the program's range.
            let x = unsafe { sc(libc::SYS_close_range, args!(from, k as u64 - 1, flags)) };
            if x < 0 {
                r = x;
            }
        }
        from = k as u64 + 1;
    }
    if from <= u64::from(hi) {
        // SAFETY: the rest of the program's range.
        let x = unsafe { sc(libc::SYS_close_range, args!(from, hi, flags)) };
        if x < 0 {
            r = x;
        }
    }
    leave();
    r
}

unsafe extern "C-unwind" fn close_range_impl(
    lo: c_uint,
    hi: c_uint,
    flags: c_int,
    frame: usize,
) -> c_int {
    ret(do_close_range(lo, hi, flags as c_uint, frame)) as c_int
}
trampoline!(close_range => close_range_impl, (lo: c_uint, hi: c_uint, flags: c_int) -> c_int);

unsafe extern "C-unwind" fn closefrom_impl(lo: c_int, frame: usize) {
    do_close_range(lo.max(0) as c_uint, c_uint::MAX, 0, frame);
}
trampoline!(closefrom => closefrom_impl, (lo: c_int) -> ());

// vfork: a real one. Turning it into fork (as the shim once did) cost a
// large parent (CPython's subprocess vforks) a page-table copy and a
// copy-on-write fault for every page it touched afterwards: a python3
// program spawning 31 subprocesses ran 2.3x native with the shim alone.
// The child shares the parent's memory until it execs or exits, so it
// must not write the parent's table: the child side marks its thread as
// inside the shim, and every wrapper then passes its call straight to the
// kernel (with the cookie, no checks, no bookkeeping); the new image
// starts a shim of its own. The parent, resumed only once the child is
// gone, clears the mark (same thread, same thread-local memory).
//
// In assembly, like glibc's: the child returns through the caller's frame
// first, so the return address must not stay on the stack across the
// syscall (the child's return pops it, and the child's own calls may
// overwrite it before the parent runs). rdx survives `syscall`.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    core::arch::naked_asm!(
        "pop rdx",
        "mov eax, 58",
        "syscall",
        "push rdx",
        "mov rdi, rax",
        "jmp {after}",
        after = sym vfork_returned,
    )
}

/// Both sides of [`vfork`]: `ret` is the raw syscall result.
extern "C" fn vfork_returned(ret: i64) -> libc::pid_t {
    if ret == 0 {
        // The child: stand aside until exec (enter() now fails).
        let _ = enter();
        return 0;
    }
    // The parent: the child has exec'd or exited.
    leave();
    sys::ret(ret) as libc::pid_t
}

/// setrlimit/prlimit: the quarantine's bound follows RLIMIT_NOFILE (a
/// program that lowers it must not meet an early EMFILE, nor tombstones
/// in the numbers it has left). Marked, so that a supervisor sees the
/// limit change too (its quarantine follows the limit), as glibc issues
/// it (prlimit64).
fn set_limit(
    pid: libc::pid_t,
    res: c_int,
    new: *const libc::rlimit,
    old: *mut libc::rlimit,
) -> i64 {
    // SAFETY: the program's call; the kernel checks both pointers.
    let r = unsafe {
        sys::marked(
            libc::SYS_prlimit64,
            [pid as u64, res as u64, new as u64, old as u64, 0, 0],
            table::marker::CHECK,
        )
    };
    if r == 0
        && active()
        && res == libc::RLIMIT_NOFILE as c_int
        && !new.is_null()
        && (pid == 0 || pid == sys::getpid())
    {
        // SAFETY: the kernel just read it.
        let soft = unsafe { (*new).rlim_cur };
        st::LIMIT.store(soft.max(1), core::sync::atomic::Ordering::Relaxed);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn setrlimit(res: c_int, rl: *const libc::rlimit) -> c_int {
    ret(set_limit(0, res, rl, core::ptr::null_mut())) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn setrlimit64(res: c_int, rl: *const libc::rlimit) -> c_int {
    ret(set_limit(0, res, rl, core::ptr::null_mut())) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn prlimit(
    pid: libc::pid_t,
    res: c_int,
    new: *const libc::rlimit,
    old: *mut libc::rlimit,
) -> c_int {
    ret(set_limit(pid, res, new, old)) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn prlimit64(
    pid: libc::pid_t,
    res: c_int,
    new: *const libc::rlimit,
    old: *mut libc::rlimit,
) -> c_int {
    ret(set_limit(pid, res, new, old)) as c_int
}

/// Before a call goes to a supervisor for judgement: a forked child that
/// still reads its snapshot makes and announces its own table, which the
/// supervisor judges by (it hides the shim's numbers from a getdents64
/// listing with it, for one).
fn publish_for_supervisor() {
    if sys::COOKIE_ON.load(core::sync::atomic::Ordering::Relaxed) {
        st::publish_now();
    }
}

/// syscall(2): the fd-lifecycle syscalls a program issues through libc's
/// generic entry get the same treatment as their wrappers. The other fd
/// syscalls of the model's table go out marked, so that a supervisor
/// still judges them: the `syscall` instruction is libc's, which its
/// prefilter would otherwise let through (CPython lists /proc/self/fd
/// with `syscall(SYS_getdents64)`, and the supervisor filters that
/// listing). Everything else goes out unchanged.
#[no_mangle]
pub unsafe extern "C-unwind" fn syscall(
    nr: libc::c_long,
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
) -> libc::c_long {
    // SAFETY: each arm forwards the program's arguments to the wrapper of
    // the same call; the frame is 0 (stacks come from the unwinder).
    unsafe {
        match nr {
            libc::SYS_close => close_impl(a0 as c_int, 0) as libc::c_long,
            libc::SYS_close_range => {
                close_range_impl(a0 as c_uint, a1 as c_uint, a2 as c_int, 0) as libc::c_long
            }
            libc::SYS_dup => dup_impl(a0 as c_int, 0) as libc::c_long,
            libc::SYS_dup2 => dup2_impl(a0 as c_int, a1 as c_int, 0) as libc::c_long,
            libc::SYS_dup3 => dup3_impl(a0 as c_int, a1 as c_int, a2 as c_int, 0) as libc::c_long,
            libc::SYS_open => {
                open_impl(a0 as *const c_char, a1 as c_int, a2 as c_uint, 0) as libc::c_long
            }
            libc::SYS_openat => openat_impl(
                a0 as c_int,
                a1 as *const c_char,
                a2 as c_int,
                a3 as c_uint,
                0,
            ) as libc::c_long,
            libc::SYS_pipe2 => pipe2_impl(a0 as *mut c_int, a1 as c_int, 0) as libc::c_long,
            libc::SYS_read => read(a0 as c_int, a1 as *mut c_void, a2 as size_t) as libc::c_long,
            libc::SYS_write => {
                write(a0 as c_int, a1 as *const c_void, a2 as size_t) as libc::c_long
            }
            libc::SYS_pidfd_open => {
                pidfd_open_impl(a0 as libc::pid_t, a1 as c_uint, 0) as libc::c_long
            }
            libc::SYS_memfd_create => {
                memfd_create_impl(a0 as *const c_char, a1 as c_uint, 0) as libc::c_long
            }
            _ => {
                let a = [a0, a1, a2, a3, a4, a5];
                // A path lookup answers here as its libc function would
                // (`lookup`): a judged dirfd, a hidden fd-table name.
                let judged = match handles_model::syscalls::path_arg(nr) {
                    Some(1) => crate::lookup::at(nr, a, 0, a1 as *const c_char),
                    Some(i) => crate::lookup::names_hidden(a[i] as *const c_char)
                        .then(|| ret(-(libc::ENOENT as i64))),
                    None => None,
                };
                if let Some(r) = judged {
                    return r as libc::c_long;
                }
                let r = if handles_model::syscalls::lookup(nr).is_some() {
                    publish_for_supervisor();
                    sys::marked(nr, a, table::marker::CHECK)
                } else {
                    sys::raw(nr, a)
                };
                ret(r) as libc::c_long
            }
        }
    }
}
