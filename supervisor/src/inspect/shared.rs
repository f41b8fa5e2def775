//! Finding and reading the handle table that a process's shim, or its
//! supervisor, publishes (layout in `handles_model::table`).
//!
//! The shim's table is a memfd in the process itself; the supervisor's is a
//! memfd in the supervisor, found through the process's TracerPid. Both are
//! named `handles-table:<pid>`. The mapping is read-only here and treated
//! as hostile: a corrupt table is ignored and /proc alone is used.

use std::os::fd::{AsRawFd, OwnedFd};

use handles_model::table::{TableError, TableView, MAX_CAPACITY};

use super::parse::LinkTarget;

/// The memfd name both writers use.
pub fn table_name(pid: i32) -> String {
    format!("handles-table:{pid}")
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
        LinkTarget::Memfd(name) => name.strip_prefix("handles-table:")?.parse().ok(),
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

/// Scans the fds of process `holder` for the table of process `pid` and
/// maps it.
pub fn find_among_fds(holder: i32, pid: i32) -> Option<MappedTable> {
    let fd = table_fd_among(holder, pid)?;
    let f = open_magic_link(&format!("/proc/{holder}/fd/{fd}"))?;
    MappedTable::map(&f)
}
