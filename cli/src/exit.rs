//! Exit codes of `handles <pid>` (see the README's table).
//!
//! Each class of failure has its own code so that scripts can tell "the
//! process is gone" from "you may not look at it".

/// Everything was shown.
pub const OK: u8 = 0;
/// A `--handle`/`--koid` lookup found nothing.
pub const NOT_FOUND: u8 = 1;
/// Bad command line (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// No such process.
pub const NO_SUCH_PROCESS: u8 = 3;
/// Permission denied.
pub const PERMISSION: u8 = 4;
/// The process exited while its table was read: what was read was shown.
pub const EXITED: u8 = 5;
/// Any other I/O failure.
pub const IO: u8 = 6;
/// A program `handles` needs for this output is not installed (`dot` for
/// `handles graph --svg`).
pub const MISSING_TOOL: u8 = 7;
/// `handles attach`: the process already has a tracer (a debugger,
/// strace, a `handles run` supervisor).
pub const ALREADY_TRACED: u8 = 8;
