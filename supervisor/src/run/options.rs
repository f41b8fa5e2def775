//! What `handles run` is given (`RunOptions`) and what it returns
//! (`Outcome`, `Exit`, `RunError`).

use std::ffi::OsString;
use std::path::PathBuf;

use nix::errno::Errno;

use super::leaks::{LeakMode, ProcessLeaks};
use super::spawn::SpawnError;
use super::syscalls::CheckLevel;
use crate::policy::Policy;
use crate::suppress::Suppressions;

/// What to do when a policy exception is raised (`--on-exception`):
/// trap (SIGTRAP, Zircon's unhandled exception), stop (left stopped and
/// detached for a debugger) or continue (log and resume: the call fails
/// as natively). The model's type, so that the shim and the supervisor
/// word a report's outcome alike (`judge::write_outcome`).
pub use handles_model::judge::Then as OnException;

/// Everything `handles run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub policy: Policy,
    pub check: CheckLevel,
    /// Quarantine capacity per fd table; 0 turns quarantine off.
    pub quarantine: usize,
    pub on_exception: OnException,
    pub log: Option<PathBuf>,
    /// Depth of the creation/close stacks recorded; 0 records none.
    pub stack_depth: usize,
    /// The LD_PRELOAD shim to inject into dynamically linked programs.
    pub shim: Option<PathBuf>,
    /// Reports matching these are not raised (counted in `Outcome`).
    pub suppressions: Suppressions,
    pub leak_mode: LeakMode,
    /// Print a suppression rule for each report.
    pub gen_suppressions: bool,
    /// Write the JSON report (docs/report.md) here at the end.
    pub report: Option<PathBuf>,
    /// Write SARIF 2.1.0 here at the end.
    pub sarif: Option<PathBuf>,
    /// A per-process handle budget: creating more raises an exception.
    pub max_handles: Option<usize>,
    /// Stop on fd syscalls made inside shared libraries too (libc's
    /// internal calls, the dynamic loader), even in processes the shim
    /// covers. Without it, those processes stop only for what the shim
    /// passes on (docs/shim.md, "What stops").
    pub strict: bool,
    /// Write the ERROR SUMMARY even when there was nothing to count (CI
    /// runs: `--error-exitcode`, `--on-exception=continue`, leak checks);
    /// otherwise a run with nothing to report writes nothing of its own.
    pub always_summarize: bool,
    /// `--inherit-check`: report the handles that cross an exec
    /// implicitly (inherit.rs).
    pub inherit_check: bool,
    /// Variables set in the job's environment (over the inherited ones):
    /// the per-test plugin's PYTHONPATH and PYTEST_PLUGINS.
    pub env: Vec<(OsString, OsString)>,
}

/// How the job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32, bool),
}

impl Exit {
    /// The status a shell reports: the code, or 128 + the signal.
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s, _) => 128 + s,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub exceptions: usize,
    pub suppressed: usize,
    /// Leaked handles reported (after suppressions).
    pub leaks: usize,
    pub leak_reports: Vec<ProcessLeaks>,
    /// Handles reported crossing an exec implicitly (`--inherit-check`).
    pub crossings: usize,
    /// SIGINT or SIGTERM ended the wait for a process left stopped for a
    /// debugger (`--on-exception=stop`): the signal.
    pub interrupted: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("building the seccomp prefilter: {0}")]
    Filter(String),
    #[error("opening the log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the job: {0}")]
    Wait(Errno),
}

pub(super) fn exit_json(e: Exit) -> serde_json::Value {
    match e {
        Exit::Code(c) => serde_json::json!({ "code": c }),
        Exit::Signal(s, core) => serde_json::json!({ "signal": s, "core": core }),
    }
}
