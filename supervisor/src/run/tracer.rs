//! ptrace primitives: registers, tracee memory (read through the crate's
//! one reader, `backtrace::memory`), and running a syscall of our own
//! inside a stopped thread; [`Stopped`], the only way `run/` touches a
//! stopped thread.
//!
//! This is the only module that resumes a tracee outside the main loop. An
//! injected syscall is run synchronously (we wait on that one tid), which is
//! safe only for syscalls that never block: openat(O_PATH), fcntl(F_DUPFD),
//! close/close_range of tombstones. Anything else that happens to the
//! thread meanwhile (it is killed, it exits) is handed back to the main loop
//! through `deferred`.

use std::io;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::backtrace::memory;

pub type Regs = libc::user_regs_struct;

/// Length of the x86_64 `syscall` instruction: a stop reports rip after it.
pub const SYSCALL_INSN_LEN: u64 = 2;

pub fn getregs(tid: i32) -> Result<Regs, Errno> {
    ptrace::getregs(Pid::from_raw(tid))
}

pub fn setregs(tid: i32, regs: &Regs) -> Result<(), Errno> {
    ptrace::setregs(Pid::from_raw(tid), *regs)
}

/// The six syscall argument registers, in order.
pub fn args(r: &Regs) -> [u64; 6] {
    [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9]
}

pub fn set_args(r: &mut Regs, a: [u64; 6]) {
    r.rdi = a[0];
    r.rsi = a[1];
    r.rdx = a[2];
    r.r10 = a[3];
    r.r8 = a[4];
    r.r9 = a[5];
}

/// The C string at `addr` in the tracee, up to `max` bytes (without its
/// NUL), or None if nothing there can be read. A string that ends just
/// before an unmapped page is read: the reader stops at the first page it
/// cannot read.
pub fn read_head(tid: i32, addr: u64, max: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let n = memory::read_partial(tid, addr, &mut buf)
        .ok()
        .filter(|&n| n > 0)?;
    buf.truncate(n);
    if let Some(end) = buf.iter().position(|&b| b == 0) {
        buf.truncate(end);
    }
    Some(buf)
}

/// Reads exactly `len` bytes of tracee memory.
pub fn read_mem(tid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    if memory::read_partial(tid, addr, &mut buf)? != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short tracee read",
        ));
    }
    Ok(buf)
}

pub fn read_i32(tid: i32, addr: u64) -> io::Result<i32> {
    let b = read_mem(tid, addr, 4)?;
    Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn read_u64(tid: i32, addr: u64) -> io::Result<u64> {
    let b = read_mem(tid, addr, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b);
    Ok(u64::from_ne_bytes(a))
}

/// Writes tracee memory (process_vm_writev; PTRACE_POKEDATA would also
/// reach read-only pages, which we never need).
pub fn write_mem(tid: i32, addr: u64, data: &[u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: local points at data (read only by the kernel); remote is in
    // the tracee's address space.
    let n = unsafe { libc::process_vm_writev(tid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short tracee write",
        ));
    }
    Ok(())
}

/// Why an injected syscall did not complete.
#[derive(Debug)]
pub enum InjectError {
    /// The thread died or began exiting; its status is in `deferred`.
    Gone,
    Ptrace(Errno),
}

impl From<Errno> for InjectError {
    fn from(e: Errno) -> Self {
        if e == Errno::ESRCH {
            InjectError::Gone
        } else {
            InjectError::Ptrace(e)
        }
    }
}

/// Events of other kinds seen while waiting on one thread, and signals that
/// arrived for it meanwhile (to be re-raised once the injection is done).
#[derive(Default, Debug)]
pub struct Deferred {
    pub statuses: Vec<WaitStatus>,
    /// (tid, signal number): real-time signals included.
    pub signals: Vec<(i32, i32)>,
    /// (pid, signal, core dumped): deaths by a signal nix cannot name.
    pub killed: Vec<(i32, i32, bool)>,
}

/// A wait status, including what nix's `WaitStatus` cannot hold: nix
/// knows only the classic signals, and its waitpid fails with EINVAL on
/// a stop or death by a real-time one (glibc's pthread_cancel and
/// setxid broadcasts use SIGRTMIN and SIGRTMIN+1), after the kernel has
/// already consumed the status.
#[derive(Debug)]
pub enum Waited {
    Status(WaitStatus),
    /// Signal-delivery stop for a signal nix cannot name.
    SignalStop(i32, i32),
    /// Killed by a signal nix cannot name (pid, signal, core dumped).
    Killed(i32, i32, bool),
}

/// waitpid(pid or -1, __WALL), decoded without losing any status.
pub fn wait(pid: Option<i32>) -> Result<Waited, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int into `status`.
    let r = unsafe { libc::waitpid(pid.unwrap_or(-1), &mut status, libc::__WALL) };
    if r < 0 {
        return Err(Errno::last());
    }
    if let Ok(st) = WaitStatus::from_raw(Pid::from_raw(r), status) {
        return Ok(Waited::Status(st));
    }
    if libc::WIFSIGNALED(status) {
        return Ok(Waited::Killed(
            r,
            libc::WTERMSIG(status),
            libc::WCOREDUMP(status),
        ));
    }
    if libc::WIFSTOPPED(status) {
        return Ok(Waited::SignalStop(r, libc::WSTOPSIG(status)));
    }
    Err(Errno::EINVAL)
}

/// Resumes `tid` (PTRACE_CONT, or PTRACE_DETACH) delivering signal `sig`
/// by number, real-time ones included.
pub fn resume_with(tid: i32, sig: i32, detach: bool) -> Result<(), Errno> {
    let req = if detach {
        libc::PTRACE_DETACH
    } else {
        libc::PTRACE_CONT
    };
    // SAFETY: PTRACE_CONT/DETACH of our own tracee; data is a signal number.
    let r = unsafe { libc::ptrace(req, tid, 0, sig as libc::c_long) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Resumes `tid` with PTRACE_SYSCALL and waits for its next syscall stop,
/// passing over seccomp stops and holding back signals.
fn step_to_syscall_stop(tid: i32, deferred: &mut Deferred) -> Result<(), InjectError> {
    let pid = Pid::from_raw(tid);
    ptrace::syscall(pid, None)?;
    loop {
        let st = match wait(Some(tid)) {
            Ok(Waited::Status(st)) => st,
            Ok(Waited::SignalStop(_, sig)) => {
                deferred.signals.push((tid, sig));
                ptrace::syscall(pid, None)?;
                continue;
            }
            Ok(Waited::Killed(p, sig, core)) => {
                deferred.killed.push((p, sig, core));
                return Err(InjectError::Gone);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        match st {
            WaitStatus::PtraceSyscall(_) => return Ok(()),
            WaitStatus::PtraceEvent(_, _, e) if e == libc::PTRACE_EVENT_SECCOMP => {
                ptrace::syscall(pid, None)?;
            }
            WaitStatus::PtraceEvent(_, _, e) if e == libc::PTRACE_EVENT_EXIT => {
                deferred.statuses.push(st);
                return Err(InjectError::Gone);
            }
            WaitStatus::Stopped(_, sig) => {
                // A signal arrived on the way back to user mode: hold it, and
                // let the caller raise it again when the thread is its own.
                deferred.signals.push((tid, sig as i32));
                ptrace::syscall(pid, None)?;
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                deferred.statuses.push(st);
                return Err(InjectError::Gone);
            }
            _ => {
                ptrace::syscall(pid, None)?;
            }
        }
    }
}

/// At a syscall-entry (seccomp) stop: runs `nr(args)` instead of the
/// syscall the thread entered, and returns its result with the registers
/// at its exit stop. The caller restores or rewrites the registers after.
pub fn replace_at_entry(
    tid: i32,
    entry: &Regs,
    nr: i64,
    a: [u64; 6],
    deferred: &mut Deferred,
) -> Result<(i64, Regs), InjectError> {
    let mut r = *entry;
    r.orig_rax = nr as u64;
    r.rax = nr as u64;
    set_args(&mut r, a);
    setregs(tid, &r)?;
    step_to_syscall_stop(tid, deferred)?;
    let exit = getregs(tid)?;
    Ok((exit.rax as i64, exit))
}

/// At a syscall-exit stop: runs one more syscall by pointing the thread
/// back at its `syscall` instruction, and returns the result with the
/// registers at that syscall's exit stop.
pub fn inject_at_exit(
    tid: i32,
    exit: &Regs,
    nr: i64,
    a: [u64; 6],
    deferred: &mut Deferred,
) -> Result<(i64, Regs), InjectError> {
    let mut r = *exit;
    r.rip = exit.rip.wrapping_sub(SYSCALL_INSN_LEN);
    r.rax = nr as u64;
    r.orig_rax = nr as u64;
    set_args(&mut r, a);
    setregs(tid, &r)?;
    // Entry stop, then exit stop.
    step_to_syscall_stop(tid, deferred)?;
    step_to_syscall_stop(tid, deferred)?;
    let after = getregs(tid)?;
    Ok((after.rax as i64, after))
}

/// A thread in a ptrace stop, as the event loop received it from
/// waitpid. Only through it are the thread's registers, arguments and
/// memory read or written and syscalls injected; ending the stop
/// (continuing it, following its syscall to the exit stop, detaching,
/// listening for a group-stop, or finding it gone) consumes it and gives
/// the [`Resumed`] the loop's handlers must return: every stop is ended
/// exactly once, and the compiler checks it.
///
/// Not `Clone`: two values for one stop would be two resumes.
#[must_use = "a stopped thread must be resumed, detached or found gone"]
#[derive(Debug)]
pub struct Stopped {
    tid: i32,
}

/// Proof that a stop was ended. Only [`Stopped`]'s consuming methods make
/// one.
#[must_use = "return it from the stop's handler"]
#[derive(Debug)]
pub struct Resumed(());

impl Stopped {
    /// The stop of `tid` that waitpid just reported. Only the event loop
    /// makes these, one per reported stop.
    pub(crate) fn reported(tid: i32) -> Stopped {
        Stopped { tid }
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    pub fn regs(&self) -> Result<Regs, Errno> {
        getregs(self.tid)
    }

    pub fn set_regs(&self, regs: &Regs) -> Result<(), Errno> {
        setregs(self.tid, regs)
    }

    /// At a syscall-entry stop: the call fails with `errno` without
    /// running (`regs` are the entry registers).
    pub fn skip_with(&self, mut regs: Regs, errno: i32) {
        regs.orig_rax = u64::MAX;
        regs.rax = (-(errno as i64)) as u64;
        // ESRCH: killed meanwhile; its exit comes next.
        let _ = setregs(self.tid, &regs);
    }

    /// PTRACE_GETEVENTMSG: the new task's id at a fork/clone event, the
    /// former thread id at an exec event.
    pub fn event_msg(&self) -> Result<i64, Errno> {
        ptrace::getevent(Pid::from_raw(self.tid))
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        read_mem(self.tid, addr, len)
    }

    pub fn read_head(&self, addr: u64, max: usize) -> Option<Vec<u8>> {
        read_head(self.tid, addr, max)
    }

    pub fn read_i32(&self, addr: u64) -> io::Result<i32> {
        read_i32(self.tid, addr)
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        read_u64(self.tid, addr)
    }

    pub fn write_mem(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        write_mem(self.tid, addr, data)
    }

    /// [`replace_at_entry`] in this thread.
    pub fn replace_at_entry(
        &self,
        entry: &Regs,
        nr: i64,
        a: [u64; 6],
        deferred: &mut Deferred,
    ) -> Result<(i64, Regs), InjectError> {
        replace_at_entry(self.tid, entry, nr, a, deferred)
    }

    /// [`inject_at_exit`] in this thread.
    pub fn inject_at_exit(
        &self,
        exit: &Regs,
        nr: i64,
        a: [u64; 6],
        deferred: &mut Deferred,
    ) -> Result<(i64, Regs), InjectError> {
        inject_at_exit(self.tid, exit, nr, a, deferred)
    }

    /// [`inject_after_exec`] in this thread.
    pub fn inject_after_exec(
        &self,
        insn: u64,
        nr: i64,
        a: [u64; 6],
        deferred: &mut Deferred,
    ) -> Result<i64, InjectError> {
        inject_after_exec(self.tid, insn, nr, a, deferred)
    }

    /// PTRACE_CONT without a signal.
    pub fn cont(self) -> Resumed {
        self.cont_with(0)
    }

    /// PTRACE_CONT delivering signal `sig` by number (0: none).
    pub fn cont_with(self, sig: i32) -> Resumed {
        // ESRCH: the thread was killed meanwhile; its exit comes next.
        let _ = resume_with(self.tid, sig, false);
        Resumed(())
    }

    /// PTRACE_SYSCALL from a syscall-entry stop: the thread's next stop is
    /// this syscall's exit, where the work its thread recorded is done.
    pub fn to_exit(self) -> Resumed {
        // ESRCH: killed meanwhile; its exit comes next.
        let _ = ptrace::syscall(Pid::from_raw(self.tid), None);
        Resumed(())
    }

    /// PTRACE_DETACH delivering `sig` by number (0: none).
    pub fn detach(self, sig: i32) -> Resumed {
        let _ = resume_with(self.tid, sig, true);
        Resumed(())
    }

    /// PTRACE_LISTEN at a group-stop: the thread stays stopped (job
    /// control works) and its next event is still reported.
    pub fn listen(self) -> Resumed {
        // SAFETY: PTRACE_LISTEN on our tracee in a group-stop; no memory
        // is passed.
        unsafe { libc::ptrace(libc::PTRACE_LISTEN, self.tid, 0, 0) };
        Resumed(())
    }

    /// The thread died while stopped (a register read or an injection
    /// found it gone): its exit status comes through waitpid, and there is
    /// nothing to resume.
    pub fn gone(self) -> Resumed {
        Resumed(())
    }

    /// Keeps the stop for later: a new thread's first stop, seen before
    /// its parent's fork/clone event, waits in `park` until that event
    /// (which resumes it, or drops it with [`Stopped::gone`]).
    pub fn park(self, park: &mut std::collections::HashMap<i32, Stopped>) -> Resumed {
        park.insert(self.tid, self);
        Resumed(())
    }
}

/// Errno of a raw syscall return value.
pub fn errno_of(ret: i64) -> Option<i32> {
    (-4095..0).contains(&ret).then_some((-ret) as i32)
}

/// At a PTRACE_EVENT_EXEC stop: runs `nr(args)` in the new image before
/// its first instruction, from the `syscall` instruction at `insn` (the
/// new image has not executed one yet, so there is none to point back
/// at), and leaves the thread where exec left it. Returns the raw result.
///
/// The syscall cannot be set up at the event stop itself: execve's return
/// value is written into rax after the event, so the thread is first run
/// to execve's exit stop.
pub fn inject_after_exec(
    tid: i32,
    insn: u64,
    nr: i64,
    a: [u64; 6],
    deferred: &mut Deferred,
) -> Result<i64, InjectError> {
    step_to_syscall_stop(tid, deferred)?;
    let saved = getregs(tid)?;
    let mut r = saved;
    r.rip = insn;
    r.rax = nr as u64;
    set_args(&mut r, a);
    setregs(tid, &r)?;
    // Entry stop, then exit stop.
    step_to_syscall_stop(tid, deferred)?;
    step_to_syscall_stop(tid, deferred)?;
    let ret = getregs(tid)?.rax as i64;
    setregs(tid, &saved)?;
    Ok(ret)
}
