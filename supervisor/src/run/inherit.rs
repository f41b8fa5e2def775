//! `--inherit-check`: at every exec in the job, the handles that cross
//! into the new image implicitly (the rule is `handles_model::inherit`,
//! docs/inherit.md). This module gathers the facts at the exec event and
//! reports; it decides nothing itself.

use serde::Serialize;
use serde_json::{json, Value};

use super::fdtable::Stack;

/// One handle that crossed an exec implicitly.
#[derive(Clone, Debug)]
pub struct CrossedHandle {
    pub fd: i32,
    pub handle: u32,
    pub ty: String,
    pub koid: u64,
    pub description: String,
    /// The call that made it (`socket`, `openat`, ...).
    pub origin: String,
}

impl CrossedHandle {
    /// The handle as every JSON document shows one.
    pub fn json(&self) -> crate::json::Handle<'_> {
        crate::json::Handle {
            value: Some(self.handle),
            ty: Some(self.ty.as_str().into()),
            koid: Some(self.koid),
            description: Some(self.description.as_str().into()),
            ..crate::json::Handle::fd_only(self.fd, crate::json::HandleState::Open)
        }
    }
}

impl Serialize for CrossedHandle {
    /// `{"handle": HANDLE, "origin"}` (docs/report.md), as a leak's.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("handle", &self.json())?;
        m.serialize_entry("origin", &self.origin)?;
        m.end()
    }
}

/// Handles that crossed one exec and share one creation stack.
#[derive(Clone, Debug, Serialize)]
pub struct CrossingGroup {
    /// The process that exec'd.
    pub pid: i32,
    /// Its image before the exec.
    pub from: String,
    /// The program it exec'd (what the handles crossed into).
    pub into: String,
    /// The process whose record made them (the exec'ing one, or the
    /// parent it was forked from).
    pub created_in: i32,
    pub handles: Vec<CrossedHandle>,
    #[serde(serialize_with = "crate::json::serialize_frames")]
    pub stack: Vec<crate::backtrace::Frame>,
}

/// What the inherit check found in the whole job.
#[derive(Debug, Default)]
pub struct Crossings {
    pub groups: Vec<CrossingGroup>,
    pub suppressed: usize,
}

impl Crossings {
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.handles.len()).sum()
    }
}

/// Handles that crossed, by (creating process, creation stack).
pub(super) type Group = (Option<Stack>, Vec<CrossedHandle>);

pub(super) fn render(g: &CrossingGroup, frames: &[crate::backtrace::Frame]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut types: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let origin = g.handles.first().map_or("?", |h| h.origin.as_str());
    let by = if origin.contains(' ') {
        origin.to_string()
    } else {
        format!("{origin}()")
    };
    let _ = writeln!(
        s,
        "handles: {} handle{} ({}) created by {by} in process {} at:",
        g.handles.len(),
        if g.handles.len() == 1 { "" } else { "s" },
        types.join(", "),
        g.created_in,
    );
    if frames.is_empty() {
        let _ = writeln!(s, "handles:     (no creation stack recorded)");
    }
    for f in frames {
        let _ = writeln!(s, "handles:     {f}");
    }
    for h in &g.handles {
        let _ = writeln!(
            s,
            "handles:   {:#010x} fd {} {} koid {} {} crossed into {}",
            h.handle, h.fd, h.ty, h.koid, h.description, g.into
        );
    }
    s
}

/// `INHERIT SUMMARY: N handles crossed M execs implicitly`.
pub fn summary(c: &Crossings) -> String {
    let n = c.count();
    let execs: std::collections::HashSet<(i32, &str)> =
        c.groups.iter().map(|g| (g.pid, g.into.as_str())).collect();
    let mut s = format!(
        "handles: INHERIT SUMMARY: {n} handle{} crossed {} exec{} implicitly",
        if n == 1 { "" } else { "s" },
        execs.len(),
        if execs.len() == 1 { "" } else { "s" },
    );
    if c.suppressed > 0 {
        s.push_str(&format!(" ({} suppressed)", c.suppressed));
    }
    s.push('\n');
    s
}

/// The JSON report's `crossings` (added beside what `output::json_report`
/// writes; docs/report.md).
pub fn add_to_json(report: &mut Value, c: &Crossings) {
    report["crossings"] = json!(c.groups);
    if let Some(s) = report.get_mut("summary") {
        s["implicit_crossings"] = json!(c.count());
    }
}

/// SARIF: one `implicit-crossing` result per group, located at its
/// creation frame (the results the frame serializer already places).
pub fn add_to_sarif(sarif: &mut Value, c: &Crossings) {
    let Some(results) = super::output::sarif_rule(
        sarif,
        "implicit-crossing",
        "A handle that crossed an exec without O_CLOEXEC and without being passed on purpose",
    ) else {
        return;
    };
    for g in &c.groups {
        let fds: Vec<i32> = g.handles.iter().map(|h| h.fd).collect();
        let types: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
        let r = json!({
            "ruleId": "implicit-crossing",
            "level": "error",
            "message": { "text": format!(
                "{} handle(s) ({}) created by {}() in process {} crossed into {} implicitly (exec by process {} ({})): fds {:?}",
                g.handles.len(),
                types.join(", "),
                g.handles.first().map_or("?", |h| h.origin.as_str()),
                g.created_in,
                g.into,
                g.pid,
                g.from,
                fds
            ) },
            "stacks": [super::output::sarif_stack("created at", &g.stack)],
            "properties": {
                "pid": g.pid,
                "into": g.into,
                "handles": g.handles.iter().map(|h| crate::json::handle_value(&h.json())).collect::<Vec<_>>(),
            },
        });
        results.push(super::output::with_location(r, &g.stack));
    }
}
