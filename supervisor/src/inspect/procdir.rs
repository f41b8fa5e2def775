//! The /proc I/O for one process, through one directory fd.
//!
//! `ProcDir` holds an fd on `/proc/PID` for the whole read, so a pid that is
//! reused while we read can never answer for the process we started on (the
//! old directory's entries fail with ESRCH instead). Reads go through
//! `openat`/`readlinkat` relative to it with reused buffers: at 20,000 fds the
//! syscalls are the cost, and nothing else is allowed to be.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use procfs::process::Status;
use procfs::FromBufRead;

use super::InspectError;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn openat(dir: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: path is NUL-terminated; the fd returned is owned right away.
        let fd = unsafe { libc::openat(dir, path.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads a whole (small, /proc) file into `buf`, replacing its contents.
fn read_into(fd: &OwnedFd, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let spare = buf.capacity() - buf.len();
        // SAFETY: the pointer and length describe the vector's spare capacity.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr().add(buf.len()).cast(),
                spare,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the kernel initialised n more bytes.
        unsafe { buf.set_len(buf.len() + n as usize) };
        // /proc's seq_file records come whole: a short read is the end, and
        // the read that would return 0 is one syscall per fd saved.
        if (n as usize) < spare {
            return Ok(());
        }
    }
}

/// Classifies an errno from /proc into our error kinds.
pub fn classify(pid: i32, what: &str, e: io::Error) -> InspectError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => InspectError::NoSuchProcess(pid),
        Some(libc::EACCES) | Some(libc::EPERM) => InspectError::PermissionDenied(pid),
        _ => InspectError::Io {
            pid,
            what: what.to_string(),
            source: e,
        },
    }
}

/// `/proc/PID` held open.
pub struct ProcDir {
    pub pid: i32,
    dir: OwnedFd,
    fd_dir: Option<OwnedFd>,
    fdinfo_dir: Option<OwnedFd>,
    buf: Vec<u8>,
}

/// One entry of `/proc/PID/fd`, read.
pub struct RawFdEntry {
    pub fd: i32,
    pub target: String,
    /// The fdinfo text (empty when not read).
    pub fdinfo: String,
    /// Without fdinfo: the open flags' access mode as the magic link's
    /// permission bits tell it (r: FMODE_READ, w: FMODE_WRITE, neither:
    /// O_PATH), already in fdinfo's `flags` encoding.
    pub link_flags: Option<u32>,
}

impl ProcDir {
    pub fn open(pid: i32) -> Result<ProcDir, InspectError> {
        Self::open_path(pid, format!("/proc/{pid}"))
    }

    /// `/proc/PID/task/TID`: one thread's view, which still shows the fd
    /// table while the thread exits even if the group leader is gone.
    pub fn open_task(pid: i32, tid: i32) -> Result<ProcDir, InspectError> {
        Self::open_path(pid, format!("/proc/{pid}/task/{tid}"))
    }

    fn open_path(pid: i32, path: String) -> Result<ProcDir, InspectError> {
        if pid <= 0 {
            return Err(InspectError::NoSuchProcess(pid));
        }
        let path = CString::new(path).map_err(|_| InspectError::NoSuchProcess(pid))?;
        let dir = openat(libc::AT_FDCWD, &path, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| classify(pid, "/proc/PID", e))?;
        Ok(ProcDir {
            pid,
            dir,
            fd_dir: None,
            fdinfo_dir: None,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Reads a file below `/proc/PID` as text.
    pub fn read_text(&mut self, name: &str) -> io::Result<String> {
        let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let f = openat(self.dir.as_raw_fd(), &c, libc::O_RDONLY)?;
        read_into(&f, &mut self.buf)?;
        Ok(String::from_utf8_lossy(&self.buf).into_owned())
    }

    pub fn status(&mut self) -> Result<Status, InspectError> {
        let text = self
            .read_text("status")
            .map_err(|e| classify(self.pid, "status", e))?;
        Status::from_buf_read(text.as_bytes()).map_err(|e| InspectError::Io {
            pid: self.pid,
            what: "status".into(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })
    }

    /// True while the process has not been reaped or turned into a zombie.
    pub fn alive(&mut self) -> bool {
        match self.read_text("stat") {
            Ok(stat) => {
                // The state follows the last ')' (comm may contain parens).
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].trim_start().chars().next());
                !matches!(state, Some('Z') | Some('X') | Some('x'))
            }
            Err(_) => false,
        }
    }

    /// Opens the `fd` and `fdinfo` directories for [`ProcDir::read_fd`]
    /// without listing them (a caller that knows which fds it wants).
    pub fn open_fd_dirs(&mut self) -> Result<(), InspectError> {
        let pid = self.pid;
        let fd_dir = openat(
            self.dir.as_raw_fd(),
            c"fd",
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .map_err(|e| classify(pid, "fd", e))?;
        let fdinfo_dir = openat(
            self.dir.as_raw_fd(),
            c"fdinfo",
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(|e| classify(pid, "fdinfo", e))?;
        self.fd_dir = Some(fd_dir);
        self.fdinfo_dir = Some(fdinfo_dir);
        Ok(())
    }

    /// Lists the fd numbers in `/proc/PID/fd`, sorted.
    pub fn list_fds(&mut self) -> Result<Vec<i32>, InspectError> {
        let pid = self.pid;
        self.open_fd_dirs()?;
        let Some(fd_dir) = self.fd_dir.as_ref() else {
            return Err(InspectError::NoSuchProcess(pid));
        };
        // getdents through a dup so the O_PATH-free directory fd stays ours for readlinkat.
        let dup = cvt(unsafe {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own.
            libc::fcntl(fd_dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)
        })
        .map_err(|e| classify(pid, "fd", e))?;
        // SAFETY: dup is a fresh fd; fdopendir takes ownership of it.
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so dup is still ours to close.
            unsafe { libc::close(dup) };
            return Err(classify(pid, "fd", e));
        }
        let mut fds = Vec::new();
        let mut err = None;
        loop {
            // SAFETY: errno is thread-local; reset to tell end-of-dir from error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: dirp is a valid DIR* until closedir below.
            let ent = unsafe { libc::readdir64(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                if e.raw_os_error().unwrap_or(0) != 0 {
                    err = Some(e);
                }
                break;
            }
            // SAFETY: d_name is a NUL-terminated array inside the entry.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            if let Some(fd) = name.to_str().ok().and_then(|s| s.parse::<i32>().ok()) {
                fds.push(fd);
            }
        }
        // SAFETY: dirp came from fdopendir and is closed once.
        unsafe { libc::closedir(dirp) };
        if let Some(e) = err {
            return Err(classify(pid, "fd", e));
        }
        fds.sort_unstable();
        Ok(fds)
    }

    /// Reads one fd's link target and, with `full` or when the object needs
    /// it (anonymous inodes keep their identity and state there), its
    /// fdinfo; otherwise the link's mode gives the access mode for the cost
    /// of one lstat (sockets need not even that: always O_RDWR). `Ok(None)`
    /// when the fd was closed after listing (or the process went away: the
    /// caller checks).
    pub fn read_fd(&mut self, fd: i32, full: bool) -> io::Result<Option<RawFdEntry>> {
        let (Some(fd_dir), Some(fdinfo_dir)) = (&self.fd_dir, &self.fdinfo_dir) else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let mut name = itoa_buf(fd);
        let cname = CStr::from_bytes_until_nul(&name[..])
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut link = [0u8; 4096];
        // SAFETY: link is a writable buffer of link.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                fd_dir.as_raw_fd(),
                cname.as_ptr(),
                link.as_mut_ptr().cast(),
                link.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(None),
                _ => Err(e),
            };
        }
        let target = String::from_utf8_lossy(&link[..n as usize]).into_owned();
        let mut fdinfo = String::new();
        let mut link_flags = None;
        let want_fdinfo = full || target.starts_with("anon_inode:") || target.starts_with("pidfd:");
        if !want_fdinfo {
            if target.starts_with("socket:") {
                link_flags = Some(super::parse::oflags::RDWR);
            } else {
                // SAFETY: an all-zero stat is a valid value to be overwritten.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: cname is NUL-terminated and st is writable.
                let r = unsafe {
                    libc::fstatat(
                        fd_dir.as_raw_fd(),
                        cname.as_ptr(),
                        &mut st,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    return match e.raw_os_error() {
                        Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(None),
                        _ => Err(e),
                    };
                }
                use super::parse::oflags;
                link_flags = Some(match (st.st_mode & 0o400 != 0, st.st_mode & 0o200 != 0) {
                    (true, true) => oflags::RDWR,
                    (true, false) => oflags::RDONLY,
                    (false, true) => oflags::WRONLY,
                    (false, false) => oflags::PATH,
                });
            }
        }
        if want_fdinfo {
            match openat(fdinfo_dir.as_raw_fd(), cname, libc::O_RDONLY) {
                Ok(f) => {
                    read_into(&f, &mut self.buf)?;
                    fdinfo = String::from_utf8_lossy(&self.buf).into_owned();
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        name.fill(0);
        Ok(Some(RawFdEntry {
            fd,
            target,
            fdinfo,
            link_flags,
        }))
    }

    /// Only the link target of one fd (after [`ProcDir::list_fds`]):
    /// what `handles --all` needs to tell most types apart, one
    /// `readlinkat` and no fdinfo. `Ok(None)` when the fd was closed after
    /// listing.
    pub fn link_of(&self, fd: i32) -> io::Result<Option<String>> {
        let Some(fd_dir) = &self.fd_dir else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let name = itoa_buf(fd);
        let cname = CStr::from_bytes_until_nul(&name[..])
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut link = [0u8; 4096];
        // SAFETY: link is a writable buffer of link.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                fd_dir.as_raw_fd(),
                cname.as_ptr(),
                link.as_mut_ptr().cast(),
                link.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(
            String::from_utf8_lossy(&link[..n as usize]).into_owned(),
        ))
    }

    /// lstat(2) of the fd's magic link itself: its permission bits are
    /// the open file's access mode (none at all for O_PATH).
    pub fn lstat_link(&self, fd: i32) -> io::Result<libc::stat> {
        let Some(fd_dir) = &self.fd_dir else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let name = itoa_buf(fd);
        let cname = CStr::from_bytes_until_nul(&name[..])
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: cname is NUL-terminated and st is writable.
        cvt(unsafe {
            libc::fstatat(
                fd_dir.as_raw_fd(),
                cname.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// stat(2) of what the fd points at (following the magic link).
    pub fn stat_fd(&self, fd: i32) -> io::Result<libc::stat> {
        let Some(fd_dir) = &self.fd_dir else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let name = itoa_buf(fd);
        let cname = CStr::from_bytes_until_nul(&name[..])
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: cname is NUL-terminated and st is writable.
        cvt(unsafe { libc::fstatat(fd_dir.as_raw_fd(), cname.as_ptr(), &mut st, 0) })?;
        Ok(st)
    }

    /// Opens what the fd points at, as a new open file description of the
    /// same object (used for memfd seals and size).
    pub fn reopen_fd(&self, fd: i32, flags: libc::c_int) -> io::Result<OwnedFd> {
        let Some(fd_dir) = &self.fd_dir else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let name = itoa_buf(fd);
        let cname = CStr::from_bytes_until_nul(&name[..])
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        openat(fd_dir.as_raw_fd(), cname, flags)
    }
}

/// Formats a non-negative fd as a NUL-terminated decimal string without
/// allocating.
fn itoa_buf(mut n: i32) -> [u8; 12] {
    let mut digits = [0u8; 12];
    let mut i = 0;
    if n <= 0 {
        digits[0] = b'0';
        i = 1;
    }
    while n > 0 {
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
    }
    let mut out = [0u8; 12];
    for j in 0..i {
        out[j] = digits[i - 1 - j];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa() {
        assert_eq!(&itoa_buf(0)[..2], b"0\0");
        assert_eq!(&itoa_buf(1234)[..5], b"1234\0");
        assert_eq!(&itoa_buf(i32::MAX)[..11], b"2147483647\0");
    }
}
