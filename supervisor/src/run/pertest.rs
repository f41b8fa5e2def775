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

use super::job::*;
use super::leakcheck::Candidate;

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
    current: Option<String>,
    /// The test that began last and has not ended.
    running: Option<String>,
    /// Handles (fd, value) open at the last checkpoint.
    seen: HashSet<(i32, u32)>,
    /// Handles given to a test, by (fd, value).
    owned: HashMap<(i32, u32), String>,
}

/// The leaks of one test.
#[derive(Clone, Debug, Serialize)]
pub struct TestLeaks {
    /// The test's id as the runner named it (pytest's nodeid).
    pub test: String,
    #[serde(flatten)]
    pub leaks: ProcessLeaks,
}

/// Longest test id read from the program (pytest's parametrized ids can
/// be long; the rest is cut).
const NAME_MAX: usize = 4096;

impl Job {
    /// `fcntl(-1, CHECKPOINT_CMD, name)`: a test boundary of `tgid`.
    /// Answered with 0 without running (the kernel would say EBADF).
    pub(super) fn on_checkpoint(&mut self, tid: i32, tgid: i32, regs: Regs, name_at: u64) {
        let name = (name_at != 0)
            .then(|| tracer::read_head(tid, name_at, NAME_MAX))
            .flatten();
        let mark = if name_at != 0 && name.is_none() {
            // An unreadable name: the call fails as natively.
            self.skip_with(tid, regs, libc::EFAULT);
            self.resume(tid, None);
            return;
        } else {
            Mark::from_name(name.as_deref())
        };
        self.checkpoint(tid, tgid, mark);
        self.skip_with(tid, regs, 0);
        self.resume(tid, None);
    }

    fn checkpoint(&mut self, tid: i32, tgid: i32, mark: Mark) {
        let now = self.leak_candidates(tid, tgid, false);
        let st = self.segments.entry(tgid).or_default();
        let keys: HashSet<(i32, u32)> = now.iter().map(|c| (c.0, c.1 .0)).collect();
        if let Some(label) = &st.current {
            for k in keys.difference(&st.seen) {
                st.owned.insert(*k, label.clone());
            }
        }
        // A number closed and made again is another handle: forget what
        // is no longer open.
        st.owned.retain(|k, _| keys.contains(k));
        st.seen = keys;
        let ended = match &mark {
            Mark::End => st.running.take(),
            Mark::Test(t) if st.running.as_ref().is_some_and(|r| r != t) => st.running.take(),
            _ => None,
        };
        match mark {
            Mark::Test(t) => {
                st.current = Some(t.clone());
                st.running = Some(t);
            }
            Mark::Pause | Mark::End => st.current = None,
        }
        if let Some(test) = ended {
            self.report_test(tid, tgid, &test, now);
        }
    }

    /// At the exit of `tgid`: a test still running ends with it.
    pub(super) fn end_of_tests(&mut self, tid: i32, tgid: i32) {
        if self
            .segments
            .get(&tgid)
            .is_some_and(|s| s.running.is_some())
        {
            self.checkpoint(tid, tgid, Mark::End);
        }
        self.segments.remove(&tgid);
    }

    /// Reports the handles `test` was given that are open in `now`.
    fn report_test(&mut self, tid: i32, tgid: i32, test: &str, now: Vec<Candidate>) {
        let Some(st) = self.segments.get_mut(&tgid) else {
            return;
        };
        let mine: Vec<Candidate> = now
            .into_iter()
            .filter(|c| st.owned.get(&(c.0, c.1 .0)).is_some_and(|t| t == test))
            .collect();
        // Reported once: a handle stays the test's leak, not the next's.
        st.owned.retain(|_, t| t != test);
        if mine.is_empty() {
            return;
        }
        let Some((leaks, stacks, rules)) = self.leak_groups(tid, tgid, mine, false) else {
            return;
        };
        if leaks.count() > 0 {
            let mut text = render(test, &leaks, &stacks);
            text.push_str(&rules);
            self.write_report(&text);
        }
        self.test_leaks.push(TestLeaks {
            test: test.to_string(),
            leaks,
        });
    }
}

/// A test's report: its own heading, then the groups as an exit-time
/// leak check writes them.
fn render(test: &str, p: &ProcessLeaks, stacks: &[Vec<crate::backtrace::Frame>]) -> String {
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
    let Some(results) = super::output::sarif_rule(
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
                "stacks": [super::output::sarif_stack("created at", &g.stack)],
                "properties": {
                    "test": l.test,
                    "pid": l.leaks.pid,
                    "handles": g.handles.iter().map(|h| crate::json::handle_value(&h.json())).collect::<Vec<_>>(),
                },
            });
            results.push(super::output::with_location(r, &g.stack));
        }
    }
}
