//! The judge: what happens to a call on fds that are not open handles.
//!
//! One pure function ([`judge`]) decides for the shim (in-process) and the
//! supervisor (at the kernel boundary) alike, from
//!
//! - the call: what it does with each fd argument ([`Op`], see [`op_of`]);
//! - what the table knows of each number ([`Known`]);
//! - whether the process image is a shell ([`is_shell`]);
//! - the job's [`Policy`];
//! - a small per-thread [`Memo`] of the calls just before (close sweeps).
//!
//! Both layers only *act* on the [`Decision`]: run the call, answer it, hold
//! or raise the exception. The rules, each with the idiom it exists for
//! and the bug it still catches, are in docs/policy.md ("The judge").
//!
//! A *handle* is what this process image received or created. The bug
//! the bad-handle condition is about is a program that uses a handle it
//! closed and still believes in (a stale read, write, send, mmap, ioctl or
//! dup; a lone double close), or a number it never got from the kernel at
//! all. What is not a bug, because it only asks or tidies up and natively
//! fails with EBADF harming nothing:
//!
//! - questions: `fstat`/`statx` with an empty path, `fcntl`
//!   F_GETFD/F_GETFL/F_SETFD, terminal queries (`isatty`), `poll`/`select`;
//! - close sweeps, ascending or descending, skipping what they keep (the
//!   first close of a sweep is held until the thread's next close shows
//!   whether a sweep follows);
//! - a shell's redirections: `n>&-` closes if open, `>&n` and the save
//!   before a redirection (`fcntl(n, F_DUPFD, 10)`) ask whether n is open;
//!   the numbers come from the script's text, not from the kernel.

use core::fmt;

use crate::policy::{Action, Condition, Policy};

/// `EBADF`, as the judge's answers carry it (x86_64 Linux).
pub const EBADF: i32 = 9;

/// What a call does with one fd argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Only asks about the number (is it open, what is it): never a use.
    Question,
    /// Reads, writes, maps, waits on, or names a path relative to it.
    Use,
    Close,
    /// Duplicates it (`dup`, the source of `dup2`/`dup3`, `F_DUPFD`).
    Dup,
}

/// What the table knows of an fd number at the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// An open handle of the program's.
    Open,
    /// This process image held a handle here and closed it (before a fork
    /// counts: the image is the same). `quarantined`: a tombstone still
    /// keeps the number, so the call must not run (the kernel would answer
    /// about the tombstone).
    Closed { quarantined: bool },
    /// This image never held a handle at this number.
    NeverHeld,
    /// One of the tool's own fds: it does not exist for the program.
    Internal,
}

/// What a report says the program did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    UseClosed,
    UseNeverOpened,
    DoubleClose,
    CloseNeverOpened,
    DupClosed,
    DupNeverOpened,
}

impl Kind {
    /// The name in reports, JSON, SARIF and suppression rules.
    pub fn name(self) -> &'static str {
        match self {
            Kind::UseClosed => "use-closed",
            Kind::UseNeverOpened => "use-never-opened",
            Kind::DoubleClose => "double-close",
            Kind::CloseNeverOpened => "close-never-opened",
            Kind::DupClosed => "dup-closed",
            Kind::DupNeverOpened => "dup-never-opened",
        }
    }

    /// The report's sentence for it.
    pub fn sentence(self, quarantined: bool) -> &'static str {
        match (self, quarantined) {
            (Kind::UseClosed, true) => "use of a closed handle (its fd number is quarantined)",
            (Kind::UseClosed, false) => "use of a closed handle",
            (Kind::UseNeverOpened, _) => "use of a handle that was never opened",
            (Kind::DoubleClose, _) => "close of a closed handle (double close)",
            (Kind::CloseNeverOpened, _) => "close of a handle that was never opened",
            (Kind::DupClosed, _) => "duplication of a closed handle",
            (Kind::DupNeverOpened, _) => "duplication of a handle that was never opened",
        }
    }

    /// The kind of `op` on a number known as `known` (None for an open
    /// handle or a question).
    fn of(op: Op, known: Known) -> Option<Kind> {
        let closed = matches!(known, Known::Closed { .. });
        Some(match (op, closed) {
            (Op::Question, _) => return None,
            (Op::Use, true) => Kind::UseClosed,
            (Op::Use, false) => Kind::UseNeverOpened,
            (Op::Close, true) => Kind::DoubleClose,
            (Op::Close, false) => Kind::CloseNeverOpened,
            (Op::Dup, true) => Kind::DupClosed,
            (Op::Dup, false) => Kind::DupNeverOpened,
        })
    }
}

/// A close whose report waits for the thread's next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub fd: i32,
    pub kind: Kind,
    pub action: Action,
    pub quarantined: bool,
}

/// What a layer does with the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The call runs; the kernel answers.
    Run,
    /// The call does not run and returns `-errno`; nothing is reported.
    Fail(i32),
    /// A close of an open handle within a sweep: it runs, and its number is
    /// not quarantined (see [`Verdict::Release`] for why).
    Unquarantined,
    /// A close of a quarantined number by a sweep or a shell: the number
    /// goes back to the kernel (its tombstone is closed for real) and the
    /// call answers EBADF, as the closed number would natively. The
    /// program says it wants these numbers free: programs that sweep then
    /// rely on the lowest free number (OpenJDK's spawn helper closes 4 and
    /// 5, then expects opendir to get one of them).
    Release,
    /// The call does not run and fails with EBADF; its report is held
    /// until the thread's next close shows whether a sweep follows (or
    /// the thread ends or execs first: then it is written). A quarantined
    /// number is given back as for [`Verdict::Release`] at once: if a sweep
    /// follows, it must be free (see there); if not, the program has shown
    /// it no longer believes in the number, and the report says so.
    Hold(Held),
    /// A policy exception of `condition`: report, then `action`. `run`:
    /// the call runs (the kernel answers EBADF, as for a closed fd);
    /// otherwise it fails with EBADF without running.
    Raise {
        fd: i32,
        condition: Condition,
        kind: Kind,
        action: Action,
        quarantined: bool,
        run: bool,
    },
}

/// What to do with a report held at the thread's previous close, before
/// acting on the call itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing was held.
    None,
    /// A sweep followed: the held close was its first; no report.
    Drop(Held),
    /// No sweep followed: report the held close now.
    Raise(Held),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub flush: Flush,
    pub verdict: Verdict,
}

const NONE: i32 = i32::MIN;

/// The thread's recent closes: enough to tell a sweep from a repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memo {
    /// The fd of the thread's last close.
    last: i32,
    /// The close before it.
    prev: i32,
    /// Closes in the current run of steps (a sweep has two or more).
    run: u32,
    /// The run met a number that was not open: a sweep, not two handles
    /// that happen to be neighbours (the two ends of a pipe).
    met_closed: bool,
    /// Steps from `last` (bits for -2, -1, +1, +2) to numbers the thread
    /// made handles at since: closing one of those is not a sweep's step.
    fresh: u8,
    held: Option<Held>,
}

/// The bit of `Memo::fresh` for the step from `last` to `fd`, if it is
/// one a sweep could take.
fn step_bit(last: i32, fd: i32) -> Option<u8> {
    if last == NONE {
        return None;
    }
    match i64::from(fd) - i64::from(last) {
        -2 => Some(1),
        -1 => Some(2),
        1 => Some(4),
        2 => Some(8),
        _ => None,
    }
}

impl Default for Memo {
    fn default() -> Memo {
        Memo::new()
    }
}

impl Memo {
    pub const fn new() -> Memo {
        Memo {
            last: NONE,
            prev: NONE,
            run: 0,
            met_closed: false,
            fresh: 0,
            held: None,
        }
    }

    /// Is a report held?
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// The held report, taken: what to write when the thread ends or
    /// execs before another call decides it.
    pub fn take_held(&mut self) -> Option<Held> {
        self.held.take()
    }

    /// The thread made a handle at `fd`. A close of it next is of a number
    /// the thread just opened, not one a sweep walks past (CPython closes
    /// its script's fd at start-up; a program that then opens the next
    /// number and closes it is not sweeping). The last closes stay known:
    /// a close of the number before is still a repeat, not a step.
    pub fn created(&mut self, fd: i32) {
        if let Some(bit) = step_bit(self.last, fd) {
            self.fresh |= bit;
        }
    }

    /// Would a close of `fd` continue a sweep through the last closes?
    /// Steps of one, in either direction, or of two in the direction the
    /// sweep already goes (the number between is one the sweep keeps); a
    /// return to the number closed before the last is a repeat (the two
    /// ends of a pipe closed twice), not a sweep.
    fn continues_sweep(&self, fd: i32) -> bool {
        if self.last == NONE || fd == self.prev {
            return false;
        }
        if step_bit(self.last, fd).is_some_and(|b| self.fresh & b != 0) {
            return false;
        }
        let d = i64::from(fd) - i64::from(self.last);
        match d {
            1 | -1 => true,
            2 | -2 => self.prev != NONE && i64::from(self.last) - i64::from(self.prev) == d / 2,
            _ => false,
        }
    }

    fn note(&mut self, fd: i32, sweep: bool, open: bool) {
        if sweep {
            self.run = self.run.saturating_add(1);
            self.met_closed |= !open;
        } else {
            self.run = 1;
            self.met_closed = !open;
        }
        self.prev = self.last;
        self.last = fd;
        self.fresh = 0;
    }

    /// Is a close of an open handle that continues the run a sweep's (its
    /// number is then not quarantined: the program clears its table, and
    /// code after a sweep counts on the lowest free number)? Three steps
    /// in a row, or a run that met numbers not open.
    fn sweeping(&self) -> bool {
        self.run >= 2 || self.met_closed
    }
}

/// One fd argument of a call, as the judge sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub op: Op,
    pub fd: i32,
    pub known: Known,
}

/// Is a process image with this executable name a shell (whose
/// redirections name fd numbers from the script's text)?
pub fn is_shell(name: &[u8]) -> bool {
    matches!(
        name,
        b"bash"
            | b"sh"
            | b"dash"
            | b"ash"
            | b"zsh"
            | b"ksh"
            | b"ksh93"
            | b"mksh"
            | b"yash"
            | b"posh"
            | b"busybox"
    )
}

/// The verdict on one argument, ignoring the memo (sweeps, holds).
fn judge_arg(a: Arg, shell: bool, policy: &Policy) -> Verdict {
    let quarantined = matches!(a.known, Known::Closed { quarantined: true });
    // Not reported: the call runs where the kernel gives the native answer,
    // and answers EBADF where a tombstone would answer instead.
    let native = if quarantined {
        Verdict::Fail(EBADF)
    } else {
        Verdict::Run
    };
    if a.fd < 0 {
        return Verdict::Run;
    }
    let kind = match a.known {
        Known::Open => return Verdict::Run,
        Known::Internal => return Verdict::Fail(EBADF),
        known => match Kind::of(a.op, known) {
            None => return native,
            Some(k) => k,
        },
    };
    if shell && a.op == Op::Close && quarantined {
        return Verdict::Release;
    }
    if shell && matches!(a.op, Op::Close | Op::Dup) {
        return native;
    }
    let condition = Condition::BadHandle;
    match policy.action(condition) {
        Action::Allow => native,
        Action::Deny => Verdict::Fail(EBADF),
        action => Verdict::Raise {
            fd: a.fd,
            condition,
            kind,
            action,
            quarantined,
            run: action == Action::AllowException && !quarantined,
        },
    }
}

/// Decides a call with fd arguments `args` (at most one close) made by a
/// thread with memo `memo`, in a process image that is a shell or not.
pub fn judge(memo: &mut Memo, args: &[Arg], shell: bool, policy: &Policy) -> Decision {
    let close = args.iter().find(|a| a.op == Op::Close).map(|a| a.fd);
    let sweep = close.is_some_and(|fd| memo.continues_sweep(fd));
    // Only a close decides a held close: the shim and the supervisor see
    // different sets of the other calls (libc's own, under the shim, reach
    // neither), but both see the program's closes.
    let flush = match close.and_then(|_| memo.held.take()) {
        None => Flush::None,
        Some(h) if sweep => Flush::Drop(h),
        Some(h) => Flush::Raise(h),
    };
    let closes_open = args
        .iter()
        .any(|a| a.op == Op::Close && a.known == Known::Open);
    let mut verdict = if sweep && closes_open && memo.sweeping() {
        Verdict::Unquarantined
    } else {
        Verdict::Run
    };
    for &a in args {
        let v = judge_arg(a, shell, policy);
        if v == Verdict::Run {
            continue;
        }
        verdict = match v {
            Verdict::Fail(EBADF)
                if sweep
                    && a.op == Op::Close
                    && a.known == (Known::Closed { quarantined: true }) =>
            {
                Verdict::Release
            }
            Verdict::Raise {
                kind,
                action,
                quarantined,
                ..
            } if a.op == Op::Close => {
                if sweep {
                    // Within a sweep: what it meets is not the program's
                    // business any more.
                    if quarantined {
                        Verdict::Release
                    } else {
                        Verdict::Run
                    }
                } else if memo.last == a.fd {
                    // The same number closed twice in a row: no sweep
                    // does that.
                    v
                } else {
                    let h = Held {
                        fd: a.fd,
                        kind,
                        action,
                        quarantined,
                    };
                    memo.held = Some(h);
                    Verdict::Hold(h)
                }
            }
            v => v,
        };
        break;
    }
    if let Some(a) = args.iter().find(|a| a.op == Op::Close) {
        memo.note(a.fd, sweep, a.known == Known::Open);
    }
    Decision { flush, verdict }
}

/// The verdict on a call that the other layer already judged and found
/// to raise an exception (the shim hands such calls to the supervisor,
/// which writes the report): no memo, no shell rule, for the report's kind
/// and the action only. `Run` when every argument turns out open.
pub fn judge_now(args: &[Arg], policy: &Policy) -> Verdict {
    args.iter()
        .map(|&a| judge_arg(a, false, policy))
        .find(|v| *v != Verdict::Run)
        .unwrap_or(Verdict::Run)
}

/// What follows an exception (`--on-exception`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Trap,
    Stop,
    Continue,
}

impl Then {
    /// The end of a report's outcome line.
    pub fn words(self) -> &'static str {
        match self {
            Then::Trap => "SIGTRAP follows",
            Then::Stop => "the process is stopped for a debugger",
            Then::Continue => "the program goes on (--on-exception=continue)",
        }
    }
}

/// How the reported call went, for a bad-handle report's outcome line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// The call ran (the kernel answered EBADF).
    Ran,
    /// The call failed with EBADF without running.
    Failed,
    /// A held close, written at the thread's next close (no sweep).
    HeldDue,
    /// A held close, written as the thread ended or exec'd: nothing
    /// follows it.
    HeldEnded,
}

/// [`write_outcome`]'s line, to format.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub action: Action,
    pub moment: Moment,
    pub then: Then,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_outcome(f, self.action, self.moment, self.then)
    }
}

/// A bad-handle report's outcome line, the same words from the shim and
/// the supervisor.
pub fn write_outcome(
    w: &mut impl core::fmt::Write,
    action: Action,
    moment: Moment,
    then: Then,
) -> core::fmt::Result {
    const KILLED: &str = "the process is killed (SIGKILL)";
    match (moment, action) {
        (Moment::HeldEnded, _) => w.write_str(
            "the call failed with EBADF; the thread ended or exec'd before another close showed a sweep; nothing follows",
        ),
        (Moment::HeldDue, Action::Kill) => {
            write!(w, "the call failed with EBADF; no close sweep followed; {KILLED}")
        }
        (Moment::HeldDue, _) => write!(
            w,
            "the call failed with EBADF; no close sweep followed; {}",
            then.words()
        ),
        (_, Action::Kill) => w.write_str(KILLED),
        (Moment::Ran, _) => write!(w, "the call runs (and fails with EBADF); {}", then.words()),
        (Moment::Failed, _) => write!(
            w,
            "the call fails with EBADF without running; {}",
            then.words()
        ),
    }
}

/// Syscall numbers and constants the classification reads (x86_64).
mod nr {
    pub const CLOSE: i64 = 3;
    pub const FSTAT: i64 = 5;
    pub const POLL: i64 = 7;
    pub const IOCTL: i64 = 16;
    pub const SELECT: i64 = 23;
    pub const DUP: i64 = 32;
    pub const DUP2: i64 = 33;
    pub const FCNTL: i64 = 72;
    pub const NEWFSTATAT: i64 = 262;
    pub const PSELECT6: i64 = 270;
    pub const PPOLL: i64 = 271;
    pub const DUP3: i64 = 292;
    pub const STATX: i64 = 332;

    pub const F_DUPFD: u64 = 0;
    pub const F_GETFD: u64 = 1;
    pub const F_SETFD: u64 = 2;
    pub const F_GETFL: u64 = 3;
    pub const F_DUPFD_CLOEXEC: u64 = 1030;

    pub const AT_EMPTY_PATH: u64 = 0x1000;

    /// Terminal queries: what `isatty`, `tcgetattr`, `tcgetpgrp` and a
    /// window-size check issue.
    pub const TTY_QUESTIONS: [u64; 4] = [0x5401, 0x5413, 0x540f, 0x802c_542a];
}

/// What syscall `nr` with arguments `a` does with its fd argument number
/// `i` (for poll/select, with the fds in its sets). `empty_path`: the
/// path argument of `newfstatat`/`statx` is "" (the caller reads it).
pub fn op_of(nr: i64, a: &[u64; 6], i: usize, empty_path: bool) -> Op {
    match nr {
        nr::CLOSE => Op::Close,
        nr::DUP | nr::DUP2 | nr::DUP3 => Op::Dup,
        nr::FSTAT | nr::POLL | nr::PPOLL | nr::SELECT | nr::PSELECT6 => Op::Question,
        nr::FCNTL => match a[1] & 0xffff_ffff {
            nr::F_DUPFD | nr::F_DUPFD_CLOEXEC => Op::Dup,
            nr::F_GETFD | nr::F_SETFD | nr::F_GETFL => Op::Question,
            _ => Op::Use,
        },
        nr::NEWFSTATAT if i == 0 && empty_path && a[3] & nr::AT_EMPTY_PATH != 0 => Op::Question,
        nr::STATX if i == 0 && empty_path && a[2] & nr::AT_EMPTY_PATH != 0 => Op::Question,
        nr::IOCTL if nr::TTY_QUESTIONS.contains(&(a[1] & 0xffff_ffff)) => Op::Question,
        _ => Op::Use,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Entry;

    const OPEN: Known = Known::Open;
    const CLOSED: Known = Known::Closed { quarantined: true };
    const CLOSED_FREE: Known = Known::Closed { quarantined: false };
    const NEVER: Known = Known::NeverHeld;

    fn policy(action: Action) -> Policy {
        let mut p = Policy::default_job();
        p.set(Condition::BadHandle, Entry::allow_override(action))
            .unwrap();
        p
    }

    fn one(memo: &mut Memo, op: Op, fd: i32, known: Known) -> Decision {
        judge(
            memo,
            &[Arg { op, fd, known }],
            false,
            &Policy::default_job(),
        )
    }

    fn raised(d: &Decision) -> Option<Kind> {
        match d.verdict {
            Verdict::Raise { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// Runs a sequence of closes and returns every kind reported, as
    /// flushed or raised, in order; the held one at the end is reported
    /// as the thread's exit would.
    fn closes(seq: &[(i32, Known)]) -> [Option<Kind>; 8] {
        let mut out = [None; 8];
        let mut n = 0;
        let mut memo = Memo::new();
        for &(fd, known) in seq {
            let d = one(&mut memo, Op::Close, fd, known);
            if let Flush::Raise(h) = d.flush {
                out[n] = Some(h.kind);
                n += 1;
            }
            if let Some(k) = raised(&d) {
                out[n] = Some(k);
                n += 1;
            }
        }
        if let Some(h) = memo.take_held() {
            out[n] = Some(h.kind);
        }
        out
    }

    #[test]
    fn open_handles_and_negative_numbers_run() {
        for op in [Op::Use, Op::Close, Op::Dup, Op::Question] {
            let mut m = Memo::new();
            assert_eq!(one(&mut m, op, 5, OPEN).verdict, Verdict::Run);
            assert_eq!(one(&mut m, op, -1, NEVER).verdict, Verdict::Run);
        }
    }

    #[test]
    fn a_stale_use_or_dup_is_raised_and_never_reaches_the_tombstone() {
        for (op, kind) in [(Op::Use, Kind::UseClosed), (Op::Dup, Kind::DupClosed)] {
            let d = one(&mut Memo::new(), op, 5, CLOSED);
            assert_eq!(
                d.verdict,
                Verdict::Raise {
                    fd: 5,
                    condition: Condition::BadHandle,
                    kind,
                    action: Action::AllowException,
                    quarantined: true,
                    run: false
                }
            );
            // Released from the quarantine: the kernel answers EBADF.
            let d = one(&mut Memo::new(), op, 5, CLOSED_FREE);
            assert!(matches!(d.verdict, Verdict::Raise { run: true, .. }));
        }
        let d = one(&mut Memo::new(), Op::Use, 77, NEVER);
        assert_eq!(raised(&d), Some(Kind::UseNeverOpened));
    }

    #[test]
    fn questions_are_never_uses() {
        let mut m = Memo::new();
        assert_eq!(
            one(&mut m, Op::Question, 5, CLOSED).verdict,
            Verdict::Fail(EBADF)
        );
        assert_eq!(
            one(&mut m, Op::Question, 5, CLOSED_FREE).verdict,
            Verdict::Run
        );
        assert_eq!(one(&mut m, Op::Question, 0, NEVER).verdict, Verdict::Run);
        assert_eq!(
            one(&mut m, Op::Question, 9, Known::Internal).verdict,
            Verdict::Fail(EBADF)
        );
    }

    #[test]
    fn the_tools_own_fds_do_not_exist() {
        for op in [Op::Use, Op::Close, Op::Dup] {
            let d = one(&mut Memo::new(), op, 1000, Known::Internal);
            assert_eq!(d.verdict, Verdict::Fail(EBADF));
        }
    }

    #[test]
    fn a_lone_double_close_is_reported() {
        // close(fd); close(fd): at once, no sweep repeats a number.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 5, OPEN);
        let d = one(&mut m, Op::Close, 5, CLOSED);
        assert_eq!(raised(&d), Some(Kind::DoubleClose));
        // In an error path, after other calls: held, then raised by the
        // next call that is not the sweep's next close.
        let mut m = Memo::new();
        one(&mut m, Op::Use, 1, OPEN);
        let d = one(&mut m, Op::Close, 5, CLOSED);
        assert!(matches!(
            d.verdict,
            Verdict::Hold(Held {
                fd: 5,
                kind: Kind::DoubleClose,
                ..
            })
        ));
        // Other calls leave it held (the shim and the supervisor do not
        // see the same ones); the next close that does not continue a
        // sweep from it raises it.
        let d = one(&mut m, Op::Use, 1, OPEN);
        assert_eq!(d.flush, Flush::None);
        let d = one(&mut m, Op::Close, 9, OPEN);
        assert!(matches!(d.flush, Flush::Raise(Held { fd: 5, .. })));
        assert_eq!(d.verdict, Verdict::Run);
        // A close that is not its neighbour raises it too.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 5, CLOSED);
        let d = one(&mut m, Op::Close, 9, OPEN);
        assert!(matches!(d.flush, Flush::Raise(_)));
        // And so does the thread's end.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 5, CLOSED);
        assert!(m.take_held().is_some());
    }

    #[test]
    fn sweeps_in_either_direction_are_not_double_closes() {
        let none = [None; 8];
        // Ascending from 3, which the program closed itself (held, then
        // dropped when 4 follows), through numbers it closed and never had.
        assert_eq!(
            closes(&[
                (3, CLOSED),
                (4, OPEN),
                (5, CLOSED),
                (6, NEVER),
                (7, CLOSED_FREE)
            ]),
            none
        );
        // The daemonize loop, from the limit down.
        assert_eq!(
            closes(&[
                (1023, NEVER),
                (1022, NEVER),
                (6, CLOSED),
                (5, OPEN),
                (4, CLOSED)
            ]),
            none
        );
        // All but one: 5 is kept.
        assert_eq!(
            closes(&[(3, OPEN), (4, CLOSED), (6, CLOSED), (7, NEVER)]),
            none
        );
        assert_eq!(
            closes(&[(9, CLOSED), (8, OPEN), (6, CLOSED), (5, NEVER)]),
            none
        );
        // Java's spawn helper: close(from); close(from + 1), both closed
        // before.
        assert_eq!(closes(&[(4, CLOSED), (5, CLOSED)]), none);
    }

    #[test]
    fn what_only_looks_like_a_sweep_is_still_reported() {
        // The ends of a pipe closed twice: 4, 3, then 4 again.
        let r = closes(&[(4, OPEN), (3, OPEN), (4, CLOSED)]);
        assert_eq!(r[0], Some(Kind::DoubleClose));
        // A skip of two that does not go the sweep's way.
        let r = closes(&[(5, OPEN), (4, OPEN), (6, CLOSED)]);
        assert_eq!(r[0], Some(Kind::DoubleClose));
        // Calls between closes do not end a sweep (a sweep that logs each
        // close is still one): the price is that a double close of the
        // neighbour of the last close is taken for a sweep's next step.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 4, OPEN);
        one(&mut m, Op::Use, 1, OPEN);
        let d = one(&mut m, Op::Close, 5, CLOSED);
        assert_eq!(d.verdict, Verdict::Release);
        // A lone close of a number never opened (close(77)).
        let r = closes(&[(77, NEVER)]);
        assert_eq!(r[0], Some(Kind::CloseNeverOpened));
    }

    #[test]
    fn sweeps_and_shells_give_quarantined_numbers_back() {
        let mut m = Memo::new();
        let d = one(&mut m, Op::Close, 4, CLOSED);
        assert!(matches!(d.verdict, Verdict::Hold(_)));
        let d = one(&mut m, Op::Close, 5, CLOSED);
        assert!(matches!(
            d.flush,
            Flush::Drop(Held {
                fd: 4,
                quarantined: true,
                ..
            })
        ));
        assert_eq!(d.verdict, Verdict::Release);
        let d = judge(
            &mut Memo::new(),
            &[Arg {
                op: Op::Close,
                fd: 3,
                known: CLOSED,
            }],
            true,
            &Policy::default_job(),
        );
        assert_eq!(d.verdict, Verdict::Release);
        // An open handle closed by a sweep is not quarantined: the run met
        // a closed number, or is three long; the two ends of a pipe closed
        // in turn are.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 4, CLOSED);
        one(&mut m, Op::Close, 5, CLOSED);
        assert_eq!(
            one(&mut m, Op::Close, 6, OPEN).verdict,
            Verdict::Unquarantined
        );
        let mut m = Memo::new();
        assert_eq!(one(&mut m, Op::Close, 3, OPEN).verdict, Verdict::Run);
        assert_eq!(one(&mut m, Op::Close, 4, OPEN).verdict, Verdict::Run);
        assert_eq!(
            one(&mut m, Op::Close, 5, OPEN).verdict,
            Verdict::Unquarantined
        );
        // A genuine double close keeps its number quarantined.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 4, OPEN);
        let d = one(&mut m, Op::Close, 4, CLOSED);
        assert!(matches!(d.verdict, Verdict::Raise { .. }));
    }

    #[test]
    fn a_number_the_thread_just_opened_is_not_swept() {
        // Three closes in a row make a sweep; a handle the thread makes
        // next to the last one and closes is its own, quarantined.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 3, OPEN);
        one(&mut m, Op::Close, 4, OPEN);
        m.created(5);
        assert_eq!(one(&mut m, Op::Close, 5, OPEN).verdict, Verdict::Run);
        // A new handle far from the sweep changes nothing.
        let mut m = Memo::new();
        one(&mut m, Op::Close, 3, OPEN);
        one(&mut m, Op::Close, 4, OPEN);
        m.created(40);
        assert_eq!(
            one(&mut m, Op::Close, 5, OPEN).verdict,
            Verdict::Unquarantined
        );
        // The number before a fresh one closed again is a double close,
        // as without the fresh handle (a helper closed it; the caller's
        // cleanup closes it again after opening and closing another).
        let mut m = Memo::new();
        one(&mut m, Op::Close, 3, OPEN);
        m.created(4);
        assert_eq!(one(&mut m, Op::Close, 4, OPEN).verdict, Verdict::Run);
        assert!(matches!(
            one(&mut m, Op::Close, 3, CLOSED).verdict,
            Verdict::Raise { .. } | Verdict::Hold(_)
        ));
        // A held close (a closed number, maybe a sweep's first) followed
        // by a new handle next to it and its close: reported there.
        let mut m = Memo::new();
        assert!(matches!(
            one(&mut m, Op::Close, 7, CLOSED).verdict,
            Verdict::Hold(_)
        ));
        m.created(8);
        let d = one(&mut m, Op::Close, 8, OPEN);
        assert!(matches!(d.flush, Flush::Raise(_)), "{d:?}");
        assert_eq!(d.verdict, Verdict::Run);
    }

    #[test]
    fn shells_redirect_by_number() {
        let p = Policy::default_job();
        for (op, known) in [
            (Op::Close, CLOSED),
            (Op::Close, NEVER),
            (Op::Dup, CLOSED_FREE),
            (Op::Dup, NEVER),
        ] {
            let d = judge(&mut Memo::new(), &[Arg { op, fd: 5, known }], true, &p);
            assert!(
                matches!(
                    d.verdict,
                    Verdict::Run | Verdict::Fail(EBADF) | Verdict::Release
                ),
                "{op:?} {known:?}"
            );
        }
        // A shell reading a stale number is the script's bug all the same.
        let d = judge(
            &mut Memo::new(),
            &[Arg {
                op: Op::Use,
                fd: 5,
                known: CLOSED,
            }],
            true,
            &p,
        );
        assert_eq!(raised(&d), Some(Kind::UseClosed));
        assert!(is_shell(b"bash") && is_shell(b"dash") && !is_shell(b"bashful"));
    }

    #[test]
    fn the_action_decides_what_runs_and_what_is_reported() {
        let arg = [Arg {
            op: Op::Use,
            fd: 5,
            known: CLOSED_FREE,
        }];
        let v = |a| judge(&mut Memo::new(), &arg, false, &policy(a)).verdict;
        assert_eq!(v(Action::Allow), Verdict::Run);
        assert_eq!(v(Action::Deny), Verdict::Fail(EBADF));
        assert!(matches!(
            v(Action::AllowException),
            Verdict::Raise { run: true, .. }
        ));
        assert!(matches!(
            v(Action::DenyException),
            Verdict::Raise { run: false, .. }
        ));
        assert!(matches!(
            v(Action::Kill),
            Verdict::Raise {
                run: false,
                action: Action::Kill,
                ..
            }
        ));
        // Allow on a quarantined number still never reaches the tombstone.
        let arg = [Arg {
            op: Op::Use,
            fd: 5,
            known: CLOSED,
        }];
        assert_eq!(
            judge(&mut Memo::new(), &arg, false, &policy(Action::Allow)).verdict,
            Verdict::Fail(EBADF)
        );
    }

    #[test]
    fn unrelated_policy_entries_change_no_verdict() {
        let calls = [
            (Op::Use, CLOSED),
            (Op::Use, NEVER),
            (Op::Dup, CLOSED),
            (Op::Close, CLOSED),
            (Op::Question, CLOSED),
        ];
        for cond in Condition::ALL {
            if cond == Condition::BadHandle {
                continue;
            }
            for action in Action::ALL {
                let mut p = Policy::default_job();
                p.set(cond, Entry::new(action, crate::policy::Override::Deny))
                    .unwrap();
                for (op, known) in calls {
                    let arg = [Arg { op, fd: 5, known }];
                    assert_eq!(
                        judge(&mut Memo::new(), &arg, false, &p),
                        judge(&mut Memo::new(), &arg, false, &Policy::default_job()),
                        "{cond} = {action} changed {op:?} on {known:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn outcome_lines_say_what_happened_and_what_follows() {
        struct S([u8; 160], usize);
        impl core::fmt::Write for S {
            fn write_str(&mut self, t: &str) -> core::fmt::Result {
                let end = self.1 + t.len();
                self.0
                    .get_mut(self.1..end)
                    .ok_or(core::fmt::Error)?
                    .copy_from_slice(t.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let line = |a, m, t| {
            let mut s = S([0; 160], 0);
            write_outcome(&mut s, a, m, t).unwrap();
            (s.0, s.1)
        };
        let (b, n) = line(Action::AllowException, Moment::Failed, Then::Trap);
        assert_eq!(
            &b[..n],
            b"the call fails with EBADF without running; SIGTRAP follows"
        );
        let (b, n) = line(Action::Kill, Moment::Ran, Then::Continue);
        assert_eq!(&b[..n], b"the process is killed (SIGKILL)");
        let (b, n) = line(Action::DenyException, Moment::HeldDue, Then::Continue);
        assert_eq!(
            &b[..n],
            b"the call failed with EBADF; no close sweep followed; the program goes on (--on-exception=continue)"
                as &[u8]
        );
        let (b, n) = line(Action::Kill, Moment::HeldEnded, Then::Trap);
        assert!(b[..n].ends_with(b"nothing follows"));
    }

    #[test]
    fn calls_are_classified_by_what_they_do() {
        let a = |v: &[u64]| {
            let mut x = [0u64; 6];
            x[..v.len()].copy_from_slice(v);
            x
        };
        assert_eq!(op_of(nr::FSTAT, &a(&[1]), 0, false), Op::Question);
        assert_eq!(
            op_of(nr::NEWFSTATAT, &a(&[1, 0, 0, 0x1000]), 0, true),
            Op::Question
        );
        // A relative path names a file below the directory: a use.
        assert_eq!(op_of(nr::NEWFSTATAT, &a(&[3, 0, 0, 0]), 0, false), Op::Use);
        assert_eq!(op_of(nr::STATX, &a(&[3, 0, 0x1000]), 0, true), Op::Question);
        assert_eq!(op_of(nr::FCNTL, &a(&[3, 2, 1]), 0, false), Op::Question);
        assert_eq!(op_of(nr::FCNTL, &a(&[3, 1030, 10]), 0, false), Op::Dup);
        assert_eq!(op_of(nr::FCNTL, &a(&[3, 4, 0]), 0, false), Op::Use);
        assert_eq!(op_of(nr::IOCTL, &a(&[0, 0x5401]), 0, false), Op::Question);
        assert_eq!(op_of(nr::IOCTL, &a(&[0, 0x541b]), 0, false), Op::Use);
        assert_eq!(op_of(nr::DUP2, &a(&[5, 1]), 0, false), Op::Dup);
        assert_eq!(op_of(nr::CLOSE, &a(&[5]), 0, false), Op::Close);
        assert_eq!(op_of(1, &a(&[5]), 0, false), Op::Use);
    }
}
