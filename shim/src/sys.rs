//! Raw syscalls. The shim never calls libc's syscall wrappers for the
//! calls it interposes: they would re-enter the shim through the PLT, and
//! they could not carry the supervisor's cookie.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};

use libc::c_int;

/// The supervisor's per-job cookie (`HANDLES_COOKIE`), valid when
/// [`COOKIE_ON`] is set.
pub static COOKIE: AtomicU64 = AtomicU64::new(0);
pub static COOKIE_ON: AtomicBool = AtomicBool::new(false);

/// glibc's value (the libc crate does not export it).
const PTHREAD_CANCEL_ASYNCHRONOUS: c_int = 1;

const NR_SLOTS: usize = 512;
const NO_ARG: u8 = 0xff;

/// Per syscall number, the argument register the cookie goes in, from the
/// same table the supervisor's seccomp prefilter is compiled from.
static COOKIE_ARG: [AtomicU8; NR_SLOTS] = [const { AtomicU8::new(NO_ARG) }; NR_SLOTS];

/// Fills [`COOKIE_ARG`] from `handles_model::syscalls::TABLE`.
pub fn init_cookie_args() {
    for d in handles_model::syscalls::TABLE {
        if let (Ok(i), Some(arg)) = (usize::try_from(d.nr), d.cookie_arg()) {
            if let Some(slot) = COOKIE_ARG.get(i) {
                slot.store(arg, Relaxed);
            }
        }
    }
}

/// Zeroes the syscall argument registers after a `syscall` (see `raw`).
macro_rules! clear_argument_registers {
    () => {
        "xor edi, edi\nxor esi, esi\nxor edx, edx\nxor r10d, r10d\nxor r8d, r8d\nxor r9d, r9d"
    };
}

/// A syscall exactly as given, no cookie: for the shim's own calls that
/// no supervisor traces. Do not count on a traced one stopping: the
/// prefilter lets the fd syscalls of shared-library code (the shim's
/// included) through unless they carry a marker ([`marked`]).
#[inline(always)]
pub unsafe fn raw(nr: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the syscall's arguments; the kernel
    // clobbers rcx and r11 only. The argument registers are cleared after
    // it (they are the caller's to clobber): one of them may hold the
    // cookie, which the kernel leaves there, and a syscall instruction of
    // the program's own that runs next without setting every register
    // (a raw write sets three) would carry it through the prefilter
    // unchecked.
    unsafe {
        asm!(
            "syscall",
            clear_argument_registers!(),
            inlateout("rax") nr => ret,
            inlateout("rdi") a[0] => _,
            inlateout("rsi") a[1] => _,
            inlateout("rdx") a[2] => _,
            inlateout("r10") a[3] => _,
            inlateout("r8") a[4] => _,
            inlateout("r9") a[5] => _,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The argument register the cookie goes in for syscall `nr`, if any.
pub fn cookie_arg(nr: i64) -> Option<usize> {
    let i = COOKIE_ARG.get(usize::try_from(nr).ok()?)?.load(Relaxed);
    (i < 6).then_some(usize::from(i))
}

/// Puts the cookie in the syscall's free argument register, if a cookie
/// is set and the syscall has one free (six-argument syscalls do not).
#[inline(always)]
fn with_cookie(nr: i64, mut a: [u64; 6]) -> [u64; 6] {
    if COOKIE_ON.load(Relaxed) {
        let i = COOKIE_ARG[(nr as usize) & (NR_SLOTS - 1)].load(Relaxed) as usize;
        if i < 6 {
            a[i] = COOKIE.load(Relaxed);
        }
    }
    a
}

/// A syscall the shim issues on the program's behalf or for itself: it
/// carries the cookie, so the supervisor's prefilter lets it through.
#[inline(always)]
pub unsafe fn sc(nr: i64, a: [u64; 6]) -> i64 {
    // SAFETY: as for `raw`; the cookie only fills a register the syscall
    // does not read.
    unsafe { raw(nr, with_cookie(nr, a)) }
}

// The blocking syscall of a cancellable wrapper. It lives in its own
// function with CFI so that glibc's forced unwind (pthread_cancel with
// asynchronous cancellation) can walk from the signal frame through it.
global_asm!(
    ".globl handles_shim_syscall_cancellable",
    ".hidden handles_shim_syscall_cancellable",
    ".type handles_shim_syscall_cancellable,@function",
    "handles_shim_syscall_cancellable:",
    ".cfi_startproc",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rsi, rdx",
    "mov rdx, rcx",
    "mov r10, r8",
    "mov r8, r9",
    "mov r9, [rsp + 8]",
    "syscall",
    // As in `raw`: no cookie left in an argument register.
    clear_argument_registers!(),
    "ret",
    ".cfi_endproc",
    ".size handles_shim_syscall_cancellable, . - handles_shim_syscall_cancellable",
);

extern "C-unwind" {
    fn handles_shim_syscall_cancellable(
        nr: i64,
        a0: u64,
        a1: u64,
        a2: u64,
        a3: u64,
        a4: u64,
        a5: u64,
    ) -> i64;
    // Declared here as unwinding: switching to asynchronous cancellation
    // with a cancel pending unwinds out of this call.
    #[link_name = "pthread_setcanceltype"]
    fn setcanceltype(kind: c_int, old: *mut c_int) -> c_int;
}

/// A potentially blocking syscall that must stay a pthread cancellation
/// point: the thread runs it with asynchronous cancellation enabled, as
/// glibc's own wrappers did before 2.34. Callers hold no shim state
/// across this call (no slot lock, no in-shim flag), so a cancelled thread
/// leaves nothing behind.
#[inline(always)]
pub unsafe fn sc_cancel(nr: i64, a: [u64; 6]) -> i64 {
    let a = with_cookie(nr, a);
    let mut old: c_int = 0;
    let mut ignored: c_int = 0;
    // SAFETY: plain libc calls with valid out-pointers; the syscall's
    // arguments are the caller's.
    unsafe {
        setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &mut old);
        let r = handles_shim_syscall_cancellable(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
        if old != PTHREAD_CANCEL_ASYNCHRONOUS {
            setcanceltype(old, &mut ignored);
        }
        r
    }
}

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Turns a raw result (`-errno` on failure) into libc's convention.
#[inline(always)]
pub fn ret(r: i64) -> i64 {
    if (-4095..0).contains(&r) {
        set_errno(-r as c_int);
        -1
    } else {
        r
    }
}

/// A syscall the shim wants the supervisor to stop on: the cookie
/// register holds the marker `tag` (`handles_model::table::marker`),
/// which the prefilter never lets through, wherever the call comes from.
/// Without a cookie (no supervisor) or without a free register it goes
/// out as given, like [`raw`]; callers that need the stop then use the
/// proxy marker on another syscall.
#[inline(always)]
pub unsafe fn marked(nr: i64, mut a: [u64; 6], tag: u32) -> i64 {
    if COOKIE_ON.load(Relaxed) {
        if let Some(i) = cookie_arg(nr) {
            a[i] = handles_model::table::marker::make(COOKIE.load(Relaxed), tag);
        }
    }
    // SAFETY: as for `raw`; the marker only fills a register the syscall
    // does not read.
    unsafe { raw(nr, a) }
}

/// `HANDLES_INHERIT=1` (`--inherit-check`): an `fcntl(F_SETFD)` that
/// clears close-on-exec carries `marker::INHERIT`, so that the supervisor
/// learns the handle was made inheritable on purpose.
pub static MARK_INHERIT: AtomicBool = AtomicBool::new(false);

/// `HANDLES_MARK_OWN=1`: the job stops every creating call, so the
/// shim's own ones carry `marker::OWN` (see [`own`]).
pub static MARK_OWN: AtomicBool = AtomicBool::new(false);

/// A syscall the shim issues for itself that may create an fd: with the
/// cookie, or, where the job stops every creating call, with the OWN
/// marker, so that the supervisor does not take it for the program's.
///
/// # Safety
/// As for [`sc`].
pub unsafe fn own(nr: i64, a: [u64; 6]) -> i64 {
    if MARK_OWN.load(Relaxed) {
        // SAFETY: as for `marked`.
        unsafe { marked(nr, a, handles_model::table::marker::OWN) }
    } else {
        // SAFETY: as for `sc`.
        unsafe { sc(nr, a) }
    }
}

/// Shorthands for the few syscalls the shim issues for itself.
pub fn close(fd: i32) -> i64 {
    // SAFETY: closing an fd number; callers own it.
    unsafe { sc(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) }
}

pub fn fcntl(fd: i32, cmd: c_int, arg: u64) -> i64 {
    // SAFETY: fcntl commands used by the shim take integer arguments.
    unsafe { own(libc::SYS_fcntl, [fd as u64, cmd as u64, arg, 0, 0, 0]) }
}

pub fn dup3(old: i32, new: i32, flags: c_int) -> i64 {
    // SAFETY: dup3 on fd numbers.
    unsafe {
        own(
            libc::SYS_dup3,
            [old as u64, new as u64, flags as u64, 0, 0, 0],
        )
    }
}

/// Copies the C string at `p` into `buf`, up to its NUL or the buffer's
/// end; returns how many bytes.
///
/// # Safety
/// `p` points at a NUL-terminated string.
pub unsafe fn c_head(p: *const core::ffi::c_char, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: the caller's promise; the scan stops at the NUL.
        let c = unsafe { *p.add(n) } as u8;
        if c == 0 {
            break;
        }
        buf[n] = c;
        n += 1;
    }
    n
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_getpid, [0; 6]) as i32 }
}

pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_gettid, [0; 6]) as i32 }
}

/// Whether `tid` is a live thread of this process (a signal 0 probe).
pub fn thread_alive(tid: i32) -> bool {
    // SAFETY: tgkill with signal 0 sends nothing; it only checks that the
    // thread exists in this thread group.
    unsafe { raw(libc::SYS_tgkill, [getpid() as u64, tid as u64, 0, 0, 0, 0]) == 0 }
}

/// Is `fd` open in the kernel? (F_GETFD, never reported.)
pub fn is_open(fd: i32) -> bool {
    fcntl(fd, libc::F_GETFD, 0) >= 0
}

/// Is `fd` one of the tool's tombstones (an O_PATH fd on a table memfd
/// or, in the fallback, on "/")? Asked only of an fd the kernel has open
/// where the table says nothing is: a tombstone whose record was lost
/// (the supervisor's, written while the slot's lock was contended) must
/// still answer as the closed number it stands for, not be adopted.
pub fn is_tombstone_like(fd: i32) -> bool {
    let fl = fcntl(fd, libc::F_GETFL, 0);
    if fl < 0 || fl & i64::from(libc::O_PATH) == 0 {
        return false;
    }
    let mut path = [0u8; 48];
    let path = with_number(&mut path, b"/proc/self/fd/", fd);
    let mut link = [0u8; 64];
    // SAFETY: readlink of a NUL-terminated path into a local buffer of
    // the length given.
    let n = unsafe {
        sc(
            libc::SYS_readlink,
            [
                path.as_ptr() as u64,
                link.as_mut_ptr() as u64,
                link.len() as u64,
                0,
                0,
                0,
            ],
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    let link = &link[..n.min(link.len())];
    link == b"/dev/null" || link == b"/" || handles_model::protocol::is_table_link(link)
}

pub fn write_all(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing from a live slice.
        let r = unsafe {
            sc(
                libc::SYS_write,
                [fd as u64, b.as_ptr() as u64, b.len() as u64, 0, 0, 0],
            )
        };
        if r == -(libc::EINTR as i64) {
            continue;
        }
        if r <= 0 {
            return;
        }
        b = b.get(r as usize..).unwrap_or(&[]);
    }
}

pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom into a local buffer; GRND_NONBLOCK so a process
    // started before the entropy pool is ready never blocks here.
    let r = unsafe {
        raw(
            libc::SYS_getrandom,
            [
                b.as_mut_ptr() as u64,
                4,
                libc::GRND_NONBLOCK as u64,
                0,
                0,
                0,
            ],
        )
    };
    if r == 4 {
        u32::from_ne_bytes(b)
    } else {
        // Values only need to differ between processes; they are not a
        // secret.
        (monotonic_ns() as u32) ^ ((getpid() as u32) << 16)
    }
}

/// Writes `prefix` and the decimal `n` into `buf`, NUL-terminated.
pub fn with_number<'a>(buf: &'a mut [u8; 48], prefix: &[u8], n: i32) -> &'a [u8] {
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut k = 0;
    let mut v = n.unsigned_abs();
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut at = prefix.len();
    for i in (0..k).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = 0;
    &buf[..=at]
}

/// `newfstatat(AT_FDCWD, path, flags)`: the file's stat, None on error.
/// `path` must be NUL-terminated. Carries the cookie when one is set.
pub fn stat_path(path: &[u8], flags: c_int) -> Option<libc::stat> {
    if path.last() != Some(&0) {
        return None;
    }
    // SAFETY: an all-zero stat is a valid buffer for the kernel to fill.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a NUL-terminated path (checked above) and a stat buffer
    // that lives across the call.
    let r = unsafe {
        sc(
            libc::SYS_newfstatat,
            [
                libc::AT_FDCWD as u64,
                path.as_ptr() as u64,
                (&raw mut st) as u64,
                flags as u64,
                0,
                0,
            ],
        )
    };
    (r == 0).then_some(st)
}

/// CLOCK_MONOTONIC in nanoseconds (the vDSO: no syscall).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local struct; async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Sleeps `ms` milliseconds (a raw nanosleep: not a cancellation point).
pub fn sleep_ms(ms: u32) {
    let ts = libc::timespec {
        tv_sec: i64::from(ms / 1000),
        tv_nsec: i64::from(ms % 1000) * 1_000_000,
    };
    // SAFETY: nanosleep reads a timespec that lives across the call; no
    // remainder is asked for.
    unsafe { raw(libc::SYS_nanosleep, [(&raw const ts) as u64, 0, 0, 0, 0, 0]) };
}
