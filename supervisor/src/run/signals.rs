//! The supervisor's own signals: SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to
//! `handles` are forwarded to the job (the loop does the forwarding when
//! waitpid returns EINTR), and SIGALRM timers wake that waitpid when a
//! signal landed just before it, or while a process waits stopped for a
//! debugger.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub(super) static FORWARD_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// SIGINT or SIGTERM reached `handles`, from whatever sender (a terminal's
/// Ctrl-C included): while a process waits stopped for a debugger, it ends
/// the wait (`Job::end_wait`).
pub(super) static END_WAIT: AtomicI32 = AtomicI32::new(0);

/// How long a wait for the job blocks while a process is left stopped for
/// a debugger: a SIGTERM landing between the loop's check and waitpid
/// would otherwise go unseen until the next event, which may never come.
pub(super) const WAIT_TICK_US: libc::suseconds_t = 200_000;

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    if sig == libc::SIGINT || sig == libc::SIGTERM {
        END_WAIT.store(sig, Ordering::SeqCst);
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // A terminal's Ctrl-C (SI_KERNEL) reached the whole foreground group,
    // the job included; only a signal sent to us alone needs forwarding.
    if code == libc::SI_USER || code == libc::SI_QUEUE || code == libc::SI_TKILL {
        FORWARD_SIGNAL.store(sig, Ordering::SeqCst);
        // The main loop forwards it when waitpid returns EINTR; if this
        // handler ran just before waitpid was entered (after the loop's
        // check), nothing would wake it while the job stays quiet (a
        // program blocked in read). A 5 ms timer ends that wait; it
        // repeats (a loaded machine may preempt the loop for longer than
        // that just there) until the loop takes the signal and stops it.
        let t = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 5000,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 5000,
            },
        };
        // SAFETY: setitimer with a local value; a raw syscall, safe in a
        // signal handler.
        unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
    }
}

/// Stops the timer `on_signal` started: its signal was taken.
pub(super) fn stop_wake_timer() {
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let t = libc::itimerval {
        it_interval: zero,
        it_value: zero,
    };
    // SAFETY: setitimer with a local value.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
}

/// SIGALRM (the timer above): only interrupts the main loop's waitpid.
extern "C" fn on_alarm(_: libc::c_int) {}

/// SIGALRM was ignored when `handles` started: the program must start
/// with it ignored too (spawn.rs), as it would natively.
pub(super) static ALARM_IGNORED: AtomicBool = AtomicBool::new(false);
static ALARM_SET: AtomicBool = AtomicBool::new(false);

pub fn install_forwarding() {
    // SAFETY: reading the current action, then installing a handler that
    // does nothing; no SA_RESTART, so a blocked waitpid returns EINTR.
    // exec resets it to the default in the program.
    unsafe {
        if !ALARM_SET.swap(true, Ordering::SeqCst) {
            let mut old: libc::sigaction = std::mem::zeroed();
            let ignored = libc::sigaction(libc::SIGALRM, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN;
            ALARM_IGNORED.store(ignored, Ordering::SeqCst);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // A signal ignored when we started (nohup, a shell's `cmd &`) stays
        // ignored, for us and, through spawn's reset, for the program: as
        // natively, where the program inherits the ignored disposition.
        // SAFETY: reading the current action into a local struct.
        let ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            continue;
        }
        // SAFETY: installing a handler that only stores to an atomic; no
        // SA_RESTART so waitpid returns EINTR and the loop forwards.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_tick(_sig: libc::c_int) {}

/// SIGALRM interrupts waitpid (no SA_RESTART) so the loop looks at
/// END_WAIT again; see WAIT_TICK_US.
pub(super) fn install_tick() {
    // SAFETY: installing a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_tick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
    }
}

/// Arms a one-shot SIGALRM in `us` microseconds (0 disarms).
pub(super) fn tick_in(us: libc::suseconds_t) {
    let it = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: us,
        },
    };
    // SAFETY: setitimer reads the local struct; no old value is asked for.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}
