//! The whole machine: `handles --all`, `handles graph`, `handles
//! --mappings` and `handles watch`, run as a user runs them against real
//! fixture processes. Expected values come from /proc read here (readlink,
//! stat, directory listings) and from what the fixtures print about
//! themselves, never from the implementation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ZX_RIGHT_READ: u64 = 1 << 2;
const ZX_RIGHT_WRITE: u64 = 1 << 3;
const ZX_RIGHT_EXECUTE: u64 = 1 << 4;
const ZX_RIGHT_MAP: u64 = 1 << 5;

fn json_of(args: &[&str]) -> Value {
    let o = run_handles(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "handles {args:?}: {}",
        stderr_of(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("handles {args:?}: bad JSON: {e}"))
}

fn proc_fd_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Whether `pid`'s fd count moves away from `still` within half a second.
fn busy(pid: i32, still: usize) -> bool {
    (0..250).any(|_| {
        sleep(Duration::from_millis(2));
        proc_fd_count(pid).is_some_and(|n| n != still)
    })
}

/// Whether `pid` is traced or holds a handles table (its own, or its
/// parent's inherited across fork): a process of a job, whose table view
/// hides some of its fds.
fn job_like(pid: i32) -> bool {
    let traced = fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
    });
    traced
        || fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
            d.flatten().any(|e| {
                fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().contains("handles-table:"))
            })
        })
}

fn link(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn bracketed(target: &str) -> u64 {
    target
        .split_once('[')
        .and_then(|(_, r)| r.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no [inode] in {target}"))
}

/// The types of `pid`'s fds as /proc tells them here: readlink, then stat
/// for paths. Only the unambiguous kinds the fixtures hold.
fn oracle_types(pid: i32) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
    {
        let t = fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ty = if t.starts_with("pipe:") {
            "pipe"
        } else if t.starts_with("socket:") {
            // Every socket of these fixtures is AF_UNIX.
            "channel"
        } else if t.starts_with('/') {
            match fs::metadata(e.path()) {
                Ok(md) if md.is_file() => "file",
                Ok(md) if md.is_dir() => "dir",
                Ok(md) if md.file_type().is_char_device() => "chardev-or-tty",
                _ => "other",
            }
        } else {
            "other"
        };
        *m.entry(ty.to_string()).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// handles --all

#[test]
fn all_counts_agree_with_proc_fd_listings() {
    let r = spawn_ready({
        let mut c = Command::new(fixture("many_fds"));
        c.arg("300");
        c
    });
    let pid = r.pid();
    // Every process's count, before and after: a process whose count did
    // not move in between must have exactly that count in the answer.
    let pids_now = || -> BTreeMap<i32, usize> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|p| Some((p, proc_fd_count(p)?)))
            .collect()
    };
    // Three listings on each side, 10 ms apart: a busy process (a compiler
    // opening and closing files) rarely looks still in all six.
    let still = |samples: &[BTreeMap<i32, usize>]| -> BTreeMap<i32, usize> {
        samples[0]
            .iter()
            .filter(|(p, n)| samples.iter().all(|s| s.get(p) == Some(n)))
            .map(|(p, n)| (*p, *n))
            .collect()
    };
    let sample = || -> Vec<BTreeMap<i32, usize>> {
        (0..3)
            .map(|_| {
                sleep(Duration::from_millis(10));
                pids_now()
            })
            .collect()
    };
    let before = still(&sample());
    let doc = json_of(&["--all", "--json"]);
    let after = still(&sample());
    assert_eq!(doc["schema"], "handles.machine.v1");
    let procs = doc["processes"].as_array().expect("processes");
    let mut compared = 0;
    let mut seen = BTreeSet::new();
    for p in procs {
        let ppid = p["pid"].as_i64().unwrap() as i32;
        assert!(seen.insert(ppid), "pid {ppid} listed twice");
        if p["access"] != "ok" {
            continue;
        }
        // Processes of a job hide their table and tombstones, as
        // `handles PID` does (and a fork child hides the parent's table it
        // holds, though its values are /proc's): not comparable with the
        // raw listing.
        if p["source"] != "proc" || job_like(ppid) {
            continue;
        }
        let n = p["handle_count"].as_u64().unwrap() as usize;
        let types_sum: u64 = p["types"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(types_sum as usize, n, "pid {ppid}: types add up");
        if let (Some(b), Some(a)) = (before.get(&ppid), after.get(&ppid)) {
            if a == b {
                // A process that opens fds for a moment now and then (a
                // `handles watch` of another test reading /proc) can look
                // still in six listings and be caught mid-read: a mismatch
                // counts only if the process stays still for another
                // half-second of listings every 2 ms.
                if n != *a && !busy(ppid, *a) {
                    panic!(
                        "pid {ppid} ({}): {n} handles, /proc/{ppid}/fd has {a}",
                        p["name"]
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 3, "compared only {compared} processes");
    // Sorted by count, the most first, readable processes first.
    let counts: Vec<(bool, u64)> = procs
        .iter()
        .map(|p| (p["access"] == "ok", p["handle_count"].as_u64().unwrap_or(0)))
        .collect();
    for w in counts.windows(2) {
        assert!(w[0].0 >= w[1].0, "unreadable rows come last");
        if w[0].0 && w[1].0 {
            assert!(w[0].1 >= w[1].1, "sorted by count: {counts:?}");
        }
    }
    // The fixture: its count and its types from /proc here.
    let me = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("the fixture is listed");
    assert_eq!(
        me["handle_count"].as_u64().unwrap() as usize,
        proc_fd_count(pid).unwrap()
    );
    let oracle = oracle_types(pid);
    for t in ["pipe", "channel", "file", "dir"] {
        assert_eq!(
            me["types"][t].as_u64().unwrap_or(0) as usize,
            oracle.get(t).copied().unwrap_or(0),
            "{t} count of the fixture"
        );
        assert!(oracle.get(t).copied().unwrap_or(0) > 0, "the mix has {t}");
    }
    assert_eq!(
        doc["totals"]["handles"].as_u64().unwrap(),
        procs
            .iter()
            .filter(|p| p["access"] == "ok")
            .map(|p| p["handle_count"].as_u64().unwrap())
            .sum::<u64>()
    );
}

#[test]
fn all_plain_view_and_type_filters() {
    let r = spawn_ready({
        let mut c = Command::new(fixture("many_fds"));
        c.arg("120");
        c
    });
    let pid = r.pid();
    let o = run_handles(["--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let text = stdout_of(&o);
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    assert!(head.contains("pid") && head.contains("handles"), "{head}");
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .unwrap_or_else(|| panic!("no row for {pid} in\n{text}"));
    let n = proc_fd_count(pid).unwrap();
    assert_eq!(
        row.split_whitespace().nth(2),
        Some(n.to_string().as_str()),
        "{row}"
    );
    assert!(text.lines().last().unwrap().contains(" handles"), "footer");
    // -c: channels only; the fixture's row counts exactly its sockets.
    let doc = json_of(&["--all", "-c", "--json"]);
    let oracle = oracle_types(pid);
    for p in doc["processes"].as_array().unwrap() {
        if p["access"] != "ok" {
            continue;
        }
        let keys: Vec<&String> = p["types"].as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| *k == "channel"), "{p}");
        assert!(
            p["handle_count"].as_u64().unwrap() > 0,
            "empty rows hidden: {p}"
        );
        if p["pid"] == pid {
            assert_eq!(
                p["handle_count"].as_u64().unwrap() as usize,
                oracle["channel"]
            );
        }
    }
    // -r -c: everything but channels.
    let doc = json_of(&["--all", "-r", "-c", "--json"]);
    let me = doc["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap()
        .clone();
    assert_eq!(
        me["handle_count"].as_u64().unwrap() as usize,
        proc_fd_count(pid).unwrap() - oracle["channel"]
    );
    // Bad input: the existing usage rules.
    let o = run_handles(["--all", "--type", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run_handles(["--all", "1"]);
    assert_eq!(o.status.code(), Some(2), "--all and a pid conflict");
}

/// Runs `handles ARGS` as uid/gid 65534 (we are root), or None when that
/// cannot be done here.
fn as_nobody(a: &[&str]) -> Option<std::process::Output> {
    let dir = std::env::temp_dir().join(format!("handles-machine-{}", std::process::id()));
    fs::create_dir_all(&dir).ok()?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).ok()?;
    let copy = dir.join("handles");
    fs::copy(handles(), &copy).ok()?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).ok()?;
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(a)
        .stdin(Stdio::null())
        .output()
        .ok();
    let _ = fs::remove_dir_all(&dir);
    let o = o?;
    (!stderr_of(&o).starts_with("setpriv:")).then_some(o)
}

#[test]
fn all_shows_unreadable_processes_as_such() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "all_shows_unreadable_processes_as_such",
            "needs root to drop to another user",
        );
        return;
    }
    let _fx = spawn_ready(Command::new(fixture("many_fds")));
    let Some(o) = as_nobody(&["--all", "--json"]) else {
        skip(
            "all_shows_unreadable_processes_as_such",
            "setpriv (util-linux) cannot drop privileges here",
        );
        return;
    };
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let procs = doc["processes"].as_array().unwrap();
    let denied: Vec<&Value> = procs
        .iter()
        .filter(|p| p["access"] == "permission_denied")
        .collect();
    assert!(
        !denied.is_empty(),
        "root's processes are not nobody's to read"
    );
    let fx = denied
        .iter()
        .find(|p| p["pid"] == _fx.pid())
        .expect("the fixture is root's, not nobody's");
    // Its count is still known (the kernel's size of /proc/PID/fd, since
    // Linux 6.2), its types are not.
    if fs::metadata(format!("/proc/{}/fd", _fx.pid()))
        .map(|m| m.len())
        .unwrap_or(0)
        > 0
    {
        assert_eq!(
            fx["handle_count"].as_u64(),
            proc_fd_count(_fx.pid()).map(|n| n as u64),
            "{fx}"
        );
    }
    assert_eq!(fx["types"], serde_json::json!({}));
    assert_eq!(
        doc["totals"]["unreadable"].as_u64().unwrap() as usize,
        denied.len()
    );
    let Some(o) = as_nobody(&["--all"]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout_of(&o).contains("(permission denied)"));
}

// ---------------------------------------------------------------------------
// handles graph

struct Share {
    r: Running,
    v: BTreeMap<String, i32>,
}

impl Share {
    fn start() -> Share {
        let r = spawn_ready(Command::new(fixture("graph_share")));
        let v = [
            "parent", "child1", "child2", "pipe_r", "pipe_w", "sock_p", "sock_c", "efd", "pidfd",
            "tcp_p", "tcp_c",
        ]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                r.value(k)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("fixture printed no {k}")),
            )
        })
        .collect();
        Share { r, v }
    }
    fn get(&self, k: &str) -> i32 {
        self.v[k]
    }
}

#[test]
fn graph_json_has_both_ends_of_the_pipe_socketpair_and_loopback_tcp_and_the_shared_eventfd() {
    let s = Share::start();
    let (parent, c1, c2) = (s.get("parent"), s.get("child1"), s.get("child2"));
    assert_eq!(parent, s.r.pid());
    let pipe = bracketed(&link(parent, s.get("pipe_r")));
    assert_eq!(
        bracketed(&link(c1, s.get("pipe_w"))),
        pipe,
        "the same pipe in /proc"
    );
    let sock_a = bracketed(&link(parent, s.get("sock_p")));
    let sock_b = bracketed(&link(c2, s.get("sock_c")));
    assert_ne!(sock_a, sock_b);

    let doc = json_of(&["graph", "--json", &parent.to_string()]);
    assert_eq!(doc["schema"], "handles.graph.v2");
    let nodes = doc["nodes"].as_array().unwrap();
    let edges = doc["edges"].as_array().unwrap();
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id);
    for p in [parent, c1, c2] {
        let n = node(&format!("process:{p}")).unwrap_or_else(|| panic!("no node for {p}"));
        assert_eq!(n["kind"], "process");
        assert_eq!(n["pid"], p);
    }
    let handle_edge = |pid: i32, fd: i32| {
        edges
            .iter()
            .find(|e| e["kind"] == "handle" && e["pid"] == pid && e["handle"]["fd"] == fd)
            .unwrap_or_else(|| panic!("no edge for {pid} fd {fd}: {edges:#?}"))
    };
    // The pipe: one object, the parent reads, child 1 writes.
    let pipe_id = format!("pipe:{pipe}");
    assert_eq!(node(&pipe_id).expect("pipe node")["koid"], pipe);
    let r = handle_edge(parent, s.get("pipe_r"));
    assert_eq!(
        (r["to"].as_str(), r["end"].as_str()),
        (Some(pipe_id.as_str()), Some("read"))
    );
    assert_eq!(r["from"], format!("process:{parent}"));
    assert_ne!(r["handle"]["rights"].as_u64().unwrap() & ZX_RIGHT_READ, 0);
    assert_eq!(r["handle"]["rights"].as_u64().unwrap() & ZX_RIGHT_WRITE, 0);
    let w = handle_edge(c1, s.get("pipe_w"));
    assert_eq!(
        (w["to"].as_str(), w["end"].as_str()),
        (Some(pipe_id.as_str()), Some("write"))
    );
    assert_ne!(w["handle"]["rights"].as_u64().unwrap() & ZX_RIGHT_WRITE, 0);
    assert!(w["rights_names"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "ZX_RIGHT_WRITE"));
    // The socketpair: two objects, each held by one process, one peer
    // edge naming the process and fd on both sides.
    let a = handle_edge(parent, s.get("sock_p"));
    let b = handle_edge(c2, s.get("sock_c"));
    assert_eq!(a["to"], format!("channel:{sock_a}"));
    assert_eq!(b["to"], format!("channel:{sock_b}"));
    assert_eq!(node(&format!("channel:{sock_a}")).unwrap()["rkoid"], sock_b);
    let peer = edges
        .iter()
        .find(|e| e["kind"] == "peer" && e["from"].as_str().unwrap().starts_with("channel:"))
        .expect("a peer edge between the channels");
    let (lo, hi, lo_end, hi_end) = if sock_a < sock_b {
        (
            sock_a,
            sock_b,
            (parent, s.get("sock_p")),
            (c2, s.get("sock_c")),
        )
    } else {
        (
            sock_b,
            sock_a,
            (c2, s.get("sock_c")),
            (parent, s.get("sock_p")),
        )
    };
    assert_eq!(peer["from"], format!("channel:{lo}"));
    assert_eq!(peer["to"], format!("channel:{hi}"));
    let ends = |v: &Value| -> Vec<(i64, i64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["pid"].as_i64().unwrap(), e["fd"].as_i64().unwrap()))
            .collect()
    };
    assert_eq!(
        ends(&peer["from_ends"]),
        vec![(lo_end.0 as i64, lo_end.1 as i64)]
    );
    assert_eq!(
        ends(&peer["to_ends"]),
        vec![(hi_end.0 as i64, hi_end.1 as i64)]
    );
    // The loopback TCP connection: two sockets, one peer edge.
    let tcp_a = bracketed(&link(parent, s.get("tcp_p")));
    let tcp_b = bracketed(&link(c2, s.get("tcp_c")));
    assert_eq!(
        handle_edge(parent, s.get("tcp_p"))["to"],
        format!("socket:{tcp_a}")
    );
    assert_eq!(
        handle_edge(c2, s.get("tcp_c"))["to"],
        format!("socket:{tcp_b}")
    );
    let (tlo, thi) = (tcp_a.min(tcp_b), tcp_a.max(tcp_b));
    let tpeer = edges
        .iter()
        .find(|e| e["kind"] == "peer" && e["from"] == format!("socket:{tlo}"))
        .unwrap_or_else(|| panic!("no peer edge for the TCP pair: {edges:#?}"));
    assert_eq!(tpeer["to"], format!("socket:{thi}"));
    let mut both = ends(&tpeer["from_ends"]);
    both.extend(ends(&tpeer["to_ends"]));
    both.sort();
    let mut want = vec![
        (parent as i64, s.get("tcp_p") as i64),
        (c2 as i64, s.get("tcp_c") as i64),
    ];
    want.sort();
    assert_eq!(both, want);
    // The eventfd: one object, three holders.
    let ev = handle_edge(parent, s.get("efd"));
    let ev_to = ev["to"].as_str().unwrap();
    assert!(ev_to.starts_with("event:"), "{ev_to}");
    for p in [c1, c2] {
        assert_eq!(handle_edge(p, s.get("efd"))["to"], ev_to);
    }
    // The pidfd: the parent holds child 1.
    let pf = edges
        .iter()
        .find(|e| e["kind"] == "pidfd" && e["pid"] == parent)
        .expect("a pidfd edge");
    assert_eq!(pf["handle"]["fd"], s.get("pidfd"));
    assert_eq!(pf["handle"]["type"], "process");
    assert_eq!(pf["handle"]["state"], "open");
    assert_eq!(pf["to"], format!("process:{c1}"));
    assert_eq!(pf["target_pid"], c1);
    // Every edge's endpoints are nodes.
    for e in edges {
        for end in ["from", "to"] {
            assert!(
                node(e[end].as_str().unwrap()).is_some(),
                "dangling {end}: {e}"
            );
        }
    }
    // Focused on child 2 alone: the socketpair is there (its other end is
    // the parent's), the pipe between the parent and child 1 is not.
    let doc = json_of(&["graph", "--json", &c2.to_string()]);
    let ids: BTreeSet<String> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&format!("channel:{sock_a}")), "{ids:?}");
    assert!(!ids.contains(&pipe_id), "{ids:?}");
}

#[test]
fn graph_dot_and_text_name_both_sides() {
    let s = Share::start();
    let (parent, c1, c2) = (s.get("parent"), s.get("child1"), s.get("child2"));
    let pipe = bracketed(&link(parent, s.get("pipe_r")));
    let sock_a = bracketed(&link(parent, s.get("sock_p")));
    let sock_b = bracketed(&link(c2, s.get("sock_c")));
    let o = run_handles(["graph", "--dot", &parent.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let dot = stdout_of(&o);
    assert!(dot.starts_with("digraph handles {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    // Data flows along the arrows: writer → pipe → reader.
    let w = format!("\"process:{c1}\" -> \"pipe:{pipe}\"");
    let r = format!("\"pipe:{pipe}\" -> \"process:{parent}\"");
    let line_with = |needle: &str| {
        dot.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{dot}"))
            .to_string()
    };
    assert!(line_with(&w).contains(&format!("{c1} fd {} write", s.get("pipe_w"))));
    assert!(line_with(&r).contains(&format!("{parent} fd {} read", s.get("pipe_r"))));
    let (lo, hi) = (sock_a.min(sock_b), sock_a.max(sock_b));
    let peer = line_with(&format!("\"channel:{lo}\" -> \"channel:{hi}\""));
    assert!(peer.contains("dir=both"), "{peer}");
    assert!(
        peer.contains(&format!("{parent} (graph_share) fd {}", s.get("sock_p"))),
        "{peer}"
    );
    assert!(
        peer.contains(&format!("{c2} (graph_share) fd {}", s.get("sock_c"))),
        "{peer}"
    );
    assert!(line_with(&format!("\"process:{parent}\" -> \"process:{c1}\"")).contains("pidfd"));

    let o = run_handles(["graph", &parent.to_string()]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout_of(&o);
    let block = |head: &str| -> Vec<String> {
        let mut it = text.lines().skip_while(|l| !l.starts_with(head));
        let mut v: Vec<String> = it.next().into_iter().map(str::to_string).collect();
        v.extend(it.take_while(|l| l.starts_with(' ')).map(str::to_string));
        v
    };
    let pb = block(&format!("pipe {pipe}"));
    assert_eq!(pb.len(), 3, "{text}");
    assert!(pb.iter().any(|l| l.trim_start().starts_with("read")
        && l.contains(&format!("{parent} (graph_share) fd {}", s.get("pipe_r")))));
    assert!(pb.iter().any(|l| l.trim_start().starts_with("write")
        && l.contains(&format!("{c1} (graph_share) fd {}", s.get("pipe_w")))));
    let sb = block(&format!("channel {lo} <-> {hi}"));
    assert_eq!(sb.len(), 3, "{text}");
    assert!(text.contains(&format!(
        "pidfd {parent} (graph_share) fd {} -> process {c1} (graph_share)",
        s.get("pidfd")
    )));
}

#[test]
fn graph_svg_runs_dot_or_says_how_to_install_it() {
    let s = Share::start();
    let parent = s.get("parent").to_string();
    // No dot on PATH: a clear message and its own exit status.
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-dot-here");
    fs::create_dir_all(&empty).unwrap();
    let o = Command::new(handles())
        .args(["graph", "--svg", &parent])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains("apt-get install graphviz"),
        "{}",
        stderr_of(&o)
    );
    assert_eq!(stdout_of(&o), "");
    // A stand-in dot: keeps what it was given and answers with an SVG.
    let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-dot");
    fs::create_dir_all(&bin).unwrap();
    let seen = bin.join("input.dot");
    let script = bin.join("dot");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = -Tsvg ] || exit 9\ncat > '{}'\necho '<svg>drawn</svg>'\n",
            seen.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(handles())
        .args(["graph", "--svg", &parent])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert_eq!(stdout_of(&o).trim(), "<svg>drawn</svg>");
    let given = fs::read_to_string(&seen).unwrap();
    assert!(given.starts_with("digraph handles {"), "{given}");
}

#[test]
fn graph_bad_input_uses_the_cli_exit_statuses() {
    let o = run_handles(["graph", "abc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("not a process id"));
    let o = run_handles(["graph"]);
    assert_eq!(o.status.code(), Some(2), "a pid or --all is needed");
    // A reaped child's pid: no such process.
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id() as i32;
    c.wait().unwrap();
    let o = run_handles(["graph", &dead.to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("no such process"));
    assert!(!stderr_of(&o).contains('\n') || stderr_of(&o).lines().count() <= 2);
}

// ---------------------------------------------------------------------------
// handles --mappings

#[test]
fn mappings_show_a_mapped_memfd_and_file_whose_fds_are_closed() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mapped");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("data-{}", std::process::id()));
    fs::write(&file, vec![7u8; 4096]).unwrap();
    let r = spawn_ready({
        let mut c = Command::new(fixture("mapped_closed"));
        c.arg(&file);
        c
    });
    let pid = r.pid().to_string();
    let memfd: u64 = r.value("memfd_ino").unwrap().parse().unwrap();
    let fino: u64 = r.value("file_ino").unwrap().parse().unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&file).unwrap().ino(), fino);
    }
    let koid_col = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .and_then(|k| k.parse::<u64>().ok())
    };
    // The plain view: neither object (no fd holds them).
    let plain = stdout_of(&run_handles([&pid]));
    for k in [memfd, fino] {
        assert!(
            !plain.lines().any(|l| koid_col(l) == Some(k)),
            "{k} in\n{plain}"
        );
    }
    // --mappings: both, as rows with no handle value.
    let o = run_handles(["--mappings", &pid]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let text = stdout_of(&o);
    let row = |k: u64| {
        text.lines()
            .find(|l| l.trim_start().starts_with("-:") && koid_col(l) == Some(k))
            .unwrap_or_else(|| panic!("no mapped row for {k} in\n{text}"))
            .to_string()
    };
    let m = row(memfd);
    assert!(
        m.contains(" vmo ") && m.contains("/memfd:handles-test-mapped"),
        "{m}"
    );
    let f = row(fino);
    assert!(
        f.contains(" file ") && f.contains(&*file.to_string_lossy()),
        "{f}"
    );
    // The handle rows are the plain view's.
    assert!(text.starts_with(&plain[..plain.find(" handles\n").unwrap()]));
    // JSON: rights from the protection (shared rw: read, write, map;
    // private r: read, map).
    let doc = json_of(&["--mappings", "--json", &pid]);
    let maps = doc["processes"][0]["mappings"]
        .as_array()
        .expect("mappings");
    let get = |k: u64| maps.iter().find(|m| m["koid"] == k).expect("mapped object");
    assert_eq!(get(memfd)["type"], "vmo");
    assert_eq!(
        get(memfd)["rights"].as_u64().unwrap(),
        ZX_RIGHT_READ | ZX_RIGHT_WRITE | ZX_RIGHT_MAP
    );
    assert_eq!(get(fino)["type"], "file");
    assert_eq!(
        get(fino)["rights"].as_u64().unwrap(),
        ZX_RIGHT_READ | ZX_RIGHT_MAP
    );
    // Executable mappings (the fixture's own binary) carry EXECUTE.
    assert!(maps
        .iter()
        .any(|m| m["rights"].as_u64().unwrap() & ZX_RIGHT_EXECUTE != 0));
    // Without --mappings the JSON has no such field.
    let doc = json_of(&["--json", &pid]);
    assert!(doc["processes"][0].get("mappings").is_none());
    // A filter applies to mapped rows too.
    let vmo_only = stdout_of(&run_handles(["--mappings", "-v", &pid]));
    assert!(vmo_only.lines().any(|l| koid_col(l) == Some(memfd)));
    assert!(!vmo_only.lines().any(|l| koid_col(l) == Some(fino)));
    drop(r);
    let _ = fs::remove_file(&file);
}

// ---------------------------------------------------------------------------
// handles watch

/// The totals of the non-interactive lines.
fn totals(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("total=")?.parse().ok())
        })
        .collect()
}

#[test]
fn watch_without_a_terminal_prints_lines_and_stops_after_count() {
    let r = spawn_ready({
        let mut c = Command::new(fixture("grow_fds"));
        c.args(["50", "400"]);
        c
    });
    let pid = r.pid().to_string();
    let t = Instant::now();
    let o = run_handles(["watch", "--interval", "0.3", "--count", "4", &pid]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert!(t.elapsed() < Duration::from_secs(10));
    let text = stdout_of(&o);
    assert_eq!(text.lines().count(), 4, "{text}");
    let tot = totals(&text);
    assert_eq!(tot.len(), 4, "{text}");
    assert!(
        tot.windows(2).all(|w| w[1] > w[0]),
        "growing: {tot:?}\n{text}"
    );
    assert!(text.lines().nth(1).unwrap().contains("pipe="), "{text}");
    assert!(text.lines().nth(1).unwrap().contains("change=+"), "{text}");
    assert!(!text.contains('\x1b'), "no escapes when not a terminal");
    // The pipe count is /proc's at some moment between the first and last
    // line: bounded by what the process held before and after.
    // Bad input and a vanished process.
    assert_eq!(
        run_handles(["watch", "--interval", "0", &pid])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run_handles(["watch", "x"]).status.code(), Some(2));
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id().to_string();
    c.wait().unwrap();
    let o = run_handles(["watch", "-n", "1", &dead]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr_of(&o).lines().count(), 1, "{}", stderr_of(&o));
}

#[test]
fn watch_all_without_a_terminal() {
    let o = run_handles(["watch", "--all", "-i", "0.2", "-n", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let text = stdout_of(&o);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.contains(" all processes=")),
        "{text}"
    );
}

/// Runs `cmd` under `script` (a pseudo-terminal), feeding `keys` after
/// `delay`; returns everything the terminal showed and the exit status.
fn in_pty(cmd: &str, delay: Duration, keys: &[u8], limit: Duration) -> (String, Option<i32>) {
    let mut child = Command::new("script")
        .args(["-q", "-f", "-e", "-c", cmd, "/dev/null"])
        // bash waits out a child that handles SIGINT itself and goes on
        // (dash would die of the Ctrl-C with it).
        .env("SHELL", "/bin/bash")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux is needed for the pty tests");
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = out.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    sleep(delay);
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(keys);
    let _ = stdin.flush();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd} did not end under the pty");
        }
        sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let bytes = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), status)
}

#[test]
fn watch_in_a_terminal_redraws_a_growing_count_and_q_restores_the_terminal() {
    let r = spawn_ready({
        let mut c = Command::new(fixture("grow_fds"));
        c.args(["40", "1000"]);
        c
    });
    let cmd = format!(
        "{} watch --interval 0.25 {}; echo STATUS=$?; stty -a",
        handles().display(),
        r.pid()
    );
    let (screen, status) = in_pty(
        &cmd,
        Duration::from_millis(1800),
        b"q",
        Duration::from_secs(20),
    );
    assert_eq!(status, Some(0), "{screen}");
    assert!(screen.contains("STATUS=0"), "q quits with 0:\n{screen}");
    // The alternate screen, redrawn in place (home + clear per frame).
    assert!(screen.contains("\x1b[?1049h"), "{screen:?}");
    assert!(screen.contains("\x1b[?1049l"), "the screen is given back");
    let frames = screen.matches("\x1b[H\x1b[2J").count();
    assert!(frames >= 3, "{frames} frames");
    // The total row of each frame grows.
    let tot: Vec<u64> = screen
        .split("\x1b[H\x1b[2J")
        .filter_map(|f| {
            f.lines()
                .find(|l| l.starts_with("total"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .collect();
    assert!(tot.len() >= 3, "{screen}");
    assert!(
        tot.windows(2).all(|w| w[1] >= w[0]) && tot.last() > tot.first(),
        "{tot:?}"
    );
    // New handles highlighted (reverse video).
    assert!(screen.contains("\x1b[7mnew "), "{screen:?}");
    // After the watch, the terminal is back in canonical mode with echo.
    let stty = &screen[screen.find("STATUS=").unwrap()..];
    let words: Vec<&str> = stty.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo"),
        "{stty}"
    );
}

#[test]
fn watch_in_a_terminal_restores_it_on_sigint() {
    let r = spawn_ready({
        let mut c = Command::new(fixture("grow_fds"));
        c.args(["100", "100"]);
        c
    });
    // Ctrl-C typed at the terminal: the pty's line discipline turns it
    // into SIGINT for the foreground job.
    let cmd = format!(
        "{} watch --interval 0.2 {}; echo STATUS=$?; stty -a",
        handles().display(),
        r.pid()
    );
    let (screen, _) = in_pty(
        &cmd,
        Duration::from_millis(1000),
        b"\x03",
        Duration::from_secs(20),
    );
    assert!(screen.contains("STATUS=130"), "{screen}");
    let stty = &screen[screen.find("STATUS=").unwrap()..];
    let words: Vec<&str> = stty.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo"),
        "{stty}"
    );
}

// ---------------------------------------------------------------------------
// Processes of a job (`handles run`: the shim's table)

/// The line of tests/fixtures/grow_fds.c that makes the pipes it grows by.
fn grow_line() -> usize {
    let src = fs::read_to_string(repo_root().join("tests/fixtures/grow_fds.c")).unwrap();
    src.lines().position(|l| l.contains("/* GROW */")).unwrap() + 1
}

#[test]
fn all_shows_a_jobs_generation_counts_from_its_table() {
    let (churn, grow) = (100u64, 5u64);
    let r = spawn_ready({
        let mut c = Command::new(handles());
        c.arg("run").arg("--").arg(fixture("grow_fds")).args([
            "1",
            &grow.to_string(),
            &churn.to_string(),
        ]);
        c
    });
    let pid: i32 = r.value("pid").unwrap().parse().unwrap();
    // Until the fixture has made its last pipe: its pipe fds in /proc.
    let pipes = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
                    })
                    .count()
            })
            .unwrap_or(0) as u64
    };
    let t = Instant::now();
    while pipes() < 2 * grow && t.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(20));
    }
    let doc = json_of(&["--all", "--json"]);
    let me = doc["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no row for {pid}"))
        .clone();
    assert_eq!(me["source"], "shim", "{me}");
    let table = &me["table"];
    let created = table["created"].as_u64().unwrap();
    // Every pipe() made two handles, each a new generation of its number
    // (the closed ones' numbers stay quarantined, so none is reused).
    let made = 2 * (churn + grow);
    assert!(
        (made..=made + 8).contains(&created),
        "created {created}, the fixture made {made}: {me}"
    );
    let q = table["quarantined"].as_u64().unwrap();
    assert!(
        (1..=64).contains(&q),
        "quarantined {q} (at most --quarantine's 64)"
    );
    assert_eq!(table["open"], me["handle_count"], "{me}");
    // The plain row says the same.
    let text = stdout_of(&run_handles(["--all"]));
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .unwrap();
    assert!(
        row.contains(&format!("[shim: {created} created, {q} quarantined]")),
        "{row}"
    );
}

#[test]
fn watch_names_the_creation_site_of_the_fastest_growing_group() {
    let r = spawn_ready({
        let mut c = Command::new(handles());
        c.arg("run")
            .arg("--")
            .arg(fixture("grow_fds"))
            .args(["20", "1000"]);
        c
    });
    let pid = r.value("pid").unwrap();
    let o = run_handles(["watch", "-i", "0.4", "-n", "3", &pid]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let text = stdout_of(&o);
    let last = text.lines().last().unwrap();
    let want = format!("grow_fds.c:{}", grow_line());
    assert!(
        last.contains("fastest=\"pipe by pipe")
            && last.contains("in main at ")
            && last.contains(&want),
        "{want} in {last}"
    );
}

#[test]
fn mappings_of_a_process_exiting_while_read_exit_5() {
    let mut r = spawn_ready(Command::new(fixture("many_fds")));
    let pid = r.pid();
    let h = Command::new(handles())
        .args(["--mappings", &pid.to_string()])
        // The inspector's test hook: a pause between listing the fds and
        // reading them, long enough to kill the process in.
        .env("HANDLES_DEBUG_STALL_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(500));
    r.child.kill().unwrap();
    r.child.wait().unwrap();
    let o = h.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr_of(&o));
    let err = stderr_of(&o);
    assert!(err.contains("exited"), "{err}");
    assert!(err.contains(&pid.to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
