//! The supervisor's side of the fd syscall table (the table itself lives
//! in `handles_model::syscalls`, shared with the shim): which syscalls the
//! prefilter traces at each check level.

pub use handles_model::syscalls::{lookup, Desc, Kind, TABLE};

use crate::seccomp::TracedSyscall;

/// Which syscalls the prefilter stops on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckLevel {
    /// Every fd-taking syscall: uses of closed handles are caught.
    All,
    /// Only creation, close and dup: much cheaper, but a read or write on a
    /// closed fd is not seen (the quarantine still makes it fail with EBADF).
    Lifecycle,
}

/// The prefilter's traced set for `level`. Syscalls for which `judged`
/// is true stop even when the shim makes them (no cookie exemption): the
/// job's policy must see each one (see `checks::judged_at_every_call`).
pub fn traced(level: CheckLevel, judged: impl Fn(&Desc) -> bool) -> Vec<TracedSyscall> {
    TABLE
        .iter()
        .filter(|d| level == CheckLevel::All || d.is_lifecycle())
        .map(|d| TracedSyscall {
            nr: d.nr,
            cookie_arg: if judged(d) { None } else { d.cookie_arg() },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_numbers_match_libc() {
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("close", libc::SYS_close),
            ("openat", libc::SYS_openat),
            ("dup3", libc::SYS_dup3),
            ("recvmmsg", libc::SYS_recvmmsg),
            ("statx", libc::SYS_statx),
            ("mq_open", libc::SYS_mq_open),
        ] {
            assert_eq!(lookup(nr).map(|d| d.name), Some(name));
        }
    }

    #[test]
    fn lifecycle_is_a_subset() {
        let all = traced(CheckLevel::All, |_| false).len();
        let life = traced(CheckLevel::Lifecycle, |_| false).len();
        assert!(life < all && life > 20);
    }
}
