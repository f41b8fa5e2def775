//! Leak checks: the handles a process created and still holds when it
//! exits, grouped by the stack that created them.
//!
//! The supervisor calls [`LeakCollector::process_exit`] at the
//! PTRACE_EVENT_EXIT of the last thread using an fd table, while the table
//! still exists; it renders the per-process report then and the job-wide
//! summary at the end.

use std::collections::HashSet;
use std::fmt::Write;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::fdtable::{Origin, Stack};
use crate::backtrace::Frame;
use crate::json;

/// Which handles count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakMode {
    Off,
    /// Handles the process created (stdio and inherited fds are not leaks).
    Created,
    /// Every open handle, inherited ones marked as such.
    All,
}

/// One leaked handle.
#[derive(Clone, Debug)]
pub struct Leak {
    pub fd: i32,
    pub handle: u32,
    /// The fd number's generation when known (the shim's or supervisor's
    /// table).
    pub generation: Option<u32>,
    pub ty: String,
    pub koid: u64,
    pub dev: Option<String>,
    pub rights: Option<u32>,
    pub description: String,
    /// `openat`, `socket`, `recvmsg (SCM_RIGHTS)`, `inherited`, ...
    pub origin: String,
    pub inherited: bool,
}

impl Leak {
    /// The handle as every JSON document shows one.
    pub fn json(&self) -> json::Handle<'_> {
        json::Handle {
            value: Some(self.handle),
            fd: self.fd,
            generation: self.generation,
            state: json::HandleState::Open,
            ty: Some(self.ty.as_str().into()),
            koid: Some(self.koid),
            dev: self.dev.as_deref().map(Into::into),
            rights: self.rights,
            description: Some(self.description.as_str().into()),
        }
    }
}

impl Serialize for Leak {
    /// `{"handle": HANDLE, "origin", "inherited"}` (docs/report.md).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("handle", &self.json())?;
        m.serialize_entry("origin", &self.origin)?;
        m.serialize_entry("inherited", &self.inherited)?;
        m.end()
    }
}

/// Leaks that share one creation stack.
#[derive(Clone, Debug, Serialize)]
pub struct LeakGroup {
    pub handles: Vec<Leak>,
    #[serde(serialize_with = "json::serialize_frames")]
    pub stack: Vec<Frame>,
}

/// The leaks of one process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessLeaks {
    pub pid: i32,
    pub name: String,
    pub groups: Vec<LeakGroup>,
    /// Leaks silenced by suppressions.
    pub suppressed: usize,
}

impl ProcessLeaks {
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.handles.len()).sum()
    }
}

/// The per-process report, with the symbolized stack of each group.
pub fn render(p: &ProcessLeaks, stacks: &[Vec<Frame>]) -> String {
    let mut s = String::new();
    let n = p.count();
    let inherited = p
        .groups
        .iter()
        .flat_map(|g| &g.handles)
        .filter(|h| h.inherited)
        .count();
    let created = n - inherited;
    let _ = write!(
        s,
        "handles: ==== leak check: process {} ({}) exits holding {} handle{} it created",
        p.pid,
        p.name,
        created,
        if created == 1 { "" } else { "s" }
    );
    if inherited > 0 {
        let _ = write!(s, " and {inherited} inherited");
    }
    let _ = writeln!(s, " ====");
    s.push_str(&render_groups(p, stacks));
    s
}

/// The groups of a leak report, without its heading (`handles attach`
/// words its own).
pub fn render_groups(p: &ProcessLeaks, stacks: &[Vec<Frame>]) -> String {
    let mut s = String::new();
    for (g, frames) in p.groups.iter().zip(stacks) {
        let types: Vec<&str> = {
            let mut t: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        let origin = g.handles.first().map(|h| h.origin.as_str()).unwrap_or("?");
        let _ = writeln!(
            s,
            "handles: {} handle{} ({}) {}:",
            g.handles.len(),
            if g.handles.len() == 1 { "" } else { "s" },
            types.join(", "),
            if g.handles.iter().all(|h| h.inherited) {
                "inherited".to_string()
            } else if origin == "the shim" {
                "created through the shim at".to_string()
            } else if origin.contains(' ') {
                format!("created by {origin} at")
            } else {
                format!("created by {origin}() at")
            }
        );
        for f in frames {
            let _ = writeln!(s, "handles:     {f}");
        }
        for h in &g.handles {
            let _ = writeln!(
                s,
                "handles:   {:#010x} fd {} {} koid {} {}{}",
                h.handle,
                h.fd,
                h.ty,
                h.koid,
                h.description,
                if h.inherited { " (inherited)" } else { "" }
            );
        }
    }
    s
}

/// `LEAK SUMMARY: 4 handles to 3 objects in 2 processes`.
pub fn summary(all: &[ProcessLeaks]) -> String {
    let handles: usize = all.iter().map(|p| p.count()).sum();
    let objects: HashSet<(u64, Option<&str>)> = all
        .iter()
        .flat_map(|p| &p.groups)
        .flat_map(|g| &g.handles)
        .map(|h| (h.koid, h.dev.as_deref()))
        .collect();
    let procs = all.iter().filter(|p| p.count() > 0).count();
    let suppressed: usize = all.iter().map(|p| p.suppressed).sum();
    let mut s = format!(
        "handles: LEAK SUMMARY: {handles} handle{} to {} object{} in {procs} process{}",
        if handles == 1 { "" } else { "s" },
        objects.len(),
        if objects.len() == 1 { "" } else { "s" },
        if procs == 1 { "" } else { "es" }
    );
    if suppressed > 0 {
        let _ = write!(s, " ({suppressed} suppressed)");
    }
    s.push('\n');
    s
}

/// A handle a leak check looks at: fd, (handle value, generation), origin, creation
/// stack, inherited.
pub(super) type Candidate = (i32, (u32, u32), Origin, Option<Stack>, bool);

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(fd: i32, koid: u64) -> Leak {
        Leak {
            fd,
            handle: (fd as u32) << 2 | 3,
            generation: Some(0),
            ty: "file".into(),
            koid,
            dev: Some("8:1".into()),
            rights: None,
            description: "/tmp/x".into(),
            origin: "openat".into(),
            inherited: false,
        }
    }

    #[test]
    fn summary_counts_objects_once() {
        let p = ProcessLeaks {
            pid: 1,
            name: "a".into(),
            groups: vec![LeakGroup {
                handles: vec![leak(3, 10), leak(4, 10), leak(5, 11)],
                stack: Vec::new(),
            }],
            suppressed: 0,
        };
        let q = ProcessLeaks {
            pid: 2,
            name: "b".into(),
            groups: vec![LeakGroup {
                handles: vec![leak(3, 12)],
                stack: Vec::new(),
            }],
            suppressed: 2,
        };
        assert_eq!(
            summary(&[p, q]),
            "handles: LEAK SUMMARY: 4 handles to 3 objects in 2 processes (2 suppressed)\n"
        );
    }
}
