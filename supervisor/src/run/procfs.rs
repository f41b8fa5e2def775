//! What the kernel says of a tracee outside ptrace: /proc files, kcmp,
//! its auxiliary vector, its fd limit.

use handles_model::ObjType;

use super::fdtable::ObjectFacts;
use crate::inspect::parse::LinkTarget;

/// A thread's name (`?` if it is gone).
pub(super) fn comm(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Whether `fd` is open in process `tgid`.
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

/// The soft RLIMIT_NOFILE of a process.
pub(super) fn nofile_limit(tgid: i32) -> u64 {
    crate::inspect::shared::nofile(tgid).map_or(1024, |(soft, _)| soft)
}

/// Type, koid and link target of an open fd, read through the process's
/// `/proc/PID/fd` directory fd (`dir`) when there is one: what a later
/// report says the handle was. Taken at every close, so it avoids the full
/// /proc path walk.
pub(crate) fn object_facts_at(
    dir: Option<&std::os::fd::OwnedFd>,
    tgid: i32,
    fd: i32,
) -> ObjectFacts {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(fd.to_string()).unwrap_or_default();
    let mut buf = [0u8; 4096];
    let (n, dirfd, cpath) = match dir {
        Some(d) => {
            // SAFETY: name is NUL-terminated and buf writable for its length.
            let n = unsafe {
                libc::readlinkat(
                    d.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            (n, d.as_raw_fd(), name.clone())
        }
        None => {
            let path = std::ffi::CString::new(format!("/proc/{tgid}/fd/{fd}")).unwrap_or_default();
            // SAFETY: as above, with an absolute path.
            let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            (n, libc::AT_FDCWD, path)
        }
    };
    if n <= 0 {
        return ObjectFacts::default();
    }
    let target = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let stat = || -> Option<libc::stat> {
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: cpath is NUL-terminated, st writable; follows the magic link.
        (unsafe { libc::fstatat(dirfd, cpath.as_ptr(), &mut st, 0) } == 0).then_some(st)
    };
    let (ty, koid) = match LinkTarget::parse(&target) {
        LinkTarget::Socket(i) => (ObjType::Socket, i),
        LinkTarget::Pipe(i) => (ObjType::Pipe, i),
        LinkTarget::Pidfd(i) => (ObjType::Process, i),
        LinkTarget::Memfd(_) => (ObjType::Vmo, stat().map_or(0, |s| s.st_ino)),
        LinkTarget::AnonInode(name) => (crate::inspect::classify::anon_type(&name), 0),
        LinkTarget::Path(_) | LinkTarget::Other(_) => match stat() {
            Some(s) if s.st_mode & libc::S_IFMT == libc::S_IFDIR => (ObjType::Dir, s.st_ino),
            Some(s) if s.st_mode & libc::S_IFMT == libc::S_IFREG => (ObjType::File, s.st_ino),
            Some(s) => (ObjType::Chardev, s.st_ino),
            None => (ObjType::Unknown, 0),
        },
    };
    ObjectFacts {
        ty: ty.name(),
        koid,
        target,
    }
}

/// A socket's type in the model: AF_UNIX sockets are channels.
pub(crate) fn refine_socket(tgid: i32, fd: i32, ty: ObjType) -> ObjType {
    if ty == ObjType::Socket
        && crate::inspect::classify::sock_protocol_name(tgid, fd)
            .is_some_and(|p| p.starts_with("UNIX"))
    {
        ObjType::Channel
    } else {
        ty
    }
}
