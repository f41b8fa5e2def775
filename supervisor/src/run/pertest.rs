//! Per-test leak attribution: test boundaries marked by
//! `handles_checkpoint(name)` (shim/src/checkpoint.rs; docs/per-test.md),
//! and the handles each test created and had not closed by its end.
//!
//! At each checkpoint of a process, the handles it created that are open
//! now and were not at its previous checkpoint are given to the label the
//! segment between them ran under (a test's id, or none). When a test
//! ends (`handles_checkpoint(NULL)`, the next test's checkpoint, or the
//! process's exit), its handles still open are its leaks.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::leaks::{self, ProcessLeaks};
use super::output;

/// What `handles_checkpoint` asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A test begins or resumes.
    Test(String),
    /// New handles belong to no test (a wider fixture, the runner).
    Pause,
    /// The current test ended.
    End,
}

impl Mark {
    pub fn from_name(name: Option<&[u8]>) -> Mark {
        match name {
            None => Mark::End,
            Some([]) => Mark::Pause,
            Some(n) => Mark::Test(String::from_utf8_lossy(n).into_owned()),
        }
    }
}

/// One process's test boundaries so far.
#[derive(Debug, Default)]
pub struct Segments {
    /// The label new handles get (None: no test).
    pub(super) current: Option<String>,
    /// The test that began last and has not ended.
    pub(super) running: Option<String>,
    /// Handles (fd, value) open at the last checkpoint.
    pub(super) seen: HashSet<(i32, u32)>,
    /// Handles given to a test, by (fd, value).
    pub(super) owned: HashMap<(i32, u32), String>,
}

/// The leaks of one test.
#[derive(Clone, Debug, Serialize)]
pub struct TestLeaks {
    /// The test's id as the runner named it (pytest's nodeid).
    pub test: String,
    #[serde(flatten)]
    pub leaks: ProcessLeaks,
}

/// A test's report: its own heading, then the groups as an exit-time
/// leak check writes them.
pub(super) fn render(
    test: &str,
    p: &ProcessLeaks,
    stacks: &[Vec<crate::backtrace::Frame>],
) -> String {
    let n = p.count();
    let mut s = format!(
        "handles: ==== leak check: test {test} (process {} ({})) ends holding {n} handle{} it created ====\n",
        p.pid,
        p.name,
        if n == 1 { "" } else { "s" },
    );
    // The groups as leaks::render writes them, after its own heading.
    let body = leaks::render(p, stacks);
    s.extend(body.split_inclusive('\n').skip(1));
    s
}

/// How many handles the tests leaked.
pub fn count(t: &[TestLeaks]) -> usize {
    t.iter().map(|l| l.leaks.count()).sum()
}

/// The JSON report's `test_leaks` (docs/report.md).
pub fn add_to_json(report: &mut Value, t: &[TestLeaks]) {
    report["test_leaks"] = json!(t.iter().filter(|l| l.leaks.count() > 0).collect::<Vec<_>>());
    if let Some(s) = report.get_mut("summary") {
        s["test_leaked_handles"] = json!(count(t));
    }
}

/// SARIF: one `test-leak` result per group, carrying the test's id.
pub fn add_to_sarif(sarif: &mut Value, t: &[TestLeaks]) {
    let Some(results) = output::sarif_rule(
        sarif,
        "test-leak",
        "A handle a test created and had not closed by its end",
    ) else {
        return;
    };
    for l in t {
        for g in &l.leaks.groups {
            let fds: Vec<i32> = g.handles.iter().map(|h| h.fd).collect();
            let types: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
            let r = json!({
                "ruleId": "test-leak",
                "level": "error",
                "message": { "text": format!(
                    "test {} leaked {} handle(s) ({}) created by {}() in process {} ({}): fds {:?}",
                    l.test,
                    g.handles.len(),
                    types.join(", "),
                    g.handles.first().map_or("?", |h| h.origin.as_str()),
                    l.leaks.pid,
                    l.leaks.name,
                    fds
                ) },
                "stacks": [output::sarif_stack("created at", &g.stack)],
                "properties": {
                    "test": l.test,
                    "pid": l.leaks.pid,
                    "handles": g.handles.iter().map(|h| crate::json::handle_value(&h.json())).collect::<Vec<_>>(),
                },
            });
            results.push(output::with_location(r, &g.stack));
        }
    }
}
