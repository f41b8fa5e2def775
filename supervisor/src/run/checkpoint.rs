//! `handles_checkpoint`: the stop that marks a test boundary, and the
//! per-test leak attribution done there and at the process's exit (the
//! data and the report are pertest.rs's).

use std::collections::HashSet;

use super::leaks::Candidate;
use super::pertest::{render, Mark, TestLeaks};
use super::state::Job;
use super::tracer::{Regs, Resumed, Stopped};

/// Longest test id read from the program (pytest's parametrized ids can
/// be long; the rest is cut).
const NAME_MAX: usize = 4096;

impl Job {
    /// `fcntl(-1, CHECKPOINT_CMD, name)`: a test boundary of `tgid`.
    /// Answered with 0 without running (the kernel would say EBADF).
    pub(super) fn on_checkpoint(
        &mut self,
        stop: Stopped,
        tgid: i32,
        regs: Regs,
        name_at: u64,
    ) -> Resumed {
        let name = (name_at != 0)
            .then(|| stop.read_head(name_at, NAME_MAX))
            .flatten();
        let mark = if name_at != 0 && name.is_none() {
            // An unreadable name: the call fails as natively.
            stop.skip_with(regs, libc::EFAULT);
            return stop.cont();
        } else {
            Mark::from_name(name.as_deref())
        };
        self.checkpoint(stop.tid(), tgid, mark);
        stop.skip_with(regs, 0);
        stop.cont()
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
