//! `libhandles_shim.so`: the in-process half of `handles`, loaded with
//! LD_PRELOAD. See `README.md` beside this crate for the design decisions
//! (cancellation, stream quarantine, FIFO concurrency, cookie, limits).
//!
//! It interposes the libc fd functions, keeps the process's handle table
//! in a sealed memfd (`handles-table:<pid>`, layout
//! `handles_model::table`), quarantines closed fd numbers behind
//! tombstones, and applies the bad-handle policy to every use, close and
//! dup of a closed or never-opened fd.
//!
//! Rules every wrapper follows: the fast path is one atomic load of the
//! fd's slot state; the syscall is issued raw (inline `syscall`), never
//! through libc's wrapper; nothing on a wrapper's path allocates or takes
//! a lock that a signal handler or a forked child could find held (slot
//! locks are per-slot seqlocks held for one syscall, and a nested call on
//! the same thread never takes one); a thread-local flag sends nested
//! calls straight to the raw syscall.

// The unit-test build leaves out the interposed functions (they would
// interpose the test harness itself), so most of the crate is unused there.
#![cfg_attr(test, allow(dead_code, unused_imports))]

/// A syscall's six argument registers from a wrapper's arguments (the
/// unused ones 0).
#[cfg(not(test))]
macro_rules! args {
    ($($a:expr),*) => {{
        let v: &[u64] = &[$($a as u64),*];
        let mut a = [0u64; 6];
        a[..v.len()].copy_from_slice(v);
        a
    }};
}

/// The argument register after `$args` (x86_64 System V, integer and
/// pointer arguments): where a trampoline passes its frame pointer, as
/// one more argument.
#[cfg(not(test))]
macro_rules! frame_reg {
    () => {
        "rdi"
    };
    ($a:ident) => {
        "rsi"
    };
    ($a:ident $b:ident) => {
        "rdx"
    };
    ($a:ident $b:ident $c:ident) => {
        "rcx"
    };
    ($a:ident $b:ident $c:ident $d:ident) => {
        "r8"
    };
    ($a:ident $b:ident $c:ident $d:ident $e:ident) => {
        "r9"
    };
}

/// Exported function `$name` that calls `$imp` with the same arguments
/// plus its frame pointer as the last one (the wrappers of `wrap` and
/// `stdio` record stacks from their caller's frame). Defined before the
/// modules that use it.
#[cfg(not(test))]
macro_rules! trampoline {
    ($name:ident => $imp:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name($($arg: $ty),*) -> $ret {
            core::arch::naked_asm!(
                ".cfi_startproc",
                "push rbp",
                ".cfi_adjust_cfa_offset 8",
                ".cfi_offset rbp, -16",
                "mov rbp, rsp",
                ".cfi_def_cfa_register rbp",
                concat!("mov ", frame_reg!($($arg)*), ", rbp"),
                "call {imp}",
                "pop rbp",
                ".cfi_def_cfa rsp, 8",
                "ret",
                ".cfi_endproc",
                imp = sym $imp,
            )
        }
    };
}

mod cfi;
mod check;
mod checkpoint;
mod fddir;
#[cfg(not(test))]
mod lookup;
mod out;
mod peer;
mod python;
mod quarantine;
mod real;
mod report;
mod stack;
mod state;
mod symbolize;
mod sys;
#[cfg(not(test))]
mod threads;

#[cfg(not(test))]
mod stdio;
#[cfg(not(test))]
mod wrap;

use core::sync::atomic::Ordering::Relaxed;

use handles_model::protocol::{self, env as penv};

/// Reads a variable of the environment without allocating a String.
fn env(name: &core::ffi::CStr) -> Option<&'static str> {
    // SAFETY: getenv with a NUL-terminated name; the constructor runs
    // before the program can change the environment.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string that lives as long
    // as the environment entry.
    unsafe { core::ffi::CStr::from_ptr(p) }.to_str().ok()
}

/// Set-user-ID, or set-group-ID with group execute (the kernel's own rule:
/// S_ISGID without S_IXGRP is mandatory locking, not set-group-ID).
fn mode_is_set_id(mode: u32) -> bool {
    mode & libc::S_ISUID != 0
        || mode & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP)
}

/// Whether the file at `path` (NUL-terminated) is set-user-ID,
/// set-group-ID or has file capabilities; None when it cannot be stat'ed.
/// Raw syscalls, no allocation.
fn file_is_privileged(path: &core::ffi::CStr) -> Option<bool> {
    // Flags 0 follows the /proc/self/exe link. (The constructor runs
    // before the cookie is set: this goes out as a plain syscall.)
    let st = sys::stat_path(path.to_bytes_with_nul(), 0)?;
    if mode_is_set_id(st.st_mode) {
        return Some(true);
    }
    // getxattr with a NULL buffer of size 0 answers the value's size, or
    // ENODATA when there is none (EOPNOTSUPP where xattrs are not
    // supported: no capabilities either).
    // SAFETY: two NUL-terminated strings; a NULL buffer with size 0 is
    // never written.
    let caps = unsafe {
        sys::raw(
            libc::SYS_getxattr,
            [
                path.as_ptr() as u64,
                c"security.capability".as_ptr() as u64,
                0,
                0,
                0,
                0,
            ],
        )
    };
    Some(caps >= 0)
}

/// Whether this process runs a privileged image, in which the shim must do
/// nothing:
///
/// - `AT_SECURE`: the kernel granted privileges at exec (set-ID bits, file
///   capabilities), or an LSM asked for secure mode;
/// - real and effective ids differ (what AT_SECURE is computed from; two
///   cheap syscalls, kept as a second line);
/// - the executable file itself is set-user-ID, set-group-ID or carries
///   file capabilities, *whether or not the kernel honoured them*: under
///   ptrace by an unprivileged tracer, or with no_new_privs (`handles run`
///   sets it for its seccomp filter), the kernel execs such a file without
///   its privileges and AT_SECURE is 0, so ld.so loads LD_PRELOAD. The shim
///   stays out of every set-ID image, so that what a set-ID program does
///   never depends on who started it or how.
///
/// The file is found through `/proc/self/exe` (the image the kernel
/// exec'ed, whatever path or fd it was exec'ed by), else `AT_EXECFN` (the
/// path given to execve, still valid as the cwd has not changed yet). When
/// neither can be stat'ed the shim loads: without /proc it could not list
/// the inherited fds either, and such a process is not privileged by the
/// first two rules.
fn privileged_image() -> bool {
    // SAFETY: getauxval has no preconditions.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return true;
    }
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: getresuid/getresgid write three ids into locals.
    let ids = |nr: i64, r: &mut u32, e: &mut u32, s: &mut u32| unsafe {
        sys::raw(
            nr,
            [
                (r as *mut u32) as u64,
                (e as *mut u32) as u64,
                (s as *mut u32) as u64,
                0,
                0,
                0,
            ],
        )
    };
    if ids(libc::SYS_getresuid, &mut r, &mut e, &mut s) == 0 && r != e {
        return true;
    }
    if ids(libc::SYS_getresgid, &mut r, &mut e, &mut s) == 0 && r != e {
        return true;
    }
    if let Some(p) = file_is_privileged(c"/proc/self/exe") {
        return p;
    }
    // SAFETY: getauxval has no preconditions.
    let execfn = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const core::ffi::c_char;
    if execfn.is_null() {
        return false;
    }
    // SAFETY: AT_EXECFN points at the NUL-terminated path execve was
    // given, on the initial stack, alive for the whole process.
    file_is_privileged(unsafe { core::ffi::CStr::from_ptr(execfn) }).unwrap_or(false)
}

#[cfg(not(test))]
extern "C" fn init() {
    if privileged_image() {
        // setuid/setgid/file capabilities: do nothing at all, every
        // wrapper passes through.
        return;
    }
    let cookie = env(penv::COOKIE.c()).and_then(protocol::parse_cookie);
    if cookie.is_some() && env(c"LD_PRELOAD").is_some_and(|p| p.contains("vgpreload_")) {
        // A program under valgrind, under a supervisor: valgrind's core
        // is a static binary, so the supervisor gave it the strict filter
        // and checks every call the program makes. The shim would only
        // add its table and tombstones to what `valgrind --track-fds`
        // lists as the program's fds. Its wrappers still pass every call
        // through, and must do so unmarked: valgrind's core makes the
        // guest's syscall with the guest's registers, cookie included,
        // and a marked call passes the filter unseen (the guest's closes
        // were neither quarantined nor checked).
        return;
    }
    if let Some(c) = cookie {
        // Where the cookie goes matters only when there is one.
        sys::init_cookie_args();
        sys::COOKIE.store(c, Relaxed);
        sys::COOKIE_ON.store(true, Relaxed);
        if env(penv::ANNOUNCE.c()) == Some(penv::OFF) {
            state::ANNOUNCE.store(false, Relaxed);
        }
        if env(penv::SHARED_TABLES.c()) == Some(penv::ON) {
            state::SHARED_TABLES.store(true, Relaxed);
        }
    }
    if let Some(p) = env(penv::POLICY.c()) {
        report::set_policy(p);
    }
    if env(penv::MARK_OWN.c()) == Some(penv::ON) && sys::COOKIE_ON.load(Relaxed) {
        sys::MARK_OWN.store(true, Relaxed);
    }
    if env(penv::INHERIT.c()) == Some(penv::ON) && sys::COOKIE_ON.load(Relaxed) {
        sys::MARK_INHERIT.store(true, Relaxed);
    }
    if let Some(o) = env(penv::ON_EXCEPTION.c()) {
        report::set_on_exception(o);
    }
    if let Some(p) = env(penv::SYMBOLIZER.c()) {
        symbolize::init(p);
    }
    if env(penv::SUMMARY.c()) == Some(penv::SUMMARY_ALWAYS) {
        report::ALWAYS_SUMMARIZE.store(true, Relaxed);
    }
    let pid = sys::getpid();
    if let Some(root) = env(penv::ROOT_PID.c()).and_then(|s| s.trim().parse::<i32>().ok()) {
        ROOT_PID.store(root, Relaxed);
    }
    if let Some(c) = env(penv::ERROR_EXITCODE.c()).and_then(|s| s.trim().parse::<u8>().ok()) {
        ERROR_EXITCODE.store(u16::from(c) + 1, Relaxed);
    }
    if let Some(q) = env(penv::QUARANTINE.c()).and_then(|s| s.trim().parse::<u32>().ok()) {
        quarantine::CAPACITY.store(q.min(quarantine::MAX_CAPACITY), Relaxed);
    }
    if let Some(d) = env(penv::STACK_DEPTH.c()).and_then(|s| s.trim().parse::<u32>().ok()) {
        stack::DEPTH.store(d, Relaxed);
    }
    match env(penv::STACKS.c()) {
        Some(penv::STACKS_UNWIND) => stack::UNWIND.store(true, Relaxed),
        Some(penv::STACKS_FP) => stack::FRAME_POINTERS.store(true, Relaxed),
        _ => {}
    }
    if env(penv::PYTHON_FRAMES.c()) == Some(penv::OFF) {
        python::disable();
    }
    if let Some(ms) = env(c"HANDLES_DEBUG_PUBLISH_STALL_MS").and_then(|s| s.trim().parse().ok()) {
        state::PUBLISH_STALL_MS.store(ms, Relaxed);
    }
    let (soft, hard) = state::nofile().unwrap_or((1024, 1024));
    let limit = soft.max(1);
    state::LIMIT.store(limit, Relaxed);
    let high = handles_model::table::own_fds_at(soft, hard);
    state::HIGH.store(high, Relaxed);
    // The table also covers the shim's own fds (placed just beyond a small
    // soft limit), so that their slots say INTERNAL: a supervisor hides
    // them from the program's listings of /proc/self/fd.
    let cap = limit
        .max(high as u64 + 2)
        .clamp(1024, u64::from(handles_model::table::MAX_CAPACITY)) as u32;
    stack::init();
    stdio::init();
    // Listed before the shim's own fds exist: the walk of /proc/self/fd
    // covers the program's fd table only.
    let inherited = state::list_open_fds();
    if !state::create_table(pid, cap) {
        return;
    }
    state::register_inherited(&inherited);
    state::announce();
    // SAFETY: registering handlers that only issue raw syscalls, take
    // slot locks as the wrappers do, and (the prepare handler, in the
    // parent) call dlsym.
    unsafe { libc::pthread_atfork(Some(before_fork), None, Some(state::after_fork_child)) };
    state::ACTIVE.store(true, Relaxed);
}

/// The atfork prepare handler (in the parent): what a forked child must
/// find done already.
#[cfg(not(test))]
extern "C" fn before_fork() {
    if !state::active() {
        return;
    }
    stdio::resolve_all();
    lookup::resolve_all();
    state::before_fork();
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// The pid of the process `handles run --no-ptrace` started
/// (`HANDLES_ROOT_PID`): its exit writes the job's summary.
static ROOT_PID: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);
/// `--error-exitcode` + 1 (0: none), for the root's exit.
static ERROR_EXITCODE: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);

/// The pid `handles run --no-ptrace` started the job as.
pub fn root_pid() -> i32 {
    ROOT_PID.load(Relaxed)
}

#[cfg(not(test))]
extern "C" fn fini() {
    if !state::active() {
        return;
    }
    let code = match ERROR_EXITCODE.load(Relaxed) {
        0 => None,
        c => u8::try_from(c - 1).ok(),
    };
    // A fork child (same image, copied statics) is not the root. No
    // getpid when there is no root to be (under a supervisor).
    let root_pid = ROOT_PID.load(Relaxed);
    let root = root_pid != 0 && root_pid == sys::getpid();
    report::at_exit(root, code);
}

#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_modes() {
        assert!(mode_is_set_id(0o104755));
        assert!(mode_is_set_id(0o102755));
        assert!(mode_is_set_id(0o106711));
        // S_ISGID without group execute is mandatory locking.
        assert!(!mode_is_set_id(0o102745));
        assert!(!mode_is_set_id(0o100755));
    }

    #[test]
    fn the_test_binary_is_not_privileged() {
        assert_eq!(file_is_privileged(c"/proc/self/exe"), Some(false));
        assert_eq!(file_is_privileged(c"/nonexistent/file"), None);
        assert!(!privileged_image());
    }
}
