//! The whole machine at once (`handles --all`): one row per process with
//! its handle count and counts by type.
//!
//! What a row needs is far less than a table: the type of each fd, not its
//! koid, rights or peer. So the scan reads one `readlinkat` per fd (the
//! link target names sockets, pipes, anonymous inodes, pidfds and memfds)
//! and stats only what is a path (file, directory, device or O_PATH: one
//! `stat` and one `lstat`); unix sockets are told from the rest by one
//! sock_diag dump for the whole machine. No fdinfo is read. Processes that
//! run under the shim or `handles run` are read with the full inspector
//! instead, so that their counts hide the shim's own fds and tombstones
//! exactly as `handles PID` does, and their tables' generations are summed.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};

use handles_model::table::{state, Header, TableView, HEADER_SIZE, SLOT_SIZE};
use handles_model::ObjType;
use serde::Serialize;

use super::classify::{anon_type, path_type, sock_protocol_name};
use super::parse::{oflags, LinkTarget};
use super::procdir::ProcDir;
use super::sockdiag::SockTable;
use super::{shared, InspectError, Inspector, Options, Source};

/// Whether a process's fds could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Ok,
    /// Not ours to read (another user's process, without root).
    PermissionDenied,
}

/// What the shim's (or supervisor's) table says of a process of a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    /// Sum of every slot's generation: the handles created at each fd
    /// number since the table was made (inherited ones are generation 0).
    pub created: u64,
    /// Slots open now.
    pub open: u64,
    /// Closed numbers held by a tombstone (the quarantine).
    pub quarantined: u64,
}

/// One row of `handles --all`.
#[derive(Clone, Debug, Serialize)]
pub struct ProcCounts {
    pub pid: i32,
    pub name: String,
    pub access: Access,
    pub source: Source,
    /// False when the process exited while being read.
    pub complete: bool,
    /// Every handle (before any type filter). For a process we may not
    /// read, the kernel's count of its fds ([`fd_dir_size`]; 0 when the
    /// kernel does not say), with no types.
    pub handle_count: usize,
    /// Handles by type name, only types present.
    pub types: BTreeMap<&'static str, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableCounts>,
}

/// The fields of /proc/PID/status a row needs.
struct Status {
    name: String,
    tracer: i32,
    kthread: bool,
}

fn parse_status(text: &str) -> Status {
    let mut s = Status {
        name: String::new(),
        tracer: 0,
        kthread: false,
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            s.name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("TracerPid:") {
            s.tracer = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Kthread:") {
            s.kthread = v.trim() == "1";
        }
    }
    s
}

/// Every process id in /proc (thread-group leaders; threads live under
/// /proc/PID/task).
pub fn all_pids() -> std::io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// What the light scan found of one fd.
enum Seen {
    Typed(ObjType),
    /// A socket: unix (channel) or not, known once the dump is in.
    Socket(u64),
}

/// Phase one of one process: link targets only.
struct Light {
    pid: i32,
    name: String,
    tracer: i32,
    seen: Vec<(i32, Seen)>,
    /// Names a table of its own (`handles-table:PID`): a shim process.
    has_table: bool,
    complete: bool,
}

fn scan_one(pid: i32) -> Result<Option<Light>, InspectError> {
    let mut dir = ProcDir::open(pid)?;
    let text = dir
        .read_text("status")
        .map_err(|e| super::procdir::classify(pid, "status", e))?;
    let st = parse_status(&text);
    // Kernel threads share no fd table with anyone and hold no handles:
    // lsof lists none of theirs either.
    if st.kthread {
        return Ok(None);
    }
    let fds = dir.list_fds()?;
    let mut light = Light {
        pid,
        name: st.name,
        tracer: st.tracer,
        seen: Vec::with_capacity(fds.len()),
        has_table: false,
        complete: true,
    };
    let mut failed = false;
    for fd in fds {
        let target = match dir.link_of(fd) {
            Ok(Some(t)) => t,
            Ok(None) => {
                failed = true;
                continue;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                return Err(InspectError::PermissionDenied(pid))
            }
            Err(_) => {
                failed = true;
                continue;
            }
        };
        let ty = match LinkTarget::parse(&target) {
            LinkTarget::Socket(ino) => {
                light.seen.push((fd, Seen::Socket(ino)));
                continue;
            }
            LinkTarget::Pipe(_) => ObjType::Pipe,
            LinkTarget::Pidfd(_) => ObjType::Process,
            LinkTarget::AnonInode(n) => anon_type(&n),
            LinkTarget::Memfd(_) => {
                // Any table, even a parent's inherited across fork: the
                // full inspector knows which fds such a process hides.
                light.has_table |= shared::table_owner(&target).is_some();
                ObjType::Vmo
            }
            LinkTarget::Path(_) | LinkTarget::Other(_) => {
                // The link's own mode is the access mode; none at all is
                // O_PATH. Then the object's type from what it points at.
                let flags = match dir.lstat_link(fd) {
                    Ok(l) if l.st_mode & 0o600 == 0 => oflags::PATH,
                    Ok(_) => 0,
                    Err(_) => {
                        failed = true;
                        continue;
                    }
                };
                let other = matches!(LinkTarget::parse(&target), LinkTarget::Other(_));
                match dir.stat_fd(fd) {
                    // Namespace files and the like: what classify calls
                    // them too.
                    Ok(_) if other && flags == 0 => ObjType::Unknown,
                    Ok(s) => path_type(flags, s.st_mode, s.st_rdev),
                    // A dangling O_PATH (its file removed), or closed
                    // under us.
                    Err(_) if flags == oflags::PATH => ObjType::Path,
                    Err(_) => ObjType::Unknown,
                }
            }
        };
        light.seen.push((fd, Seen::Typed(ty)));
    }
    light.complete = !failed || dir.alive();
    Ok(Some(light))
}

/// Scans every process of the machine (or those of `pids`, when given).
/// Unreadable processes are rows marked [`Access::PermissionDenied`];
/// processes that vanish during the scan are left out.
pub fn scan(pids: Option<&[i32]>) -> std::io::Result<Vec<ProcCounts>> {
    let pids = match pids {
        Some(p) => p.to_vec(),
        None => all_pids()?,
    };
    let mut rows = Vec::with_capacity(pids.len());
    let mut lights = Vec::new();
    let mut jobs = Vec::new();
    for pid in pids {
        match scan_one(pid) {
            Ok(Some(l)) if l.has_table || l.tracer > 0 => jobs.push(l),
            Ok(Some(l)) => lights.push(l),
            Ok(None) => {}
            Err(InspectError::PermissionDenied(_)) => rows.push(ProcCounts {
                pid,
                name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default(),
                access: Access::PermissionDenied,
                source: Source::Proc,
                complete: true,
                handle_count: fd_dir_size(pid).unwrap_or(0),
                types: BTreeMap::new(),
                table: None,
            }),
            // Gone (or unreadable for another reason) between the listing
            // of /proc and its read: not a process of this picture.
            Err(_) => {}
        }
    }
    // One dump tells every unix socket of the machine's namespace.
    let sockets: HashSet<u64> = lights
        .iter()
        .flat_map(|l| &l.seen)
        .filter_map(|(_, s)| match s {
            Seen::Socket(ino) => Some(*ino),
            _ => None,
        })
        .collect();
    let mut socks = SockTable::default();
    if !sockets.is_empty() {
        socks.load_unix();
    }
    for l in lights {
        let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (fd, s) in &l.seen {
            let ty = match s {
                Seen::Typed(t) => *t,
                Seen::Socket(ino) if socks.unix.contains_key(ino) => ObjType::Channel,
                // Not in the dump: another network namespace, or not
                // unix. The protocol name still tells (one getxattr).
                Seen::Socket(_) => match sock_protocol_name(l.pid, *fd) {
                    Some(p) if p.starts_with("UNIX") => ObjType::Channel,
                    _ => ObjType::Socket,
                },
            };
            *types.entry(ty.name()).or_default() += 1;
        }
        rows.push(ProcCounts {
            pid: l.pid,
            name: l.name,
            access: Access::Ok,
            source: Source::Proc,
            complete: l.complete,
            handle_count: l.seen.len(),
            types,
            table: None,
        });
    }
    if !jobs.is_empty() {
        // The job's processes as `handles PID` reads them: values from
        // their tables, tombstones and the shim's own fds hidden.
        let job_pids: Vec<i32> = jobs.iter().map(|l| l.pid).collect();
        let mut inspector = Inspector::new(Options::default());
        for (l, r) in jobs.iter().zip(inspector.read_many(&job_pids)) {
            let Ok(snap) = r else { continue };
            let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
            for h in &snap.handles {
                *types.entry(h.ty).or_default() += 1;
            }
            let table = (snap.source != Source::Proc)
                .then(|| table_counts(l.pid, l.tracer, snap.source))
                .flatten();
            rows.push(ProcCounts {
                pid: l.pid,
                name: l.name.clone(),
                access: Access::Ok,
                source: snap.source,
                complete: snap.complete,
                handle_count: snap.handles.len(),
                types,
                table,
            });
        }
    }
    Ok(rows)
}

/// The number of fds of a process we may not read: since Linux 6.2 the
/// size `stat` gives /proc/PID/fd is its count of open fds, and the
/// directory's attributes need no ptrace access (its entries do). None on
/// older kernels, whose size is always 0.
pub fn fd_dir_size(pid: i32) -> Option<usize> {
    use std::os::unix::fs::MetadataExt;
    let n = std::fs::metadata(format!("/proc/{pid}/fd")).ok()?.size();
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// The generation counts of a job's process, from its published table
/// (the shim's, in the process; else its supervisor's).
pub fn table_counts(pid: i32, tracer: i32, source: Source) -> Option<TableCounts> {
    let (holder, fd) = match source {
        Source::Shim => (pid, shared::own_table_fd(pid)?),
        Source::Supervisor if tracer > 0 => (tracer, shared::table_fd_among(tracer, pid)?),
        _ => return None,
    };
    let f: OwnedFd = std::fs::File::open(format!("/proc/{holder}/fd/{fd}"))
        .ok()?
        .into();
    counts_from_file(&f)
}

/// Reads the header and the slots that hold data with `pread`, not a
/// mapping: a read fault on a hole of a memfd allocates a page in the
/// table's owner, where `pread` of a hole copies zeroes and allocates
/// nothing. `SEEK_DATA`/`SEEK_HOLE` bound the read to the slots ever
/// written (a table has room for a million).
pub(crate) fn counts_from_file(f: &OwnedFd) -> Option<TableCounts> {
    // u64 words keep the buffer aligned for the header's atomics.
    let mut head = vec![0u64; HEADER_SIZE / 8];
    pread_all(f, bytes_mut(&mut head), 0)?;
    TableView::new(bytes(&head)).ok()?;
    // SAFETY: the buffer is aligned for Header and holds HEADER_SIZE
    // bytes, validated as a table header just above; Header is all
    // atomics, so any bit pattern is a valid value.
    let header = unsafe { &*(head.as_ptr() as *const Header) };
    let capacity = header.capacity.load(std::sync::atomic::Ordering::Relaxed) as usize;
    let slots_end = HEADER_SIZE + capacity * SLOT_SIZE;
    let end = data_end(f, HEADER_SIZE as i64, slots_end as i64)? as usize;
    let n = end.saturating_sub(HEADER_SIZE).div_ceil(SLOT_SIZE);
    let total = HEADER_SIZE + n * SLOT_SIZE;
    let mut buf = vec![0u64; total / 8];
    pread_all(f, bytes_mut(&mut buf), 0)?;
    let view = TableView::new(bytes(&buf)).ok()?;
    let mut c = TableCounts::default();
    for fd in 0..view.capacity() {
        let Some(v) = view.slot(fd as i32) else {
            continue;
        };
        c.created += u64::from(v.generation);
        match v.state {
            state::OPEN => c.open += 1,
            state::TOMBSTONE => c.quarantined += 1,
            _ => {}
        }
    }
    Some(c)
}

/// The end of the last data extent in `[from, to)` of `f`, or `from`
/// when there is none.
fn data_end(f: &OwnedFd, from: i64, to: i64) -> Option<i64> {
    let mut end = from;
    let mut at = from;
    while at < to {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data after `at`. Anything else: the file system
            // cannot tell holes, so read it all.
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Some(to);
        }
        if data >= to {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole <= data {
            // A file system without holes: all of it is data.
            return Some(to);
        }
        end = hole.min(to);
        at = hole;
    }
    Some(end)
}

fn pread_all(f: &OwnedFd, buf: &mut [u8], mut off: i64) -> Option<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the rest of buf.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                off,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if n == 0 {
            // Shorter than its header says: what is missing stays zero
            // (FREE slots).
            return Some(());
        }
        done += n as usize;
        off += n as i64;
    }
    Some(())
}

fn bytes(v: &[u64]) -> &[u8] {
    // SAFETY: reinterpreting initialised u64s as bytes (no padding).
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() * 8) }
}

fn bytes_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid u64; the length is exact.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let s = parse_status("Name:\tkworker/0:1\nUmask:\t0000\nTracerPid:\t0\nKthread:\t1\n");
        assert_eq!(s.name, "kworker/0:1");
        assert!(s.kthread);
        let s = parse_status("Name:\tbash\nTracerPid:\t812\n");
        assert_eq!(s.tracer, 812);
        assert!(!s.kthread);
        let s = parse_status("garbage\nTracerPid:\tx\n");
        assert_eq!((s.tracer, s.name.as_str()), (0, ""));
    }

    #[test]
    fn counts_of_a_table_in_a_memfd() {
        use handles_model::table::{table_size, Slot, SlotValue};
        let cap = 300u32;
        let mut mem = vec![0u64; table_size(cap) / 8];
        let b = bytes(&mem);
        // SAFETY: aligned, large enough, all atomics.
        let header = unsafe { &*(b.as_ptr() as *const Header) };
        header.init(cap, 1, 0, handles_model::table::writer::SHIM);
        // SAFETY: cap slots follow the header inside mem.
        let slots = unsafe {
            std::slice::from_raw_parts(b.as_ptr().add(HEADER_SIZE) as *const Slot, cap as usize)
        };
        let open = |g| SlotValue {
            state: state::OPEN,
            generation: g,
            ..SlotValue::default()
        };
        slots[3].write(open(2));
        slots[4].write(SlotValue {
            state: state::TOMBSTONE,
            generation: 5,
            ..SlotValue::default()
        });
        // Far from the others: in a later page, after a hole.
        slots[290].write(open(1));
        let b = bytes_mut(&mut mem).to_vec();
        // SAFETY: memfd_create with a NUL-terminated name; owned at once.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is fresh and ours.
        let f = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut file = std::fs::File::from(f.try_clone().expect("dup"));
        std::io::Write::write_all(&mut file, &b).expect("write");
        let c = counts_from_file(&f).expect("a table");
        assert_eq!(
            c,
            TableCounts {
                created: 8,
                open: 2,
                quarantined: 1
            }
        );
        // Not a table: no counts, no panic.
        // SAFETY: as above.
        let g = unsafe { libc::memfd_create(c"u".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: g is fresh and ours.
        let g = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(g) };
        assert_eq!(counts_from_file(&g), None);
    }
}
