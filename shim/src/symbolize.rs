//! Functions and lines for the stacks of the shim's own reports, which it
//! writes when no supervisor does (`handles run --no-ptrace`).
//!
//! The shim has no symbol or line tables (reading DWARF inside a libc
//! wrapper would allocate and open files), so it asks the `handles`
//! binary (`HANDLES_SYMBOLIZER`, set by `handles run --no-ptrace`): a
//! child made with a raw clone that only dup3s and execs `handles
//! symbolize PID` with an empty environment (no shim in it), fed the
//! return addresses, one hex number a line, an empty line after each
//! stack, and read back until it exits. The child sends no SIGCHLD (exit
//! signal 0), so the program's own wait calls and SIGCHLD handler never
//! see it; it is reaped here with `__WALL`. Anything that fails leaves the
//! report with addresses and module offsets, as before.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::sys;

static PATH: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
static PATH_LEN: AtomicUsize = AtomicUsize::new(0);

/// The text the symbolizer printed, in an anonymous mapping of its own.
pub struct Text {
    base: *mut u8,
    cap: usize,
    len: usize,
}

const CAP: usize = 1 << 18;

impl Text {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: base..base+len was written by read() into our mapping.
        unsafe { core::slice::from_raw_parts(self.base, self.len) }
    }

    /// The lines of stack `k` (an empty line ends each).
    pub fn stack(&self, k: usize) -> impl Iterator<Item = &[u8]> {
        self.bytes()
            .split(|&c| c == b'\n')
            .scan(0usize, |n, l| {
                let here = *n;
                if l.is_empty() {
                    *n += 1;
                }
                Some((here, l))
            })
            .filter(move |&(i, l)| i == k && !l.is_empty())
            .map(|(_, l)| l)
    }
}

impl Drop for Text {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this Text made.
        unsafe {
            sys::raw(
                libc::SYS_munmap,
                [self.base as u64, self.cap as u64, 0, 0, 0, 0],
            )
        };
    }
}

/// Keeps the symbolizer's path (the constructor; the environment may
/// change later).
pub fn init(path: &str) {
    let b = path.as_bytes();
    if b.is_empty() || b.len() >= PATH.len() * 8 {
        return;
    }
    for (i, chunk) in b.chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        PATH[i].store(usize::from_ne_bytes(w), Relaxed);
    }
    PATH_LEN.store(b.len(), Relaxed);
}

/// Functions and lines for `stacks`, or None.
pub fn symbolize(stacks: &[&[u64]]) -> Option<Text> {
    let len = PATH_LEN.load(Relaxed);
    if len == 0 {
        return None;
    }
    let mut path = [0u8; 520];
    for (i, w) in PATH.iter().enumerate().take(len.div_ceil(8)) {
        path[i * 8..i * 8 + 8].copy_from_slice(&w.load(Relaxed).to_ne_bytes());
    }
    path[len] = 0;
    let mut pid_arg = [0u8; 48];
    let pid_arg = sys::with_number(&mut pid_arg, b"", sys::getpid());
    let (to_r, to_w) = pipe()?;
    let Some((from_r, from_w)) = pipe() else {
        sys::close(to_r);
        sys::close(to_w);
        return None;
    };
    let argv: [*const u8; 4] = [
        path.as_ptr(),
        c"symbolize".as_ptr().cast(),
        pid_arg.as_ptr(),
        core::ptr::null(),
    ];
    let envp: [*const u8; 1] = [core::ptr::null()];
    // SAFETY: a fork-like clone (no shared memory, exit signal 0): the
    // child only makes raw syscalls on its own copy of the memory.
    let child = unsafe { sys::raw(libc::SYS_clone, [0, 0, 0, 0, 0, 0]) };
    if child == 0 {
        // SAFETY: raw syscalls on fds and static buffers of this copy.
        unsafe {
            sys::raw(libc::SYS_dup3, [to_r as u64, 0, 0, 0, 0, 0]);
            sys::raw(libc::SYS_dup3, [from_w as u64, 1, 0, 0, 0, 0]);
            sys::raw(
                libc::SYS_execve,
                [
                    path.as_ptr() as u64,
                    argv.as_ptr() as u64,
                    envp.as_ptr() as u64,
                    0,
                    0,
                    0,
                ],
            );
            sys::raw(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
        }
    }
    sys::close(to_r);
    sys::close(from_w);
    if child < 0 {
        sys::close(to_w);
        sys::close(from_r);
        return None;
    }
    let fed = feed(to_w, stacks);
    sys::close(to_w);
    let text = fed.then(|| collect(from_r)).flatten();
    sys::close(from_r);
    let mut status = 0i32;
    // SAFETY: waits for our own child, whatever its exit signal.
    unsafe {
        sys::raw(
            libc::SYS_wait4,
            [
                child as u64,
                (&mut status as *mut i32) as u64,
                libc::__WALL as u64,
                0,
                0,
                0,
            ],
        )
    };
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    text.filter(|t| ok && t.len > 0)
}

fn pipe() -> Option<(i32, i32)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two ints into p.
    let r = unsafe {
        sys::own(
            libc::SYS_pipe2,
            [p.as_mut_ptr() as u64, libc::O_CLOEXEC as u64, 0, 0, 0, 0],
        )
    };
    (r == 0).then_some((p[0], p[1]))
}

fn write_all(fd: i32, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        // SAFETY: writes from a live buffer of the length given.
        let n = unsafe {
            sys::sc(
                libc::SYS_write,
                [fd as u64, b.as_ptr() as u64, b.len() as u64, 0, 0, 0],
            )
        };
        if n == -(libc::EINTR as i64) {
            continue;
        }
        let Ok(n) = usize::try_from(n) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        b = &b[n..];
    }
    true
}

/// Writes the stacks as hex lines, an empty line after each.
fn feed(fd: i32, stacks: &[&[u64]]) -> bool {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    for s in stacks {
        for &pc in s.iter() {
            if n + 20 > buf.len() {
                if !write_all(fd, &buf[..n]) {
                    return false;
                }
                n = 0;
            }
            for shift in (0..16).rev() {
                let d = ((pc >> (shift * 4)) & 0xf) as u8;
                buf[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
                n += 1;
            }
            buf[n] = b'\n';
            n += 1;
        }
        buf[n] = b'\n';
        n += 1;
    }
    write_all(fd, &buf[..n])
}

/// Reads what the symbolizer prints until it closes its end.
fn collect(fd: i32) -> Option<Text> {
    // SAFETY: a fresh private anonymous mapping, ours.
    let base = unsafe {
        sys::raw(
            libc::SYS_mmap,
            [
                0,
                CAP as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
    };
    if (-4095..0).contains(&base) {
        return None;
    }
    let mut t = Text {
        base: base as *mut u8,
        cap: CAP,
        len: 0,
    };
    while t.len < t.cap {
        // SAFETY: reads into the unfilled rest of our mapping.
        let n = unsafe {
            sys::sc(
                libc::SYS_read,
                [
                    fd as u64,
                    t.base.add(t.len) as u64,
                    (t.cap - t.len) as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        if n == -(libc::EINTR as i64) {
            continue;
        }
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => t.len += n,
            Err(_) => return None,
        }
    }
    Some(t)
}
