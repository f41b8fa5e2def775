//! The job's state: its threads, its processes, and what the supervisor
//! keeps for each; the `Job` value every stop handler works on. The
//! handlers are `impl Job` blocks in the modules named for what they do
//! (`checks`, `quarantine`, `creation`, ...); none of them imports
//! another handler module, and `job` (the loop) is the only one that sees
//! them all.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::rc::Rc;

use super::fdtable::{FdTable, ObjectFacts, Stack};
use super::inherit::Crossings;
use super::leaks::ProcessLeaks;
use super::options::{Exit, RunOptions};
use super::output::{SerException, SerProcess};
use super::pertest::{Segments, TestLeaks};
use super::procfs::{nofile_limit, object_facts_at};
use super::publish::Published;
use super::report::ExceptionReport;
use super::shimtable::{ShimSays, ShimTable};
use super::syscalls::Desc;
use super::tracer::{Deferred, Regs, Stopped};
use crate::backtrace::{ModuleMap, Symbolizer, Unwinder};
use crate::policy::{Action, Condition, Policy};

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

/// The job and its supervisor state.
pub struct Job {
    pub(super) opts: RunOptions,
    /// `opts.policy` as HANDLES_POLICY carries it to every image.
    pub(super) policy_text: String,
    pub(super) cookie: u64,
    pub(super) threads: HashMap<i32, Thread>,
    pub(super) procs: HashMap<i32, Process>,
    /// First stops that came before their parent's fork/clone event, kept
    /// until that event.
    pub(super) unborn: HashMap<i32, Stopped>,
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
    pub(super) crossings: Crossings,
    /// Test boundaries of each process (`handles_checkpoint`, pertest.rs).
    pub(super) segments: HashMap<i32, Segments>,
    /// What tests leaked.
    pub(super) test_leaks: Vec<TestLeaks>,
    pub(super) exception_list: Vec<SerException>,
    /// Index in `exception_list` of each report context seen.
    pub(super) contexts: HashMap<String, usize>,
    /// The job tree, for the JSON report.
    pub(super) tree: std::collections::BTreeMap<i32, SerProcess>,
    pub(super) log: Option<std::fs::File>,
    /// Published tables, by process.
    pub(super) published: HashMap<i32, Published>,
    /// What execs learnt of the files they ran (images.rs).
    pub(super) images: super::images::Images,
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

    /// Our output goes to stderr and, with `--log`, to the log file.
    pub(super) fn write_report(&mut self, text: &str) {
        let _ = std::io::stderr().write_all(text.as_bytes());
        if let Some(f) = &mut self.log {
            let _ = f.write_all(text.as_bytes());
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

    /// `object_facts_at` through the process's cached /proc/PID/fd dirfd.
    pub(super) fn object_facts(&mut self, tgid: i32, fd: i32) -> ObjectFacts {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return object_facts_at(None, tgid, fd);
        };
        if p.fd_dir.is_none() {
            p.fd_dir = std::fs::File::open(format!("/proc/{tgid}/fd"))
                .ok()
                .map(std::os::fd::OwnedFd::from);
        }
        object_facts_at(p.fd_dir.as_ref(), tgid, fd)
    }

    /// What the shim's table of `tgid` says of `fd` (Unknown until the
    /// shim announced its table: before that it has done nothing).
    pub(super) fn shim_says(&self, tgid: i32, fd: i32) -> ShimSays {
        self.procs
            .get(&tgid)
            .and_then(|p| p.shim.as_ref())
            .map_or(ShimSays::Unknown, |s| s.says(fd))
    }

    /// The process's RLIMIT_NOFILE, re-read every 1024 questions.
    pub(super) fn cached_nofile(&mut self, tgid: i32) -> u64 {
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
}
