//! What can be told about a process before seizing it, so that each
//! refusal gets its own one-line error (and exit status).

use std::time::Duration;

/// Why a window could not be opened (or went wrong).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    #[error("process {pid} is already traced by process {tracer} ({name}); a process has at most one tracer")]
    AlreadyTraced { pid: i32, tracer: i32, name: String },
    #[error("permission denied attaching to process {pid}: {why}")]
    Permission { pid: i32, why: String },
    #[error("process {0} exited before the window opened")]
    ExitedBefore(i32),
    #[error("{0}")]
    Other(String),
}

/// The fields of /proc/PID/status this module reads.
struct Status {
    tgid: i32,
    tracer: i32,
    uid: u32,
}

fn status(pid: i32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some(Status {
        tgid: field("Tgid:")?.parse().ok()?,
        tracer: field("TracerPid:")?.parse().ok()?,
        // Real uid: the first of the four.
        uid: field("Uid:")?.split_whitespace().next()?.parse().ok()?,
    })
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Resolves `pid` (a thread id resolves to its process) and refuses what
/// is certain to fail: a missing process, one already traced, ourselves.
pub fn check(pid: i32) -> Result<i32, AttachError> {
    if pid <= 0 {
        return Err(AttachError::NoSuchProcess(pid));
    }
    let st = status(pid).ok_or(AttachError::NoSuchProcess(pid))?;
    if st.tgid == std::process::id() as i32 {
        return Err(AttachError::Permission {
            pid,
            why: "that is handles itself".into(),
        });
    }
    if st.tracer != 0 {
        return Err(AttachError::AlreadyTraced {
            pid: st.tgid,
            tracer: st.tracer,
            name: comm(st.tracer),
        });
    }
    Ok(st.tgid)
}

/// Explains an EPERM from PTRACE_SEIZE: a tracer that came first, another
/// user's process, or Yama.
pub fn explain_eperm(pid: i32) -> AttachError {
    let Some(st) = status(pid) else {
        return AttachError::NoSuchProcess(pid);
    };
    if st.tracer != 0 {
        return AttachError::AlreadyTraced {
            pid,
            tracer: st.tracer,
            name: comm(st.tracer),
        };
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let why = if st.uid != me && me != 0 {
        format!(
            "it belongs to uid {}, you are uid {me}; ptrace needs the same user (or CAP_SYS_PTRACE)",
            st.uid
        )
    } else {
        match yama {
            Some(n) if n >= 3 => format!(
                "Yama's kernel.yama.ptrace_scope is {n}: no process may be attached, by anyone, until the next boot"
            ),
            Some(n) if n >= 1 => format!(
                "Yama's kernel.yama.ptrace_scope is {n}, which allows attaching only to descendants{}; \
                 run handles as root or lower it (sysctl kernel.yama.ptrace_scope=0)",
                if n >= 2 { " (and only with CAP_SYS_PTRACE)" } else { "" }
            ),
            _ => "the kernel refused ptrace (a setuid or non-dumpable process, or a security module)"
                .to_string(),
        }
    };
    AttachError::Permission { pid, why }
}

/// How many fds `tgid` holds: a directory count, no readlink.
pub fn fd_count(tgid: i32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{tgid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// `--fd-threshold`: waits, polling the fd count, until the process holds
/// `n` fds. Ends early (an error) when the process exits or `handles` is
/// asked to stop.
pub fn wait_for_fds(tgid: i32, n: usize, every: Duration) -> Result<(), AttachError> {
    super::window::install_signals();
    loop {
        match fd_count(tgid) {
            Some(c) if c >= n => {
                eprintln!("handles: process {tgid} holds {c} fds (threshold {n}): attaching");
                return Ok(());
            }
            Some(_) => {}
            None if status(tgid).is_none() => return Err(AttachError::ExitedBefore(tgid)),
            None => {
                return Err(AttachError::Permission {
                    pid: tgid,
                    why: "its fd directory is not readable".into(),
                })
            }
        }
        if super::window::end_requested() {
            return Err(AttachError::Other(format!(
                "interrupted while waiting for process {tgid} to hold {n} fds"
            )));
        }
        std::thread::sleep(every);
    }
}
