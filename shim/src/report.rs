//! The bad-handle policy and the exception report, written with raw
//! write(2) from a stack buffer: no allocation, no stdio.

use core::fmt::Write;
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use handles_model::table::{marker, obj_type_from_code, state, STACK_DEPTH};
use handles_model::{Fd, HandleValue};

use crate::state::{self as st, Pcs};
use crate::{stack, sys};

/// The bad-handle action (`HANDLES_POLICY`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Action {
    Allow = 0,
    Deny = 1,
    AllowException = 2,
    DenyException = 3,
    Kill = 4,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::AllowException => "allow-exception",
            Action::DenyException => "deny-exception",
            Action::Kill => "kill",
        }
    }

    fn from_u8(v: u8) -> Action {
        match v {
            0 => Action::Allow,
            1 => Action::Deny,
            3 => Action::DenyException,
            4 => Action::Kill,
            _ => Action::AllowException,
        }
    }
}

static ACTION: AtomicU8 = AtomicU8::new(Action::AllowException as u8);

pub fn action() -> Action {
    Action::from_u8(ACTION.load(Relaxed))
}

/// Reads the bad-handle entry of an encoded policy
/// (`v1,bad-handle=ACTION[:override-…],…`); anything else keeps the
/// default, allow-exception.
pub fn parse_policy(s: &str) -> Option<Action> {
    let mut parts = s.trim().split(',');
    if parts.next()? != "v1" {
        return None;
    }
    for p in parts {
        let Some(rest) = p.trim().strip_prefix("bad-handle=") else {
            continue;
        };
        let a = rest.split(':').next().unwrap_or("").trim();
        return match a {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            "allow-exception" => Some(Action::AllowException),
            "deny-exception" => Some(Action::DenyException),
            "kill" => Some(Action::Kill),
            _ => None,
        };
    }
    None
}

pub fn set_action(a: Action) {
    ACTION.store(a as u8, Relaxed);
}

/// What the program did with the bad fd.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Use,
    Close,
    Dup,
}

/// The call as the report shows it.
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
    Kill,
}

/// The verdict on a bad handle: run the call (`None`) or return this raw
/// result (`-errno`); then `after`.
pub struct Verdict {
    pub result: Option<i64>,
    pub after: After,
}

/// Decides and reports a use/close/dup of `fd`, whose slot is a tombstone
/// (`stale`) or free and not open in the kernel. Called inside the shim.
pub fn bad_handle(what: Op, fd: i32, call: &Call, frame: usize) -> Verdict {
    let detail = st::slot(fd)
        .zip(st::stacks(fd))
        .and_then(|(s, k)| s.read_detail(k, 1000));
    let value = detail.map(|d| d.value).unwrap_or_default();
    let stale = value.state == state::TOMBSTONE;
    let ebadf = Some(-(libc::EBADF as i64));
    let was_closed = stale || detail.is_some_and(|d| d.closed.len > 0);
    if what == Op::Close
        && was_closed
        && obj_type_from_code(value.obj_type) == Some(handles_model::ObjType::Pipe)
        && suppress_defaults()
        && st::exe_name() == b"bash"
        && called_from_bash(frame)
    {
        // The supervisor's default suppression, same rule, applied here
        // under a supervisor too (it would cost every bash pipeline a stop
        // and a symbolized stack): bash closes the pipe ends of a pipeline
        // twice in its parent; nothing is opened in between, so no other
        // object can be hit. The kernel answers EBADF, as natively.
        return Verdict {
            result: ebadf,
            after: After::Nothing,
        };
    }
    if sys::COOKIE_ON.load(Relaxed) {
        return defer(what, fd, call);
    }
    let a = action();
    let (result, after) = match a {
        // A quarantined number stands for a closed fd: the call must see
        // EBADF, never the tombstone.
        Action::Allow => (if stale { ebadf } else { None }, After::Nothing),
        Action::Deny => (ebadf, After::Nothing),
        Action::AllowException | Action::DenyException => (ebadf, After::Trap),
        Action::Kill => (ebadf, After::Kill),
    };
    if after != After::Nothing {
        let closed = detail.map(|d| d.closed).unwrap_or_default();
        let created = detail.map(|d| d.created).unwrap_or_default();
        let whatline = match (what, was_closed, stale) {
            (Op::Close, true, _) => "close of a closed handle (double close)",
            (Op::Close, false, _) => "close of a handle that was never opened",
            (Op::Dup, true, _) => "duplication of a closed handle",
            (Op::Dup, false, _) => "duplication of a handle that was never opened",
            (Op::Use, _, true) => "use of a closed handle (its fd number is quarantined)",
            (Op::Use, true, false) => "use of a closed handle",
            (Op::Use, false, false) => "use of a handle that was never opened",
        };
        let offending = offending_stack(frame);
        let mut w = Out::new();
        let _ = write_report(
            &mut w,
            a,
            fd,
            call,
            whatline,
            was_closed,
            &value,
            &offending,
            &closed.pcs[..closed.len],
            &created.pcs[..created.len],
        );
        w.flush();
    }
    Verdict { result, after }
}

/// Under the supervisor: hands the bad call to it instead of reporting,
/// marked so that its prefilter stops on it (the IP of the shim's own
/// syscalls would otherwise let it through). The supervisor reads this
/// table (a TOMBSTONE slot is a closed handle), writes the symbolized
/// report and applies the policy.
fn defer(what: Op, fd: i32, call: &Call) -> Verdict {
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
        // SAFETY: fstat of the program's fd into a local buffer; the
        // proxy's number rides in a register fstat does not read.
        unsafe {
            sys::marked(
                libc::SYS_fstat,
                [fd as u64, buf, 0, call.nr as u64, 0, 0],
                marker::PROXY,
            )
        };
        return ebadf;
    }
    // A libc function (fclose, fdopen, ...): the supervisor is shown the
    // syscall it stands for, close(fd) or fstat(fd).
    let (nr, args) = match what {
        Op::Close => (libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]),
        _ => (libc::SYS_fstat, [fd as u64, buf, 0, 0, 0, 0]),
    };
    // SAFETY: close/fstat of the program's bad fd (nothing is open
    // there, or a tombstone the supervisor keeps), into a local buffer.
    unsafe { sys::marked(nr, args, marker::CHECK) };
    ebadf
}

static NO_DEFAULT_SUPPRESSIONS: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// `HANDLES_NO_DEFAULT_SUPPRESSIONS=1` reports what the built-in rules
/// would silence.
pub fn set_no_default_suppressions() {
    NO_DEFAULT_SUPPRESSIONS.store(true, Relaxed);
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

fn suppress_defaults() -> bool {
    !NO_DEFAULT_SUPPRESSIONS.load(Relaxed)
}

/// Whether the bad call was made by bash's own code. Its pipeline double
/// closes are direct calls, so the trampoline's return address answers
/// at the price of a frame-pointer read; only another caller costs an
/// unwind and a module lookup per frame (each a dladdr: a linear search
/// of bash's symbols, which made every pipeline of a shell loop pay ~0.1
/// ms).
fn called_from_bash(frame: usize) -> bool {
    let first = stack::capture(frame);
    if first
        .frames()
        .first()
        .is_some_and(|&pc| stack::in_main_program(pc as usize))
    {
        return true;
    }
    offending_stack(frame)
        .frames()
        .iter()
        .any(|&pc| module_is(pc, b"bash"))
}

/// Is `pc` in a module whose file name is `name`?
fn module_is(pc: u64, name: &[u8]) -> bool {
    stack::module_of(pc as usize).is_some_and(|(m, _)| {
        let b = basename(m);
        if b.is_empty() {
            st::exe_name() == name
        } else {
            b == name
        }
    })
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
        After::Kill => {
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

/// A 2 KiB stack buffer that flushes to fd 2 when full.
struct Out {
    buf: [u8; 2048],
    n: usize,
}

impl Out {
    fn new() -> Out {
        Out {
            buf: [0; 2048],
            n: 0,
        }
    }

    fn flush(&mut self) {
        sys::write_all(2, &self.buf[..self.n]);
        self.n = 0;
    }

    fn bytes(&mut self, b: &[u8]) {
        for chunk in b.chunks(512) {
            if self.n + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.n..self.n + chunk.len()].copy_from_slice(chunk);
            self.n += chunk.len();
        }
    }
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
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

fn frames(w: &mut Out, pcs: &[u64]) -> core::fmt::Result {
    if pcs.is_empty() {
        return writeln!(w, "handles:     (no stack recorded)");
    }
    for (i, &pc) in pcs.iter().enumerate() {
        let module = stack::module_of(pc as usize);
        // A frame outside every module ends a frame-pointer walk that
        // wandered off (code built without frame pointers).
        if module.is_none() && i > 0 {
            break;
        }
        write!(w, "handles:     #{i} {pc:#018x}")?;
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
    whatline: &str,
    was_closed: bool,
    value: &handles_model::table::SlotValue,
    offending: &Pcs,
    closed: &[u64],
    created: &[u64],
) -> core::fmt::Result {
    let pid = sys::getpid();
    let tid = sys::gettid();
    let mut pbuf = [0u8; 32];
    let mut tbuf = [0u8; 32];
    writeln!(
        w,
        "handles: <== policy exception: bad-handle (action {})",
        a.name()
    )?;
    write!(w, "handles:     process {pid} (")?;
    w.bytes(comm_of_process(&mut pbuf));
    write!(w, ") thread {tid} (")?;
    w.bytes(comm_of_thread(&mut tbuf));
    writeln!(w, ")")?;
    write!(w, "handles:     syscall {}(", call.name)?;
    for i in 0..usize::from(call.nargs.min(6)) {
        if i > 0 {
            write!(w, ", ")?;
        }
        let v = call.args[i];
        if call.fd_mask & (1 << i) != 0 {
            write!(w, "{}", v as i32)?;
        } else if v < 0x10000 {
            write!(w, "{v}")?;
        } else {
            write!(w, "{v:#x}")?;
        }
    }
    writeln!(w, ")")?;
    if was_closed {
        let h = HandleValue::encode(Fd(fd), value.generation, st::MIXER.load(Relaxed));
        let ty = obj_type_from_code(value.obj_type).map_or("object", |t| t.name());
        writeln!(w, "handles:     handle {h} (fd {fd}): closed {ty}")?;
    } else {
        writeln!(w, "handles:     handle fd {fd}: not open")?;
    }
    writeln!(w, "handles:     {whatline}")?;
    let outcome = match a {
        Action::Kill => "the process is killed (SIGKILL)",
        _ => "the call fails with EBADF without running; SIGTRAP follows",
    };
    writeln!(w, "handles:     {outcome}")?;
    writeln!(w, "handles: backtrace:")?;
    frames(w, offending.frames())?;
    if was_closed {
        writeln!(w, "handles: closed in process {pid} at:")?;
        frames(w, closed)?;
        writeln!(w, "handles: originally opened in process {pid} at:")?;
        frames(w, created)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_entry() {
        assert_eq!(parse_policy("v1,bad-handle=kill"), Some(Action::Kill));
        assert_eq!(
            parse_policy(
                "v1,wrong-object=allow,bad-handle=deny-exception:override-deny,new-any=allow"
            ),
            Some(Action::DenyException)
        );
        assert_eq!(parse_policy("v1,new-any=deny"), None);
        assert_eq!(parse_policy("v2,bad-handle=allow"), None);
        assert_eq!(parse_policy("bad-handle=allow"), None);
        assert_eq!(parse_policy("v1,bad-handle=bogus"), None);
        assert_eq!(parse_policy("v1,bad-handle=allow"), Some(Action::Allow));
    }
}
