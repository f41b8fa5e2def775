//! `handles <pid>`: tables of live processes, checked against /proc and lsof.
//!
//! Every test runs the real `handles` binary against real fixture processes
//! (tests/fixtures/*.c) and checks what a user sees: the table text, the
//! JSON, the debugger views, exit codes and stderr. Expected values come
//! from independent oracles (readlink and fdinfo of /proc/PID/fd, stat(2),
//! lsof), never from the implementation's own code.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Zircon rights (bit values from zircon/rights.h), written out here so that
// the tests do not take them from the implementation.

const ZX_RIGHT_READ: u32 = 1 << 2;
const ZX_RIGHT_WRITE: u32 = 1 << 3;
const ZX_RIGHT_ENUMERATE: u32 = 1 << 8;

const ZX_RIGHT_NAMES: [&str; 25] = [
    "ZX_RIGHT_DUPLICATE",
    "ZX_RIGHT_TRANSFER",
    "ZX_RIGHT_READ",
    "ZX_RIGHT_WRITE",
    "ZX_RIGHT_EXECUTE",
    "ZX_RIGHT_MAP",
    "ZX_RIGHT_GET_PROPERTY",
    "ZX_RIGHT_SET_PROPERTY",
    "ZX_RIGHT_ENUMERATE",
    "ZX_RIGHT_DESTROY",
    "ZX_RIGHT_SET_POLICY",
    "ZX_RIGHT_GET_POLICY",
    "ZX_RIGHT_SIGNAL",
    "ZX_RIGHT_SIGNAL_PEER",
    "ZX_RIGHT_WAIT",
    "ZX_RIGHT_INSPECT",
    "ZX_RIGHT_MANAGE_JOB",
    "ZX_RIGHT_MANAGE_PROCESS",
    "ZX_RIGHT_MANAGE_THREAD",
    "ZX_RIGHT_APPLY_PROFILE",
    "ZX_RIGHT_MANAGE_SOCKET",
    "ZX_RIGHT_OP_CHILDREN",
    "ZX_RIGHT_RESIZE",
    "ZX_RIGHT_ATTACH_VMO",
    "ZX_RIGHT_MANAGE_VMO",
];

fn right_names(rights: u32) -> BTreeSet<String> {
    (0..ZX_RIGHT_NAMES.len())
        .filter(|b| rights & (1 << b) != 0)
        .map(|b| ZX_RIGHT_NAMES[b].to_string())
        .collect()
}

/// Every type name the issue requires, each of which must be accepted by
/// `--type` and listed when an unknown one is given.
const TYPE_NAMES: [&str; 20] = [
    "file",
    "dir",
    "pipe",
    "channel",
    "socket",
    "event",
    "port",
    "timer",
    "signalfd",
    "vmo",
    "process",
    "inotify",
    "fanotify",
    "io_uring",
    "tty",
    "chardev",
    "blockdev",
    "path",
    "unknown",
    "userfaultfd",
];

// ---------------------------------------------------------------------------
// Running `handles`.

fn args<I, S>(a: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: ToString,
{
    a.into_iter().map(|s| s.to_string()).collect()
}

/// Runs `handles ARGS` and insists on exit 0 with nothing on stderr.
fn ok(a: &[String]) -> String {
    let o = run_handles(a);
    assert_no_panic(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "handles {a:?} failed: stdout:\n{}\nstderr:\n{}",
        stdout_of(&o),
        stderr_of(&o)
    );
    assert_eq!(stderr_of(&o), "", "handles {a:?} wrote to stderr");
    stdout_of(&o)
}

fn assert_no_panic(o: &Output) {
    let e = stderr_of(o);
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "handles panicked:\n{e}"
    );
    // A signal death (abort, SIGSEGV) has no exit code.
    assert!(o.status.code().is_some(), "handles died of a signal: {e}");
}

/// A failure: exactly `code`, exactly one line on stderr that contains
/// every one of `needles` (case-insensitively), no panic.
fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    assert_no_panic(o);
    let e = stderr_of(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}; stdout:\n{}\nstderr:\n{e}",
        stdout_of(o)
    );
    assert_eq!(
        e.lines().count(),
        1,
        "expected a one-line error message, got:\n{e}"
    );
    for n in needles {
        assert!(
            e.to_lowercase().contains(&n.to_lowercase()),
            "stderr {e:?} does not mention {n:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Parsing what `handles` prints.

/// One row of the short table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    handle: u32,
    koid: u64,
    rkoid: u64,
    rights: u32,
    ty: String,
}

impl Row {
    /// The fd of an unmanaged process's handle: the value is `(fd << 2) | 3`.
    fn fd(&self) -> i32 {
        assert_eq!(self.handle & 3, 3, "handle {:#x}: low bits", self.handle);
        (self.handle >> 2) as i32
    }
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

/// Parses a short table and checks its format to the character: the header
/// `    handle  <koid> <rkoid>     rights type` with koid/rkoid right-aligned
/// to the widest value shown, rows `0x%08x: koid rkoid 0x%08x type` with a
/// blank rkoid for 0, and the footer `N handles`.
fn parse_short(text: &str) -> Vec<Row> {
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "table too short:\n{text}");
    let header = lines[0];
    let rest = header
        .strip_prefix("    handle  ")
        .unwrap_or_else(|| panic!("header {header:?} does not start with the handle column"));
    let kw = rest.find("koid").expect("koid column") + 4;
    assert!(
        rest[..kw - 4].chars().all(|c| c == ' '),
        "header {header:?}"
    );
    let rest = rest[kw..].strip_prefix(' ').expect("space after koid");
    let rw = rest.find("rkoid").expect("rkoid column") + 5;
    assert!(
        rest[..rw - 5].chars().all(|c| c == ' '),
        "header {header:?}"
    );
    assert_eq!(&rest[rw..], "     rights type", "header {header:?}");

    let footer = *lines.last().unwrap();
    let body = &lines[1..lines.len() - 1];
    assert_eq!(
        footer,
        format!("{} handles", body.len()),
        "footer of:\n{text}"
    );

    let mut rows = Vec::new();
    for line in body {
        let handle_txt = &line[..10];
        assert!(handle_txt.starts_with("0x"), "row {line:?}");
        let handle = u32::from_str_radix(&handle_txt[2..], 16).expect("hex handle");
        let koid_txt = line[12..12 + kw].trim_start();
        let koid: u64 = koid_txt
            .parse()
            .unwrap_or_else(|_| panic!("koid in {line:?}"));
        let rk = line[12 + kw + 1..12 + kw + 1 + rw].trim_start();
        let rkoid: u64 = if rk.is_empty() {
            0
        } else {
            rk.parse().unwrap_or_else(|_| panic!("rkoid in {line:?}"))
        };
        assert_ne!(rk, "0", "a zero rkoid must be blank: {line:?}");
        let at = 12 + kw + 1 + rw + 1;
        let rights =
            u32::from_str_radix(line[at..at + 10].strip_prefix("0x").expect("0x rights"), 16)
                .expect("hex rights");
        let ty = line[at + 11..].to_string();
        assert!(!ty.is_empty() && !ty.contains(' '), "type in {line:?}");
        let row = Row {
            handle,
            koid,
            rkoid,
            rights,
            ty,
        };
        // Re-render with the documented format: any other spacing, case or
        // padding makes the line differ.
        let rk_txt = if rkoid == 0 {
            String::new()
        } else {
            rkoid.to_string()
        };
        assert_eq!(
            *line,
            format!(
                "{:#010x}: {:>kw$} {:>rw$} {:#010x} {}",
                row.handle, row.koid, rk_txt, row.rights, row.ty
            ),
            "row format"
        );
        rows.push(row);
    }
    // Widths are those of the widest value shown, never wider.
    let want_kw = rows
        .iter()
        .map(|r| digits(r.koid))
        .max()
        .unwrap_or(0)
        .max(4);
    let want_rw = rows
        .iter()
        .filter(|r| r.rkoid != 0)
        .map(|r| digits(r.rkoid))
        .max()
        .unwrap_or(0)
        .max(5);
    assert_eq!(kw, want_kw, "koid column width in:\n{text}");
    assert_eq!(rw, want_rw, "rkoid column width in:\n{text}");
    rows
}

/// One row of the long table (the columns the tests look at).
#[derive(Debug)]
struct LongRow {
    fd: i32,
    handle: u32,
    ty: String,
    flags: Vec<String>,
    description: String,
}

/// Parses `handles -l` output: the `process` line, the header, the rows and
/// `N handles, M objects`. Returns (process line, rows, N, M).
fn parse_long(text: &str) -> (String, Vec<LongRow>, usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "long table too short:\n{text}");
    let header = lines[1];
    let col = |name: &str| {
        header
            .find(&format!(" {name} "))
            .or_else(|| header.find(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
            + 1
    };
    let (type_at, flags_at, desc_at) = (col("type"), col("flags"), col("description"));
    assert!(header.trim_start().starts_with("fd "), "header {header:?}");
    let footer = *lines.last().unwrap();
    let (n, m) = footer
        .strip_suffix(" objects")
        .and_then(|f| f.split_once(" handles, "))
        .unwrap_or_else(|| panic!("footer {footer:?}"));
    let rows: Vec<LongRow> = lines[2..lines.len() - 1]
        .iter()
        .map(|l| {
            let mut words = l.split_whitespace();
            let fd = words.next().unwrap().parse().expect("fd column");
            let h = words.next().unwrap().trim_end_matches(':');
            LongRow {
                fd,
                handle: u32::from_str_radix(h.trim_start_matches("0x"), 16).expect("handle"),
                ty: l[type_at..flags_at].trim().to_string(),
                flags: l[flags_at..desc_at]
                    .trim()
                    .split('|')
                    .map(str::to_string)
                    .collect(),
                description: l[desc_at..].to_string(),
            }
        })
        .collect();
    (
        lines[0].to_string(),
        rows,
        n.parse().unwrap(),
        m.parse().unwrap(),
    )
}

fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"))
}

// ---------------------------------------------------------------------------
// Independent oracles: what /proc and stat(2) say.

fn proc_fds(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

fn link(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .expect("readlink /proc/PID/fd/N")
        .to_string_lossy()
        .into_owned()
}

/// stat(2) of what the fd refers to (the magic link is followed).
fn stat_fd(pid: i32, fd: i32) -> fs::Metadata {
    fs::metadata(format!("/proc/{pid}/fd/{fd}")).expect("stat /proc/PID/fd/N")
}

fn fdinfo_field(pid: i32, fd: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// N from `socket:[N]` / `pipe:[N]`.
fn bracketed(target: &str, prefix: &str) -> u64 {
    target
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(":["))
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{target:?} is not {prefix}:[N]"))
}

/// `major:minor` as glibc's major()/minor() compute them.
fn dev_string(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

fn euid() -> u32 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("Uid line")
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        sleep(Duration::from_millis(10));
    }
}

/// Waits until the `handles` process `hpid` has listed `/proc/target/fd`
/// (it holds `/proc/target/fdinfo` open from then on), i.e. it is in the
/// HANDLES_DEBUG_STALL_MS pause between listing and reading.
fn wait_until_listed(hpid: u32, target: i32) {
    let want = format!("/proc/{target}/fdinfo");
    wait_for(
        "handles to list the fd table",
        Duration::from_secs(20),
        || {
            fs::read_dir(format!("/proc/{hpid}/fd"))
                .map(|d| {
                    d.flatten()
                        .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
                })
                .unwrap_or(false)
        },
    );
    // Listing (one getdents) follows the open at once; leave it ample time.
    sleep(Duration::from_millis(200));
}

// ---------------------------------------------------------------------------
// The fixture with one fd of every type.

struct AllTypes {
    run: Running,
}

impl AllTypes {
    fn start() -> AllTypes {
        AllTypes {
            run: spawn_ready(Command::new(fixture("all_types"))),
        }
    }
    fn pid(&self) -> i32 {
        self.run.pid()
    }
    /// The fd the fixture printed as `name=FD`; `None` for a skipped row.
    fn fd(&self, name: &str) -> Option<i32> {
        self.run.value(name).map(|v| v.parse().expect("fd number"))
    }
    fn must(&self, name: &str) -> i32 {
        self.fd(name)
            .unwrap_or_else(|| panic!("fixture printed no {name}="))
    }
    /// Rows the kernel refused to create here, with a note for the log.
    fn skipped(&self, name: &str) -> bool {
        match self.run.value(&format!("{name}_skip")) {
            Some(why) => {
                eprintln!("note: skipping the {name} row: {why}");
                true
            }
            None => false,
        }
    }
}

/// Every fd the fixture names, with the type `handles` must show for it.
const EXPECTED_TYPES: [(&str, &str); 26] = [
    ("file", "file"),
    ("dir", "dir"),
    ("pipe_r", "pipe"),
    ("pipe_w", "pipe"),
    ("chan_a", "channel"),
    ("chan_b", "channel"),
    ("tcp_listen", "socket"),
    ("tcp_client", "socket"),
    ("tcp_server", "socket"),
    ("netlink", "socket"),
    ("eventfd", "event"),
    ("epoll", "port"),
    ("epoll_dup", "port"),
    ("timerfd", "timer"),
    ("signalfd", "signalfd"),
    ("memfd_sealed", "vmo"),
    ("memfd_plain", "vmo"),
    ("pidfd_self", "process"),
    ("pidfd_parent", "process"),
    ("inotify", "inotify"),
    ("fanotify", "fanotify"),
    ("io_uring", "io_uring"),
    ("tty", "tty"),
    ("chardev", "chardev"),
    ("blockdev", "blockdev"),
    ("opath", "path"),
];

fn short_rows(pid: i32, extra: &[&str]) -> Vec<Row> {
    let mut a = args(extra);
    a.push(pid.to_string());
    parse_short(&ok(&a))
}

fn by_fd(rows: &[Row]) -> BTreeMap<i32, Row> {
    rows.iter().map(|r| (r.fd(), r.clone())).collect()
}

/// The identity of the object behind an fd, from /proc alone: the
/// `socket:[N]`/`pipe:[N]` inode, the eventfd-id, (dev, ino) for anything
/// with an inode of its own, and for objects on the shared anonymous inode
/// the open file description (here: the fd, with the fixture's one dup of
/// its epoll folded onto the original).
fn object_key(fx: &AllTypes, fd: i32) -> String {
    let pid = fx.pid();
    let target = link(pid, fd);
    if target.starts_with("socket:[") || target.starts_with("pipe:[") {
        return target;
    }
    if target == "anon_inode:[eventfd]" {
        let id = fdinfo_field(pid, fd, "eventfd-id").expect("eventfd-id");
        return format!("eventfd {id}");
    }
    let st = stat_fd(pid, fd);
    let anon = stat_fd(pid, fx.must("eventfd"));
    if (st.dev(), st.ino()) == (anon.dev(), anon.ino()) {
        let fd = if Some(fd) == fx.fd("epoll_dup") {
            fx.must("epoll")
        } else {
            fd
        };
        return format!("open file description of fd {fd}");
    }
    format!("inode {}:{}", st.dev(), st.ino())
}

// ---------------------------------------------------------------------------
// 1. One fd of every type: type, koid, rkoid, rights.

#[test]
fn every_type_has_the_right_type_koid_rkoid_and_rights() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let rows = by_fd(&short_rows(pid, &[]));
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        proc_fds(pid),
        "one row per fd, in fd order"
    );
    let row = |name: &str| -> &Row {
        let fd = fx.must(name);
        rows.get(&fd)
            .unwrap_or_else(|| panic!("no row for {name} (fd {fd})"))
    };

    // Types.
    for (name, ty) in EXPECTED_TYPES {
        if fx.fd(name).is_none() {
            assert!(
                fx.skipped(name),
                "fixture printed neither {name}= nor {name}_skip="
            );
            continue;
        }
        assert_eq!(row(name).ty, ty, "type of {name}");
    }

    // Koids against readlink, stat and fdinfo.
    for name in [
        "pipe_r",
        "pipe_w",
        "chan_a",
        "chan_b",
        "tcp_listen",
        "tcp_client",
        "tcp_server",
        "netlink",
    ] {
        let target = link(pid, fx.must(name));
        let prefix = if name.starts_with("pipe") {
            "pipe"
        } else {
            "socket"
        };
        assert_eq!(row(name).koid, bracketed(&target, prefix), "koid of {name}");
    }
    for name in [
        "file",
        "dir",
        "memfd_sealed",
        "memfd_plain",
        "tty",
        "chardev",
        "blockdev",
        "opath",
    ] {
        if let Some(fd) = fx.fd(name) {
            assert_eq!(row(name).koid, stat_fd(pid, fd).ino(), "koid of {name}");
        }
    }
    let id: u64 = fdinfo_field(pid, fx.must("eventfd"), "eventfd-id")
        .expect("this kernel prints eventfd-id")
        .parse()
        .unwrap();
    assert_eq!(row("eventfd").koid, id, "eventfd koid is its eventfd-id");

    // Objects with an inode of their own (pidfs pidfds, io_uring on recent
    // kernels) are known by it.
    let anon = stat_fd(pid, fx.must("eventfd"));
    for name in ["pidfd_self", "pidfd_parent", "io_uring"] {
        if let Some(fd) = fx.fd(name) {
            let st = stat_fd(pid, fd);
            if (st.dev(), st.ino()) != (anon.dev(), anon.ino()) {
                assert_eq!(row(name).koid, st.ino(), "koid of {name}");
            }
        }
    }

    // Anonymous objects with no id: one open file description, one koid;
    // distinct objects, distinct koids.
    assert_eq!(row("epoll").koid, row("epoll_dup").koid, "dup of an epoll");
    let anon_names: Vec<&str> = ["epoll", "timerfd", "signalfd", "inotify", "fanotify"]
        .into_iter()
        .filter(|n| fx.fd(n).is_some())
        .collect();
    for a in &anon_names {
        assert_ne!(row(a).koid, 0, "{a} has a koid");
        for (fd, r) in &rows {
            if *fd != fx.must(a) && Some(*fd) != fx.fd("epoll_dup") {
                assert_ne!(r.koid, row(a).koid, "{a} shares its koid with fd {fd}");
            }
        }
    }

    // Related koids.
    assert_eq!(
        row("pipe_r").koid,
        row("pipe_w").koid,
        "pipe ends: one object"
    );
    assert_eq!(row("chan_a").rkoid, row("chan_b").koid, "socketpair peer");
    assert_eq!(row("chan_b").rkoid, row("chan_a").koid, "socketpair peer");
    assert_eq!(row("tcp_client").rkoid, row("tcp_server").koid, "tcp peer");
    assert_eq!(row("tcp_server").rkoid, row("tcp_client").koid, "tcp peer");
    assert_eq!(row("tcp_listen").rkoid, 0, "a listening socket has no peer");
    let pidfs = {
        let st = stat_fd(pid, fx.must("pidfd_self"));
        (st.dev(), st.ino()) != (anon.dev(), anon.ino())
    };
    if pidfs {
        // The fixture's parent is this test process, whose pidfd the
        // fixture holds as pidfd_parent.
        assert_eq!(
            row("pidfd_self").rkoid,
            row("pidfd_parent").koid,
            "a pidfd's rkoid is its process's parent"
        );
    }
    for name in [
        "file",
        "dir",
        "pipe_r",
        "pipe_w",
        "netlink",
        "eventfd",
        "epoll",
        "timerfd",
        "signalfd",
        "memfd_sealed",
        "memfd_plain",
        "chardev",
        "opath",
    ] {
        assert_eq!(row(name).rkoid, 0, "{name} has no related object");
    }

    // Rights.
    let has = |name: &str, bit: u32| row(name).rights & bit != 0;
    assert!(has("pipe_r", ZX_RIGHT_READ) && !has("pipe_r", ZX_RIGHT_WRITE));
    assert!(has("pipe_w", ZX_RIGHT_WRITE) && !has("pipe_w", ZX_RIGHT_READ));
    assert!(
        !has("memfd_sealed", ZX_RIGHT_WRITE),
        "F_SEAL_WRITE removes WRITE"
    );
    assert!(has("memfd_sealed", ZX_RIGHT_READ));
    assert!(has("memfd_plain", ZX_RIGHT_WRITE) && has("memfd_plain", ZX_RIGHT_READ));
    assert!(has("dir", ZX_RIGHT_ENUMERATE));
    assert!(!has("file", ZX_RIGHT_ENUMERATE));
    assert!(
        has("file", ZX_RIGHT_READ) && !has("file", ZX_RIGHT_WRITE),
        "O_RDONLY file"
    );
    assert!(
        has("chardev", ZX_RIGHT_WRITE) && !has("chardev", ZX_RIGHT_READ),
        "O_WRONLY"
    );
    assert!(
        !has("opath", ZX_RIGHT_READ) && !has("opath", ZX_RIGHT_WRITE),
        "O_PATH reads and writes nothing"
    );
}

/// Two fds are the same object exactly when their (koid, dev) pairs are
/// equal (docs/handle-model.md), checked over the whole fixture with JSON.
#[test]
fn equal_koid_and_dev_means_same_object() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let doc = parse_json(&ok(&args(["--json".to_string(), pid.to_string()])));
    let handles = doc["processes"][0]["handles"].as_array().expect("handles");
    let ids: Vec<(i32, (u64, Option<String>), String)> = handles
        .iter()
        .map(|h| {
            let fd = h["fd"].as_i64().unwrap() as i32;
            let id = (
                h["koid"].as_u64().unwrap(),
                h["dev"].as_str().map(str::to_string),
            );
            (fd, id, object_key(&fx, fd))
        })
        .collect();
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_eq!(
                a.1 == b.1,
                a.2 == b.2,
                "fd {} ({}) and fd {} ({}): (koid, dev) {:?} vs {:?}",
                a.0,
                a.2,
                b.0,
                b.2,
                a.1,
                b.1
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 2. The exact format.

#[test]
fn short_table_has_fuchsias_exact_format() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let fds = proc_fds(pid);
    let text = ok(&args([pid]));
    let rows = parse_short(&text);
    assert!(text.ends_with(&format!("\n{} handles\n", fds.len())));
    assert_eq!(rows.len(), fds.len());
    for (r, fd) in rows.iter().zip(&fds) {
        assert_eq!(r.handle, ((*fd as u32) << 2) | 3, "value of fd {fd}");
    }
    // The fixture has both blank and filled rkoids.
    assert!(rows.iter().any(|r| r.rkoid == 0) && rows.iter().any(|r| r.rkoid != 0));
    // The header reads as in the issue.
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("    handle  ") && header.ends_with(" rkoid     rights type"));
}

#[test]
fn a_table_without_handles_says_0_handles() {
    const EMPTY: &str = "    handle  koid rkoid     rights type\n0 handles\n";
    // A filter that matches nothing.
    let fx = AllTypes::start();
    assert_eq!(
        ok(&args(["--type", "userfaultfd", &fx.pid().to_string()])),
        EMPTY
    );
    // A process that closed every fd.
    let mut r = spawn_ready(Command::new(fixture("no_fds")));
    let pid = r.pid();
    wait_for(
        "the fixture to close its fds",
        Duration::from_secs(10),
        || proc_fds(pid).is_empty(),
    );
    assert_eq!(ok(&args([pid])), EMPTY);
    let long = ok(&args(["-l".to_string(), pid.to_string()]));
    assert!(
        long.ends_with("\n0 handles, 0 objects\n"),
        "long view of an empty table:\n{long}"
    );
    assert_eq!(r.rest_of_stdout(), "", "no_fds printed after READY");
}

// ---------------------------------------------------------------------------
// 3. Filters.

#[test]
fn type_filters_show_exactly_their_types_and_r_the_rest() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let all = short_rows(pid, &[]);
    let cases: [(&[&str], &[&str]); 8] = [
        (&["-t"], &["process"]),
        (&["-v"], &["vmo"]),
        (&["-p"], &["port"]),
        (&["-c"], &["channel"]),
        (&["-e"], &["event"]),
        (&["-s"], &["socket"]),
        (&["--type", "file,pipe"], &["file", "pipe"]),
        (
            &["-c", "-s", "--type", "timer"],
            &["channel", "socket", "timer"],
        ),
    ];
    for (flags, types) in cases {
        let shown = short_rows(pid, flags);
        let want: Vec<Row> = all
            .iter()
            .filter(|r| types.contains(&r.ty.as_str()))
            .cloned()
            .collect();
        assert!(!want.is_empty(), "the fixture holds {types:?}");
        assert_eq!(shown, want, "handles {flags:?}");

        let mut rflags = vec!["-r"];
        rflags.extend_from_slice(flags);
        let rest = short_rows(pid, &rflags);
        let want_rest: Vec<Row> = all
            .iter()
            .filter(|r| !types.contains(&r.ty.as_str()))
            .cloned()
            .collect();
        assert_eq!(rest, want_rest, "handles {rflags:?}");
    }
    // Long names work like the short ones.
    assert_eq!(short_rows(pid, &["--vmo"]), short_rows(pid, &["-v"]));
    assert_eq!(
        short_rows(pid, &["--reverse", "--vmo"]),
        short_rows(pid, &["-r", "-v"])
    );
    // The fixture's known fds are where the filters say.
    let fds: BTreeSet<i32> = short_rows(pid, &["-c"]).iter().map(Row::fd).collect();
    assert!(fds.contains(&fx.must("chan_a")) && fds.contains(&fx.must("chan_b")));
    let fds: BTreeSet<i32> = short_rows(pid, &["-s"]).iter().map(Row::fd).collect();
    for n in ["tcp_listen", "tcp_client", "tcp_server", "netlink"] {
        assert!(fds.contains(&fx.must(n)), "-s shows {n}");
    }
}

#[test]
fn every_type_name_is_accepted_and_an_unknown_one_is_a_usage_error() {
    let fx = AllTypes::start();
    let pid = fx.pid().to_string();
    for t in TYPE_NAMES {
        let o = run_handles(["--type", t, &pid]);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "--type {t}: {}", stderr_of(&o));
        for r in parse_short(&stdout_of(&o)) {
            assert_eq!(r.ty, t);
        }
    }
    let o = run_handles(["--type", "file,bogus", &pid]);
    assert_fails(&o, 2, &["bogus"]);
    let e = stderr_of(&o);
    for t in TYPE_NAMES {
        assert!(e.contains(t), "the error lists the valid name {t}: {e}");
    }
    assert_eq!(stdout_of(&o), "", "no table on a usage error");
}

// ---------------------------------------------------------------------------
// 4. The long view.

#[test]
fn long_view_shows_fds_flags_objects_and_descriptions() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let text = ok(&args(["-l".to_string(), pid.to_string()]));
    let (process, rows, n, m) = parse_long(&text);

    assert!(
        process.starts_with(&format!("process {pid} (all_types)")),
        "process line {process:?}"
    );
    let fds = proc_fds(pid);
    assert_eq!(
        rows.iter().map(|r| r.fd).collect::<Vec<_>>(),
        fds,
        "fd column"
    );
    for r in &rows {
        assert_eq!(r.handle, ((r.fd as u32) << 2) | 3, "fd and handle agree");
    }
    assert_eq!(n, fds.len());
    let objects: BTreeSet<String> = fds.iter().map(|&fd| object_key(&fx, fd)).collect();
    assert_eq!(m, objects.len(), "distinct objects in:\n{text}");
    // The pipe's two ends and the epoll dup are one object each; the
    // socketpair's ends are two.
    assert!(m <= n - 2);

    let row = |name: &str| -> &LongRow {
        let fd = fx.must(name);
        rows.iter().find(|r| r.fd == fd).unwrap()
    };
    let flags =
        |name: &str| -> BTreeSet<&str> { row(name).flags.iter().map(String::as_str).collect() };

    // Flags: the pipe is O_NONBLOCK without O_CLOEXEC, the eventfd both, the
    // file O_CLOEXEC only.
    assert!(flags("pipe_r").contains("O_NONBLOCK") && !flags("pipe_r").contains("O_CLOEXEC"));
    assert!(flags("pipe_r").contains("O_RDONLY") && flags("pipe_w").contains("O_WRONLY"));
    assert!(flags("eventfd").contains("O_NONBLOCK") && flags("eventfd").contains("O_CLOEXEC"));
    assert!(flags("file").contains("O_CLOEXEC") && !flags("file").contains("O_NONBLOCK"));
    assert!(flags("opath").contains("O_PATH"));
    assert_eq!(row("memfd_sealed").ty, "vmo");

    // Descriptions.
    let desc = |name: &str| row(name).description.clone();
    assert_eq!(
        desc("file"),
        fx.run.value("file_path").unwrap(),
        "file path"
    );
    assert!(desc("dir").starts_with('/'), "dir: {}", desc("dir"));
    let sealed = desc("memfd_sealed");
    assert!(
        sealed.contains("memfd:sealed_vmo") && sealed.contains("F_SEAL_WRITE"),
        "sealed memfd: {sealed}"
    );
    assert!(sealed.contains("4096"), "memfd size: {sealed}");
    let plain = desc("memfd_plain");
    assert!(
        plain.contains("memfd:plain_vmo") && !plain.contains("F_SEAL_WRITE"),
        "plain memfd: {plain}"
    );
    let ppid = fx.run.value("ppid").unwrap();
    assert!(
        desc("pidfd_self").contains(&format!("pid {pid}")),
        "pidfd: {}",
        desc("pidfd_self")
    );
    assert!(
        desc("pidfd_parent").contains(&format!("pid {ppid}")),
        "pidfd: {}",
        desc("pidfd_parent")
    );
    assert!(
        desc("eventfd").contains("count 5"),
        "eventfd: {}",
        desc("eventfd")
    );
    let watched: BTreeSet<i32> = desc("epoll")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(
        watched,
        BTreeSet::from([fx.must("pipe_r"), fx.must("eventfd")]),
        "epoll watches: {}",
        desc("epoll")
    );
    assert!(
        desc("timerfd").contains("CLOCK_MONOTONIC"),
        "timer: {}",
        desc("timerfd")
    );
    let chan = desc("chan_a");
    assert!(
        chan.contains("unix") && chan.contains(&format!("fd {}", fx.must("chan_b"))),
        "a channel names its peer: {chan}"
    );
    let port = fx.run.value("tcp_port").unwrap();
    assert!(
        desc("tcp_listen").contains(&format!("127.0.0.1:{port}")),
        "tcp: {}",
        desc("tcp_listen")
    );
}

// ---------------------------------------------------------------------------
// 5. JSON.

#[test]
fn json_round_trips_the_short_table() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let rows = short_rows(pid, &[]);
    let doc = parse_json(&ok(&args(["--json".to_string(), pid.to_string()])));
    assert_eq!(doc["schema"], "handles.table.v2");
    assert_eq!(doc["errors"], serde_json::json!([]));
    let procs = doc["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 1);
    let p = &procs[0];
    assert_eq!(p["pid"], pid);
    assert_eq!(p["name"], "all_types");
    assert_eq!(p["complete"], true);
    assert_eq!(p["handle_count"], rows.len());
    let handles = p["handles"].as_array().expect("handles array");
    assert_eq!(handles.len(), rows.len());
    for (h, r) in handles.iter().zip(&rows) {
        assert_eq!(h["fd"], r.fd(), "{h}");
        assert_eq!(h["value"], r.handle, "{h}");
        assert_eq!(h["state"], "open", "{h}");
        assert_eq!(h["koid"], r.koid, "{h}");
        assert_eq!(h["rkoid"], r.rkoid, "{h}");
        assert_eq!(h["rights"], r.rights, "{h}");
        assert_eq!(h["type"], r.ty.as_str(), "{h}");
        let names: BTreeSet<String> = h["rights_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, right_names(r.rights), "{h}");
        assert_eq!(
            h["target"],
            link(pid, r.fd()),
            "target is what readlink says"
        );
    }
    // The long view's footer and the JSON agree on objects.
    let (_, _, _, m) = parse_long(&ok(&args(["-l".to_string(), pid.to_string()])));
    assert_eq!(p["object_count"], m);
    // A pidfs kernel gives the process its own koid: its pidfd's inode.
    if let Some(k) = p["koid"].as_u64() {
        assert_eq!(k, stat_fd(pid, fx.must("pidfd_self")).ino());
    }

    // Filters apply to the JSON as well; an error lands in `errors`.
    let gone = reaped_pid();
    let o = run_handles(args(["--json", "-v", &pid.to_string(), &gone.to_string()]));
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(3));
    let doc = parse_json(&stdout_of(&o));
    let hs = doc["processes"][0]["handles"].as_array().unwrap();
    assert_eq!(hs.len(), 2);
    assert!(hs.iter().all(|h| h["type"] == "vmo"));
    assert_eq!(doc["errors"].as_array().unwrap().len(), 1);
    assert_eq!(doc["errors"][0]["pid"], gone);
}

// ---------------------------------------------------------------------------
// 6. Debugger views.

fn zx_type(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "channel" => "ZX_OBJ_TYPE_CHANNEL",
        "socket" => "ZX_OBJ_TYPE_SOCKET",
        "event" => "ZX_OBJ_TYPE_EVENT",
        "port" => "ZX_OBJ_TYPE_PORT",
        "timer" => "ZX_OBJ_TYPE_TIMER",
        "vmo" => "ZX_OBJ_TYPE_VMO",
        "process" => "ZX_OBJ_TYPE_PROCESS",
        _ => return None,
    })
}

#[test]
fn zxdb_list_view_shows_handle_type_koid() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let rows = short_rows(pid, &[]);
    let text = ok(&args(["--zxdb".to_string(), pid.to_string()]));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["Handle", "Type", "Koid"]);
    let listed: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(listed.len(), rows.len(), "one line per handle:\n{text}");
    for (l, r) in listed.iter().zip(&rows) {
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[0], format!("{:#010x}", r.handle));
        assert!(l[1].starts_with("ZX_OBJ_TYPE_"), "{l:?}");
        if let Some(zx) = zx_type(&r.ty) {
            assert_eq!(l[1], zx, "{} is {zx}", r.ty);
        }
        assert_eq!(l[2], r.koid.to_string());
    }
    // Filters apply here too.
    let v = ok(&args(["--zxdb", "-v", &pid.to_string()]));
    assert_eq!(v.lines().count(), 3, "{v}");
    assert!(v.lines().skip(1).all(|l| l.contains("ZX_OBJ_TYPE_VMO")));
}

/// Parses the detail views: blocks separated by blank lines, `Key  Value`
/// lines with the keys right-aligned, continuation lines with no key.
fn parse_details(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            continue;
        }
        let type_line = lines
            .iter()
            .find(|l| l.trim_start().starts_with("Type "))
            .unwrap_or_else(|| panic!("no Type line in {block:?}"));
        let col = type_line.find("ZX_OBJ_TYPE_").expect("value column");
        let mut fields: Vec<(String, String)> = Vec::new();
        for l in lines {
            let (k, v) = l.split_at(col.min(l.len()));
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                fields.last_mut().expect("continuation").1 += &format!("\n{v}");
            } else {
                fields.push((k.to_string(), v.to_string()));
            }
        }
        out.push(fields);
    }
    out
}

fn field<'a>(d: &'a [(String, String)], key: &str) -> &'a str {
    d.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {d:?}"))
}

#[test]
fn detail_view_by_handle_and_by_koid() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let rows = by_fd(&short_rows(pid, &[]));

    for name in ["pipe_w", "chan_a", "memfd_sealed", "dir"] {
        let r = &rows[&fx.must(name)];
        let text = ok(&args([
            "--handle".to_string(),
            format!("{:#010x}", r.handle),
            pid.to_string(),
        ]));
        let d = parse_details(&text);
        assert_eq!(d.len(), 1, "one handle:\n{text}");
        let d = &d[0];
        assert!(field(d, "Type").starts_with("ZX_OBJ_TYPE_"));
        if let Some(zx) = zx_type(&r.ty) {
            assert_eq!(field(d, "Type"), zx);
        }
        assert_eq!(field(d, "Value"), format!("{:#010x}", r.handle));
        let rights: BTreeSet<String> = field(d, "Rights").lines().map(str::to_string).collect();
        assert_eq!(
            rights,
            right_names(r.rights),
            "Rights, one per line:\n{text}"
        );
        assert_eq!(field(d, "Koid"), r.koid.to_string());
        assert_eq!(field(d, "Related koid"), r.rkoid.to_string());
    }
    let d = ok(&args([
        "--handle".to_string(),
        format!("{:#x}", rows[&fx.must("pipe_w")].handle),
        pid.to_string(),
    ]));
    assert!(
        d.contains("ZX_RIGHT_WRITE") && !d.contains("ZX_RIGHT_READ"),
        "{d}"
    );
    // A decimal value selects the same handle.
    let dec = ok(&args([
        "--handle".to_string(),
        rows[&fx.must("pipe_w")].handle.to_string(),
        pid.to_string(),
    ]));
    assert_eq!(dec, d);

    // By koid: both ends of the pipe, and only them.
    let pipe = &rows[&fx.must("pipe_r")];
    let text = ok(&args([
        "--koid".to_string(),
        pipe.koid.to_string(),
        pid.to_string(),
    ]));
    let d = parse_details(&text);
    let values: BTreeSet<String> = d.iter().map(|f| field(f, "Value").to_string()).collect();
    let want: BTreeSet<String> = [fx.must("pipe_r"), fx.must("pipe_w")]
        .iter()
        .map(|fd| format!("{:#010x}", ((*fd as u32) << 2) | 3))
        .collect();
    assert_eq!(values, want, "--koid of the pipe:\n{text}");
    // A channel's detail names its peer.
    let chan = &rows[&fx.must("chan_a")];
    let d = parse_details(&ok(&args([
        "--koid".to_string(),
        chan.koid.to_string(),
        pid.to_string(),
    ])));
    assert_eq!(d.len(), 1);
    assert_eq!(
        field(&d[0], "Related koid"),
        rows[&fx.must("chan_b")].koid.to_string()
    );
}

#[test]
fn a_handle_or_koid_not_in_the_table_exits_1() {
    let fx = AllTypes::start();
    let pid = fx.pid().to_string();
    let absent_fd = proc_fds(fx.pid()).last().unwrap() + 1000;
    let value = format!("{:#010x}", ((absent_fd as u32) << 2) | 3);
    let o = run_handles(["--handle", &value, &pid]);
    assert_fails(&o, 1, &["no handle", &value]);
    assert_eq!(stdout_of(&o), "");

    let koids: BTreeSet<u64> = short_rows(fx.pid(), &[]).iter().map(|r| r.koid).collect();
    let absent_koid = (1u64..)
        .map(|k| k * 7919)
        .find(|k| !koids.contains(k))
        .unwrap();
    let o = run_handles(["--koid", &absent_koid.to_string(), &pid]);
    assert_fails(&o, 1, &["koid", &absent_koid.to_string()]);
    assert_eq!(stdout_of(&o), "");

    // Present in the table but hidden by a filter: still not found.
    let pipe = fx.must("pipe_r");
    let o = run_handles(["-v", "--handle", &format!("{:#x}", (pipe << 2) | 3), &pid]);
    assert_fails(&o, 1, &["no handle"]);

    // Not a number at all: a usage error.
    let o = run_handles(["--handle", "zzz", &pid]);
    assert_fails(&o, 2, &["zzz"]);
    let o = run_handles(["--koid", "-", &pid]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// 7. Against lsof.

#[test]
fn hundreds_of_fds_agree_with_lsof() {
    let r = spawn_ready({
        let mut c = Command::new(fixture("many_fds"));
        c.arg("300");
        c
    });
    let pid = r.pid();
    let count: usize = r.value("count").unwrap().parse().unwrap();
    assert!(count >= 300);

    let lsof = Command::new("lsof")
        .args(["-w", "-n", "-P", "-p", &pid.to_string(), "-F", "fi"])
        .output();
    let lsof = match lsof {
        Ok(o) => o,
        Err(e) => panic!("lsof is needed for this test (apt-get install lsof): {e}"),
    };
    // lsof -F: `f<fd>` starts a file, `i<inode>` follows when it has one.
    let mut by_lsof: BTreeMap<i32, Option<u64>> = BTreeMap::new();
    let mut cur: Option<i32> = None;
    for l in stdout_of(&lsof).lines() {
        if let Some(f) = l.strip_prefix('f') {
            cur = f.parse().ok();
            if let Some(fd) = cur {
                by_lsof.insert(fd, None);
            }
        } else if let (Some(i), Some(fd)) = (l.strip_prefix('i'), cur) {
            by_lsof.insert(fd, i.parse().ok());
        }
    }
    let rows = by_fd(&short_rows(pid, &[]));
    assert!(rows.len() >= count + 2, "{} rows", rows.len());
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        by_lsof.keys().copied().collect::<Vec<_>>(),
        "the same fd set as lsof"
    );
    let mut compared = 0;
    for (fd, ino) in &by_lsof {
        let r = &rows[fd];
        if fd > &2 {
            assert!(
                ["pipe", "channel", "file", "dir"].contains(&r.ty.as_str()),
                "fd {fd} is a {}",
                r.ty
            );
            assert!(ino.is_some(), "lsof gives fd {fd} an inode");
        }
        if let Some(ino) = ino {
            assert_eq!(r.koid, *ino, "fd {fd} ({}): koid vs lsof's inode", r.ty);
            compared += 1;
        }
    }
    assert!(compared >= count, "compared only {compared} inodes");
    let types: BTreeSet<&str> = rows.values().map(|r| r.ty.as_str()).collect();
    for t in ["pipe", "channel", "file", "dir"] {
        assert!(types.contains(t), "the mix includes {t}");
    }
}

// ---------------------------------------------------------------------------
// 8. Several pids, threads.

#[test]
fn several_pids_give_one_table_each() {
    let a = spawn_ready({
        let mut c = Command::new(fixture("many_fds"));
        c.arg("10");
        c
    });
    let b = spawn_ready(Command::new(fixture("threaded")));
    let (pa, pb) = (a.pid(), b.pid());
    let head = |pid: i32| {
        let doc = parse_json(&ok(&args(["--json".to_string(), pid.to_string()])));
        let p = &doc["processes"][0];
        match p["koid"].as_u64() {
            Some(k) => format!("process {pid} ({}) koid {k}\n", p["name"].as_str().unwrap()),
            None => format!("process {pid} ({})\n", p["name"].as_str().unwrap()),
        }
    };
    let (ta, tb) = (ok(&args([pa])), ok(&args([pb])));
    let both = ok(&args([pa, pb]));
    assert_eq!(both, format!("{}{ta}\n{}{tb}", head(pa), head(pb)));
    assert!(head(pa).contains("(many_fds)") && head(pb).contains("(threaded)"));

    // A missing pid in the middle: the others are still shown, exit 3.
    let gone = reaped_pid();
    let o = run_handles(args([pa, gone, pb]));
    assert_fails(&o, 3, &["no such process", &gone.to_string()]);
    assert_eq!(stdout_of(&o), both);
}

#[test]
fn a_thread_id_resolves_to_its_process() {
    let r = spawn_ready(Command::new(fixture("threaded")));
    let pid = r.pid();
    let tid: i32 = r.value("tid").unwrap().parse().unwrap();
    assert_eq!(r.value("pid").unwrap(), pid.to_string());
    assert_ne!(tid, pid);
    let o = run_handles(args([tid]));
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let e = stderr_of(&o);
    assert_eq!(e.lines().count(), 1, "one notice: {e}");
    assert!(
        e.contains(&tid.to_string()) && e.contains(&pid.to_string()) && e.contains("thread"),
        "the notice names the thread and its process: {e}"
    );
    assert_eq!(stdout_of(&o), ok(&args([pid])), "the process's table");
    let o = run_handles(args(["--json".to_string(), tid.to_string()]));
    assert_eq!(parse_json(&stdout_of(&o))["processes"][0]["pid"], pid);
}

// ---------------------------------------------------------------------------
// 9. Bad input.

/// The pid of a child that has exited and been reaped.
fn reaped_pid() -> i32 {
    let mut c = Command::new("true").spawn().expect("spawn true");
    let pid = c.id() as i32;
    c.wait().unwrap();
    assert!(!PathBuf::from(format!("/proc/{pid}")).exists());
    pid
}

#[test]
fn a_process_that_does_not_exist_exits_3() {
    let pid = reaped_pid();
    let o = run_handles(args([pid]));
    assert_fails(&o, 3, &["no such process", &pid.to_string()]);
    assert_eq!(stdout_of(&o), "");
    for flag in ["-l", "--zxdb", "--json"] {
        let o = run_handles(args([flag.to_string(), pid.to_string()]));
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(3), "{flag}");
    }
}

#[test]
fn pids_that_are_not_process_ids_are_usage_errors() {
    for bad in ["abc", "12abc", "0", "-1", "-42", "", "1.5", "99999999999"] {
        let o = run_handles(["--", bad]);
        assert_fails(&o, 2, &[]);
        assert!(
            stderr_of(&o).contains(&format!("'{bad}'")),
            "the error quotes {bad:?}: {}",
            stderr_of(&o)
        );
        assert_eq!(stdout_of(&o), "");
    }
    // A negative pid typed without `--` is still a pid, not an unknown flag.
    let o = run_handles(["-7"]);
    assert_fails(&o, 2, &["'-7'"]);
}

#[test]
fn permission_denied_exits_4() {
    let fx = AllTypes::start();
    let pid = fx.pid();
    let o = if euid() == 0 {
        // Run the binary, or a copy of it when the build tree is not
        // reachable by nobody, as uid/gid 65534 against our root-owned
        // fixture.
        let dir = std::env::temp_dir().join(format!("handles-perm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("handles");
        fs::copy(handles(), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        let tools: [Vec<String>; 2] = [
            args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]),
            args(["runuser", "-u", "nobody", "--"]),
        ];
        let mut out = None;
        'found: for bin in [handles(), copy] {
            for t in &tools {
                let Ok(o) = Command::new(&t[0])
                    .args(&t[1..])
                    .arg(&bin)
                    .arg(pid.to_string())
                    .stdin(Stdio::null())
                    .output()
                else {
                    continue;
                };
                // The tool's own failure (cannot switch user, cannot execute
                // the binary) is not an answer from handles.
                let tool_failed = stderr_of(&o).starts_with(&format!("{}:", t[0]))
                    || matches!(o.status.code(), Some(126 | 127));
                if !tool_failed {
                    out = Some(o);
                    break 'found;
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        match out {
            Some(o) => o,
            None => {
                eprintln!("note: skipping permission_denied_exits_4: cannot drop privileges here");
                return;
            }
        }
    } else {
        // Unprivileged already: a process of another user (pid 1 is root's).
        let owner = fs::metadata("/proc/1").map(|m| m.uid()).unwrap_or(0);
        if owner == euid() {
            eprintln!("note: skipping permission_denied_exits_4: no process of another user");
            return;
        }
        run_handles(["1"])
    };
    assert_fails(&o, 4, &["permission denied", "root or the same user"]);
    assert_eq!(stdout_of(&o), "");
}

#[test]
fn a_process_exiting_while_read_exits_5_with_the_partial_table() {
    let mut fx = AllTypes::start();
    let pid = fx.pid();
    let fds = proc_fds(pid).len();
    let h = Command::new(handles())
        .arg(pid.to_string())
        .env("HANDLES_DEBUG_STALL_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn handles");
    wait_until_listed(h.id(), pid);
    fx.run.child.kill().unwrap();
    fx.run.child.wait().unwrap();
    let o = h.wait_with_output().unwrap();
    assert_fails(&o, 5, &["exited", &pid.to_string()]);
    let text = stdout_of(&o);
    let rows = parse_short(&text);
    assert!(rows.len() < fds, "the table is partial:\n{text}");
}

#[test]
fn an_fd_closed_between_listing_and_reading_is_skipped() {
    let mut r = spawn_ready({
        let mut c = Command::new(fixture("many_fds"));
        c.arg("20");
        c
    });
    let pid = r.pid();
    let before = proc_fds(pid);
    let victim = 7;
    assert!(before.contains(&victim));
    let h = Command::new(handles())
        .arg(pid.to_string())
        .env("HANDLES_DEBUG_STALL_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn handles");
    wait_until_listed(h.id(), pid);
    let stdin = r.child.stdin.as_mut().unwrap();
    writeln!(stdin, "close {victim}").unwrap();
    stdin.flush().unwrap();
    assert_eq!(
        r.next_line().as_deref(),
        Some(format!("closed {victim}").as_str())
    );
    let o = h.wait_with_output().unwrap();
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert_eq!(stderr_of(&o), "");
    let shown: Vec<i32> = parse_short(&stdout_of(&o)).iter().map(Row::fd).collect();
    let want: Vec<i32> = before.into_iter().filter(|&fd| fd != victim).collect();
    assert_eq!(shown, want);
}

#[test]
fn a_zombie_shows_0_handles_without_error() {
    let mut child = Command::new("true")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn true");
    let pid = child.id() as i32;
    wait_for(
        "the child to become a zombie",
        Duration::from_secs(10),
        || proc_state(pid) == Some('Z'),
    );
    let text = ok(&args([pid]));
    child.wait().unwrap();
    assert_eq!(text, "    handle  koid rkoid     rights type\n0 handles\n");
}

// ---------------------------------------------------------------------------
// Koids from different id spaces.

/// A memfd's inode number and an eventfd's eventfd-id are counted in
/// different spaces, so they can be equal for two unrelated objects. The
/// table must still count them as two objects: the docs promise that the
/// device kept beside a memfd's inode tells them apart.
#[test]
fn a_memfd_and_an_eventfd_with_equal_raw_ids_are_two_objects() {
    let r = spawn_ready(Command::new(fixture("koid_collide")));
    if let Some(why) = r.value("skip") {
        eprintln!("note: skipping the koid collision test: {why}");
        return;
    }
    let pid = r.pid();
    let (memfd, eventfd): (i32, i32) = (
        r.value("memfd").unwrap().parse().unwrap(),
        r.value("eventfd").unwrap().parse().unwrap(),
    );
    let id: u64 = r.value("id").unwrap().parse().unwrap();
    let p = pid.to_string();
    let doc = parse_json(&ok(&args(["--json", "--type", "vmo,event", &p])));
    let proc0 = &doc["processes"][0];
    let hs = proc0["handles"].as_array().unwrap();
    assert_eq!(hs.len(), 2);
    let by: HashMap<i64, &serde_json::Value> =
        hs.iter().map(|h| (h["fd"].as_i64().unwrap(), h)).collect();
    assert_eq!(by[&(memfd as i64)]["koid"], id);
    assert_eq!(by[&(eventfd as i64)]["koid"], id);
    assert_eq!(
        by[&(memfd as i64)]["dev"],
        dev_string(stat_fd(pid, memfd).dev()).as_str(),
        "a memfd's device is kept beside its inode (docs/handle-model.md)"
    );
    assert_eq!(proc0["object_count"], 2, "two objects");
    let (_, _, n, m) = parse_long(&ok(&args(["-l", "--type", "vmo,event", &p])));
    assert_eq!((n, m), (2, 2), "2 handles, 2 objects");
}

// ---------------------------------------------------------------------------
// Creation stacks (--stacks), from the table the shim or the supervisor
// publishes.

/// The LD_PRELOAD shim, built as shim/tests/shim.rs builds it (cargo does
/// not build another package's cdylib for these tests).
fn shim_so() -> &'static std::path::Path {
    static SHIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
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

/// The line of tests/fixtures/stacks.c that carries `STACK:<name>`.
fn stacks_line(name: &str) -> u32 {
    let src = fs::read_to_string(repo_root().join("tests/fixtures/stacks.c")).expect("read");
    let marker = format!("STACK:{name} ");
    let i = src
        .lines()
        .position(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no {marker} in stacks.c"));
    i as u32 + 1
}

/// A running stacks fixture and what it printed.
struct Made {
    run: Running,
    pid: i32,
    file: i32,
    pipe: [i32; 2],
    cfg: PathBuf,
}

/// Starts the stacks fixture through `cmd(fixture, config_file)`.
fn start_stacks(tag: &str, cmd: impl FnOnce(PathBuf, &std::path::Path) -> Command) -> Made {
    let cfg = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("stacks-{tag}.conf"));
    fs::write(&cfg, "x\n").expect("write config");
    let run = spawn_ready(cmd(fixture("stacks"), &cfg));
    let num = |k: &str| -> i32 {
        run.value(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k}= in {:?}", run.lines))
    };
    let (pid, file, pipe) = (num("pid"), num("file"), [num("pipe_r"), num("pipe_w")]);
    Made {
        run,
        pid,
        file,
        pipe,
        cfg,
    }
}

/// The `--stacks` blocks after a table: each heading with its frame lines
/// (without their indent).
fn stack_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for l in text.lines() {
        if l.starts_with("fd ") && l.ends_with(" at:") {
            blocks.push((l.to_string(), Vec::new()));
        } else if let Some(f) = l.strip_prefix("    #") {
            if let Some(b) = blocks.last_mut() {
                b.1.push(format!("#{f}"));
            }
        }
    }
    blocks
}

/// What comes before the first blank line: the table part of the output.
fn table_part(text: &str) -> &str {
    text.split_once("\n\n").map_or(text, |(t, _)| t)
}

/// The frame line (`#N 0x… in FUNC at …/stacks.c:LINE (stacks+0x…)`) of
/// `func` in `frames`, checked to be followed by main's.
fn frame_of<'a>(frames: &'a [String], func: &str, line: u32, ctx: &str) -> &'a str {
    let i = frames
        .iter()
        .position(|f| f.contains(&format!(" in {func} at ")))
        .unwrap_or_else(|| panic!("no {func} frame in {frames:#?}\n{ctx}"));
    let f = &frames[i];
    assert!(
        f.contains(&format!("stacks.c:{line} (stacks+0x")),
        "{func}'s frame names stacks.c:{line} in the fixture's module: {f}\n{ctx}"
    );
    assert!(
        frames
            .get(i + 1)
            .is_some_and(|m| m.contains(" in main at ")),
        "{func} is called by main: {frames:#?}"
    );
    assert!(
        frames
            .iter()
            .enumerate()
            .all(|(k, f)| f.starts_with(&format!("#{k} 0x"))),
        "frames are numbered from #0: {frames:#?}"
    );
    assert!(
        !frames.iter().any(|f| f.contains("libhandles_shim")),
        "the shim's own frames are not the program's: {frames:#?}"
    );
    f
}

/// The address a frame line shows.
/// A JSON frame's address or offset (`"0x…"`).
fn hex_field(v: &serde_json::Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok()
}

fn frame_pc(f: &str) -> u64 {
    let hex = f
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.strip_prefix("0x"))
        .unwrap_or_else(|| panic!("no address in {f}"));
    u64::from_str_radix(hex, 16).expect("hex address")
}

/// Everything `--stacks` promises for the fixture's three handles, in every
/// view, and that the views without --stacks are unchanged.
fn check_stacks(m: &Made) {
    let p = m.pid.to_string();
    let open_line = stacks_line("open");
    let pipe_line = stacks_line("pipe");

    // The table is the same with and without --stacks; the blocks follow.
    let plain = ok(&args([&p]));
    let text = ok(&args(["--stacks", &p]));
    assert_eq!(table_part(&text), plain.trim_end(), "{text}");
    assert!(
        !plain.contains(" at:"),
        "no stacks without --stacks:\n{plain}"
    );
    let blocks = stack_blocks(&text);
    let fds: Vec<i32> = blocks
        .iter()
        .map(|(h, _)| {
            h.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("fd N")
        })
        .collect();
    assert!(
        fds.windows(2).all(|w| w[0] < w[1]),
        "blocks in fd order: {fds:?}\n{text}"
    );
    let block = |fd: i32| -> &(String, Vec<String>) {
        blocks
            .iter()
            .find(|(h, _)| h.starts_with(&format!("fd {fd} 0x")))
            .unwrap_or_else(|| panic!("no block for fd {fd}:\n{text}"))
    };

    // JSON: the same values, the `created` object only with --stacks.
    let plain_json = ok(&args(["--json", &p]));
    assert!(!plain_json.contains("\"created\""), "{plain_json}");
    let doc = parse_json(&ok(&args(["--stacks", "--json", &p])));
    let hs = doc["processes"][0]["handles"].as_array().expect("handles");
    let row = |fd: i32| -> &serde_json::Value {
        hs.iter()
            .find(|h| h["fd"] == fd)
            .unwrap_or_else(|| panic!("fd {fd} not listed: {doc:#}"))
    };
    for fd in 0..=2 {
        assert!(
            row(fd).get("created").is_none(),
            "stdio is inherited: {:#}",
            row(fd)
        );
    }

    // The file: made by openat() in open_config.
    let (head, frames) = block(m.file);
    let cfg = m.cfg.to_string_lossy();
    assert!(
        head.ends_with(&format!(" file {cfg} created by openat() at:")),
        "{head}\n{text}"
    );
    assert!(
        head.contains(&format!(
            "{:#010x}",
            row(m.file)["value"].as_u64().expect("value")
        )),
        "the heading carries the handle value: {head}"
    );
    let f = frame_of(frames, "open_config", open_line, &text);
    let created = &row(m.file)["created"];
    assert_eq!(created["by"], "openat", "{created:#}");
    let jf = created["frames"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["function"] == "open_config"))
        .unwrap_or_else(|| panic!("no open_config frame: {created:#}"));
    assert_eq!(jf["line"], open_line, "{jf:#}");
    assert!(
        jf["file"].as_str().is_some_and(|s| s.ends_with("stacks.c")),
        "{jf:#}"
    );
    assert!(
        jf["module"]
            .as_str()
            .is_some_and(|s| s.ends_with("/stacks")),
        "{jf:#}"
    );
    assert_eq!(jf["kind"], "native", "{jf:#}");
    assert_eq!(
        hex_field(&jf["address"]),
        Some(frame_pc(f)),
        "{jf:#} vs {f}"
    );
    assert!(hex_field(&jf["offset"]).is_some_and(|o| o > 0), "{jf:#}");

    // Both pipe ends: made by pipe2() (or pipe()) in make_pipe.
    for fd in m.pipe {
        let (head, frames) = block(fd);
        assert!(
            head.contains(" pipe pipe:[")
                && (head.ends_with(" created by pipe2() at:")
                    || head.ends_with(" created by pipe() at:")),
            "{head}\n{text}"
        );
        frame_of(frames, "make_pipe", pipe_line, &text);
        let by = &row(fd)["created"]["by"];
        assert!(by == "pipe2" || by == "pipe", "{:#}", row(fd));
    }

    // The long view: its table unchanged, its descriptions in the headings.
    let long = ok(&args(["-l", &p]));
    let long_stacks = ok(&args(["-l", "--stacks", &p]));
    assert_eq!(table_part(&long_stacks), long.trim_end(), "{long_stacks}");
    let lb = stack_blocks(&long_stacks);
    assert!(
        lb.iter()
            .any(|(h, _)| h.starts_with(&format!("fd {} ", m.pipe[0]))
                && h.contains(" read end created by ")),
        "{long_stacks}"
    );

    // The debugger views.
    let zx = ok(&args(["--zxdb", &p]));
    let zx_stacks = ok(&args(["--zxdb", "--stacks", &p]));
    assert_eq!(table_part(&zx_stacks), zx.trim_end(), "{zx_stacks}");
    assert_eq!(stack_blocks(&zx_stacks).len(), blocks.len(), "{zx_stacks}");
    let hex = format!("{:#010x}", row(m.file)["value"].as_u64().expect("value"));
    let detail = ok(&args(["--stacks", "--handle", &hex, &p]));
    let d = &parse_details(&detail)[0];
    assert_eq!(field(d, "Origin"), "openat()", "{detail}");
    assert!(
        field(d, "Created at").starts_with("#0 0x"),
        "the first frame follows Created at: {detail}"
    );
    assert!(
        detail.contains(" in open_config at ")
            && detail.contains(&format!("stacks.c:{open_line} ")),
        "{detail}"
    );
    let plain_detail = ok(&args(["--handle", &hex, &p]));
    assert!(!plain_detail.contains("Origin"), "{plain_detail}");
}

#[test]
fn stacks_show_how_and_where_each_handle_was_made_under_the_shim() {
    let m = start_stacks("shim", |prog, cfg| {
        let mut c = Command::new(prog);
        c.arg(cfg).env("LD_PRELOAD", shim_so());
        c
    });
    let doc = parse_json(&ok(&args(["--json", &m.pid.to_string()])));
    assert_eq!(doc["processes"][0]["source"], "shim", "{doc:#}");
    check_stacks(&m);
    drop(m.run);
}

#[test]
fn stacks_under_handles_run_with_and_without_the_shim() {
    for (tag, mode, source) in [
        ("run-default", None, None),
        ("run-no-shim", Some("--no-shim"), Some("supervisor")),
    ] {
        let m = start_stacks(tag, |prog, cfg| {
            let mut c = Command::new(handles());
            c.arg("run").args(mode).arg("--").arg(prog).arg(cfg);
            c
        });
        let doc = parse_json(&ok(&args(["--json", &m.pid.to_string()])));
        let src = &doc["processes"][0]["source"];
        assert_ne!(src, "proc", "{tag}: {doc:#}");
        if let Some(s) = source {
            assert_eq!(src, s, "{tag}: {doc:#}");
        }
        check_stacks(&m);
        drop(m.run);
    }
}

#[test]
fn stacks_of_a_process_without_a_table_are_a_note_on_stderr() {
    let m = start_stacks("plain", |prog, cfg| {
        let mut c = Command::new(prog);
        // Its stderr not the test's: when that is a file that other tests
        // write to, its position moves between the two listings compared.
        c.arg(cfg)
            .env_remove("LD_PRELOAD")
            .stderr(std::process::Stdio::null());
        c
    });
    let p = m.pid.to_string();
    let plain = ok(&args([&p]));
    for extra in [&[][..], &["-l"][..], &["--json"][..], &["--zxdb"][..]] {
        let mut a = args(extra);
        let base = if extra.is_empty() {
            plain.clone()
        } else {
            ok(&args(extra.iter().chain(&[p.as_str()])))
        };
        a.push("--stacks".into());
        a.push(p.clone());
        let o = run_handles(&a);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "{a:?}: {}", stderr_of(&o));
        assert_eq!(stdout_of(&o), base, "{a:?}: the output is unchanged");
        let e = stderr_of(&o);
        assert_eq!(e.lines().count(), 1, "{a:?}: one note\n{e}");
        assert!(
            e.starts_with(&format!("handles: process {p}: no creation stacks")),
            "{a:?}: {e}"
        );
    }
    drop(m.run);
}

// ---------------------------------------------------------------------------
// A forked child of a shim process makes its own table only at its first
// write of it; until then it holds its parent's table fd.

/// fd -> (generation, handle) of the one process in `handles --json`,
/// with the document's source and mixer.
fn json_table(pid: i32) -> (String, u64, BTreeMap<i32, (u64, u64)>) {
    let doc = parse_json(&ok(&args(["--json", &pid.to_string()])));
    let p = &doc["processes"][0];
    let handles = p["handles"]
        .as_array()
        .expect("handles array")
        .iter()
        .map(|h| {
            (
                h["fd"].as_i64().expect("fd") as i32,
                (
                    h["generation"].as_u64().expect("generation"),
                    h["value"].as_u64().expect("handle"),
                ),
            )
        })
        .collect();
    (
        p["source"].as_str().expect("source").to_string(),
        p["mixer"].as_u64().expect("mixer"),
        handles,
    )
}

/// Hands inspect_fork's child a line, and returns what its next line
/// says after `what` (which it must start with).
fn go(run: &mut Running, what: &str) -> String {
    run.child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let l = run.next_line().expect("a line from the child");
    l.strip_prefix(what)
        .unwrap_or_else(|| panic!("{l:?}: not {what}"))
        .to_string()
}

#[test]
fn a_forked_child_shows_its_own_fds_before_and_after_it_makes_its_table() {
    let mut c = Command::new(fixture("inspect_fork"));
    for k in ["HANDLES_COOKIE", "HANDLES_POLICY", "HANDLES_QUARANTINE"] {
        c.env_remove(k);
    }
    c.env("LD_PRELOAD", shim_so());
    let mut run = spawn_ready(c);
    let num = |r: &Running, k: &str| -> i32 {
        r.value(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k}= in {:?}", r.lines))
    };
    let (parent, child) = (run.pid(), num(&run, "child"));
    let (file, closed) = (num(&run, "file"), num(&run, "closed"));
    let (psource, pmixer, ptable) = json_table(parent);
    assert_eq!(psource, "shim");
    // The shim's fds in the child: its parent's table, the tombstone of
    // `closed` and the tombstone source, all on the parent's memfd.
    let shims: Vec<i32> = proc_fds(child)
        .into_iter()
        .filter(|&fd| link(child, fd).starts_with(&format!("/memfd:handles-table:{parent} ")))
        .collect();
    assert!(shims.len() >= 3 && shims.contains(&closed), "{shims:?}");

    // No table of its own yet: /proc's view of its own fds, none of the
    // shim's, and not its parent's values.
    let (source, mixer, before) = json_table(child);
    assert_eq!((source.as_str(), mixer), ("proc", 0));
    let expect: BTreeSet<i32> = proc_fds(child)
        .into_iter()
        .filter(|fd| !shims.contains(fd))
        .collect();
    assert_eq!(before.keys().copied().collect::<BTreeSet<_>>(), expect);
    assert!(before.contains_key(&file));
    assert_eq!(
        before[&file],
        (0, (file as u64) << 2 | 3),
        "unmanaged value"
    );
    assert_ne!(before[&file].1, ptable[&file].1);

    // Its first open makes its table: the shim's values, its own mixer,
    // the generation its parent's handle had; the shim's fds stay hidden.
    let opened: i32 = go(&mut run, "opened=").parse().expect("opened=K");
    let (source, mixer, after) = json_table(child);
    assert_eq!(source, "shim");
    assert!(mixer != 0 && mixer != pmixer, "{mixer} {pmixer}");
    let shown: BTreeSet<i32> = after.keys().copied().collect();
    assert!(
        shown.contains(&opened) && shown.contains(&file),
        "{shown:?}"
    );
    for fd in proc_fds(child) {
        if link(child, fd).starts_with("/memfd:handles-table:") {
            assert!(!shown.contains(&fd), "fd {fd} of the shim shown: {shown:?}");
        }
    }
    assert_eq!(after[&file].0, ptable[&file].0, "the parent's generation");
    assert_ne!(after[&opened].1, (opened as u64) << 2 | 3);
    drop(run);
}

/// A forked child that only moves its fds (a dup here; a shell's
/// redirections before an exec) keeps its table private: no memfd of its
/// own, and `handles <pid>` shows /proc's view of it as before its first
/// write, and so does a pipe (a shell's pipeline plumbing). A new object
/// (an open) or a second thread makes it shared, with what the child did
/// meanwhile in it: the dup, its generation.
#[test]
fn a_forked_child_that_only_moves_its_fds_publishes_its_table_when_it_does_more() {
    for mode in ["dup", "thread", "pipe"] {
        let mut c = Command::new(fixture("inspect_fork"));
        c.arg(mode);
        for k in ["HANDLES_COOKIE", "HANDLES_POLICY", "HANDLES_QUARANTINE"] {
            c.env_remove(k);
        }
        c.env("LD_PRELOAD", shim_so());
        let mut run = spawn_ready(c);
        let child: i32 = run
            .value("child")
            .and_then(|v| v.parse().ok())
            .expect("child=PID");
        let file: i32 = run
            .value("file")
            .and_then(|v| v.parse().ok())
            .expect("file=N");
        let own_table = |pid: i32| {
            proc_fds(pid)
                .into_iter()
                .any(|fd| link(pid, fd).starts_with(&format!("/memfd:handles-table:{pid} ")))
        };
        let dup: i32 = go(&mut run, "dup=").parse().expect("dup=D");
        assert!(!own_table(child), "{mode}: a private table is no memfd");
        let (source, mixer, before) = json_table(child);
        assert_eq!((source.as_str(), mixer), ("proc", 0), "{mode}");
        assert!(
            before.contains_key(&dup) && before.contains_key(&file),
            "{before:?}"
        );
        assert_eq!(
            before[&dup],
            (0, (dup as u64) << 2 | 3),
            "{mode}: /proc's value"
        );

        if mode == "pipe" {
            // A pipe is plumbing (a shell's pipeline): still private.
            go(&mut run, "pipe=");
            assert!(!own_table(child), "{mode}: a pipe keeps it private");
            assert_eq!(json_table(child).0, "proc", "{mode}");
        }
        let last = if mode == "thread" {
            "thread="
        } else {
            "opened="
        };
        go(&mut run, last);
        assert!(own_table(child), "{mode}: published");
        let (source, mixer, after) = json_table(child);
        assert_eq!(source, "shim", "{mode}");
        assert_ne!(mixer, 0);
        // The dup made while private is in the published table: the
        // shim's value and the number's first generation.
        assert_eq!(after[&dup].0, 1, "{mode}: {after:?}");
        assert_ne!(after[&dup].1, (dup as u64) << 2 | 3, "{mode}");
        assert!(after.contains_key(&file), "{mode}: {after:?}");
        drop(run);
    }
}
