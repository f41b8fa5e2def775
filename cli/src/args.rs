//! The command line, as clap sees it.

use clap::{Args, Parser};

#[derive(Parser, Debug)]
#[command(
    name = "handles",
    version,
    about = "Dump the handle table of live Linux processes, Fuchsia style",
    long_about = "Dump the handle table of live Linux processes, the way Fuchsia's `handles` \
                  tool does: one row per file descriptor with its handle value, the koid of \
                  the kernel object behind it, the related object's koid (a socket's peer, a \
                  pidfd's parent process), Zircon rights and the object type.\n\n\
                  Type filters (-t -v -p -c -e -s, --type) select rows; -r excludes them instead.",
    after_help = "Exit status: 0 shown, 1 handle/koid not found, 2 usage, 3 no such process, \
                  4 permission denied, 5 process exited while being read, 6 other I/O error."
)]
pub struct Cli {
    #[command(flatten)]
    pub show: ShowArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// Process ids to dump (a thread id resolves to its process).
    #[arg(value_name = "PID", required = true)]
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
}
