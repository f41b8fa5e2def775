//! The window's event loop: every stop of every seized thread comes
//! through here. Syscall stops of fd syscalls update the model (and are
//! judged for bad handles); every other stop is resumed as the kernel
//! would have run it.

use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::model::{self, Proc, Stack};
use super::{AttachError, AttachOptions};
use crate::backtrace::python::PythonResolver;
use crate::backtrace::{Frame, ModuleMap, StartRegs, StopReason, Symbolizer, Unwinder};
use crate::policy::{Action, Condition};
use crate::run::output::SerException;
use crate::run::publish::Published;
use crate::run::report::{format_syscall, ExceptionReport, Section};
use crate::run::syscalls::{lookup, Desc, Kind};
use crate::run::tracer::{self, Stopped, Waited};
use crate::run::{scm_rights, OnException};

/// SIGINT or SIGTERM reached `handles` (or [`request_end`] was called).
static END: AtomicI32 = AtomicI32::new(0);

/// How often the loop wakes to look at the clock and at `END` while the
/// process makes no syscall (a server blocked in accept).
const TICK: Duration = Duration::from_millis(100);

/// How long detaching may take before the threads not yet seen stopping
/// are given up on (they are detached by the kernel when handles exits).
pub(super) const DETACH_TIMEOUT: Duration = Duration::from_secs(5);

extern "C" fn on_end(sig: libc::c_int) {
    END.store(sig, Ordering::SeqCst);
}

extern "C" fn on_tick(_: libc::c_int) {}

/// Ends the window at the next tick, as SIGINT would.
pub fn request_end() {
    END.store(libc::SIGTERM, Ordering::SeqCst);
}

pub(super) fn end_requested() -> bool {
    END.load(Ordering::SeqCst) != 0
}

/// SIGINT/SIGTERM end the window; SIGALRM (the tick) only interrupts
/// waitpid. No SA_RESTART, so a blocked waitpid returns EINTR.
pub(super) fn install_signals() {
    for (sig, handler) in [
        (libc::SIGINT, on_end as extern "C" fn(libc::c_int)),
        (libc::SIGTERM, on_end),
        (libc::SIGALRM, on_tick),
    ] {
        // SAFETY: installing handlers that only store to an atomic (or do
        // nothing), with a zeroed, then filled, sigaction.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn set_tick(every: Option<Duration>) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: every.map_or(0, |d| d.as_micros() as libc::suseconds_t),
    };
    let t = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer with a local value.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
}

/// What the kernel says about a syscall stop (PTRACE_GET_SYSCALL_INFO),
/// laid out as `struct ptrace_syscall_info` for the entry and exit cases.
#[repr(C)]
#[derive(Default)]
pub(super) struct SyscallInfo {
    pub(super) op: u8,
    _pad: [u8; 3],
    arch: u32,
    pub(super) ip: u64,
    sp: u64,
    /// entry: nr, args[6]; exit: rval, is_error.
    data: [u64; 7],
}

const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
pub(super) const OP_ENTRY: u8 = 1;
const OP_EXIT: u8 = 2;

pub(super) fn syscall_info(tid: i32) -> Option<SyscallInfo> {
    let mut info = SyscallInfo::default();
    // SAFETY: the kernel writes at most the size we pass into `info`.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_SYSCALL_INFO,
            tid,
            std::mem::size_of::<SyscallInfo>(),
            &mut info as *mut SyscallInfo,
        )
    };
    (r > 0).then_some(info)
}

/// A syscall seen at its entry, finished at its exit.
struct Pending {
    desc: &'static Desc,
    args: [u64; 6],
    close_stack: Option<Stack>,
    /// getdents64 listing this window process's fds (hidden.rs).
    listing: Option<i32>,
    /// poll/ppoll over these quarantined numbers (hidden.rs).
    polled: Vec<i32>,
}

pub(super) struct Thread {
    pub(super) tgid: i32,
    pending: Option<Pending>,
}

impl Thread {
    pub(super) fn new(tgid: i32) -> Thread {
        Thread {
            tgid,
            pending: None,
        }
    }
}

/// How the window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Duration,
    Signal(i32),
    /// Every thread exited.
    Exited,
}

/// What a window found.
#[derive(Debug)]
pub struct Outcome {
    pub ended: Ended,
    pub leaks: usize,
    pub exceptions: usize,
    /// Threads that did not stop for the detach in time.
    pub not_detached: usize,
}

pub(super) struct Window<'a> {
    pub(super) opts: &'a AttachOptions,
    pub(super) tgid: i32,
    pub(super) threads: HashMap<i32, Thread>,
    pub(super) procs: HashMap<i32, Proc>,
    /// Processes in the order the window met them (the attached one first).
    pub(super) order: Vec<i32>,
    unwinder: Unwinder,
    pub(super) symbolizer: Symbolizer,
    /// Python frames of CPython processes.
    python: PythonResolver,
    /// What `handles PID` reads during the window (published.rs).
    pub(super) tables: HashMap<i32, Published>,
    pub(super) exceptions: Vec<SerException>,
    pub(super) exception_count: usize,
    /// Exceptions and leak suspects silenced by suppressions.
    pub(super) suppressed: usize,
    contexts: HashMap<String, usize>,
    pub(super) started: Instant,
    /// Statuses met while a thread ran injected calls, not yet served.
    pub(super) backlog: Vec<WaitStatus>,
}

pub(super) fn run(tgid: i32, opts: &AttachOptions) -> Result<Outcome, AttachError> {
    install_signals();
    let mut w = Window {
        opts,
        tgid,
        threads: HashMap::new(),
        procs: HashMap::new(),
        order: Vec::new(),
        unwinder: Unwinder::new(),
        symbolizer: Symbolizer::new(),
        python: PythonResolver::new(),
        tables: HashMap::new(),
        exceptions: Vec::new(),
        exception_count: 0,
        suppressed: 0,
        contexts: HashMap::new(),
        started: Instant::now(),
        backlog: Vec::new(),
    };
    w.add_proc(tgid, None);
    w.seize_all()?;
    set_tick(Some(TICK));
    w.started = Instant::now();
    eprintln!(
        "handles: attached to process {tgid} ({}), {} thread{}; {}",
        w.procs.get(&tgid).map_or("?", |p| p.name.as_str()),
        w.threads.len(),
        if w.threads.len() == 1 { "" } else { "s" },
        match opts.duration {
            Some(d) => format!("recording for {} s", d.as_secs_f64()),
            None => "recording until SIGINT or SIGTERM".into(),
        }
    );
    let ended = w.serve();
    let not_detached = w.detach_all();
    set_tick(None);
    w.finish(ended, not_detached)
}

impl Window<'_> {
    pub(super) fn add_proc(&mut self, tgid: i32, parent: Option<i32>) {
        if self.procs.contains_key(&tgid) {
            return;
        }
        let p = match parent.and_then(|pp| self.procs.get(&pp).map(|p| (pp, p))) {
            Some((pp, p)) => Proc::forked(pp, p, tgid),
            None => Proc::found(tgid, parent),
        };
        self.procs.insert(tgid, p);
        self.order.push(tgid);
        self.publish_afresh(tgid);
    }

    /// The loop, until the window ends.
    fn serve(&mut self) -> Ended {
        let deadline = self.opts.duration.map(|d| self.started + d);
        loop {
            let sig = END.load(Ordering::SeqCst);
            if sig != 0 {
                return Ended::Signal(sig);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ended::Duration;
            }
            if let Some(st) = self.backlog.pop() {
                self.on_status(st);
                continue;
            }
            if self.threads.is_empty() {
                return Ended::Exited;
            }
            // tracer::wait, not nix's waitpid: a stop or death by a
            // real-time signal (glibc's setxid broadcast) must not be
            // lost.
            match tracer::wait(None) {
                Ok(Waited::Status(st)) => self.on_status(st),
                Ok(Waited::SignalStop(tid, sig)) => {
                    self.ensure_thread(tid, None);
                    // SAFETY: PTRACE_SYSCALL of our tracee, delivering
                    // the signal it stopped for.
                    unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, sig as libc::c_long) };
                }
                Ok(Waited::Killed(pid, _, _)) => self.gone(pid),
                Err(Errno::EINTR) => {}
                Err(_) => return Ended::Exited,
            }
        }
    }

    /// Registers a thread met for the first time (a new thread or child
    /// whose first stop came before its creator's event).
    fn ensure_thread(&mut self, tid: i32, parent_tgid: Option<i32>) {
        if self.threads.contains_key(&tid) {
            return;
        }
        let tgid = tgid_of(tid).unwrap_or(tid);
        // A child's first stop often comes before its parent's fork
        // event: its parent is then found through /proc, so that it still
        // starts as a copy of the parent (tombstones included).
        let parent = parent_tgid
            .or_else(|| ppid_of(tgid).filter(|pp| self.procs.contains_key(pp)))
            .filter(|&p| p != tgid);
        self.add_proc(tgid, parent);
        self.threads.insert(
            tid,
            Thread {
                tgid,
                pending: None,
            },
        );
    }

    pub(super) fn gone(&mut self, tid: i32) {
        if let Some(t) = self.threads.remove(&tid) {
            if !self.threads.values().any(|o| o.tgid == t.tgid) {
                if let Some(p) = self.procs.get_mut(&t.tgid) {
                    p.exited = true;
                }
                self.unpublish(t.tgid);
            }
        }
    }

    fn on_status(&mut self, st: WaitStatus) {
        match st {
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => self.gone(pid.as_raw()),
            WaitStatus::PtraceSyscall(pid) => {
                let tid = pid.as_raw();
                self.ensure_thread(tid, None);
                self.on_syscall(tid);
                resume(tid, None);
            }
            WaitStatus::PtraceEvent(pid, sig, event) => {
                let tid = pid.as_raw();
                self.ensure_thread(tid, None);
                self.on_event(tid, sig, event);
            }
            WaitStatus::Stopped(pid, sig) => {
                let tid = pid.as_raw();
                self.ensure_thread(tid, None);
                // A signal on its way to the thread: deliver it.
                resume(tid, Some(sig));
            }
            _ => {}
        }
    }

    fn on_event(&mut self, tid: i32, sig: Signal, event: i32) {
        let tgid = self.threads.get(&tid).map_or(tid, |t| t.tgid);
        match event {
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                if let Ok(child) = ptrace::getevent(Pid::from_raw(tid)) {
                    self.ensure_thread(child as i32, Some(tgid));
                }
                resume(tid, None);
            }
            libc::PTRACE_EVENT_EXEC => {
                // A non-leader thread that execs takes the leader's tid.
                if let Ok(former) = ptrace::getevent(Pid::from_raw(tid)) {
                    let former = former as i32;
                    if former != tid {
                        self.threads.remove(&former);
                    }
                }
                // The other threads are gone without an exit status.
                self.threads
                    .retain(|&other, t| t.tgid != tgid || other == tid);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending = None;
                }
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.exec(tgid);
                }
                self.publish_afresh(tgid);
                resume(tid, None);
            }
            libc::PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                ) {
                    // A group stop (the process was stopped, by kill -STOP
                    // or a terminal): it must stay stopped until SIGCONT,
                    // as without us; PTRACE_LISTEN waits for that without
                    // resuming it.
                    // SAFETY: PTRACE_LISTEN on a seized tracee in group stop.
                    unsafe { libc::ptrace(libc::PTRACE_LISTEN, tid, 0, 0) };
                } else {
                    resume(tid, None);
                }
            }
            _ => resume(tid, None),
        }
    }

    fn on_syscall(&mut self, tid: i32) {
        let Some(info) = syscall_info(tid) else {
            return;
        };
        if let Some(p) = self
            .threads
            .get(&tid)
            .and_then(|t| self.procs.get_mut(&t.tgid))
        {
            p.syscall_ip = Some(info.ip);
        }
        match info.op {
            OP_ENTRY => {
                let mut args = [0u64; 6];
                args.copy_from_slice(&info.data[1..7]);
                self.on_entry(tid, info.data[0] as i64, args);
            }
            OP_EXIT => {
                let pending = self.threads.get_mut(&tid).and_then(|t| t.pending.take());
                if let Some(p) = pending {
                    // is_error: a value in -4095..-1.
                    if info.data[1] as u8 == 0 {
                        self.on_exit(tid, p, info.data[0] as i64);
                    }
                }
            }
            _ => {}
        }
    }

    /// The fds a call uses, as the kernel will read them.
    fn used_fds(tid: i32, desc: &Desc, args: &[u64; 6]) -> Vec<i32> {
        let mut fds = Vec::new();
        for (i, &a) in args.iter().enumerate() {
            let fd = a as i32;
            if desc.fd_args & (1 << i) != 0
                || (desc.dirfd_args & (1 << i) != 0 && fd != libc::AT_FDCWD)
            {
                fds.push(fd);
            }
        }
        if desc.kind == Kind::Mmap && args[3] & libc::MAP_ANONYMOUS as u64 == 0 {
            fds.push(args[4] as i32);
        }
        if desc.kind == Kind::Select {
            fds.extend(super::fdsets::selected_fds(
                tid,
                args[0],
                [args[1], args[2], args[3]],
            ));
        }
        fds.retain(|&fd| fd >= 0);
        fds
    }

    fn on_entry(&mut self, tid: i32, nr: i64, args: [u64; 6]) {
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            return;
        };
        let Some(desc) = lookup(nr) else {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pending = None;
            }
            return;
        };
        for fd in Self::used_fds(tid, desc, &args) {
            let Some(p) = self.procs.get_mut(&tgid) else {
                break;
            };
            if p.tomb_src == Some(fd) {
                // The program closes or uses a number it cannot know of
                // (a sweep over every fd): let it have it.
                if desc.kind == Kind::Close {
                    p.tomb_src = None;
                    p.dirty.insert(fd);
                }
                continue;
            }
            let quarantined = p.quarantine.contains(&fd);
            if !quarantined && !p.closed.contains_key(&fd) {
                continue;
            }
            if !quarantined && model::fd_exists(tgid, fd) {
                // Handed out again by a call the window does not follow
                // (a descriptor received over a socket): not a bad handle.
                p.closed.remove(&fd);
                continue;
            }
            if self.bad_handle(tid, tgid, desc, &args, fd, quarantined) {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending = None;
                }
                return;
            }
        }
        if self.names_hidden_entry(tid, tgid, desc, &args) {
            skip_with(tid, libc::ENOENT);
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pending = None;
            }
            return;
        }
        if self.wrong_object(tid, tgid, desc, args) {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pending = None;
            }
            return;
        }
        let close_stack = match desc.kind {
            Kind::Close => self.stack(tid, tgid),
            _ => None,
        };
        let listing = if desc.nr == libc::SYS_getdents64 {
            self.listing_to_filter(tgid, args[0] as i32)
        } else {
            None
        };
        let polled = if desc.kind == Kind::Poll {
            self.polled_hidden(tid, tgid, &args)
        } else {
            Vec::new()
        };
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Some(Pending {
                desc,
                args,
                close_stack,
                listing,
                polled,
            });
        }
    }

    fn on_exit(&mut self, tid: i32, p: Pending, ret: i64) {
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            return;
        };
        if let Some(pid) = p.listing {
            self.filter_listing(tid, p.args[1], ret, pid);
            return;
        }
        if !p.polled.is_empty() {
            self.fix_poll(tid, &p.args, &p.polled);
            return;
        }
        self.record_exit(tid, tgid, p, ret);
        self.publish(tgid);
    }

    fn record_exit(&mut self, tid: i32, tgid: i32, p: Pending, ret: i64) {
        let a = p.args;
        let mut created: Vec<i32> = Vec::new();
        match p.desc.kind {
            Kind::Create | Kind::Dup => created.push(ret as i32),
            Kind::Fcntl if matches!(a[1] as i32, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) => {
                created.push(ret as i32)
            }
            Kind::Signalfd if a[0] as i32 == -1 => created.push(ret as i32),
            // Received handles are the window's to follow like created
            // ones (their creation stack is the receiving call's).
            // The window's loop holds this stop: the job's reader of it.
            Kind::RecvMsg => created.extend(scm_rights(&Stopped::reported(tid), a[1])),
            Kind::RecvMmsg => {
                for i in 0..(ret.clamp(0, 1024) as u64) {
                    // struct mmsghdr: a msghdr (56 bytes) and its length,
                    // padded to 64.
                    created.extend(scm_rights(&Stopped::reported(tid), a[1] + i * 64));
                }
            }
            Kind::DupTo => {
                let new = a[1] as i32;
                if a[0] != a[1] {
                    if let Some(proc_) = self.procs.get_mut(&tgid) {
                        if proc_.open.contains_key(&new) {
                            proc_.close(new, tid, None);
                        }
                    }
                }
                created.push(new);
            }
            Kind::Pipe | Kind::SocketPair => {
                let at = if p.desc.kind == Kind::Pipe {
                    a[0]
                } else {
                    a[3]
                };
                if let Ok(b) = tracer::read_mem(tid, at, 8) {
                    for half in b.chunks_exact(4) {
                        created.push(i32::from_ne_bytes([half[0], half[1], half[2], half[3]]));
                    }
                }
            }
            Kind::Close => {
                let fd = a[0] as i32;
                if let Some(proc_) = self.procs.get_mut(&tgid) {
                    proc_.close(fd, tid, p.close_stack);
                }
                self.quarantine_at_exit(tid, tgid, fd);
            }
            Kind::CloseRange if a[2] & libc::CLOSE_RANGE_CLOEXEC as u64 == 0 => {
                let last = a[1].min(i32::MAX as u64) as i32;
                if let Some(proc_) = self.procs.get_mut(&tgid) {
                    proc_.close_range(a[0] as i32, last, tid);
                    let range = a[0] as i32..=last;
                    // The kernel closed the tombstones in the range.
                    let gone: Vec<i32> = proc_
                        .quarantine
                        .iter()
                        .copied()
                        .filter(|q| range.contains(q))
                        .chain(proc_.tomb_src.filter(|s| range.contains(s)))
                        .collect();
                    proc_.quarantine.retain(|q| !range.contains(q));
                    if proc_.tomb_src.is_some_and(|s| range.contains(&s)) {
                        proc_.tomb_src = None;
                    }
                    proc_.dirty.extend(gone);
                }
            }
            _ => {}
        }
        created.retain(|&fd| fd >= 0);
        if created.is_empty() {
            return;
        }
        if self.judges_new() && self.new_policy(tid, tgid, p.desc, a, &created) {
            // Closed again: they never were the program's.
            return;
        }
        let stack = self.stack(tid, tgid).unwrap_or_default();
        if let Some(proc_) = self.procs.get_mut(&tgid) {
            for fd in created {
                proc_.create(fd, p.desc.name, p.desc.nr, stack.clone());
            }
        }
    }

    /// The stack of stopped thread `tid`, `--stack-depth` frames deep.
    pub(super) fn stack(&mut self, tid: i32, tgid: i32) -> Option<Stack> {
        if self.opts.stack_depth == 0 {
            return None;
        }
        let regs = tracer::getregs(tid).ok()?;
        let proc_ = self.procs.get_mut(&tgid)?;
        if proc_.maps.is_none() {
            proc_.maps = ModuleMap::read(tgid).ok();
        }
        let maps = proc_.maps.as_ref()?;
        let depth = self.opts.stack_depth;
        let first = self
            .unwinder
            .unwind_detailed(tid, maps, StartRegs::from(&regs), depth);
        let pcs = match first.stop {
            // Code mapped since the map was read (dlopen): read it again.
            StopReason::OutsideMappings(_) => match ModuleMap::read(tgid) {
                Ok(fresh) => {
                    let again = self
                        .unwinder
                        .unwind(tid, &fresh, StartRegs::from(&regs), depth);
                    proc_.maps = Some(fresh);
                    again
                }
                Err(_) => first.frames,
            },
            _ => first.frames,
        };
        let mut pcs = pcs;
        // CPython: its Python frames follow as tagged words
        // (backtrace/python.rs), as the supervisor records them without
        // the shim.
        if let Some(interp) = proc_.maps.as_ref().and_then(|m| self.python.interpreter(m)) {
            // On x86_64 glibc the thread pointer (fs base) is
            // pthread_self(), which CPython keeps as the thread state's
            // thread_id.
            let frames = self.python.capture(tid, tgid, &interp, regs.fs_base);
            crate::backtrace::python::encode(&frames, &mut pcs);
        }
        Some(Rc::new(pcs))
    }

    pub(super) fn symbolize(&mut self, tgid: i32, stack: Option<&Stack>) -> Vec<Frame> {
        let Some(stack) = stack else {
            return Vec::new();
        };
        crate::backtrace::symbolize_recorded(
            &mut self.symbolizer,
            &mut self.python,
            self.procs.get(&tgid).and_then(|p| p.maps.as_ref()),
            tgid,
            stack,
            None,
        )
    }

    /// A use, close or dup of a number closed during the window. Returns
    /// whether the call was skipped (it then fails with EBADF without
    /// running, which is what it would do anyway).
    /// A quarantined number's call never runs: on the tombstone it would
    /// not fail as it does natively (fstat succeeds on an O_PATH fd, close
    /// would release the tombstone and return 0).
    fn bad_handle(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &Desc,
        args: &[u64; 6],
        fd: i32,
        quarantined: bool,
    ) -> bool {
        let policy = self.opts.policy;
        let action = policy.get(Condition::BadHandle).action;
        let deny = quarantined || matches!(action, Action::Deny | Action::DenyException);
        if action == Action::Allow && !quarantined {
            return false;
        }
        if matches!(action, Action::Allow | Action::Deny) {
            skip_with_ebadf(tid);
            return true;
        }
        let kind = if desc.kind == Kind::Close {
            "double-close"
        } else {
            "use-closed"
        };
        let closed = self
            .procs
            .get(&tgid)
            .and_then(|p| p.closed.get(&fd).cloned());
        let here = self.stack(tid, tgid);
        let frames = self.symbolize(tgid, here.as_ref());
        if self.suppressed_exception(Condition::BadHandle.name(), kind, &frames) {
            self.suppressed += 1;
            if deny {
                skip_with_ebadf(tid);
            }
            return deny;
        }
        let mut sections = vec![Section {
            title: "backtrace".into(),
            frames,
        }];
        let mut handle = format!("fd {fd}, closed during the window");
        if let Some(c) = &closed {
            handle = format!("fd {fd}, closed during the window by thread {}", c.by_tid);
            if c.stack.is_some() {
                let frames = self.symbolize(tgid, c.stack.as_ref());
                sections.push(Section {
                    title: format!("closed by thread {} at", c.by_tid),
                    frames,
                });
            }
            if let Some(cr) = &c.created {
                let frames = self.symbolize(tgid, Some(&cr.stack));
                sections.push(Section {
                    title: format!("created by {}() at", cr.origin),
                    frames,
                });
            }
        }
        let then = self.then(action);
        let report = ExceptionReport {
            condition: Condition::BadHandle.name().into(),
            kind: kind.into(),
            fd: Some(fd),
            action: action.name().into(),
            pid: tgid,
            tid,
            process_name: self
                .procs
                .get(&tgid)
                .map_or_else(|| "?".into(), |p| p.name.clone()),
            thread_name: model::comm(tgid, tid),
            syscall: format_syscall(
                desc.name,
                args,
                desc.nargs as usize,
                desc.fd_args | desc.dirfd_args,
            ),
            handle: Some(handle),
            handle_json: None,
            what: if kind == "double-close" {
                format!("close of fd {fd}, which this process already closed")
            } else {
                format!("use of fd {fd}, which this process closed")
            },
            outcome: format!(
                "the call {}; {then}",
                if deny {
                    "fails with EBADF without running"
                } else {
                    "runs and fails with EBADF"
                }
            ),
            sections,
        };
        self.emit(&report);
        self.raise(tid, tgid, action);
        if deny {
            skip_with_ebadf(tid);
        }
        deny
    }

    /// What follows an exception's report, in words.
    pub(super) fn then(&self, action: Action) -> String {
        match action {
            Action::Kill => "the process is killed (SIGKILL)".to_string(),
            _ => match self.opts.on_exception {
                OnException::Trap => "SIGTRAP follows".to_string(),
                _ => "the program goes on".to_string(),
            },
        }
    }

    /// After an exception's report: SIGKILL for `kill`, SIGTRAP to the
    /// offending thread with `--on-exception trap`.
    pub(super) fn raise(&self, tid: i32, tgid: i32, action: Action) {
        match action {
            Action::Allow | Action::Deny => {}
            Action::Kill => {
                // SAFETY: kill(2) of the process the report is about.
                unsafe { libc::kill(tgid, libc::SIGKILL) };
            }
            _ if self.opts.on_exception == OnException::Trap => {
                // SAFETY: tgkill to the offending thread.
                unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, libc::SIGTRAP) };
            }
            _ => {}
        }
    }

    /// Whether a suppression rule silences an exception of `condition`
    /// with this offending stack.
    pub(super) fn suppressed_exception(
        &self,
        condition: &str,
        kind: &str,
        frames: &[Frame],
    ) -> bool {
        let event = crate::suppress::Event {
            report: condition,
            kind,
            ty: "",
            path: "",
            frames: crate::suppress::FrameRef::all(frames),
        };
        self.opts.suppressions.matching(&event).is_some()
    }

    /// Writes a report (the first of its context in full) and keeps it
    /// for --report/--sarif.
    pub(super) fn emit(&mut self, r: &ExceptionReport) {
        self.exception_count += 1;
        let key = r.context_key();
        if let Some(&i) = self.contexts.get(&key) {
            if let Some(e) = self.exceptions.get_mut(i) {
                e.count += 1;
            }
            return;
        }
        self.contexts.insert(key, self.exceptions.len());
        let mut text = r.render();
        if self.opts.gen_suppressions {
            // Printed bare after the report, ready to paste into a
            // suppressions file, as `handles run` prints it.
            let frames = r
                .sections
                .first()
                .map(|s| crate::suppress::FrameRef::all(&s.frames))
                .unwrap_or_default();
            text.push_str(&crate::suppress::exception_rule(
                &r.condition,
                &r.kind,
                "",
                &frames,
            ));
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
        self.exceptions.push(SerException::first_of(r));
    }
}

/// Resumes a thread to its next syscall stop.
fn resume(tid: i32, sig: Option<Signal>) {
    let _ = ptrace::syscall(Pid::from_raw(tid), sig);
}

/// At a syscall entry: the call is not run and returns -EBADF.
fn skip_with_ebadf(tid: i32) {
    skip_with(tid, libc::EBADF);
}

/// At a syscall entry: the call is not run and returns -`errno`.
pub(super) fn skip_with(tid: i32, errno: i32) {
    if let Ok(mut regs) = tracer::getregs(tid) {
        regs.orig_rax = u64::MAX;
        regs.rax = (-(errno as i64)) as u64;
        let _ = tracer::setregs(tid, &regs);
    }
}

fn ppid_of(tgid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{tgid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn tgid_of(tid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}
