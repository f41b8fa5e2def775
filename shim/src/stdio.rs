//! The stdio and directory functions. Their internal open/close calls go
//! straight to libc's internal symbols, past the PLT, so the shim wraps
//! the functions themselves: the real ones (found with
//! dlsym(RTLD_NEXT)) do the work, and the shim registers the stream's fd
//! afterwards. Their uses of a stream's fd, which libc makes from inside,
//! are checked in `streams`.
//!
//! Closing a stream: the real fclose/closedir flushes and closes the fd,
//! so the program gets its own result (a deferred NFS/FUSE write error
//! included), and the number is taken back as a tombstone just after with
//! `F_DUPFD_CLOEXEC` (`quarantine::hold_closed`), which leaves it alone if
//! another thread got it in between. (Before, the number was turned into
//! a tombstone with dup3 while the stream was pointed at a spare dup:
//! dup3's implicit close discarded that flush result.) The stream's fd
//! field (glibc's `_fileno`, at a fixed offset of the public `struct
//! _IO_FILE`, and DIR's first field) is written only to close a stale
//! stream without touching whatever holds its number now.

use core::ffi::{c_char, c_int};
use core::sync::atomic::Ordering::Relaxed;

use handles_model::table::{obj_type_code, state};
use handles_model::ObjType;
use libc::FILE;

use crate::fddir;
use crate::quarantine;
use crate::real::Real;
use handles_model::judge::Op;

use crate::report::{self, After, Call};
use crate::stack;
use crate::state::{self as st, active, enter, leave, Named};
use crate::sys;

mod streams;

/// Offset of `_fileno` in glibc's `struct _IO_FILE` on x86_64: `_flags`
/// (padded to 8), eleven buffer pointers, `_markers`, `_chain`.
const FILENO_OFFSET: usize = 8 + 11 * 8 + 8 + 8;

static FOPEN: Real = Real::new(c"fopen");
static FOPEN64: Real = Real::new(c"fopen64");
static FREOPEN: Real = Real::new(c"freopen");
static FREOPEN64: Real = Real::new(c"freopen64");
static FCLOSE: Real = Real::new(c"fclose");
static PCLOSE: Real = Real::new(c"pclose");
static POPEN: Real = Real::new(c"popen");
static FDOPEN: Real = Real::new(c"fdopen");
static OPENDIR: Real = Real::new(c"opendir");
static FDOPENDIR: Real = Real::new(c"fdopendir");
static CLOSEDIR: Real = Real::new(c"closedir");
static TMPFILE: Real = Real::new(c"tmpfile");
static MKSTEMP: Real = Real::new(c"mkstemp");
static MKOSTEMP: Real = Real::new(c"mkostemp");
static MKSTEMPS: Real = Real::new(c"mkstemps");
static MKOSTEMPS: Real = Real::new(c"mkostemps");
static READDIR: Real = Real::new(c"readdir");
static READDIR64: Real = Real::new(c"readdir64");
static READDIR_R: Real = Real::new(c"readdir_r");
static READDIR64_R: Real = Real::new(c"readdir64_r");

static ALL: [&Real; 20] = [
    &FOPEN,
    &FOPEN64,
    &FREOPEN,
    &FREOPEN64,
    &FCLOSE,
    &PCLOSE,
    &POPEN,
    &FDOPEN,
    &OPENDIR,
    &FDOPENDIR,
    &CLOSEDIR,
    &TMPFILE,
    &MKSTEMP,
    &MKOSTEMP,
    &MKSTEMPS,
    &MKOSTEMPS,
    &READDIR,
    &READDIR64,
    &READDIR_R,
    &READDIR64_R,
];

macro_rules! real {
    ($r:ident, $ty:ty) => {
        $r.get::<$ty>()
    };
}

type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
type FreopenFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
type FcloseFn = unsafe extern "C" fn(*mut FILE) -> c_int;
type FdopenFn = unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE;
type OpendirFn = unsafe extern "C" fn(*const c_char) -> *mut libc::DIR;
type FdopendirFn = unsafe extern "C" fn(c_int) -> *mut libc::DIR;
type ClosedirFn = unsafe extern "C" fn(*mut libc::DIR) -> c_int;
type TmpfileFn = unsafe extern "C" fn() -> *mut FILE;
type MkstempFn = unsafe extern "C" fn(*mut c_char) -> c_int;
type MkostempFn = unsafe extern "C" fn(*mut c_char, c_int) -> c_int;
type MkostempsFn = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
// glibc's dirent and dirent64 are the same on x86_64.
type ReaddirFn = unsafe extern "C" fn(*mut libc::DIR) -> *mut libc::dirent;
type ReaddirRFn =
    unsafe extern "C" fn(*mut libc::DIR, *mut libc::dirent, *mut *mut libc::dirent) -> c_int;

/// Checks the FILE layout (the constructor). The real functions are
/// looked up at their wrapper's first call: resolving all 73 of them up
/// front cost every process ~20 µs and a few page faults of libc's
/// symbol tables, for functions most programs never call.
pub fn init() {
    streams::init();
}

/// Resolves every real function not resolved yet (the atfork prepare
/// handler: the first fork looks them up, later ones find them all
/// resolved, 73 loads). dlsym takes the dynamic loader's lock, which
/// another thread of a multi-threaded parent may hold at the fork: a
/// forked child must never need to call it. Its other risk, the first
/// call of a wrapper from a signal handler that interrupted the loader
/// on the same thread, is the program's own: these functions are not
/// async-signal-safe, but for fpathconf, whose first call from such a
/// handler is the one case left.
pub fn resolve_all() {
    for r in ALL {
        r.addr();
    }
    streams::resolve_all();
}

fn emfile() -> bool {
    // SAFETY: this thread's errno.
    let e = unsafe { *libc::__errno_location() };
    e == libc::EMFILE || e == libc::ENFILE
}

/// Runs `f` (a libc function that opens an fd internally); on EMFILE gives
/// the program the numbers the shim holds and retries (as the wrappers of
/// syscalls do), then records the fd that `fd_of` finds in the result,
/// made by syscall `nr` (the one libc issues), with its name.
fn opened<T: Copy>(
    frame: usize,
    ty: u32,
    nr: i64,
    name: Named,
    f: impl Fn() -> T,
    fd_of: impl Fn(T) -> c_int,
) -> T {
    let mut r = f();
    if !active() {
        return r;
    }
    if fd_of(r) < 0 && emfile() && enter() {
        st::ensure_own_table();
        let mut step = 0;
        while fd_of(r) < 0 && emfile() && step < 3 {
            if quarantine::relieve(step) {
                r = f();
            }
            step += 1;
        }
        leave();
    }
    let fd = fd_of(r);
    if fd >= 0 && enter() {
        st::ensure_published();
        let how = handles_model::table::how::syscall(nr as u32);
        st::created(fd, ty, how, name, &stack::capture(frame));
        quarantine::after_create();
        leave();
    }
    r
}

fn file_fd(f: *mut FILE) -> c_int {
    if f.is_null() {
        -1
    } else {
        // SAFETY: a stream libc just returned.
        unsafe { libc::fileno(f) }
    }
}

fn dir_fd(d: *mut libc::DIR) -> c_int {
    if d.is_null() {
        -1
    } else {
        // SAFETY: a DIR libc just returned.
        unsafe { libc::dirfd(d) }
    }
}

fn no_fn<T>(fail: T) -> T {
    sys::set_errno(libc::ENOSYS);
    fail
}

unsafe extern "C-unwind" fn fopen_impl(
    path: *const c_char,
    mode: *const c_char,
    frame: usize,
) -> *mut FILE {
    if crate::lookup::names_hidden(path) {
        sys::set_errno(libc::ENOENT);
        return core::ptr::null_mut();
    }
    let Some(f) = real!(FOPEN, FopenFn) else {
        return no_fn(core::ptr::null_mut());
    };
    // SAFETY: the program's call.
    opened(
        frame,
        0,
        libc::SYS_openat,
        Named::Path(path),
        || unsafe { f(path, mode) },
        file_fd,
    )
}
unsafe extern "C-unwind" fn fopen64_impl(
    path: *const c_char,
    mode: *const c_char,
    frame: usize,
) -> *mut FILE {
    if crate::lookup::names_hidden(path) {
        sys::set_errno(libc::ENOENT);
        return core::ptr::null_mut();
    }
    let Some(f) = real!(FOPEN64, FopenFn) else {
        return no_fn(core::ptr::null_mut());
    };
    // SAFETY: the program's call.
    opened(
        frame,
        0,
        libc::SYS_openat,
        Named::Path(path),
        || unsafe { f(path, mode) },
        file_fd,
    )
}
trampoline!(fopen => fopen_impl, (path: *const c_char, mode: *const c_char) -> *mut FILE);
trampoline!(fopen64 => fopen64_impl, (path: *const c_char, mode: *const c_char) -> *mut FILE);

unsafe extern "C-unwind" fn popen_impl(
    cmd: *const c_char,
    mode: *const c_char,
    frame: usize,
) -> *mut FILE {
    let Some(f) = real!(POPEN, FopenFn) else {
        return no_fn(core::ptr::null_mut());
    };
    // SAFETY: the program's call.
    opened(
        frame,
        obj_type_code(ObjType::Pipe),
        libc::SYS_pipe2,
        Named::No,
        || unsafe { f(cmd, mode) },
        file_fd,
    )
}
trampoline!(popen => popen_impl, (cmd: *const c_char, mode: *const c_char) -> *mut FILE);

unsafe extern "C-unwind" fn tmpfile_impl(frame: usize) -> *mut FILE {
    let Some(f) = real!(TMPFILE, TmpfileFn) else {
        return no_fn(core::ptr::null_mut());
    };
    // SAFETY: the program's call.
    opened(
        frame,
        obj_type_code(ObjType::File),
        libc::SYS_openat,
        Named::No,
        || unsafe { f() },
        file_fd,
    )
}
trampoline!(tmpfile => tmpfile_impl, () -> *mut FILE);
trampoline!(tmpfile64 => tmpfile_impl, () -> *mut FILE);

unsafe extern "C-unwind" fn mkstemp_impl(t: *mut c_char, frame: usize) -> c_int {
    let Some(f) = real!(MKSTEMP, MkstempFn) else {
        return no_fn(-1);
    };
    // SAFETY: the program's call.
    opened(
        frame,
        obj_type_code(ObjType::File),
        libc::SYS_openat,
        Named::Path(t),
        || unsafe { f(t) },
        |fd| fd,
    )
}
unsafe extern "C-unwind" fn mkostemp_impl(t: *mut c_char, flags: c_int, frame: usize) -> c_int {
    let Some(f) = real!(MKOSTEMP, MkostempFn) else {
        return no_fn(-1);
    };
    // SAFETY: the program's call.
    opened(
        frame,
        obj_type_code(ObjType::File),
        libc::SYS_openat,
        Named::Path(t),
        || unsafe { f(t, flags) },
        |fd| fd,
    )
}
unsafe extern "C-unwind" fn mkstemps_impl(t: *mut c_char, suffix: c_int, frame: usize) -> c_int {
    let Some(f) = real!(MKSTEMPS, MkostempFn) else {
        return no_fn(-1);
    };
    // SAFETY: the program's call.
    opened(
        frame,
        obj_type_code(ObjType::File),
        libc::SYS_openat,
        Named::Path(t),
        || unsafe { f(t, suffix) },
        |fd| fd,
    )
}
unsafe extern "C-unwind" fn mkostemps_impl(
    t: *mut c_char,
    suffix: c_int,
    flags: c_int,
    frame: usize,
) -> c_int {
    let Some(f) = real!(MKOSTEMPS, MkostempsFn) else {
        return no_fn(-1);
    };
    // SAFETY: the program's call.
    opened(
        frame,
        obj_type_code(ObjType::File),
        libc::SYS_openat,
        Named::Path(t),
        || unsafe { f(t, suffix, flags) },
        |fd| fd,
    )
}
trampoline!(mkstemp => mkstemp_impl, (t: *mut c_char) -> c_int);
trampoline!(mkstemp64 => mkstemp_impl, (t: *mut c_char) -> c_int);
trampoline!(mkostemp => mkostemp_impl, (t: *mut c_char, flags: c_int) -> c_int);
trampoline!(mkostemp64 => mkostemp_impl, (t: *mut c_char, flags: c_int) -> c_int);
trampoline!(mkstemps => mkstemps_impl, (t: *mut c_char, suffix: c_int) -> c_int);
trampoline!(mkostemps => mkostemps_impl, (t: *mut c_char, suffix: c_int, flags: c_int) -> c_int);

unsafe extern "C-unwind" fn opendir_impl(name: *const c_char, frame: usize) -> *mut libc::DIR {
    if crate::lookup::names_hidden(name) {
        sys::set_errno(libc::ENOENT);
        return core::ptr::null_mut();
    }
    let Some(f) = real!(OPENDIR, OpendirFn) else {
        return no_fn(core::ptr::null_mut());
    };
    // SAFETY: the program's call.
    let d = opened(
        frame,
        obj_type_code(ObjType::Dir),
        libc::SYS_openat,
        Named::Path(name),
        || unsafe { f(name) },
        dir_fd,
    );
    note_dir(d);
    d
}
trampoline!(opendir => opendir_impl, (name: *const c_char) -> *mut libc::DIR);

/// A new directory stream: whether its readdir must hide the shim's
/// numbers (`fddir`). After the fd was recorded, which forgets whatever
/// stream had the number before.
fn note_dir(d: *mut libc::DIR) {
    let fd = dir_fd(d);
    if fd >= 0 && active() {
        fddir::note(fd);
    }
}

/// Whether entries read from `d` go through `fddir::hidden`: one load of
/// a global for every stream until the process opens an fd directory.
fn filters(d: *mut libc::DIR) -> bool {
    !d.is_null() && fddir::any() && active() && fddir::is_fd_dir(dir_fd(d))
}

/// glibc's `struct __dirstream` is `int fd; int lock; size_t
/// allocation; size_t size; size_t offset; off_t filepos; int errcode;
/// char data[]`: the entries read and not yet returned are `size -
/// offset`, and a refill reads `allocation` bytes into `data`.
const DIR_ALLOCATION_OFFSET: usize = 8;
const DIR_SIZE_OFFSET: usize = 16;
const DIR_OFFSET_OFFSET: usize = 24;
const DIR_DATA_OFFSET: usize = 48;

/// The verdict on the stream's fd when this readdir will refill the
/// stream's buffer with getdents64 (its buffer is used up), as the
/// supervisor judges that getdents64 where no shim is: None to go on,
/// or the errno to fail with. A readdir served from the buffer makes no
/// syscall and is not a use.
fn refill_check(d: *mut libc::DIR) -> Option<c_int> {
    if d.is_null() || !active() {
        return None;
    }
    let fd = dir_fd(d);
    if matches!(st::state_of(fd), None | Some(state::OPEN)) {
        return None;
    }
    // SAFETY: d is a glibc DIR (the program's stream), whose header has
    // the layout above.
    let (allocation, size, offset) = unsafe {
        let p = d.cast::<u8>();
        (
            *(p.add(DIR_ALLOCATION_OFFSET) as *const usize),
            *(p.add(DIR_SIZE_OFFSET) as *const usize),
            *(p.add(DIR_OFFSET_OFFSET) as *const usize),
        )
    };
    if offset < size {
        return None;
    }
    // The refill's own arguments, for the report.
    let data = d as u64 + DIR_DATA_OFFSET as u64;
    let a = [fd as u64, data, allocation as u64, 0, 0, 0];
    crate::check::check(fd, Op::Use, libc::SYS_getdents64, a, 0).map(|_| sys::errno())
}

/// readdir and readdir64 (the same function in glibc on x86_64): on a
/// listing of this process's fds, the entries of the shim's numbers are
/// skipped.
fn read_entry(d: *mut libc::DIR, real: &Real) -> *mut libc::dirent {
    let Some(f) = real.get::<ReaddirFn>() else {
        return no_fn(core::ptr::null_mut());
    };
    if let Some(e) = refill_check(d) {
        sys::set_errno(e);
        return core::ptr::null_mut();
    }
    let filter = filters(d);
    loop {
        // SAFETY: the program's call.
        let e = unsafe { f(d) };
        // SAFETY: a non-null entry is the dirent libc just filled, with
        // its NUL-terminated name.
        if e.is_null() || !filter || !unsafe { fddir::hidden(dir_fd(d), (*e).d_name.as_ptr()) } {
            return e;
        }
    }
}

/// readdir_r and readdir64_r, filtered as [`read_entry`].
fn read_entry_r(
    d: *mut libc::DIR,
    entry: *mut libc::dirent,
    result: *mut *mut libc::dirent,
    real: &Real,
) -> c_int {
    let Some(f) = real.get::<ReaddirRFn>() else {
        return libc::ENOSYS;
    };
    if let Some(e) = refill_check(d) {
        return e;
    }
    let filter = filters(d) && !result.is_null();
    loop {
        // SAFETY: the program's call.
        let r = unsafe { f(d, entry, result) };
        if r != 0 || !filter {
            return r;
        }
        // SAFETY: libc stored the entry it filled (or null at the end)
        // through the program's non-null result pointer.
        let e = unsafe { *result };
        // SAFETY: as in read_entry.
        if e.is_null() || !unsafe { fddir::hidden(dir_fd(d), (*e).d_name.as_ptr()) } {
            return r;
        }
    }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn readdir(d: *mut libc::DIR) -> *mut libc::dirent {
    read_entry(d, &READDIR)
}

#[no_mangle]
pub unsafe extern "C-unwind" fn readdir64(d: *mut libc::DIR) -> *mut libc::dirent {
    read_entry(d, &READDIR64)
}

#[no_mangle]
pub unsafe extern "C-unwind" fn readdir_r(
    d: *mut libc::DIR,
    entry: *mut libc::dirent,
    result: *mut *mut libc::dirent,
) -> c_int {
    read_entry_r(d, entry, result, &READDIR_R)
}

#[no_mangle]
pub unsafe extern "C-unwind" fn readdir64_r(
    d: *mut libc::DIR,
    entry: *mut libc::dirent,
    result: *mut *mut libc::dirent,
) -> c_int {
    read_entry_r(d, entry, result, &READDIR64_R)
}

/// Checks the fd a stream is about to be built on; Some(errno) when the
/// call must fail.
fn check_fd(fd: c_int, name: &str) -> Option<c_int> {
    if !active() {
        return None;
    }
    let s = st::state_of(fd)?;
    if s == state::OPEN || !enter() {
        return None;
    }
    st::ensure_own_table();
    let v = match s {
        state::INTERNAL if st::internal(fd) => Some(not_the_programs()),
        state::TOMBSTONE => Some(report::bad_handle(Op::Use, fd, &Call::libc(name, fd), 0)),
        state::FREE if !sys::is_open(fd) => {
            Some(report::bad_handle(Op::Use, fd, &Call::libc(name, fd), 0))
        }
        state::FREE => {
            st::adopt(fd);
            None
        }
        _ => None,
    };
    conclude(v)
}

/// The verdict on a stream or fd call that names one of the shim's own
/// numbers: as if nothing were open there (EBADF, no report), and the
/// shim's table stays untouched.
fn not_the_programs() -> report::Verdict {
    report::Verdict {
        result: Some(-(libc::EBADF as i64)),
        after: After::Nothing,
    }
}

/// Ends a check begun with `enter()`: leaves the shim first, then carries
/// out the verdict's after-effect (a trap or a kill). Some(errno) when the
/// call must fail without running.
fn conclude(v: Option<report::Verdict>) -> Option<c_int> {
    leave();
    let v = v?;
    let r = v.result?;
    report::apply(v.after);
    Some(-r as c_int)
}

#[no_mangle]
pub unsafe extern "C-unwind" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if let Some(e) = check_fd(fd, "fdopen") {
        sys::set_errno(e);
        return core::ptr::null_mut();
    }
    match real!(FDOPEN, FdopenFn) {
        // SAFETY: the program's call.
        Some(f) => unsafe { f(fd, mode) },
        None => no_fn(core::ptr::null_mut()),
    }
}

#[no_mangle]
pub unsafe extern "C-unwind" fn fdopendir(fd: c_int) -> *mut libc::DIR {
    if let Some(e) = check_fd(fd, "fdopendir") {
        sys::set_errno(e);
        return core::ptr::null_mut();
    }
    let d = match real!(FDOPENDIR, FdopendirFn) {
        // SAFETY: the program's call.
        Some(f) => unsafe { f(fd) },
        None => no_fn(core::ptr::null_mut()),
    };
    note_dir(d);
    d
}

/// Closes a stream whose fd is `fd` and whose fd field is at `field`
/// (None when its layout is not the expected one), with `real`.
fn close_stream(
    fd: c_int,
    field: Option<*mut c_int>,
    name: &str,
    frame: usize,
    real: impl FnOnce() -> c_int,
) -> c_int {
    if !active() || st::slot(fd).is_none() || !enter() {
        return real();
    }
    st::ensure_own_table();
    // Looked up after ensure_own_table: a forked child's first write
    // moves it from its snapshot to a table of its own.
    let Some(s) = st::slot(fd) else {
        leave();
        return real();
    };
    let stale = match s.state.load(Relaxed) {
        state::TOMBSTONE => true,
        state::INTERNAL => st::internal(fd),
        state::FREE => {
            if sys::is_open(fd) {
                st::adopt(fd);
                false
            } else {
                true
            }
        }
        _ => false,
    };
    if stale {
        let v = if st::internal(fd) {
            report::Verdict {
                result: Some(-(libc::EBADF as i64)),
                after: After::Nothing,
            }
        } else {
            report::bad_handle(Op::Close, fd, &Call::libc(name, fd), frame)
        };
        if let Some(p) = field {
            // The stream must not close whatever holds the number now:
            // with no fd, libc frees it and reports failure, as when the
            // fd was closed natively.
            // SAFETY: p is the stream's fd field (checked by the caller).
            unsafe { *p = -1 };
        }
        leave();
        report::apply(v.after);
        let r = real();
        if field.is_some() {
            sys::set_errno(libc::EBADF);
            return libc::EOF;
        }
        return r;
    }
    let pcs = stack::capture(frame);
    // Marked closed before libc closes it, so that a thread that gets the
    // number next never finds its slot overwritten.
    st::closed(fd, &pcs);
    if fd <= 2 || !quarantine::room() {
        leave();
        return real();
    }
    // libc flushes and closes the fd itself, so the program gets fclose's
    // own result (a deferred write error of NFS/FUSE is reported at that
    // close; putting a tombstone on the number first with dup3 discarded
    // it), and the number is taken back just after. The slot is not locked
    // across libc's flush, which may wait on a server.
    let r = real();
    if r == libc::EOF && sys::errno() == libc::EBADF {
        // The fd was not open: the number is not ours to take.
        leave();
        return r;
    }
    let errno = sys::errno();
    quarantine::hold_closed(fd, s, &pcs);
    sys::set_errno(errno);
    leave();
    r
}

fn file_field(f: *mut FILE, fd: c_int) -> Option<*mut c_int> {
    // SAFETY: f is a glibc FILE (fileno succeeded on it), at least as
    // large as struct _IO_FILE.
    let p = unsafe { (f as *mut u8).add(FILENO_OFFSET) as *mut c_int };
    // SAFETY: as above.
    (unsafe { *p } == fd).then_some(p)
}

unsafe extern "C-unwind" fn fclose_impl(f: *mut FILE, frame: usize) -> c_int {
    let Some(real) = real!(FCLOSE, FcloseFn) else {
        return no_fn(libc::EOF);
    };
    let fd = file_fd(f);
    if fd < 0 {
        // SAFETY: the program's call.
        return unsafe { real(f) };
    }
    // SAFETY: the program's call.
    close_stream(fd, file_field(f, fd), "fclose", frame, || unsafe {
        real(f)
    })
}
trampoline!(fclose => fclose_impl, (f: *mut FILE) -> c_int);

unsafe extern "C-unwind" fn pclose_impl(f: *mut FILE, frame: usize) -> c_int {
    let Some(real) = real!(PCLOSE, FcloseFn) else {
        return no_fn(-1);
    };
    let fd = file_fd(f);
    if fd < 0 {
        // SAFETY: the program's call.
        return unsafe { real(f) };
    }
    // SAFETY: the program's call.
    close_stream(fd, file_field(f, fd), "pclose", frame, || unsafe {
        real(f)
    })
}
trampoline!(pclose => pclose_impl, (f: *mut FILE) -> c_int);

unsafe extern "C-unwind" fn closedir_impl(d: *mut libc::DIR, frame: usize) -> c_int {
    let Some(real) = real!(CLOSEDIR, ClosedirFn) else {
        return no_fn(-1);
    };
    let fd = dir_fd(d);
    if fd < 0 {
        // SAFETY: the program's call.
        return unsafe { real(d) };
    }
    // Also for an fd beyond the table, whose close the table never sees.
    fddir::forget(fd);
    // SAFETY: glibc's DIR starts with its fd.
    let field = unsafe { (*(d as *mut c_int) == fd).then_some(d as *mut c_int) };
    // SAFETY: the program's call.
    close_stream(fd, field, "closedir", frame, || unsafe { real(d) })
}
trampoline!(closedir => closedir_impl, (d: *mut libc::DIR) -> c_int);

/// freopen keeps the stream's fd number (glibc dup3s the new file onto
/// it), so the number gets a new generation; on failure it is closed.
fn reopen(
    path: *const c_char,
    mode: *const c_char,
    f: *mut FILE,
    frame: usize,
    real: FreopenFn,
) -> *mut FILE {
    let old = file_fd(f);
    // A hidden fd-table entry: libc closes the stream and fails the open
    // with ENOENT, as it would natively, on a name nobody has.
    let path = if crate::lookup::names_hidden(path) {
        c"/proc/self/fd/-1".as_ptr()
    } else {
        path
    };
    // SAFETY: the program's call.
    let r = unsafe { real(path, mode, f) };
    if active() && enter() {
        st::ensure_published();
        let pcs = stack::capture(frame);
        let new = file_fd(r);
        if new >= 0 {
            // glibc opens the file (openat) and moves it to the stream's
            // number; with no path it reopens the stream's own file.
            let name = if path.is_null() {
                Named::DupOf(old)
            } else {
                Named::Path(path)
            };
            let how = handles_model::table::how::syscall(libc::SYS_openat as u32);
            st::created(new, 0, how, name, &pcs);
        }
        if old >= 0 && old != new {
            st::closed(old, &pcs);
        }
        leave();
    }
    r
}

unsafe extern "C-unwind" fn freopen_impl(
    path: *const c_char,
    mode: *const c_char,
    f: *mut FILE,
    frame: usize,
) -> *mut FILE {
    match real!(FREOPEN, FreopenFn) {
        Some(real) => reopen(path, mode, f, frame, real),
        None => no_fn(core::ptr::null_mut()),
    }
}
unsafe extern "C-unwind" fn freopen64_impl(
    path: *const c_char,
    mode: *const c_char,
    f: *mut FILE,
    frame: usize,
) -> *mut FILE {
    match real!(FREOPEN64, FreopenFn) {
        Some(real) => reopen(path, mode, f, frame, real),
        None => no_fn(core::ptr::null_mut()),
    }
}
trampoline!(freopen => freopen_impl, (path: *const c_char, mode: *const c_char, f: *mut FILE) -> *mut FILE);
trampoline!(freopen64 => freopen64_impl, (path: *const c_char, mode: *const c_char, f: *mut FILE) -> *mut FILE);
