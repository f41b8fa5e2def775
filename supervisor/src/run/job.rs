//! The job: every process descended from the program, and the ptrace loop
//! that serves them. This is the one place that waits for tracee events.
//!
//! Each thread stops only where the seccomp prefilter says (fd syscalls),
//! plus the ptrace events for fork/clone/exec/exit and signal deliveries.
//! At a seccomp stop the policy is applied to the fds the call uses; calls
//! that create fds are followed to their exit stop to learn the new
//! numbers; close is rewritten into a `dup3` of a tombstone so the number
//! stays quarantined.

pub(super) use std::cell::RefCell;
pub(super) use std::collections::{HashMap, HashSet};
pub(super) use std::ffi::OsString;
pub(super) use std::io::Write;
pub(super) use std::path::PathBuf;
pub(super) use std::rc::Rc;
pub(super) use std::sync::atomic::{AtomicI32, Ordering};
pub(super) use std::sync::Arc;

pub(super) use handles_model::ObjType;
pub(super) use nix::errno::Errno;
pub(super) use nix::sys::ptrace;
pub(super) use nix::sys::signal::Signal;
pub(super) use nix::sys::wait::WaitStatus;
pub(super) use nix::unistd::Pid;

use super::execinfo::ExecInfo;
pub(super) use super::fdtable::{runs, FdTable, ObjectFacts, Origin, Slot, Stack};
pub(super) use super::leaks::{self, Leak, LeakGroup, LeakMode, ProcessLeaks};
pub(super) use super::output::{self, SerException, SerProcess};
pub(super) use super::publish::Published;
pub(super) use super::report::{format_syscall, ExceptionReport, Section};
pub(super) use super::shimtable::ShimTable;
pub(super) use super::spawn::{self, SpawnError};
pub(super) use super::syscalls::{self, CheckLevel, Desc, Kind};
pub(super) use super::tracer::{self, errno_of, Deferred, InjectError, Regs};
pub(super) use crate::backtrace::{ModuleMap, StartRegs, StopReason, Symbolizer, Unwinder};
pub(super) use crate::inspect::parse::LinkTarget;
pub(super) use crate::policy::{Action, Condition, Policy, PolicyText};
pub(super) use crate::seccomp::{self, FilterSpec};
pub(super) use crate::suppress::{Event, FrameRef, Suppressions};
use handles_model::protocol::{env as penv, CookieText};

/// What to do when a policy exception is raised (`--on-exception`):
/// trap (SIGTRAP, Zircon's unhandled exception), stop (left stopped and
/// detached for a debugger) or continue (log and resume: the call fails
/// as natively). The model's type, so that the shim and the supervisor
/// word a report's outcome alike (`judge::write_outcome`).
pub use handles_model::judge::Then as OnException;

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
    /// The LD_PRELOAD shim to inject into dynamically linked programs.
    pub shim: Option<PathBuf>,
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
    /// Stop on fd syscalls made inside shared libraries too (libc's
    /// internal calls, the dynamic loader), even in processes the shim
    /// covers. Without it, those processes stop only for what the shim
    /// passes on (docs/shim.md, "What stops").
    pub strict: bool,
    /// Write the ERROR SUMMARY even when there was nothing to count (CI
    /// runs: `--error-exitcode`, `--on-exception=continue`, leak checks);
    /// otherwise a run with nothing to report writes nothing of its own.
    pub always_summarize: bool,
    /// `--inherit-check`: report the handles that cross an exec
    /// implicitly (inherit.rs).
    pub inherit_check: bool,
    /// Variables set in the job's environment (over the inherited ones):
    /// the per-test plugin's PYTHONPATH and PYTEST_PLUGINS.
    pub env: Vec<(OsString, OsString)>,
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
    /// Handles reported crossing an exec implicitly (`--inherit-check`).
    pub crossings: usize,
    /// SIGINT or SIGTERM ended the wait for a process left stopped for a
    /// debugger (`--on-exception=stop`): the signal.
    pub interrupted: Option<i32>,
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

pub(super) type TableRef = Rc<RefCell<FdTable>>;

/// Work left for a thread's syscall-exit stop.
#[derive(Clone, Debug)]
pub(super) enum ExitWork {
    /// A call that may create fds: register what it returned.
    Create {
        desc: &'static Desc,
        entry: Regs,
        stack: Option<Stack>,
    },
    /// close_range(first, last, flags).
    CloseRange { entry: Regs },
    /// getdents64 of the fd directory of process `pid`: hide tombstones.
    Listing { entry: Regs, pid: i32 },
    /// poll/ppoll over these hidden numbers: they must read POLLNVAL.
    Poll { entry: Regs, hidden: Vec<i32> },
    /// A close the judge gives a quarantined number back with: it ran on
    /// the tombstone; the program must see EBADF, as natively.
    Release,
}

/// A creation let run without a stop at its exit: the new fd was
/// predicted (the kernel hands out the lowest free number, and we know the
/// table) and is confirmed at the thread's next stop, before anything else.
#[derive(Clone, Debug)]
pub(super) struct Predicted {
    pub(super) name: &'static str,
    pub(super) stack: Option<Stack>,
    /// The numbers the call takes if it succeeds (pipe and socketpair take
    /// the two lowest free ones, in order).
    pub(super) fds: Vec<i32>,
}

pub(super) struct Thread {
    pub(super) tgid: i32,
    pub(super) table: TableRef,
    pub(super) pending: Option<ExitWork>,
    pub(super) predicted: Option<Predicted>,
    /// The judge's memory of this thread's recent calls (close sweeps).
    pub(super) memo: handles_model::judge::Memo,
    /// The report of a close the judge held until the thread's next call
    /// shows whether a sweep follows (`judge::Verdict::Hold`).
    pub(super) held: Option<Box<HeldReport>>,
    /// Its first stop (the auto-attach stop) has been seen and resumed.
    pub(super) started: bool,
    /// PTRACE_EVENT_EXIT seen: it is on its way out.
    pub(super) exiting: bool,
}

/// A report held by the judge (see `Thread::held`).
pub(super) struct HeldReport {
    pub(super) report: ExceptionReport,
    pub(super) action: Action,
}

pub(super) struct Process {
    /// The dynamic loader's AT_BASE (0: none, or unknown) and, once asked,
    /// where its image ends: closes made from there are the loader's own
    /// (the libraries it opened), never the program's handles.
    pub(super) loader: (u64, Option<u64>),
    /// The image is a shell (`judge::is_shell` of /proc/PID/exe), read at
    /// first need.
    pub(super) shell: Option<bool>,
    /// RLIMIT_NOFILE, cached: a stale value only risks an EMFILE, which
    /// releases the quarantine and retries the call anyway.
    pub(super) nofile: Option<(u64, u32)>,
    pub(super) name: String,
    pub(super) policy: Policy,
    pub(super) maps: Option<ModuleMap>,
    /// Set while the process is being detached for `--on-exception=stop`.
    pub(super) detaching: bool,
    /// `--max-handles` was already reported for this process.
    pub(super) over_budget: bool,
    /// The table of the shim loaded in it, once announced.
    pub(super) shim: Option<ShimTable>,
    /// The process will make a shim table the supervisor has not learned
    /// of yet (after an exec, until the shim's announcement; in a forked
    /// child, until its first table write, which may never come): no
    /// table of the supervisor's own is published for it.
    pub(super) awaiting_shim: bool,
    /// Between an exec that loads the shim and its announcement: what
    /// closes then are the dynamic loader's and the constructors', not
    /// worth quarantining (tombstones the shim never learns of would cost
    /// the program fd numbers and an early EMFILE).
    pub(super) loading: bool,
    /// The strict filter is installed: library code stops too. Inherited
    /// across fork and exec (seccomp filters are).
    pub(super) strict: bool,
    /// `/proc/PID/fd`, held open for cheap per-fd lookups.
    pub(super) fd_dir: Option<std::os::fd::OwnedFd>,
    /// The model's open handles predate the last exec and were not
    /// checked against what survived it (O_CLOEXEC): `sync_shim` does
    /// that before anything reads the model.
    pub(super) exec_unverified: bool,
    /// The process it was forked from, until it execs (`--inherit-check`
    /// compares what crosses its exec with what the parent holds).
    pub(super) forked_from: Option<i32>,
    /// Handles (fd, generation) made inheritable on purpose in this image
    /// (`fcntl(F_SETFD)` clearing close-on-exec, `ioctl(FIONCLEX)`).
    pub(super) inheritable: HashSet<(i32, u32)>,
}

/// A bad fd use found at a syscall's entry.
pub(super) enum Bad {
    /// The number is quarantined: this process closed it.
    Stale,
    /// Quarantined in the parent before fork: this process never had it.
    StaleInherited,
    /// The tombstone source: the program can only know the number from
    /// listing /proc/self/fd.
    Internal,
    /// Not open, and not quarantined (never opened, or closed long ago).
    NotOpen,
}

pub(super) static FORWARD_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// SIGINT or SIGTERM reached `handles`, from whatever sender (a terminal's
/// Ctrl-C included): while a process waits stopped for a debugger, it ends
/// the wait (`Job::end_wait`).
pub(super) static END_WAIT: AtomicI32 = AtomicI32::new(0);

/// How long a wait for the job blocks while a process is left stopped for
/// a debugger: a SIGTERM landing between the loop's check and waitpid
/// would otherwise go unseen until the next event, which may never come.
const WAIT_TICK_US: libc::suseconds_t = 200_000;

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    if sig == libc::SIGINT || sig == libc::SIGTERM {
        END_WAIT.store(sig, Ordering::SeqCst);
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // A terminal's Ctrl-C (SI_KERNEL) reached the whole foreground group,
    // the job included; only a signal sent to us alone needs forwarding.
    if code == libc::SI_USER || code == libc::SI_QUEUE || code == libc::SI_TKILL {
        FORWARD_SIGNAL.store(sig, Ordering::SeqCst);
        // The main loop forwards it when waitpid returns EINTR; if this
        // handler ran just before waitpid was entered (after the loop's
        // check), nothing would wake it while the job stays quiet (a
        // program blocked in read). A 5 ms timer ends that wait; it
        // repeats (a loaded machine may preempt the loop for longer than
        // that just there) until the loop takes the signal and stops it.
        let t = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 5000,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 5000,
            },
        };
        // SAFETY: setitimer with a local value; a raw syscall, safe in a
        // signal handler.
        unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
    }
}

/// Stops the timer `on_signal` started: its signal was taken.
fn stop_wake_timer() {
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let t = libc::itimerval {
        it_interval: zero,
        it_value: zero,
    };
    // SAFETY: setitimer with a local value.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
}

/// SIGALRM (the timer above): only interrupts the main loop's waitpid.
extern "C" fn on_alarm(_: libc::c_int) {}

/// SIGALRM was ignored when `handles` started: the program must start
/// with it ignored too (spawn.rs), as it would natively.
pub(super) static ALARM_IGNORED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
static ALARM_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn install_forwarding() {
    // SAFETY: reading the current action, then installing a handler that
    // does nothing; no SA_RESTART, so a blocked waitpid returns EINTR.
    // exec resets it to the default in the program.
    unsafe {
        if !ALARM_SET.swap(true, Ordering::SeqCst) {
            let mut old: libc::sigaction = std::mem::zeroed();
            let ignored = libc::sigaction(libc::SIGALRM, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN;
            ALARM_IGNORED.store(ignored, Ordering::SeqCst);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // A signal ignored when we started (nohup, a shell's `cmd &`) stays
        // ignored, for us and, through spawn's reset, for the program: as
        // natively, where the program inherits the ignored disposition.
        // SAFETY: reading the current action into a local struct.
        let ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            continue;
        }
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

extern "C" fn on_tick(_sig: libc::c_int) {}

/// SIGALRM interrupts waitpid (no SA_RESTART) so the loop looks at
/// END_WAIT again; see WAIT_TICK_US.
fn install_tick() {
    // SAFETY: installing a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_tick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
    }
}

/// Arms a one-shot SIGALRM in `us` microseconds (0 disarms).
fn tick_in(us: libc::suseconds_t) {
    let it = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: us,
        },
    };
    // SAFETY: setitimer reads the local struct; no old value is asked for.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}

pub(super) fn random_u64() -> u64 {
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

pub(super) fn comm(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub(super) fn fd_exists(tgid: i32, fd: i32) -> bool {
    // kcmp(KCMP_FILE) of an fd with itself answers "is it open" in one
    // syscall, without walking /proc paths (a stat of /proc/PID/fd/N costs
    // several times more, on a path taken at every predicted creation).
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes plain integers and reads no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, tgid, tgid, KCMP_FILE, fd, fd) };
    if r == 0 {
        return true;
    }
    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
        return false;
    }
    std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{fd}")).is_ok()
}

/// The fd numbers listed in a `/proc/.../fd` directory (empty if it cannot
/// be read).
pub(super) fn fd_numbers(dir: &str) -> Vec<i32> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The soft RLIMIT_NOFILE of a process.
/// A process's auxiliary vector (`/proc/PID/auxv`), read once.
pub(super) struct Auxv(Vec<u8>);

impl Auxv {
    pub(super) fn read(tgid: i32) -> Option<Auxv> {
        std::fs::read(format!("/proc/{tgid}/auxv")).ok().map(Auxv)
    }

    /// The value of entry `key`.
    pub(super) fn get(&self, key: u64) -> Option<u64> {
        self.0.chunks_exact(16).find_map(|c| {
            let k = u64::from_ne_bytes(c[..8].try_into().ok()?);
            let v = u64::from_ne_bytes(c[8..].try_into().ok()?);
            (k == key).then_some(v)
        })
    }
}

pub(super) fn nofile_limit(tgid: i32) -> u64 {
    crate::inspect::shared::nofile(tgid).map_or(1024, |(soft, _)| soft)
}

/// The job and its supervisor state.
pub struct Job {
    pub(super) opts: RunOptions,
    /// `opts.policy` as HANDLES_POLICY carries it to every image.
    pub(super) policy_text: String,
    pub(super) cookie: u64,
    pub(super) threads: HashMap<i32, Thread>,
    pub(super) procs: HashMap<i32, Process>,
    /// Tids whose first stop came before their parent's fork/clone event.
    pub(super) unborn: HashSet<i32>,
    pub(super) root: i32,
    pub(super) root_exit: Option<Exit>,
    pub(super) exec_error: Option<std::os::fd::OwnedFd>,
    pub(super) root_execed: bool,
    pub(super) deferred: Deferred,
    pub(super) unwinder: Unwinder,
    pub(super) symbolizer: Symbolizer,
    /// Python frames of CPython programs (backtrace/python.rs).
    pub(super) python: crate::backtrace::python::PythonResolver,
    pub(super) exceptions: usize,
    pub(super) suppressed: usize,
    pub(super) leak_reports: Vec<ProcessLeaks>,
    /// `--inherit-check`'s findings.
    pub(super) crossings: super::inherit::Crossings,
    /// Test boundaries of each process (`handles_checkpoint`, pertest.rs).
    pub(super) segments: HashMap<i32, super::pertest::Segments>,
    /// What tests leaked.
    pub(super) test_leaks: Vec<super::pertest::TestLeaks>,
    pub(super) exception_list: Vec<SerException>,
    /// Index in `exception_list` of each report context seen.
    pub(super) contexts: HashMap<String, usize>,
    /// The job tree, for the JSON report.
    pub(super) tree: std::collections::BTreeMap<i32, SerProcess>,
    pub(super) log: Option<std::fs::File>,
    /// Published tables, by process.
    pub(super) published: HashMap<i32, Published>,
    /// The shim was put in the job's environment.
    pub(super) shim_injected: bool,
    /// The strict filter, to install in a process that will not load the
    /// shim (a static binary, an environment without LD_PRELOAD) when the
    /// job started under the lenient one; None when the job is strict
    /// from the start.
    pub(super) strict_filter: Option<Vec<libc::sock_filter>>,
    /// Offset of a `syscall` instruction in the vDSO (the same image in
    /// every process), where filters are injected from.
    pub(super) vdso_syscall: Option<u64>,
    /// Processes left stopped for a debugger (`--on-exception=stop`).
    pub(super) stopped: Vec<i32>,
    /// The signal that ended the wait for them.
    pub(super) ended_by: Option<i32>,
}

impl Job {
    /// Starts the program under supervision and serves the job until every
    /// process in it has exited.
    pub fn run(opts: RunOptions) -> Result<Outcome, RunError> {
        Self::run_with(opts, &mut |_| {})
    }

    /// [`Job::run`], calling `on_root_exit` once, with what is known so
    /// far (`leak_reports` left empty), as soon as the program it started
    /// has exited, while its descendants may still run: the status
    /// `handles run` returns without `--wait-all` (`front.rs`).
    pub fn run_with(
        opts: RunOptions,
        on_root_exit: &mut dyn FnMut(&Outcome),
    ) -> Result<Outcome, RunError> {
        let path_var = std::env::var_os("PATH");
        let program = spawn::resolve(&opts.program, path_var.as_deref())?;
        let cookie = random_u64();
        let spec = FilterSpec {
            traced: syscalls::traced(opts.check, |d| {
                super::checks::judged_at_every_call(d, &opts.policy, opts.max_handles.is_some())
            }),
            cookie: Some(cookie),
            allow_ip: None,
        };
        let compile =
            |spec: &FilterSpec| seccomp::compile(spec).map_err(|e| RunError::Filter(e.to_string()));
        let strict_filter = compile(&spec)?;
        // With the shim, library code (libc's internal calls, ld.so, the
        // shim) stops only for what the shim marks: see docs/shim.md.
        let lenient = opts.shim.is_some() && !opts.strict;
        let (filter, strict_filter) = if lenient {
            let spec = FilterSpec {
                allow_ip: Some(syscalls::LIBRARY_IPS),
                ..spec
            };
            (compile(&spec)?, Some(strict_filter))
        } else {
            (strict_filter, None)
        };
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
            .filter(|(k, _)| k != penv::POLICY.name() && k != penv::JOB.name())
            .collect();
        let policy_text = opts.policy.encode();
        env.push((penv::POLICY.name().into(), policy_text.clone().into()));
        if let Some(shim) = &opts.shim {
            // Preloaded into every dynamically linked program of the job;
            // its raw syscalls carry the cookie, which the prefilter lets
            // through without a stop.
            let preload = spawn::preload_env(shim, opts.quarantine, opts.stack_depth);
            env.retain(|(k, _)| k != penv::COOKIE.name() && !preload.iter().any(|(p, _)| p == k));
            env.extend(preload);
            env.push((
                penv::COOKIE.name().into(),
                CookieText::new(cookie).as_str().into(),
            ));
            // Announcements (a stop each) only where something reads the
            // table early: the strict filter's reconciliation, the fork
            // snapshot a leak check needs. Otherwise the table is found by
            // its name when first needed (`sync_shim`).
            env.retain(|(k, _)| k != penv::ANNOUNCE.name());
            // The inherit check reads the exec'ing image's table at its
            // exec, when it can no longer be looked for.
            let announce = opts.strict || opts.leak_mode != LeakMode::Off || opts.inherit_check;
            env.push((
                penv::ANNOUNCE.name().into(),
                if announce { penv::ON } else { penv::OFF }.into(),
            ));
            // Where every creating call stops (a new-* entry, a handle
            // budget), the shim marks its own (its table, its tombstone
            // source): they are not the program's handles.
            env.retain(|(k, _)| k != penv::MARK_OWN.name() && k != penv::INHERIT.name());
            if opts.inherit_check {
                env.push((penv::INHERIT.name().into(), penv::ON.into()));
            }
            if opts.policy.judges_new() || opts.max_handles.is_some() {
                env.push((penv::MARK_OWN.name().into(), penv::ON.into()));
            }
        }
        for (k, v) in &opts.env {
            env.retain(|(old, _)| old != k);
            env.push((k.clone(), v.clone()));
        }
        env.push((
            penv::JOB.name().into(),
            std::process::id().to_string().into(),
        ));
        let mut argv = vec![opts.program.clone()];
        argv.extend(opts.args.iter().cloned());

        install_forwarding();
        let exit_events = opts.leak_mode != LeakMode::Off;
        let child = spawn::spawn(&program, &argv, &env, &filter, exit_events)?;
        let root = child.pid;
        let mut job = Job {
            policy_text,
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
            python: crate::backtrace::python::PythonResolver::new(),
            exceptions: 0,
            suppressed: 0,
            leak_reports: Vec::new(),
            crossings: Default::default(),
            segments: HashMap::new(),
            test_leaks: Vec::new(),
            exception_list: Vec::new(),
            contexts: HashMap::new(),
            tree: Default::default(),
            log,
            published: HashMap::new(),
            shim_injected: opts.shim.is_some(),
            strict_filter,
            vdso_syscall: None,
            stopped: Vec::new(),
            ended_by: None,
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
                memo: handles_model::judge::Memo::new(),
                held: None,
                started: true,
                exiting: false,
            },
        );
        job.procs.insert(
            root,
            Process {
                nofile: None,
                name: comm(root),
                policy: job.opts.policy,
                maps: None,
                detaching: false,
                over_budget: false,
                shim: None,
                awaiting_shim: false,
                loading: false,
                strict: !lenient,
                fd_dir: None,
                shell: None,
                loader: (0, None),
                exec_unverified: false,
                forked_from: None,
                inheritable: HashSet::new(),
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
        job.serve(on_root_exit)?;
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
        if job.opts.inherit_check {
            let text = super::inherit::summary(&job.crossings);
            job.write_report(&text);
        }
        job.write_machine_reports()?;
        if job.exceptions > 0 || job.suppressed > 0 || job.opts.always_summarize {
            let summary = job.error_summary();
            job.write_report(&summary);
        }
        Ok(Outcome {
            exit: job.root_exit.unwrap_or(Exit::Code(0)),
            exceptions: job.exceptions,
            suppressed: job.suppressed,
            leaks: job.leak_reports.iter().map(|p| p.count()).sum::<usize>()
                + super::pertest::count(&job.test_leaks),
            leak_reports: job.leak_reports,
            crossings: job.crossings.count(),
            interrupted: job.ended_by,
        })
    }

    pub(super) fn next_status(&mut self) -> Result<Option<WaitStatus>, RunError> {
        if let Some(st) = self.deferred.statuses.pop() {
            return Ok(Some(st));
        }
        for (pid, sig, core) in std::mem::take(&mut self.deferred.killed) {
            self.on_gone(pid, Exit::Signal(sig, core));
        }
        loop {
            let end = END_WAIT.swap(0, Ordering::SeqCst);
            if end != 0 && !self.stopped.is_empty() && self.ended_by.is_none() {
                // Ours to act on, not the job's to receive.
                FORWARD_SIGNAL.store(0, Ordering::SeqCst);
                self.end_wait(end);
            }
            if self.ended_by.is_some() && !self.detach_pending() {
                return Ok(None);
            }
            // The timer stops before the take: a signal that comes after
            // the take starts it again.
            if FORWARD_SIGNAL.load(Ordering::SeqCst) != 0 {
                stop_wake_timer();
            }
            let sig = FORWARD_SIGNAL.swap(0, Ordering::SeqCst);
            if sig != 0 {
                self.forward(sig);
            }
            let ticking = !self.stopped.is_empty();
            if ticking {
                tick_in(WAIT_TICK_US);
            }
            let waited = tracer::wait(None);
            if ticking {
                tick_in(0);
            }
            match waited {
                Ok(tracer::Waited::Status(st)) => return Ok(Some(st)),
                // Real-time signals: passed on as they came.
                Ok(tracer::Waited::SignalStop(tid, sig)) => {
                    let detach = self.is_detaching(tid);
                    if detach {
                        self.threads.remove(&tid);
                    }
                    // ESRCH: killed meanwhile; its exit comes next.
                    let _ = tracer::resume_with(tid, sig, detach);
                }
                Ok(tracer::Waited::Killed(pid, sig, core)) => {
                    self.on_gone(pid, Exit::Signal(sig, core));
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Ok(None),
                Err(e) => return Err(RunError::Wait(e)),
            }
        }
    }

    /// SIGINT/SIGTERM while processes wait stopped for a debugger: they stay
    /// stopped (detached, so the exit of `handles`, whose EXITKILL kills
    /// every tracee, spares them), the rest of the job is killed, and
    /// `handles` exits with 128 + the signal. Detaching the rest instead
    /// would leave them running with a seccomp filter nobody serves: every
    /// fd syscall failing with ENOSYS.
    pub(super) fn end_wait(&mut self, sig: i32) {
        self.ended_by = Some(sig);
        let name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        let stopped: Vec<String> = self.stopped.iter().map(i32::to_string).collect();
        self.write_report(&format!(
            "handles: {name}: the wait is over; the job's other processes are killed, \
             process {} stays stopped for the debugger\n",
            stopped.join(", ")
        ));
        let others: HashSet<i32> = self
            .threads
            .values()
            .map(|t| t.tgid)
            .filter(|tgid| !self.procs.get(tgid).is_some_and(|p| p.detaching))
            .collect();
        for tgid in others {
            // SAFETY: kill(2) of one of our tracees.
            unsafe { libc::kill(tgid, libc::SIGKILL) };
        }
    }

    /// A process marked for detaching still has an attached thread (its
    /// SIGSTOP has not been seen yet): exiting now would kill it.
    fn detach_pending(&self) -> bool {
        self.threads
            .values()
            .any(|t| self.procs.get(&t.tgid).is_some_and(|p| p.detaching))
    }

    /// Sends a signal the supervisor received to every process of the job.
    pub(super) fn forward(&self, sig: i32) {
        let tgids: HashSet<i32> = self.threads.values().map(|t| t.tgid).collect();
        for tgid in tgids {
            // SAFETY: kill(2) with a pid of our own tracee.
            unsafe { libc::kill(tgid, sig) };
        }
    }

    pub(super) fn serve(&mut self, on_root_exit: &mut dyn FnMut(&Outcome)) -> Result<(), RunError> {
        let mut told = false;
        while let Some(st) = self.next_status()? {
            let tid = st.pid().map(|p| p.as_raw());
            self.dispatch(st);
            if let Some(tid) = tid {
                self.publish(tid);
            }
            self.raise_held_signals();
            // A program that never exec'd is told at the end, with the
            // exec error.
            // When the program was the job's last process, the front is
            // told at the very end instead, after the reports, the
            // summary and the --report/--sarif files are written: whoever
            // runs `handles run` finds them complete when it returns.
            if !told && self.root_execed && !self.threads.is_empty() {
                if let Some(exit) = self.root_exit {
                    told = true;
                    on_root_exit(&Outcome {
                        exit,
                        exceptions: self.exceptions,
                        suppressed: self.suppressed,
                        leaks: self.leak_reports.iter().map(|p| p.count()).sum::<usize>()
                            + super::pertest::count(&self.test_leaks),
                        leak_reports: Vec::new(),
                        crossings: self.crossings.count(),
                        interrupted: self.ended_by,
                    });
                }
            }
        }
        Ok(())
    }

    /// Signals that arrived while we ran a syscall inside a thread.
    pub(super) fn raise_held_signals(&mut self) {
        for (tid, sig) in std::mem::take(&mut self.deferred.signals) {
            if let Some(t) = self.threads.get(&tid) {
                // SAFETY: tgkill to one of our tracees.
                unsafe { libc::syscall(libc::SYS_tgkill, t.tgid, tid, sig) };
            }
        }
    }

    /// Brings the published table of `tid`'s process up to date.
    pub(super) fn publish(&mut self, tid: i32) {
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let tgid = t.tgid;
        match self.procs.get(&tgid) {
            Some(p) if p.shim.is_some() => {
                self.publish_to_shim(tid, tgid);
                return;
            }
            // Its shim will make the table (a memfd per short-lived
            // process would cost more than the process's own work).
            Some(p) if p.awaiting_shim => return,
            _ => {}
        }
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
                if let Some(p) = self.published.get_mut(&tgid) {
                    p.set_from(&table, fd);
                }
            }
            return;
        }
        if let Some(p) = self.published.get_mut(&tgid) {
            for fd in dirty {
                p.set_from(&table, fd);
            }
        }
    }

    pub(super) fn resume(&self, tid: i32, sig: Option<Signal>) {
        // ESRCH: the thread was killed meanwhile; its exit comes next.
        let _ = ptrace::cont(Pid::from_raw(tid), sig);
    }

    pub(super) fn dispatch(&mut self, st: WaitStatus) {
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

    pub(super) fn on_gone(&mut self, tid: i32, exit: Exit) {
        // A report held for a sweep that never came (without exit events,
        // this is the first the supervisor hears of the thread's end).
        self.flush_held(tid, false);
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
    pub(super) fn on_event_stop(&mut self, tid: i32, sig: Signal) {
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

    pub(super) fn on_new_task(&mut self, tid: i32) {
        let child = match ptrace::getevent(Pid::from_raw(tid)) {
            Ok(c) => c as i32,
            Err(_) => {
                self.resume(tid, None);
                return;
            }
        };
        let Some(ptgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            self.resume(tid, None);
            return;
        };
        // The child's model starts as a copy of the parent's.
        self.sync_shim(tid, ptgid);
        let Some(parent) = self.threads.get(&tid) else {
            self.resume(tid, None);
            return;
        };
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
            let (name, policy, strict, awaiting_shim, loading, inheritable, shell) =
                match self.procs.get(&ptgid) {
                    // The child's shim makes it a table at its first write.
                    Some(p) => (
                        p.name.clone(),
                        p.policy,
                        p.strict,
                        p.shim.is_some() || p.awaiting_shim,
                        p.loading,
                        p.inheritable.clone(),
                        // A forked child runs its parent's image.
                        p.shell,
                    ),
                    None => (
                        comm(child),
                        self.opts.policy,
                        true,
                        false,
                        false,
                        HashSet::new(),
                        None,
                    ),
                };
            // A forked child carries its parent's name until it execs.
            self.tree.insert(
                child,
                SerProcess {
                    pid: child,
                    parent: Some(ptgid),
                    names: vec![name.clone()],
                    exit: None,
                },
            );
            self.procs.insert(
                child,
                Process {
                    nofile: None,
                    name,
                    policy,
                    maps: None,
                    detaching: false,
                    over_budget: false,
                    shim: None,
                    awaiting_shim,
                    loading,
                    strict,
                    fd_dir: None,
                    shell,
                    loader: (0, None),
                    exec_unverified: false,
                    forked_from: Some(ptgid),
                    inheritable,
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
                memo: handles_model::judge::Memo::new(),
                held: None,
                started,
                exiting: false,
            },
        );
        if started {
            self.resume(child, None);
        }
        self.resume(tid, None);
    }

    pub(super) fn on_exec(&mut self, tid: i32) {
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
        // A report held at the old image's last close is due: the new
        // image starts with no sweep to continue.
        self.flush_held(tid, false);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.memo = handles_model::judge::Memo::new();
        }
        // de_thread killed every other thread of the process.
        self.threads.retain(|&k, t| k == tid || t.tgid != tgid);
        // The program's own exec: what crosses it is what `handles run`
        // was given, not the job's doing.
        let spawn_exec = !self.root_execed && (tid == self.root || tgid == self.root);
        if tid == self.root || tgid == self.root {
            self.root_execed = true;
            self.exec_error = None;
        }
        // The new image has not run yet: its environment, auxiliary vector
        // and name are read from its initial stack (two process_vm_readv
        // calls) rather than from four /proc files (~100 µs an exec).
        let info = tracer::getregs(tid)
            .ok()
            .and_then(|r| ExecInfo::from_regs(tid, &r));
        let proc_env = match &info {
            Some(_) => Vec::new(),
            None => std::fs::read(format!("/proc/{tgid}/environ")).unwrap_or_default(),
        };
        let var = |name: &[u8]| match &info {
            Some(i) => i.env(name),
            None => super::execinfo::getenv_in(&proc_env, name),
        };
        let nested = self.nested_policy(tgid, var(penv::POLICY.name().as_bytes()));
        let awaiting_shim = self.opts.shim.as_deref().is_some_and(|shim| {
            super::shimtable::will_load(tid, tgid, shim, var(b"LD_PRELOAD"), info.as_ref())
        });
        let lenient = self.procs.get(&tgid).is_some_and(|p| !p.strict);
        if self.opts.inherit_check && !spawn_exec {
            let into = info
                .as_ref()
                .and_then(|i| i.execfn())
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .unwrap_or_else(|| comm(tgid));
            self.inherit_check(tid, tgid, &into);
        }
        // exec unshares the fd table and closes O_CLOEXEC fds (tombstones
        // and the tombstone source among them).
        let old = self.threads[&tid].table.clone();
        let mut table = old.borrow().unshared_copy();
        // Which fds survived the exec: an image that will load the shim
        // under the lenient filter is told by the shim's table, if anything
        // ever needs to know (`sync_shim`); listing /proc/PID/fd here cost
        // every exec ~50 µs. Tombstones and the tombstone source are
        // O_CLOEXEC: gone either way.
        // The inherit check needs to know, at the image's own exec, what
        // it held from the start (a shim makes its table only when first
        // needed, and may never).
        let deferred = awaiting_shim && lenient && !self.opts.inherit_check;
        let present: Option<HashSet<i32>> = (!deferred).then(|| {
            fd_numbers(&format!("/proc/{tgid}/fd"))
                .into_iter()
                .collect()
        });
        let survived = |fd: i32| present.as_ref().is_some_and(|p| p.contains(&fd));
        for fd in table.numbers() {
            match table.get(fd) {
                Some(Slot::Tombstone(_)) if !survived(fd) => table.drop_tombstone(fd),
                Some(Slot::Open(_)) if present.is_some() && !survived(fd) => table.close(
                    fd,
                    None,
                    tgid,
                    ObjectFacts::default(),
                    "exec (O_CLOEXEC)",
                    false,
                ),
                _ => {}
            }
        }
        if table.tomb_src.is_some_and(|s| !survived(s)) {
            table.set_tomb_src(None);
        }
        for fd in present.into_iter().flatten() {
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
        // Its tests are its own.
        self.segments.remove(&tgid);
        let name = info
            .as_ref()
            .and_then(ExecInfo::comm_guess)
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_else(|| comm(tgid));
        if let Some(p) = self.tree.get_mut(&tgid) {
            p.names.push(name.clone());
        }
        if !awaiting_shim && lenient {
            self.make_strict(tid, tgid);
        }
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.awaiting_shim = awaiting_shim;
            p.loading = awaiting_shim;
            // The inherit check asks at the image's own exec, when
            // /proc/PID/exe already names the next one: read now.
            p.shell = self
                .opts
                .inherit_check
                .then(|| super::inherit::image_is_shell(tgid));
            p.loader = (
                info.as_ref()
                    .and_then(|i| i.auxv(libc::AT_BASE))
                    .unwrap_or(0),
                None,
            );
            p.exec_unverified = deferred;
            p.forked_from = None;
            p.inheritable.clear();
            p.name = name;
            p.maps = None;
            p.nofile = None;
            // The new image loads its own shim, with a new table.
            p.shim = None;
            if let Some(policy) = nested {
                p.policy = policy;
            }
        }
        // Issue 6 (privilege.rs): one line when the new image is set-ID or
        // has file capabilities.
        if let Some(n) = super::privilege::notice_for_exec(tgid, self.shim_injected) {
            self.write_report(&n);
        }
        self.resume(tid, None);
    }

    /// A nested `handles run` passes its policy to the new image through
    /// HANDLES_POLICY; it is taken only where the enclosing job allows.
    pub(super) fn nested_policy(&self, tgid: i32, value: Option<&[u8]>) -> Option<Policy> {
        let text = std::str::from_utf8(value?).ok()?;
        // Every image carries the job's own policy (the shim reads it):
        // applied to a process that has the job's policy, it changes
        // nothing, and decoding it cost every exec 4% of the supervisor.
        if text == self.policy_text && self.procs.get(&tgid)?.policy == self.opts.policy {
            return None;
        }
        let wanted = Policy::decode(text).ok()?;
        // Zircon's rule for nested jobs: start from the parent's policy and
        // change only what it left overridable.
        let mut p = self.procs.get(&tgid)?.policy;
        for (c, e) in wanted.entries() {
            p.set(c, e).ok()?;
        }
        Some(p)
    }

    pub(super) fn capture_stack(
        &mut self,
        tid: i32,
        tgid: i32,
        regs: Option<&Regs>,
    ) -> Option<Stack> {
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
        // A stop on a call the shim issues for the program (a bad call it
        // hands over, a marker) starts in the shim's own frames, which
        // reports leave out (`symbolize`): they must not count against
        // the depth, or `--stack-depth 3` would leave such a backtrace
        // empty. Unwind past them, then cut after `depth` frames of the
        // program's.
        let from_shim = in_shim(maps, regs.rip);
        let want = if from_shim {
            depth + SHIM_FRAMES
        } else {
            depth
        };
        let first = self
            .unwinder
            .unwind_detailed(tid, maps, StartRegs::from(regs), want);
        let mut pcs = match first.stop {
            // Code mapped since the snapshot (dlopen): refresh once.
            StopReason::OutsideMappings(_) => match ModuleMap::read(tgid) {
                Ok(fresh) => {
                    let again = self
                        .unwinder
                        .unwind(tid, &fresh, StartRegs::from(regs), want);
                    proc_.maps = Some(fresh);
                    again
                }
                Err(_) => first.frames,
            },
            _ => first.frames,
        };
        if from_shim {
            // The shim's frames stay (the first is the stop's own address,
            // which `symbolize` takes as an instruction pointer, the rest
            // as return addresses; it then leaves them all out).
            let shim = proc_.maps.as_ref().map_or(0, |maps| {
                pcs.iter().take_while(|&&pc| in_shim(maps, pc)).count()
            });
            pcs.truncate(shim + depth);
        }
        self.append_python(tid, tgid, regs, &mut pcs);
        Some(Arc::new(pcs))
    }

    /// Appends the Python frames of stopped thread `tid` to its native
    /// stack `pcs`, when its process runs a CPython interpreter.
    pub(super) fn append_python(&mut self, tid: i32, tgid: i32, regs: &Regs, pcs: &mut Vec<u64>) {
        let Some(proc_) = self.procs.get_mut(&tgid) else {
            return;
        };
        if proc_.maps.is_none() {
            proc_.maps = ModuleMap::read(tgid).ok();
        }
        let Some(maps) = proc_.maps.as_ref() else {
            return;
        };
        let Some(interp) = self.python.interpreter(maps) else {
            return;
        };
        // On x86_64 glibc the thread pointer (fs base) is pthread_self(),
        // which CPython keeps as the thread state's thread_id.
        let frames = self.python.capture(tid, tgid, &interp, regs.fs_base);
        crate::backtrace::python::encode(&frames, pcs);
    }

    pub(super) fn symbolize(
        &mut self,
        tgid: i32,
        stack: Option<&Stack>,
    ) -> Vec<crate::backtrace::Frame> {
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
        let (native, py_frames) = crate::backtrace::python::decode(stack);
        let frames = self.symbolizer.symbolize(&maps, &native, true);
        // The shim's own frames (its wrappers, its report path) are ours,
        // not the program's: a report starts at the program's call.
        let mut frames: Vec<_> = frames
            .into_iter()
            .filter(|f| {
                !f.module_name()
                    .is_some_and(|m| m.starts_with("libhandles_shim"))
            })
            .collect();
        if !py_frames.is_empty() {
            let interp = self.python.interpreter(&maps);
            // The shim's code registry names code objects freed since.
            let view = self
                .procs
                .get(&tgid)
                .and_then(|p| p.shim.as_ref())
                .and_then(|s| s.table())
                .and_then(|m| m.view().ok());
            let codes = view.as_ref().map(|v| v.codes());
            let resolved = self
                .python
                .resolve(tgid, interp.as_ref(), codes.as_ref(), &py_frames);
            frames = crate::backtrace::python::merge(frames, resolved, &py_frames);
        }
        for (i, f) in frames.iter_mut().enumerate() {
            f.index = i;
        }
        frames
    }

    /// Makes the syscall at an entry stop fail with `errno` without running.
    pub(super) fn skip_with(&self, tid: i32, mut regs: Regs, errno: i32) {
        regs.orig_rax = u64::MAX;
        regs.rax = (-(errno as i64)) as u64;
        let _ = tracer::setregs(tid, &regs);
    }

    /// The action of one condition for a process, without copying its policy
    /// (asked on every socket and epoll call when wrong-object is on).
    pub(super) fn action_of(&self, tgid: i32, c: Condition) -> Action {
        self.procs
            .get(&tgid)
            .map_or(&self.opts.policy, |p| &p.policy)
            .get(c)
            .action
    }

    pub(super) fn policy_of(&self, tgid: i32) -> Policy {
        self.procs
            .get(&tgid)
            .map(|p| p.policy)
            .unwrap_or_else(|| self.opts.policy)
    }

    /// Writes an exception report and counts it. Reports are counted per
    /// context (the offending stack and the stack that closed the handle,
    /// as valgrind's are): the first of a context is written in full,
    /// later ones only counted, in the summary and in `--report`/`--sarif`.
    pub(super) fn emit(&mut self, report: &ExceptionReport) {
        self.exceptions += 1;
        let key = report.context_key();
        if let Some(&i) = self.contexts.get(&key) {
            if let Some(e) = self.exception_list.get_mut(i) {
                e.count += 1;
            }
            return;
        }
        self.contexts.insert(key, self.exception_list.len());
        let mut text = report.render();
        if self.opts.gen_suppressions {
            // Printed bare after the report, ready to paste into a
            // suppressions file, as after a leak report.
            text.push_str(&self.rule_for(report));
        }
        self.write_report(&text);
        self.exception_list.push(SerException::first_of(report));
    }

    /// valgrind's closing line, in every mode, so that a CI log always
    /// ends with a count.
    pub(super) fn error_summary(&self) -> String {
        let summary = handles_model::report::Summary {
            exceptions: self.exceptions as u64,
            contexts: self.contexts.len() as u64,
            suppressed: self.suppressed as u64,
            this_process: false,
        };
        format!("{summary}\n")
    }

    /// `--gen-suppressions`: the rule that matches exactly this report.
    /// Its object type is the one suppression matching sees (checks.rs):
    /// the closed handle's, which the table still holds at this point.
    fn rule_for(&self, report: &ExceptionReport) -> String {
        let ty = match (report.condition.as_str(), report.fd) {
            ("bad-handle", Some(fd)) => self
                .threads
                .get(&report.tid)
                .and_then(|t| t.table.borrow().closed_info(fd).map(|c| c.facts.ty)),
            _ => None,
        };
        // The first section is the offending call's stack.
        let frames: Vec<FrameRef<'_>> = report
            .sections
            .first()
            .map(|s| FrameRef::all(&s.frames))
            .unwrap_or_default();
        crate::suppress::exception_rule(&report.condition, &report.kind, ty.unwrap_or(""), &frames)
    }

    /// `--report` and `--sarif`, written once the job is over.
    pub(super) fn write_machine_reports(&self) -> Result<(), RunError> {
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
            let mut v = output::json_report(
                &command,
                exit,
                &self.exception_list,
                &self.leak_reports,
                &procs,
                self.suppressed,
            );
            if self.opts.inherit_check {
                super::inherit::add_to_json(&mut v, &self.crossings);
            }
            if self.opts.leak_mode != LeakMode::Off {
                super::pertest::add_to_json(&mut v, &self.test_leaks);
            }
            write(p, &v)?;
        }
        if let Some(p) = &self.opts.sarif {
            let mut v = output::sarif(
                env!("CARGO_PKG_VERSION"),
                &self.exception_list,
                &self.leak_reports,
            );
            if self.opts.inherit_check {
                super::inherit::add_to_sarif(&mut v, &self.crossings);
            }
            if self.opts.leak_mode != LeakMode::Off {
                super::pertest::add_to_sarif(&mut v, &self.test_leaks);
            }
            write(p, &v)?;
        }
        Ok(())
    }

    /// Our output goes to stderr and, with `--log`, to the log file.
    pub(super) fn write_report(&mut self, text: &str) {
        let _ = std::io::stderr().write_all(text.as_bytes());
        if let Some(f) = &mut self.log {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// After a report: kill, trap, or stop the offender, and resume it.
    pub(super) fn raise(&mut self, tid: i32, tgid: i32, action: Action) {
        self.deliver(tid, tgid, action);
        self.resume(tid, None);
    }

    /// The consequence of an exception, without resuming: SIGKILL, a
    /// pending SIGTRAP (delivered when the call returns, as a synchronous
    /// exception would be), a stop for the debugger, or nothing
    /// (`--on-exception=continue`).
    pub(super) fn deliver(&mut self, tid: i32, tgid: i32, action: Action) {
        match action {
            Action::Kill => {
                // SAFETY: kill(2) of one of our tracees.
                unsafe { libc::kill(tgid, libc::SIGKILL) };
            }
            Action::AllowException | Action::DenyException => match self.opts.on_exception {
                OnException::Trap => {
                    // SAFETY: tgkill to one of our tracees.
                    unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, libc::SIGTRAP) };
                }
                OnException::Stop => {
                    if let Some(p) = self.procs.get_mut(&tgid) {
                        p.detaching = true;
                    }
                    // SAFETY: kill(2) of one of our tracees.
                    unsafe { libc::kill(tgid, libc::SIGSTOP) };
                    if self.stopped.is_empty() {
                        install_tick();
                    }
                    if !self.stopped.contains(&tgid) {
                        self.stopped.push(tgid);
                    }
                    // Only the root is our child: its exit reaches us even
                    // detached; another process's does not.
                    let waits_for = if tgid == self.root {
                        format!(
                            "the job's other processes, and process {tgid} once it is resumed, to exit"
                        )
                    } else {
                        "the job's other processes to exit".to_string()
                    };
                    let me = std::process::id();
                    self.write_report(&format!(
                        "handles: process {tgid} is stopped and detached; attach a debugger with: gdb -p {tgid}\n\
                         handles:     or resume it without one: kill -CONT {tgid} (its fd syscalls then fail \
                         with ENOSYS: no supervisor serves its seccomp filter any more)\n\
                         handles: waiting for {waits_for}; Ctrl-C or SIGTERM to handles (pid {me}) ends the \
                         wait: the other processes are killed, {tgid} stays stopped, and handles exits \
                         with 128 + the signal (130, 143)\n"
                    ));
                }
                OnException::Continue => {}
            },
            _ => {}
        }
    }

    /// For `--on-exception=stop`: detaches each thread of a marked process
    /// at its next stop, leaving it stopped.
    /// `tid`'s process is being detached for `--on-exception=stop`.
    pub(super) fn is_detaching(&self, tid: i32) -> bool {
        self.threads
            .get(&tid)
            .and_then(|t| self.procs.get(&t.tgid))
            .is_some_and(|p| p.detaching)
    }

    pub(super) fn detach_if_needed(&mut self, tid: i32, sig: Option<Signal>) -> bool {
        if !self.is_detaching(tid) {
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
}

pub(super) fn exit_json(e: Exit) -> serde_json::Value {
    match e {
        Exit::Code(c) => serde_json::json!({ "code": c }),
        Exit::Signal(s, core) => serde_json::json!({ "signal": s, "core": core }),
    }
}

/// Frames the shim may have on the stack below the program's call (its
/// wrapper, judge, report and syscall functions), unwound beyond
/// `--stack-depth` and then left out.
const SHIM_FRAMES: usize = 16;

/// Whether `pc` lies in the LD_PRELOAD shim (named as `symbolize`'s
/// filter names it).
fn in_shim(maps: &ModuleMap, pc: u64) -> bool {
    maps.module_of(pc).is_some_and(|(path, _)| {
        std::path::Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libhandles_shim"))
    })
}
