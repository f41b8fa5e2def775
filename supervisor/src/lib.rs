//! The library behind the `handles` binary.
//!
//! - [`inspect`] reads the handle table of any live process from /proc (and,
//!   where one exists, from the table its shim or supervisor keeps).

pub mod inspect;
