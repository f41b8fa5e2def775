//! The handle model: how a Linux file descriptor is presented as a
//! Zircon-style handle.
//!
//! This crate is deliberately `no_std` and dependency-free: the LD_PRELOAD
//! shim links it, and the shim must not pull in an allocator-heavy world or
//! anything that could re-enter the libc functions it interposes.

#![no_std]

pub mod fdpath;
pub mod handle;
pub mod inherit;
pub mod judge;
pub mod objtype;
pub mod policy;
pub mod python;
pub mod rights;
pub mod syscalls;
pub mod table;

pub use handle::{Fd, HandleValue, Koid};
pub use objtype::ObjType;
pub use rights::Rights;
