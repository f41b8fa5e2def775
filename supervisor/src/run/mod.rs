//! `handles run`: the ptrace supervisor.
//!
//! - [`syscalls`]: the fd syscall table (the prefilter and the policy both
//!   read it);
//! - [`spawn`]: PATH lookup, fork, PTRACE_SEIZE, filter, exec;
//! - [`job`]: the event loop, fd tracking, quarantine, policy;
//! - [`fdtable`]: the model of one fd table;
//! - [`tracer`]: registers, memory, injected syscalls;
//! - [`report`]: exception reports.

pub mod fdtable;
pub mod job;
pub mod leaks;
pub mod output;
pub mod publish;
pub mod report;
pub mod spawn;
pub mod syscalls;
pub mod tracer;

pub use job::{Exit, Job, OnException, Outcome, RunError, RunOptions};
pub use leaks::LeakMode;
pub use syscalls::CheckLevel;
