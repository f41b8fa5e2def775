//! `handles run` under faults and load (issue 6): programs killed while
//! blocked or in the middle of an exec, signals to the supervisor itself,
//! hundreds of processes, racing threads, a fork bomb, fd exhaustion, huge
//! fd numbers, tiny fd limits and programs that are debuggers.
//!
//! Every case runs in both modes, named explicitly: `handles run --no-shim`
//! (the supervisor alone) and `handles run --shim` (the LD_PRELOAD shim
//! under the supervisor). Expected results come from native runs of the
//! same C fixtures (tests/fixtures/fault_*.c) and from the kernel's rules,
//! never from the implementation.
//!
//! Every process is started in a process group of its own and waited for
//! with a deadline: a hang kills the group and fails the test instead of
//! hanging CI. After every run the test checks /proc: no process of the run
//! (same process group, or `HANDLES_JOB` naming the supervisor, or a pid the
//! fixture printed) may be left alive, and in particular none stopped
//! (state t/T) or running under the job's seccomp filter with no tracer.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::{fixture, handles};

/// The hard limit of one run. Generous (the machine is small and shared);
/// tests that must be prompt also check their own, tighter bound.
const LIMIT: Duration = Duration::from_secs(60);

/// How long a run's processes may take to disappear after it ended.
const SETTLE: Duration = Duration::from_secs(5);

const SIGINT: i32 = 2;
const SIGTRAP: i32 = 5;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;

// ---------------------------------------------------------------------------
// Modes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    NoShim,
    Shim,
}

const MODES: [Mode; 2] = [Mode::NoShim, Mode::Shim];

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::NoShim => "--no-shim",
            Mode::Shim => "--shim",
        }
    }
}

/// `handles run MODE OPTIONS... -- PROG ARGS...`
fn under(mode: Mode, options: &[&str], prog: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(handles());
    cmd.arg("run")
        .arg(mode.flag())
        .args(options)
        .arg("--")
        .arg(prog)
        .args(args);
    cmd
}

fn native(prog: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    cmd
}

// ---------------------------------------------------------------------------
// Running things with a deadline

/// A pipe read to its end on a thread, readable while it is being filled.
struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Captured {
    fn new<R: Read + Send + 'static>(mut r: R) -> Captured {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                }
            }
        });
        Captured {
            buf,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits (until `deadline`) for the writers to be gone; false if some
    /// process still holds the pipe open.
    fn finish(&mut self, deadline: Instant) -> bool {
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) {
            if Instant::now() > deadline {
                return false;
            }
            sleep(Duration::from_millis(10));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        true
    }
}

/// A started process, in a process group of its own (its pid).
struct Proc {
    child: Child,
    shown: String,
    out: Captured,
    err: Captured,
    /// Pids of the run besides its group (printed by the fixture).
    known: Vec<i32>,
    done: bool,
}

/// How a run ended.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    fn assert_code(&self, code: i32, what: &str) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}: exit status\n{}",
            self.describe()
        );
    }

    /// No line from handles at all: no report, no warning, no panic.
    fn assert_silent(&self, what: &str) {
        assert!(
            !self.stderr.lines().any(|l| l.starts_with("handles:")),
            "{what}: handles wrote to stderr\n{}",
            self.describe()
        );
        self.assert_no_panic(what);
    }

    fn assert_no_panic(&self, what: &str) {
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: the supervisor panicked\n{}",
            self.describe()
        );
    }
}

fn start(mut cmd: Command) -> Proc {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let out = Captured::new(child.stdout.take().expect("piped stdout"));
    let err = Captured::new(child.stderr.take().expect("piped stderr"));
    Proc {
        child,
        shown,
        out,
        err,
        known: Vec::new(),
        done: false,
    }
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kills the whole run (its group, and the pids it told us about).
    fn kill_all(&mut self) {
        // SAFETY: kill(2) of the process group this test created and of
        // pids its fixture printed.
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
            for &p in &self.known {
                libc::kill(p, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn fail(&mut self, why: &str) -> ! {
        self.kill_all();
        self.done = true;
        leftovers(self.pid(), &self.known, SETTLE);
        panic!(
            "{}: {why}\n--- stdout:\n{}--- stderr:\n{}",
            self.shown,
            self.out.text(),
            self.err.text()
        );
    }

    /// Waits for a whole stdout line `line`; returns every line before it.
    fn wait_for_line(&mut self, line: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.out.text();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            let complete = if text.ends_with('\n') {
                lines.len()
            } else {
                lines.len().saturating_sub(1)
            };
            if let Some(i) = lines[..complete].iter().position(|l| l == line) {
                return lines[..i].to_vec();
            }
            if Instant::now() > deadline {
                self.fail(&format!("no line {line:?} within {limit:?}"));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.done = true;
                self.fail(&format!("exited ({st:?}) before printing {line:?}"));
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit, for its output to end, and for every
    /// process of the run to be gone; kills everything and fails the test
    /// past `limit`.
    fn wait(mut self, limit: Duration) -> Ran {
        let started = Instant::now();
        let deadline = started + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => self.fail(&format!("try_wait: {e}")),
            }
            if Instant::now() > deadline {
                self.fail(&format!("did not finish within {limit:?}"));
            }
            sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        self.done = true;
        let rest = Instant::now() + SETTLE;
        if !self.out.finish(rest) || !self.err.finish(rest) {
            self.fail("its output is still held open after it exited");
        }
        leftovers(self.pid(), &self.known, SETTLE);
        Ran {
            status,
            stdout: self.out.text(),
            stderr: self.err.text(),
            elapsed,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.done {
            self.kill_all();
        }
    }
}

/// Runs `cmd` to its end with the default hard limit.
fn run(cmd: Command) -> Ran {
    start(cmd).wait(LIMIT)
}

// ---------------------------------------------------------------------------
// /proc

struct Stat {
    state: char,
    pgrp: i32,
}

fn stat_of(pid: i32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Stat { state, pgrp })
}

/// The supervisor of the `handles run` process `front`: the child it
/// forks to serve the job (supervisor/src/run/front.rs), or itself with
/// `--wait-all`.
fn supervisor_of(front: i32) -> i32 {
    fs::read_to_string(format!("/proc/{front}/task/{front}/children"))
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(front)
}

fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn in_job_of(pid: i32, supervisor: i32) -> bool {
    let want = format!("HANDLES_JOB={supervisor}");
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
        .unwrap_or(false)
}

/// Live (not zombie) processes of the run started as `leader`: its process
/// group, the job `leader` supervised, and the `known` pids.
fn live_processes_of(leader: i32, known: &[i32]) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Some(st) = stat_of(pid) else {
                return false;
            };
            st.state != 'Z'
                && st.state != 'X'
                && (st.pgrp == leader || known.contains(&pid) || in_job_of(pid, leader))
        })
        .collect()
}

fn describe_process(pid: i32) -> String {
    format!(
        "pid {pid} ({}) state {:?} TracerPid {:?} Seccomp {:?}",
        comm(pid),
        stat_of(pid).map(|s| s.state),
        status_field(pid, "TracerPid"),
        status_field(pid, "Seccomp"),
    )
}

/// Fails the test if any process of the run is still alive after `settle`
/// (SIGKILLing them first). A process stopped (t/T) or under a seccomp
/// filter (Seccomp: 2) with no tracer is the worst case: a job process the
/// supervisor abandoned.
fn leftovers(leader: i32, known: &[i32], settle: Duration) {
    let deadline = Instant::now() + settle;
    let mut left = live_processes_of(leader, known);
    while !left.is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
        left = live_processes_of(leader, known);
    }
    if left.is_empty() {
        return;
    }
    let shown: Vec<String> = left.iter().map(|&p| describe_process(p)).collect();
    let abandoned = left.iter().any(|&p| {
        stat_of(p).is_some_and(|s| s.state == 't' || s.state == 'T')
            || (status_field(p, "Seccomp").as_deref() == Some("2")
                && status_field(p, "TracerPid").as_deref() == Some("0"))
    });
    for &p in &left {
        // SAFETY: kill(2) of a leftover of this test's own run.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    panic!(
        "processes of the run of {leader} are still there{}:\n{}",
        if abandoned {
            " (stopped, or under the job's seccomp filter with no tracer)"
        } else {
            ""
        },
        shown.join("\n")
    );
}

/// `key=N` lines printed by a fixture.
fn printed_pid(lines: &[String], key: &str) -> i32 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= line in {lines:?}"))
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a process this test started (or its descendant).
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}) failed");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Is `tool` an executable file in PATH? (Looked up rather than run: a
/// tool that hangs on --version would hang the test.)
fn installed(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

// ---------------------------------------------------------------------------
// 1. Killed while blocked

#[test]
fn sigkill_while_blocked_in_read_exits_137_promptly() {
    let prog = fixture("fault_block");
    for mode in MODES {
        let mut p = start(under(mode, &[], &prog, &["read"]));
        let lines = p.wait_for_line("READY", LIMIT);
        let pid = printed_pid(&lines, "pid");
        p.known.push(pid);
        assert_eq!(
            status_field(pid, "TracerPid").and_then(|t| t.parse().ok()),
            Some(supervisor_of(p.pid())),
            "{mode:?}: the program is traced by handles"
        );
        // Blocked in read() (sleeping), not in a ptrace stop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stat_of(pid).map(|s| s.state) != Some('S') {
            assert!(
                Instant::now() < deadline,
                "{mode:?}: {}",
                describe_process(pid)
            );
            sleep(Duration::from_millis(10));
        }
        kill(pid, SIGKILL);
        let r = p.wait(LIMIT);
        r.assert_code(128 + SIGKILL, &format!("{mode:?}"));
        assert!(
            r.elapsed < Duration::from_secs(5),
            "{mode:?}: handles took {:?} to notice",
            r.elapsed
        );
        r.assert_silent(&format!("{mode:?}"));
    }
}

// ---------------------------------------------------------------------------
// 2. exec from a thread, and SIGKILL around it

#[test]
fn exec_from_a_thread_while_the_others_block_or_churn() {
    let prog = fixture("fault_exec_thread");
    for (how, code) in [("exec", 7), ("churn", 9)] {
        let n = run(native(&prog, &[how]));
        n.assert_code(code, &format!("native {how}"));
        for mode in MODES {
            let what = format!("{mode:?} {how}");
            let r = run(under(mode, &[], &prog, &[how]));
            r.assert_code(code, &what);
            assert_eq!(r.stdout, n.stdout, "{what}\n{}", r.describe());
            r.assert_silent(&what);
        }
    }
}

#[test]
fn sigkill_around_an_exec_from_a_thread_is_137() {
    let prog = fixture("fault_exec_thread");
    // Microseconds between "about to exec" and the SIGKILL: before, during
    // and after the exec (de_thread, the new image's loader, its sleep).
    let delays = ["0", "50", "200", "1000", "3000", "10000", "50000"];
    let n = run(native(&prog, &["kill", "0"]));
    assert_eq!(n.status.signal(), Some(SIGKILL), "native\n{}", n.describe());
    for mode in MODES {
        for delay in delays {
            let what = format!("{mode:?} delay {delay} us");
            let r = run(under(mode, &[], &prog, &["kill", delay]));
            r.assert_code(128 + SIGKILL, &what);
            r.assert_silent(&what);
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Signals to the supervisor

/// `handles run MODE -- fault_block tree HOW`, with the three pids of the
/// tree known and checked to be traced under the seccomp filter.
fn start_tree(mode: Mode, how: &str) -> (Proc, [i32; 3]) {
    let prog = fixture("fault_block");
    let mut p = start(under(mode, &[], &prog, &["tree", how]));
    let lines = p.wait_for_line("READY", LIMIT);
    let pids = [
        printed_pid(&lines, "pid"),
        printed_pid(&lines, "child"),
        printed_pid(&lines, "grandchild"),
    ];
    p.known.extend(pids);
    for pid in pids {
        assert_eq!(
            status_field(pid, "TracerPid").and_then(|t| t.parse().ok()),
            Some(supervisor_of(p.pid())),
            "{mode:?}: {}",
            describe_process(pid)
        );
        assert_eq!(
            status_field(pid, "Seccomp").as_deref(),
            Some("2"),
            "{mode:?}: {}",
            describe_process(pid)
        );
    }
    (p, pids)
}

#[test]
fn int_term_and_hup_to_the_supervisor_reach_the_whole_tree() {
    for mode in MODES {
        for (name, sig) in [("INT", SIGINT), ("TERM", SIGTERM), ("HUP", SIGHUP)] {
            // Default dispositions: the program dies of the signal. With
            // handlers: each process _exits 100 + sig.
            for (how, code) in [("default", 128 + sig), ("handler", 100 + sig)] {
                let what = format!("{mode:?} SIG{name} {how}");
                let (p, pids) = start_tree(mode, how);
                kill(p.pid(), sig);
                let r = p.wait(LIMIT);
                r.assert_code(code, &what);
                assert!(
                    r.elapsed < Duration::from_secs(10),
                    "{what}: took {:?}",
                    r.elapsed
                );
                r.assert_silent(&what);
                for pid in pids {
                    assert!(
                        stat_of(pid).is_none_or(|s| s.state == 'Z'),
                        "{what}: {}",
                        describe_process(pid)
                    );
                }
            }
        }
    }
}

/// Whether `pid` has a child yet (its first fork), from
/// /proc/PID/task/PID/children or, without it, a scan of /proc.
fn has_child(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(list) => !list.trim().is_empty(),
        Err(_) => fs::read_dir("/proc").is_ok_and(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .any(|c| {
                    fs::read_to_string(format!("/proc/{c}/stat")).is_ok_and(|s| {
                        s.rfind(')')
                            .and_then(|i| s[i + 2..].split_whitespace().nth(1))
                            == Some(pid.to_string().as_str())
                    })
                })
        }),
    }
}

#[test]
fn a_signal_to_the_supervisor_right_after_it_starts_is_not_lost() {
    // Sent while handles is starting the program, the signal must end the
    // job as it would have ended the program: a lost one leaves it blocked
    // in read() forever. "fork": sent as soon as handles has forked, before
    // the program's exec (where it used to be swallowed by the handler the
    // child inherits). If it lands before handles installed its handler,
    // handles itself dies of it, which is fine too.
    let prog = fixture("fault_block");
    let when: Vec<Option<u64>> = [None; 10]
        .into_iter()
        .chain([0, 2, 5, 10, 20].map(Some))
        .collect();
    for mode in MODES {
        for (name, sig) in [("INT", SIGINT), ("TERM", SIGTERM)] {
            for &delay in &when {
                let what = format!("{mode:?} SIG{name} at {delay:?} ms (None: at fork)");
                let mut p = start(under(mode, &[], &prog, &["read"]));
                p.shown = format!("{what} (a lost signal): {}", p.shown);
                match delay {
                    Some(ms) => sleep(Duration::from_millis(ms)),
                    None => {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while !has_child(p.pid()) && Instant::now() < deadline {}
                    }
                }
                kill(p.pid(), sig);
                let r = p.wait(Duration::from_secs(15));
                assert!(
                    r.status.code() == Some(128 + sig) || r.status.signal() == Some(sig),
                    "{what}\n{}",
                    r.describe()
                );
                r.assert_no_panic(&what);
            }
        }
    }
}

/// `sh -c 'trap "" HUP INT; exec "$@"' sh ARGS...`: ARGS started with
/// SIGHUP and SIGINT ignored, as by nohup or a script's `&`.
fn with_hup_and_int_ignored(args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' HUP INT; exec \"$@\"", "sh"])
        .args(args);
    cmd
}

#[test]
fn signals_ignored_when_the_supervisor_starts_stay_ignored_in_the_job() {
    // What nohup (or a script's `cmd &`) gives the program natively, it
    // keeps under handles; and handles, ignoring them too, does not
    // forward them.
    let grep = [
        std::ffi::OsStr::new("grep"),
        std::ffi::OsStr::new("SigIgn"),
        std::ffi::OsStr::new("/proc/self/status"),
    ];
    let n = run(with_hup_and_int_ignored(&grep));
    n.assert_code(0, "native");
    let prog = fixture("fault_block");
    for mode in MODES {
        let what = format!("{mode:?}");
        let h = handles();
        let mut args = vec![
            h.as_os_str(),
            "run".as_ref(),
            mode.flag().as_ref(),
            "--".as_ref(),
        ];
        args.extend(grep);
        let r = run(with_hup_and_int_ignored(&args));
        r.assert_code(0, &what);
        assert_eq!(r.stdout, n.stdout, "{what}: SigIgn\n{}", r.describe());

        let mut p = start(with_hup_and_int_ignored(&[
            h.as_os_str(),
            "run".as_ref(),
            mode.flag().as_ref(),
            "--".as_ref(),
            prog.as_os_str(),
            "read".as_ref(),
        ]));
        let lines = p.wait_for_line("READY", LIMIT);
        let pid = printed_pid(&lines, "pid");
        p.known.push(pid);
        kill(p.pid(), SIGHUP);
        kill(p.pid(), SIGINT);
        sleep(Duration::from_millis(300));
        assert!(
            stat_of(pid).is_some_and(|s| s.state != 'Z'),
            "{what}: the program did not ignore SIGHUP/SIGINT: {}",
            describe_process(pid)
        );
        kill(p.pid(), SIGTERM);
        let r = p.wait(LIMIT);
        r.assert_code(128 + SIGTERM, &what);
        r.assert_silent(&what);
    }
}

#[test]
fn sigkill_to_the_supervisor_leaves_nothing_stopped_or_untraced() {
    for mode in MODES {
        let (p, pids) = start_tree(mode, "default");
        kill(p.pid(), SIGKILL);
        // EXITKILL: every tracee dies with the tracer. `wait` checks that
        // nothing of the run (group, HANDLES_JOB, the printed pids) is left,
        // stopped, or running under the filter with no tracer.
        let r = p.wait(Duration::from_secs(20));
        assert_eq!(
            r.status.signal(),
            Some(SIGKILL),
            "{mode:?}\n{}",
            r.describe()
        );
        for pid in pids {
            assert!(
                stat_of(pid).is_none_or(|s| s.state == 'Z'),
                "{mode:?}: {}",
                describe_process(pid)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Many short-lived processes

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v
}

#[test]
fn five_hundred_processes_in_a_tree_run_as_natively() {
    let prog = fixture("fault_forktree");
    let n = run(native(&prog, &["500"]));
    let code = n.status.code().expect("native exit code");
    assert_eq!(n.stdout.lines().count(), 501, "{}", n.describe());
    for mode in MODES {
        let what = format!("{mode:?}");
        let r = run(under(mode, &[], &prog, &["500"]));
        r.assert_code(code, &what);
        assert_eq!(
            sorted_lines(&r.stdout),
            sorted_lines(&n.stdout),
            "{what}\n{}",
            r.describe()
        );
        assert_eq!(
            r.stdout.lines().last(),
            n.stdout.lines().last(),
            "{what}: the sum comes last"
        );
        r.assert_silent(&what);
    }
}

// ---------------------------------------------------------------------------
// 5. Threads racing on shared fd numbers

#[test]
fn sixty_four_threads_racing_dup2_onto_shared_numbers() {
    // dup2 replaces atomically: every shared number stays open, so every
    // call must succeed and there is nothing to report.
    let prog = fixture("fault_race");
    for mode in MODES {
        let what = format!("{mode:?}");
        let r = run(under(mode, &[], &prog, &["dup2", "64", "2000"]));
        r.assert_code(0, &what);
        assert_eq!(r.stdout, "dup2: failures=0\n", "{what}\n{}", r.describe());
        assert!(!r.stderr.contains("handles:"), "{what}\n{}", r.describe());
        r.assert_no_panic(&what);
    }
}

#[test]
fn sixty_four_threads_racing_close_and_dup2_with_bad_handle_deny() {
    // Closing shared numbers under other threads' feet is the bug itself;
    // with bad-handle=deny a call on a closed number fails with EBADF (as
    // it may natively) and nothing is raised. The program must run its two
    // seconds and exit with its own status.
    let prog = fixture("fault_race");
    for mode in MODES {
        let what = format!("{mode:?}");
        let r = run(under(
            mode,
            &["--policy", "bad-handle=deny"],
            &prog,
            &["chaos", "64", "2000"],
        ));
        r.assert_code(0, &what);
        assert_eq!(r.stdout, "chaos: failures=0\n", "{what}\n{}", r.describe());
        assert!(
            !r.stderr.contains("policy exception"),
            "{what}\n{}",
            r.describe()
        );
        r.assert_no_panic(&what);
    }
}

#[test]
fn a_bad_handle_among_sixty_four_racing_threads_ends_the_job_with_sigtrap() {
    // The default policy: the first stale use raises the exception (a
    // report, SIGTRAP) while 63 other threads are in fd syscalls.
    let prog = fixture("fault_race");
    for mode in MODES {
        let what = format!("{mode:?}");
        let r = run(under(mode, &[], &prog, &["chaos", "64", "2000"]));
        r.assert_code(128 + SIGTRAP, &what);
        assert!(
            r.stderr
                .contains("handles: <== policy exception: bad-handle"),
            "{what}\n{}",
            r.describe()
        );
        r.assert_no_panic(&what);
    }
}

// ---------------------------------------------------------------------------
// 6. A fork bomb held back by RLIMIT_NPROC

/// A uid of our own for each run (RLIMIT_NPROC counts the processes of
/// the real uid, and the runs of this suite may overlap).
fn scratch_uid(k: u32) -> String {
    (200_000 + std::process::id() % 100_000 * 4 + k).to_string()
}

#[test]
fn a_fork_bomb_held_by_rlimit_nproc_completes() {
    // As root the fixture drops to a scratch uid itself (root is not bound
    // by RLIMIT_NPROC); the supervisor stays root.
    let prog = fixture("fault_forkbomb");
    let n = run(native(&prog, &["50", &scratch_uid(0)]));
    n.assert_code(0, "native");
    assert_eq!(n.stdout, "eagain\n", "native\n{}", n.describe());
    for (k, mode) in MODES.into_iter().enumerate() {
        let what = format!("{mode:?}");
        let r = run(under(mode, &[], &prog, &["50", &scratch_uid(1 + k as u32)]));
        r.assert_code(0, &what);
        assert_eq!(r.stdout, "eagain\n", "{what}\n{}", r.describe());
        r.assert_silent(&what);
    }
}

/// `path` (and its directories) can be read and run by any user.
fn open_to_all(path: &Path) -> bool {
    path.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005)
    })
}

/// A copy of `path` any user can run, unless `path` already is.
fn runnable_by_all(path: &Path, dir: &Path) -> PathBuf {
    if open_to_all(path) {
        return path.to_path_buf();
    }
    fs::create_dir_all(dir).expect("create copy dir");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod copy dir");
    let copy = dir.join(path.file_name().expect("file name"));
    fs::copy(path, &copy).expect("copy for the unprivileged user");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod copy");
    copy
}

#[test]
fn a_fork_bomb_under_an_unprivileged_supervisor_completes() {
    // handles itself runs as the unprivileged user (setpriv), as it would
    // for anyone without root; the fork bomb counts against the same uid.
    if !is_root() || !installed("setpriv") {
        common::skip(
            "a_fork_bomb_under_an_unprivileged_supervisor_completes",
            "needs root and setpriv",
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("handles-faults-{}", std::process::id()));
    let prog = runnable_by_all(&fixture("fault_forkbomb"), &dir);
    let bin = runnable_by_all(&handles(), &dir);
    for (k, mode) in MODES.into_iter().enumerate() {
        let uid = scratch_uid(3 - k as u32);
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(&bin)
            .args(["run", mode.flag(), "--"])
            .arg(&prog)
            .arg("50")
            // Where the shim may be unpacked must be this user's.
            .env_remove("XDG_RUNTIME_DIR");
        let what = format!("{mode:?} as uid {uid}");
        let r = run(cmd);
        // Where that user's handles unpacked its embedded shim, if it had
        // to (no shim beside the binary).
        let unpacked = std::env::temp_dir().join(format!("handles-{uid}"));
        if fs::metadata(&unpacked).is_ok_and(|m| m.uid().to_string() == uid) {
            let _ = fs::remove_dir_all(&unpacked);
        }
        r.assert_code(0, &what);
        assert_eq!(r.stdout, "eagain\n", "{what}\n{}", r.describe());
        r.assert_silent(&what);
    }
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 7. fd exhaustion

/// The number in a `STEP: N ...` line.
fn count_of(out: &str, step: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{step}: ")))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {step} count in\n{out}"))
}

#[test]
fn emfile_comes_at_the_native_count_without_the_shim() {
    let prog = fixture("fault_emfile");
    let n = run(native(&prog, &["64"]));
    n.assert_code(0, "native");
    assert!(count_of(&n.stdout, "fill1") > 40, "{}", n.describe());
    let r = run(under(Mode::NoShim, &[], &prog, &["64"]));
    r.assert_code(0, "NoShim");
    // The quarantine gives its numbers back under pressure: same counts,
    // same errors, and closing and reopening works.
    assert_eq!(r.stdout, n.stdout, "NoShim\n{}", r.describe());
    r.assert_silent("NoShim");
}

#[test]
fn emfile_with_the_shim_is_consistent_and_recovers() {
    // What holds with the shim today; see the ignored test below for what
    // does not.
    let prog = fixture("fault_emfile");
    let n = run(native(&prog, &["64"]));
    let r = run(under(Mode::Shim, &[], &prog, &["64"]));
    r.assert_code(0, "Shim");
    r.assert_silent("Shim");
    let (fill1, fill2) = (count_of(&r.stdout, "fill1"), count_of(&r.stdout, "fill2"));
    assert!(
        fill1 > 40 && fill1 <= count_of(&n.stdout, "fill1"),
        "{}",
        r.describe()
    );
    assert_eq!(fill1, fill2, "{}", r.describe());
    let half = fill1.div_ceil(2);
    let expected = [
        format!("fill1: {fill1} opens, then Too many open files"),
        "pipe: Too many open files".to_string(),
        "open: ok".to_string(),
        format!("fill2: {fill1} opens, then Too many open files"),
        format!("reopen: {half} of {half}, then Too many open files"),
        "cycle: 200 of 200".to_string(),
        format!("fill3: {} pipes, then Too many open files", fill1 / 2),
    ];
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        expected,
        "{}",
        r.describe()
    );
}

#[test]
fn emfile_comes_at_the_native_count_with_the_shim() {
    let prog = fixture("fault_emfile");
    let n = run(native(&prog, &["64"]));
    let r = run(under(Mode::Shim, &[], &prog, &["64"]));
    r.assert_code(0, "Shim");
    assert_eq!(r.stdout, n.stdout, "Shim\n{}", r.describe());
}

// ---------------------------------------------------------------------------
// 8. Huge fd numbers

#[test]
fn dup2_onto_fd_1000000_and_onto_the_top_fd_behaves_as_natively() {
    let prog = fixture("fault_bigfd");
    let n = run(native(&prog, &[]));
    n.assert_code(0, "native");
    if n.stdout.contains("SKIP") {
        eprintln!("note: fault_bigfd could not raise RLIMIT_NOFILE to 1000001 (CAP_SYS_RESOURCE); only EBADF from dup2 onto fd 1000000 is compared");
    }
    for mode in MODES {
        let what = format!("{mode:?}");
        let r = run(under(mode, &[], &prog, &[]));
        r.assert_code(0, &what);
        assert_eq!(r.stdout, n.stdout, "{what}\n{}", r.describe());
        r.assert_silent(&what);
    }
}

/// `handles run MODE -- fault_bigfd uac` started with a soft
/// RLIMIT_NOFILE of 1024: the program raises it and misuses fd 4000.
fn use_after_close_above_the_starting_limit(mode: Mode) -> Ran {
    let prog = fixture("fault_bigfd");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 1024 && exec \"$@\"", "sh"])
        .arg(handles())
        .args(["run", mode.flag(), "--"])
        .arg(&prog)
        .arg("uac");
    run(cmd)
}

fn assert_use_after_close_reported(r: &Ran, what: &str) {
    if r.stdout.contains("SKIP") {
        eprintln!("note: {what}: {}", r.stdout.trim());
        return;
    }
    r.assert_code(128 + SIGTRAP, what);
    assert!(
        r.stderr.contains("use of a closed handle"),
        "{what}\n{}",
        r.describe()
    );
}

#[test]
fn a_use_after_close_above_the_starting_rlimit_is_reported_without_the_shim() {
    let r = use_after_close_above_the_starting_limit(Mode::NoShim);
    assert_use_after_close_reported(&r, "NoShim");
}

#[test]
#[ignore = "known bug: the shim's table ends at the RLIMIT_NOFILE the program started with; \
            fds above it (after the program raised its limit) are neither checked nor \
            quarantined, so this use after close passes as a plain EBADF"]
fn a_use_after_close_above_the_starting_rlimit_is_reported_with_the_shim() {
    let r = use_after_close_above_the_starting_limit(Mode::Shim);
    assert_use_after_close_reported(&r, "Shim");
}

// ---------------------------------------------------------------------------
// 9. A tiny RLIMIT_NOFILE

fn low_nofile(mode: Option<Mode>, held: &str) -> Ran {
    let prog = fixture("fault_lownofile");
    let args = ["16", held, "/etc/hostname"];
    match mode {
        None => run(native(&prog, &args)),
        Some(m) => run(under(m, &[], &prog, &args)),
    }
}

#[test]
fn a_loop_under_rlimit_nofile_16_runs_as_natively() {
    // 3 fds held besides stdio: 10 numbers free for the loops.
    let n = low_nofile(None, "3");
    n.assert_code(0, "native");
    for mode in MODES {
        let what = format!("{mode:?}");
        let r = low_nofile(Some(mode), "3");
        r.assert_code(0, &what);
        assert_eq!(r.stdout, n.stdout, "{what}\n{}", r.describe());
        r.assert_silent(&what);
    }
    // 8 held: 5 numbers free, pipes still fit.
    let n = low_nofile(None, "8");
    n.assert_code(0, "native");
    let r = low_nofile(Some(Mode::NoShim), "8");
    r.assert_code(0, "NoShim");
    assert_eq!(r.stdout, n.stdout, "NoShim\n{}", r.describe());
    r.assert_silent("NoShim");
}

#[test]
fn a_loop_under_rlimit_nofile_16_with_8_held_runs_as_natively_with_the_shim() {
    let n = low_nofile(None, "8");
    let r = low_nofile(Some(Mode::Shim), "8");
    r.assert_code(0, "Shim");
    assert_eq!(r.stdout, n.stdout, "Shim\n{}", r.describe());
}

// ---------------------------------------------------------------------------
// 10. Debuggers under the supervisor

#[test]
fn a_program_that_is_its_own_debugger_gets_eperm_not_a_hang() {
    // Linux allows one tracer per task, and handles is it: PTRACE_TRACEME
    // and PTRACE_SEIZE fail with EPERM, which the program can report.
    let prog = fixture("fault_traceme");
    for how in ["traceme", "seize"] {
        let n = run(native(&prog, &[how]));
        n.assert_code(0, &format!("native {how}"));
        for mode in MODES {
            let what = format!("{mode:?} {how}");
            let r = run(under(mode, &[], &prog, &[how]));
            r.assert_code(3, &what);
            assert_eq!(
                r.stdout,
                format!("{how}: Operation not permitted\n"),
                "{what}\n{}",
                r.describe()
            );
            r.assert_silent(&what);
        }
    }
}

#[test]
fn strace_and_gdb_under_handles_fail_clearly_in_both_modes() {
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "strace",
            vec!["-f", "-o", "/dev/null", "true"],
            "Operation not permitted",
        ),
        (
            "gdb",
            vec!["-nx", "-batch", "-ex", "run", "--args", "true"],
            "ptrace: Operation not permitted",
        ),
        (
            // Attaching to a process of the job that handles traces.
            "sh",
            vec![
                "-c",
                "sleep 30 & p=$!; gdb -nx -batch -p $p; echo gdb=$?; kill $p; wait $p",
            ],
            "ptrace: Operation not permitted",
        ),
    ];
    for (tool, args, says) in cases {
        let needs = if tool == "sh" { "gdb" } else { tool };
        if !installed(needs) {
            common::skip(
                &format!("{tool} {args:?}"),
                &format!("{needs} is not installed"),
            );
            continue;
        }
        for mode in MODES {
            let what = format!("{mode:?} {tool} {args:?}");
            let mut cmd = Command::new(handles());
            cmd.args(["run", mode.flag(), "--", tool]).args(&args);
            let r = run(cmd);
            assert!(
                r.stderr.contains(says) || r.stdout.contains(says),
                "{what}\n{}",
                r.describe()
            );
            if tool == "sh" {
                assert!(r.stdout.contains("gdb=1"), "{what}\n{}", r.describe());
            } else {
                assert_ne!(r.status.code(), Some(0), "{what}\n{}", r.describe());
            }
            assert!(
                !r.stderr.contains("policy exception"),
                "{what}\n{}",
                r.describe()
            );
            r.assert_no_panic(&what);
        }
    }
}

// ---------------------------------------------------------------------------
// Real-time signals

#[test]
fn real_time_signals_are_delivered_and_a_death_by_one_is_reported() {
    // nix's waitpid cannot name a real-time signal and failed with EINVAL,
    // after the kernel had consumed the status: pthread_cancel (SIGRTMIN)
    // made `handles run` give up with exit 125 and lose the job.
    let prog = fixture("fault_rtsig");
    let rtmin = libc::SIGRTMIN();
    for mode in MODES {
        let r = run(under(mode, &[], &prog, &["cancel"]));
        r.assert_code(0, &format!("{mode:?} cancel"));
        assert_eq!(r.stdout, "joined\n", "{mode:?}\n{}", r.describe());
        r.assert_silent(&format!("{mode:?} cancel"));

        let r = run(under(mode, &[], &prog, &["handle"]));
        r.assert_code(0, &format!("{mode:?} handle"));
        assert_eq!(r.stdout, "got 6\n", "{mode:?}\n{}", r.describe());

        let r = run(under(mode, &[], &prog, &["die"]));
        r.assert_code(128 + rtmin + 3, &format!("{mode:?} die"));
        r.assert_silent(&format!("{mode:?} die"));
    }
}
