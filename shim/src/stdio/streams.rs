//! The stdio functions that reach a stream's fd. libc makes their
//! read/write/lseek/fstat internally, past the shim's syscall wrappers
//! and (under the lenient filter) past the supervisor, so the shim checks
//! the stream's fd at the function instead: a stream whose number the
//! program closed underneath it (a TOMBSTONE slot) is a use of a closed
//! handle. Any other stream goes to libc's function unchanged, after a
//! read of the FILE's fd and one load of the slot state; no syscall.
//!
//! dprintf and vdprintf write to an fd from inside libc the same way and
//! are checked here too. printf, puts, putchar and scanf are not: they
//! use stdin/stdout, whose fds (0, 1) are never quarantined.
//!
//! The fixed-argument functions are exported Rust functions that end in
//! a tail jump to libc's. The variadic ones (fprintf, fscanf, dprintf)
//! cannot be defined in stable Rust; a naked entry keeps every argument
//! register, asks [`variadic_guard`] whether to go on, and jumps to
//! libc's function with the caller's stack untouched.

use core::ffi::{c_char, c_int, c_long, c_void};
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use handles_model::table::state;
use libc::{size_t, ssize_t, FILE};

use super::{no_fn, FILENO_OFFSET};
use crate::real::{Real, MISSING};
use handles_model::judge::Op;

use crate::report::{self, Call};
use crate::state::{self as st, active, enter};
use crate::sys;

/// glibc's `_IO_IS_FILEBUF` (the stream has an fd; fileno() tests it)
/// and `_IO_ERR_SEEN` (what ferror() reads), in `_flags`.
const IS_FILEBUF: c_int = 0x2000;
const ERR_SEEN: c_int = 0x0020;

/// Whether the FILE layout is the one [`FILENO_OFFSET`] assumes (checked
/// on the standard streams at start): then the fd is read from the FILE,
/// else through fileno().
static LAYOUT: AtomicBool = AtomicBool::new(false);

extern "C" {
    static stdin: *mut FILE;
    static stdout: *mut FILE;
    static stderr: *mut FILE;
    fn flockfile(f: *mut FILE);
    fn funlockfile(f: *mut FILE);
}

/// Declares the real functions, and [`ALL`] for [`init`].
macro_rules! reals {
    ($($id:ident = $name:literal),* $(,)?) => {
        $(static $id: Real = Real::new($name);)*
        static ALL: &[&Real] = &[$(&$id),*];
    };
}

reals! {
    FFLUSH = c"fflush",
    FFLUSH_UNLOCKED = c"fflush_unlocked",
    FWRITE = c"fwrite",
    FWRITE_UNLOCKED = c"fwrite_unlocked",
    FREAD = c"fread",
    FREAD_UNLOCKED = c"fread_unlocked",
    FREAD_CHK = c"__fread_chk",
    FREAD_UNLOCKED_CHK = c"__fread_unlocked_chk",
    FPUTS = c"fputs",
    FPUTS_UNLOCKED = c"fputs_unlocked",
    FGETS = c"fgets",
    FGETS_UNLOCKED = c"fgets_unlocked",
    FGETS_CHK = c"__fgets_chk",
    FGETS_UNLOCKED_CHK = c"__fgets_unlocked_chk",
    FPUTC = c"fputc",
    FPUTC_UNLOCKED = c"fputc_unlocked",
    PUTC = c"putc",
    PUTC_UNLOCKED = c"putc_unlocked",
    OVERFLOW = c"__overflow",
    FGETC = c"fgetc",
    FGETC_UNLOCKED = c"fgetc_unlocked",
    GETC = c"getc",
    GETC_UNLOCKED = c"getc_unlocked",
    UFLOW = c"__uflow",
    VFPRINTF = c"vfprintf",
    VFPRINTF_CHK = c"__vfprintf_chk",
    VFSCANF = c"vfscanf",
    ISOC99_VFSCANF = c"__isoc99_vfscanf",
    VDPRINTF = c"vdprintf",
    VDPRINTF_CHK = c"__vdprintf_chk",
    FSTATVFS = c"fstatvfs",
    FSTATVFS64 = c"fstatvfs64",
    FPATHCONF = c"fpathconf",
    GETLINE = c"getline",
    GETDELIM = c"getdelim",
    INTERNAL_GETDELIM = c"__getdelim",
    FSEEK = c"fseek",
    FSEEKO = c"fseeko",
    FSEEKO64 = c"fseeko64",
    FTELL = c"ftell",
    FTELLO = c"ftello",
    FTELLO64 = c"ftello64",
    FGETPOS = c"fgetpos",
    FGETPOS64 = c"fgetpos64",
    FSETPOS = c"fsetpos",
    FSETPOS64 = c"fsetpos64",
    REWIND = c"rewind",
}

/// Checks the FILE layout on the standard streams.
pub fn init() {
    // SAFETY: glibc's standard streams, set up before any constructor.
    let std = unsafe { [stdin, stdout, stderr] };
    let ok = std.iter().enumerate().all(|(i, &f)| {
        // SAFETY: a live FILE of glibc's; its fields are only read.
        !f.is_null() && unsafe { libc::fileno(f) == i as c_int && read_fd(f) == i as c_int }
    });
    LAYOUT.store(ok, Relaxed);
}

/// Resolves the real functions not resolved yet (see
/// `stdio::resolve_all`).
pub fn resolve_all() {
    for r in ALL {
        r.addr();
    }
    for v in VARIADIC {
        v.real.addr();
    }
}

/// The fd of stream `f` as fileno() computes it, read from the FILE.
///
/// # Safety
/// `f` is a live glibc FILE with the layout of `struct _IO_FILE`.
#[inline(always)]
unsafe fn read_fd(f: *mut FILE) -> c_int {
    // Volatile: the same unlocked reads fileno() makes; another thread
    // may hold the stream's lock.
    // SAFETY: `_flags` is the first field, `_fileno` at FILENO_OFFSET.
    let (flags, fd) = unsafe {
        (
            core::ptr::read_volatile(f as *const c_int),
            core::ptr::read_volatile((f as *const u8).add(FILENO_OFFSET) as *const c_int),
        )
    };
    if flags & IS_FILEBUF != 0 {
        fd
    } else {
        -1
    }
}

/// The fd under a non-null stream the program passes to stdio (which
/// dereferences it too), or -1 when it has none (string streams,
/// fopencookie).
#[inline(always)]
fn stream_fd(f: *mut FILE) -> c_int {
    if LAYOUT.load(Relaxed) {
        // SAFETY: the program's stream; the layout was checked in init.
        return unsafe { read_fd(f) };
    }
    // fileno() sets errno for a stream with no fd; the program's call
    // must not see that.
    // SAFETY: this thread's errno.
    let e = unsafe { *libc::__errno_location() };
    // SAFETY: the program's stream.
    let fd = unsafe { libc::fileno(f) };
    sys::set_errno(e);
    fd
}

/// The check of `fd`: None to run the real function, Some(errno) to
/// fail without running it.
#[inline(always)]
fn check_fd(fd: c_int, name: &str, frame: usize) -> Option<c_int> {
    if !active() {
        return None;
    }
    match st::state_of(fd) {
        Some(state::TOMBSTONE | state::INTERNAL) => check_slow(fd, name, frame),
        _ => None,
    }
}

#[inline(always)]
fn check_stream(f: *mut FILE, name: &str, frame: usize) -> Option<c_int> {
    // fflush(NULL) flushes every stream; any other NULL crashes in libc,
    // as natively.
    if f.is_null() || !active() {
        return None;
    }
    check_fd(stream_fd(f), name, frame)
}

#[cold]
#[inline(never)]
fn check_slow(fd: c_int, name: &str, frame: usize) -> Option<c_int> {
    if !enter() {
        // Nested (a signal handler inside the shim): libc's own call
        // meets the tombstone and fails with EBADF.
        return None;
    }
    st::ensure_own_table();
    let v = match st::state_of(fd) {
        Some(state::TOMBSTONE) => Some(report::bad_handle(
            Op::Use,
            fd,
            &Call::libc(name, fd),
            frame,
        )),
        // A stale stream on a number the shim took for itself.
        Some(state::INTERNAL) if st::internal(fd) => Some(super::not_the_programs()),
        _ => None,
    };
    super::conclude(v)
}

/// What a failure does to the stream besides errno.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A read or write: libc sets the error indicator when the fd fails,
    /// and so does the shim (a `while (!feof(f) && !ferror(f))` loop ends).
    Io,
    /// A seek or tell: libc leaves the indicators alone.
    Seek,
}

/// The failed call's result: `fail`, with errno `e` and the stream
/// marked as libc would mark it.
fn failed<T>(f: *mut FILE, kind: Kind, e: c_int, fail: T) -> T {
    if kind == Kind::Io && !f.is_null() && LAYOUT.load(Relaxed) {
        // SAFETY: the program's stream (its fd was read above), with the
        // checked layout; `_flags` is written under the stream's lock,
        // as libc writes it.
        unsafe {
            flockfile(f);
            let p = f as *mut c_int;
            core::ptr::write_volatile(p, core::ptr::read_volatile(p) | ERR_SEEN);
            funlockfile(f);
        }
    }
    sys::set_errno(e);
    fail
}

/// Whether the call on stream `f` needs the slow path: a stream on a
/// suspect number, or no FILE layout to read it with. Loads only.
#[inline(always)]
fn suspect_stream(f: *mut FILE) -> bool {
    if f.is_null() || !active() {
        return false;
    }
    if !LAYOUT.load(Relaxed) {
        return true;
    }
    // SAFETY: the program's stream; the layout was checked in init.
    suspect_fd(unsafe { read_fd(f) })
}

#[inline(always)]
fn suspect_fd(fd: c_int) -> bool {
    matches!(st::state_of(fd), Some(state::TOMBSTONE | state::INTERNAL))
}

/// A checked libc function: `$check` (Some(errno) to fail) runs on the
/// slow path only, which `$suspect` (loads only) or a missing function
/// sends calls to; otherwise libc's function runs with the program's
/// arguments. The fast path is loads and a tail jump to libc; the rest is
/// in `slow`, out of line, so that the fast path saves no registers. No
/// trampoline (frame 0, stacks from the unwinder, as for read and
/// write): putc and getc run once per character, and a trampoline would
/// add its own call and return to every one.
macro_rules! checked_call {
    ($name:ident, $real:ident, $kind:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $fail:expr,
     suspect: $suspect:expr, check: $check:expr, stream: $stream:expr) => {
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            type F = unsafe extern "C-unwind" fn($($ty),*) -> $ret;
            #[cold]
            #[inline(never)]
            unsafe extern "C-unwind" fn slow($($arg: $ty),*) -> $ret {
                let Some(real) = $real.get::<F>() else {
                    return no_fn($fail);
                };
                if let Some(e) = $check {
                    return failed($stream, Kind::$kind, e, $fail);
                }
                // SAFETY: the program's call, unchanged.
                unsafe { real($($arg),*) }
            }
            match $real.resolved::<F>() {
                // SAFETY: the program's call, unchanged.
                Some(real) if !$suspect => unsafe { real($($arg),*) },
                // SAFETY: the same call, through the checks.
                _ => unsafe { slow($($arg),*) },
            }
        }
    };
}

/// A function of a stream `$f`.
macro_rules! on_stream {
    ($name:ident, $real:ident, $kind:ident,
     ($($arg:ident: $ty:ty),*) -> $ret:ty, $f:ident, $fail:expr) => {
        checked_call!($name, $real, $kind, ($($arg: $ty),*) -> $ret, $fail,
            suspect: suspect_stream($f),
            check: check_stream($f, stringify!($name), 0),
            stream: $f);
    };
}

/// A function of an fd `$fd` (vdprintf, fstatvfs): no stream to flag.
macro_rules! on_fd {
    ($name:ident, $real:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $fd:ident, $fail:expr) => {
        checked_call!($name, $real, Io, ($($arg: $ty),*) -> $ret, $fail,
            suspect: (active() && suspect_fd($fd)),
            check: check_fd($fd, stringify!($name), 0),
            stream: core::ptr::null_mut());
    };
}

const EOF: c_int = libc::EOF;
type VaList = *mut c_void;

on_stream!(fflush, FFLUSH, Io, (f: *mut FILE) -> c_int, f, EOF);
on_stream!(fflush_unlocked, FFLUSH_UNLOCKED, Io, (f: *mut FILE) -> c_int, f, EOF);

on_stream!(fwrite, FWRITE, Io, (p: *const c_void, size: size_t, n: size_t, f: *mut FILE) -> size_t, f, 0);
on_stream!(fwrite_unlocked, FWRITE_UNLOCKED, Io, (p: *const c_void, size: size_t, n: size_t, f: *mut FILE) -> size_t, f, 0);
on_stream!(fread, FREAD, Io, (p: *mut c_void, size: size_t, n: size_t, f: *mut FILE) -> size_t, f, 0);
on_stream!(fread_unlocked, FREAD_UNLOCKED, Io, (p: *mut c_void, size: size_t, n: size_t, f: *mut FILE) -> size_t, f, 0);
on_stream!(__fread_chk, FREAD_CHK, Io, (p: *mut c_void, len: size_t, size: size_t, n: size_t, f: *mut FILE) -> size_t, f, 0);
on_stream!(__fread_unlocked_chk, FREAD_UNLOCKED_CHK, Io, (p: *mut c_void, len: size_t, size: size_t, n: size_t, f: *mut FILE) -> size_t, f, 0);

on_stream!(fputs, FPUTS, Io, (s: *const c_char, f: *mut FILE) -> c_int, f, EOF);
on_stream!(fputs_unlocked, FPUTS_UNLOCKED, Io, (s: *const c_char, f: *mut FILE) -> c_int, f, EOF);
on_stream!(fgets, FGETS, Io, (s: *mut c_char, n: c_int, f: *mut FILE) -> *mut c_char, f, core::ptr::null_mut());
on_stream!(fgets_unlocked, FGETS_UNLOCKED, Io, (s: *mut c_char, n: c_int, f: *mut FILE) -> *mut c_char, f, core::ptr::null_mut());
on_stream!(__fgets_chk, FGETS_CHK, Io, (s: *mut c_char, len: size_t, n: c_int, f: *mut FILE) -> *mut c_char, f, core::ptr::null_mut());
on_stream!(__fgets_unlocked_chk, FGETS_UNLOCKED_CHK, Io, (s: *mut c_char, len: size_t, n: c_int, f: *mut FILE) -> *mut c_char, f, core::ptr::null_mut());

on_stream!(fputc, FPUTC, Io, (c: c_int, f: *mut FILE) -> c_int, f, EOF);
on_stream!(fputc_unlocked, FPUTC_UNLOCKED, Io, (c: c_int, f: *mut FILE) -> c_int, f, EOF);
on_stream!(putc, PUTC, Io, (c: c_int, f: *mut FILE) -> c_int, f, EOF);
on_stream!(putc_unlocked, PUTC_UNLOCKED, Io, (c: c_int, f: *mut FILE) -> c_int, f, EOF);
// What glibc's inline putc_unlocked calls when the buffer is full.
on_stream!(__overflow, OVERFLOW, Io, (f: *mut FILE, c: c_int) -> c_int, f, EOF);
on_stream!(fgetc, FGETC, Io, (f: *mut FILE) -> c_int, f, EOF);
on_stream!(fgetc_unlocked, FGETC_UNLOCKED, Io, (f: *mut FILE) -> c_int, f, EOF);
on_stream!(getc, GETC, Io, (f: *mut FILE) -> c_int, f, EOF);
on_stream!(getc_unlocked, GETC_UNLOCKED, Io, (f: *mut FILE) -> c_int, f, EOF);
// What glibc's inline getc_unlocked calls when the buffer is empty.
on_stream!(__uflow, UFLOW, Io, (f: *mut FILE) -> c_int, f, EOF);

on_stream!(vfprintf, VFPRINTF, Io, (f: *mut FILE, fmt: *const c_char, ap: VaList) -> c_int, f, -1);
on_stream!(__vfprintf_chk, VFPRINTF_CHK, Io, (f: *mut FILE, flag: c_int, fmt: *const c_char, ap: VaList) -> c_int, f, -1);
on_stream!(vfscanf, VFSCANF, Io, (f: *mut FILE, fmt: *const c_char, ap: VaList) -> c_int, f, EOF);
on_stream!(__isoc99_vfscanf, ISOC99_VFSCANF, Io, (f: *mut FILE, fmt: *const c_char, ap: VaList) -> c_int, f, EOF);
on_fd!(vdprintf, VDPRINTF, (fd: c_int, fmt: *const c_char, ap: VaList) -> c_int, fd, -1);
on_fd!(__vdprintf_chk, VDPRINTF_CHK, (fd: c_int, flag: c_int, fmt: *const c_char, ap: VaList) -> c_int, fd, -1);

// libc functions of an fd that reach it through libc's internal fstatfs,
// which a quarantined number (an O_PATH tombstone) would answer: natively
// a closed fd fails them with EBADF (CPython's test_os checks it).
on_fd!(fstatvfs, FSTATVFS, (fd: c_int, buf: *mut libc::statvfs) -> c_int, fd, -1);
on_fd!(fstatvfs64, FSTATVFS64, (fd: c_int, buf: *mut libc::statvfs64) -> c_int, fd, -1);
on_fd!(fpathconf, FPATHCONF, (fd: c_int, name: c_int) -> libc::c_long, fd, -1);

on_stream!(getline, GETLINE, Io, (line: *mut *mut c_char, n: *mut size_t, f: *mut FILE) -> ssize_t, f, -1);
on_stream!(getdelim, GETDELIM, Io, (line: *mut *mut c_char, n: *mut size_t, delim: c_int, f: *mut FILE) -> ssize_t, f, -1);
on_stream!(__getdelim, INTERNAL_GETDELIM, Io, (line: *mut *mut c_char, n: *mut size_t, delim: c_int, f: *mut FILE) -> ssize_t, f, -1);

on_stream!(fseek, FSEEK, Seek, (f: *mut FILE, off: c_long, whence: c_int) -> c_int, f, -1);
on_stream!(fseeko, FSEEKO, Seek, (f: *mut FILE, off: i64, whence: c_int) -> c_int, f, -1);
on_stream!(fseeko64, FSEEKO64, Seek, (f: *mut FILE, off: i64, whence: c_int) -> c_int, f, -1);
on_stream!(ftell, FTELL, Seek, (f: *mut FILE) -> c_long, f, -1);
on_stream!(ftello, FTELLO, Seek, (f: *mut FILE) -> i64, f, -1);
on_stream!(ftello64, FTELLO64, Seek, (f: *mut FILE) -> i64, f, -1);
// fpos_t is opaque here: the program's pointer goes through unchanged.
on_stream!(fgetpos, FGETPOS, Seek, (f: *mut FILE, pos: *mut c_void) -> c_int, f, -1);
on_stream!(fgetpos64, FGETPOS64, Seek, (f: *mut FILE, pos: *mut c_void) -> c_int, f, -1);
on_stream!(fsetpos, FSETPOS, Seek, (f: *mut FILE, pos: *const c_void) -> c_int, f, -1);
on_stream!(fsetpos64, FSETPOS64, Seek, (f: *mut FILE, pos: *const c_void) -> c_int, f, -1);
on_stream!(rewind, REWIND, Seek, (f: *mut FILE) -> (), f, ());

/// A variadic function: its real one, how it shows in a report, what it
/// returns on failure, and whether its first argument is a FILE (else an
/// fd).
struct Variadic {
    real: Real,
    name: &'static str,
    fail: i64,
    stream: bool,
}

static FPRINTF: Variadic = Variadic {
    real: Real::new(c"fprintf"),
    name: "fprintf",
    fail: -1,
    stream: true,
};
static FPRINTF_CHK: Variadic = Variadic {
    real: Real::new(c"__fprintf_chk"),
    name: "__fprintf_chk",
    fail: -1,
    stream: true,
};
static FSCANF: Variadic = Variadic {
    real: Real::new(c"fscanf"),
    name: "fscanf",
    fail: EOF as i64,
    stream: true,
};
static ISOC99_FSCANF: Variadic = Variadic {
    real: Real::new(c"__isoc99_fscanf"),
    name: "__isoc99_fscanf",
    fail: EOF as i64,
    stream: true,
};
static DPRINTF: Variadic = Variadic {
    real: Real::new(c"dprintf"),
    name: "dprintf",
    fail: -1,
    stream: false,
};
static DPRINTF_CHK: Variadic = Variadic {
    real: Real::new(c"__dprintf_chk"),
    name: "__dprintf_chk",
    fail: -1,
    stream: false,
};

static VARIADIC: [&Variadic; 6] = [
    &FPRINTF,
    &FPRINTF_CHK,
    &FSCANF,
    &ISOC99_FSCANF,
    &DPRINTF,
    &DPRINTF_CHK,
];

/// Where a variadic entry goes next: libc's function (`to`), or, when
/// `to` is 0, back to the caller with `ret` (errno already set).
#[repr(C)]
struct Next {
    to: usize,
    ret: i64,
}

/// The check of a variadic entry, on its first argument `arg` (a FILE or
/// an fd), with the entry's frame.
extern "C" fn variadic_guard(arg: usize, frame: usize, v: &'static Variadic) -> Next {
    let to = v.real.addr();
    if to <= MISSING {
        return Next {
            to: 0,
            ret: no_fn(v.fail),
        };
    }
    let (f, e) = if v.stream {
        let f = arg as *mut FILE;
        (f, check_stream(f, v.name, frame))
    } else {
        // An int argument: the register's upper half is undefined.
        (core::ptr::null_mut(), check_fd(arg as c_int, v.name, frame))
    };
    match e {
        None => Next { to, ret: 0 },
        Some(e) => Next {
            to: 0,
            ret: failed(f, Kind::Io, e, v.fail),
        },
    }
}

/// Exported variadic function `$name` checked by [`variadic_guard`] on
/// its first argument, with `$v` for it. The argument registers (rax
/// carries the number of vector registers used, xmm0-7 the floating
/// point arguments) are kept across the check and libc's function gets
/// them and the caller's stack as they were: a tail jump.
macro_rules! variadic {
    ($name:ident, $v:ident) => {
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name() {
            core::arch::naked_asm!(
                ".cfi_startproc",
                "push rbp",
                ".cfi_adjust_cfa_offset 8",
                ".cfi_offset rbp, -16",
                "mov rbp, rsp",
                ".cfi_def_cfa_register rbp",
                "push rdi",
                "push rsi",
                "push rdx",
                "push rcx",
                "push r8",
                "push r9",
                "push rax",
                // 16-byte aligned from here (the call pushed 8, then 8
                // pushes, then 136): movaps and the call need it.
                "sub rsp, 136",
                "movaps [rsp], xmm0",
                "movaps [rsp + 16], xmm1",
                "movaps [rsp + 32], xmm2",
                "movaps [rsp + 48], xmm3",
                "movaps [rsp + 64], xmm4",
                "movaps [rsp + 80], xmm5",
                "movaps [rsp + 96], xmm6",
                "movaps [rsp + 112], xmm7",
                "mov rsi, rbp",
                "lea rdx, [rip + {v}]",
                "call {guard}",
                // Scratch registers that carry no argument.
                "mov r11, rax",
                "mov r10, rdx",
                "movaps xmm0, [rsp]",
                "movaps xmm1, [rsp + 16]",
                "movaps xmm2, [rsp + 32]",
                "movaps xmm3, [rsp + 48]",
                "movaps xmm4, [rsp + 64]",
                "movaps xmm5, [rsp + 80]",
                "movaps xmm6, [rsp + 96]",
                "movaps xmm7, [rsp + 112]",
                "add rsp, 136",
                "pop rax",
                "pop r9",
                "pop r8",
                "pop rcx",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "pop rbp",
                ".cfi_def_cfa rsp, 8",
                "test r11, r11",
                "jz 2f",
                "jmp r11",
                "2:",
                "mov rax, r10",
                "ret",
                ".cfi_endproc",
                v = sym $v,
                guard = sym variadic_guard,
            )
        }
    };
}

variadic!(fprintf, FPRINTF);
variadic!(__fprintf_chk, FPRINTF_CHK);
variadic!(fscanf, FSCANF);
variadic!(__isoc99_fscanf, ISOC99_FSCANF);
variadic!(dprintf, DPRINTF);
variadic!(__dprintf_chk, DPRINTF_CHK);
