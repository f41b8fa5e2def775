//! `handles attach PID`: a recording window on a live process.
//!
//! Every thread is PTRACE_SEIZEd (children forked during the window are
//! followed through the fork/clone options) and stopped at each syscall's
//! entry and exit with PTRACE_SYSCALL; the supervisor keeps only the fd
//! syscalls. No seccomp filter is installed: a filter cannot be removed,
//! and one whose RET_TRACE has no tracer makes the traced calls fail with
//! ENOSYS forever, so the window must be something a detach undoes.
//!
//! - [`conditions`]: the policy's new-* and wrong-object conditions;
//! - [`preflight`]: what can be told before seizing (no such process,
//!   already traced, permission), each with its own error;
//! - [`seize`]: seizing every thread, and the detach that leaves the
//!   process as it was;
//! - [`model`]: what the window learns of each process's fd table;
//! - [`window`]: the event loop;
//! - [`tombstones`]: the quarantine of numbers closed during the window;
//! - [`hidden`]: tombstones hidden from the process's own fd listings and
//!   polls;
//! - [`fdsets`]: the fds a poll or select call names;
//! - [`published`]: the table `handles PID` reads during the window;
//! - [`summary`]: leak suspects and the per-stack summary at detach.

mod conditions;
mod fdsets;
mod hidden;
mod model;
pub mod preflight;
mod published;
mod seize;
mod summary;
mod tombstones;
mod window;

use std::path::PathBuf;
use std::time::Duration;

pub use preflight::AttachError;
pub use window::{request_end, Outcome};

use crate::policy::Policy;
use crate::run::OnException;
use crate::suppress::Suppressions;

/// Everything `handles attach` needs.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub pid: i32,
    /// The window's length; None: until SIGINT/SIGTERM (or the process
    /// exits).
    pub duration: Option<Duration>,
    /// Wait until the process holds this many fds before attaching.
    pub fd_threshold: Option<usize>,
    /// How often `fd_threshold` counts the fds.
    pub poll_interval: Duration,
    pub policy: Policy,
    pub on_exception: OnException,
    /// How many closed numbers each process keeps quarantined (0: off).
    pub quarantine: usize,
    /// Depth of the creation and close stacks recorded.
    pub stack_depth: usize,
    pub report: Option<PathBuf>,
    pub sarif: Option<PathBuf>,
    /// Leak suspects and exceptions matching these are not reported
    /// (counted as suppressed).
    pub suppressions: Suppressions,
    /// Print a ready suppression rule after each exception report and
    /// each group of leak suspects.
    pub gen_suppressions: bool,
}

/// Runs one window: waits for the threshold, attaches, records until the
/// window ends, detaches and reports.
pub fn attach(opts: &AttachOptions) -> Result<Outcome, AttachError> {
    let tgid = preflight::check(opts.pid)?;
    if let Some(n) = opts.fd_threshold {
        preflight::wait_for_fds(tgid, n, opts.poll_interval)?;
    }
    window::run(tgid, opts)
}
