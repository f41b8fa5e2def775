//! Machine-readable reports of a job: the JSON report (`--report FILE`,
//! schema in docs/report.md) and SARIF 2.1.0 (`--sarif FILE`) for
//! code-scanning UIs.

use serde::Serialize;
use serde_json::{json, Value};

use super::leaks::ProcessLeaks;
use crate::backtrace::Frame;
use crate::json;

/// One stack of an exception, symbolized.
#[derive(Clone, Debug, Serialize)]
pub struct SerStack {
    pub title: String,
    #[serde(serialize_with = "json::serialize_frames")]
    pub frames: Vec<Frame>,
}

/// A policy exception as the JSON report has it.
#[derive(Clone, Debug, Serialize)]
pub struct SerException {
    pub condition: String,
    pub kind: String,
    pub action: String,
    pub pid: i32,
    pub tid: i32,
    pub process: String,
    pub thread: String,
    pub syscall: String,
    /// The handle involved (null for a call that names none).
    pub handle: Option<json::Handle<'static>>,
    /// The report's one line about it, as the text report prints it.
    pub handle_text: Option<String>,
    pub what: String,
    pub outcome: String,
    /// How many exceptions of this context (same offending and closing
    /// stacks) there were; only the first was written in full.
    pub count: usize,
    pub stacks: Vec<SerStack>,
}

impl SerException {
    /// The first exception of a report context, as `--report` lists it.
    pub fn first_of(r: &super::report::ExceptionReport) -> SerException {
        SerException {
            condition: r.condition.clone(),
            kind: r.kind.clone(),
            action: r.action.clone(),
            pid: r.pid,
            tid: r.tid,
            process: r.process_name.clone(),
            thread: r.thread_name.clone(),
            syscall: r.syscall.clone(),
            handle: r.handle_json.clone(),
            handle_text: r.handle.clone(),
            what: r.what.clone(),
            outcome: r.outcome.clone(),
            count: 1,
            stacks: r
                .sections
                .iter()
                .map(|s| SerStack {
                    title: s.title.clone(),
                    frames: s.frames.clone(),
                })
                .collect(),
        }
    }
}

/// One process of the job tree.
#[derive(Clone, Debug, Serialize)]
pub struct SerProcess {
    pub pid: i32,
    /// The job member that forked it (None for the job's first process).
    pub parent: Option<i32>,
    /// Names it ran under, one per exec.
    pub names: Vec<String>,
    /// `{"code": N}` or `{"signal": N, "core": bool}`; null while unknown.
    pub exit: Option<Value>,
}

pub const SCHEMA: &str = "handles.run.v3";

#[allow(clippy::too_many_arguments)]
pub fn json_report(
    command: &[String],
    exit: Option<Value>,
    exceptions: &[SerException],
    leaks: &[ProcessLeaks],
    processes: &[SerProcess],
    suppressed: usize,
) -> Value {
    let leaked: usize = leaks.iter().map(|p| p.count()).sum();
    let leak_suppressed: usize = leaks.iter().map(|p| p.suppressed).sum();
    json!({
        "schema": SCHEMA,
        "command": command,
        "exit": exit,
        "exceptions": exceptions,
        "leaks": leaks.iter().filter(|p| p.count() > 0).collect::<Vec<_>>(),
        "processes": processes,
        "summary": {
            "exceptions": exceptions.iter().map(|e| e.count).sum::<usize>(),
            "contexts": exceptions.len(),
            "leaked_handles": leaked,
            "suppressed": suppressed + leak_suppressed,
        },
    })
}

/// The innermost frame whose source file is on this machine, as a SARIF
/// location: system libraries with debug info name build-tree paths
/// (`./io/../sysdeps/...`) that no code-scanning UI can open.
///
/// In a Python program the innermost Python frame with a line wins over
/// any native one: the interpreter's (or an extension's) C source is not
/// where the program's author looks.
fn primary_location(frames: &[Frame]) -> Option<Value> {
    let on_disk = |f: &&Frame| {
        f.line.is_some()
            && f.file
                .as_deref()
                .is_some_and(|p| p.starts_with('/') && std::path::Path::new(p).is_file())
    };
    let f = frames
        .iter()
        .filter(|f| f.python)
        .find(on_disk)
        .or_else(|| frames.iter().find(on_disk))?;
    Some(json!({
        "physicalLocation": physical(f.file.as_deref()?, f.line?),
        "logicalLocations": f.function.as_ref().map(|n| vec![json!({"name": n, "kind": "function"})]).unwrap_or_default(),
    }))
}

/// A SARIF physicalLocation: absolute paths as file:// URIs.
fn physical(file: &str, line: u32) -> Value {
    let uri = if file.starts_with('/') {
        format!("file://{file}")
    } else {
        file.to_string()
    };
    json!({
        "artifactLocation": { "uri": uri },
        "region": { "startLine": line.max(1) }
    })
}

/// A SARIF stackFrame; the frame object of the JSON report rides along
/// in its property bag, so a SARIF consumer gets the same fields.
fn sarif_frame(f: &Frame) -> Value {
    let text = if f.python {
        format!("{} (Python)", f.function.as_deref().unwrap_or("??"))
    } else {
        format!("{:#x} {}", f.addr, f.function.as_deref().unwrap_or("??"))
    };
    let mut loc = json!({ "message": { "text": text } });
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        loc["physicalLocation"] = physical(file, line);
    }
    let mut frame = json!({
        "location": loc,
        "properties": { "frame": json::frame_value(f) },
    });
    if let Some(m) = &f.module {
        frame["module"] = json!(m);
    }
    frame
}

pub(super) fn sarif_stack(title: &str, frames: &[Frame]) -> Value {
    json!({
        "message": { "text": title },
        "frames": frames.iter().map(sarif_frame).collect::<Vec<_>>(),
    })
}

/// Adds the rule `id` to a SARIF document written by [`sarif`] and returns
/// its results, for the writers that add results of a kind of their own
/// (inherit.rs, pertest.rs); None for a document without a run.
pub(super) fn sarif_rule<'a>(
    sarif: &'a mut Value,
    id: &str,
    text: &str,
) -> Option<&'a mut Vec<Value>> {
    let run = sarif.get_mut("runs").and_then(|r| r.get_mut(0))?;
    if let Some(rules) = run
        .pointer_mut("/tool/driver/rules")
        .and_then(Value::as_array_mut)
    {
        rules.push(json!({
            "id": id,
            "shortDescription": { "text": text },
            "defaultConfiguration": { "level": "error" },
        }));
    }
    run.get_mut("results").and_then(Value::as_array_mut)
}

pub(super) fn with_location(mut result: Value, frames: &[Frame]) -> Value {
    if let Some(loc) = primary_location(frames) {
        result["locations"] = json!([loc]);
    }
    result
}

/// SARIF 2.1.0: one result per exception and per leak group.
pub fn sarif(version: &str, exceptions: &[SerException], leaks: &[ProcessLeaks]) -> Value {
    let mut results = Vec::new();
    for e in exceptions {
        let first = e.stacks.first().map(|s| s.frames.as_slice()).unwrap_or(&[]);
        let mut properties =
            json!({ "pid": e.pid, "tid": e.tid, "action": e.action, "kind": e.kind });
        if let Some(h) = &e.handle {
            properties["handle"] = json::handle_value(h);
        }
        let r = json!({
            "ruleId": e.condition,
            "level": "error",
            "message": { "text": format!("{}: {} in process {} ({}), {}", e.condition, e.what, e.pid, e.process, e.syscall) },
            "stacks": e.stacks.iter().map(|s| sarif_stack(&s.title, &s.frames)).collect::<Vec<_>>(),
            "occurrenceCount": e.count,
            "properties": properties,
        });
        results.push(with_location(r, first));
    }
    for p in leaks {
        for g in &p.groups {
            // `(pipe)` for both ends of a pipe, as the text report says.
            let mut types: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
            types.sort_unstable();
            types.dedup();
            let fds: Vec<i32> = g.handles.iter().map(|h| h.fd).collect();
            let r = json!({
                "ruleId": "leak",
                "level": "error",
                "message": { "text": format!(
                    "{} handle(s) ({}) created by {}() leaked by process {} ({}): fds {:?}",
                    g.handles.len(),
                    types.join(", "),
                    g.handles.first().map(|h| h.origin.as_str()).unwrap_or("?"),
                    p.pid,
                    p.name,
                    fds
                ) },
                "stacks": [sarif_stack("created at", &g.stack)],
                "properties": {
                    "pid": p.pid,
                    "handles": g.handles.iter().map(|h| json::handle_value(&h.json())).collect::<Vec<_>>(),
                },
            });
            results.push(with_location(r, &g.stack));
        }
    }
    let rule = |id: &str, text: &str| {
        json!({
            "id": id,
            "shortDescription": { "text": text },
            "defaultConfiguration": { "level": "error" },
        })
    };
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": { "driver": {
                "name": "handles",
                "version": version,
                "rules": [
                    rule("bad-handle", "Use, close or duplication of a closed or never-opened handle"),
                    rule("wrong-object", "A call on a handle of the wrong object type"),
                    rule("leak", "A handle created by a process and still open when it exits"),
                    rule("new-object", "Creation of a handle the job policy does not allow"),
                ],
            }},
            "results": results,
        }],
    })
}
