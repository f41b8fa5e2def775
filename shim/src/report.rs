//! The shim's side of the job policy: it asks the judge
//! (`handles_model::judge`) about every call on an fd that is not an open
//! handle, and acts on the decision. Without a supervisor it writes the
//! exception report itself, with raw write(2) from a stack buffer (no
//! allocation, no stdio); under one it hands the call over (a marked
//! syscall) and the supervisor writes the symbolized report.

use core::cell::{Cell, UnsafeCell};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use handles_model::judge::{
    self, Arg, Flush, Kind, Known, Memo, Moment, Op, Then, Verdict as Judged,
};
use handles_model::policy::{Action, Condition, Policy};
use handles_model::protocol::{env as penv, Message};
use handles_model::report::{self, HandleLine, Head, Summary, SyscallText, Title};
use handles_model::table::{marker, obj_type_from_code, state, STACK_DEPTH};
use handles_model::{Fd, HandleValue};

use crate::out::Out;
use crate::state::{self as st, Pcs};
use crate::{stack, sys};

/// The job's policy (`HANDLES_POLICY`), set by the constructor before the
/// wrappers are active and never written again.
struct PolicyCell(UnsafeCell<Policy>);
// SAFETY: written once by the single-threaded constructor, before any
// wrapper reads it; read-only afterwards.
unsafe impl Sync for PolicyCell {}
static POLICY: PolicyCell = PolicyCell(UnsafeCell::new(Policy::default_job()));

pub fn policy() -> Policy {
    // SAFETY: see PolicyCell.
    unsafe { *POLICY.0.get() }
}

/// Reads the job's encoded policy (the supervisor's own encoding, decoded
/// by the same model code; entries left out, as in a hand-set
/// `HANDLES_POLICY`, keep their defaults); an unreadable one keeps the
/// default job's.
pub fn set_policy(encoded: &str) -> bool {
    match Policy::decode_partial(encoded) {
        Ok(p) => {
            // SAFETY: called by the constructor only (see PolicyCell).
            unsafe { *POLICY.0.get() = p };
            true
        }
        Err(_) => false,
    }
}

/// `--on-exception` (`HANDLES_ON_EXCEPTION`): what follows a report when
/// the shim is alone. 0 trap, 1 stop, 2 continue.
static ON_EXCEPTION: AtomicU8 = AtomicU8::new(0);

fn then() -> Then {
    match ON_EXCEPTION.load(Relaxed) {
        1 => Then::Stop,
        2 => Then::Continue,
        _ => Then::Trap,
    }
}

pub fn set_on_exception(s: &str) {
    let v = match s {
        penv::ON_EXCEPTION_STOP => 1,
        penv::ON_EXCEPTION_CONTINUE => 2,
        _ => 0,
    };
    ON_EXCEPTION.store(v, Relaxed);
}

/// The image is a shell (`judge::is_shell`), decided at first need.
static SHELL: AtomicU8 = AtomicU8::new(2);

fn shell() -> bool {
    match SHELL.load(Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let s = judge::is_shell(st::exe_name());
            SHELL.store(u8::from(s), Relaxed);
            s
        }
    }
}

/// What the report's call line shows.
pub struct Call<'a> {
    pub name: &'a str,
    pub nr: i64,
    pub args: [u64; 6],
    pub nargs: u8,
    /// Bit i: argument i is an fd (printed in decimal).
    pub fd_mask: u8,
}

impl Call<'_> {
    /// A syscall wrapper's call, described by the model's syscall table.
    pub fn syscall(nr: i64, args: [u64; 6]) -> Call<'static> {
        match handles_model::syscalls::lookup(nr) {
            Some(d) => Call {
                name: d.name,
                nr,
                args,
                nargs: d.nargs,
                fd_mask: d.fd_args,
            },
            None => Call {
                name: "syscall",
                nr,
                args,
                nargs: 6,
                fd_mask: 0,
            },
        }
    }

    /// A libc function that is not a syscall (fclose, fdopen, …) and whose
    /// first argument is the fd in question.
    pub fn libc(name: &str, fd: i32) -> Call<'_> {
        Call {
            name,
            nr: -1,
            args: [fd as u64, 0, 0, 0, 0, 0],
            nargs: 1,
            fd_mask: 1,
        }
    }
}

/// What the wrapper does after leaving the shim.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    Trap,
    Stop,
    Kill,
}

/// The wrapper's answer: run the call (`result` None) or return this raw
/// result (`-errno`); then `after`.
pub struct Verdict {
    pub result: Option<i64>,
    pub after: After,
}

impl Verdict {
    const RUN: Verdict = Verdict {
        result: None,
        after: After::Nothing,
    };
}

thread_local! {
    /// The calling thread's judge memo.
    static MEMO: Cell<Memo> = const { Cell::new(Memo::new()) };
    /// The call and stack of the close whose report the memo holds.
    static HELD: Cell<(i64, Pcs)> = const { Cell::new((0, Pcs::EMPTY)) };
}

/// The calling thread made a handle at `fd` (the judge's sweep memo).
pub fn note_created(fd: i32) {
    MEMO.with(|c| {
        let mut m = c.get();
        m.created(fd);
        c.set(m);
    });
}

/// What the table says of `fd` for the judge; an fd the kernel has open
/// that the table does not know (made behind the shim's back) is adopted.
pub fn known(fd: i32) -> Known {
    if st::internal(fd) {
        // The shim's own fds sit just above a low soft limit (table::
        // own_fds_at): a program asking about that number (CPython's
        // fd_status.py after lowering RLIMIT_NOFILE to 29) must find
        // nothing there, as natively.
        return Known::Internal;
    }
    if fd < 0 || u64::from(fd as u32) >= st::LIMIT.load(Relaxed) {
        // Negative, or at or above RLIMIT_NOFILE: a number the program
        // cannot be given, a sentinel (tmux's compat code closes INT_MAX),
        // not a handle to judge: the call runs and the kernel answers
        // (EBADF; or, for an fd opened before the limit was lowered, as
        // for any open fd). The supervisor's rule too.
        return Known::Open;
    }
    match st::state_of(fd) {
        None | Some(state::OPEN) => Known::Open,
        Some(state::TOMBSTONE) => Known::Closed { quarantined: true },
        Some(state::INTERNAL) if st::internal(fd) => Known::Internal,
        Some(state::INTERNAL) => Known::Open,
        Some(_) => {
            if sys::is_open(fd) {
                if sys::is_tombstone_like(fd) {
                    return Known::Closed { quarantined: true };
                }
                st::adopt(fd);
                return Known::Open;
            }
            // A handle inherited at start keeps generation 0 (the number
            // was never handed out in this image), but its slot says how
            // it came: closed, it is a closed handle (stdio closed early,
            // as git does), not one that was never opened.
            let (generation, how) = st::slot(fd).map_or((0, 0), |s| {
                (s.generation.load(Relaxed), s.how.load(Relaxed))
            });
            if generation == 0
                && handles_model::table::how::base(how) == handles_model::table::how::UNKNOWN
            {
                Known::NeverHeld
            } else {
                Known::Closed { quarantined: false }
            }
        }
    }
}

/// Judges a call inside the shim (`enter()` held) and acts: None to run
/// it, or what the wrapper returns. `frame`: the trampoline's frame, for
/// the stacks.
pub fn judged(args: &[Arg], call: &Call, frame: usize) -> Option<Verdict> {
    judged_close(args, call, frame).0
}

/// [`judged`], and whether a close that runs is a sweep's: its number is
/// then not quarantined (`judge::Verdict::Unquarantined`).
pub fn judged_close(args: &[Arg], call: &Call, frame: usize) -> (Option<Verdict>, bool) {
    let mut memo = MEMO.with(Cell::get);
    let d = judge::judge(&mut memo, args, shell(), &policy());
    MEMO.with(|c| c.set(memo));

    let supervised = sys::COOKIE_ON.load(Relaxed);
    let mut after = After::Nothing;
    match d.flush {
        Flush::Raise(h) if supervised => tell_supervisor(Message::HeldRaise { fd: h.fd }),
        Flush::Raise(h) => {
            let (nr, pcs) = HELD.with(Cell::get);
            let call = Call::syscall(nr, [h.fd as u64, 0, 0, 0, 0, 0]);
            after = write_bad_handle(
                h.fd,
                h.kind,
                h.action,
                h.quarantined,
                Moment::HeldDue,
                &call,
                &pcs,
            );
        }
        Flush::Drop(h) if supervised => tell_supervisor(Message::HeldDrop { fd: h.fd }),
        Flush::Drop(_) | Flush::None => {}
    }
    let v = match d.verdict {
        Judged::Run | Judged::Unquarantined => None,
        Judged::Fail(e) => Some(Verdict {
            result: Some(-i64::from(e)),
            after: After::Nothing,
        }),
        Judged::Release => {
            if let Some(a) = args.iter().find(|a| a.op == Op::Close) {
                give_back(a.fd, supervised);
            }
            Some(Verdict {
                result: Some(-i64::from(judge::EBADF)),
                after: After::Nothing,
            })
        }
        Judged::Hold(h) => {
            // The report first, while the slot still says what was closed.
            let pcs = offending_stack(frame);
            if supervised {
                let frames = pcs.frames();
                tell_supervisor(Message::Hold {
                    fd: h.fd,
                    nr: call.nr,
                    pcs: frames.as_ptr() as u64,
                    n: frames.len(),
                });
            } else {
                HELD.with(|c| c.set((call.nr, pcs)));
            }
            if h.quarantined {
                give_back(h.fd, supervised);
            }
            Some(Verdict {
                result: Some(-i64::from(judge::EBADF)),
                after: After::Nothing,
            })
        }
        Judged::Raise {
            fd,
            kind,
            action,
            quarantined,
            run,
            ..
        } => Some(raise(fd, kind, action, quarantined, run, call, frame)),
    };
    let unquarantined = d.verdict == Judged::Unquarantined;
    let v = match v {
        Some(mut v) => {
            if v.after == After::Nothing {
                v.after = after;
            }
            Some(v)
        }
        None if after != After::Nothing => Some(Verdict {
            result: None,
            after,
        }),
        None => None,
    };
    (v, unquarantined)
}

/// Gives the quarantined number `fd` back to the kernel
/// (`judge::Verdict::Release`), telling a supervisor first: the tombstone
/// may be one it put there.
fn give_back(fd: i32, supervised: bool) {
    if supervised {
        tell_supervisor(Message::Release { fd });
    }
    crate::quarantine::release(fd);
}

/// Tells the supervisor about a close the judge held (`marker::HOLD`,
/// with the call and its stack) or decided (`HELD_RAISE`, `HELD_DROP`):
/// an fstat of `fd` carrying the marker, which the supervisor answers
/// without running it. It keeps the held report, so that a thread that
/// ends first still gets it written.
fn tell_supervisor(m: Message) {
    // SAFETY: an all-zero stat is a valid buffer for fstat.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    let e = m.encode(&raw mut stat as u64);
    // SAFETY: fstat of the program's fd into a local buffer (it does not
    // run); the supervisor reads a HOLD's frames, alive across the call.
    unsafe { sys::marked(e.nr, e.args, e.tag) };
}

/// The judge's verdict on `op` of the one fd `fd` (callers outside the
/// syscall wrappers: stdio's fclose, fdopen, ...).
pub fn bad_handle(op: Op, fd: i32, call: &Call, frame: usize) -> Verdict {
    let known = known(fd);
    judged(&[Arg { op, fd, known }], call, frame).unwrap_or(Verdict::RUN)
}

/// A bad-handle exception on the judge's word.
fn raise(
    fd: i32,
    kind: Kind,
    action: Action,
    quarantined: bool,
    run: bool,
    call: &Call,
    frame: usize,
) -> Verdict {
    if sys::COOKIE_ON.load(Relaxed) {
        return defer(kind, fd, call);
    }
    let ebadf = -i64::from(judge::EBADF);
    let offending = offending_stack(frame);
    let after = write_bad_handle(
        fd,
        kind,
        action,
        quarantined,
        if run { Moment::Ran } else { Moment::Failed },
        call,
        &offending,
    );
    Verdict {
        result: if run { None } else { Some(ebadf) },
        after,
    }
}

/// Exceptions written or counted, and the contexts seen (hashes of the
/// offending and closing stacks), for the summary and deduplication.
static EXCEPTIONS: AtomicU32 = AtomicU32::new(0);
const CONTEXT_SLOTS: usize = 256;
static CONTEXTS: [AtomicU64; CONTEXT_SLOTS] = [const { AtomicU64::new(0) }; CONTEXT_SLOTS];
static NCONTEXTS: AtomicU32 = AtomicU32::new(0);
/// More contexts than the table holds: each is written (never lost).
static CONTEXTS_FULL: AtomicBool = AtomicBool::new(false);

/// Is this context new? Records it. FNV-1a over the stacks' module
/// offsets (the same in every process of one program).
fn first_of_context(kind: Kind, offending: &[u64], closed: &[u64]) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ kind as u64;
    for &pc in offending.iter().chain([0u64].iter()).chain(closed.iter()) {
        let off = stack::module_of(pc as usize).map_or(pc, |(_, base)| pc - base as u64);
        for b in off.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let h = h | 1;
    for slot in &CONTEXTS {
        match slot.compare_exchange(0, h, Relaxed, Relaxed) {
            Ok(_) => {
                NCONTEXTS.fetch_add(1, Relaxed);
                return true;
            }
            Err(v) if v == h => return false,
            Err(_) => {}
        }
    }
    CONTEXTS_FULL.store(true, Relaxed);
    NCONTEXTS.fetch_add(1, Relaxed);
    true
}

/// Writes (or, for a context seen before, only counts) a bad-handle
/// report, and says what follows it.
#[allow(clippy::too_many_arguments)]
fn write_bad_handle(
    fd: i32,
    kind: Kind,
    action: Action,
    quarantined: bool,
    moment: Moment,
    call: &Call,
    offending: &Pcs,
) -> After {
    let then = then();
    let recorded = st::recorded(fd);
    let detail = st::slot(fd)
        .zip(recorded)
        .and_then(|(s, (k, _, _))| s.read_detail(k, 1000));
    let value = detail.map(|d| d.value).unwrap_or_default();
    let closed = detail.map(|d| d.closed).unwrap_or_default();
    let created = detail.map(|d| d.created).unwrap_or_default();
    let name = detail.map(|d| d.name).unwrap_or_default();
    // The handle before the last at this number, when the number was
    // reused and closed again: the stale copy may be of either.
    let earlier = st::slot(fd)
        .zip(recorded)
        .and_then(|(s, (_, _, e))| s.read_earlier(e, 1000))
        .filter(|e| e.generation != value.generation);
    EXCEPTIONS.fetch_add(1, Relaxed);
    let closed_pcs = &closed.pcs[..closed.len];
    if first_of_context(kind, offending.frames(), closed_pcs) {
        // Python frames (CPython programs): the call's now, the close's
        // and the creation's as recorded.
        let py_now = crate::python::capture();
        let py_rec = recorded.map(|(_, p, _)| (p.closed(), p.created()));
        let (py_closed, py_created) = py_rec.unwrap_or_default();
        let py = [py_now.frames(), py_closed.frames(), py_created.frames()];
        let mut w = Out::new();
        let _ = write_report(
            &mut w,
            action,
            fd,
            call,
            kind,
            quarantined,
            &value,
            name.as_bytes(),
            moment,
            then,
            offending,
            closed_pcs,
            &created.pcs[..created.len],
            py,
            earlier.as_ref(),
        );
        w.flush();
    }
    match (action, then) {
        (Action::Kill, _) => After::Kill,
        (_, Then::Continue) => After::Nothing,
        (_, Then::Stop) => After::Stop,
        (_, Then::Trap) => After::Trap,
    }
}

/// At the exit of the process `handles run --no-ptrace` started: the
/// valgrind-style summary (the supervisor writes it when there is one),
/// and the exit status `--error-exitcode` asks for. Descendants write a
/// summary of their own only when they had exceptions.
pub fn at_exit(root: bool, error_exitcode: Option<u8>) {
    if sys::COOKIE_ON.load(Relaxed) {
        return;
    }
    // A report the main thread held until its next call is due: there
    // will be none.
    let held = MEMO.with(|c| {
        let mut m = c.get();
        let h = m.take_held();
        c.set(m);
        h
    });
    if let Some(h) = held {
        let (nr, pcs) = HELD.with(Cell::get);
        let call = Call::syscall(nr, [h.fd as u64, 0, 0, 0, 0, 0]);
        // The process is exiting: nothing follows the report.
        let _ = write_bad_handle(
            h.fd,
            h.kind,
            h.action,
            h.quarantined,
            Moment::HeldEnded,
            &call,
            &pcs,
        );
    }
    write_summary(root);
    let n = EXCEPTIONS.load(Relaxed);
    if let (true, Some(code), true) = (root, error_exitcode, n > 0) {
        // SAFETY: flushes the program's stdio, then ends the process with
        // the status asked for, as valgrind's --error-exitcode does.
        unsafe {
            libc::fflush(core::ptr::null_mut());
            sys::raw(libc::SYS_exit_group, [u64::from(code), 0, 0, 0, 0, 0]);
        }
    }
}

/// Would a SIGTRAP now end the process (default action, not blocked)?
fn sigtrap_is_fatal() -> bool {
    // SAFETY: queries the current disposition and mask into locals.
    unsafe {
        let mut old: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(libc::SIGTRAP, core::ptr::null(), &mut old) != 0 {
            return false;
        }
        let mut mask: libc::sigset_t = core::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, core::ptr::null(), &mut mask);
        old.sa_sigaction == libc::SIG_DFL && libc::sigismember(&mask, libc::SIGTRAP) == 0
    }
}

/// Write the summary even with nothing to count (`HANDLES_SUMMARY=always`:
/// `--error-exitcode`, `--on-exception=continue`).
pub static ALWAYS_SUMMARIZE: AtomicBool = AtomicBool::new(false);

/// The shim-alone `ERROR SUMMARY` line (the supervisor writes its own):
/// for any process that had exceptions, and for the job's root process
/// when a CI run asks for it always.
fn write_summary(root: bool) {
    if sys::COOKIE_ON.load(Relaxed) {
        return;
    }
    let n = EXCEPTIONS.load(Relaxed);
    if n > 0 || (root && ALWAYS_SUMMARIZE.load(Relaxed)) {
        let mut w = Out::new();
        let summary = Summary {
            exceptions: u64::from(n),
            contexts: u64::from(NCONTEXTS.load(Relaxed)),
            suppressed: 0,
            this_process: !root,
        };
        let _ = writeln!(w, "{summary}");
        w.flush();
    }
}

/// Under the supervisor: hands the bad call to it instead of reporting,
/// marked so that its prefilter stops on it (the IP of the shim's own
/// syscalls would otherwise let it through). The supervisor acts on the
/// judge's verdict (its report, its action) without judging it again.
fn defer(kind: Kind, fd: i32, call: &Call) -> Verdict {
    let ebadf = Verdict {
        result: Some(-(libc::EBADF as i64)),
        after: After::Nothing,
    };
    if call.nr >= 0 && sys::cookie_arg(call.nr).is_some() {
        // SAFETY: the program's own call and arguments, unchanged but for
        // the register the syscall does not read.
        let r = unsafe { sys::marked(call.nr, call.args, marker::CHECK) };
        return Verdict {
            result: Some(r),
            after: After::Nothing,
        };
    }
    // SAFETY: an all-zero stat is a valid buffer for fstat.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    let buf = &raw mut stat as u64;
    if call.nr >= 0 {
        // No register left for a marker (six arguments): an fstat of the
        // fd stands for the call, which the shim does not run.
        let e = Message::Proxy { fd, nr: call.nr }.encode(buf);
        // SAFETY: fstat of the program's fd into a local buffer; the
        // proxy's number rides in a register fstat does not read.
        unsafe { sys::marked(e.nr, e.args, e.tag) };
        return ebadf;
    }
    // A libc function (fclose, fdopen, ...): the supervisor is shown the
    // syscall it stands for, close(fd) or fstat(fd).
    let (nr, args) = match kind {
        Kind::DoubleClose | Kind::CloseNeverOpened => (libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]),
        _ => (libc::SYS_fstat, [fd as u64, buf, 0, 0, 0, 0]),
    };
    // SAFETY: close/fstat of the program's bad fd (nothing is open
    // there, or a tombstone the supervisor keeps), into a local buffer.
    unsafe { sys::marked(nr, args, marker::CHECK) };
    ebadf
}

/// The stack of the bad call, from the wrapper's trampoline `frame`.
fn offending_stack(frame: usize) -> Pcs {
    if frame != 0 && !stack::UNWIND.load(Relaxed) {
        // The unwinder gives the deeper stack; the trampoline frame only
        // matters when the program has no unwind info.
        let u = stack::unwind(STACK_DEPTH, 0);
        if u.n > 0 {
            u
        } else {
            stack::capture(frame)
        }
    } else {
        stack::unwind(STACK_DEPTH, 0)
    }
}

/// Raises the policy's consequence on the calling thread.
pub fn apply(after: After) {
    if after == After::Nothing {
        return;
    }
    let pid = sys::getpid();
    match after {
        After::Nothing => {}
        After::Trap => {
            if sigtrap_is_fatal() {
                // The process dies of it: its summary now, as the exit
                // handler will not run.
                write_summary(sys::getpid() == crate::root_pid());
            }
            // SAFETY: signals this very thread.
            unsafe {
                sys::raw(
                    libc::SYS_tgkill,
                    [
                        pid as u64,
                        sys::gettid() as u64,
                        libc::SIGTRAP as u64,
                        0,
                        0,
                        0,
                    ],
                )
            };
        }
        After::Stop => {
            // Alone, the shim cannot detach anything: the process stops
            // itself, for `gdb -p PID` (SIGCONT resumes it).
            // SAFETY: stops this very process.
            unsafe {
                sys::raw(
                    libc::SYS_kill,
                    [pid as u64, libc::SIGSTOP as u64, 0, 0, 0, 0],
                )
            };
        }
        After::Kill => {
            // The process dies of it: its summary now.
            write_summary(sys::getpid() == crate::root_pid());
            // SAFETY: kills this process, as the policy says.
            unsafe {
                sys::raw(
                    libc::SYS_kill,
                    [pid as u64, libc::SIGKILL as u64, 0, 0, 0, 0],
                )
            };
        }
    }
}

/// Reads a small /proc file or prctl name into `buf`, trimmed.
fn comm_of_process(buf: &mut [u8; 32]) -> &[u8] {
    // SAFETY: open/read/close of /proc/self/comm into a local buffer.
    let n = unsafe {
        let fd = sys::sc(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                c"/proc/self/comm".as_ptr() as u64,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        );
        if fd < 0 {
            return b"?";
        }
        let n = sys::sc(
            libc::SYS_read,
            [
                fd as u64,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
                0,
                0,
                0,
            ],
        );
        sys::close(fd as i32);
        n
    };
    trim(buf, n)
}

fn comm_of_thread(buf: &mut [u8; 32]) -> &[u8] {
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    let r = unsafe {
        sys::raw(
            libc::SYS_prctl,
            [
                libc::PR_GET_NAME as u64,
                buf.as_mut_ptr() as u64,
                0,
                0,
                0,
                0,
            ],
        )
    };
    if r < 0 {
        return b"?";
    }
    let n = buf.iter().position(|&c| c == 0).unwrap_or(16);
    trim(buf, n as i64)
}

fn trim(buf: &[u8], n: i64) -> &[u8] {
    let n = usize::try_from(n).unwrap_or(0).min(buf.len());
    let mut s = &buf[..n];
    while let [rest @ .., b'\n'] = s {
        s = rest;
    }
    if s.is_empty() {
        b"?"
    } else {
        s
    }
}

fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `pcs` up to the first frame outside every module past the first,
/// where a frame-pointer walk that wandered off (code built without frame
/// pointers) ends.
fn walked(pcs: &[u64]) -> &[u64] {
    let end = pcs
        .iter()
        .enumerate()
        .position(|(i, &pc)| i > 0 && stack::module_of(pc as usize).is_none())
        .unwrap_or(pcs.len());
    &pcs[..end]
}

/// Stack `k` of a report: symbolized by `handles symbolize` where it
/// could be, else addresses and module offsets.
fn stack_lines(
    w: &mut Out,
    pcs: &[u64],
    sym: Option<&crate::symbolize::Text>,
    k: usize,
) -> core::fmt::Result {
    let pcs = walked(pcs);
    if let (Some(t), false) = (sym, pcs.is_empty()) {
        let mut any = false;
        for line in t.stack(k) {
            report::write_frame_raw(w, line)?;
            any = true;
        }
        if any {
            return Ok(());
        }
    }
    frames(w, pcs)
}

fn frames(w: &mut Out, pcs: &[u64]) -> core::fmt::Result {
    if pcs.is_empty() {
        return report::write_no_stack(w);
    }
    for (i, &pc) in pcs.iter().enumerate() {
        let module = stack::module_of(pc as usize);
        // A frame outside every module ends a frame-pointer walk that
        // wandered off (code built without frame pointers).
        if module.is_none() && i > 0 {
            break;
        }
        report::write_frame_start(w, i)?;
        write!(w, "{pc:#018x}")?;
        match module {
            Some((name, base)) => {
                let name = basename(name);
                let name = if name.is_empty() {
                    st::exe_name()
                } else {
                    name
                };
                w.bytes(b" (");
                w.bytes(name);
                writeln!(w, "+{:#x})", pc as usize - base)?;
            }
            None => writeln!(w, " (?)")?,
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    w: &mut Out,
    a: Action,
    fd: i32,
    call: &Call,
    kind: Kind,
    quarantined: bool,
    value: &handles_model::table::SlotValue,
    name: &[u8],
    moment: Moment,
    then: Then,
    offending: &Pcs,
    closed: &[u64],
    created: &[u64],
    py: [&[handles_model::python::PyFrame]; 3],
    earlier: Option<&handles_model::table::EarlierRecord>,
) -> core::fmt::Result {
    let was_closed = matches!(kind, Kind::UseClosed | Kind::DoubleClose | Kind::DupClosed);
    let pid = sys::getpid();
    let mut pbuf = [0u8; 32];
    let mut tbuf = [0u8; 32];
    let h = HandleValue::encode(Fd(fd), value.generation, st::MIXER.load(Relaxed));
    let handle = if was_closed {
        HandleLine::Closed {
            value: &h,
            fd,
            ty: obj_type_from_code(value.obj_type).map_or("object", |t| t.name()),
            koid: 0,
            name,
        }
    } else {
        HandleLine::NotOpen { fd }
    };
    Head {
        condition: &Condition::BadHandle,
        action: &a,
        pid,
        process: comm_of_process(&mut pbuf),
        tid: sys::gettid(),
        thread: comm_of_thread(&mut tbuf),
        syscall: &SyscallText {
            name: call.name,
            args: &call.args,
            nargs: usize::from(call.nargs.min(6)),
            fd_mask: call.fd_mask,
        },
        handle: Some(handle),
        what: &kind.sentence(quarantined),
        outcome: &judge::Outcome {
            action: a,
            moment,
            then,
        },
    }
    .write_to(w)?;
    let earlier_closed = earlier.map_or(&[][..], |e| &e.closed.pcs[..e.closed.len]);
    let earlier_py = earlier.map_or(&[][..], |e| e.py_closed.frames());
    let sym = crate::symbolize::symbolize(&[
        (walked(offending.frames()), py[0]),
        (walked(closed), py[1]),
        (walked(created), py[2]),
        (walked(earlier_closed), earlier_py),
    ]);
    // The symbolizer puts the Python frames in place of the evaluation
    // loop's; without it they follow the native frames.
    let (py, earlier_py) = if sym.is_some() {
        ([&[][..]; 3], &[][..])
    } else {
        (py, earlier_py)
    };
    report::write_title(w, &Title::Backtrace)?;
    stack_lines(w, offending.frames(), sym.as_ref(), 0)?;
    crate::python::write_frames(w, py[0], walked(offending.frames()).len())?;
    if was_closed {
        report::write_title(w, &Title::Closed { how: None, pid })?;
        stack_lines(w, closed, sym.as_ref(), 1)?;
        crate::python::write_frames(w, py[1], walked(closed).len())?;
        let origin = "opened";
        report::write_title(w, &Title::Opened { origin, pid })?;
        stack_lines(w, created, sym.as_ref(), 2)?;
        crate::python::write_frames(w, py[2], walked(created).len())?;
        if let Some(e) = earlier {
            let h = HandleValue::encode(Fd(fd), e.generation, st::MIXER.load(Relaxed));
            report::EarlierTitle {
                handle: HandleLine::Closed {
                    value: &h,
                    fd,
                    ty: obj_type_from_code(e.obj_type).map_or("object", |t| t.name()),
                    koid: 0,
                    name: e.name.as_bytes(),
                },
                how: None,
                pid,
            }
            .write_line(w)?;
            stack_lines(w, earlier_closed, sym.as_ref(), 3)?;
            crate::python::write_frames(w, earlier_py, walked(earlier_closed).len())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_the_supervisors_encoding() {
        assert!(set_policy("v1,bad-handle=kill,wrong-object=allow,new-file=allow,new-dir=allow,new-pipe=allow,new-channel=allow,new-socket=deny-exception:override-deny,new-event=allow,new-port=allow,new-timer=allow,new-vmo=allow,new-process=allow,new-other=allow"));
        assert_eq!(policy().action(Condition::BadHandle), Action::Kill);
        assert!(set_policy("v1,bad-handle=deny"));
        assert_eq!(policy().action(Condition::BadHandle), Action::Deny);
        assert!(!set_policy("v1,bad-handle=trap"));
        assert_eq!(policy().action(Condition::BadHandle), Action::Deny);
    }
}
