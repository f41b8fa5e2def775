//! The supervisor's side of the fd syscall table (the table itself lives
//! in `handles_model::syscalls`, shared with the shim): which syscalls the
//! prefilter traces at each check level.

pub use handles_model::syscalls::{lookup, path_arg, Desc, Kind, TABLE};

use crate::seccomp::{ArgTest, TracedSyscall};

/// Which syscalls the prefilter stops on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckLevel {
    /// Every fd-taking syscall: uses of closed handles are caught.
    All,
    /// Only creation, close and dup: much cheaper, but a read or write on a
    /// closed fd is not seen (the quarantine still makes it fail with EBADF).
    Lifecycle,
}

/// The `mmap` calls that use no fd, which the supervisor resumes at once
/// (`Job::used_fds`): MAP_ANONYMOUS in the flags (the kernel then ignores
/// the fd), or an fd that is negative as the 32-bit int the kernel reads
/// (it truncates the register and fails with EBADF). These are malloc
/// arenas, thread stacks and ld.so's zero-filled maps: about 3 of the 8
/// mmaps of a short dynamically linked program, which need no stop.
const MMAP_WITHOUT_FD: &[ArgTest] = &[
    ArgTest {
        arg: 3,
        mask: libc::MAP_ANONYMOUS as u32,
    },
    ArgTest {
        arg: 4,
        mask: 1 << 31,
    },
];

/// Where shared libraries live: the top of the x86-64 user address
/// space, where the kernel's top-down mmap places ld.so, libc, the shim
/// and every other library (from just below the stack gap and its up to
/// 1 TiB of randomization, downwards). Executables are mapped far lower
/// (non-PIE at 4 MiB, PIE near 0x5555_5555_0000 plus up to 1 TiB), so a
/// program's own `syscall` instructions fall outside. Where the layout is
/// unusual (`ulimit -s unlimited` selects the legacy bottom-up layout,
/// address-space-hungry programs push late libraries down) calls simply
/// stop as they would in strict mode: slower, never less checked.
pub const LIBRARY_IPS: std::ops::Range<u64> = 0x6000_0000_0000..0x8000_0000_0000;

/// Whether a syscall made from library code may skip its stop when the
/// job's shim covers the process (`FilterSpec::allow_ip`). Those with a
/// free register do: the shim marks the ones it wants judged. mmap has no
/// free register but is what ld.so does most while loading a library,
/// and the shim passes a bad one on by proxy (`marker::PROXY`). The other
/// six-argument syscalls (recvfrom, sendto, splice, ...) keep stopping:
/// the shim cannot mark them, and libc issues few of them internally.
fn ip_exempt(d: &Desc) -> bool {
    d.cookie_arg().is_some() || d.kind == Kind::Mmap
}

/// The prefilter's traced set for `level`. Syscalls for which `judged`
/// is true stop even when the shim makes them (no cookie exemption): the
/// job's policy must see each one (see `checks::judged_at_every_call`).
pub fn traced(level: CheckLevel, judged: impl Fn(&Desc) -> bool) -> Vec<TracedSyscall> {
    TABLE
        .iter()
        .filter(|d| level == CheckLevel::All || d.is_lifecycle())
        .map(|d| {
            let judged = judged(d);
            TracedSyscall {
                nr: d.nr,
                cookie_arg: if judged { None } else { d.cookie_arg() },
                allow_if: match d.kind {
                    Kind::Mmap => MMAP_WITHOUT_FD,
                    _ => &[],
                },
                ip_exempt: !judged && ip_exempt(d),
            }
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
    fn only_mmap_has_argument_tests() {
        let all = traced(CheckLevel::All, |_| false);
        let mmap = all.iter().find(|t| t.nr == libc::SYS_mmap).unwrap();
        assert_eq!(mmap.allow_if, MMAP_WITHOUT_FD);
        assert!(all
            .iter()
            .all(|t| t.nr == libc::SYS_mmap || t.allow_if.is_empty()));
        // --check=lifecycle does not trace mmap at all.
        assert!(traced(CheckLevel::Lifecycle, |_| false)
            .iter()
            .all(|t| t.nr != libc::SYS_mmap && t.allow_if.is_empty()));
    }

    #[test]
    fn lifecycle_is_a_subset() {
        let all = traced(CheckLevel::All, |_| false).len();
        let life = traced(CheckLevel::Lifecycle, |_| false).len();
        assert!(life < all && life > 20);
    }
}
