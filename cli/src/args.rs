//! The command line, as clap sees it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "handles",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    about = "Dump the handle table of live Linux processes, Fuchsia style",
    long_about = "Dump the handle table of live Linux processes, the way Fuchsia's `handles` \
                  tool does: one row per file descriptor with its handle value, the koid of \
                  the kernel object behind it, the related object's koid (a socket's peer, a \
                  pidfd's parent process), Zircon rights and the object type.\n\n\
                  Type filters (-t -v -p -c -e -s, --type) select rows; -r excludes them instead.",
    after_help = "Exit status: 0 shown, 1 handle/koid not found, 2 usage, 3 no such process, \
                  4 permission denied, 5 process exited while being read, 6 other I/O error, \
                  7 a program needed for the output is missing (graph --svg without dot)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub show: ShowArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a program as a job under the ptrace supervisor: every descendant
    /// is tracked, closed fd numbers are quarantined, and the job policy
    /// turns use-after-close and double close into SIGTRAP with a report.
    #[command(
        after_help = "Exit status: the program's, or 128+N when it died of signal N; \
                      --error-exitcode's when something was reported; 130/143 when SIGINT/SIGTERM \
                      ended the wait for a process left stopped by --on-exception=stop; \
                      127 program not found, 126 not executable, 2 usage or malformed policy, \
                      125 the supervisor itself failed."
    )]
    Run(Box<RunArgs>),
    /// Symbolize stacks of process PID read from stdin (hex return
    /// addresses, one per line, an empty line after each stack): what the
    /// shim calls to write its reports under `handles run --no-ptrace`.
    #[command(hide = true)]
    Symbolize {
        /// The process whose memory map the addresses belong to.
        pid: i32,
    },
    /// The graph of kernel objects shared between processes: pipes (which
    /// process holds which end), unix socket pairs and loopback TCP
    /// connections, eventfds, memfds and files held by several processes,
    /// pidfds (process to process). Plain text by default.
    #[command(
        after_help = "Exit status: 0 shown, 2 usage, 3 no such process, 4 permission denied \
                      (for a PID given), 6 other I/O error, 7 --svg without Graphviz's `dot` \
                      (apt-get install graphviz)."
    )]
    Graph(GraphArgs),
    /// A live view of a process's handles (or of the machine's busiest
    /// processes with --all), redrawn in place like top: counts by type,
    /// their rate of change, new handles highlighted, and for a process of
    /// a job the creation site of the fastest-growing group. `q` quits.
    /// When stdout is not a terminal, one line per interval instead.
    #[command(
        after_help = "Exit status: 0 quit (q, Ctrl-C is 130) or --count reached, 2 usage, \
                      3 no such process (or it exited while watched), 4 permission denied, \
                      6 other I/O error."
    )]
    Watch(WatchArgs),
    /// Attach to a running process for a window (--duration, or until
    /// Ctrl-C/SIGTERM to handles): record every fd created and closed with
    /// its creation stack, report uses of handles closed during the window,
    /// then detach and report the handles created during the window and
    /// still open (the leak suspects), grouped by creation stack, and the
    /// creations and closes per stack. The process is never restarted;
    /// every thread is seized with ptrace (no seccomp filter, nothing left
    /// behind: after the detach its TracerPid is 0 and its fd table its own;
    /// numbers closed during the window are quarantined until then). During
    /// the window `handles PID` shows the process's values, generations
    /// and creation stacks; CPython processes get their Python frames.
    #[command(
        after_help = "Exit status: 0 window recorded (whatever it found, unless --error-exitcode), \
                      --error-exitcode's when a leak suspect or exception was reported, \
                      2 usage, 3 no such process, 4 permission denied (another user's process, \
                      Yama's ptrace_scope), 5 the process exited before the window opened, \
                      6 other error, 8 the process is already traced (a debugger, strace).\n\n\
                      If handles itself is killed (even by SIGKILL) the kernel detaches the \
                      process, which runs on; the tombstones of the numbers it quarantined \
                      (O_PATH fds of /, at most --quarantine + 2) stay until its next exec."
    )]
    Attach(AttachArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum AttachOnExceptionArg {
    /// Log the report; the call fails with EBADF as it would without
    /// handles, and the process goes on (the default: a live process).
    Continue,
    /// Deliver SIGTRAP to the offending thread (which usually kills it).
    Trap,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The process (a thread id resolves to its process).
    #[arg(value_name = "PID", allow_negative_numbers = true)]
    pub pid: String,
    /// Length of the window in seconds (fractions allowed); without it,
    /// the window lasts until SIGINT or SIGTERM reaches handles or the
    /// process exits.
    #[arg(long, value_name = "SECS", value_parser = interval)]
    pub duration: Option<f64>,
    /// Wait (polling /proc/PID/fd every --poll-interval) until the process
    /// holds at least N fds, then attach.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub fd_threshold: Option<u64>,
    /// Seconds between two fd counts of --fd-threshold.
    #[arg(long, value_name = "SECS", default_value = "0.1", value_parser = interval)]
    pub poll_interval: f64,
    /// A job policy entry, CONDITION=ACTION (repeatable), applied in the
    /// window as handles run --no-shim applies it: bad-handle,
    /// wrong-object, new-file ... new-other, new-any (docs/policy.md).
    /// Actions: allow, deny, allow-exception, deny-exception, kill.
    /// Default: bad-handle=allow-exception, everything else allowed.
    #[arg(long = "policy", value_name = "CONDITION=ACTION")]
    pub policy: Vec<String>,
    /// What a policy exception does.
    #[arg(long, value_enum, default_value = "continue")]
    pub on_exception: AttachOnExceptionArg,
    /// How many numbers closed during the window each process keeps
    /// quarantined behind a tombstone (0: off; at most 1024). All are
    /// released at detach.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = quarantine_bound)]
    pub quarantine: usize,
    /// Frames recorded for creation and close stacks (0: none).
    #[arg(long, value_name = "N", default_value_t = handles_model::table::DEFAULT_STACK_DEPTH,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(0..=handles_model::table::STACK_DEPTH as u64))]
    pub stack_depth: usize,
    /// Write a JSON report (schema handles.run.v3, plus an "attach" object
    /// with the per-stack counts; docs/report.md).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the exceptions and leak suspects as SARIF 2.1.0.
    #[arg(long, value_name = "FILE")]
    pub sarif: Option<PathBuf>,
    /// Exit with this status when a leak suspect or an exception was
    /// reported.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub error_exitcode: Option<u8>,
    /// Suppression rules for leak suspects and bad-handle exceptions
    /// (repeatable; format in docs/suppressions.md; the built-in rules
    /// apply too).
    #[arg(long = "suppressions", value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Print a ready suppression rule after each exception report and
    /// each group of leak suspects.
    #[arg(long)]
    pub gen_suppressions: bool,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// Processes whose shared objects to show (the other holders may be
    /// any process of the machine).
    #[arg(
        value_name = "PID",
        required_unless_present = "all",
        allow_negative_numbers = true
    )]
    pub pids: Vec<String>,
    /// Every process of the machine.
    #[arg(long, conflicts_with = "pids")]
    pub all: bool,
    /// Graphviz DOT instead of text.
    #[arg(long, conflicts_with_all = ["json", "svg"])]
    pub dot: bool,
    /// JSON: nodes (processes, objects) and edges (handles with their
    /// rights, peer links, pidfds); schema handles.graph.v2 in docs/json.md.
    #[arg(long, conflicts_with = "svg")]
    pub json: bool,
    /// SVG, drawn by Graphviz's `dot` program (which must be installed).
    #[arg(long)]
    pub svg: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The process to watch.
    #[arg(
        value_name = "PID",
        required_unless_present = "all",
        allow_negative_numbers = true
    )]
    pub pid: Option<String>,
    /// Watch every process of the machine (the busiest first).
    #[arg(long, conflicts_with = "pid")]
    pub all: bool,
    /// Seconds between two reads (fractions allowed).
    #[arg(long, short = 'i', value_name = "SECONDS", default_value = "1", value_parser = interval)]
    pub interval: f64,
    /// Stop after N reads (the default: until q, Ctrl-C, or the process exits).
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// `--interval`: a positive number of seconds, at least 10 ms.
fn interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || !(0.01..=86400.0).contains(&v) {
        return Err(format!("{s} is not between 0.01 and 86400 seconds"));
    }
    Ok(v)
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CheckArg {
    /// Every fd-taking syscall (catches reads and writes on closed fds).
    All,
    /// Only creation, close and dup (cheaper; uses of closed fds are not
    /// reported, though quarantine still makes them fail with EBADF).
    Lifecycle,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LeakCheckArg {
    /// Handles each process created and did not close (stdio and
    /// inherited fds are not leaks).
    Yes,
    /// Every handle still open at exit, inherited ones marked.
    All,
    No,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OnExceptionArg {
    /// Deliver SIGTRAP to the offending thread.
    Trap,
    /// Leave the process stopped and detached, for `gdb -p PID`; handles
    /// waits for the rest of the job. Ctrl-C or SIGTERM to handles ends the
    /// wait: the rest is killed, the process stays stopped, exit 128+signal.
    Stop,
    /// Log the report and resume: the call fails as it would natively
    /// (EBADF) and the program goes on; reports are counted per context
    /// and summed up at the end (ERROR SUMMARY), so a test suite runs to
    /// its end.
    Continue,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A job policy entry, CONDITION=ACTION[:override-deny|:override-allow]
    /// (repeatable). Conditions: bad-handle, wrong-object, new-any, new-file,
    /// new-dir, new-pipe, new-channel, new-socket, new-event, new-port,
    /// new-timer, new-vmo, new-process, new-other. Actions: allow, deny,
    /// allow-exception, deny-exception, kill. Default: bad-handle=allow-exception.
    #[arg(long = "policy", value_name = "CONDITION=ACTION")]
    pub policy: Vec<String>,
    /// Read policy entries from a file (one per line, # comments).
    #[arg(long, value_name = "FILE")]
    pub policy_file: Vec<PathBuf>,
    /// Which syscalls stop the program.
    #[arg(long, value_enum, default_value = "all")]
    pub check: CheckArg,
    /// How many closed fd numbers each process keeps quarantined (0: off;
    /// at most 1024, in every mode; fewer near RLIMIT_NOFILE or, for
    /// select() users, FD_SETSIZE).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = quarantine_bound)]
    pub quarantine: usize,
    /// What a policy exception does.
    #[arg(long, value_enum, default_value = "trap")]
    pub on_exception: OnExceptionArg,
    /// Also append exception reports to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Frames recorded for the stacks that create and close handles (0: none,
    /// at most 64: the table's record).
    #[arg(long, value_name = "N", default_value_t = handles_model::table::DEFAULT_STACK_DEPTH,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(0..=handles_model::table::STACK_DEPTH as u64))]
    pub stack_depth: usize,
    /// At each process exit, report the handles it created and still holds,
    /// grouped by the stack that created them, and a LEAK SUMMARY at the end.
    #[arg(long, value_enum, value_name = "WHICH", num_args = 0..=1, default_missing_value = "yes", require_equals = true)]
    pub leak_check: Option<LeakCheckArg>,
    /// At every exec in the job, report the handles (other than 0, 1, 2)
    /// that cross into the new image implicitly: without O_CLOEXEC and not
    /// placed there on purpose (rule in docs/inherit.md). Needs the
    /// supervisor (not with --no-ptrace).
    #[arg(long)]
    pub inherit_check: bool,
    /// Exit with this status when any leak or policy exception was reported
    /// (the program's own status otherwise).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub error_exitcode: Option<u8>,
    /// Print a ready suppression rule after each report.
    #[arg(long)]
    pub gen_suppressions: bool,
    /// Write a JSON report of every exception and leak, with stacks and the
    /// job tree (schema in docs/report.md).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the exceptions and leaks as SARIF 2.1.0, for code-scanning UIs.
    #[arg(long, value_name = "FILE")]
    pub sarif: Option<PathBuf>,
    /// Preload the LD_PRELOAD shim into dynamically linked programs (the
    /// default): its calls carry the job's cookie and cost no ptrace stop.
    #[arg(long, conflicts_with = "no_shim", hide = true)]
    pub shim: bool,
    /// Do not preload the shim: the supervisor alone sees every fd syscall
    /// (one ptrace stop each; slower, same verdicts).
    #[arg(long, conflicts_with = "no_ptrace")]
    pub no_shim: bool,
    /// The shim alone, no supervisor: the program is exec'd with the shim
    /// preloaded, which checks and quarantines in-process and reports with
    /// module+offset frames (no leak check, no reports of raw syscalls or
    /// static binaries; the program's status is its own).
    #[arg(long, conflicts_with_all = ["leak_check", "inherit_check", "max_handles", "report", "sarif", "log", "gen_suppressions", "suppressions"])]
    pub no_ptrace: bool,
    /// Also stop on fd syscalls made inside shared libraries (libc's own
    /// calls such as stdio's writes or locale loading, the dynamic loader)
    /// in processes the shim covers. By default the shim covers those
    /// processes and only what it passes on stops; --strict catches a bad
    /// handle used by libc itself, at the price of a ptrace stop each.
    #[arg(long, conflicts_with = "no_ptrace")]
    pub strict: bool,

    /// Return only when every process of the job has exited. By default
    /// `handles run` returns as a shell does, when the program it started
    /// exits, with its status; descendants still running stay supervised
    /// in the background until they exit (their reports go to stderr and
    /// the --log/--report/--sarif files).
    #[arg(long, conflicts_with = "no_ptrace")]
    pub wait_all: bool,

    /// A per-process handle budget: creating more than N open handles raises
    /// an exception (catches runaway leaks long before EMFILE).
    #[arg(long, value_name = "N")]
    pub max_handles: Option<usize>,
    /// Suppression rules to apply (repeatable; format in docs/suppressions.md).
    #[arg(long = "suppressions", value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Do not apply the built-in suppressions for known-benign behaviour of
    /// common programs (bash's pipeline double close, the fd bash and dash
    /// keep on their script).
    #[arg(long)]
    pub no_default_suppressions: bool,
    /// The program and its arguments, after `--`.
    #[arg(value_name = "PROG", required = true, last = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// Process ids to dump (a thread id resolves to its process).
    // allow_negative_numbers: `handles -1` is reported as a bad pid, in one
    // line, rather than as an unknown flag.
    #[arg(
        value_name = "PID",
        required_unless_present = "all",
        allow_negative_numbers = true
    )]
    pub pids: Vec<String>,

    /// Show tasks: processes (pidfds).
    #[arg(short = 't', long)]
    pub task: bool,
    /// Show VMOs (memfds).
    #[arg(short = 'v', long)]
    pub vmo: bool,
    /// Show ports (epoll instances).
    #[arg(short = 'p', long)]
    pub port: bool,
    /// Show channels (AF_UNIX sockets).
    #[arg(short = 'c', long)]
    pub channel: bool,
    /// Show events (eventfds).
    #[arg(short = 'e', long)]
    pub event: bool,
    /// Show sockets (every other socket family).
    #[arg(short = 's', long)]
    pub socket: bool,
    /// Show these types (comma separated: file,dir,pipe,channel,socket,event,port,timer,...).
    #[arg(long = "type", value_name = "NAME[,NAME...]", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Exclude the selected types instead of showing only them.
    #[arg(short = 'r', long)]
    pub reverse: bool,

    /// Long view: fd, device, open flags, a description per handle and the
    /// number of distinct objects.
    #[arg(short = 'l', long, conflicts_with_all = ["json", "zxdb"])]
    pub long: bool,
    /// JSON with every field of the long view (schema in docs/json.md).
    #[arg(long, conflicts_with = "zxdb")]
    pub json: bool,
    /// Debugger list view, as zxdb's `handles`: Handle | Type | Koid.
    #[arg(long)]
    pub zxdb: bool,
    /// Debugger detail view of the handle with this value (hex 0x... or decimal).
    #[arg(long, value_name = "VALUE", conflicts_with_all = ["koid", "json", "long"])]
    pub handle: Option<String>,
    /// Debugger detail view of every handle to the object with this koid.
    #[arg(long, value_name = "KOID", conflicts_with_all = ["json", "long"])]
    pub koid: Option<String>,
    /// Also show how each handle was made (openat(), pipe2(), inherited,
    /// received through SCM_RIGHTS) and the stack that created it, for
    /// processes under the LD_PRELOAD shim or `handles run`.
    #[arg(long)]
    pub stacks: bool,

    /// Every process of the machine, one row each: handle count and
    /// counts by type (with the type filters: of those types), sorted by
    /// count; for processes of a job, the handles its table saw created
    /// and the numbers it holds quarantined. Processes you may not read
    /// are listed as such. With --json: schema handles.machine.v1.
    #[arg(
        long,
        conflicts_with_all = ["pids", "long", "zxdb", "handle", "koid", "stacks", "mappings"]
    )]
    pub all: bool,
    /// Also list the objects the process holds alive only through memory
    /// mappings (memfds and files mapped, then closed), as rows with no
    /// handle value: koid, rights from the mapping's protection, type.
    #[arg(long, conflicts_with_all = ["zxdb", "handle", "koid"])]
    pub mappings: bool,
}

/// `--quarantine N`: 0 to 1024, the shim's bound and the supervisor's.
fn quarantine_bound(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of fd numbers"))?;
    if n > 1024 {
        return Err(format!(
            "{n} is more than the 1024 numbers a process may keep quarantined"
        ));
    }
    Ok(n)
}
