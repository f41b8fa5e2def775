//! `handles run`: the ptrace supervisor (docs/architecture.md draws it).
//!
//! The loop and its executor:
//! - [`job`]: starts the job, waits for its events and hands each stop, as
//!   a [`tracer::Stopped`], to the handler that must end it; executes the
//!   judge's verdicts at syscall stops;
//! - `decide`: the pure decisions around the judge (verdict to step, a
//!   call's route, the quarantine's room), unit-tested;
//! - `state`: `Job`'s data (threads, processes, what each waits for).
//!
//! What the stop handlers do, one module each (`impl Job` blocks that
//! import `state` and leaf modules only):
//! - `checks`: what the tables know of the fds a call uses;
//! - `quarantine`: closes into tombstones, eviction, giving numbers back;
//! - `creation`: following creating calls; new-* and `--max-handles`;
//! - `dents`: hiding tombstones from a program's listing of its fds;
//! - `exceptions`: building, counting and writing reports, and their
//!   consequence (SIGTRAP, a stop for a debugger, SIGKILL);
//! - `stacks`: capturing and symbolizing the stacks of stopped calls;
//! - `shimsync`: the shim's table and the model kept in step; publishing;
//! - `leakcheck`, `checkpoint` (per-test leaks), `inheritcheck`
//!   (`--inherit-check`), `strict` (moving a process to the strict filter).
//!
//! Leaves:
//! - [`tracer`]: ptrace, tracee memory, injected syscalls;
//! - [`syscalls`]: the fd syscall table (the prefilter and the policy both
//!   read it); [`spawn`]: PATH lookup, fork, PTRACE_SEIZE, filter, exec;
//! - [`options`]: what `handles run` is given and returns;
//! - [`fdtable`]: the model of one fd table; `shimtable`: the shim's table
//!   as the supervisor reads and updates it; [`publish`]: the supervisor's
//!   own table for processes without a shim;
//! - `execinfo`: what a new image was started with, from its initial
//!   stack; `privilege`: set-ID and file-capability programs; `procfs`:
//!   /proc, kcmp, auxv, limits; [`signals`]: forwarding and wake timers;
//!   `random`;
//! - [`front`]: the `handles` process the shell waits on, apart from the
//!   supervisor, so that `handles run` returns when the program exits;
//! - [`report`]: exception reports; [`leaks`]: leak reports; [`inherit`]
//!   and [`pertest`]: their records and reports; [`output`]: JSON and
//!   SARIF.

mod checkpoint;
mod checks;
mod creation;
mod decide;
mod dents;
mod exceptions;
mod execinfo;
pub mod fdtable;
pub mod front;
mod images;
pub mod inherit;
mod inheritcheck;
pub mod job;
mod leakcheck;
pub mod leaks;
pub mod options;
pub mod output;
pub mod pertest;
mod private;
mod privilege;
mod procfs;
pub mod publish;
mod quarantine;
mod random;
pub mod report;
mod shimsync;
mod shimtable;
pub mod signals;
pub mod spawn;
mod stacks;
mod state;
mod strict;
pub mod syscalls;
pub mod tracer;

// What `handles attach` shares with the job's checks.
pub(crate) use checks::expected_object;
pub(crate) use creation::{fix_poll, scm_rights};
pub(crate) use dents::{filter_dirents, listed_pid};
pub use leaks::LeakMode;
pub use options::{Exit, OnException, Outcome, RunError, RunOptions};
pub(crate) use procfs::{object_facts_at, refine_socket};
pub use state::Job;
pub use syscalls::CheckLevel;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The `super::NAME` paths a module's code (tests left out) names.
    fn imports(text: &str) -> BTreeSet<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or(text);
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut out = BTreeSet::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("super::") {
            rest = &rest[at + "super::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")],
            };
            out.extend(
                names
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .map(String::from),
            );
        }
        out
    }

    #[test]
    fn the_run_modules_import_each_other_one_way() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/run");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("src/run is readable") {
            let path = entry.expect("a directory entry").path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if name == "mod" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a module's source");
            graph.insert(name.to_string(), imports(&text));
        }
        assert!(graph.len() > 20, "found {} modules", graph.len());
        for (m, deps) in &graph {
            assert!(
                m == "job" || !deps.contains("job"),
                "{m} imports job: only the loop may see every handler"
            );
        }
        // Kahn's algorithm: whatever is left over sits on a circle.
        let mut left: BTreeMap<&str, BTreeSet<&str>> = graph
            .iter()
            .map(|(m, deps)| {
                let deps = deps
                    .iter()
                    .map(String::as_str)
                    .filter(|d| *d != m && graph.contains_key(*d))
                    .collect();
                (m.as_str(), deps)
            })
            .collect();
        while let Some(free) = left.iter().find(|(_, d)| d.is_empty()).map(|(m, _)| *m) {
            left.remove(free);
            for deps in left.values_mut() {
                deps.remove(free);
            }
        }
        assert!(left.is_empty(), "import circle among {left:?}");
    }

    #[test]
    fn the_import_reader_sees_groups_and_paths() {
        let text = "use super::state::Job;\nuse super::{\n    inherit,\n    leaks::LeakMode,\n};\n\
                    let x = super::procfs::comm(1); // super::ignored\n\
                    #[cfg(test)]\nuse super::job;\n";
        let got: Vec<String> = imports(text).into_iter().collect();
        assert_eq!(got, ["inherit", "leaks", "procfs", "state"]);
    }
}
