//! `handles run [OPTIONS] -- PROG [ARGS...]`.

use handles_model::protocol::env as penv;
use handles_supervisor::policy::{Policy, PolicyText};
use handles_supervisor::run::front::{self, Role};
use handles_supervisor::run::signals::install_forwarding;
use handles_supervisor::run::{
    CheckLevel, Job, LeakMode, OnException, Outcome, RunError, RunOptions,
};
use handles_supervisor::suppress::Suppressions;

use crate::args::{CheckArg, LeakCheckArg, OnExceptionArg, RunArgs};
use crate::exit;

/// The supervisor's own failure (not the program's).
const SUPERVISOR_FAILED: u8 = 125;

/// The policy this job starts from: the enclosing job's, when `handles run`
/// runs inside one (nested jobs inherit and may only change what the parent
/// left overridable), else the default.
fn base_policy() -> Result<Policy, String> {
    match std::env::var(penv::POLICY.name()) {
        Ok(text) if std::env::var_os(penv::JOB.name()).is_some() => Policy::decode(&text)
            .map_err(|e| format!("the enclosing job's policy is unreadable: {e}")),
        _ => Ok(Policy::default_job()),
    }
}

fn build_policy(a: &RunArgs) -> Result<Policy, String> {
    let mut policy = base_policy()?;
    for f in &a.policy_file {
        policy.apply_file(f).map_err(|e| e.to_string())?;
    }
    for spec in &a.policy {
        policy.apply_spec(spec).map_err(|e| e.to_string())?;
    }
    Ok(policy)
}

/// Is this process itself traced by a `handles` supervisor?
fn inside_job() -> bool {
    let Some(job) = std::env::var(penv::JOB.name())
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return false;
    };
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        })
        .is_some_and(|tracer| tracer == job && tracer != 0)
}

/// A nested job: the enclosing supervisor already traces us and everything
/// we start, so we exec the program with the nested policy in its
/// environment; the enclosing supervisor applies it from the exec on.
fn exec_nested(a: &RunArgs, policy: &Policy) -> u8 {
    use std::os::unix::process::CommandExt;
    let (prog, args) = match a.command.split_first() {
        Some(x) => x,
        None => return exit::USAGE,
    };
    let err = std::process::Command::new(prog)
        .args(args)
        .env(penv::POLICY.name(), policy.encode())
        .exec();
    eprintln!("handles: {}: {err}", prog.to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// `--no-ptrace`: the program becomes this process, with the shim
/// preloaded and the job's policy in its environment. Nothing stays
/// between the program and its parent: its exit status and signals are
/// its own.
fn exec_with_shim_alone(a: &RunArgs, policy: &Policy) -> u8 {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = a.command.split_first() else {
        return exit::USAGE;
    };
    let shim = match crate::shim::locate() {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("handles: --no-ptrace needs the shim, and this build has none");
            return SUPERVISOR_FAILED;
        }
        Err(e) => {
            eprintln!("handles: {e}");
            return SUPERVISOR_FAILED;
        }
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .env_remove(penv::COOKIE.name())
        .env_remove(penv::JOB.name())
        .env(penv::POLICY.name(), policy.encode())
        .envs(handles_supervisor::run::spawn::preload_env(
            &shim,
            a.quarantine,
            a.stack_depth,
        ));
    // The program keeps this process's pid: its shim writes the job's
    // ERROR SUMMARY at its exit and applies --error-exitcode there.
    cmd.env(penv::ROOT_PID.name(), std::process::id().to_string());
    cmd.env(
        penv::ON_EXCEPTION.name(),
        match a.on_exception {
            OnExceptionArg::Trap => penv::ON_EXCEPTION_TRAP,
            OnExceptionArg::Stop => penv::ON_EXCEPTION_STOP,
            OnExceptionArg::Continue => penv::ON_EXCEPTION_CONTINUE,
        },
    );
    match a.error_exitcode {
        Some(code) => cmd.env(penv::ERROR_EXITCODE.name(), code.to_string()),
        None => cmd.env_remove(penv::ERROR_EXITCODE.name()),
    };
    // With no supervisor to write reports, the shim writes them and asks
    // this binary for the functions and lines of its stacks.
    match std::env::current_exe() {
        Ok(me) => cmd.env(penv::SYMBOLIZER.name(), me),
        Err(_) => cmd.env_remove(penv::SYMBOLIZER.name()),
    };
    if a.error_exitcode.is_some() || matches!(a.on_exception, OnExceptionArg::Continue) {
        cmd.env(penv::SUMMARY.name(), penv::SUMMARY_ALWAYS);
    } else {
        cmd.env_remove(penv::SUMMARY.name());
    }
    let err = cmd.exec();
    eprintln!("handles: {}: {err}", prog.to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

pub fn run(a: &RunArgs) -> u8 {
    let policy = match build_policy(a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("handles: {e}");
            return exit::USAGE;
        }
    };
    if inside_job() {
        return exec_nested(a, &policy);
    }
    if a.no_ptrace {
        return exec_with_shim_alone(a, &policy);
    }
    let mut suppressions = if a.no_default_suppressions {
        Suppressions::default()
    } else {
        Suppressions::defaults()
    };
    for f in &a.suppressions {
        match Suppressions::load(f) {
            Ok(s) => suppressions.extend(s),
            Err(e) => {
                eprintln!("handles: {e}");
                return exit::USAGE;
            }
        }
    }
    let (program, args) = match a.command.split_first() {
        Some((p, rest)) => (p.clone(), rest.to_vec()),
        None => {
            eprintln!("handles: run needs a program after --");
            return exit::USAGE;
        }
    };
    let shim = if a.no_shim {
        None
    } else {
        match crate::shim::locate() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("handles: {e}; running without the shim");
                None
            }
        }
    };
    let opts = RunOptions {
        shim,
        program,
        args,
        policy,
        check: match a.check {
            CheckArg::All => CheckLevel::All,
            CheckArg::Lifecycle => CheckLevel::Lifecycle,
        },
        quarantine: a.quarantine,
        on_exception: match a.on_exception {
            OnExceptionArg::Trap => OnException::Trap,
            OnExceptionArg::Stop => OnException::Stop,
            OnExceptionArg::Continue => OnException::Continue,
        },
        log: a.log.clone(),
        stack_depth: a.stack_depth,
        suppressions,
        leak_mode: match a.leak_check {
            None | Some(LeakCheckArg::No) => LeakMode::Off,
            Some(LeakCheckArg::Yes) => LeakMode::Created,
            Some(LeakCheckArg::All) => LeakMode::All,
        },
        gen_suppressions: a.gen_suppressions,
        report: a.report.clone(),
        sarif: a.sarif.clone(),
        max_handles: a.max_handles,
        strict: a.strict,
        always_summarize: a.error_exitcode.is_some()
            || matches!(a.on_exception, OnExceptionArg::Continue)
            || !matches!(a.leak_check, None | Some(LeakCheckArg::No))
            || a.inherit_check,
        inherit_check: a.inherit_check,
        env: if matches!(a.leak_check, None | Some(LeakCheckArg::No)) {
            Vec::new()
        } else {
            match crate::pytest::install() {
                Ok(dir) => crate::pytest::environment(&dir),
                Err(e) => {
                    eprintln!("handles: no per-test leak reports for pytest: {e:#}");
                    Vec::new()
                }
            }
        },
    };
    // Unless --wait-all, this process (the one the shell waits on) only
    // waits for the program's status, and a child of it supervises the job
    // to its end (supervisor/src/run/front.rs).
    let mut notifier = None;
    // The --report and --sarif files are complete only when the job is:
    // a run that asks for them waits for it, as with --wait-all.
    if !a.wait_all && a.report.is_none() && a.sarif.is_none() {
        match front::split() {
            Ok(Role::Front(status)) => return status,
            Ok(Role::Supervisor(mut n)) => {
                install_forwarding();
                n.ready();
                notifier = Some(n);
            }
            // Run attached, as with --wait-all.
            Err(e) => {
                eprintln!("handles: cannot fork the supervisor ({e}); waiting for the whole job")
            }
        }
    }
    let error_exitcode = a.error_exitcode;
    // What `handles run` returns: the program's status as a shell reports
    // it, or --error-exitcode when something was reported. The front gets
    // it when the program exits, so it covers what was reported until then.
    let status_of = |outcome: &Outcome| match (outcome.interrupted, error_exitcode) {
        // The wait for a process stopped for a debugger was cut short: the
        // status says so, as a shell's for a command the signal ended.
        (Some(sig), _) => (128 + sig).clamp(0, 255) as u8,
        (None, Some(code))
            if outcome.exceptions > 0 || outcome.leaks > 0 || outcome.crossings > 0 =>
        {
            code
        }
        _ => outcome.exit.shell_status().clamp(0, 255) as u8,
    };
    let result = Job::run_with(opts, &mut |outcome| {
        if let Some(n) = notifier.as_mut() {
            n.send_status(status_of(outcome), false);
        }
    });
    let status = match result {
        Ok(outcome) => status_of(&outcome),
        Err(RunError::Spawn(e)) => {
            eprintln!("handles: {e}");
            e.exit_code().clamp(0, 255) as u8
        }
        Err(e) => {
            eprintln!("handles: {e}");
            SUPERVISOR_FAILED
        }
    };
    if let Some(n) = notifier.as_mut() {
        // Not sent yet: the program was the job's last process (told at
        // the very end), it never ran, or the supervisor failed. This
        // process exits next.
        n.send_status(status, true);
    }
    status
}
