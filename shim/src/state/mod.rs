//! The shim's process-wide state and its handle table: a sealed memfd
//! named `handles-table:<pid>`, mapped MAP_SHARED, in the layout of
//! `handles_model::table`.
//!
//! - `table`: the mapping, slot access and locks, making the memfd;
//! - `fork`: the mirror a forked child reads until it makes its own table;
//! - `records`: what is recorded of each handle (creation, close, name);
//! - `own_fds`: the shim's own fds (the table's, the tombstone source);
//! - `limits`: RLIMIT_NOFILE and the fds counted against it;
//! - `startup`: the fds open when the shim starts;
//! - `exe`: the executable's name, for reports.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

mod exe;
mod fork;
mod limits;
mod own_fds;
mod records;
mod startup;
mod table;

pub use exe::*;
pub use fork::*;
pub use limits::*;
pub use own_fds::*;
pub use records::*;
pub use startup::*;
pub use table::*;

/// Set once the constructor has published the table; never in a setuid
/// context. Every wrapper is a plain pass-through while it is false.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// [`IN`]: this thread runs shim code, and a nested call (from a
    /// signal handler, or from a libc function the shim calls) goes
    /// straight to the raw syscall. [`COUNTED`]: it is counted among a
    /// private table's writers (`fork::count_in`) until it leaves.
    static IN_SHIM: Cell<u8> = const { Cell::new(0) };
}

const IN: u8 = 1;
const COUNTED: u8 = 2;

/// Marks this thread as inside the shim; false if it already was.
#[inline(always)]
pub fn enter() -> bool {
    IN_SHIM.with(|c| {
        if c.get() & IN != 0 {
            return false;
        }
        c.set(IN);
        true
    })
}

#[inline(always)]
pub fn leave() {
    IN_SHIM.with(|c| {
        if c.get() & COUNTED != 0 {
            fork::writer_left();
        }
        c.set(0);
    })
}

fn counted() -> bool {
    IN_SHIM.with(|c| c.get() & COUNTED != 0)
}

fn set_counted(on: bool) {
    IN_SHIM.with(|c| {
        c.set(if on {
            c.get() | COUNTED
        } else {
            c.get() & !COUNTED
        })
    });
}

#[inline(always)]
pub fn active() -> bool {
    ACTIVE.load(Relaxed)
}
