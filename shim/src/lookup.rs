//! Path lookups: the `*at` functions judged on their directory fd, and
//! paths that name a hidden fd-table entry answering ENOENT.
//!
//! A tombstone is an O_PATH fd, and the kernel accepts an O_PATH fd
//! wherever a call only needs a name: `fstatat(fd, "", AT_EMPTY_PATH)`
//! and `statx` describe the tombstone, a relative `fstatat(dirfd, ...)`
//! answers ENOTDIR, `fchownat(fd, "", .., AT_EMPTY_PATH)` succeeds. A
//! closed number answers EBADF to all of them, so the shim judges the
//! directory fd of every such libc function before libc makes the call:
//! a quarantined number then fails with EBADF (and is reported as a use
//! where the call would use it), as the supervisor does for the calls it
//! stops. The real functions do the work, so their own fallbacks
//! (faccessat2, fchmodat's AT_SYMLINK_NOFOLLOW) are kept.
//!
//! The kernel also shows tombstones and the shim's own fds under
//! `/proc/self/fd/N`, `/dev/fd/N` and `/proc/self/fdinfo/N`: a lookup of
//! one of those (stat, access, readlink, open) answers ENOENT, as for a
//! number nobody holds; in another job process's table too (`peer`).

use core::ffi::{c_char, c_int, c_void};

use crate::check::check;
use crate::fddir;
use crate::real::Real;
use crate::state::active;
use crate::sys;
use handles_model::fdpath::{self, Whose};
use handles_model::judge::{op_of, Op};
use handles_model::syscalls;

/// Whether `path` names an entry of this process's fd table that is
/// hidden (see the module's documentation).
pub fn names_hidden(path: *const c_char) -> bool {
    if path.is_null() || !active() {
        return false;
    }
    let mut buf = [0u8; 64];
    // Two loads for every path that cannot name an fd table.
    // SAFETY: a C string has at least its NUL; the second byte is read
    // only after the first was not NUL.
    let (c0, c1) = unsafe { (*path as u8, if *path == 0 { 0 } else { *path.add(1) as u8 }) };
    if !fdpath::may_name_table(&[c0, c1]) {
        return false;
    }
    // SAFETY: the program passes a C string (64 bytes are enough for
    // every name fdpath recognises).
    let n = unsafe { sys::c_head(path, &mut buf) };
    let Some(e) = fdpath::entry(&buf[..n]) else {
        return false;
    };
    match e.whose {
        Whose::This => fddir::hidden_fd(e.fd),
        Whose::Pid(p) if p == sys::getpid() => fddir::hidden_fd(e.fd),
        Whose::Pid(p) => {
            let mut task = [0u8; 48];
            let task = sys::with_number(&mut task, b"/proc/self/task/", p);
            if sys::stat_path(task, libc::AT_SYMLINK_NOFOLLOW).is_some() {
                fddir::hidden_fd(e.fd)
            } else {
                crate::peer::hidden(p, e.fd)
            }
        }
    }
}

/// The verdict on a call of syscall `nr` (arguments `a`) whose directory
/// fd is argument `i` and whose path is `path`: None to run it, or the
/// value to return (libc's convention). The directory fd is used when the
/// path is relative or empty (AT_EMPTY_PATH) or NULL (utimensat); an
/// absolute path, or AT_FDCWD, makes it a plain path lookup.
pub fn at(nr: i64, a: [u64; 6], i: usize, path: *const c_char) -> Option<i64> {
    if !active() {
        return None;
    }
    let dirfd = a[i] as c_int;
    // SAFETY: a C string has at least its NUL.
    let first = (!path.is_null()).then(|| unsafe { *path } as u8);
    if dirfd >= 0 && first != Some(b'/') {
        let op = op_of(nr, &a, i, first == Some(0));
        return check(dirfd, op, nr, a, 0);
    }
    names_hidden(path).then(|| sys::ret(-(libc::ENOENT as i64)))
}

/// The answer to a plain path lookup of `path`: None to run it.
fn lookup(path: *const c_char) -> Option<i64> {
    names_hidden(path).then(|| sys::ret(-(libc::ENOENT as i64)))
}

/// The real `$name` (libc's), found at its wrapper's first call.
macro_rules! real_fn {
    ($real:ident, $name:ident) => {
        static $real: Real = Real::new(
            // SAFETY: a literal without interior NULs.
            unsafe {
                core::ffi::CStr::from_bytes_with_nul_unchecked(
                    concat!(stringify!($name), "\0").as_bytes(),
                )
            },
        );
    };
}

/// Calls the real function with the wrapper's arguments (ENOSYS where
/// libc has none).
macro_rules! forward {
    ($real:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        match $real.get::<unsafe extern "C" fn($($ty),*) -> $ret>() {
            // SAFETY: the program's call, to libc's function of this type.
            Some(f) => unsafe { f($($arg),*) },
            None => sys::ret(-(libc::ENOSYS as i64)) as $ret,
        }
    };
}

/// `$name` with a plain path argument `$path`: hidden entries answer
/// ENOENT, everything else goes to libc's function.
macro_rules! path_fn {
    ($name:ident, $real:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $path:ident) => {
        real_fn!($real, $name);
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            if let Some(r) = lookup($path) {
                return r as $ret;
            }
            forward!($real, ($($arg: $ty),*) -> $ret)
        }
    };
}

/// Where the `n`th (from 0) directory fd of syscall `nr` is, by the
/// syscall table (`Desc::dirfd_args`); its path is the next argument, as
/// in every `*at` call. 6 when the table has none.
const fn dirfd_arg(nr: i64, n: u32) -> usize {
    match syscalls::desc(nr) {
        Some(d) => syscalls::nth_arg(d.dirfd_args, n),
        None => 6,
    }
}

/// `$name`, named in reports as syscall `$nr`, whose directory fd and
/// path are where the syscall table puts `$nr`'s.
macro_rules! at_fn {
    ($name:ident, $real:ident, $nr:expr, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        real_fn!($real, $name);
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            const DIRFD: usize = dirfd_arg($nr, 0);
            const { assert!(DIRFD < [$(stringify!($arg)),*].len() - 1, concat!(stringify!($name), ": no directory fd and path")) };
            let a = args!($($arg),*);
            if let Some(r) = at($nr, a, DIRFD, a[DIRFD + 1] as *const c_char) {
                return r as $ret;
            }
            forward!($real, ($($arg: $ty),*) -> $ret)
        }
    };
}

/// `$name` that uses fd `$fd` through a call the kernel accepts on an
/// O_PATH fd (libc makes it internally, where no wrapper sees it).
macro_rules! fd_fn {
    ($name:ident, $real:ident, $nr:expr, $op:expr, ($($arg:ident: $ty:ty),*) -> $ret:ty, $fd:ident) => {
        real_fn!($real, $name);
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            if let Some(r) = check($fd, $op, $nr, args!($($arg),*), 0) {
                return r as $ret;
            }
            forward!($real, ($($arg: $ty),*) -> $ret)
        }
    };
}

type Stat = *mut libc::stat;
use libc::{gid_t, mode_t, size_t, ssize_t, uid_t};

path_fn!(stat, STAT, (path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(stat64, STAT64, (path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(lstat, LSTAT, (path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(lstat64, LSTAT64, (path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(__xstat, XSTAT, (ver: c_int, path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(__xstat64, XSTAT64, (ver: c_int, path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(__lxstat, LXSTAT, (ver: c_int, path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(__lxstat64, LXSTAT64, (ver: c_int, path: *const c_char, buf: Stat) -> c_int, path);
path_fn!(access, ACCESS, (path: *const c_char, mode: c_int) -> c_int, path);
path_fn!(eaccess, EACCESS, (path: *const c_char, mode: c_int) -> c_int, path);
path_fn!(euidaccess, EUIDACCESS, (path: *const c_char, mode: c_int) -> c_int, path);
path_fn!(readlink, READLINK, (path: *const c_char, buf: *mut c_char, n: size_t) -> ssize_t, path);

static REALPATH: Real = Real::new(c"realpath");

/// realpath resolves with libc's internal readlink: a hidden entry is
/// a dangling name, as natively.
#[no_mangle]
pub unsafe extern "C-unwind" fn realpath(path: *const c_char, out: *mut c_char) -> *mut c_char {
    if lookup(path).is_some() {
        return core::ptr::null_mut();
    }
    match REALPATH.get::<unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut c_char>() {
        // SAFETY: the program's call, to libc's realpath.
        Some(f) => unsafe { f(path, out) },
        None => {
            sys::set_errno(libc::ENOSYS);
            core::ptr::null_mut()
        }
    }
}

use libc::{
    SYS_execveat, SYS_faccessat, SYS_fchownat, SYS_futimesat, SYS_linkat, SYS_mkdirat, SYS_mknodat,
    SYS_name_to_handle_at, SYS_newfstatat, SYS_readlinkat, SYS_renameat, SYS_renameat2, SYS_statx,
    SYS_symlinkat, SYS_unlinkat, SYS_utimensat,
};

at_fn!(fstatat, FSTATAT, SYS_newfstatat, (dirfd: c_int, path: *const c_char, buf: Stat, flags: c_int) -> c_int);
at_fn!(fstatat64, FSTATAT64, SYS_newfstatat, (dirfd: c_int, path: *const c_char, buf: Stat, flags: c_int) -> c_int);

/// The old stat ABI (`__fxstatat(ver, dirfd, path, buf, flags)`, what
/// binaries built against glibc before 2.33 call): judged as the
/// newfstatat it makes, whose arguments lack `ver`.
macro_rules! fxstatat_fn {
    ($name:ident, $real:ident) => {
        real_fn!($real, $name);
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name(
            ver: c_int,
            dirfd: c_int,
            path: *const c_char,
            buf: Stat,
            flags: c_int,
        ) -> c_int {
            if let Some(r) = at(SYS_newfstatat, args!(dirfd, path, buf, flags), 0, path) {
                return r as c_int;
            }
            forward!($real, (ver: c_int, dirfd: c_int, path: *const c_char, buf: Stat, flags: c_int) -> c_int)
        }
    };
}
fxstatat_fn!(__fxstatat, FXSTATAT);
fxstatat_fn!(__fxstatat64, FXSTATAT64);
at_fn!(statx, STATX, SYS_statx, (dirfd: c_int, path: *const c_char, flags: c_int, mask: libc::c_uint, buf: *mut c_void) -> c_int);
at_fn!(faccessat, FACCESSAT, SYS_faccessat, (dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int);
at_fn!(readlinkat, READLINKAT, SYS_readlinkat, (dirfd: c_int, path: *const c_char, buf: *mut c_char, n: size_t) -> ssize_t);
at_fn!(fchownat, FCHOWNAT, SYS_fchownat, (dirfd: c_int, path: *const c_char, uid: uid_t, gid: gid_t, flags: c_int) -> c_int);
at_fn!(fchmodat, FCHMODAT, libc::SYS_fchmodat, (dirfd: c_int, path: *const c_char, mode: mode_t, flags: c_int) -> c_int);
at_fn!(utimensat, UTIMENSAT, SYS_utimensat, (dirfd: c_int, path: *const c_char, times: *const libc::timespec, flags: c_int) -> c_int);
at_fn!(futimesat, FUTIMESAT, SYS_futimesat, (dirfd: c_int, path: *const c_char, times: *const libc::timeval) -> c_int);
at_fn!(unlinkat, UNLINKAT, SYS_unlinkat, (dirfd: c_int, path: *const c_char, flags: c_int) -> c_int);
at_fn!(mkdirat, MKDIRAT, SYS_mkdirat, (dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int);
at_fn!(mknodat, MKNODAT, SYS_mknodat, (dirfd: c_int, path: *const c_char, mode: mode_t, dev: libc::dev_t) -> c_int);
at_fn!(symlinkat, SYMLINKAT, SYS_symlinkat, (target: *const c_char, dirfd: c_int, path: *const c_char) -> c_int);
at_fn!(name_to_handle_at, NAME_TO_HANDLE_AT, SYS_name_to_handle_at, (dirfd: c_int, path: *const c_char, handle: *mut c_void, mount_id: *mut c_int, flags: c_int) -> c_int);
at_fn!(execveat, EXECVEAT, SYS_execveat, (dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int);

/// Calls with two directory fds: each is judged with its own path.
macro_rules! at2_fn {
    ($name:ident, $real:ident, $nr:expr, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        real_fn!($real, $name);
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            const I: usize = dirfd_arg($nr, 0);
            const J: usize = dirfd_arg($nr, 1);
            const { assert!(J < [$(stringify!($arg)),*].len() - 1, concat!(stringify!($name), ": not two directory fds with paths")) };
            let a = args!($($arg),*);
            let (p, q) = (a[I + 1] as *const c_char, a[J + 1] as *const c_char);
            if let Some(r) = at($nr, a, I, p).or_else(|| at($nr, a, J, q)) {
                return r as $ret;
            }
            forward!($real, ($($arg: $ty),*) -> $ret)
        }
    };
}

at2_fn!(renameat, RENAMEAT, SYS_renameat, (olddir: c_int, old: *const c_char, newdir: c_int, new: *const c_char) -> c_int);
at2_fn!(renameat2, RENAMEAT2, SYS_renameat2, (olddir: c_int, old: *const c_char, newdir: c_int, new: *const c_char, flags: libc::c_uint) -> c_int);
at2_fn!(linkat, LINKAT, SYS_linkat, (olddir: c_int, old: *const c_char, newdir: c_int, new: *const c_char, flags: c_int) -> c_int);

// libc runs fexecve as execveat(fd, "", .., AT_EMPTY_PATH), which the
// kernel accepts on an O_PATH fd (fstatvfs and fpathconf are in
// `stdio::streams`).
fd_fn!(fexecve, FEXECVE, SYS_execveat, Op::Use, (fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int, fd);

static ALL: [&Real; 34] = [
    &STAT,
    &STAT64,
    &LSTAT,
    &LSTAT64,
    &XSTAT,
    &XSTAT64,
    &LXSTAT,
    &LXSTAT64,
    &ACCESS,
    &EACCESS,
    &EUIDACCESS,
    &READLINK,
    &REALPATH,
    &FSTATAT,
    &FSTATAT64,
    &FXSTATAT,
    &FXSTATAT64,
    &STATX,
    &FACCESSAT,
    &READLINKAT,
    &FCHOWNAT,
    &FCHMODAT,
    &UTIMENSAT,
    &FUTIMESAT,
    &UNLINKAT,
    &MKDIRAT,
    &MKNODAT,
    &SYMLINKAT,
    &NAME_TO_HANDLE_AT,
    &EXECVEAT,
    &RENAMEAT,
    &RENAMEAT2,
    &LINKAT,
    &FEXECVE,
];

/// Resolves every real function (the atfork prepare handler: a forked
/// child must never need dlsym).
pub fn resolve_all() {
    for r in ALL {
        r.addr();
    }
}
