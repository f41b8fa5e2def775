//! `handles graph [PID...|--all]`: objects shared between processes, as
//! text, Graphviz DOT, SVG (through `dot`) or JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::process::{Command, Stdio};

use handles_supervisor::inspect::graph::{self, End, Graph};
use handles_supervisor::inspect::machine::all_pids;
use handles_supervisor::inspect::{resolve_tgid, InspectError, Inspector, Options, Snapshot};
use serde::Serialize;

use crate::all::counted;
use crate::args::GraphArgs;
use crate::exit;

pub const SCHEMA: &str = "handles.graph.v2";

fn error_code(e: &InspectError) -> u8 {
    match e {
        InspectError::NoSuchProcess(_) => exit::NO_SUCH_PROCESS,
        InspectError::PermissionDenied(_) => exit::PERMISSION,
        InspectError::Io { .. } => exit::IO,
    }
}

pub fn run(a: &GraphArgs) -> u8 {
    let mut focus = BTreeSet::new();
    for p in &a.pids {
        match p.trim().parse::<i32>() {
            Ok(n) if n > 0 => {
                // A thread stands for its process, as in `handles PID`.
                let pid = match resolve_tgid(n) {
                    Ok((tgid, _)) => tgid,
                    Err(_) => n,
                };
                focus.insert(pid);
            }
            _ => {
                eprintln!("handles: '{p}' is not a process id");
                return exit::USAGE;
            }
        }
    }
    // The other side of what a process holds may be any process: read
    // them all, whatever the focus.
    let mut pids = match all_pids() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("handles: listing /proc: {e}");
            return exit::IO;
        }
    };
    for &f in &focus {
        if !pids.contains(&f) {
            pids.push(f);
        }
    }
    let mut inspector = Inspector::new(Options::default());
    let results = inspector.read_many(&pids);
    let mut code = exit::OK;
    let mut snaps: Vec<&Snapshot> = Vec::new();
    let mut unreadable = 0;
    for (pid, r) in pids.iter().zip(&results) {
        match r {
            Ok(s) => snaps.push(s),
            Err(e) if focus.contains(pid) => {
                eprintln!("handles: {e}");
                if code == exit::OK {
                    code = error_code(e);
                }
            }
            Err(InspectError::PermissionDenied(_)) => unreadable += 1,
            // Gone since the listing: not part of the picture.
            Err(_) => {}
        }
    }
    if !focus.is_empty() && snaps.iter().all(|s| !focus.contains(&s.pid)) {
        return code;
    }
    if unreadable > 0 {
        eprintln!(
            "handles: {} not readable (permission denied): what they hold is not shown",
            counted(unreadable, "process", "processes")
        );
    }
    let g = graph::build(&snaps, (!focus.is_empty()).then_some(&focus));
    if a.svg {
        let c = svg(&g).unwrap_or_else(|c| c);
        // The first failure's code, as with several pids in `handles PID`.
        return if code != exit::OK { code } else { c };
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let res = if a.json {
        json(&mut out, &g)
    } else if a.dot {
        dot(&mut out, &g)
    } else {
        text(&mut out, &g)
    }
    .and_then(|_| out.flush());
    match res {
        Ok(()) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            eprintln!("handles: writing output: {e}");
            exit::IO
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Node<'a> {
    Process {
        id: &'a str,
        pid: i32,
        name: &'a str,
        koid: Option<u64>,
    },
    Object(&'a graph::ObjNode),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Edge<'a> {
    Handle(&'a graph::HandleEdge),
    Peer(&'a graph::PeerEdge),
}

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    nodes: Vec<Node<'a>>,
    edges: Vec<Edge<'a>>,
}

fn json(out: &mut impl Write, g: &Graph) -> io::Result<()> {
    let nodes = g
        .processes
        .iter()
        .map(|p| Node::Process {
            id: &p.id,
            pid: p.pid,
            name: &p.name,
            koid: p.koid,
        })
        .chain(g.objects.iter().map(Node::Object))
        .collect();
    let edges = g
        .handles
        .iter()
        .map(Edge::Handle)
        .chain(g.peers.iter().map(Edge::Peer))
        .collect();
    let doc = Document {
        schema: SCHEMA,
        nodes,
        edges,
    };
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::from)?;
    writeln!(out)
}

/// A DOT string literal.
fn q(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn ends_text(ends: &[End]) -> String {
    ends.iter()
        .map(|e| format!("{} ({}) fd {}", e.pid, e.name, e.fd))
        .collect::<Vec<_>>()
        .join(", ")
}

/// DOT: processes are boxes, objects ellipses; a handle is an edge from
/// its process to its object labelled with the fd and rights (a pipe's
/// read end points from the pipe to the reader, so data flows along the
/// arrows); peers are dashed lines between the two sockets; a pidfd is
/// an edge between processes.
fn dot(out: &mut impl Write, g: &Graph) -> io::Result<()> {
    writeln!(out, "digraph handles {{")?;
    writeln!(out, "  rankdir=LR;")?;
    writeln!(out, "  node [fontname=\"monospace\", fontsize=10];")?;
    writeln!(out, "  edge [fontname=\"monospace\", fontsize=9];")?;
    for p in &g.processes {
        writeln!(
            out,
            "  {} [shape=box, label={}];",
            q(&p.id),
            q(&format!("{} ({})", p.pid, p.name))
        )?;
    }
    for o in &g.objects {
        let mut label = format!("{} {}", o.ty, o.koid);
        if o.target.starts_with('/') {
            label.push('\n');
            label.push_str(&o.target);
        }
        writeln!(out, "  {} [shape=ellipse, label={}];", q(&o.id), q(&label))?;
    }
    for h in &g.handles {
        let mut label = format!("{} fd {}", h.pid, h.fd);
        if let Some(e) = h.end {
            label.push(' ');
            label.push_str(e);
        }
        label.push_str(&format!("\n{:#010x}", h.rights));
        if h.end == Some("read") {
            writeln!(
                out,
                "  {} -> {} [label={}];",
                q(&h.to),
                q(&h.from),
                q(&label)
            )?;
        } else if h.kind == "pidfd" {
            writeln!(
                out,
                "  {} -> {} [style=bold, label={}];",
                q(&h.from),
                q(&h.to),
                q(&format!("pidfd {label}"))
            )?;
        } else {
            let dir = if h.end == Some("write") {
                "forward"
            } else {
                "none"
            };
            writeln!(
                out,
                "  {} -> {} [dir={dir}, label={}];",
                q(&h.from),
                q(&h.to),
                q(&label)
            )?;
        }
    }
    for p in &g.peers {
        let label = format!(
            "peer\n{}\n{}",
            ends_text(&p.from_ends),
            ends_text(&p.to_ends)
        );
        writeln!(
            out,
            "  {} -> {} [dir=both, style=dashed, label={}];",
            q(&p.from),
            q(&p.to),
            q(&label)
        )?;
    }
    writeln!(out, "}}")
}

/// Text: one block per shared object (a socket pair is one block), each
/// holder on a line with its end, pid, name and fd; then the pidfds.
fn text(out: &mut impl Write, g: &Graph) -> io::Result<()> {
    let by_id: BTreeMap<&str, &graph::ObjNode> =
        g.objects.iter().map(|o| (o.id.as_str(), o)).collect();
    let holders = |id: &str| -> Vec<&graph::HandleEdge> {
        g.handles
            .iter()
            .filter(|h| h.kind == "handle" && h.to == id)
            .collect()
    };
    let holder_line = |out: &mut dyn Write, tag: &str, h: &graph::HandleEdge| {
        writeln!(
            out,
            "    {tag:<10} {} ({}) fd {} {:#010x} rights {:#010x}",
            h.pid, h.name, h.fd, h.handle, h.rights
        )
    };
    let mut in_pair: BTreeSet<&str> = BTreeSet::new();
    for p in &g.peers {
        in_pair.insert(&p.from);
        in_pair.insert(&p.to);
    }
    let mut objects = 0;
    for o in &g.objects {
        if in_pair.contains(o.id.as_str()) {
            continue;
        }
        objects += 1;
        write!(out, "{} {}", o.ty, o.koid)?;
        if o.target.starts_with('/') {
            write!(out, " {}", o.target)?;
        }
        writeln!(out)?;
        for h in holders(&o.id) {
            holder_line(out, h.end.map_or("", |e| e), h)?;
        }
    }
    for p in &g.peers {
        objects += 1;
        let (Some(a), Some(b)) = (by_id.get(p.from.as_str()), by_id.get(p.to.as_str())) else {
            continue;
        };
        writeln!(out, "{} {} <-> {}", a.ty, a.koid, b.koid)?;
        for (o, id) in [(a, &p.from), (b, &p.to)] {
            for h in holders(id) {
                holder_line(out, &format!("end {}", o.koid), h)?;
            }
        }
    }
    let pidfds: Vec<&graph::HandleEdge> = g.handles.iter().filter(|h| h.kind == "pidfd").collect();
    for h in &pidfds {
        let target = h.target_pid.unwrap_or(0);
        let name = g
            .processes
            .iter()
            .find(|p| p.pid == target)
            .map_or("", |p| p.name.as_str());
        writeln!(
            out,
            "pidfd {} ({}) fd {} -> process {} ({})",
            h.pid, h.name, h.fd, target, name
        )?;
    }
    writeln!(
        out,
        "{}, {}, {}",
        counted(objects, "shared object", "shared objects"),
        counted(pidfds.len(), "pidfd", "pidfds"),
        counted(g.processes.len(), "process", "processes")
    )
}

/// `--svg`: the DOT through `dot -Tsvg`. Err(code) when it cannot run.
fn svg(g: &Graph) -> Result<u8, u8> {
    let mut text = Vec::new();
    dot(&mut text, g).map_err(|_| exit::IO)?;
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!(
                "handles: --svg needs Graphviz's `dot` program, which is not installed \
                 (Debian/Ubuntu: apt-get install graphviz; or use --dot and render it elsewhere)"
            );
            return Err(exit::MISSING_TOOL);
        }
        Err(e) => {
            eprintln!("handles: running dot: {e}");
            return Err(exit::MISSING_TOOL);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(&text) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("handles: writing to dot: {e}");
            }
        }
    }
    match child.wait() {
        Ok(s) if s.success() => Ok(exit::OK),
        Ok(s) => {
            eprintln!("handles: dot failed ({s})");
            Err(exit::IO)
        }
        Err(e) => {
            eprintln!("handles: waiting for dot: {e}");
            Err(exit::IO)
        }
    }
}
