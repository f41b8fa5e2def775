//! The job: every process descended from the program, and the ptrace loop
//! that serves them. This is the one place that waits for tracee events.
//!
//! Each thread stops only where the seccomp prefilter says (fd syscalls),
//! plus the ptrace events for fork/clone/exec/exit and signal deliveries.
//! At a seccomp stop the policy is applied to the fds the call uses; calls
//! that create fds are followed to their exit stop to learn the new
//! numbers; close is rewritten into a `dup3` of a tombstone so the number
//! stays quarantined.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use handles_model::ObjType;
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::fdtable::{runs, FdTable, ObjectFacts, Origin, Slot, Stack};
use super::leaks::{self, Leak, LeakGroup, LeakMode, ProcessLeaks, SerFrame};
use super::output::{self, SerException, SerProcess, SerStack};
use super::publish::Published;
use super::report::{format_syscall, ExceptionReport, Section};
use super::spawn::{self, SpawnError};
use super::syscalls::{self, CheckLevel, Desc, Kind};
use super::tracer::{self, errno_of, Deferred, InjectError, Regs};
use crate::backtrace::{ModuleMap, StartRegs, StopReason, Symbolizer, Unwinder};
use crate::inspect::parse::LinkTarget;
use crate::policy::{Action, Condition, Policy};
use crate::seccomp::{self, FilterSpec};
use crate::suppress::{Event, FrameRef, Suppressions};

/// What to do when a policy exception is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnException {
    /// Deliver SIGTRAP to the offending thread (Zircon's unhandled
    /// exception: the process dies unless it handles SIGTRAP).
    Trap,
    /// Leave the process stopped and detached for a debugger.
    Stop,
}

/// Everything `handles run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub policy: Policy,
    pub check: CheckLevel,
    /// Quarantine capacity per fd table; 0 turns quarantine off.
    pub quarantine: usize,
    pub on_exception: OnException,
    pub log: Option<PathBuf>,
    /// Depth of the creation/close stacks recorded; 0 records none.
    pub stack_depth: usize,
    /// Reports matching these are not raised (counted in `Outcome`).
    pub suppressions: Suppressions,
    pub leak_mode: LeakMode,
    /// Print a suppression rule for each report.
    pub gen_suppressions: bool,
    /// Write the JSON report (docs/report.md) here at the end.
    pub report: Option<PathBuf>,
    /// Write SARIF 2.1.0 here at the end.
    pub sarif: Option<PathBuf>,
    /// A per-process handle budget: creating more raises an exception.
    pub max_handles: Option<usize>,
}

/// How the job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32, bool),
}

impl Exit {
    /// The status a shell reports: the code, or 128 + the signal.
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s, _) => 128 + s,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub exceptions: usize,
    pub suppressed: usize,
    /// Leaked handles reported (after suppressions).
    pub leaks: usize,
    pub leak_reports: Vec<ProcessLeaks>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("building the seccomp prefilter: {0}")]
    Filter(String),
    #[error("opening the log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the job: {0}")]
    Wait(Errno),
}

type TableRef = Rc<RefCell<FdTable>>;

/// Work left for a thread's syscall-exit stop.
#[derive(Clone, Debug)]
enum ExitWork {
    /// A call that may create fds: register what it returned.
    Create {
        desc: &'static Desc,
        entry: Regs,
        stack: Option<Stack>,
    },
    /// close_range(first, last, flags).
    CloseRange { entry: Regs },
}

/// A creation let run without a stop at its exit: the new fd was
/// predicted (the kernel hands out the lowest free number, and we know the
/// table) and is confirmed at the thread's next stop, before anything else.
#[derive(Clone, Debug)]
struct Predicted {
    name: &'static str,
    stack: Option<Stack>,
    /// The numbers the call takes if it succeeds (pipe and socketpair take
    /// the two lowest free ones, in order).
    fds: Vec<i32>,
}

struct Thread {
    tgid: i32,
    table: TableRef,
    pending: Option<ExitWork>,
    predicted: Option<Predicted>,
    /// Its first stop (the auto-attach stop) has been seen and resumed.
    started: bool,
    /// PTRACE_EVENT_EXIT seen: it is on its way out.
    exiting: bool,
}

struct Process {
    /// RLIMIT_NOFILE, cached: a stale value only risks an EMFILE, which
    /// releases the quarantine and retries the call anyway.
    nofile: Option<(u64, u32)>,
    name: String,
    policy: Policy,
    maps: Option<ModuleMap>,
    /// Set while the process is being detached for `--on-exception=stop`.
    detaching: bool,
    /// `--max-handles` was already reported for this process.
    over_budget: bool,
}

/// A bad fd use found at a syscall's entry.
enum Bad {
    /// The number is quarantined: it was closed by the program.
    Stale,
    /// Not open, and not quarantined (never opened, or closed long ago).
    NotOpen,
}

static FORWARD_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // A terminal's Ctrl-C (SI_KERNEL) reached the whole foreground group,
    // the job included; only a signal sent to us alone needs forwarding.
    if code == libc::SI_USER || code == libc::SI_QUEUE || code == libc::SI_TKILL {
        FORWARD_SIGNAL.store(sig, Ordering::SeqCst);
    }
}

fn install_forwarding() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installing a handler that only stores to an atomic; no
        // SA_RESTART so waitpid returns EINTR and the loop forwards.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        // Fall back to something that differs per run; the cookie finds
        // bugs, it is not a security boundary.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    }
}

fn comm(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Type, koid and link target of an open fd, from /proc: what a later
/// report says the handle was.
fn object_facts(tgid: i32, fd: i32) -> ObjectFacts {
    let path = format!("/proc/{tgid}/fd/{fd}");
    let Ok(target) = std::fs::read_link(&path) else {
        return ObjectFacts::default();
    };
    let target = target.to_string_lossy().into_owned();
    let (ty, koid) = match LinkTarget::parse(&target) {
        LinkTarget::Socket(i) => (ObjType::Socket, i),
        LinkTarget::Pipe(i) => (ObjType::Pipe, i),
        LinkTarget::Pidfd(i) => (ObjType::Process, i),
        LinkTarget::Memfd(_) => (ObjType::Vmo, stat_ino(&path)),
        LinkTarget::AnonInode(name) => (
            match name.as_str() {
                "eventfd" => ObjType::Event,
                "eventpoll" => ObjType::Port,
                "timerfd" => ObjType::Timer,
                "signalfd" => ObjType::Signalfd,
                "pidfd" => ObjType::Process,
                _ => ObjType::Unknown,
            },
            0,
        ),
        LinkTarget::Path(_) | LinkTarget::Other(_) => {
            let ty = match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => ObjType::Dir,
                Ok(m) if m.is_file() => ObjType::File,
                Ok(_) => ObjType::Chardev,
                Err(_) => ObjType::Unknown,
            };
            (ty, stat_ino(&path))
        }
    };
    ObjectFacts {
        ty: ty.name(),
        koid,
        target,
    }
}

fn stat_ino(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

fn fd_exists(tgid: i32, fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{fd}")).is_ok()
}

/// The soft RLIMIT_NOFILE of a process.
fn nofile_limit(tgid: i32) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading into a local struct.
    let r = unsafe { libc::prlimit(tgid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    if r == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// The job and its supervisor state.
pub struct Job {
    opts: RunOptions,
    cookie: u64,
    threads: HashMap<i32, Thread>,
    procs: HashMap<i32, Process>,
    /// Tids whose first stop came before their parent's fork/clone event.
    unborn: HashSet<i32>,
    root: i32,
    root_exit: Option<Exit>,
    exec_error: Option<std::os::fd::OwnedFd>,
    root_execed: bool,
    deferred: Deferred,
    unwinder: Unwinder,
    symbolizer: Symbolizer,
    exceptions: usize,
    suppressed: usize,
    leak_reports: Vec<ProcessLeaks>,
    exception_list: Vec<SerException>,
    /// The job tree, for the JSON report.
    tree: std::collections::BTreeMap<i32, SerProcess>,
    log: Option<std::fs::File>,
    /// Published tables, by process.
    published: HashMap<i32, Published>,
}

impl Job {
    /// Starts the program under supervision and serves the job until every
    /// process in it has exited.
    pub fn run(opts: RunOptions) -> Result<Outcome, RunError> {
        let path_var = std::env::var_os("PATH");
        let program = spawn::resolve(&opts.program, path_var.as_deref())?;
        let cookie = random_u64();
        let spec = FilterSpec {
            traced: syscalls::traced(opts.check),
            cookie: Some(cookie),
            allow_ip: None,
        };
        let filter = seccomp::compile(&spec).map_err(|e| RunError::Filter(e.to_string()))?;
        let log = match &opts.log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| RunError::Log {
                        path: p.clone(),
                        source: e,
                    })?,
            ),
            None => None,
        };
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| k != "HANDLES_POLICY" && k != "HANDLES_JOB")
            .collect();
        env.push(("HANDLES_POLICY".into(), opts.policy.encode().into()));
        env.push(("HANDLES_JOB".into(), std::process::id().to_string().into()));
        let mut argv = vec![opts.program.clone()];
        argv.extend(opts.args.iter().cloned());

        install_forwarding();
        let child = spawn::spawn(&program, &argv, &env, &filter)?;
        let root = child.pid;
        let mut job = Job {
            cookie,
            threads: HashMap::new(),
            procs: HashMap::new(),
            unborn: HashSet::new(),
            root,
            root_exit: None,
            exec_error: Some(child.exec_error),
            root_execed: false,
            deferred: Deferred::default(),
            unwinder: Unwinder::new(),
            symbolizer: Symbolizer::new(),
            exceptions: 0,
            suppressed: 0,
            leak_reports: Vec::new(),
            exception_list: Vec::new(),
            tree: Default::default(),
            log,
            published: HashMap::new(),
            opts,
        };
        let mixer = random_u64() as u32;
        job.threads.insert(
            root,
            Thread {
                tgid: root,
                table: Rc::new(RefCell::new(FdTable::new(mixer))),
                pending: None,
                predicted: None,
                started: true,
                exiting: false,
            },
        );
        job.procs.insert(
            root,
            Process {
                nofile: None,
                name: comm(root),
                policy: job.opts.policy.clone(),
                maps: None,
                detaching: false,
                over_budget: false,
            },
        );
        job.tree.insert(
            root,
            SerProcess {
                pid: root,
                parent: None,
                names: Vec::new(),
                exit: None,
            },
        );
        job.serve()?;
        if !job.root_execed {
            if let Some(errno) = job.exec_error.as_ref().and_then(spawn::exec_errno) {
                return Err(SpawnError::Exec {
                    program: program.to_string_lossy().into_owned(),
                    source: std::io::Error::from_raw_os_error(errno),
                }
                .into());
            }
        }
        if job.opts.leak_mode != LeakMode::Off {
            let text = leaks::summary(&job.leak_reports);
            job.write_report(&text);
        }
        job.write_machine_reports()?;
        Ok(Outcome {
            exit: job.root_exit.unwrap_or(Exit::Code(0)),
            exceptions: job.exceptions,
            suppressed: job.suppressed,
            leaks: job.leak_reports.iter().map(|p| p.count()).sum(),
            leak_reports: job.leak_reports,
        })
    }

    fn next_status(&mut self) -> Result<Option<WaitStatus>, RunError> {
        if let Some(st) = self.deferred.statuses.pop() {
            return Ok(Some(st));
        }
        loop {
            let sig = FORWARD_SIGNAL.swap(0, Ordering::SeqCst);
            if sig != 0 {
                self.forward(sig);
            }
            match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Ok(st) => return Ok(Some(st)),
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Ok(None),
                Err(e) => return Err(RunError::Wait(e)),
            }
        }
    }

    /// Sends a signal the supervisor received to every process of the job.
    fn forward(&self, sig: i32) {
        let tgids: HashSet<i32> = self.threads.values().map(|t| t.tgid).collect();
        for tgid in tgids {
            // SAFETY: kill(2) with a pid of our own tracee.
            unsafe { libc::kill(tgid, sig) };
        }
    }

    fn serve(&mut self) -> Result<(), RunError> {
        while let Some(st) = self.next_status()? {
            let tid = st.pid().map(|p| p.as_raw());
            self.dispatch(st);
            if let Some(tid) = tid {
                self.publish(tid);
            }
            self.raise_held_signals();
        }
        Ok(())
    }

    /// Signals that arrived while we ran a syscall inside a thread.
    fn raise_held_signals(&mut self) {
        for (tid, sig) in std::mem::take(&mut self.deferred.signals) {
            if let Some(t) = self.threads.get(&tid) {
                // SAFETY: tgkill to one of our tracees.
                unsafe { libc::syscall(libc::SYS_tgkill, t.tgid, tid, sig as i32) };
            }
        }
    }

    /// Brings the published table of `tid`'s process up to date.
    fn publish(&mut self, tid: i32) {
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let tgid = t.tgid;
        let mut table = t.table.borrow_mut();
        let dirty = table.take_dirty();
        if dirty.is_empty() && self.published.contains_key(&tgid) {
            return;
        }
        let mixer = table.mixer;
        let stale = self
            .published
            .get(&tgid)
            .is_some_and(|p| p.mixer() != mixer);
        if stale || !self.published.contains_key(&tgid) {
            let cap = nofile_limit(tgid).min(u64::from(handles_model::table::MAX_CAPACITY)) as u32;
            match Published::new(tgid, mixer, cap) {
                Ok(p) => {
                    self.published.insert(tgid, p);
                }
                Err(_) => return,
            }
            // A fresh table needs every slot.
            let mut all = table.numbers();
            all.extend(table.tomb_src);
            for fd in all {
                let v = table.slot_value(fd);
                if let Some(p) = self.published.get_mut(&tgid) {
                    p.set(fd, v);
                }
            }
            return;
        }
        if let Some(p) = self.published.get_mut(&tgid) {
            for fd in dirty {
                p.set(fd, table.slot_value(fd));
            }
        }
    }

    fn resume(&self, tid: i32, sig: Option<Signal>) {
        // ESRCH: the thread was killed meanwhile; its exit comes next.
        let _ = ptrace::cont(Pid::from_raw(tid), sig);
    }

    fn dispatch(&mut self, st: WaitStatus) {
        if let Some(pid) = st.pid() {
            if !matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                self.settle(pid.as_raw());
            }
        }
        match st {
            WaitStatus::Exited(pid, code) => self.on_gone(pid.as_raw(), Exit::Code(code)),
            WaitStatus::Signaled(pid, sig, core) => {
                self.on_gone(pid.as_raw(), Exit::Signal(sig as i32, core))
            }
            WaitStatus::Stopped(pid, sig) => {
                let tid = pid.as_raw();
                if self.detach_if_needed(tid, Some(sig)) {
                    return;
                }
                self.resume(tid, Some(sig));
            }
            WaitStatus::PtraceSyscall(pid) => self.on_syscall_exit(pid.as_raw()),
            WaitStatus::PtraceEvent(pid, sig, event) => {
                let tid = pid.as_raw();
                match event {
                    libc::PTRACE_EVENT_SECCOMP => self.on_seccomp(tid),
                    libc::PTRACE_EVENT_FORK
                    | libc::PTRACE_EVENT_VFORK
                    | libc::PTRACE_EVENT_CLONE => self.on_new_task(tid),
                    libc::PTRACE_EVENT_EXEC => self.on_exec(tid),
                    libc::PTRACE_EVENT_EXIT => self.on_exit_event(tid),
                    libc::PTRACE_EVENT_STOP => self.on_event_stop(tid, sig),
                    _ => self.resume(tid, None),
                }
            }
            WaitStatus::Continued(_) | WaitStatus::StillAlive => {}
        }
    }

    fn on_gone(&mut self, tid: i32, exit: Exit) {
        if let Some(t) = self.threads.remove(&tid) {
            if !self.threads.values().any(|o| o.tgid == t.tgid) {
                self.procs.remove(&t.tgid);
                self.published.remove(&t.tgid);
            }
        }
        self.unborn.remove(&tid);
        if let Some(p) = self.tree.get_mut(&tid) {
            p.exit = Some(exit_json(exit));
        }
        if tid == self.root {
            self.root_exit = Some(exit);
        }
    }

    /// PTRACE_EVENT_STOP: a new tracee's first stop, a group-stop, or an
    /// interrupt.
    fn on_event_stop(&mut self, tid: i32, sig: Signal) {
        match self.threads.get_mut(&tid) {
            None => {
                // Its parent's fork/clone event has not been seen yet.
                self.unborn.insert(tid);
            }
            Some(t) if !t.started => {
                t.started = true;
                self.resume(tid, None);
            }
            Some(_) => {
                if self.detach_if_needed(tid, None) {
                    return;
                }
                if matches!(
                    sig,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                ) {
                    // Group-stop: stay stopped (job control works) but keep
                    // receiving events.
                    // SAFETY: PTRACE_LISTEN on a tracee in group-stop.
                    unsafe {
                        libc::ptrace(libc::PTRACE_LISTEN, tid, 0, 0);
                    }
                } else {
                    self.resume(tid, None);
                }
            }
        }
    }

    fn on_new_task(&mut self, tid: i32) {
        let child = match ptrace::getevent(Pid::from_raw(tid)) {
            Ok(c) => c as i32,
            Err(_) => {
                self.resume(tid, None);
                return;
            }
        };
        let Some(parent) = self.threads.get(&tid) else {
            self.resume(tid, None);
            return;
        };
        let ptgid = parent.tgid;
        let ptable = parent.table.clone();
        let regs = tracer::getregs(tid).ok();
        let (flags, pidfd_ptr) = match regs {
            Some(r) => match r.orig_rax as i64 {
                libc::SYS_clone => (
                    r.rdi,
                    (r.rdi & libc::CLONE_PIDFD as u64 != 0).then_some(r.rdx),
                ),
                libc::SYS_clone3 => {
                    let flags = tracer::read_u64(tid, r.rdi).unwrap_or(0);
                    let ptr = tracer::read_u64(tid, r.rdi + 8).unwrap_or(0);
                    (
                        flags,
                        (flags & libc::CLONE_PIDFD as u64 != 0).then_some(ptr),
                    )
                }
                libc::SYS_vfork => ((libc::CLONE_VM | libc::CLONE_VFORK) as u64, None),
                _ => (libc::SIGCHLD as u64, None),
            },
            None => (libc::SIGCHLD as u64, None),
        };
        if let Some(ptr) = pidfd_ptr {
            if let Ok(fd) = tracer::read_i32(tid, ptr) {
                let stack = self.capture_stack(tid, ptgid, regs.as_ref());
                ptable
                    .borrow_mut()
                    .open(fd, Origin::Syscall("clone"), stack, ptgid);
            }
        }
        let thread = flags & libc::CLONE_THREAD as u64 != 0;
        let tgid = if thread { ptgid } else { child };
        let table = if flags & libc::CLONE_FILES as u64 != 0 {
            ptable
        } else {
            let copy = ptable.borrow().fork_copy(random_u64() as u32);
            Rc::new(RefCell::new(copy))
        };
        if !thread {
            self.tree.insert(
                child,
                SerProcess {
                    pid: child,
                    parent: Some(ptgid),
                    names: vec![comm(child)],
                    exit: None,
                },
            );
            let (name, policy) = match self.procs.get(&ptgid) {
                Some(p) => (p.name.clone(), p.policy.clone()),
                None => (comm(child), self.opts.policy.clone()),
            };
            self.procs.insert(
                child,
                Process {
                    nofile: None,
                    name,
                    policy,
                    maps: None,
                    detaching: false,
                    over_budget: false,
                },
            );
        }
        let started = self.unborn.remove(&child);
        self.threads.insert(
            child,
            Thread {
                tgid,
                table,
                pending: None,
                predicted: None,
                started,
                exiting: false,
            },
        );
        if started {
            self.resume(child, None);
        }
        self.resume(tid, None);
    }

    fn on_exec(&mut self, tid: i32) {
        let former = ptrace::getevent(Pid::from_raw(tid))
            .map(|f| f as i32)
            .unwrap_or(tid);
        if former != tid {
            if let Some(t) = self.threads.remove(&former) {
                self.threads.insert(tid, t);
            }
        }
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            self.resume(tid, None);
            return;
        };
        // de_thread killed every other thread of the process.
        self.threads.retain(|&k, t| k == tid || t.tgid != tgid);
        if tid == self.root || tgid == self.root {
            self.root_execed = true;
            self.exec_error = None;
        }
        // exec unshares the fd table and closes O_CLOEXEC fds (tombstones
        // and the tombstone source among them).
        let old = self.threads[&tid].table.clone();
        let mut table = old.borrow().unshared_copy();
        let present: HashSet<i32> = std::fs::read_dir(format!("/proc/{tgid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        for fd in table.numbers() {
            if present.contains(&fd) {
                continue;
            }
            match table.get(fd) {
                Some(Slot::Tombstone(_)) => table.drop_tombstone(fd),
                Some(Slot::Open(_)) => table.close(
                    fd,
                    None,
                    tgid,
                    ObjectFacts::default(),
                    "exec (O_CLOEXEC)",
                    false,
                ),
                None => {}
            }
        }
        if table.tomb_src.is_some_and(|s| !present.contains(&s)) {
            table.set_tomb_src(None);
        }
        for fd in present {
            if table.get(fd).is_none() && table.tomb_src != Some(fd) {
                table.open(fd, Origin::Inherited, None, tgid);
            }
        }
        table.mark_all_inherited();
        if let Some(t) = self.threads.get_mut(&tid) {
            t.table = Rc::new(RefCell::new(table));
            t.pending = None;
        }
        // The new image's table is published afresh.
        self.published.remove(&tgid);
        if let Some(p) = self.tree.get_mut(&tgid) {
            p.names.push(comm(tgid));
        }
        let nested = self.nested_policy(tgid);
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.name = comm(tgid);
            p.maps = None;
            p.nofile = None;
            if let Some(policy) = nested {
                p.policy = policy;
            }
        }
        self.resume(tid, None);
    }

    /// A nested `handles run` passes its policy to the new image through
    /// HANDLES_POLICY; it is taken only where the enclosing job allows.
    fn nested_policy(&self, tgid: i32) -> Option<Policy> {
        let env = std::fs::read(format!("/proc/{tgid}/environ")).ok()?;
        let value = env
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"HANDLES_POLICY="))?;
        let text = std::str::from_utf8(value).ok()?;
        let wanted = Policy::decode(text).ok()?;
        // Zircon's rule for nested jobs: start from the parent's policy and
        // change only what it left overridable.
        let mut p = self.procs.get(&tgid)?.policy.clone();
        for (c, e) in wanted.entries() {
            p.set(c, e).ok()?;
        }
        Some(p)
    }

    fn capture_stack(&mut self, tid: i32, tgid: i32, regs: Option<&Regs>) -> Option<Stack> {
        if self.opts.stack_depth == 0 {
            return None;
        }
        let regs = regs?;
        let depth = self.opts.stack_depth;
        let proc_ = self.procs.get_mut(&tgid)?;
        // Re-read the maps when the call comes from code mapped since the
        // last read (the dynamic loader maps libc after the first opens).
        if proc_
            .maps
            .as_ref()
            .is_none_or(|m| m.module_of(regs.rip).is_none())
        {
            proc_.maps = ModuleMap::read(tgid).ok();
        }
        let maps = proc_.maps.as_ref()?;
        let first = self
            .unwinder
            .unwind_detailed(tid, maps, StartRegs::from(regs), depth);
        let pcs = match first.stop {
            // Code mapped since the snapshot (dlopen): refresh once.
            StopReason::OutsideMappings(_) => match ModuleMap::read(tgid) {
                Ok(fresh) => {
                    let again = self
                        .unwinder
                        .unwind(tid, &fresh, StartRegs::from(regs), depth);
                    proc_.maps = Some(fresh);
                    again
                }
                Err(_) => first.frames,
            },
            _ => first.frames,
        };
        Some(Arc::new(pcs))
    }

    fn symbolize(&mut self, tgid: i32, stack: Option<&Stack>) -> Vec<crate::backtrace::Frame> {
        let Some(stack) = stack else {
            return Vec::new();
        };
        let maps = match self.procs.get(&tgid).and_then(|p| p.maps.clone()) {
            Some(m) => m,
            None => match ModuleMap::read(tgid) {
                Ok(m) => m,
                Err(_) => return Vec::new(),
            },
        };
        self.symbolizer.symbolize(&maps, stack, true)
    }

    /// The fds a syscall uses, read from its registers (and memory for
    /// poll/select).
    fn used_fds(&self, tid: i32, desc: &Desc, a: &[u64; 6]) -> Vec<i32> {
        let mut fds = Vec::new();
        for (i, &arg) in a.iter().enumerate() {
            if (desc.fd_args | desc.dirfd_args) & (1 << i) != 0 {
                let fd = arg as i32;
                if fd >= 0 {
                    fds.push(fd);
                }
            }
        }
        match desc.kind {
            Kind::Mmap if a[3] & libc::MAP_ANONYMOUS as u64 == 0 && (a[4] as i32) >= 0 => {
                fds.push(a[4] as i32);
            }
            Kind::Signalfd if (a[0] as i32) >= 0 => fds.push(a[0] as i32),
            Kind::Poll => {
                let n = (a[1] as usize).min(4096);
                if let Ok(buf) = tracer::read_mem(tid, a[0], n * 8) {
                    for chunk in buf.chunks_exact(8) {
                        let fd = i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                        if fd >= 0 {
                            fds.push(fd);
                        }
                    }
                }
            }
            Kind::Select => {
                let nfds = (a[0] as i64).clamp(0, 1024) as usize;
                let bytes = nfds.div_ceil(64) * 8;
                for set in [a[1], a[2], a[3]] {
                    if set == 0 {
                        continue;
                    }
                    if let Ok(buf) = tracer::read_mem(tid, set, bytes) {
                        for (i, byte) in buf.iter().enumerate() {
                            for bit in 0..8 {
                                let fd = i * 8 + bit;
                                if fd < nfds && byte & (1 << bit) != 0 {
                                    fds.push(fd as i32);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        fds
    }

    /// Is `fd` a valid handle in the thread's table? Unknown fds that /proc
    /// shows open are adopted (we missed their creation), never reported.
    fn check_fd(&mut self, tid: i32, fd: i32) -> Option<Bad> {
        let t = self.threads.get(&tid)?;
        let tgid = t.tgid;
        let mut table = t.table.borrow_mut();
        match table.get(fd) {
            Some(Slot::Open(_)) => None,
            Some(Slot::Tombstone(_)) => Some(Bad::Stale),
            None if table.tomb_src == Some(fd) => Some(Bad::NotOpen),
            None => {
                if fd_exists(tgid, fd) {
                    table.open(fd, Origin::Discovered, None, tgid);
                    None
                } else {
                    Some(Bad::NotOpen)
                }
            }
        }
    }

    fn on_seccomp(&mut self, tid: i32) {
        let Ok(regs) = tracer::getregs(tid) else {
            return;
        };
        let nr = regs.orig_rax as i64;
        let desc = match syscalls::lookup(nr) {
            // A 32-bit syscall (int 0x80) numbers differently: let it be.
            Some(d) if regs.cs == 0x33 => d,
            _ => {
                self.resume(tid, None);
                return;
            }
        };
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            self.resume(tid, None);
            return;
        };
        let a = tracer::args(&regs);
        for fd in self.used_fds(tid, desc, &a) {
            if let Some(bad) = self.check_fd(tid, fd) {
                if is_probe(desc, &a) {
                    // fcntl(F_GETFD/F_GETFL) is how POSIX code asks whether a
                    // number is open: answer as the kernel would, no report.
                    if matches!(bad, Bad::Stale) {
                        self.skip_with(tid, regs, libc::EBADF);
                    }
                    self.resume(tid, None);
                    return;
                }
                self.bad_handle(tid, tgid, regs, desc, fd, bad);
                return;
            }
        }
        if let Some((expected, errno)) = expected_object(desc.name) {
            let action = self.policy_of(tgid).get(Condition::WrongObject).action;
            let fd = a[0] as i32;
            if action != Action::Allow && fd >= 0 {
                let facts = object_facts(tgid, fd);
                let ty = refine_socket(
                    tgid,
                    fd,
                    ObjType::from_name(facts.ty).unwrap_or(ObjType::Unknown),
                );
                if !expected.contains(&ty) {
                    self.wrong_object(tid, tgid, regs, desc, fd, ty, expected, errno, action);
                    return;
                }
            }
        }
        match desc.kind {
            Kind::Use | Kind::Poll | Kind::Select | Kind::Mmap => self.resume(tid, None),
            Kind::Limit => {
                // RLIMIT_NOFILE may change: read it afresh next time.
                for p in self.procs.values_mut() {
                    p.nofile = None;
                }
                self.resume(tid, None);
            }
            Kind::Close => self.on_close(tid, tgid, regs),
            Kind::Fcntl => {
                let cmd = a[1] as i32;
                if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
                    self.follow_to_exit(tid, tgid, desc, regs);
                } else {
                    self.resume(tid, None);
                }
            }
            Kind::Signalfd if (a[0] as i32) >= 0 => self.resume(tid, None),
            Kind::CloseRange => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending = Some(ExitWork::CloseRange { entry: regs });
                }
                let _ = ptrace::syscall(Pid::from_raw(tid), None);
            }
            _ => self.follow_to_exit(tid, tgid, desc, regs),
        }
    }

    /// Confirms a predicted creation at the thread's next stop.
    fn settle(&mut self, tid: i32) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let Some(p) = t.predicted.take() else {
            return;
        };
        let tgid = t.tgid;
        // Each predicted number that is open now was made by the call (the
        // table is this thread's alone, and nothing ran in between).
        let fds: Vec<i32> = p.fds.into_iter().filter(|&n| fd_exists(tgid, n)).collect();
        let mut table = t.table.borrow_mut();
        for fd in fds {
            if table.get(fd).is_none() {
                table.open(fd, Origin::Syscall(p.name), p.stack.clone(), tgid);
            }
        }
    }

    /// Tries to let a creating call run without an exit stop. Returns false
    /// when the exit must be seen: a table shared by threads (another
    /// creation could take the predicted number), fd pressure (EMFILE must
    /// be caught to release the quarantine), new-* policies or a handle
    /// budget (they judge the created fd before the program sees it).
    fn predict(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        regs: &Regs,
        stack: &Option<Stack>,
    ) -> bool {
        if self.opts.max_handles.is_some() {
            return false;
        }
        let new_policy = self.procs.get(&tgid).is_some_and(|p| {
            p.policy
                .entries()
                .any(|(c, e)| c.is_new() && e.action != Action::Allow)
        });
        if new_policy {
            return false;
        }
        let limit = self.cached_nofile(tgid).min(1024);
        let Some(t) = self.threads.get(&tid) else {
            return false;
        };
        if Rc::strong_count(&t.table) != 1 {
            return false;
        }
        let table = t.table.borrow();
        if table.used() as u64 + 16 >= limit {
            return false;
        }
        let a = tracer::args(regs);
        // A local array the kernel writes pipe fds into is gone by the next
        // stop, so pairs are predicted as numbers too.
        let fds = match desc.kind {
            Kind::Pipe | Kind::SocketPair => {
                let first = table.lowest_free(0);
                let mut second = first + 1;
                while table.tomb_src == Some(second) || table.get(second).is_some() {
                    second += 1;
                }
                vec![first, second]
            }
            Kind::Create | Kind::Dup | Kind::Signalfd => vec![table.lowest_free(0)],
            Kind::Fcntl => vec![table.lowest_free(a[2].min(i32::MAX as u64) as i32)],
            _ => return false,
        };
        drop(table);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.predicted = Some(Predicted {
                name: desc.name,
                stack: stack.clone(),
                fds,
            });
        }
        true
    }

    fn follow_to_exit(&mut self, tid: i32, tgid: i32, desc: &'static Desc, regs: Regs) {
        let stack = self.capture_stack(tid, tgid, Some(&regs));
        if self.predict(tid, tgid, desc, &regs, &stack) {
            self.resume(tid, None);
            return;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Some(ExitWork::Create {
                desc,
                entry: regs,
                stack,
            });
        }
        let _ = ptrace::syscall(Pid::from_raw(tid), None);
    }

    /// Makes the syscall at an entry stop fail with `errno` without running.
    fn skip_with(&self, tid: i32, mut regs: Regs, errno: i32) {
        regs.orig_rax = u64::MAX;
        regs.rax = (-(errno as i64)) as u64;
        let _ = tracer::setregs(tid, &regs);
    }

    fn policy_of(&self, tgid: i32) -> Policy {
        self.procs
            .get(&tgid)
            .map(|p| p.policy.clone())
            .unwrap_or_else(|| self.opts.policy.clone())
    }

    fn bad_handle(
        &mut self,
        tid: i32,
        tgid: i32,
        regs: Regs,
        desc: &'static Desc,
        fd: i32,
        bad: Bad,
    ) {
        let action = self.policy_of(tgid).get(Condition::BadHandle).action;
        // A quarantined number stands for a closed fd: whatever the action,
        // the call must see what a closed fd gives, EBADF, not the tombstone.
        let deny = matches!(action, Action::Deny | Action::DenyException | Action::Kill)
            || matches!(bad, Bad::Stale);
        // allow and deny raise no exception: the call runs (answering EBADF
        // for a quarantined number, as a closed fd would) or fails unrun.
        if matches!(action, Action::Allow | Action::Deny) {
            if deny {
                self.skip_with(tid, regs, libc::EBADF);
            }
            self.resume(tid, None);
            return;
        }
        let is_close = matches!(desc.kind, Kind::Close);
        let is_dup = matches!(desc.kind, Kind::Dup | Kind::DupTo)
            || desc.nr == libc::SYS_fcntl && {
                let cmd = regs.rsi as i32;
                cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC
            };
        let (closed_info, value) = {
            let t = &self.threads[&tid];
            let table = t.table.borrow();
            let info = table.closed_info(fd).cloned();
            let value = info.as_ref().map(|c| table.value_of(fd, c.generation));
            (info, value)
        };
        let kind = match (&bad, is_close, is_dup) {
            (_, true, _) if closed_info.is_some() => "double-close",
            (_, true, _) => "close-never-opened",
            (_, _, true) if closed_info.is_some() => "dup-closed",
            (_, _, true) => "dup-never-opened",
            (Bad::Stale, _, _) => "use-closed",
            (Bad::NotOpen, _, _) if closed_info.is_some() => "use-closed",
            (Bad::NotOpen, _, _) => "use-never-opened",
        };
        let what = match (&bad, is_close, is_dup) {
            (_, true, _) if closed_info.is_some() => "close of a closed handle (double close)",
            (_, true, _) => "close of a handle that was never opened",
            (_, _, true) if closed_info.is_some() => "duplication of a closed handle",
            (_, _, true) => "duplication of a handle that was never opened",
            (Bad::Stale, _, _) => "use of a closed handle (its fd number is quarantined)",
            (Bad::NotOpen, _, _) if closed_info.is_some() => "use of a closed handle",
            (Bad::NotOpen, _, _) => "use of a handle that was never opened",
        };
        let handle = match (&closed_info, value) {
            (Some(c), Some(v)) => Some(format!(
                "{v} (fd {fd}): closed {} koid {} {}",
                if c.facts.ty.is_empty() {
                    "object"
                } else {
                    c.facts.ty
                },
                c.facts.koid,
                c.facts.target
            )),
            _ => Some(format!("fd {fd}: not open")),
        };
        let outcome = match action {
            Action::Kill => "the process is killed (SIGKILL)".to_string(),
            _ => {
                let call = if deny {
                    "the call fails with EBADF without running"
                } else {
                    "the call runs (and fails with EBADF)"
                };
                match self.opts.on_exception {
                    OnException::Trap => format!("{call}; SIGTRAP follows"),
                    OnException::Stop => format!("{call}; the process is stopped for a debugger"),
                }
            }
        };
        let stack = self.capture_stack(tid, tgid, Some(&regs)).or_else(|| {
            // Reports always carry the offending stack, even with stack
            // recording off.
            let maps = ModuleMap::read(tgid).ok()?;
            Some(Arc::new(self.unwinder.unwind(
                tid,
                &maps,
                StartRegs::from(&regs),
                64,
            )))
        });
        let backtrace = self.symbolize(tgid, stack.as_ref());
        let suppressed = {
            let event = Event {
                report: "bad-handle",
                kind,
                ty: closed_info.as_ref().map_or("", |c| c.facts.ty),
                path: closed_info.as_ref().map_or("", |c| c.facts.target.as_str()),
                frames: backtrace
                    .iter()
                    .map(|f| FrameRef {
                        function: f.function.as_deref(),
                        module: f.module.as_deref(),
                        file: f.file.as_deref(),
                    })
                    .collect(),
            };
            self.opts.suppressions.matching(&event).is_some()
        };
        if suppressed {
            self.suppressed += 1;
            if matches!(bad, Bad::Stale) {
                self.skip_with(tid, regs, libc::EBADF);
            }
            self.resume(tid, None);
            return;
        }
        let mut sections = vec![Section {
            title: "backtrace".into(),
            frames: backtrace,
        }];
        if let Some(c) = &closed_info {
            let frames = self.symbolize(c.closer, c.closed.as_ref());
            sections.push(Section {
                title: format!("closed by {} in process {} at", c.how, c.closer),
                frames,
            });
            let frames = self.symbolize(c.creator, c.created.as_ref());
            let origin = match &c.origin {
                Origin::Syscall(s) => format!("opened by {s}()"),
                Origin::Inherited => "inherited".into(),
                Origin::Received => "received through SCM_RIGHTS".into(),
                Origin::Discovered => "found open".into(),
            };
            sections.push(Section {
                title: format!("originally {origin} in process {} at", c.creator),
                frames,
            });
        }
        let report = ExceptionReport {
            condition: "bad-handle".into(),
            kind: kind.into(),
            fd: Some(fd),
            action: action.to_string(),
            pid: tgid,
            tid,
            process_name: self
                .procs
                .get(&tgid)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            thread_name: comm(tid),
            syscall: format_syscall(
                desc.name,
                &tracer::args(&regs),
                desc.nargs as usize,
                desc.fd_args | desc.dirfd_args,
            ),
            handle,
            what: what.into(),
            outcome,
            sections,
        };
        self.emit(&report);
        if deny {
            self.skip_with(tid, regs, libc::EBADF);
        }
        self.raise(tid, tgid, action);
    }

    /// The wrong-object condition: a call on an fd of a type it cannot work
    /// on (a socket call on a file, epoll_ctl on a pipe, ...).
    #[allow(clippy::too_many_arguments)]
    fn wrong_object(
        &mut self,
        tid: i32,
        tgid: i32,
        regs: Regs,
        desc: &'static Desc,
        fd: i32,
        ty: ObjType,
        expected: &[ObjType],
        errno: i32,
        action: Action,
    ) {
        let deny = matches!(action, Action::Deny | Action::DenyException | Action::Kill);
        if matches!(
            action,
            Action::AllowException | Action::DenyException | Action::Kill
        ) {
            let stack = self.capture_stack(tid, tgid, Some(&regs)).or_else(|| {
                let maps = ModuleMap::read(tgid).ok()?;
                Some(Arc::new(self.unwinder.unwind(
                    tid,
                    &maps,
                    StartRegs::from(&regs),
                    64,
                )))
            });
            let frames = self.symbolize(tgid, stack.as_ref());
            let value = {
                let table = self.threads[&tid].table.borrow();
                match table.get(fd) {
                    Some(Slot::Open(h)) => {
                        format!("{} (fd {fd})", table.value_of(fd, h.generation))
                    }
                    _ => format!("fd {fd}"),
                }
            };
            let wanted: Vec<&str> = expected.iter().map(|t| t.name()).collect();
            let report = ExceptionReport {
                condition: "wrong-object".into(),
                kind: "wrong-object".into(),
                fd: Some(fd),
                action: action.to_string(),
                pid: tgid,
                tid,
                process_name: self
                    .procs
                    .get(&tgid)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                thread_name: comm(tid),
                syscall: format_syscall(
                    desc.name,
                    &tracer::args(&regs),
                    desc.nargs as usize,
                    desc.fd_args | desc.dirfd_args,
                ),
                handle: Some(format!("{value}: {}", ty.name())),
                what: format!(
                    "{}() on a {} handle; it needs a {}",
                    desc.name,
                    ty.name(),
                    wanted.join(" or ")
                ),
                outcome: if deny {
                    format!(
                        "the call fails with {:?} without running",
                        nix::errno::Errno::from_raw(errno)
                    )
                } else {
                    "the call runs".into()
                },
                sections: vec![Section {
                    title: "backtrace".into(),
                    frames,
                }],
            };
            self.emit(&report);
        }
        if deny {
            self.skip_with(tid, regs, errno);
        }
        self.raise(tid, tgid, action);
    }

    /// `--max-handles`: the process holds more handles than its budget, the
    /// sign of a runaway leak long before EMFILE. Reported once per process,
    /// as an exception (SIGTRAP follows).
    #[allow(clippy::too_many_arguments)]
    fn over_budget(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        count: usize,
        max: usize,
        fd: Option<i32>,
    ) {
        let stack = self.capture_stack(tid, tgid, Some(entry));
        let frames = self.symbolize(tgid, stack.as_ref());
        let report = ExceptionReport {
            condition: "max-handles".into(),
            kind: "max-handles".into(),
            fd,
            action: "allow-exception".into(),
            pid: tgid,
            tid,
            process_name: self
                .procs
                .get(&tgid)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            thread_name: comm(tid),
            syscall: format_syscall(
                desc.name,
                &tracer::args(entry),
                desc.nargs as usize,
                desc.fd_args | desc.dirfd_args,
            ),
            handle: fd.map(|f| format!("fd {f}: the newest")),
            what: format!(
                "the process holds {count} handles, over its budget of {max} (--max-handles)"
            ),
            outcome: "the call succeeds; SIGTRAP follows".into(),
            sections: vec![Section {
                title: "backtrace".into(),
                frames,
            }],
        };
        self.emit(&report);
        self.raise(tid, tgid, Action::AllowException);
    }

    fn emit(&mut self, report: &ExceptionReport) {
        self.exceptions += 1;
        let text = report.render();
        self.write_report(&text);
        self.exception_list.push(SerException {
            condition: report.condition.clone(),
            kind: report.kind.clone(),
            action: report.action.clone(),
            pid: report.pid,
            tid: report.tid,
            process: report.process_name.clone(),
            thread: report.thread_name.clone(),
            syscall: report.syscall.clone(),
            fd: report.fd,
            handle: report.handle.clone(),
            what: report.what.clone(),
            outcome: report.outcome.clone(),
            stacks: report
                .sections
                .iter()
                .map(|s| SerStack {
                    title: s.title.clone(),
                    frames: s.frames.iter().map(SerFrame::from).collect(),
                })
                .collect(),
        });
    }

    /// `--report` and `--sarif`, written once the job is over.
    fn write_machine_reports(&self) -> Result<(), RunError> {
        let write = |path: &PathBuf, v: &serde_json::Value| -> Result<(), RunError> {
            let text = serde_json::to_string_pretty(v).unwrap_or_default();
            std::fs::write(path, text + "\n").map_err(|e| RunError::Log {
                path: path.clone(),
                source: e,
            })
        };
        if let Some(p) = &self.opts.report {
            let mut command = vec![self.opts.program.to_string_lossy().into_owned()];
            command.extend(
                self.opts
                    .args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned()),
            );
            let exit = self.root_exit.map(exit_json);
            let procs: Vec<SerProcess> = self.tree.values().cloned().collect();
            let v = output::json_report(
                &command,
                exit,
                &self.exception_list,
                &self.leak_reports,
                &procs,
                self.suppressed,
            );
            write(p, &v)?;
        }
        if let Some(p) = &self.opts.sarif {
            let v = output::sarif(
                env!("CARGO_PKG_VERSION"),
                &self.exception_list,
                &self.leak_reports,
            );
            write(p, &v)?;
        }
        Ok(())
    }

    /// Our output goes to stderr and, with `--log`, to the log file.
    fn write_report(&mut self, text: &str) {
        let _ = std::io::stderr().write_all(text.as_bytes());
        if let Some(f) = &mut self.log {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// PTRACE_EVENT_EXIT: the thread is exiting but its fd table still
    /// exists. When it is the last thread using the table, check for leaks.
    fn on_exit_event(&mut self, tid: i32) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.exiting = true;
        }
        if self.opts.leak_mode != LeakMode::Off {
            let last = self.threads.get(&tid).is_some_and(|t| {
                self.threads
                    .values()
                    .filter(|o| Rc::ptr_eq(&o.table, &t.table))
                    .all(|o| o.exiting)
            });
            if last {
                self.leak_check(tid);
            }
        }
        self.resume(tid, None);
    }

    fn leak_check(&mut self, tid: i32) {
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let tgid = t.tgid;
        let all = self.opts.leak_mode == LeakMode::All;
        let candidates: Vec<(i32, u32, Origin, Option<Stack>, bool)> = {
            let table = t.table.borrow();
            table
                .open_fds()
                .filter_map(|(fd, h)| {
                    let inherited = h.origin == Origin::Inherited || h.creator != tgid;
                    (all || !inherited).then(|| {
                        (
                            fd,
                            table.value_of(fd, h.generation).0,
                            h.origin.clone(),
                            h.created.clone(),
                            inherited,
                        )
                    })
                })
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let snapshot = crate::inspect::Inspector::new(crate::inspect::Options {
            long: true,
            peers: false,
        })
        .read_task(tgid, tid)
        .ok();
        let info = |fd: i32| {
            snapshot
                .as_ref()
                .and_then(|s| s.handles.iter().find(|h| h.fd == fd))
        };
        let mut items = Vec::new();
        for (fd, value, origin, stack, inherited) in candidates {
            // Stdio is never a leak, even when a program re-opened it.
            if fd <= 2 && !all {
                continue;
            }
            let Some(h) = info(fd) else {
                continue;
            };
            let origin = match origin {
                Origin::Syscall(s) => s.to_string(),
                Origin::Received => "recvmsg (SCM_RIGHTS)".into(),
                Origin::Discovered => "an untraced call".into(),
                Origin::Inherited => "inherited".into(),
            };
            let key: Vec<u64> = stack.as_ref().map(|s| s.to_vec()).unwrap_or_default();
            items.push((
                key,
                (
                    stack,
                    Leak {
                        fd,
                        handle: value,
                        ty: h.ty.to_string(),
                        koid: h.koid,
                        dev: h.dev.clone(),
                        description: h.description.clone(),
                        origin,
                        inherited,
                    },
                ),
            ));
        }
        let mut map: std::collections::BTreeMap<Vec<u64>, (Option<Stack>, Vec<Leak>)> =
            Default::default();
        for (k, (stack, leak)) in items {
            map.entry(k)
                .or_insert_with(|| (stack, Vec::new()))
                .1
                .push(leak);
        }
        let mut groups = Vec::new();
        let mut stacks = Vec::new();
        let mut suppressed = 0;
        let mut rules = String::new();
        for (_, (stack, handles)) in map {
            let frames = self.symbolize(tgid, stack.as_ref());
            let mut kept = Vec::new();
            for l in handles {
                let event = Event {
                    report: "leak",
                    kind: "leak",
                    ty: &l.ty,
                    path: &l.description,
                    frames: frames
                        .iter()
                        .map(|f| FrameRef {
                            function: f.function.as_deref(),
                            module: f.module.as_deref(),
                            file: f.file.as_deref(),
                        })
                        .collect(),
                };
                if self.opts.suppressions.matching(&event).is_some() {
                    suppressed += 1;
                    continue;
                }
                if self.opts.gen_suppressions && kept.is_empty() {
                    let name = format!("leak-{}-{}", l.ty, l.origin.replace(' ', "-"));
                    rules.push_str(&crate::suppress::Rule::for_event(&name, &event, 4).render());
                }
                kept.push(l);
            }
            if kept.is_empty() {
                continue;
            }
            groups.push(LeakGroup {
                handles: kept,
                stack: frames.iter().map(SerFrame::from).collect(),
            });
            stacks.push(frames);
        }
        let report = ProcessLeaks {
            pid: tgid,
            name: self
                .procs
                .get(&tgid)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            groups,
            suppressed,
        };
        if report.count() > 0 {
            let mut text = leaks::render(&report, &stacks);
            // Rules print bare, ready to paste into a suppressions file.
            text.push_str(&rules);
            self.write_report(&text);
        }
        self.leak_reports.push(report);
    }

    /// After a report: kill, trap, or stop the offender.
    fn raise(&mut self, tid: i32, tgid: i32, action: Action) {
        match action {
            Action::Kill => {
                // SAFETY: kill(2) of one of our tracees.
                unsafe { libc::kill(tgid, libc::SIGKILL) };
                self.resume(tid, None);
            }
            Action::AllowException | Action::DenyException => match self.opts.on_exception {
                OnException::Trap => {
                    // The signal is pending when the call returns, as a
                    // synchronous exception would be.
                    // SAFETY: tgkill to one of our tracees.
                    unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, libc::SIGTRAP) };
                    self.resume(tid, None);
                }
                OnException::Stop => {
                    if let Some(p) = self.procs.get_mut(&tgid) {
                        p.detaching = true;
                    }
                    // SAFETY: kill(2) of one of our tracees.
                    unsafe { libc::kill(tgid, libc::SIGSTOP) };
                    eprintln!(
                        "handles: process {tgid} is stopped and detached; attach a debugger with: gdb -p {tgid}"
                    );
                    eprintln!(
                        "handles: note: its fd syscalls fail with ENOSYS if it is resumed, as no supervisor serves its seccomp filter any more"
                    );
                    self.resume(tid, None);
                }
            },
            _ => self.resume(tid, None),
        }
    }

    /// For `--on-exception=stop`: detaches each thread of a marked process
    /// at its next stop, leaving it stopped.
    fn detach_if_needed(&mut self, tid: i32, sig: Option<Signal>) -> bool {
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            return false;
        };
        if !self.procs.get(&tgid).is_some_and(|p| p.detaching) {
            return false;
        }
        let keep = match sig {
            Some(Signal::SIGSTOP) | None => Some(Signal::SIGSTOP),
            other => other,
        };
        let _ = ptrace::detach(Pid::from_raw(tid), keep);
        self.threads.remove(&tid);
        true
    }

    fn on_close(&mut self, tid: i32, tgid: i32, regs: Regs) {
        let fd = regs.rdi as i32;
        let facts = object_facts(tgid, fd);
        let stack = self.capture_stack(tid, tgid, Some(&regs));
        let quarantine = self.opts.quarantine > 0 && fd > 2 && self.room_for_tombstone(tid, tgid);
        if !quarantine {
            if let Some(t) = self.threads.get(&tid) {
                t.table
                    .borrow_mut()
                    .close(fd, stack, tgid, facts, "close()", false);
            }
            self.resume(tid, None);
            return;
        }
        match self.close_into_tombstone(tid, tgid, &regs, fd) {
            Ok(tombstoned) => {
                if let Some(t) = self.threads.get(&tid) {
                    t.table
                        .borrow_mut()
                        .close(fd, stack, tgid, facts, "close()", tombstoned);
                }
                self.resume(tid, None);
            }
            Err(InjectError::Gone) => {}
            Err(InjectError::Ptrace(_)) => self.resume(tid, None),
        }
    }

    /// The process's RLIMIT_NOFILE, re-read every 1024 questions.
    fn cached_nofile(&mut self, tgid: i32) -> u64 {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return nofile_limit(tgid);
        };
        match &mut p.nofile {
            Some((limit, asked)) if *asked < 1024 => {
                *asked += 1;
                *limit
            }
            slot => {
                let limit = nofile_limit(tgid);
                *slot = Some((limit, 0));
                limit
            }
        }
    }

    /// Whether one more tombstone fits: under the quarantine bound after
    /// eviction, below 1024 for programs that use select(), and clear of
    /// RLIMIT_NOFILE.
    fn room_for_tombstone(&mut self, tid: i32, tgid: i32) -> bool {
        let limit = self.cached_nofile(tgid);
        let Some(t) = self.threads.get(&tid) else {
            return false;
        };
        let table = t.table.borrow();
        let used = table.used() as u64;
        used + 16 < limit && used + 16 < 1024
    }

    /// Replaces the close at `entry` with `dup3(tomb_src, fd, O_CLOEXEC)`,
    /// planting the tombstone source first if needed, evicting old
    /// tombstones past the bound, and makes the call return 0. Returns
    /// whether the fd is now a tombstone (false: it was plainly closed).
    fn close_into_tombstone(
        &mut self,
        tid: i32,
        tgid: i32,
        entry: &Regs,
        fd: i32,
    ) -> Result<bool, InjectError> {
        let table = self.threads[&tid].table.clone();
        let src = table.borrow().tomb_src;
        let mut state = match src {
            Some(s) => {
                let (ret, exit) = tracer::replace_at_entry(
                    tid,
                    entry,
                    libc::SYS_dup3,
                    [s as u64, fd as u64, libc::O_CLOEXEC as u64, 0, 0, 0],
                    &mut self.deferred,
                )?;
                if ret == fd as i64 {
                    exit
                } else {
                    // The source is gone (closed by the program under
                    // another name): close for real and plant anew next time.
                    table.borrow_mut().set_tomb_src(None);
                    let (_, exit) = tracer::inject_at_exit(
                        tid,
                        &exit,
                        libc::SYS_close,
                        [fd as u64, self.cookie, 0, 0, 0, 0],
                        &mut self.deferred,
                    )?;
                    let mut done = *entry;
                    done.rax = exit.rax;
                    tracer::setregs(tid, &done)?;
                    return Ok(false);
                }
            }
            None => {
                let (planted, exit) = self.plant_tomb_src(tid, tgid, entry)?;
                match planted {
                    Some(s) => {
                        table.borrow_mut().set_tomb_src(Some(s));
                        let (ret, exit) = tracer::inject_at_exit(
                            tid,
                            &exit,
                            libc::SYS_dup3,
                            [
                                s as u64,
                                fd as u64,
                                libc::O_CLOEXEC as u64,
                                self.cookie,
                                0,
                                0,
                            ],
                            &mut self.deferred,
                        )?;
                        if ret != fd as i64 {
                            let (_, exit) = tracer::inject_at_exit(
                                tid,
                                &exit,
                                libc::SYS_close,
                                [fd as u64, self.cookie, 0, 0, 0, 0],
                                &mut self.deferred,
                            )?;
                            let mut done = *entry;
                            done.rax = exit.rax;
                            tracer::setregs(tid, &done)?;
                            return Ok(false);
                        }
                        exit
                    }
                    None => {
                        let (_, exit) = tracer::inject_at_exit(
                            tid,
                            &exit,
                            libc::SYS_close,
                            [fd as u64, self.cookie, 0, 0, 0, 0],
                            &mut self.deferred,
                        )?;
                        let mut done = *entry;
                        done.rax = exit.rax;
                        tracer::setregs(tid, &done)?;
                        return Ok(false);
                    }
                }
            }
        };
        // Evict down to half the bound once it is exceeded, in runs, so a
        // loop that churns fds pays for eviction once per many closes.
        let cap = self.opts.quarantine;
        let evict = {
            let mut t = table.borrow_mut();
            if t.quarantined() + 1 > cap {
                t.evict(cap / 2)
            } else {
                Vec::new()
            }
        };
        for (first, last) in runs(&evict) {
            let (_, exit) = if first == last {
                tracer::inject_at_exit(
                    tid,
                    &state,
                    libc::SYS_close,
                    [first as u64, self.cookie, 0, 0, 0, 0],
                    &mut self.deferred,
                )?
            } else {
                tracer::inject_at_exit(
                    tid,
                    &state,
                    436,
                    [first as u64, last as u64, 0, self.cookie, 0, 0],
                    &mut self.deferred,
                )?
            };
            state = exit;
        }
        let mut done = *entry;
        done.rax = 0;
        tracer::setregs(tid, &done)?;
        Ok(true)
    }

    /// Opens `/` with O_PATH|O_CLOEXEC in the tracee and moves it high, to
    /// be the source of tombstones. Runs in place of the syscall at `entry`;
    /// returns the fd (None if it could not be made) and the registers at
    /// the last injected syscall's exit.
    fn plant_tomb_src(
        &mut self,
        tid: i32,
        tgid: i32,
        entry: &Regs,
    ) -> Result<(Option<i32>, Regs), InjectError> {
        // The path goes below the red zone of the thread's stack, saved and
        // restored around the call.
        let addr = entry.rsp.wrapping_sub(512) & !0xf;
        let saved = tracer::read_mem(tid, addr, 8).ok();
        let path_ok = saved.is_some() && tracer::write_mem(tid, addr, b"/\0").is_ok();
        let nr = if path_ok {
            libc::SYS_openat
        } else {
            libc::SYS_getpid
        };
        let (ret, mut exit) = tracer::replace_at_entry(
            tid,
            entry,
            nr,
            [
                libc::AT_FDCWD as u64,
                addr,
                (libc::O_PATH | libc::O_CLOEXEC) as u64,
                0,
                self.cookie,
                0,
            ],
            &mut self.deferred,
        )?;
        if let Some(s) = &saved {
            let _ = tracer::write_mem(tid, addr, s);
        }
        if !path_ok || ret < 0 {
            return Ok((None, exit));
        }
        let low = ret;
        let limit = nofile_limit(tgid).clamp(64, 1 << 20);
        let mut placed = None;
        for want in [limit - 1, limit / 2, 1023] {
            if want <= low as u64 {
                continue;
            }
            let (r, e) = tracer::inject_at_exit(
                tid,
                &exit,
                libc::SYS_fcntl,
                [
                    low as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                    want,
                    self.cookie,
                    0,
                    0,
                ],
                &mut self.deferred,
            )?;
            exit = e;
            if r >= 0 {
                placed = Some(r as i32);
                break;
            }
        }
        let (_, e) = tracer::inject_at_exit(
            tid,
            &exit,
            libc::SYS_close,
            [low as u64, self.cookie, 0, 0, 0, 0],
            &mut self.deferred,
        )?;
        Ok((placed, e))
    }

    fn on_syscall_exit(&mut self, tid: i32) {
        let Some(work) = self.threads.get_mut(&tid).and_then(|t| t.pending.take()) else {
            self.resume(tid, None);
            return;
        };
        let Ok(regs) = tracer::getregs(tid) else {
            return;
        };
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            return;
        };
        let ret = regs.rax as i64;
        match work {
            ExitWork::CloseRange { entry } => {
                if ret == 0 {
                    self.after_close_range(tid, tgid, &entry);
                }
                self.resume(tid, None);
            }
            ExitWork::Create { desc, entry, stack } => {
                if matches!(errno_of(ret), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    match self.release_quarantine(tid, &regs) {
                        Ok(true) => {
                            // Retry the call now that the numbers are free:
                            // the program never sees an early EMFILE.
                            let mut again = entry;
                            again.rax = entry.orig_rax;
                            again.rip = entry.rip.wrapping_sub(tracer::SYSCALL_INSN_LEN);
                            let _ = tracer::setregs(tid, &again);
                            self.resume(tid, None);
                            return;
                        }
                        Ok(false) => {}
                        Err(_) => return,
                    }
                }
                if ret >= 0 {
                    // Near FD_SETSIZE the quarantine must give its numbers
                    // back: natively they would be free, and a select() user
                    // must keep getting fds below 1024.
                    let crowded = self.threads.get(&tid).is_some_and(|t| {
                        let t = t.table.borrow();
                        t.quarantined() > 0 && t.used() + 16 >= 1024
                    });
                    if crowded {
                        match self.release_tombstones(tid, &regs, false) {
                            Ok(_) => {
                                let _ = tracer::setregs(tid, &regs);
                            }
                            Err(_) => return,
                        }
                    }
                    self.after_create(tid, tgid, desc, &entry, ret, stack);
                } else {
                    self.resume(tid, None);
                }
            }
        }
    }

    /// Closes every tombstone and the tombstone source of the thread's
    /// table (under fd pressure). Leaves the thread at an exit stop.
    fn release_quarantine(&mut self, tid: i32, exit: &Regs) -> Result<bool, InjectError> {
        self.release_tombstones(tid, exit, true)
    }

    /// Closes every tombstone (and with `with_src` the tombstone source) of
    /// the thread's table. Leaves the thread at an injected syscall's exit
    /// stop: the caller sets the registers it wants after.
    fn release_tombstones(
        &mut self,
        tid: i32,
        exit: &Regs,
        with_src: bool,
    ) -> Result<bool, InjectError> {
        let table = self.threads[&tid].table.clone();
        let (mut fds, src) = {
            let mut t = table.borrow_mut();
            let fds = t.evict(0);
            let src = if with_src { t.tomb_src } else { None };
            if with_src {
                t.set_tomb_src(None);
            }
            (fds, src)
        };
        if let Some(s) = src {
            fds.push(s);
            fds.sort_unstable();
        }
        if fds.is_empty() {
            return Ok(false);
        }
        let mut state = *exit;
        for (first, last) in runs(&fds) {
            let (_, e) = tracer::inject_at_exit(
                tid,
                &state,
                436,
                [first as u64, last as u64, 0, self.cookie, 0, 0],
                &mut self.deferred,
            )?;
            state = e;
        }
        Ok(true)
    }

    fn after_close_range(&mut self, tid: i32, tgid: i32, entry: &Regs) {
        let (first, last, flags) = (entry.rdi as u32, entry.rsi as u32, entry.rdx as u32);
        const CLOSE_RANGE_UNSHARE: u32 = 2;
        const CLOSE_RANGE_CLOEXEC: u32 = 4;
        if flags & CLOSE_RANGE_UNSHARE != 0 {
            if let Some(t) = self.threads.get_mut(&tid) {
                let copy = t.table.borrow().unshared_copy();
                t.table = Rc::new(RefCell::new(copy));
            }
        }
        if flags & CLOSE_RANGE_CLOEXEC != 0 {
            return;
        }
        let stack = self.capture_stack(tid, tgid, Some(entry));
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let mut table = t.table.borrow_mut();
        for fd in table.numbers() {
            if (fd as u32) < first || (fd as u32) > last {
                continue;
            }
            match table.get(fd) {
                Some(Slot::Tombstone(_)) => table.drop_tombstone(fd),
                Some(Slot::Open(_)) => table.close(
                    fd,
                    stack.clone(),
                    tgid,
                    ObjectFacts::default(),
                    "close_range",
                    false,
                ),
                None => {}
            }
        }
        if table
            .tomb_src
            .is_some_and(|s| (s as u32) >= first && (s as u32) <= last)
        {
            table.set_tomb_src(None);
        }
    }

    /// Registers the fds a successful creating call made.
    fn after_create(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        ret: i64,
        stack: Option<Stack>,
    ) {
        let a = tracer::args(entry);
        let mut new_fds: Vec<i32> = Vec::new();
        let mut origin = Origin::Syscall(desc.name);
        match desc.kind {
            Kind::Pipe | Kind::SocketPair => {
                let ptr = if desc.kind == Kind::Pipe { a[0] } else { a[3] };
                if let Ok(b) = tracer::read_mem(tid, ptr, 8) {
                    new_fds.push(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    new_fds.push(i32::from_ne_bytes([b[4], b[5], b[6], b[7]]));
                }
            }
            Kind::RecvMsg => {
                origin = Origin::Received;
                new_fds.extend(scm_rights(tid, a[1]));
            }
            Kind::RecvMmsg => {
                origin = Origin::Received;
                for i in 0..(ret.clamp(0, 1024) as u64) {
                    // struct mmsghdr { struct msghdr (56 bytes); unsigned msg_len; } padded to 64.
                    new_fds.extend(scm_rights(tid, a[1] + i * 64));
                }
            }
            Kind::DupTo => {
                let newfd = a[1] as i32;
                if ret == newfd as i64 && a[0] as i32 != newfd {
                    let t = &self.threads[&tid];
                    let mut table = t.table.borrow_mut();
                    match table.get(newfd) {
                        Some(Slot::Open(_)) => table.close(
                            newfd,
                            stack.clone(),
                            tgid,
                            ObjectFacts::default(),
                            "dup2 onto it",
                            false,
                        ),
                        Some(Slot::Tombstone(_)) => table.drop_tombstone(newfd),
                        None => {}
                    }
                    if table.tomb_src == Some(newfd) {
                        table.set_tomb_src(None);
                    }
                    drop(table);
                    new_fds.push(newfd);
                } else if a[0] as i32 == newfd {
                    // dup2(fd, fd) is a no-op.
                }
            }
            Kind::Bpf => {
                // Commands that return a new fd.
                const CREATES: &[u64] = &[0, 5, 7, 13, 14, 17, 18, 19, 28, 30, 33, 36];
                if CREATES.contains(&a[0]) && ret > 0 {
                    new_fds.push(ret as i32);
                }
            }
            _ => new_fds.push(ret as i32),
        }
        {
            let t = &self.threads[&tid];
            let mut table = t.table.borrow_mut();
            for &fd in &new_fds {
                if fd >= 0 {
                    table.open(fd, origin.clone(), stack.clone(), tgid);
                }
            }
        }
        if let Some(max) = self.opts.max_handles {
            let count = self.threads[&tid].table.borrow().open_count();
            let first = self.procs.get(&tgid).is_some_and(|p| !p.over_budget);
            if count > max && first {
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.over_budget = true;
                }
                self.over_budget(tid, tgid, desc, entry, count, max, new_fds.last().copied());
                return;
            }
        }
        let new_policy_active = self.procs.get(&tgid).is_some_and(|p| {
            p.policy
                .entries()
                .any(|(c, e)| c.is_new() && e.action != Action::Allow)
        });
        if new_policy_active
            && !new_fds.is_empty()
            && self.new_policy(tid, tgid, desc, entry, &new_fds)
        {
            return;
        }
        self.resume(tid, None);
    }

    /// Applies the new-* conditions to freshly created fds. Returns true when
    /// it resumed (or killed) the thread itself.
    fn new_policy(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        fds: &[i32],
    ) -> bool {
        let policy = self.policy_of(tgid);
        let mut worst: Option<(Action, &'static str, i32)> = None;
        for &fd in fds {
            let facts = object_facts(tgid, fd);
            let ty = ObjType::from_name(facts.ty).unwrap_or(ObjType::Unknown);
            let ty = refine_socket(tgid, fd, ty);
            let action = policy.action_for_new(ty);
            if action != Action::Allow {
                worst = Some((action, ty.name(), fd));
                break;
            }
        }
        let Some((action, ty, fd)) = worst else {
            return false;
        };
        let condition =
            Condition::for_new_object(ObjType::from_name(ty).unwrap_or(ObjType::Unknown));
        let deny = matches!(action, Action::Deny | Action::DenyException);
        if deny {
            let Ok(mut exit) = tracer::getregs(tid) else {
                return true;
            };
            for &f in fds {
                match tracer::inject_at_exit(
                    tid,
                    &exit,
                    libc::SYS_close,
                    [f as u64, self.cookie, 0, 0, 0, 0],
                    &mut self.deferred,
                ) {
                    Ok((_, e)) => exit = e,
                    Err(_) => return true,
                }
                if let Some(t) = self.threads.get(&tid) {
                    t.table.borrow_mut().close(
                        f,
                        None,
                        tgid,
                        ObjectFacts::default(),
                        "policy deny",
                        false,
                    );
                }
            }
            let mut done = *entry;
            done.rax = (-(libc::EPERM as i64)) as u64;
            let _ = tracer::setregs(tid, &done);
        }
        if matches!(
            action,
            Action::AllowException | Action::DenyException | Action::Kill
        ) {
            let regs = *entry;
            let stack = self.capture_stack(tid, tgid, Some(&regs));
            let frames = self.symbolize(tgid, stack.as_ref());
            let report = ExceptionReport {
                condition: condition.to_string(),
                kind: condition.to_string(),
                fd: Some(fd),
                action: action.to_string(),
                pid: tgid,
                tid,
                process_name: self
                    .procs
                    .get(&tgid)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                thread_name: comm(tid),
                syscall: format_syscall(
                    desc.name,
                    &tracer::args(entry),
                    desc.nargs as usize,
                    desc.fd_args | desc.dirfd_args,
                ),
                handle: Some(format!("fd {fd}: new {ty}")),
                what: format!("creation of a {ty} handle"),
                outcome: if deny {
                    "the call fails with EPERM".into()
                } else {
                    "the call succeeds".into()
                },
                sections: vec![Section {
                    title: "backtrace".into(),
                    frames,
                }],
            };
            self.emit(&report);
            self.raise(tid, tgid, action);
            return true;
        }
        self.resume(tid, None);
        true
    }
}

/// The object types a syscall's first (fd) argument must have, and the
/// errno the kernel gives for any other.
fn expected_object(name: &str) -> Option<(&'static [ObjType], i32)> {
    const SOCK: &[ObjType] = &[ObjType::Socket, ObjType::Channel];
    Some(match name {
        "connect" | "accept" | "accept4" | "sendto" | "recvfrom" | "sendmsg" | "recvmsg"
        | "sendmmsg" | "recvmmsg" | "shutdown" | "bind" | "listen" | "getsockname"
        | "getpeername" | "setsockopt" | "getsockopt" => (SOCK, libc::ENOTSOCK),
        "epoll_ctl" | "epoll_wait" | "epoll_pwait" | "epoll_pwait2" => {
            (&[ObjType::Port], libc::EINVAL)
        }
        "timerfd_settime" | "timerfd_gettime" => (&[ObjType::Timer], libc::EINVAL),
        "inotify_add_watch" | "inotify_rm_watch" => (&[ObjType::Inotify], libc::EINVAL),
        "pidfd_send_signal" | "pidfd_getfd" | "process_madvise" | "process_mrelease" => {
            (&[ObjType::Process], libc::EBADF)
        }
        "getdents" | "getdents64" | "fchdir" => (&[ObjType::Dir], libc::ENOTDIR),
        _ => return None,
    })
}

fn exit_json(e: Exit) -> serde_json::Value {
    match e {
        Exit::Code(c) => serde_json::json!({ "code": c }),
        Exit::Signal(s, core) => serde_json::json!({ "signal": s, "core": core }),
    }
}

/// `fcntl(fd, F_GETFD)` or `fcntl(fd, F_GETFL)`: a question, not a use.
fn is_probe(desc: &Desc, a: &[u64; 6]) -> bool {
    desc.kind == Kind::Fcntl && matches!(a[1] as i32, libc::F_GETFD | libc::F_GETFL)
}

/// A socket's type in the model: AF_UNIX sockets are channels.
fn refine_socket(tgid: i32, fd: i32, ty: ObjType) -> ObjType {
    if ty != ObjType::Socket {
        return ty;
    }
    let path = format!("/proc/{tgid}/fd/{fd}");
    let Ok(c) = std::ffi::CString::new(path) else {
        return ty;
    };
    let mut buf = [0u8; 32];
    // SAFETY: NUL-terminated path; buf writable for its length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n > 0 && buf.starts_with(b"UNIX") {
        ObjType::Channel
    } else {
        ty
    }
}

/// The fds a received message carries in SCM_RIGHTS control messages.
fn scm_rights(tid: i32, msghdr: u64) -> Vec<i32> {
    let mut fds = Vec::new();
    // struct msghdr: name(8) namelen(4)+pad(4) iov(8) iovlen(8) control(8) controllen(8) flags(4)
    let Ok(control) = tracer::read_u64(tid, msghdr + 32) else {
        return fds;
    };
    let Ok(len) = tracer::read_u64(tid, msghdr + 40) else {
        return fds;
    };
    if control == 0 || len < 16 {
        return fds;
    }
    let Ok(buf) = tracer::read_mem(tid, control, (len as usize).min(64 * 1024)) else {
        return fds;
    };
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let mut l = [0u8; 8];
        l.copy_from_slice(&buf[off..off + 8]);
        let cmsg_len = u64::from_ne_bytes(l) as usize;
        let level = i32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        let ty = i32::from_ne_bytes([buf[off + 12], buf[off + 13], buf[off + 14], buf[off + 15]]);
        if cmsg_len < 16 || off + cmsg_len > buf.len() {
            break;
        }
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            for c in buf[off + 16..off + cmsg_len].chunks_exact(4) {
                fds.push(i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        off += (cmsg_len + 7) & !7;
    }
    fds
}
