//! The library behind the `handles` binary.
//!
//! - [`inspect`] reads the handle table of any live process from /proc (and,
//!   where one exists, from the table its shim or supervisor keeps).
//! - [`policy`] is the Zircon-style job policy: conditions, actions, nested
//!   job inheritance, and its parsers.
//! - [`seccomp`] compiles the classic-BPF prefilter that makes only fd
//!   syscalls stop a supervised tracee.
//! - [`attach`] is `handles attach PID`: a recording window on a live
//!   process, undone at detach.
//! - [`backtrace`] unwinds a stopped thread remotely and symbolizes stacks.
//! - [`json`] writes the frame and handle objects every JSON document
//!   shares.
//! - [`run`] is `handles run`: the ptrace supervisor of a job.
//! - [`suppress`] reads suppression files and matches reports against them.

pub mod attach;
pub mod backtrace;
pub mod inspect;
pub mod json;
pub mod policy;
pub mod run;
pub mod seccomp;
pub mod suppress;
