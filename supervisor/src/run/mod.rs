//! `handles run`: the ptrace supervisor.
//!
//! - [`syscalls`]: the fd syscall table (the prefilter and the policy both
//!   read it);
//! - [`spawn`]: PATH lookup, fork, PTRACE_SEIZE, filter, exec;
//! - [`job`]: the job, its event loop and the ptrace events (fork, exec,
//!   exit, stops); `checks` (every policy decision), `creation` (following
//!   creating calls), `quarantine`, `leakcheck` and `strict` (moving a
//!   process to the strict filter) extend it;
//! - `execinfo`: what a new image was started with, from its initial
//!   stack; `privilege`: set-ID and file-capability programs;
//! - [`front`]: the `handles` process the shell waits on, apart from the
//!   supervisor, so that `handles run` returns when the program exits;
//! - [`fdtable`]: the model of one fd table;
//! - `shimtable`: the shim's table, as the supervisor reads and updates
//!   it; [`publish`]: the supervisor's own table for processes without a
//!   shim; `dents`: hiding tombstones from a program's listing of its fds;
//! - [`tracer`]: registers, memory, injected syscalls;
//! - [`report`]: exception reports; [`leaks`]: leak reports;
//!   [`output`]: the JSON and SARIF reports.

mod checks;
mod creation;
mod dents;
mod execinfo;
pub mod fdtable;
pub mod front;
pub mod inherit;
pub mod job;
mod leakcheck;
pub mod leaks;
pub mod output;
pub mod pertest;
mod privilege;
pub mod publish;
mod quarantine;
pub mod report;
mod shimtable;
pub mod spawn;
mod strict;
pub mod syscalls;
pub mod tracer;

pub use job::{Exit, Job, OnException, Outcome, RunError, RunOptions};
// What `handles attach` shares with the job's checks.
pub(crate) use checks::{expected_object, object_facts_at, refine_socket};
pub(crate) use creation::{fix_poll, scm_rights};
pub(crate) use dents::{filter_dirents, listed_pid};
pub use leaks::LeakMode;
pub use syscalls::CheckLevel;
