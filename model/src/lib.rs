//! The handle model: how a Linux file descriptor is presented as a
//! Zircon-style handle.
//!
//! This crate is deliberately `no_std` and dependency-free: the LD_PRELOAD
//! shim links it, and the shim must not pull in an allocator-heavy world or
//! anything that could re-enter the libc functions it interposes.
//!
//! - [`handle`], [`objtype`], [`rights`]: handle values and koids, object
//!   types (and their codes in the table), Zircon rights;
//! - [`syscalls`]: the fd syscall table the prefilter, the supervisor and
//!   the shim all read;
//! - [`policy`]: the job policy and its encoded form; [`judge`]: what
//!   happens to a call on an fd that is not an open handle; [`report`]:
//!   the text of an exception report, for the supervisor and the shim;
//! - [`table`]: the shared handle table's layout; [`protocol`]: the rest
//!   of the contract between the shim and the supervisor;
//! - [`fdpath`]: paths that name fd-table entries; [`python`]: CPython's
//!   interpreter state, for Python frames in stacks.

#![no_std]

pub mod fdpath;
pub mod handle;
pub mod inherit;
pub mod judge;
pub mod objtype;
pub mod policy;
pub mod protocol;
pub mod python;
pub mod report;
pub mod rights;
pub mod syscalls;
pub mod table;

pub use handle::{Fd, HandleValue, Koid};
pub use objtype::ObjType;
pub use rights::Rights;
