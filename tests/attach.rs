//! `handles attach PID`: windows on a live server fixture
//! (tests/fixtures/attach_server.c): leak suspects by creation stack,
//! use after close, detach under load and across a fork, SIGKILL of
//! handles, the refusals. After every window the process must run on with
//! its own fds only, no tracer and no seccomp filter.
//!
//! The supervisor's modes (--strict, --no-shim, --no-ptrace) belong to
//! `handles run`; a window has one mechanism (PTRACE_SYSCALL stops), so
//! each case runs once.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{fixture, handles, skip, spawn_ready, Running};

/// The source line carrying `ATTACH:<name>` in the fixture.
fn line_of(name: &str) -> u32 {
    let src = std::fs::read_to_string(common::repo_root().join("tests/fixtures/attach_server.c"))
        .expect("read fixture");
    let marker = format!("ATTACH:{name} ");
    let idx = src
        .lines()
        .position(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no marker {marker}"));
    idx as u32 + 1
}

fn server(threads: usize) -> Running {
    let mut cmd = Command::new(fixture("attach_server"));
    cmd.arg(threads.to_string());
    spawn_ready(cmd)
}

/// Sends one command to the fixture and returns what it printed before
/// its `done`.
fn cmd(r: &mut Running, c: &str) -> Vec<String> {
    send(r, c);
    until_done(r)
}

fn send(r: &mut Running, c: &str) {
    let stdin = r.child.stdin.as_mut().expect("piped stdin");
    writeln!(stdin, "{c}").expect("write to fixture");
    stdin.flush().expect("flush");
}

fn until_done(r: &mut Running) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match r.next_line() {
            Some(l) if l == "done" => return out,
            Some(l) => out.push(l),
            None => panic!("fixture ended before done; printed {out:?}"),
        }
    }
}

fn fds(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A window's tombstone: an O_PATH fd of `/` (the fixture opens none).
fn is_tombstone(pid: i32, fd: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l == std::path::Path::new("/"))
}

fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read status")
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The process as it was: no tracer on any thread, no seccomp filter,
/// every thread out of any tracing stop, and exactly the fds expected.
fn assert_left_alone(pid: i32, expected_fds: &BTreeSet<i32>) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid: i32 = task
            .expect("task")
            .file_name()
            .to_str()
            .and_then(|s| s.parse().ok())
            .expect("tid");
        assert_eq!(
            status_field(tid, "TracerPid:"),
            "0",
            "thread {tid} still traced"
        );
        let state = status_field(tid, "State:");
        assert!(
            !state.starts_with('t') && !state.starts_with('T'),
            "thread {tid} left stopped: {state}"
        );
    }
    assert_eq!(
        status_field(pid, "Seccomp:"),
        "0",
        "a seccomp filter was left"
    );
    assert_eq!(&fds(pid), expected_fds, "fd table of {pid} changed");
}

/// `handles attach` running in the background, its stderr collected.
struct Window {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Window {
    fn start(args: &[&str], pid: i32) -> Window {
        let mut child = Command::new(handles())
            .arg("attach")
            .args(args)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handles attach");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Window {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `what`.
    fn wait_for(&mut self, what: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(l) => {
                    let hit = l.contains(what);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no line with {what:?} from handles; saw {:?}", self.seen),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) of the handles process this test started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for handles to exit; its status and whole stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("wait for handles");
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status, self.seen.join("\n") + "\n")
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("attach-tests")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The text between a heading starting with `from` and the next heading.
fn section<'a>(stderr: &'a str, from: &str) -> &'a str {
    let Some(start) = stderr.find(from) else {
        return "";
    };
    let rest = &stderr[start + from.len()..];
    let end = rest.find("handles: ====").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn leak_suspects_name_the_leaking_function() {
    let mut srv = server(4);
    let pid = srv.pid();
    let before = fds(pid);
    let dir = scratch("leaks");
    let report = dir.join("report.json");
    let sarif = dir.join("report.sarif");
    let mut w = Window::start(
        &[
            "--report",
            report.to_str().unwrap(),
            "--sarif",
            sarif.to_str().unwrap(),
            "--error-exitcode",
            "9",
        ],
        pid,
    );
    w.wait_for("attached to process");
    cmd(&mut srv, "req 30");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(9), "{stderr}");
    let leak_at = format!("in leak_one at {}:{}", fixture_src(), line_of("leak"));
    let suspects = section(
        &stderr,
        &format!("handles: ==== leak suspects: process {pid} (attach_server) holds 10 handles"),
    );
    assert!(suspects.contains(&leak_at), "{stderr}");
    assert!(suspects.contains("created by openat() at"), "{stderr}");
    assert!(!suspects.contains("transient"), "{stderr}");
    let transient = format!(
        "30 created     30 closed      0 open  openat() in transient at {}:{}",
        fixture_src(),
        line_of("transient")
    );
    assert!(stderr.contains(&transient), "{stderr}");
    assert!(stderr.contains("window ended: signal 2"), "{stderr}");
    assert!(stderr.contains("LEAK SUMMARY: 10 handles"), "{stderr}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(v["summary"]["leaked_handles"], 10);
    let groups = v["leaks"][0]["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1);
    let leaked: BTreeSet<i32> = groups[0]["handles"]
        .as_array()
        .expect("handles")
        .iter()
        .map(|h| h["handle"]["fd"].as_i64().expect("fd") as i32)
        .collect();
    assert_eq!(leaked.len(), 10);
    assert!(groups[0]["stack"]
        .as_array()
        .expect("stack")
        .iter()
        .any(|f| f["function"] == "leak_one" && f["line"] == line_of("leak")));
    common::assert_valid(
        "leak_suspects_name_the_leaking_function",
        &v,
        &common::docs_schema("report.schema.json"),
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif).expect("sarif")).expect("json");
    assert_eq!(s["runs"][0]["results"][0]["ruleId"], "leak");

    let expected: BTreeSet<i32> = before.union(&leaked).copied().collect();
    assert_left_alone(pid, &expected);
    // It still serves.
    cmd(&mut srv, "req 1");
}

fn fixture_src() -> String {
    common::repo_root()
        .join("tests/fixtures/attach_server.c")
        .display()
        .to_string()
}

#[test]
fn a_clean_window_exits_zero_even_with_error_exitcode() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    let out = common::run_handles([
        "attach",
        "--duration",
        "0.3",
        "--error-exitcode",
        "9",
        &pid.to_string(),
    ]);
    let stderr = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("window ended: its duration elapsed"),
        "{stderr}"
    );
    assert!(stderr.contains("LEAK SUMMARY: 0 handles"), "{stderr}");
    assert_left_alone(pid, &before);
    cmd(&mut srv, "req 1");
}

#[test]
fn use_after_close_during_the_window_is_reported() {
    let mut srv = server(2);
    let pid = srv.pid();
    let before = fds(pid);
    let mut w = Window::start(&["--error-exitcode", "9"], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "uac");
    w.signal(libc::SIGTERM);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(9), "{stderr}");
    let src = fixture_src();
    let report = section(&stderr, "handles: <== policy exception: bad-handle");
    assert!(report.contains("syscall read("), "{stderr}");
    assert!(
        report.contains(&format!("in use_after_close at {src}:{}", line_of("uac"))),
        "{stderr}"
    );
    assert!(
        report.contains(&format!("closed by thread {pid} at")),
        "{stderr}"
    );
    assert!(
        report.contains(&format!("in use_after_close at {src}:{}", line_of("close"))),
        "{stderr}"
    );
    assert!(stderr.contains("ERROR SUMMARY: 1 exception"), "{stderr}");
    assert_left_alone(pid, &before);
    cmd(&mut srv, "req 1");
}

#[test]
fn bad_handle_policy_allow_reports_nothing_and_trap_kills() {
    // allow: the same use after close, no report.
    let mut srv = server(1);
    let pid = srv.pid();
    let mut w = Window::start(&["--policy", "bad-handle=allow"], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "uac");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("policy exception"), "{stderr}");
    assert!(stderr.contains("ERROR SUMMARY: 0 exceptions"), "{stderr}");

    // --on-exception trap: SIGTRAP to the offending thread, as under run.
    let mut srv = server(1);
    let pid = srv.pid();
    let mut w = Window::start(&["--on-exception", "trap"], pid);
    w.wait_for("attached to process");
    send(&mut srv, "uac");
    let status = srv.child.wait().expect("wait fixture");
    let (_, stderr) = w.finish();
    assert_eq!(common::ending(&status), "signal 5", "{stderr}");
    assert!(stderr.contains("SIGTRAP follows"), "{stderr}");
}

#[test]
fn detach_under_load_and_across_a_fork() {
    let mut srv = server(16);
    let pid = srv.pid();
    let before = fds(pid);
    let dir = scratch("load");
    let report = dir.join("report.json");
    let mut w = Window::start(
        &["--duration", "1.5", "--report", report.to_str().unwrap()],
        pid,
    );
    w.wait_for("(attach_server), 18 threads;");
    cmd(&mut srv, "req 300");
    // The child's copies of the window's tombstones are released too.
    let mut at_fork = fds(pid);
    at_fork.retain(|&fd| !is_tombstone(pid, fd));
    let child: i32 = cmd(&mut srv, "fork")
        .iter()
        .find_map(|l| l.strip_prefix("child=")?.parse().ok())
        .expect("child pid");
    let _reap = KillOnDrop(child);
    // Calls still flowing when the window ends.
    send(&mut srv, "busy 200000");
    let (status, stderr) = w.finish();
    until_done(&mut srv);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("window ended: its duration elapsed"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not stop"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "handles: ==== leak suspects: process {child} (attach_server) holds 1 handle"
        )),
        "{stderr}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let leaked_by = |p: i32| -> BTreeSet<i32> {
        v["leaks"]
            .as_array()
            .expect("leaks")
            .iter()
            .filter(|l| l["pid"] == p)
            .flat_map(|l| l["groups"].as_array().cloned().unwrap_or_default())
            .flat_map(|g| g["handles"].as_array().cloned().unwrap_or_default())
            .map(|h| h["handle"]["fd"].as_i64().expect("fd") as i32)
            .collect()
    };
    let leaked = leaked_by(pid);
    assert_eq!(leaked.len(), 100, "{stderr}");
    assert_left_alone(pid, &before.union(&leaked).copied().collect());
    assert_eq!(
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count(),
        18
    );
    let child_leak = leaked_by(child);
    assert_eq!(child_leak.len(), 1, "{stderr}");
    assert_left_alone(child, &at_fork.union(&child_leak).copied().collect());
    cmd(&mut srv, "req 1");
}

/// The fixture's forked child waits in pause(), holding the test's
/// stderr: it must not outlive a failed test.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the fixture's child this test made.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn sigkill_of_handles_leaves_the_process_running() {
    let mut srv = server(4);
    let pid = srv.pid();
    let before = fds(pid);
    let mut w = Window::start(&[], pid);
    w.wait_for("attached to process");
    send(&mut srv, "busy 20000");
    std::thread::sleep(Duration::from_millis(200));
    w.signal(libc::SIGKILL);
    let (status, _) = w.finish();
    assert_eq!(common::ending(&status), "signal 9");
    // The burst completes: nothing was left stopped or wedged.
    until_done(&mut srv);
    let now = fds(pid);
    // What the window could not release is tombstones: O_PATH fds of /,
    // at most --quarantine of them (one more when the kill fell between
    // placing a tombstone and evicting the oldest) and their source.
    let left: Vec<i32> = now.difference(&before).copied().collect();
    assert!(left.len() <= 64 + 2, "{left:?}");
    assert!(left.iter().all(|&fd| is_tombstone(pid, fd)), "{left:?}");
    assert_left_alone(pid, &now);
    // With no window left to hide them, the process's own listing shows
    // the tombstones; the published table went with handles.
    let later: BTreeSet<i32> = cmd(&mut srv, "fds")
        .iter()
        .find_map(|l| l.strip_prefix("fds="))
        .expect("fds line")
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    assert_eq!(later, now);
    assert_eq!(table_json(pid)["source"], "proc");
    // The tombstones keep their numbers; new handles get others, and work.
    cmd(&mut srv, "req 3");
    assert_eq!(cmd(&mut srv, "pipe"), vec!["pipe=0".to_string()]);
}

#[test]
fn attach_refused_when_already_traced() {
    if Command::new("strace").arg("-V").output().is_err() {
        skip(
            "attach_refused_when_already_traced",
            "strace is not installed",
        );
        return;
    }
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    let mut strace = Command::new("strace")
        .args(["-o", "/dev/null", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    let mut tries = 0;
    while status_field(pid, "TracerPid:") == "0" {
        tries += 1;
        assert!(tries < 200, "strace never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = common::run_handles(["attach", "--duration", "0.2", &pid.to_string()]);
    let stderr = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "process {pid} is already traced by process {}",
            strace.id()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    strace.kill().expect("kill strace");
    strace.wait().expect("wait strace");
    assert_left_alone(pid, &before);
    cmd(&mut srv, "req 1");
}

#[test]
fn attach_refused_for_another_users_process() {
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let (target, out) = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            skip(
                "attach_refused_for_another_users_process",
                "setpriv is not installed",
            );
            return;
        }
        // The fixture runs as root, handles as nobody.
        let srv = server(1);
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(handles())
            .args(["attach", "--duration", "0.2", &srv.pid().to_string()])
            .output()
            .expect("setpriv handles");
        (Some(srv), out)
    } else {
        // pid 1 is root's.
        (
            None,
            common::run_handles(["attach", "--duration", "0.2", "1"]),
        )
    };
    let stderr = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("permission denied attaching to process"),
        "{stderr}"
    );
    assert!(stderr.contains("same user"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    if let Some(srv) = target {
        assert_eq!(status_field(srv.pid(), "TracerPid:"), "0");
    }
}

#[test]
fn no_such_process_and_bad_pid() {
    let out = common::run_handles(["attach", "--duration", "0.1", "999999999"]);
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr_of(&out));
    assert!(common::stderr_of(&out).contains("no such process: 999999999"));
    let out = common::run_handles(["attach", "abc"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr_of(&out));
    let out = common::run_handles(["attach", "--policy", "new-flie=deny", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr_of(&out));
    assert!(
        common::stderr_of(&out).contains("new-file"),
        "{}",
        common::stderr_of(&out)
    );
}

#[test]
fn fd_threshold_waits_then_records() {
    let mut srv = server(1);
    let pid = srv.pid();
    let start = fds(pid).len();
    let threshold = start + 5;
    let mut w = Window::start(
        &[
            "--fd-threshold",
            &threshold.to_string(),
            "--poll-interval",
            "0.02",
        ],
        pid,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status_field(pid, "TracerPid:"),
        "0",
        "attached before the threshold"
    );
    // 15 requests leak 5: the threshold.
    cmd(&mut srv, "req 15");
    w.wait_for("attached to process");
    assert!(
        w.seen.iter().any(|l| l.contains(&format!(
            "holds {threshold} fds (threshold {threshold}): attaching"
        ))),
        "{:?}",
        w.seen
    );
    cmd(&mut srv, "req 6");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Only the window's 2 leaks, not the 5 before it.
    assert!(
        stderr.contains(&format!("process {pid} (attach_server) holds 2 handles")),
        "{stderr}"
    );
    let now = fds(pid);
    assert_left_alone(pid, &now);
    assert_eq!(now.len(), start + 7);
}

/// Whether the fixture's `reuse` got its closed number back at once.
fn number_reused(srv: &mut Running) -> bool {
    let l = cmd(srv, "reuse");
    let v: Vec<i32> = l
        .iter()
        .find_map(|l| l.strip_prefix("reuse="))
        .expect("reuse line")
        .split(' ')
        .map(|n| n.parse().expect("number"))
        .collect();
    v[0] == v[1]
}

#[test]
fn closed_numbers_are_quarantined_during_the_window_only() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    assert!(
        number_reused(&mut srv),
        "natively the lowest number comes back"
    );
    let mut w = Window::start(&[], pid);
    w.wait_for("attached to process");
    assert!(
        !number_reused(&mut srv),
        "a closed number was handed out again"
    );
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Tombstones and their source released: the number comes back again.
    assert_left_alone(pid, &before);
    assert!(number_reused(&mut srv));

    // --quarantine 0: nothing held.
    let mut w = Window::start(&["--quarantine", "0"], pid);
    w.wait_for("attached to process");
    assert!(number_reused(&mut srv));
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_left_alone(pid, &before);
}

#[test]
fn a_real_time_signal_reaches_its_handler_and_the_window_goes_on() {
    let mut srv = server(1);
    let pid = srv.pid();
    let mut w = Window::start(&[], pid);
    w.wait_for("attached to process");
    assert_eq!(cmd(&mut srv, "rt"), vec!["rt=1".to_string()]);
    cmd(&mut srv, "req 3");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("window ended: signal 2"), "{stderr}");
    assert!(
        stderr.contains(&format!("process {pid} (attach_server) holds 1 handle")),
        "{stderr}"
    );
    assert_eq!(cmd(&mut srv, "rt"), vec!["rt=2".to_string()]);
}

#[test]
fn the_window_ends_when_the_process_exits() {
    let mut srv = server(2);
    let pid = srv.pid();
    let mut w = Window::start(&["--error-exitcode", "9"], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "req 3");
    // EOF on stdin: the fixture returns from main.
    drop(srv.child.stdin.take());
    let status = srv.child.wait().expect("wait fixture");
    assert_eq!(common::ending(&status), "exit 0");
    let (status, stderr) = w.finish();
    // What exits takes its handles with it: nothing is a suspect.
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("window ended: the process exited"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "process {pid} (attach_server) exited during the window"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("LEAK SUMMARY: 0 handles"), "{stderr}");
}

#[test]
fn suppressions_silence_suspects_and_exceptions() {
    let dir = scratch("suppress");
    let rules = dir.join("rules.supp");
    std::fs::write(
        &rules,
        "[known-leak]\nreport = leak\nframe = fun:leak_one\n\n\
         [known-uac]\nreport = bad-handle\nkind = use-closed\nframe = fun:use_after_close\n",
    )
    .expect("write rules");
    let mut srv = server(1);
    let pid = srv.pid();
    let mut w = Window::start(
        &[
            "--suppressions",
            rules.to_str().unwrap(),
            "--error-exitcode",
            "9",
        ],
        pid,
    );
    w.wait_for("attached to process");
    cmd(&mut srv, "req 6");
    cmd(&mut srv, "uac");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("policy exception"), "{stderr}");
    assert!(!stderr.contains("leak suspects"), "{stderr}");
    assert!(
        stderr.contains("LEAK SUMMARY: 0 handles to 0 objects in 0 processes (2 suppressed)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ERROR SUMMARY: 0 exceptions from 0 contexts (1 suppressed)"),
        "{stderr}"
    );
    // The summary still counts what was made where.
    assert!(
        stderr.contains("2 created      0 closed      2 open  openat() in leak_one"),
        "{stderr}"
    );
}

/// `handles --json --stacks PID` run from another terminal.
fn table_json(pid: i32) -> serde_json::Value {
    let out = common::run_handles(["--json", "--stacks", &pid.to_string()]);
    assert!(out.status.success(), "{}", common::describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["processes"][0].clone()
}

fn row(table: &serde_json::Value, fd: i32) -> serde_json::Value {
    table["handles"]
        .as_array()
        .expect("handles")
        .iter()
        .find(|h| h["fd"] == fd)
        .cloned()
        .unwrap_or_else(|| panic!("no row for fd {fd} in {table:#}"))
}

#[test]
fn handles_pid_shows_the_window_table_and_nothing_is_left_at_detach() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    let dir = scratch("table");
    let report = dir.join("report.json");
    // No quarantine: each transient handle takes the number the previous
    // one closed, so the leaked one is that number's fourth handle.
    let mut w = Window::start(
        &["--quarantine", "0", "--report", report.to_str().unwrap()],
        pid,
    );
    w.wait_for("attached to process");
    // With nothing recorded yet: what predates the window is generation 1,
    // found open, with no creation stack.
    let t = table_json(pid);
    assert_eq!(t["source"], "supervisor", "{t:#}");
    let old = row(&t, 3);
    assert_eq!(old["generation"], 1, "{old:#}");
    assert!(old
        .get("created")
        .is_none_or(|c| c["frames"].as_array().is_none_or(|f| f.is_empty())));

    cmd(&mut srv, "req 3");
    let leaked: Vec<i32> = fds(pid).difference(&before).copied().collect();
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    let fd = leaked[0];
    let out = common::run_handles(["--json", "--stacks", &pid.to_string()]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    common::assert_valid(
        "handles_pid_shows_the_window_table",
        &doc,
        &common::docs_schema("table.schema.json"),
    );
    let t = doc["processes"][0].clone();
    let h = row(&t, fd);
    assert_eq!(h["generation"], 4, "{h:#}");
    assert_eq!(h["created"]["by"], "openat", "{h:#}");
    assert!(
        h["created"]["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .any(|f| f["function"] == "leak_one" && f["line"] == line_of("leak")),
        "{h:#}"
    );
    // The text table shows the same value.
    let value = h["value"].as_u64().expect("value");
    let text = common::stdout_of(&common::run_handles(["--stacks", &pid.to_string()]));
    assert!(text.contains(&format!("{value:#010x}")), "{text}");
    assert!(
        text.contains(&format!(
            "in leak_one at {}:{}",
            fixture_src(),
            line_of("leak")
        )),
        "{text}"
    );

    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The leak report gives the handle the value the table showed.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let reported = &v["leaks"][0]["groups"][0]["handles"][0]["handle"];
    assert_eq!(reported["fd"], fd, "{v:#}");
    assert_eq!(reported["value"].as_u64(), Some(value), "{v:#}");
    // Detached: the table is gone with the tracer, and nothing of it was
    // ever in the process.
    let after = table_json(pid);
    assert_eq!(after["source"], "proc", "{after:#}");
    assert_left_alone(pid, &before.union(&[fd].into()).copied().collect());
}

#[test]
fn handles_pid_hides_the_window_tombstones() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    let mut w = Window::start(&[], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "busy 5");
    let now = fds(pid);
    let tombs: Vec<i32> = now
        .iter()
        .copied()
        .filter(|&f| is_tombstone(pid, f))
        .collect();
    // Five closed numbers and the source.
    assert_eq!(tombs.len(), 6, "{now:?}");
    let shown: BTreeSet<i32> = table_json(pid)["handles"]
        .as_array()
        .expect("handles")
        .iter()
        .map(|h| h["fd"].as_i64().expect("fd") as i32)
        .collect();
    assert_eq!(shown, before, "tombstones shown");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_left_alone(pid, &before);
}

/// The python3 on PATH (its real executable, not a pyenv shim script).
fn python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys; print(sys.executable)")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

#[test]
fn python_leak_suspects_name_the_python_function_and_line() {
    let test = "python_leak_suspects_name_the_python_function_and_line";
    let Some(py) = python() else {
        skip(test, "python3 is not installed");
        return;
    };
    let script = common::repo_root()
        .join("tests/fixtures/python/attach_server.py")
        .canonicalize()
        .expect("fixture path");
    let file = script.display().to_string();
    let mut cmd_ = Command::new(py);
    cmd_.arg(&script);
    let mut srv = spawn_ready(cmd_);
    let pid = srv.pid();
    let before = fds(pid);
    let dir = scratch("python");
    let report = dir.join("report.json");
    let mut w = Window::start(&["--report", report.to_str().unwrap()], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "req 9");
    // The table shows the Python frames too.
    let leaked: Vec<i32> = fds(pid)
        .difference(&before)
        .copied()
        .filter(|&f| !is_tombstone(pid, f))
        .collect();
    assert_eq!(leaked.len(), 3, "{leaked:?}");
    let h = row(&table_json(pid), leaked[0]);
    assert!(
        h["created"]["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .any(|f| f["kind"] == "python" && f["function"] == "leak_log" && f["line"] == 17),
        "{h:#}"
    );
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let suspects = section(&stderr, "holds 3 handles created during the");
    assert!(
        suspects.contains(&format!("{file}:17 in leak_log (Python)")),
        "{stderr}"
    );
    assert!(
        suspects.contains(&format!("{file}:28 in <module> (Python)")),
        "{stderr}"
    );
    assert!(!suspects.contains("in transient (Python)"), "{stderr}");
    // The summary names each stack by its Python frame (the transient
    // calls may come in two native stacks: CPython 3.11+ specializes a
    // call site after a few runs).
    let transient = format!("0 open  openat() in transient at {file}:13");
    assert!(stderr.contains(&transient), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "3 created      0 closed      3 open  openat() in leak_log at {file}:17"
        )),
        "{stderr}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert!(
        v["leaks"][0]["groups"][0]["stack"]
            .as_array()
            .expect("stack")
            .iter()
            .any(|f| f["function"] == "leak_log" && f["line"] == 17),
        "{v:#}"
    );
    assert_left_alone(
        pid,
        &before
            .union(&leaked.into_iter().collect())
            .copied()
            .collect(),
    );
    cmd(&mut srv, "req 1");
}

#[test]
fn new_and_wrong_object_policies_apply_in_the_window() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    // Natively: the pipe is made, listen() on a file fails with ENOTSOCK.
    assert_eq!(cmd(&mut srv, "pipe"), vec!["pipe=0".to_string()]);
    assert_eq!(
        cmd(&mut srv, "notsock"),
        vec!["notsock=ENOTSOCK".to_string()]
    );
    let dir = scratch("policy");
    let report = dir.join("report.json");
    let mut w = Window::start(
        &[
            "--policy",
            "new-pipe=deny-exception",
            "--policy",
            "wrong-object=deny-exception",
            "--policy",
            "new-file=allow-exception",
            "--report",
            report.to_str().unwrap(),
            "--error-exitcode",
            "9",
        ],
        pid,
    );
    w.wait_for("attached to process");
    assert_eq!(cmd(&mut srv, "pipe"), vec!["pipe=EPERM".to_string()]);
    assert_eq!(
        cmd(&mut srv, "notsock"),
        vec!["notsock=ENOTSOCK".to_string()]
    );
    // A chardev is no new-file: opening /dev/null is not reported.
    cmd(&mut srv, "busy 2");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(9), "{stderr}");
    let src = fixture_src();
    let pipe = section(&stderr, "handles: <== policy exception: new-pipe");
    assert!(pipe.contains("creation of a pipe handle"), "{stderr}");
    assert!(pipe.contains("the call fails with EPERM"), "{stderr}");
    assert!(
        pipe.contains(&format!("in make_pipe at {src}:{}", line_of("pipe"))),
        "{stderr}"
    );
    let wrong = section(&stderr, "handles: <== policy exception: wrong-object");
    assert!(wrong.contains("syscall listen("), "{stderr}");
    assert!(
        wrong.contains("listen() on a chardev handle; it needs a socket or channel"),
        "{stderr}"
    );
    assert!(
        wrong.contains("the call fails with ENOTSOCK without running"),
        "{stderr}"
    );
    assert!(
        wrong.contains(&format!(
            "in listen_on_a_file at {src}:{}",
            line_of("notsock")
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("exception: new-file"), "{stderr}");
    assert!(stderr.contains("ERROR SUMMARY: 2 exceptions"), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let conditions: BTreeSet<String> = v["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .map(|e| e["condition"].as_str().expect("condition").to_string())
        .collect();
    assert_eq!(
        conditions,
        ["new-pipe", "wrong-object"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // The denied pipe's fds were closed again: nothing is left.
    assert_left_alone(pid, &before);
    assert_eq!(cmd(&mut srv, "pipe"), vec!["pipe=0".to_string()]);
}

#[test]
fn gen_suppressions_prints_rules_that_silence_the_next_window() {
    let mut srv = server(1);
    let pid = srv.pid();
    let mut w = Window::start(&["--gen-suppressions"], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "req 3");
    cmd(&mut srv, "uac");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The rules are the lines printed bare, without the handles: prefix.
    let rules: String = stderr
        .lines()
        .filter(|l| !l.starts_with("handles:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        rules.contains(
            "[bad-handle-use-closed-in-use_after_close]\nreport = bad-handle\nkind = use-closed\n"
        ),
        "{stderr}"
    );
    assert!(rules.contains("frame = fun:use_after_close\n"), "{stderr}");
    assert!(
        rules.contains("report = leak\nkind = leak\ntype = chardev\n"),
        "{stderr}"
    );
    assert!(rules.contains("frame = fun:leak_one\n"), "{stderr}");

    // Those rules, given back, silence the same findings.
    let file = scratch("gen").join("generated.supp");
    std::fs::write(&file, &rules).expect("write rules");
    let mut w = Window::start(
        &[
            "--suppressions",
            file.to_str().unwrap(),
            "--error-exitcode",
            "9",
        ],
        pid,
    );
    w.wait_for("attached to process");
    cmd(&mut srv, "req 3");
    cmd(&mut srv, "uac");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("LEAK SUMMARY: 0 handles to 0 objects in 0 processes (1 suppressed)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ERROR SUMMARY: 0 exceptions from 0 contexts (1 suppressed)"),
        "{stderr}"
    );
}

#[test]
fn the_process_does_not_see_tombstones_in_its_own_fd_listing() {
    let mut srv = server(1);
    let pid = srv.pid();
    let listing = |srv: &mut Running| -> BTreeSet<i32> {
        cmd(srv, "fds")
            .iter()
            .find_map(|l| l.strip_prefix("fds="))
            .expect("fds line")
            .split_whitespace()
            .map(|n| n.parse().expect("number"))
            .collect()
    };
    let native = listing(&mut srv);
    assert_eq!(native, fds(pid));
    let mut w = Window::start(&[], pid);
    w.wait_for("attached to process");
    // Closes during the window: their numbers hold tombstones (and the
    // source is planted), which /proc shows to anyone else.
    cmd(&mut srv, "busy 5");
    cmd(&mut srv, "uac");
    let tombs: Vec<i32> = fds(pid)
        .into_iter()
        .filter(|&f| is_tombstone(pid, f))
        .collect();
    assert!(tombs.len() >= 6, "{tombs:?}");
    // The process itself lists only its own (each listing's directory fd
    // is quarantined too once closed: still hidden in the next one).
    assert_eq!(listing(&mut srv), native);
    assert_eq!(listing(&mut srv), native);
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_left_alone(pid, &native);
    assert_eq!(listing(&mut srv), native);
}

/// Yama's ptrace_scope, when the kernel has Yama.
fn yama_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[test]
fn attach_refused_by_yama_for_a_non_descendant() {
    let test = "attach_refused_by_yama_for_a_non_descendant";
    // Whether the kernel has Yama, and how it is set, is the machine's
    // (not something .ci/run installs): a plain skip, as tests/close.rs
    // does without /dev/fuse.
    let Some(scope) = yama_scope() else {
        eprintln!("SKIPPED {test}: this kernel has no Yama (/proc/sys/kernel/yama/ptrace_scope)");
        return;
    };
    if scope == 0 {
        eprintln!(
            "SKIPPED {test}: kernel.yama.ptrace_scope is 0 here (classic ptrace permissions)"
        );
        return;
    }
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        skip(test, "setpriv is not installed");
        return;
    }
    // The server is handles's sibling, never its descendant; as root both
    // run as nobody, so that only Yama stands in the way.
    let as_nobody = |program: PathBuf| -> Command {
        if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    let mut server_cmd = as_nobody(fixture("attach_server"));
    server_cmd.arg("1");
    let mut srv = spawn_ready(server_cmd);
    let pid = srv.pid();
    let before = fds(pid);
    let out = as_nobody(handles())
        .args(["attach", "--duration", "0.2", &pid.to_string()])
        .output()
        .expect("run handles");
    let stderr = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("kernel.yama.ptrace_scope is {scope}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_left_alone(pid, &before);
    cmd(&mut srv, "req 1");
}

#[test]
fn poll_select_and_reopen_of_a_closed_number_answer_as_natively() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    // POLLNVAL (0x20) and EBADF natively.
    assert_eq!(cmd(&mut srv, "poll"), vec!["poll=32".to_string()]);
    assert_eq!(cmd(&mut srv, "select"), vec!["select=EBADF".to_string()]);
    assert_eq!(cmd(&mut srv, "reopen"), vec!["reopen=ENOENT".to_string()]);
    let mut w = Window::start(&[], pid);
    w.wait_for("attached to process");
    // The numbers hold tombstones now, which would poll and select ready
    // and reopen as `/`.
    assert_eq!(cmd(&mut srv, "poll"), vec!["poll=32".to_string()]);
    assert_eq!(cmd(&mut srv, "select"), vec!["select=EBADF".to_string()]);
    assert_eq!(cmd(&mut srv, "reopen"), vec!["reopen=ENOENT".to_string()]);
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // poll() on a closed number is a question; select() on one is a use.
    let report = section(&stderr, "handles: <== policy exception: bad-handle");
    // glibc's select() is pselect6.
    assert!(
        report.contains("syscall select(") || report.contains("syscall pselect6("),
        "{stderr}"
    );
    assert!(stderr.contains("ERROR SUMMARY: 1 exception"), "{stderr}");
    assert_left_alone(pid, &before);
}

#[test]
fn handles_received_through_scm_rights_are_followed() {
    let mut srv = server(1);
    let pid = srv.pid();
    let before = fds(pid);
    let mut w = Window::start(&["--error-exitcode", "9"], pid);
    w.wait_for("attached to process");
    let received: i32 = cmd(&mut srv, "recv")
        .iter()
        .find_map(|l| l.strip_prefix("recv=")?.parse().ok())
        .expect("recv line");
    assert!(received > 2);
    let h = row(&table_json(pid), received);
    assert_eq!(h["created"]["by"], "scm_rights", "{h:#}");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(9), "{stderr}");
    let suspects = section(
        &stderr,
        &format!("handles: ==== leak suspects: process {pid} (attach_server) holds 1 handle"),
    );
    assert!(suspects.contains("created by recvmsg() at"), "{stderr}");
    assert!(
        suspects.contains(&format!(
            "in receive_one at {}:{}",
            fixture_src(),
            line_of("recv")
        )),
        "{stderr}"
    );
    assert!(
        suspects.contains(&format!("fd {received} chardev")),
        "{stderr}"
    );
    assert_left_alone(pid, &before.union(&[received].into()).copied().collect());
}

#[test]
fn a_child_forked_during_the_window_has_its_table_too() {
    let mut srv = server(1);
    let pid = srv.pid();
    let mut w = Window::start(&["--quarantine", "0"], pid);
    w.wait_for("attached to process");
    cmd(&mut srv, "req 3");
    let parent_leak: i32 = {
        let t = table_json(pid);
        t["handles"]
            .as_array()
            .expect("handles")
            .iter()
            .find(|h| h["created"]["by"] == "openat")
            .and_then(|h| h["fd"].as_i64())
            .expect("the parent's window handle") as i32
    };
    let child: i32 = cmd(&mut srv, "fork")
        .iter()
        .find_map(|l| l.strip_prefix("child=")?.parse().ok())
        .expect("child pid");
    let _reap = KillOnDrop(child);
    // The child leaks one of its own as soon as it runs.
    let mut tries = 0;
    while fds(child).len() <= fds(pid).len() {
        tries += 1;
        assert!(tries < 200, "the child never opened its handle");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = table_json(child);
    assert_eq!(t["source"], "supervisor", "{t:#}");
    let leak_line = line_of("leak");
    let made_in_leak_one = |h: &serde_json::Value| {
        h["created"]["frames"].as_array().is_some_and(|f| {
            f.iter()
                .any(|f| f["function"] == "leak_one" && f["line"] == leak_line)
        })
    };
    // Its copy of the parent's window handle keeps the parent's creation.
    assert!(made_in_leak_one(&row(&t, parent_leak)), "{t:#}");
    let own: Vec<serde_json::Value> = t["handles"]
        .as_array()
        .expect("handles")
        .iter()
        .filter(|h| h["fd"] != parent_leak && made_in_leak_one(h))
        .cloned()
        .collect();
    assert_eq!(own.len(), 1, "{t:#}");
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Only its own is the child's suspect.
    assert!(
        stderr.contains(&format!(
            "handles: ==== leak suspects: process {child} (attach_server) holds 1 handle"
        )),
        "{stderr}"
    );
    assert_eq!(table_json(child)["source"], "proc");
}

#[test]
fn a_process_that_makes_no_syscall_gets_its_tombstones_released() {
    let mut srv = spawn_ready(Command::new(fixture("attach_spin")));
    let pid = srv.pid();
    let before = fds(pid);
    // No stacks: the time to detach is not spent symbolizing.
    let mut w = Window::start(&["--stack-depth", "0"], pid);
    w.wait_for("attached to process");
    send(&mut srv, "go");
    assert_eq!(srv.next_line().as_deref(), Some("spinning"));
    let tombs: Vec<i32> = fds(pid)
        .into_iter()
        .filter(|&f| is_tombstone(pid, f))
        .collect();
    assert_eq!(tombs.len(), 6, "five closed numbers and the source");
    // Its only thread is in its loop: no syscall stop will come.
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    w.signal(libc::SIGINT);
    let (status, stderr) = w.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("did not stop"), "{stderr}");
    // Released at once from its interrupt stop, not given up on after the
    // detach's 2.5 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_left_alone(pid, &before);
    // It runs on with its registers as they were.
    // SAFETY: kill(2) of the fixture this test started.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let rest = srv.rest_of_stdout();
    let listed = before
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(rest.contains(&format!("fds={listed} \n")), "{rest}");
    assert!(rest.contains("check=ok"), "{rest}");
    let status = srv.child.wait().expect("wait fixture");
    assert_eq!(common::ending(&status), "exit 0");
}
