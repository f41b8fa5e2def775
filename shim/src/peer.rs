//! Other processes' tables: what another job process hides in its fd
//! table, for a listing or lookup of its fds (`ls -l /proc/$PPID/fd` or
//! `cat /proc/$PPID/fdinfo/5` in a job's child).
//!
//! Every process of a job keeps its table in a memfd named
//! `handles-table:<pid>`, which the kernel shows among its fds; the shim
//! finds it there and reads the slots' states with pread (a pread
//! carries the shim's cookie; an mmap of an fd would stop under a strict
//! supervisor, which does not know the shim's fd). A listing is judged
//! against a snapshot taken when its stream was made (`opendir`), one
//! listing of another process at a time: a second such listing replaces
//! the first's snapshot, and the first then shows every entry.

use core::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

use handles_model::fdpath;
use handles_model::protocol;
use handles_model::table::{state, HEADER_SIZE, MAGIC, MAX_CAPACITY, SLOT_SIZE, VERSION};

use crate::sys;

/// The directory stream (its fd) whose snapshot [`HIDDEN`] holds, or -1.
static DIRFD: AtomicI32 = AtomicI32::new(-1);
/// One bit per fd number of the listed process: hidden.
static HIDDEN: [AtomicU64; MAX_CAPACITY as usize / 64] =
    [const { AtomicU64::new(0) }; MAX_CAPACITY as usize / 64];

/// Opens (own fd, close-on-exec) the table memfd of process `pid`, found
/// among its fds; None if it has none we may open.
fn open_table(pid: i32) -> Option<i32> {
    let mut dir = [0u8; 48];
    let dir = sys::with_number(&mut dir, b"/proc/", pid);
    let mut path = [0u8; 64];
    let n = dir.len() - 1;
    path[..n].copy_from_slice(&dir[..n]);
    path[n..n + 4].copy_from_slice(b"/fd\0");
    // SAFETY: openat of a NUL-terminated local path.
    let d = unsafe {
        sys::own(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                path.as_ptr() as u64,
                (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )
    };
    if d < 0 {
        return None;
    }
    let d = d as i32;
    let found = find_in(d, &path[..n + 3]);
    sys::close(d);
    found
}

/// Walks the fd directory open at `d` (path `dir`, no NUL) for the table
/// memfd's entry and opens it.
fn find_in(d: i32, dir: &[u8]) -> Option<i32> {
    let mut buf = [0u64; 512];
    loop {
        // SAFETY: getdents64 into a local buffer of the size given.
        let n = unsafe {
            sys::sc(
                libc::SYS_getdents64,
                [d as u64, buf.as_mut_ptr() as u64, 4096, 0, 0, 0],
            )
        };
        if n <= 0 {
            return None;
        }
        // SAFETY: viewing the u64 buffer's first n bytes as bytes.
        let bytes = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut off = 0;
        while off + 19 <= bytes.len() {
            let reclen = usize::from(u16::from_ne_bytes([bytes[off + 16], bytes[off + 17]]));
            if reclen < 19 || off + reclen > bytes.len() {
                return None;
            }
            let name = &bytes[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            off += reclen;
            let Some(fd) = fdpath::number(name) else {
                continue;
            };
            let mut entry = [0u8; 80];
            let entry = entry_path(&mut entry, dir, fd)?;
            let mut link = [0u8; 64];
            // SAFETY: readlink of a NUL-terminated path into a local
            // buffer of the length given.
            let len = unsafe {
                sys::sc(
                    libc::SYS_readlink,
                    [
                        entry.as_ptr() as u64,
                        link.as_mut_ptr() as u64,
                        link.len() as u64,
                        0,
                        0,
                        0,
                    ],
                )
            };
            let Ok(len) = usize::try_from(len) else {
                continue;
            };
            if !protocol::is_table_link(&link[..len.min(link.len())]) {
                continue;
            }
            // SAFETY: openat of a NUL-terminated local path.
            let t = unsafe {
                sys::own(
                    libc::SYS_openat,
                    [
                        libc::AT_FDCWD as u64,
                        entry.as_ptr() as u64,
                        (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                        0,
                        0,
                        0,
                    ],
                )
            };
            return (t >= 0).then_some(t as i32);
        }
    }
}

/// `dir/fd` with a NUL, in `buf`.
fn entry_path<'a>(buf: &'a mut [u8; 80], dir: &[u8], fd: i32) -> Option<&'a [u8]> {
    let mut num = [0u8; 48];
    let num = sys::with_number(&mut num, b"/", fd);
    let n = dir.len() + num.len();
    if n > buf.len() {
        return None;
    }
    buf[..dir.len()].copy_from_slice(dir);
    buf[dir.len()..n].copy_from_slice(num);
    Some(&buf[..n])
}

fn pread(fd: i32, buf: &mut [u8], off: usize) -> bool {
    // SAFETY: pread into a local buffer of the length given.
    let n = unsafe {
        sys::sc(
            libc::SYS_pread64,
            [
                fd as u64,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
                off as u64,
                0,
                0,
            ],
        )
    };
    n == buf.len() as i64
}

/// The table's capacity, if the header at the start of memfd `t` is one
/// this shim knows.
fn capacity(t: i32) -> Option<usize> {
    let mut h = [0u8; HEADER_SIZE];
    if !pread(t, &mut h, 0) {
        return None;
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let magic = u64::from_ne_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let cap = word(20);
    (magic == MAGIC
        && word(8) == VERSION
        && word(12) as usize == HEADER_SIZE
        && word(16) as usize == SLOT_SIZE
        && cap <= MAX_CAPACITY)
        .then_some(cap as usize)
}

/// Whether a slot's state (the slot's second word) hides its number.
fn hides(slot: &[u8]) -> bool {
    let st = u32::from_ne_bytes([slot[4], slot[5], slot[6], slot[7]]);
    st == state::TOMBSTONE || st == state::INTERNAL
}

/// Whether fd `fd` of process `pid` is hidden in its table (a lookup of
/// `/proc/PID/fd/N`).
pub fn hidden(pid: i32, fd: i32) -> bool {
    let Some(t) = open_table(pid) else {
        return false;
    };
    let mut slot = [0u8; SLOT_SIZE];
    let hid = usize::try_from(fd).is_ok_and(|i| {
        capacity(t).is_some_and(|cap| i < cap)
            && pread(t, &mut slot, HEADER_SIZE + i * SLOT_SIZE)
            && hides(&slot)
    });
    sys::close(t);
    hid
}

/// The stream on `dirfd` lists process `pid`'s fds: takes the snapshot
/// of its hidden numbers. Returns whether there is one to filter with.
pub fn note(dirfd: i32, pid: i32) -> bool {
    forget(DIRFD.load(Relaxed));
    let Some(t) = open_table(pid) else {
        return false;
    };
    let Some(cap) = capacity(t) else {
        sys::close(t);
        return false;
    };
    let mut chunk = [0u8; 128 * SLOT_SIZE];
    let mut i = 0;
    while i < cap {
        let n = (cap - i).min(128);
        if !pread(t, &mut chunk[..n * SLOT_SIZE], HEADER_SIZE + i * SLOT_SIZE) {
            break;
        }
        for k in 0..n {
            if hides(&chunk[k * SLOT_SIZE..(k + 1) * SLOT_SIZE]) {
                let fd = i + k;
                HIDDEN[fd / 64].fetch_or(1 << (fd % 64), Relaxed);
            }
        }
        i += n;
    }
    sys::close(t);
    DIRFD.store(dirfd, Relaxed);
    true
}

/// Whether entry `fd` of the listing on stream `dirfd` is hidden; None
/// when that stream has no snapshot here.
pub fn listed_hidden(dirfd: i32, fd: i32) -> Option<bool> {
    if dirfd < 0 || DIRFD.load(Relaxed) != dirfd {
        return None;
    }
    let i = usize::try_from(fd).ok()?;
    Some(
        HIDDEN
            .get(i / 64)
            .is_some_and(|w| w.load(Relaxed) & (1 << (i % 64)) != 0),
    )
}

/// The stream on `dirfd` is gone: its snapshot too.
pub fn forget(dirfd: i32) {
    if dirfd >= 0 && DIRFD.compare_exchange(dirfd, -1, Relaxed, Relaxed).is_ok() {
        for w in &HIDDEN {
            if w.load(Relaxed) != 0 {
                w.store(0, Relaxed);
            }
        }
    }
}
