//! Starting the job's first process: PATH lookup with a shell's exit
//! codes, fork, PTRACE_SEIZE, the seccomp prefilter, exec.
//!
//! The filter is installed by the child after the supervisor has seized it:
//! a SECCOMP_RET_TRACE syscall with no tracer attached fails with ENOSYS.
//! Everything the child does between fork and exec is async-signal-safe: all
//! memory it needs is prepared before the fork.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use handles_model::protocol::env as penv;
use nix::sys::ptrace;
use nix::unistd::Pid;

/// Why the program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: permission denied")]
    NotExecutable(String),
    #[error("{program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot trace the program: {0}")]
    Trace(String),
}

impl SpawnError {
    /// The exit status a shell gives each failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => 127,
            SpawnError::NotExecutable(_) => 126,
            SpawnError::Exec { source, .. } => {
                if source.raw_os_error() == Some(libc::ENOENT) {
                    127
                } else {
                    126
                }
            }
            SpawnError::Trace(_) => 125,
        }
    }
}

fn is_executable_file(p: &Path) -> Option<bool> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_file() {
        return Some(false);
    }
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: c is a NUL-terminated path.
    Some(unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
}

/// Finds `program` as a shell would: a name with a slash is used as is,
/// anything else is looked up in `path`.
pub fn resolve(program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, SpawnError> {
    let shown = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(SpawnError::NotFound(shown));
    }
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return match is_executable_file(&p) {
            None => Err(SpawnError::NotFound(shown)),
            Some(false) => Err(SpawnError::NotExecutable(shown)),
            Some(true) => Ok(p),
        };
    }
    let path = path
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut denied = false;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let cand = dir.join(program);
        match is_executable_file(&cand) {
            Some(true) => return Ok(cand),
            Some(false) if cand.is_file() => denied = true,
            _ => {}
        }
    }
    if denied {
        Err(SpawnError::NotExecutable(shown))
    } else {
        Err(SpawnError::NotFound(shown))
    }
}

fn cstrings<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
    items: I,
) -> Result<Vec<CString>, SpawnError> {
    items
        .into_iter()
        .map(|s| {
            CString::new(s.as_ref().as_bytes()).map_err(|_| SpawnError::Exec {
                program: s.as_ref().to_string_lossy().into_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"),
            })
        })
        .collect()
}

fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The signals `handles` catches and forwards to the job (signals.rs,
/// `install_forwarding`).
pub(super) const FORWARDED: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// A started, seized child; `exec_error` reads the errno the child reports
/// if its execve fails (the pipe closes on a successful exec).
pub struct Child {
    pub pid: i32,
    pub exec_error: std::os::fd::OwnedFd,
}

/// Ptrace options for every tracee (inherited by auto-attached children).
/// Exit events (a stop in every exiting thread, while its fds still
/// exist) only serve leak checks: without them each process costs one
/// stop less.
pub fn trace_options(exit_events: bool) -> ptrace::Options {
    let exit = if exit_events {
        ptrace::Options::PTRACE_O_TRACEEXIT
    } else {
        ptrace::Options::empty()
    };
    exit | ptrace::Options::PTRACE_O_TRACESYSGOOD
        | ptrace::Options::PTRACE_O_TRACEFORK
        | ptrace::Options::PTRACE_O_TRACEVFORK
        | ptrace::Options::PTRACE_O_TRACECLONE
        | ptrace::Options::PTRACE_O_TRACEEXEC
        | ptrace::Options::PTRACE_O_TRACESECCOMP
        | ptrace::Options::PTRACE_O_EXITKILL
}

fn pipe_cloexec() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid int[2].
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Forks, seizes and lets the child install `filter` and exec `program`.
pub fn spawn(
    program: &Path,
    argv: &[OsString],
    env: &[(OsString, OsString)],
    filter: &[libc::sock_filter],
    exit_events: bool,
) -> Result<Child, SpawnError> {
    use std::os::fd::AsRawFd;
    let shown = program.to_string_lossy().into_owned();
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| SpawnError::NotFound(shown.clone()))?;
    let argv_c = cstrings(argv)?;
    let env_c = cstrings(env.iter().map(|(k, v)| {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        kv
    }))?;
    // execvp's fallback for a script without a #! line: run it with /bin/sh.
    let sh_argv_c = {
        let mut v = vec![OsString::from("sh"), program.as_os_str().to_os_string()];
        v.extend(argv.iter().skip(1).cloned());
        cstrings(v)?
    };
    let alarm_ignored = super::signals::ALARM_IGNORED.load(std::sync::atomic::Ordering::SeqCst);
    // Probed here, not in the child: it runs only async-signal-safe code.
    let _ = crate::seccomp::filter_flags();
    let argv_p = ptrs(&argv_c);
    let env_p = ptrs(&env_c);
    let sh_argv_p = ptrs(&sh_argv_c);
    let sh = c"/bin/sh";

    let err = |e: io::Error| SpawnError::Trace(e.to_string());
    let (go_r, go_w) = pipe_cloexec().map_err(err)?;
    let (ex_r, ex_w) = pipe_cloexec().map_err(err)?;

    // The child inherits our handler of the forwarded signals, which
    // would swallow a signal reaching it before its exec (the job's
    // SIGINT forwarded right after start, or a terminal's Ctrl-C): block
    // them across the fork; the child restores their default action once
    // seized, then unblocks them.
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset;
    // pthread_sigmask only changes this thread's mask.
    let saved_mask = unsafe {
        let mut forwarded: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut forwarded);
        for sig in FORWARDED {
            libc::sigaddset(&mut forwarded, sig);
        }
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &forwarded, &mut saved);
        saved
    };
    // SAFETY: the child only calls async-signal-safe functions on memory
    // prepared above, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: child side of the fork; raw syscalls only.
        unsafe {
            let report = |errno: i32| {
                let b = errno.to_ne_bytes();
                libc::write(ex_w.as_raw_fd(), b.as_ptr().cast(), 4);
                libc::_exit(127);
            };
            libc::close(go_w.as_raw_fd());
            let mut byte = 0u8;
            // Wait until the supervisor has seized us.
            if libc::read(go_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) != 1 {
                libc::_exit(125);
            }
            // Seized: a signal pending since the fork is now seen by the
            // supervisor and delivered with its default action.
            for sig in FORWARDED {
                // Leave an ignored one ignored, as exec would.
                let mut cur: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut cur);
                if cur.sa_sigaction != libc::SIG_IGN {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &saved_mask, std::ptr::null_mut());
            // Rust's runtime ignores SIGPIPE in `handles`; ignored signals
            // survive exec, and the program must start as it would natively.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // The supervisor's SIGALRM handler (signals.rs) would become the
            // default at exec; one ignored when handles started stays so.
            if alarm_ignored {
                libc::signal(libc::SIGALRM, libc::SIG_IGN);
            }
            if let Err(e) = crate::seccomp::install(filter) {
                report(e);
            }
            libc::execve(path.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
            let e = *libc::__errno_location();
            if e == libc::ENOEXEC {
                libc::execve(sh.as_ptr(), sh_argv_p.as_ptr(), env_p.as_ptr());
            }
            report(*libc::__errno_location());
        }
    }
    // SAFETY: restores this thread's mask saved above; a forwarded signal
    // that arrived meanwhile is handled now.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved_mask, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    drop(go_r);
    drop(ex_w);
    let child = Pid::from_raw(pid);
    if let Err(e) = ptrace::seize(child, trace_options(exit_events)) {
        // SAFETY: kill and reap the child we could not trace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(SpawnError::Trace(format!(
            "PTRACE_SEIZE failed: {e} (is handles itself being traced, or does kernel.yama.ptrace_scope forbid it?)"
        )));
    }
    // SAFETY: writing one byte to a pipe we own.
    let w = unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    if w != 1 {
        return Err(err(io::Error::last_os_error()));
    }
    drop(go_w);
    Ok(Child {
        pid,
        exec_error: ex_r,
    })
}

/// After the child is gone without having exec'ed: the errno it reported.
pub fn exec_errno(pipe: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 4];
    // SAFETY: reading into a local 4-byte buffer from a pipe we own.
    let n = unsafe { libc::read(pipe.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
    (n == 4).then(|| i32::from_ne_bytes(b))
}

/// The environment that preloads the shim `shim` (in front of any
/// LD_PRELOAD already set) and tells it the job's quarantine size and
/// stack depth. The supervisor adds its cookie; `handles run --no-ptrace`
/// uses it as it is.
pub fn preload_env(
    shim: &std::path::Path,
    quarantine: usize,
    stack_depth: usize,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut preload = shim.as_os_str().to_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    vec![
        ("LD_PRELOAD".into(), preload),
        (
            penv::QUARANTINE.name().into(),
            quarantine.to_string().into(),
        ),
        (
            penv::STACK_DEPTH.name().into(),
            stack_depth.to_string().into(),
        ),
    ]
}
