//! Finding and reading the handle table that a process's shim, or its
//! supervisor, publishes (layout in `handles_model::table`).
//!
//! The shim's table is a memfd in the process itself; the supervisor's is a
//! memfd in the supervisor, found through the process's TracerPid. Both are
//! named `handles-table:<pid>`. The mapping is read-only here and treated
//! as hostile: a corrupt table is ignored and /proc alone is used.

use std::os::fd::{AsRawFd, OwnedFd};

use handles_model::protocol::{self, TableName};
use handles_model::table::{own_fds_at, TableError, TableView, MAX_CAPACITY};

use super::parse::LinkTarget;

/// The memfd name both writers use (`handles_model::protocol::TableName`).
pub fn table_name(pid: i32) -> String {
    TableName::new(pid).as_str().to_owned()
}

/// A read-only mapping of a published table.
pub struct MappedTable {
    base: *mut libc::c_void,
    len: usize,
}

impl MappedTable {
    /// Maps the whole of an open table file, read-only.
    pub fn map(fd: &OwnedFd) -> Option<MappedTable> {
        MappedTable::map_prot(fd, libc::PROT_READ)
    }

    /// Maps it read-write: the supervisor updates a shim's table with the
    /// syscalls it catches (the file must have been opened O_RDWR).
    pub fn map_rw(fd: &OwnedFd) -> Option<MappedTable> {
        MappedTable::map_prot(fd, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn map_prot(fd: &OwnedFd, prot: libc::c_int) -> Option<MappedTable> {
        // SAFETY: an all-zero stat is valid to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an fd we own.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return None;
        }
        let len = usize::try_from(st.st_size).ok()?;
        let max = handles_model::table::table_size(MAX_CAPACITY);
        if len == 0 || len > max {
            return None;
        }
        // SAFETY: a fresh shared mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(MappedTable { base, len })
    }

    pub fn view(&self) -> Result<TableView<'_>, TableError> {
        // SAFETY: base maps len readable bytes for the life of self. A
        // writer that shrinks the memfd under us could make pages vanish
        // (SIGBUS); the writers never shrink a published table.
        let bytes = unsafe { std::slice::from_raw_parts(self.base as *const u8, self.len) };
        TableView::new(bytes)
    }
}

impl Drop for MappedTable {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Where a table was found.
pub enum Found {
    /// In the process itself, at this fd (which the table hides).
    Shim(i32, MappedTable),
    Supervisor(MappedTable),
}

fn is_table_link(target: &str, pid: i32) -> bool {
    matches!(LinkTarget::parse(target), LinkTarget::Memfd(name) if name == table_name(pid))
}

/// The process a memfd named like a table (`handles-table:<pid>`) names,
/// from an fd's link target.
pub fn table_owner(target: &str) -> Option<i32> {
    match LinkTarget::parse(target) {
        LinkTarget::Memfd(name) => protocol::table_owner(&name),
        _ => None,
    }
}

/// Whether fd `fd` of process `pid` is the table a shim published for
/// another process, `owner`: sealed like the shim's, with a header that
/// names `owner` and the shim. A forked child holds its parent's table
/// (at the parent's table fd number) until its own first write makes it
/// one, and never if it execs or exits first.
pub fn is_inherited_table(pid: i32, fd: i32, owner: i32) -> bool {
    inherited_table(pid, fd, owner).is_some()
}

/// The table a shim published for process `owner`, mapped read-only
/// through fd `fd` of process `pid` (the table's fd itself, or an O_PATH
/// tombstone on its memfd), if it is one: sealed like the shim's, with a
/// header that names `owner` and the shim.
pub fn inherited_table(pid: i32, fd: i32, owner: i32) -> Option<MappedTable> {
    if owner == pid {
        return None;
    }
    let f = open_magic_link(&format!("/proc/{pid}/fd/{fd}"))?;
    if !sealed_against_shrinking(&f) {
        return None;
    }
    let m = MappedTable::map(&f)?;
    let genuine = m.view().is_ok_and(|v| {
        i64::from(v.pid()) == i64::from(owner) && v.writer() == handles_model::table::writer::SHIM
    });
    genuine.then_some(m)
}

fn open_magic_link(path: &str) -> Option<OwnedFd> {
    std::fs::File::open(path).ok().map(OwnedFd::from)
}

/// Whether `fd` is a memfd sealed with F_SEAL_SHRINK, as the shim seals its
/// table. Any other file named like a table, in a process that may be
/// hostile, could be truncated while it is mapped here, and reading the
/// vanished pages would kill the reader with SIGBUS.
pub fn sealed_against_shrinking(fd: &OwnedFd) -> bool {
    // SAFETY: F_GET_SEALS on an fd we own; no memory is passed.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// Looks for `pid`'s table: first among its own fds (given as link
/// targets), then in its tracer's fds.
pub fn find(pid: i32, own: &[(i32, &str)], tracer: i32) -> Option<Found> {
    for &(fd, target) in own {
        if is_table_link(target, pid) {
            let f = open_magic_link(&format!("/proc/{pid}/fd/{fd}"))?;
            if !sealed_against_shrinking(&f) {
                return None;
            }
            return MappedTable::map(&f).map(|m| Found::Shim(fd, m));
        }
    }
    if tracer <= 0 {
        return None;
    }
    find_among_fds(tracer, pid).map(Found::Supervisor)
}

/// The fd at which process `holder` holds the table of process `pid` (by
/// the memfd's name; the first found, which may be an O_PATH tombstone on
/// it: opening it through /proc reaches the same memfd). Costs a readlink
/// per fd.
pub fn table_fd_among(holder: i32, pid: i32) -> Option<i32> {
    let dir = std::fs::read_dir(format!("/proc/{holder}/fd")).ok()?;
    dir.flatten().find_map(|e| {
        let target = std::fs::read_link(e.path()).ok()?;
        is_table_link(&target.to_string_lossy(), pid)
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// RLIMIT_NOFILE (soft, hard) of process `pid`; None when it cannot be
/// read (gone, or not ours to ask).
pub fn nofile(pid: i32) -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading into a local struct, setting nothing.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    (r == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// How many numbers from the shim's start ([`own_fds_at`]) are tried:
/// the table, the tombstone source, and a fork child's table made while
/// its parent's two are still open.
const OWN_FDS_TRIED: i32 = 4;

/// The fd at which process `pid` holds its own table. First the numbers
/// the shim puts its fds at for the process's RLIMIT_NOFILE, a readlink
/// each; then the scan of [`table_fd_among`], for a process that changed
/// its limit or whose numbers were taken. The scan instantiates an inode
/// per fd, and a process with a full quarantine holds ~70: on a git
/// workload it was a fifth of the supervisor's time. No scan when those
/// numbers hold another process's table: a forked child with no table of
/// its own (it holds its parent's there), which a leak check asks about
/// at every such child's exit.
pub fn own_table_fd(pid: i32) -> Option<i32> {
    match table_fd_at_own_fds(pid, pid) {
        AtOwnFds::Table(fd) => Some(fd),
        AtOwnFds::Other { .. } => None,
        AtOwnFds::Nothing => table_fd_among(pid, pid),
    }
}

/// The table process `pid` holds at the shim's own numbers that is named
/// for another process: a forked child's parent's (or further up), while
/// the child has no shared table of its own. Its fd and owner.
pub fn inherited_table_at_own_fds(pid: i32) -> Option<(i32, i32)> {
    match table_fd_at_own_fds(pid, pid) {
        AtOwnFds::Other { fd, owner } => Some((fd, owner)),
        _ => None,
    }
}

/// What the shim's own numbers of a process hold.
enum AtOwnFds {
    /// The table asked for, at this fd.
    Table(i32),
    /// None of it, but a table named for another process.
    Other {
        fd: i32,
        owner: i32,
    },
    Nothing,
}

/// What the shim's own numbers ([`own_fds_at`] for `holder`'s
/// RLIMIT_NOFILE) of `holder` hold: the table of process `pid` (the tests
/// hold one named for no process), else a table named for another one.
fn table_fd_at_own_fds(holder: i32, pid: i32) -> AtOwnFds {
    let Some((soft, hard)) = nofile(holder) else {
        return AtOwnFds::Nothing;
    };
    let at = own_fds_at(soft, hard);
    let mut found = AtOwnFds::Nothing;
    for fd in at..at.saturating_add(OWN_FDS_TRIED) {
        let Ok(t) = std::fs::read_link(format!("/proc/{holder}/fd/{fd}")) else {
            continue;
        };
        let t = t.to_string_lossy();
        if is_table_link(&t, pid) {
            return AtOwnFds::Table(fd);
        }
        if let (AtOwnFds::Nothing, Some(owner)) = (&found, table_owner(&t)) {
            found = AtOwnFds::Other { fd, owner };
            // The first of the numbers holds the process's table: a
            // forked child's shim puts its own in place of its parent's
            // there (`make_own_table`). Another's table there is a child
            // that has none of its own; the numbers above hold the
            // tombstone source, and reading them cost each fork of such a
            // child (a shell's `$(a | b)`) three more /proc lookups.
            if fd == at {
                return found;
            }
        }
    }
    found
}

/// Scans the fds of process `holder` for the table of process `pid` and
/// maps it.
pub fn find_among_fds(holder: i32, pid: i32) -> Option<MappedTable> {
    let fd = if holder == pid {
        own_table_fd(pid)?
    } else {
        table_fd_among(holder, pid)?
    };
    let f = open_magic_link(&format!("/proc/{holder}/fd/{fd}"))?;
    MappedTable::map(&f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    /// Names no process (pids stay below 2^22): other tests of this
    /// binary make tables named for this process.
    const NOBODY: i32 = i32::MAX - 7;

    /// A memfd named as process NOBODY's table, moved to the first free
    /// number from `at`.
    fn table_at(at: i32) -> OwnedFd {
        let name = std::ffi::CString::new(table_name(NOBODY)).expect("name");
        // SAFETY: memfd_create with a NUL-terminated name; owned right away.
        let m = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(m >= 0, "memfd_create");
        // SAFETY: m is ours.
        let m = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: F_DUPFD_CLOEXEC of an fd we own; the result is owned.
        let n = unsafe { libc::fcntl(m.as_raw_fd(), libc::F_DUPFD_CLOEXEC, at) };
        assert!(n >= at, "F_DUPFD_CLOEXEC {at}");
        // SAFETY: n is ours.
        unsafe { OwnedFd::from_raw_fd(n) }
    }

    #[test]
    fn table_found_where_the_shim_puts_it_and_elsewhere_by_the_scan() {
        let me = std::process::id() as i32;
        let (soft, hard) = nofile(me).expect("our own limit");
        // The shim's numbers must lie under the soft limit for this
        // process to use them (the shim steps over it; a test need not).
        let want = soft.max(2048);
        if hard < want {
            eprintln!("skipped: hard RLIMIT_NOFILE {hard} < {want}");
            return;
        }
        let set = |cur: u64| {
            let lim = libc::rlimit {
                rlim_cur: cur,
                rlim_max: hard,
            };
            // SAFETY: prlimit on ourselves with a local struct.
            unsafe { libc::prlimit(0, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) }
        };
        assert_eq!(set(want), 0);
        let at = own_fds_at(want, hard);
        let hinted = table_at(at);
        let fd = hinted.as_raw_fd();
        assert!(fd < at + OWN_FDS_TRIED, "{fd} from {at}");
        assert!(matches!(table_fd_at_own_fds(me, NOBODY), AtOwnFds::Table(f) if f == fd));
        assert_eq!(table_fd_among(me, NOBODY), Some(fd));
        // Beyond the numbers tried: only the scan finds it.
        let far = table_at(at + 100);
        drop(hinted);
        assert!(!matches!(
            table_fd_at_own_fds(me, NOBODY),
            AtOwnFds::Table(_)
        ));
        assert_eq!(table_fd_among(me, NOBODY), Some(far.as_raw_fd()));
        drop(far);
        assert_eq!(table_fd_among(me, NOBODY), None);
        assert_eq!(own_table_fd(NOBODY), None);
        set(soft);
    }
}
