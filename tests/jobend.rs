//! `handles run` ends as a shell's job does (issue 14, item 6): it returns
//! the program's status as soon as the program it started exits, while
//! descendants still running stay supervised until they exit; `--wait-all`
//! waits for every process of the job, as `handles run` always did.
//!
//! Runs never capture stdout/stderr through pipes: a descendant that
//! outlives the program keeps them open (natively too), and a pipe's EOF
//! would wait for it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{fixture, handles};

/// The supervised modes (`--no-ptrace` execs the program: nothing stays).
const MODES: [&[&str]; 3] = [&[], &["--strict"], &["--no-shim"]];

fn scratch(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jobend-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Runs `handles run OPTS -- PROG ARGS`, stdio to /dev/null, and returns
/// its status and how long it took; fails after 30 s.
fn timed(opts: &[&str], prog: &str, args: &[&str]) -> (ExitStatus, Duration) {
    let started = Instant::now();
    let mut child = Command::new(handles())
        .arg("run")
        .args(opts)
        .arg("--")
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn handles");
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return (st, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("handles run {opts:?} -- {prog} {args:?} did not return within 30 s");
        }
        sleep(Duration::from_millis(10));
    }
}

fn tracer_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn a_background_descendant_does_not_hold_handles_run() {
    for mode in MODES {
        let dir = scratch("bg");
        let pidfile = dir.join("pid");
        let script = format!("sleep 5 & echo $! > {}", pidfile.display());
        let (st, took) = timed(mode, "sh", &["-c", &script]);
        assert_eq!(st.code(), Some(0), "{mode:?}");
        assert!(
            took < Duration::from_secs(2),
            "{mode:?}: took {took:?}, the program itself exits at once"
        );
        // The sleep outlives the program, still supervised.
        let pid: i32 = read(&pidfile).trim().parse().expect("sleep's pid");
        let tracer = tracer_of(pid).unwrap_or(0);
        assert_ne!(tracer, 0, "{mode:?}: the sleep left behind is not traced");
        // SAFETY: kill(2) on the sleep this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Its supervisor ends with the job's last process.
        wait_for("the supervisor exits", Duration::from_secs(10), || {
            std::fs::metadata(format!("/proc/{tracer}")).is_err()
                || read(Path::new(&format!("/proc/{tracer}/stat"))).contains(") Z")
        });
    }
}

/// The processes whose process group is `pgid`, with their states.
fn group_members(pgid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let stat = read(&e.path().join("stat"));
        // pid (comm) state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push(format!("{pid} {stat}"));
        }
    }
    out
}

/// When the program was the job's last process, `handles run` returns
/// after its supervisor is gone: nothing of it stays in the process group,
/// not even a zombie for whoever adopts it to reap (a container's PID 1
/// that reaps nothing would collect one per run).
#[test]
fn nothing_of_handles_run_outlives_a_job_that_is_over() {
    use std::os::unix::process::CommandExt;
    for mode in MODES {
        for _ in 0..5 {
            let mut child = Command::new(handles())
                .arg("run")
                .args(mode)
                .args(["--", "sh", "-c", "cat /dev/null | wc -l; exit 3"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn handles");
            let pgid = child.id() as i32;
            let st = child.wait().expect("wait");
            assert_eq!(st.code(), Some(3), "{mode:?}");
            let left = group_members(pgid);
            assert!(left.is_empty(), "{mode:?}: left in the group: {left:?}");
        }
    }
}

#[test]
fn a_subshell_in_the_background_returns_at_once() {
    let (st, took) = timed(&[], "sh", &["-c", "(sleep 5 &)"]);
    assert_eq!(st.code(), Some(0));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn the_status_is_the_programs_even_with_descendants_left() {
    for mode in MODES {
        let (st, _) = timed(mode, "sh", &["-c", "(sleep 2 &); exit 7"]);
        assert_eq!(st.code(), Some(7), "{mode:?}");
        let (st, took) = timed(mode, "sh", &["-c", "(sleep 2 &); kill -TERM $$"]);
        // As a shell reports a program killed by a signal: 128 + 15.
        assert_eq!(st.code(), Some(143), "{mode:?}");
        assert!(took < Duration::from_secs(2), "{mode:?}: took {took:?}");
    }
}

#[test]
fn wait_all_waits_for_every_process_of_the_job() {
    let (st, took) = timed(&["--wait-all"], "sh", &["-c", "(sleep 1 &)"]);
    assert_eq!(st.code(), Some(0));
    assert!(took >= Duration::from_secs(1), "took {took:?}");
}

/// The daemon a program leaves behind keeps running under the
/// supervisor: its ticks go on after `handles run` returned, and its use
/// after close a second later is reported to the `--log` file.
#[test]
fn a_late_bug_in_a_daemon_left_behind_still_reaches_the_log() {
    let prog = fixture("daemon_late");
    for mode in MODES {
        let dir = scratch("daemon");
        let ticks = dir.join("ticks");
        let log = dir.join("log");
        let mut opts = mode.to_vec();
        let log_s = log.to_str().expect("utf-8");
        opts.extend(["--log", log_s]);
        let (st, took) = timed(
            &opts,
            prog.to_str().expect("utf-8"),
            &[ticks.to_str().expect("utf-8")],
        );
        assert_eq!(st.code(), Some(0), "{mode:?}");
        assert!(took < Duration::from_secs(1), "{mode:?}: took {took:?}");
        let at_return = read(&ticks).lines().count();
        assert!(
            at_return < 10,
            "{mode:?}: {at_return} ticks before returning"
        );
        wait_for("the daemon's late report", Duration::from_secs(10), || {
            read(&log).contains("policy exception: bad-handle")
        });
        let text = read(&log);
        assert!(text.contains("daemon_late"), "{mode:?}: {text}");
        assert!(
            read(&ticks).lines().count() > at_return,
            "{mode:?}: the daemon did not keep running"
        );
    }
}

/// `--error-exitcode` covers what was reported until the program exited:
/// a daemon's later bug is in the log, not in the status. `--wait-all`
/// makes the status cover the whole job.
#[test]
fn error_exitcode_covers_the_program_and_with_wait_all_the_whole_job() {
    let prog = fixture("daemon_late");
    let dir = scratch("errexit");
    let ticks = dir.join("ticks").to_str().expect("utf-8").to_string();
    let p = prog.to_str().expect("utf-8");
    let (st, _) = timed(&["--error-exitcode", "9"], p, &[&ticks]);
    assert_eq!(st.code(), Some(0));
    let (st, took) = timed(&["--error-exitcode", "9", "--wait-all"], p, &[&ticks]);
    assert_eq!(st.code(), Some(9));
    assert!(took >= Duration::from_secs(1), "took {took:?}");
}

/// A daemon's leak is checked at its exit, after `handles run` returned:
/// the leak report reaches the `--log` file, and the `--report` file,
/// written when the job's last process exits, lists it.
#[test]
fn a_late_leak_check_reaches_the_log_and_the_report() {
    let prog = fixture("daemon_late");
    let dir = scratch("leak");
    let ticks = dir.join("ticks");
    let log = dir.join("log");
    let report = dir.join("report.json");
    let (st, took) = timed(
        &[
            "--leak-check",
            "--policy",
            "bad-handle=allow",
            "--log",
            log.to_str().expect("utf-8"),
            "--report",
            report.to_str().expect("utf-8"),
        ],
        prog.to_str().expect("utf-8"),
        &[ticks.to_str().expect("utf-8")],
    );
    assert_eq!(st.code(), Some(0));
    // With --report, handles run waits for the whole job (its file is
    // complete only then), so the report is there, whole, on return.
    let _ = took;
    assert!(
        serde_json::from_str::<serde_json::Value>(&read(&report)).is_ok(),
        "the report is complete when handles run returns"
    );
    let text = read(&log);
    assert!(
        text.contains("(daemon_late) exits holding 1 handle it created"),
        "{text}"
    );
    assert!(text.contains("LEAK SUMMARY"), "{text}");
    assert!(read(&report).contains("daemon_late"), "{}", read(&report));
}
