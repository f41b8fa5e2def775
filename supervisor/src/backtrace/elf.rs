//! Finding and opening the file behind a mapping, and the vdso image.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, OnceLock};

use super::memory::{read_exact, with_context};

/// Identifies one version of a module file, so that a binary rebuilt at the
/// same path is read again: by inode, and by build id (or header hash)
/// because a deleted file's inode number is soon reused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub identity: u64,
}

impl FileKey {
    pub(crate) fn is_vdso(&self) -> bool {
        self.path == "[vdso]"
    }
}

/// Opens the file that `pid` has mapped as `key`, trying in turn:
///
/// 1. the path inside the process's root (`/proc/PID/root/PATH`), so that a
///    process in another mount namespace or chroot is served its own file;
/// 2. `/proc/PID/map_files/START-END`, the mapped file itself, which still
///    works for a deleted file (needs CAP_SYS_ADMIN, so mostly as root);
/// 3. the path in our own namespace, for a process that has since exited.
///
/// A file found by path is accepted only if its inode is the mapped one: a
/// rebuilt binary must not be used to symbolize the old one. The device is
/// not compared because overlayfs reports the overlay's device to `stat` and
/// the underlying one in /proc/PID/maps.
pub(crate) fn open_module_file(
    pid: i32,
    key: &FileKey,
    deleted: bool,
    mapping: Option<(u64, u64)>,
) -> io::Result<File> {
    let mut errors = Vec::new();
    if !deleted {
        match open_checked(&format!("/proc/{pid}/root{}", key.path), key.inode) {
            Ok(f) => return Ok(f),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some((start, end)) = mapping {
        let p = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        match File::open(&p) {
            Ok(f) => return Ok(f),
            Err(e) => errors.push(format!("{p}: {e}")),
        }
    }
    if !deleted {
        match open_checked(&key.path, key.inode) {
            Ok(f) => return Ok(f),
            Err(e) => errors.push(e.to_string()),
        }
    } else {
        errors.push(format!("{} was deleted after it was mapped", key.path));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "cannot open module {} of process {pid}: {}",
            key.path,
            errors.join("; ")
        ),
    ))
}

/// Opens a file the traced program named (a module path from its maps, a
/// debug file its ELF's .gnu_debuglink names) for reading, refusing
/// anything but a regular file. O_NONBLOCK: a FIFO put at such a path would
/// otherwise block the open, and with it the supervisor, for ever; O_NOCTTY:
/// opening a terminal must not make it ours.
pub(crate) fn open_regular(path: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| with_context(e, path.to_string()))?;
    let meta = f
        .metadata()
        .map_err(|e| with_context(e, format!("stat {path}")))?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path} is not a regular file"),
        ));
    }
    Ok(f)
}

fn open_checked(path: &str, inode: u64) -> io::Result<File> {
    let f = open_regular(path)?;
    let meta = f
        .metadata()
        .map_err(|e| with_context(e, format!("stat {path}")))?;
    if meta.ino() != inode {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{path} is inode {}, the process mapped inode {inode} (file replaced since)",
                meta.ino()
            ),
        ));
    }
    Ok(f)
}

/// Rejects a file whose build id is not the one the process mapped: the
/// file at the path was replaced since (perhaps on a reused inode).
pub(crate) fn check_build_id<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    expected: Option<&[u8]>,
    path: &str,
) -> io::Result<()> {
    use object::Object;
    let Some(expected) = expected else {
        return Ok(());
    };
    match obj.build_id() {
        Ok(Some(found)) if found == expected => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{path} is not the mapped file any more (build id differs)"),
        )),
    }
}

/// Reads up to `buf.len()` bytes at `offset`; short only at end of file.
pub(crate) fn read_at_most(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let Some(at) = offset.checked_add(done as u64) else {
            break;
        };
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The vdso's ELF image. Every 64-bit process on this kernel maps the same
/// image, so ours is read once and serves every tracee (and keeps working
/// after the tracee has exited); the tracee's own copy is read only if the
/// sizes differ.
pub(crate) fn vdso_image(pid: i32, start: u64, end: u64) -> io::Result<Arc<[u8]>> {
    static OWN: OnceLock<Option<Arc<[u8]>>> = OnceLock::new();
    let len = usize::try_from(end.saturating_sub(start))
        .map_err(|_| io::Error::other("vdso too large"))?;
    if let Some(own) = OWN.get_or_init(|| own_vdso().ok()) {
        if own.len() == len {
            return Ok(own.clone());
        }
    }
    Ok(Arc::from(read_exact(pid, start, len)?))
}

fn own_vdso() -> io::Result<Arc<[u8]>> {
    let me = std::process::id() as i32;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let line = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .ok_or_else(|| io::Error::other("no [vdso] in /proc/self/maps"))?;
    let range = line.split(' ').next().unwrap_or("");
    let (s, e) = range
        .split_once('-')
        .ok_or_else(|| io::Error::other("bad [vdso] line"))?;
    let parse = |x: &str| u64::from_str_radix(x, 16).map_err(io::Error::other);
    let (s, e) = (parse(s)?, parse(e)?);
    let len = usize::try_from(e.saturating_sub(s)).map_err(io::Error::other)?;
    Ok(Arc::from(read_exact(me, s, len)?))
}

#[cfg(test)]
mod tests {
    use super::open_regular;

    #[test]
    fn only_regular_files_are_opened_and_a_fifo_does_not_block() {
        let dir = std::env::temp_dir().join(format!("handles-open-regular-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer for ever.
        assert!(open_regular(&fifo.to_string_lossy()).is_err());
        assert!(open_regular("/dev/null").is_err());
        assert!(open_regular("/proc/self/exe").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
