//! `handles run` ends as a shell's job does: when the program it started
//! exits, with the program's status, even if descendants keep running
//! (`sh -c '(sleep 5 &)'`, `eval $(ssh-agent -s)`). Those stay supervised
//! until they exit.
//!
//! One process cannot both return to the shell and keep tracing, so
//! [`split`] forks: the *front* (the `handles` process the shell waits
//! on) waits for one message, "the program exited: status S", and exits
//! with S; the child becomes the *supervisor*, runs the job, sends that
//! message when the root program is gone, and serves the remaining
//! descendants until the last one exits (their reports go to stderr and to
//! the `--log`, `--report` and `--sarif` files).
//!
//! Lifetimes:
//! - until the message, the supervisor has PR_SET_PDEATHSIG(SIGKILL): a
//!   front killed with SIGKILL takes the supervisor with it, and
//!   PTRACE_O_EXITKILL then the whole job, as when `handles` was one
//!   process;
//! - after it, the supervisor lives on its own; if it is killed, the
//!   processes it still traces are killed too (EXITKILL). That is a
//!   choice, and the only safe one: a tracee left behind keeps the job's
//!   seccomp filter, under which every traced syscall fails with ENOSYS
//!   when no tracer is attached;
//! - signals sent to the front (INT, TERM, HUP, QUIT from `kill` or
//!   `timeout`) are passed to the supervisor, which passes them to the job
//!   as before; a terminal's Ctrl-C reaches the whole process group
//!   anyway. The front passes them on only once the supervisor's own
//!   handlers are in place (its first message), so none is lost or kills
//!   the supervisor by its default action.
//! - if the supervisor dies without a message, the front reports what
//!   killed it as a shell would (125 for a supervisor that failed);
//! - when the program was the job's last process, the status comes at
//!   the very end with "exiting", and the front reaps the supervisor
//!   before it returns: no zombie is left to whoever adopts it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::spawn::FORWARDED;

/// Message tags on the pipe from the supervisor to the front.
const READY: u8 = b'R';
const STATUS: u8 = b'S';

/// Which side of [`split`] this process is.
pub enum Role {
    /// The front: the job's status, to exit with.
    Front(u8),
    /// The supervisor: run the job, and tell the front through this.
    Supervisor(Notifier),
}

/// The supervisor's end of the pipe to the front.
pub struct Notifier {
    pipe: Option<OwnedFd>,
    /// The signal mask from before [`split`] blocked the forwarded signals.
    saved: Option<libc::sigset_t>,
}

impl Notifier {
    /// Tells the front the job's status (once; later calls do nothing).
    /// `exiting`: the job is over and this process exits next, so the
    /// front reaps it before it returns (no zombie left to whoever adopts
    /// it); otherwise the supervisor outlives the front, serving the
    /// program's remaining descendants.
    pub fn send_status(&mut self, status: u8, exiting: bool) {
        let Some(fd) = self.pipe.take() else {
            return;
        };
        // SAFETY: prctl with integer arguments; the front may exit now.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        write_all(&fd, &[STATUS, status, u8::from(exiting)]);
    }
}

fn write_all(fd: &OwnedFd, b: &[u8]) {
    let mut off = 0;
    while off < b.len() {
        // SAFETY: writing from a live slice to a pipe we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), b[off..].as_ptr().cast(), b.len() - off) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            return;
        }
        off += n as usize;
    }
}

/// A forwarded signal the front received, for its loop to pass on.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_front_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // A terminal's signal (SI_KERNEL) reached the whole group, the
    // supervisor and the job included: only one sent to us alone is
    // passed on (the supervisor's rule too).
    if code == libc::SI_USER || code == libc::SI_QUEUE || code == libc::SI_TKILL {
        PENDING.store(sig, Ordering::SeqCst);
    }
}

fn forwarded_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Forks the front and the supervisor. Call it while the process has one
/// thread. The supervisor must call [`ready`] once its signal handlers
/// are installed (`install_forwarding`).
pub fn split() -> io::Result<Role> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid int[2].
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Signals to the front stay pending until it can pass them on; the
    // supervisor starts with them blocked too and unblocks them in `ready`.
    let set = forwarded_set();
    let mut saved: libc::sigset_t = forwarded_set();
    // SAFETY: changes this (only) thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut saved) };
    // SAFETY: getpid has no preconditions.
    let front = unsafe { libc::getpid() };
    // SAFETY: single-threaded here (the caller's contract): the child
    // continues as an ordinary process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
        return Err(e);
    }
    if pid == 0 {
        drop(r);
        // SAFETY: prctl/getppid with integer arguments. A front that died
        // before the prctl took effect is seen by getppid.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != front {
                libc::_exit(125);
            }
        }
        return Ok(Role::Supervisor(Notifier {
            pipe: Some(w),
            saved: Some(saved),
        }));
    }
    drop(w);
    Ok(Role::Front(front_wait(pid, &r, &saved)))
}

impl Notifier {
    /// The supervisor's handlers of the forwarded signals are in place:
    /// unblocks them here and lets the front pass signals on.
    pub fn ready(&mut self) {
        if let Some(saved) = self.saved.take() {
            // SAFETY: restores the mask saved before the fork.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
        }
        if let Some(fd) = &self.pipe {
            write_all(fd, &[READY]);
        }
    }
}

/// The front: passes signals on, waits for the status, or for the
/// supervisor's death.
fn front_wait(sup: i32, pipe: &OwnedFd, saved: &libc::sigset_t) -> u8 {
    for sig in FORWARDED {
        // SAFETY: reading the current action into a local struct, then
        // installing a handler that only stores to an atomic; no
        // SA_RESTART, so the read below returns EINTR.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                // Ignored when we started: stays ignored, as for the job.
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_front_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // The forwarded signals stay blocked except inside ppoll, which
    // unblocks them atomically: one that arrived between the check of
    // PENDING and a blocking read would otherwise wait for the job's end,
    // which it was meant to bring.
    let mut ready = false;
    let mut status = None;
    let mut exiting = false;
    let mut buf = [0u8; 2];
    loop {
        if ready {
            let sig = PENDING.swap(0, Ordering::SeqCst);
            if sig != 0 {
                // SAFETY: kill(2) to our own child.
                unsafe { libc::kill(sup, sig) };
            }
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack, no timeout, the saved mask.
        if unsafe { libc::ppoll(&mut pfd, 1, std::ptr::null(), saved) } < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        // SAFETY: reading into a local buffer from a pipe we own (ready:
        // data, or EOF).
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), 1) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        match buf[0] {
            READY => ready = true,
            STATUS => {
                // SAFETY: as above, two bytes (sent in one write, so
                // both are there).
                let m = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), 2) };
                if m >= 1 {
                    status = Some(buf[0]);
                }
                exiting = m == 2 && buf[1] == 1;
                break;
            }
            _ => {}
        }
    }
    if let Some(s) = status {
        if exiting {
            // The job is over and the supervisor is on its way out.
            reap(sup);
        }
        // Otherwise it lives on, serving the program's descendants, and
        // is reaped by whoever adopts it.
        return s;
    }
    // No status: the supervisor is gone; report how, as a shell would.
    match reap(sup) {
        Some(st) if libc::WIFEXITED(st) => libc::WEXITSTATUS(st) as u8,
        Some(st) if libc::WIFSIGNALED(st) => (128 + libc::WTERMSIG(st)).clamp(0, 255) as u8,
        _ => 125,
    }
}

/// Waits for the supervisor to be gone, retrying on interrupts: its wait
/// status, None if it cannot be waited for.
fn reap(sup: i32) -> Option<i32> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on our own child into a local int.
        let r = unsafe { libc::waitpid(sup, &mut st, 0) };
        if r == sup {
            return Some(st);
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}
