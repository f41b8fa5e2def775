//! `handles attach [OPTIONS] PID`.

use std::time::Duration;

use handles_supervisor::attach::{self, AttachError, AttachOptions};
use handles_supervisor::policy::{Policy, PolicyText};
use handles_supervisor::run::OnException;
use handles_supervisor::suppress::Suppressions;

use crate::args::{AttachArgs, AttachOnExceptionArg};
use crate::exit;

/// A window applies every condition as `handles run --no-shim` does (each
/// syscall stops at the window anyway). Override flags are accepted and
/// change nothing: no job nests inside a window to be bound by them.
fn build_policy(a: &AttachArgs) -> Result<Policy, String> {
    let mut policy = Policy::default_job();
    for spec in &a.policy {
        policy.apply_spec(spec).map_err(|e| e.to_string())?;
    }
    Ok(policy)
}

pub fn run(a: &AttachArgs) -> u8 {
    let pid: i32 = match a.pid.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            eprintln!("handles: '{}' is not a process id", a.pid);
            return exit::USAGE;
        }
    };
    let policy = match build_policy(a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("handles: {e}");
            return exit::USAGE;
        }
    };
    let mut suppressions = Suppressions::defaults();
    for f in &a.suppressions {
        match Suppressions::load(f) {
            Ok(s) => suppressions.extend(s),
            Err(e) => {
                eprintln!("handles: {e}");
                return exit::USAGE;
            }
        }
    }
    let opts = AttachOptions {
        pid,
        duration: a.duration.map(Duration::from_secs_f64),
        fd_threshold: a.fd_threshold.map(|n| n as usize),
        poll_interval: Duration::from_secs_f64(a.poll_interval),
        policy,
        on_exception: match a.on_exception {
            AttachOnExceptionArg::Continue => OnException::Continue,
            AttachOnExceptionArg::Trap => OnException::Trap,
        },
        quarantine: a.quarantine,
        stack_depth: a.stack_depth,
        report: a.report.clone(),
        sarif: a.sarif.clone(),
        suppressions,
        gen_suppressions: a.gen_suppressions,
    };
    match attach::attach(&opts) {
        Ok(o) => match a.error_exitcode {
            Some(code) if o.leaks > 0 || o.exceptions > 0 => code,
            _ => exit::OK,
        },
        Err(e) => {
            eprintln!("handles: {e}");
            match e {
                AttachError::NoSuchProcess(_) => exit::NO_SUCH_PROCESS,
                AttachError::Permission { .. } => exit::PERMISSION,
                AttachError::AlreadyTraced { .. } => exit::ALREADY_TRACED,
                AttachError::ExitedBefore(_) => exit::EXITED,
                AttachError::Other(_) => exit::IO,
            }
        }
    }
}
