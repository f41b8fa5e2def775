//! The /proc inspector: reads the handle table of any live process.
//!
//! Reading happens in two phases. Phase one walks each process's fd
//! directory (one `readlinkat`, one fdinfo read and, for paths, one `stat`
//! per fd). Phase two resolves what needs every process at once: one
//! sock_diag dump for all unix peers and inet addresses, kcmp grouping for
//! anonymous objects, and (in the long view) which processes hold a unix
//! socket's peer.

pub mod classify;
pub mod describe;
pub mod graph;
pub mod machine;
pub mod mappings;
pub mod parse;
mod procdir;
pub mod shared;
pub mod sockdiag;
pub mod stacks;

use std::collections::{HashMap, HashSet};

use handles_model::{rights::FdAccess, Fd, HandleValue, ObjType, Rights};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::json;

use parse::{oflags, FdInfo, LinkTarget};
use procdir::ProcDir;
use sockdiag::SockTable;
use stacks::Creation;

/// Why a process's table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    #[error("permission denied reading the fd table of process {0} (root or the same user as the process is needed)")]
    PermissionDenied(i32),
    #[error("reading /proc/{pid}/{what}: {source}")]
    Io {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// How much to resolve.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Descriptions and flag names (the long view and JSON).
    pub long: bool,
    /// With `long`, also find which processes hold a socket's peer (a scan
    /// of every process's fds, as `lsof +E` does).
    pub peers: bool,
}

/// Where a table's handle values come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// /proc alone: mixer 0, generation 0.
    Proc,
    /// The table the process's LD_PRELOAD shim keeps.
    Shim,
    /// The table its `handles run` supervisor keeps.
    Supervisor,
}

/// One process's handle table.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub pid: i32,
    pub name: String,
    /// The process's own koid (its pidfs inode), when the kernel has pidfs.
    pub koid: Option<u64>,
    pub source: Source,
    pub mixer: u32,
    /// False when the process exited while being read: what was read is
    /// shown, the rest is missing.
    pub complete: bool,
    /// Set when a published table was found but rejected (corrupt): the
    /// values shown are then /proc's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_error: Option<String>,
    pub handles: Vec<HandleInfo>,
}

impl Snapshot {
    /// The number of distinct objects (equal koid and device ⇔ same object).
    pub fn objects(&self) -> usize {
        self.handles
            .iter()
            .map(|h| (h.koid, h.dev.clone()))
            .collect::<HashSet<_>>()
            .len()
    }
}

/// Socket facts for the long view and JSON.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SocketInfo {
    /// `unix`, `tcp`, `tcp6`, `udp`, `udp6`, `netlink`, ... (lower case).
    pub protocol: String,
    /// `stream`, `dgram`, `seqpacket` for unix sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Processes holding the peer socket: `pid(comm)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_processes: Vec<PeerProcess>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerProcess {
    pub pid: i32,
    pub name: String,
    pub fd: i32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimerInfo {
    pub clock: String,
    /// Nanoseconds until the next expiry, 0 when disarmed.
    pub value_ns: u64,
    pub interval_ns: u64,
    pub ticks: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VmoInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub seals: Vec<String>,
}

/// One handle: an fd of the process with everything `handles` knows of it.
#[derive(Clone, Debug)]
pub struct HandleInfo {
    pub fd: i32,
    pub handle: u32,
    pub generation: u32,
    pub koid: u64,
    pub rkoid: u64,
    pub rights: u32,
    /// `ZX_RIGHT_*` names (long view and JSON only).
    pub rights_names: Vec<&'static str>,
    pub ty: &'static str,
    /// `major:minor` of the device holding a file's inode.
    pub dev: Option<String>,
    /// Open flags as fdinfo reports them (octal there, a number here).
    pub flags: u32,
    pub flag_names: Vec<&'static str>,
    pub cloexec: bool,
    /// What `readlink /proc/PID/fd/N` says.
    pub target: String,
    pub pos: Option<u64>,
    pub description: String,
    pub socket: Option<Box<SocketInfo>>,
    pub eventfd_count: Option<u64>,
    pub epoll_fds: Option<Vec<i32>>,
    pub timer: Option<Box<TimerInfo>>,
    pub vmo: Option<Box<VmoInfo>>,
    /// For a pidfd: the process it refers to.
    pub pidfd_pid: Option<i64>,
    /// How the handle was made and its creation stack, from the published
    /// table (only when stacks were asked for: [`Inspector::with_stacks`]).
    pub created: Option<Box<Creation>>,
    pub(crate) raw: RawFacts,
}

impl Serialize for HandleInfo {
    /// A table row (docs/json.md, `HANDLE`): the handle object's keys,
    /// then what the long view adds.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        json::handle_fields(&mut m, &self.json())?;
        m.serialize_entry("rkoid", &self.rkoid)?;
        if !self.rights_names.is_empty() {
            m.serialize_entry("rights_names", &self.rights_names)?;
        }
        m.serialize_entry("flags", &self.flags)?;
        m.serialize_entry("flag_names", &self.flag_names)?;
        m.serialize_entry("cloexec", &self.cloexec)?;
        m.serialize_entry("target", &self.target)?;
        if let Some(pos) = self.pos {
            m.serialize_entry("pos", &pos)?;
        }
        if let Some(v) = &self.socket {
            m.serialize_entry("socket", v)?;
        }
        if let Some(v) = self.eventfd_count {
            m.serialize_entry("eventfd_count", &v)?;
        }
        if let Some(v) = &self.epoll_fds {
            m.serialize_entry("epoll_fds", v)?;
        }
        if let Some(v) = &self.timer {
            m.serialize_entry("timer", v)?;
        }
        if let Some(v) = &self.vmo {
            m.serialize_entry("vmo", v)?;
        }
        if let Some(v) = self.pidfd_pid {
            m.serialize_entry("pidfd_pid", &v)?;
        }
        if let Some(v) = &self.created {
            m.serialize_entry("created", v)?;
        }
        m.end()
    }
}

impl HandleInfo {
    /// The handle as every JSON document shows one (the first keys of its
    /// table row).
    pub fn json(&self) -> json::Handle<'_> {
        json::Handle {
            value: Some(self.handle),
            fd: self.fd,
            generation: Some(self.generation),
            state: json::HandleState::Open,
            ty: Some(self.ty.into()),
            koid: Some(self.koid),
            dev: self.dev.as_deref().map(Into::into),
            rights: Some(self.rights),
            // The short view does not describe its handles.
            description: (!self.description.is_empty()).then_some(self.description.as_str().into()),
        }
    }

    pub fn value(&self) -> HandleValue {
        HandleValue(self.handle)
    }
    pub fn obj_type(&self) -> ObjType {
        ObjType::from_name(self.ty).unwrap_or(ObjType::Unknown)
    }
    pub fn rights(&self) -> Rights {
        Rights(self.rights)
    }
}

/// What phase one read of an fd, kept for phase two.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawFacts {
    pub link: Option<LinkTarget>,
    /// Boxed: most fds are files, pipes and sockets, whose fdinfo is small
    /// or unread, and at 100,000 fds every inline byte counts.
    pub info: Box<FdInfo>,
    /// st_mode of the object (0 when not stat'ed).
    pub mode: u32,
    pub size: Option<u64>,
    pub rdev: Option<u64>,
    pub seals: Option<u32>,
    /// Needs a synthetic koid (anonymous object with no id).
    pub anon: bool,
}

/// Resolves a thread id to its process. Returns `(tgid, true)` for a thread
/// that is not the group leader.
pub fn resolve_tgid(pid: i32) -> Result<(i32, bool), InspectError> {
    let mut dir = ProcDir::open(pid)?;
    let status = dir.status()?;
    Ok((status.tgid, status.tgid != pid))
}

/// Takes values, generations and hidden fds from the table the shim or the
/// supervisor publishes, if there is one; with `stacks`, also how each open
/// handle was made and its creation stack (not yet symbolized).
fn apply_published(
    pid: i32,
    tracer: i32,
    handles: &mut Vec<HandleInfo>,
    stacks: bool,
) -> (Source, u32, Option<String>) {
    use handles_model::table::state;
    // A forked child with no table of its own yet still holds its
    // parent's (named with the parent's pid, at the parent's table fd
    // number): that table is not this process's, and its fd is no handle
    // of the program's. Nor are the shim's tombstones and tombstone
    // source, O_PATH fds on a table's memfd, which only a table of the
    // child's own would tell apart; so they are left out too while the
    // values are /proc's.
    let inherited: Vec<i32> = handles
        .iter()
        .filter(|h| h.flags & oflags::PATH == 0)
        .filter_map(|h| {
            let owner = shared::table_owner(&h.target)?;
            shared::is_inherited_table(pid, h.fd, owner).then_some(h.fd)
        })
        .collect();
    handles.retain(|h| !inherited.contains(&h.fd));
    // The table is the memfd opened read-write; the shim's tombstones are
    // O_PATH fds on the same memfd, and must not be taken for it.
    let own: Vec<(i32, &str)> = handles
        .iter()
        .filter(|h| h.flags & oflags::PATH == 0)
        .map(|h| (h.fd, h.target.as_str()))
        .collect();
    let found = shared::find(pid, &own, tracer);
    if !inherited.is_empty() && !matches!(found, Some(shared::Found::Shim(..))) {
        handles.retain(|h| h.flags & oflags::PATH == 0 || shared::table_owner(&h.target).is_none());
    }
    let (source, own_fd, mapped) = match found {
        Some(shared::Found::Shim(fd, m)) => (Source::Shim, Some(fd), m),
        Some(shared::Found::Supervisor(m)) => (Source::Supervisor, None, m),
        None => return (Source::Proc, 0, None),
    };
    // The shim's own table fd is never a handle of the program's.
    handles.retain(|h| Some(h.fd) != own_fd);
    let view = match mapped.view() {
        Ok(v) => v,
        Err(e) => return (Source::Proc, 0, Some(e.to_string())),
    };
    // A table can only hide what its writers hide: tombstones and the
    // tombstone source are O_PATH fds (on /dev/null for the supervisor's,
    // on the table's memfd, or /dev/null without open_tree, for the
    // shim's). A program can scribble on
    // its own shim's table; a slot that calls anything else a tombstone is
    // not believed, so the table never hides a real handle.
    handles.retain_mut(|h| {
        // The slot and its stacks as one snapshot, read only when asked.
        let detail = if stacks { view.detail_py(h.fd) } else { None };
        match detail.map(|d| d.0.value).or_else(|| view.slot(h.fd)) {
            Some(v)
                if (v.state == state::TOMBSTONE || v.state == state::INTERNAL)
                    && h.flags & oflags::PATH != 0 =>
            {
                false
            }
            Some(v) if v.state == state::OPEN => {
                h.generation = v.generation;
                let codes = view.codes();
                h.created = detail
                    .as_ref()
                    .and_then(|(d, py, _)| Creation::from_detail(d, py, &codes))
                    .map(Box::new);
                true
            }
            _ => true,
        }
    });
    (source, view.mixer(), None)
}

/// Reads handle tables. Holds what is shared between the processes of one
/// call: the socket dump and the anon-inode identity.
pub struct Inspector {
    opts: Options,
    anon_ino: Option<u64>,
    /// Set when creation stacks are wanted (see [`Inspector::with_stacks`]).
    symbolizer: Option<crate::backtrace::Symbolizer>,
    /// Resolves the Python frames recorded with creation stacks.
    python: crate::backtrace::python::PythonResolver,
}

impl Inspector {
    pub fn new(opts: Options) -> Inspector {
        Inspector {
            opts,
            anon_ino: classify::anon_inode_ino(),
            symbolizer: None,
            python: crate::backtrace::python::PythonResolver::new(),
        }
    }

    /// Also reads, for every open handle whose published slot recorded one,
    /// how it was made and its creation stack, symbolized against the
    /// process's modules ([`HandleInfo::created`]). Off by default: without
    /// it no stack is read and nothing is symbolized.
    pub fn with_stacks(mut self, on: bool) -> Inspector {
        self.symbolizer = on.then(crate::backtrace::Symbolizer::new);
        self
    }

    /// Reads every pid, then resolves what needs all of them at once. The
    /// result keeps the order of `pids`.
    pub fn read_many(&mut self, pids: &[i32]) -> Vec<Result<Snapshot, InspectError>> {
        let mut results: Vec<_> = pids.iter().map(|&p| self.read_one(p)).collect();
        let mut snaps: Vec<&mut Snapshot> =
            results.iter_mut().filter_map(|r| r.as_mut().ok()).collect();
        self.resolve(&mut snaps);
        self.symbolize(&mut snaps);
        results
    }

    /// Phase one for one process.
    /// Reads the table through one thread of `pid` (see
    /// `ProcDir::open_task`), fully resolved.
    pub fn read_task(&mut self, pid: i32, tid: i32) -> Result<Snapshot, InspectError> {
        let mut snap = self.read_from(pid, ProcDir::open_task(pid, tid)?)?;
        self.resolve(&mut [&mut snap]);
        self.symbolize(&mut [&mut snap]);
        Ok(snap)
    }

    /// [`Inspector::read_task`] for fds `fds` alone, from /proc only (no
    /// handle values: the caller has them): a leak check at a process's
    /// exit describes its few candidates, where listing and reading every
    /// fd, and finding its table again, cost a third of the supervisor's
    /// time in a shell script.
    pub fn read_task_fds(
        &mut self,
        pid: i32,
        tid: i32,
        fds: &[i32],
    ) -> Result<Snapshot, InspectError> {
        let mut snap = self.read_fds(pid, ProcDir::open_task(pid, tid)?, Some(fds))?;
        self.resolve(&mut [&mut snap]);
        Ok(snap)
    }

    fn read_one(&mut self, pid: i32) -> Result<Snapshot, InspectError> {
        self.read_from(pid, ProcDir::open(pid)?)
    }

    fn read_from(&mut self, pid: i32, dir: ProcDir) -> Result<Snapshot, InspectError> {
        self.read_fds(pid, dir, None)
    }

    /// Reads the fds of `dir` (those in `only`, when given, without the
    /// published table).
    fn read_fds(
        &mut self,
        pid: i32,
        mut dir: ProcDir,
        only: Option<&[i32]>,
    ) -> Result<Snapshot, InspectError> {
        let status = dir.status()?;
        let fds = match only {
            Some(fds) => {
                dir.open_fd_dirs()?;
                fds.to_vec()
            }
            None => dir.list_fds()?,
        };
        if let Some(ms) = std::env::var_os("HANDLES_DEBUG_STALL_MS") {
            // A test hook: lets the test suite kill the process between the
            // listing and the reads, the race a real user hits on busy boxes.
            let ms = ms.to_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut handles = Vec::with_capacity(fds.len());
        let mut failed = false;
        let full = self.opts.long;
        for fd in fds {
            match dir.read_fd(fd, full) {
                Ok(Some(raw)) => {
                    if let Some(h) = classify::phase_one(&dir, raw, self.anon_ino) {
                        handles.push(h);
                    }
                }
                Ok(None) => failed = true,
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                        return Err(InspectError::PermissionDenied(pid));
                    }
                    failed = true;
                }
            }
        }
        // An fd that vanished is normal (closed after listing); a process
        // that vanished makes the table partial, which the caller reports.
        let complete = !failed || dir.alive();
        let (source, mixer, table_error) = if only.is_some() {
            // Without the table's own pass, a shim's table and the
            // tombstones on its memfd are still told by their names.
            handles.retain(|h| shared::table_owner(&h.target).is_none());
            (Source::Proc, 0, None)
        } else {
            apply_published(
                pid,
                status.tracerpid,
                &mut handles,
                self.symbolizer.is_some(),
            )
        };
        Ok(Snapshot {
            pid,
            name: status.name,
            koid: classify::process_koid(pid),
            source,
            mixer,
            complete,
            table_error,
            handles,
        })
    }

    /// Symbolizes the creation stacks read (only with stacks on).
    fn symbolize(&mut self, snaps: &mut [&mut Snapshot]) {
        let Some(symbolizer) = self.symbolizer.as_mut() else {
            return;
        };
        for snap in snaps.iter_mut() {
            if snap.handles.iter().any(|h| h.created.is_some()) {
                let pid = snap.pid;
                let creations = snap
                    .handles
                    .iter_mut()
                    .filter_map(|h| h.created.as_deref_mut());
                stacks::symbolize(symbolizer, &mut self.python, pid, creations);
            }
        }
    }

    /// Phase two: socket types and peers, synthetic koids, rights,
    /// descriptions.
    fn resolve(&mut self, snaps: &mut [&mut Snapshot]) {
        let any_socket = snaps
            .iter()
            .flat_map(|s| &s.handles)
            .any(|h| matches!(h.raw.link, Some(LinkTarget::Socket(_))));
        let mut socks = SockTable::default();
        if any_socket {
            socks.load_unix();
            // The inet dumps are only worth their cost when some socket is
            // not a unix one.
            let needs_inet = snaps.iter().flat_map(|s| &s.handles).any(|h| {
                matches!(h.raw.link, Some(LinkTarget::Socket(ino)) if !socks.unix.contains_key(&ino))
            });
            if needs_inet {
                socks.load_inet();
            }
        }
        let inet_peers = socks.inet_peers();
        for snap in snaps.iter_mut() {
            let pid = snap.pid;
            for h in &mut snap.handles {
                classify::resolve_socket(pid, h, &socks, &inet_peers);
            }
        }
        classify::assign_synthetic_koids(snaps);
        if self.opts.long && self.opts.peers {
            let wanted: HashSet<u64> = snaps
                .iter()
                .flat_map(|s| &s.handles)
                .filter(|h| {
                    h.rkoid != 0 && matches!(h.obj_type(), ObjType::Channel | ObjType::Socket)
                })
                .map(|h| h.rkoid)
                .collect();
            let owners = if wanted.is_empty() {
                HashMap::new()
            } else {
                describe::socket_owners(&wanted)
            };
            for snap in snaps.iter_mut() {
                for h in &mut snap.handles {
                    if let Some(s) = &mut h.socket {
                        if let Some(o) = owners.get(&h.rkoid) {
                            s.peer_processes = o.clone();
                        }
                    }
                }
            }
        }
        for snap in snaps.iter_mut() {
            for h in &mut snap.handles {
                let access = FdAccess {
                    read: h.flags & oflags::ACCMODE != oflags::WRONLY,
                    write: matches!(h.flags & oflags::ACCMODE, oflags::WRONLY | oflags::RDWR),
                    seals: h.raw.seals,
                    executable: h.raw.mode & 0o111 != 0,
                };
                let ty = h.obj_type();
                h.rights = Rights::for_fd(ty, access).0;
                h.handle = HandleValue::encode(Fd(h.fd), h.generation, snap.mixer).0;
                if self.opts.long {
                    h.flag_names = oflags::names(h.flags);
                    h.description = describe::describe(h);
                    h.rights_names = Rights(h.rights).names().collect();
                }
            }
        }
    }
}
