//! What the supervisor does at a syscall-entry stop, decided from facts
//! alone (no ptrace, no /proc): the judge's verdict turned into a step,
//! which arguments the judge is asked about, the route of a call the
//! judge let run, and the quarantine's room rules. `job.rs` executes the
//! steps; the judge itself is `handles_model::judge`.

use handles_model::judge::{self, Held, Known, Verdict};

use super::syscalls::{Desc, Kind};
use crate::policy::Action;

/// What the executor does with a stopped call once the judge spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The call goes on to the remaining checks (wrong-object, its route).
    Continue,
    /// The call runs as it is; the kernel answers.
    Resume,
    /// A sweep's close of an open handle: closed, not quarantined.
    CloseUnquarantined,
    /// The call fails with this errno without running.
    Fail(i32),
    /// The quarantined number goes back to the kernel: the close runs on
    /// the tombstone and its exit answers EBADF.
    GiveBack(i32),
    /// The report of this close is built now and held for the thread's
    /// next close; then the number is given back (`give_back`) or the
    /// call fails with EBADF.
    Hold { held: Held, give_back: bool },
    /// Report, then `action`; unless `run`, the call first fails with
    /// EBADF without running.
    Raise {
        fd: i32,
        kind: judge::Kind,
        action: Action,
        quarantined: bool,
        run: bool,
    },
}

/// The step for the judge's `verdict` on a call with these arguments.
pub(super) fn step_for(verdict: Verdict, args: &[judge::Arg]) -> Step {
    let close = args.iter().find(|a| a.op == judge::Op::Close);
    match verdict {
        // A close the judge lets run on a number that is not open: the
        // kernel answers (EBADF), nothing to quarantine.
        Verdict::Run if close.is_some_and(|a| a.known != Known::Open) => Step::Resume,
        Verdict::Run => Step::Continue,
        Verdict::Unquarantined => Step::CloseUnquarantined,
        Verdict::Fail(errno) => Step::Fail(errno),
        Verdict::Release => match close {
            Some(a) => Step::GiveBack(a.fd),
            None => Step::Resume,
        },
        Verdict::Hold(held) => Step::Hold {
            held,
            give_back: held.quarantined,
        },
        Verdict::Raise {
            fd,
            kind,
            action,
            quarantined,
            run,
            ..
        } => Step::Raise {
            fd,
            kind,
            action,
            quarantined,
            run,
        },
    }
}

/// A number at or above RLIMIT_NOFILE is one the program cannot be given:
/// a sentinel (tmux's compat code closes INT_MAX), not a handle to judge;
/// the kernel answers (the shim's rule too). The tools' own fds above a
/// low limit stay hidden, so they are judged.
pub(super) fn is_sentinel(fd: i32, limit: u64, known: Known) -> bool {
    u64::from(fd as u32) >= limit && known != Known::Internal
}

/// What the path argument after a dirfd says of the dirfd, from its first
/// byte (None: unreadable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DirfdUse {
    /// An absolute path: the dirfd is ignored, not judged.
    Ignored,
    /// An empty path (AT_EMPTY_PATH): the call is on the fd itself.
    Itself,
    /// A relative path (or none readable): resolved from the dirfd.
    Relative,
}

pub(super) fn dirfd_use(first: Option<u8>) -> DirfdUse {
    match first {
        Some(b'/') => DirfdUse::Ignored,
        Some(0) => DirfdUse::Itself,
        _ => DirfdUse::Relative,
    }
}

/// Where a call the judge let run (and wrong-object did not stop) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Nothing more to learn from it: resume.
    Run,
    /// getdents64: a listing of some fd directory may need tombstones
    /// hidden at its exit.
    Listing,
    /// RLIMIT_NOFILE may change: cached limits are dropped, then it runs.
    LimitChanged,
    /// A close of an open handle: the quarantine takes it.
    Close,
    /// A call that may create fds: followed to its exit (or predicted).
    Create,
    /// close_range: the model is updated at its exit.
    CloseRange,
}

pub(super) fn route(desc: &Desc, a: &[u64; 6]) -> Route {
    match desc.kind {
        Kind::Use if desc.nr == libc::SYS_getdents64 => Route::Listing,
        Kind::Use | Kind::Poll | Kind::Select | Kind::Mmap | Kind::Lookup => Route::Run,
        Kind::Limit => Route::LimitChanged,
        Kind::Close => Route::Close,
        Kind::Fcntl => {
            let cmd = a[1] as i32;
            if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
                Route::Create
            } else {
                Route::Run
            }
        }
        // signalfd on an existing signalfd changes its mask: no new fd.
        Kind::Signalfd if (a[0] as i32) >= 0 => Route::Run,
        Kind::CloseRange => Route::CloseRange,
        _ => Route::Create,
    }
}

/// Headroom the quarantine leaves below a limit: the program must never
/// meet EMFILE (or select()'s FD_SETSIZE) earlier than natively.
const HEADROOM: u64 = 16;
/// select()'s FD_SETSIZE: programs that use it need fds below it.
const FD_SETSIZE: u64 = 1024;

/// Whether one more tombstone fits in a table using `used` numbers
/// (handles and tombstones) under RLIMIT_NOFILE `limit`.
pub(super) fn room_for_tombstone(used: u64, limit: u64) -> bool {
    used + HEADROOM < limit && used + HEADROOM < FD_SETSIZE
}

/// Near FD_SETSIZE the quarantine gives its numbers back: natively they
/// would be free, and a select() user must keep getting fds below 1024.
pub(super) fn crowded(quarantined: usize, used: usize) -> bool {
    quarantined > 0 && used as u64 + HEADROOM >= FD_SETSIZE
}

/// How many tombstones to keep when one more is added to `quarantined`
/// under capacity `cap`: None while it fits; past the bound, down to
/// half, so a loop that churns fds pays for eviction once per many
/// closes.
pub(super) fn evict_to(quarantined: usize, cap: usize) -> Option<usize> {
    (quarantined + 1 > cap).then_some(cap / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use handles_model::judge::{Arg, Kind as Bug, Op};
    use handles_model::policy::Policy;

    fn arg(op: Op, fd: i32, known: Known) -> Arg {
        Arg { op, fd, known }
    }

    fn desc(name: &str) -> &'static Desc {
        super::super::syscalls::TABLE
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{name} is in the syscall table"))
    }

    #[test]
    fn a_run_verdict_continues_unless_it_closes_a_number_not_open() {
        let read = [arg(Op::Use, 5, Known::Open)];
        assert_eq!(step_for(Verdict::Run, &read), Step::Continue);
        let close_open = [arg(Op::Close, 5, Known::Open)];
        assert_eq!(step_for(Verdict::Run, &close_open), Step::Continue);
        for known in [
            Known::NeverHeld,
            Known::Closed { quarantined: false },
            Known::Internal,
        ] {
            let close = [arg(Op::Close, 5, known)];
            assert_eq!(step_for(Verdict::Run, &close), Step::Resume, "{known:?}");
        }
    }

    #[test]
    fn release_gives_the_closed_number_back_or_just_runs() {
        let close = [arg(Op::Close, 7, Known::Closed { quarantined: true })];
        assert_eq!(step_for(Verdict::Release, &close), Step::GiveBack(7));
        let read = [arg(Op::Use, 7, Known::Closed { quarantined: true })];
        assert_eq!(step_for(Verdict::Release, &read), Step::Resume);
    }

    #[test]
    fn a_held_close_gives_back_only_a_quarantined_number() {
        let held = Held {
            fd: 9,
            kind: Bug::DoubleClose,
            action: Action::AllowException,
            quarantined: true,
        };
        let close = [arg(Op::Close, 9, Known::Closed { quarantined: true })];
        assert_eq!(
            step_for(Verdict::Hold(held), &close),
            Step::Hold {
                held,
                give_back: true
            }
        );
        let held = Held {
            quarantined: false,
            ..held
        };
        assert_eq!(
            step_for(Verdict::Hold(held), &close),
            Step::Hold {
                held,
                give_back: false
            }
        );
    }

    #[test]
    fn the_judges_verdicts_on_a_read_of_a_closed_fd_become_the_steps_each_mode_executes() {
        // The judge is asked exactly as on_seccomp asks it, with the
        // default policy of `handles run` (bad-handle=allow-exception).
        let policy = Policy::default_job();
        let stale = [arg(Op::Use, 5, Known::Closed { quarantined: true })];
        let step = step_for(judge::judge_now(&stale, &policy), &stale);
        assert_eq!(
            step,
            Step::Raise {
                fd: 5,
                kind: Bug::UseClosed,
                action: Action::AllowException,
                quarantined: true,
                run: false
            }
        );
        // An fstat asking whether 5 is open is a question, not a bug.
        let asked = [arg(Op::Question, 5, Known::Closed { quarantined: true })];
        let step = step_for(judge::judge_now(&asked, &policy), &asked);
        assert!(matches!(step, Step::Fail(libc::EBADF)), "{step:?}");
        // An open fd goes on to the other checks.
        let fine = [arg(Op::Use, 5, Known::Open)];
        let step = step_for(judge::judge_now(&fine, &policy), &fine);
        assert_eq!(step, Step::Continue);
    }

    #[test]
    fn a_sweeps_closes_are_not_quarantined_and_a_sweep_over_closed_numbers_gives_them_back() {
        let policy = Policy::default_job();
        let mut memo = judge::Memo::new();
        let mut steps = Vec::new();
        // An ascending sweep: 3, 4 and 5 open, 6 quarantined, 7 never held.
        for (fd, known) in [
            (3, Known::Open),
            (4, Known::Open),
            (5, Known::Open),
            (6, Known::Closed { quarantined: true }),
            (7, Known::NeverHeld),
        ] {
            let args = [arg(Op::Close, fd, known)];
            let d = judge::judge(&mut memo, &args, false, &policy);
            steps.push(step_for(d.verdict, &args));
        }
        assert_eq!(
            steps,
            [
                // Two closes are not yet a sweep: quarantined as usual.
                Step::Continue,
                Step::Continue,
                Step::CloseUnquarantined,
                Step::GiveBack(6),
                // The kernel answers EBADF; nothing is reported.
                Step::Resume,
            ]
        );
        // The same number closed twice in a row is no sweep: reported.
        let mut memo = judge::Memo::new();
        let first = [arg(Op::Close, 8, Known::Open)];
        let _ = judge::judge(&mut memo, &first, false, &policy);
        let again = [arg(Op::Close, 8, Known::Closed { quarantined: true })];
        let d = judge::judge(&mut memo, &again, false, &policy);
        assert!(
            matches!(
                step_for(d.verdict, &again),
                Step::Raise {
                    fd: 8,
                    kind: Bug::DoubleClose,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn sentinels_are_numbers_at_or_above_the_limit_that_are_not_ours() {
        assert!(!is_sentinel(1023, 1024, Known::NeverHeld));
        assert!(is_sentinel(1024, 1024, Known::NeverHeld));
        assert!(is_sentinel(
            i32::MAX,
            1024,
            Known::Closed { quarantined: false }
        ));
        assert!(!is_sentinel(2000, 1024, Known::Internal));
        // A negative number read as unsigned is huge: never judged.
        assert!(is_sentinel(-100, 1024, Known::NeverHeld));
    }

    #[test]
    fn the_path_after_a_dirfd_decides_what_the_dirfd_is_for() {
        assert_eq!(dirfd_use(Some(b'/')), DirfdUse::Ignored);
        assert_eq!(dirfd_use(Some(0)), DirfdUse::Itself);
        assert_eq!(dirfd_use(Some(b'e')), DirfdUse::Relative);
        assert_eq!(dirfd_use(None), DirfdUse::Relative);
    }

    #[test]
    fn calls_the_judge_let_run_are_routed_by_kind() {
        let none = [0u64; 6];
        assert_eq!(route(desc("read"), &none), Route::Run);
        assert_eq!(route(desc("getdents64"), &none), Route::Listing);
        assert_eq!(route(desc("close"), &none), Route::Close);
        assert_eq!(route(desc("close_range"), &none), Route::CloseRange);
        assert_eq!(route(desc("openat"), &none), Route::Create);
        assert_eq!(route(desc("pipe2"), &none), Route::Create);
        assert_eq!(route(desc("prlimit64"), &none), Route::LimitChanged);
        let mut fcntl = none;
        fcntl[1] = libc::F_DUPFD_CLOEXEC as u64;
        assert_eq!(route(desc("fcntl"), &fcntl), Route::Create);
        fcntl[1] = libc::F_GETFL as u64;
        assert_eq!(route(desc("fcntl"), &fcntl), Route::Run);
        let mut signalfd = none;
        signalfd[0] = 4;
        assert_eq!(route(desc("signalfd4"), &signalfd), Route::Run);
        signalfd[0] = u64::MAX;
        assert_eq!(route(desc("signalfd4"), &signalfd), Route::Create);
    }

    #[test]
    fn the_quarantine_keeps_its_headroom_below_the_limit_and_fd_setsize() {
        assert!(room_for_tombstone(10, 1024));
        assert!(!room_for_tombstone(1008, 4096), "FD_SETSIZE");
        assert!(room_for_tombstone(1007, 4096));
        assert!(!room_for_tombstone(48, 64), "RLIMIT_NOFILE");
        assert!(room_for_tombstone(47, 64));
        assert!(!crowded(0, 2000), "nothing to give back");
        assert!(crowded(1, 1008));
        assert!(!crowded(1, 1007));
        assert_eq!(evict_to(63, 64), None);
        assert_eq!(evict_to(64, 64), Some(32));
        assert_eq!(evict_to(0, 0), Some(0), "capacity 0 keeps nothing");
    }
}
