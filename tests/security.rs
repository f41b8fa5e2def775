//! Security (issue 6): set-user-ID programs under `handles run` and under
//! the shim, who may read a process's shared table, and programs that
//! scribble over their own shim table.
//!
//! Most of these need root (to make set-user-ID files and to switch to
//! uid 65534 with setpriv); without root they print why and pass. Every
//! child runs under a deadline.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{describe, fixture, repo_root};

const NOBODY: u32 = 65534;
const DEADLINE: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! needs_root {
    () => {
        if !is_root() {
            common::skip(module_path!(), "needs root (set-user-ID files, setpriv)");
            return;
        }
    };
}

/// Waits for `child` at most `limit`; kills it and panics past that.
fn wait_deadline(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: no exit within {limit:?} (a hang)");
            }
        }
    }
}

/// Runs `cmd` to completion under [`DEADLINE`], collecting its output.
fn output(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_deadline(&mut child, DEADLINE, what);
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// The shim as built for this workspace (cargo test does not build a
/// cdylib for a bin package's tests).
fn built_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "handles-shim"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p handles-shim failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        let p = target.join("debug/libhandles_shim.so");
        assert!(p.exists(), "{} missing after the build", p.display());
        p
    })
}

/// A directory under /tmp that uid 65534 can traverse, holding copies of
/// `handles`, the shim and the fixtures (the work tree may not be
/// readable by 65534).
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = PathBuf::from(format!(
            "/tmp/handles-security-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create sandbox");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let s = Sandbox { dir };
        s.link(&common::handles(), "handles");
        s.link(built_shim(), "libhandles_shim.so");
        s
    }

    /// A hard link (same file system) or else a copy, mode 0755.
    fn link(&self, from: &Path, name: &str) {
        let to = self.dir.join(name);
        if std::fs::hard_link(from, &to).is_err() {
            self.copy(from, name, 0o755);
        }
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn copy(&self, from: &Path, name: &str, mode: u32) -> PathBuf {
        let to = self.dir.join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod");
        to
    }

    fn handles(&self) -> PathBuf {
        self.dir.join("handles")
    }

    fn shim(&self) -> PathBuf {
        self.dir.join("libhandles_shim.so")
    }

    /// A copy of fixture `name`, owned by `uid`, with `mode` (chown first:
    /// chown clears the set-ID bits).
    fn program(&self, name: &str, uid: u32, mode: u32) -> PathBuf {
        let p = self.copy(&fixture(name), name, 0o755);
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).expect("chown");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    /// `cmd` run as uid/gid 65534 with no supplementary groups.
    fn as_nobody<S: AsRef<OsStr>>(&self, prog: &Path, args: &[S]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(prog)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("XDG_RUNTIME_DIR")
            .env("HANDLES_SHIM", self.shim());
        c
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `key=value` words the sec_ids fixture prints.
fn ids(o: &Output) -> BTreeMap<String, i64> {
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The stderr lines that are privilege notices.
fn notices(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| {
            l.starts_with("handles: ")
                && (l.contains(" is set-") || l.contains(" is a file-capability program"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn a_setuid_program_under_handles_run_by_an_unprivileged_user_runs_unprivileged_without_the_shim() {
    needs_root!();
    let sb = Sandbox::new("suid-nobody");
    let prog = sb.program("sec_ids", 0, 0o4755);
    let handles = sb.handles();

    // Directly, and as a descendant of a shell.
    let direct = output(
        sb.as_nobody(
            &handles,
            &[
                OsStr::new("run"),
                OsStr::new("--shim"),
                OsStr::new("--"),
                prog.as_os_str(),
            ],
        ),
        "handles run --shim -- sec_ids (setuid root) as 65534",
    );
    let script = format!("{}; exit $?", prog.display());
    let nested = output(
        sb.as_nobody(&handles, &["run", "--shim", "--", "/bin/sh", "-c", &script]),
        "handles run --shim -- sh -c sec_ids (setuid root) as 65534",
    );
    for o in [&direct, &nested] {
        assert_eq!(
            o.status.code(),
            Some(7),
            "the program's status\n{}",
            describe(o)
        );
        let v = ids(o);
        assert_eq!(v.get("ruid"), Some(&i64::from(NOBODY)), "{}", describe(o));
        assert_eq!(
            v.get("euid"),
            Some(&i64::from(NOBODY)),
            "no privileges under ptrace\n{}",
            describe(o)
        );
        assert_eq!(
            v.get("table"),
            Some(&0),
            "the shim stays off\n{}",
            describe(o)
        );
        // ld.so did load it (AT_SECURE is 0 without the privileges): the
        // shim's own check of the file is what keeps it off.
        assert_eq!(v.get("lib"), Some(&1), "{}", describe(o));
        let n = notices(o);
        assert_eq!(n.len(), 1, "exactly one notice\n{}", describe(o));
        assert_eq!(
            n[0],
            format!(
                "handles: {} is set-user-ID: under handles run (ptrace, no_new_privs) it runs without its privileges, and the shim is not loaded into it",
                prog.display()
            ),
            "{}",
            describe(o)
        );
    }
}

#[test]
fn the_same_program_without_the_setuid_bit_gets_the_shim_and_no_notice() {
    // The control for the test above: the shim does load in an ordinary
    // program run the same way, and nothing is said.
    needs_root!();
    let sb = Sandbox::new("plain-nobody");
    let prog = sb.program("sec_ids", 0, 0o755);
    let o = output(
        sb.as_nobody(
            &sb.handles(),
            &[
                OsStr::new("run"),
                OsStr::new("--shim"),
                OsStr::new("--"),
                prog.as_os_str(),
            ],
        ),
        "handles run --shim -- sec_ids as 65534",
    );
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let v = ids(&o);
    assert_eq!(v.get("euid"), Some(&i64::from(NOBODY)), "{}", describe(&o));
    assert_eq!(
        v.get("table"),
        Some(&1),
        "the shim is active\n{}",
        describe(&o)
    );
    assert!(notices(&o).is_empty(), "{}", describe(&o));
}

#[test]
fn a_setuid_program_under_handles_run_by_root_gets_a_true_notice() {
    // Root's tracer could let the kernel honour set-user-ID, but
    // `handles run` sets no_new_privs for its seccomp filter, which never
    // does. Whatever happened, the notice must say it, and the shim stays
    // off (a set-ID image).
    needs_root!();
    let sb = Sandbox::new("suid-root");
    let prog = sb.program("sec_ids", NOBODY, 0o4755);
    let mut cmd = Command::new(sb.handles());
    cmd.args([
        OsStr::new("run"),
        OsStr::new("--shim"),
        OsStr::new("--"),
        prog.as_os_str(),
    ])
    .env("HANDLES_SHIM", sb.shim());
    let o = output(cmd, "handles run --shim -- sec_ids (setuid 65534) as root");
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let v = ids(&o);
    assert_eq!(v.get("ruid"), Some(&0), "{}", describe(&o));
    assert_eq!(
        v.get("table"),
        Some(&0),
        "the shim stays off\n{}",
        describe(&o)
    );
    let n = notices(&o);
    assert_eq!(n.len(), 1, "{}", describe(&o));
    let prefix = format!("handles: {} is set-user-ID: ", prog.display());
    assert!(n[0].starts_with(&prefix), "{}", describe(&o));
    if v.get("euid") == Some(&i64::from(NOBODY)) {
        assert!(
            n[0].contains("it runs with its privileges (uid 0 euid 65534"),
            "{}",
            describe(&o)
        );
    } else {
        assert_eq!(v.get("euid"), Some(&0), "{}", describe(&o));
        assert!(
            n[0].contains("it runs without its privileges"),
            "{}",
            describe(&o)
        );
    }
    assert!(
        n[0].ends_with(", and the shim is not loaded into it"),
        "{}",
        describe(&o)
    );
}

#[test]
fn an_exec_after_chmod_or_through_a_script_gets_the_notice_the_file_deserves() {
    // The supervisor keeps what it learnt of an exec'd file by path; a
    // chmod between two execs of one path, and a script (whose path is
    // not the image: its interpreter is) must still be told right.
    needs_root!();
    let sb = Sandbox::new("exec-cache");
    let prog = sb.program("sec_ids", NOBODY, 0o755);
    let script = sb.dir.join("via-script");
    std::fs::write(&script, format!("#!{}\n", prog.display())).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let line = format!(
        "{p}; {p}; chmod 4755 {p}; {p}; {s}; {s}; chmod 755 {p}; {s}; {p}; exit 0",
        p = prog.display(),
        s = script.display()
    );
    let mut cmd = Command::new(sb.handles());
    cmd.args(["run", "--shim", "--", "/bin/sh", "-c", &line])
        .env("HANDLES_SHIM", sb.shim());
    let o = output(
        cmd,
        "handles run --shim -- sh -c (sec_ids before and after chmod)",
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let n = notices(&o);
    // Set-user-ID for the third exec and the two through the script: the
    // notice names the image, the interpreter.
    assert_eq!(n.len(), 3, "{}", describe(&o));
    let prefix = format!("handles: {} is set-user-ID: ", prog.display());
    assert!(n.iter().all(|l| l.starts_with(&prefix)), "{}", describe(&o));
}

#[test]
fn a_file_capability_program_gets_a_notice_and_no_shim() {
    needs_root!();
    let sb = Sandbox::new("fcaps");
    let prog = sb.program("sec_ids", 0, 0o755);
    // struct vfs_cap_data, revision 2: CAP_NET_RAW (13) permitted and
    // effective.
    let mut caps = Vec::new();
    for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        caps.extend_from_slice(&w.to_le_bytes());
    }
    let path = std::ffi::CString::new(prog.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: setxattr with NUL-terminated strings and a live buffer.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            caps.as_ptr().cast(),
            caps.len(),
            0,
        )
    };
    if r != 0 {
        eprintln!(
            "skipped: cannot set file capabilities here: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let o = output(
        sb.as_nobody(
            &sb.handles(),
            &[
                OsStr::new("run"),
                OsStr::new("--shim"),
                OsStr::new("--"),
                prog.as_os_str(),
            ],
        ),
        "handles run --shim -- sec_ids (cap_net_raw) as 65534",
    );
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    assert_eq!(ids(&o).get("table"), Some(&0), "{}", describe(&o));
    let n = notices(&o);
    assert_eq!(n.len(), 1, "{}", describe(&o));
    assert_eq!(
        n[0],
        format!(
            "handles: {} is a file-capability program: under handles run (ptrace, no_new_privs) it runs without its privileges, and the shim is not loaded into it",
            prog.display()
        ),
        "{}",
        describe(&o)
    );
}

#[test]
fn natively_ld_so_keeps_the_shim_out_of_a_setuid_program() {
    // ld.so's own rule (secure mode ignores an LD_PRELOAD path with a
    // slash); here only asserted.
    needs_root!();
    let sb = Sandbox::new("suid-native");
    let prog = sb.program("sec_ids", 0, 0o4755);
    let mut cmd = sb.as_nobody(
        Path::new("env"),
        &[format!("LD_PRELOAD={}", sb.shim().display())],
    );
    cmd.arg(&prog);
    let o = output(cmd, "LD_PRELOAD=shim sec_ids (setuid root) as 65534");
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let v = ids(&o);
    assert_eq!(v.get("ruid"), Some(&i64::from(NOBODY)), "{}", describe(&o));
    assert_eq!(
        v.get("euid"),
        Some(&0),
        "set-user-ID honoured\n{}",
        describe(&o)
    );
    assert_eq!(v.get("table"), Some(&0), "{}", describe(&o));
    assert_eq!(v.get("lib"), Some(&0), "not even loaded\n{}", describe(&o));
}

/// A running sec_scribble.
struct Scribbler {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    pid: i32,
    table: Option<i32>,
}

/// The fd of `pid`'s shim table: its memfd opened for reading and writing
/// (the shim's tombstones are O_PATH fds on the same memfd).
fn table_fd(pid: i32) -> Option<i32> {
    let want = format!("/memfd:handles-table:{pid} (deleted)");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read_link(e.path()).ok()?.to_str()? == want).then_some(fd)
        })
        .find(|fd| {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .ok()
                .and_then(|i| {
                    i.lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .and_then(|f| u64::from_str_radix(f.trim(), 8).ok())
                })
                .is_some_and(|flags| flags & libc::O_PATH as u64 == 0)
        })
}

impl Scribbler {
    fn start(mut cmd: Command, what: &str) -> Scribbler {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            loop {
                let mut l = String::new();
                match stdout.read_line(&mut l) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = l.trim_end().to_string();
                        let done = l == "READY";
                        lines.push(l);
                        if done {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(lines);
            stdout
        });
        let lines = match rx.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: no READY within {DEADLINE:?}");
            }
        };
        let stdout = reader.join().expect("reader");
        let get = |k: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(k).map(str::to_string))
        };
        assert_eq!(
            lines.last().map(String::as_str),
            Some("READY"),
            "{what}: {lines:?}"
        );
        let pid = get("pid=").and_then(|p| p.parse().ok()).expect("pid= line");
        // The fixture writes to the table through the shim's mapping; its
        // fd, hidden from the program, is found here from outside.
        let table = (get("table=").as_deref() == Some("mapped"))
            .then(|| table_fd(pid))
            .flatten();
        Scribbler {
            child,
            stdout,
            pid,
            table,
        }
    }

    /// Lets it go on and returns how it ended (under the deadline).
    fn finish(mut self, what: &str) -> (ExitStatus, String) {
        if let Some(mut i) = self.child.stdin.take() {
            let _ = i.write_all(b"go\n");
        }
        let status = wait_deadline(&mut self.child, DEADLINE, what);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        (status, err)
    }
}

impl Drop for Scribbler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/PID/fd` as (fd, link target, is O_PATH).
fn proc_fds(pid: i32) -> BTreeMap<i32, (String, bool)> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
    {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(t) = std::fs::read_link(e.path()) else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0);
        m.insert(
            fd,
            (t.to_string_lossy().into_owned(), flags & 0o10000000 != 0),
        );
    }
    m
}

/// `handles <pid>`, `--json` and `-l` on a process that scribbled its
/// table: none crashes or hangs, and the rows are /proc's.
fn inspect_scribbled(pid: i32, table: Option<i32>, what: &str) {
    let handles = common::handles();
    for args in [vec![], vec!["-l"]] {
        let mut c = Command::new(&handles);
        c.args(&args).arg(pid.to_string());
        let o = output(c, &format!("{what}: handles {args:?} {pid}"));
        assert_eq!(o.status.code(), Some(0), "{what}\n{}", describe(&o));
    }
    let mut c = Command::new(&handles);
    c.args(["--json", &pid.to_string()]);
    let o = output(c, &format!("{what}: handles --json {pid}"));
    assert_eq!(o.status.code(), Some(0), "{what}\n{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let rows: BTreeMap<i32, String> = v["processes"][0]["handles"]
        .as_array()
        .expect("handles array")
        .iter()
        .map(|h| {
            (
                h["fd"].as_i64().expect("fd") as i32,
                h["target"].as_str().expect("target").to_string(),
            )
        })
        .collect();
    let fds = proc_fds(pid);
    for (fd, target) in &rows {
        assert_eq!(
            fds.get(fd).map(|(t, _)| t),
            Some(target),
            "{what}: row fd {fd} is not what /proc says\nrows {rows:?}\n/proc {fds:?}"
        );
    }
    for (fd, (target, o_path)) in &fds {
        // Hidden: the table itself, and tombstones (O_PATH fds) the table
        // may call closed. Nothing else.
        if Some(*fd) == table || *o_path {
            continue;
        }
        assert_eq!(
            rows.get(fd),
            Some(target),
            "{what}: fd {fd} ({target}) is missing\nrows {rows:?}\n/proc {fds:?}"
        );
    }
    assert!(
        table.is_none_or(|t| !rows.contains_key(&t)),
        "{what}: the table's own fd is listed"
    );
}

const MODES: [&str; 7] = [
    "none", "magic", "capacity", "slots", "seq", "hide", "random",
];

#[test]
fn a_program_that_scribbles_on_its_own_shim_table_is_still_inspected_from_proc() {
    let prog = fixture("sec_scribble");
    let shim = built_shim();
    for mode in MODES {
        let what = format!("LD_PRELOAD=shim sec_scribble {mode}");
        let mut cmd = Command::new(&prog);
        cmd.arg(mode).env("LD_PRELOAD", shim);
        let s = Scribbler::start(cmd, &what);
        assert!(s.table.is_some(), "{what}: the shim made a table");
        inspect_scribbled(s.pid, s.table, &what);
        let (status, err) = s.finish(&what);
        assert_eq!(status.code(), Some(3), "{what}: {status:?}\n{err}");
    }
}

#[test]
fn a_supervised_program_that_scribbles_on_its_shim_table_finishes_with_its_status() {
    let prog = fixture("sec_scribble");
    let shim = built_shim();
    for mode in MODES {
        let what = format!("handles run --shim -- sec_scribble {mode}");
        let mut cmd = Command::new(common::handles());
        cmd.args([
            OsStr::new("run"),
            OsStr::new("--shim"),
            OsStr::new("--"),
            prog.as_os_str(),
            OsStr::new(mode),
        ])
        .env("HANDLES_SHIM", shim);
        let s = Scribbler::start(cmd, &what);
        assert!(s.table.is_some(), "{what}: the shim made a table");
        inspect_scribbled(s.pid, s.table, &what);
        let (status, err) = s.finish(&what);
        assert_eq!(
            status.code(),
            Some(3),
            "{what}: {status:?} (signal {:?})\n{err}",
            status.signal()
        );
    }
}

#[test]
fn another_user_cannot_read_a_process_table() {
    needs_root!();
    let sb = Sandbox::new("table-perm");
    let prog = sb.program("sec_scribble", 0, 0o755);
    let mut cmd = Command::new(&prog);
    cmd.arg("none").env("LD_PRELOAD", sb.shim());
    let s = Scribbler::start(cmd, "root's sec_scribble");
    let table = s.table.expect("the shim made a table");
    let pid = s.pid.to_string();

    // Root (who may ptrace it) reads it; 65534 gets the permission-denied
    // exit code.
    let mut c = Command::new(sb.handles());
    c.arg(&pid);
    let o = output(c, "handles PID as root");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let o = output(sb.as_nobody(&sb.handles(), &[&pid]), "handles PID as 65534");
    assert_eq!(
        o.status.code(),
        Some(4),
        "exit::PERMISSION\n{}",
        describe(&o)
    );

    // Nor can 65534 open the memfd through /proc.
    let fd_path = format!("/proc/{pid}/fd/{table}");
    assert!(
        std::fs::File::open(&fd_path).is_ok(),
        "root opens {fd_path}"
    );
    let o = output(
        sb.as_nobody(Path::new("cat"), &[&fd_path]),
        "cat /proc/PID/fd/TABLE as 65534",
    );
    assert_ne!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        describe(&o)
    );
    let (status, err) = s.finish("root's sec_scribble");
    assert_eq!(status.code(), Some(3), "{status:?}\n{err}");
}
