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

#![deny(unsafe_op_in_unsafe_fn)]
// The unit-test build leaves out the interposed functions (they would
// interpose the test harness itself), so most of the crate is unused there.
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod quarantine;
mod report;
mod stack;
mod state;
mod sys;

#[cfg(not(test))]
mod stdio;
#[cfg(not(test))]
mod wrap;

use core::sync::atomic::Ordering::Relaxed;

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

/// `HANDLES_COOKIE`: exactly 16 hex digits.
fn parse_cookie(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

#[cfg(not(test))]
extern "C" fn init() {
    // SAFETY: getauxval has no preconditions.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        // setuid/setgid: do nothing at all, every wrapper passes through.
        return;
    }
    sys::init_cookie_args();
    if let Some(c) = env(c"HANDLES_COOKIE").and_then(parse_cookie) {
        sys::COOKIE.store(c, Relaxed);
        sys::COOKIE_ON.store(true, Relaxed);
    }
    if let Some(a) = env(c"HANDLES_POLICY").and_then(report::parse_policy) {
        report::set_action(a);
    }
    if let Some(q) = env(c"HANDLES_QUARANTINE").and_then(|s| s.trim().parse::<u32>().ok()) {
        quarantine::CAPACITY.store(q.min(quarantine::MAX_CAPACITY), Relaxed);
    }
    if let Some(d) = env(c"HANDLES_STACK_DEPTH").and_then(|s| s.trim().parse::<u32>().ok()) {
        stack::DEPTH.store(d, Relaxed);
    }
    if env(c"HANDLES_NO_DEFAULT_SUPPRESSIONS") == Some("1") {
        report::set_no_default_suppressions();
    }
    if env(c"HANDLES_STACKS") == Some("unwind") {
        stack::UNWIND.store(true, Relaxed);
    }
    let mut lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit into a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        lim.rlim_cur = 1024;
    }
    let limit = lim.rlim_cur.max(1);
    state::LIMIT.store(limit, Relaxed);
    let cap = limit.clamp(1024, u64::from(handles_model::table::MAX_CAPACITY)) as u32;
    // The shim's own fds sit just under min(limit, 65536): high enough to
    // stay out of the program's way, low enough not to blow up the
    // kernel's fd table (and every fork's copy of it).
    let high = (limit.min(1 << 16) as i64 - 64).max(3) as i32;
    state::HIGH.store(high, Relaxed);
    stack::init();
    state::init_exe_name();
    stdio::init();
    let pid = sys::getpid();
    if !state::create_table(pid, cap) {
        return;
    }
    state::tomb_src();
    state::register_inherited();
    // SAFETY: registering a handler that only issues raw syscalls.
    unsafe { libc::pthread_atfork(None, None, Some(state::after_fork_child)) };
    state::ACTIVE.store(true, Relaxed);
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_format() {
        assert_eq!(parse_cookie("00000000000000ff"), Some(255));
        assert_eq!(
            parse_cookie("DEADbeef00112233"),
            Some(0xdead_beef_0011_2233)
        );
        assert_eq!(parse_cookie("ff"), None);
        assert_eq!(parse_cookie("+0000000000000ff"), None);
        assert_eq!(parse_cookie("00000000000000fg"), None);
    }
}
