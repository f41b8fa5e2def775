//! Reading another process's memory, for the whole crate (the unwinder,
//! the exec stop's initial stack, `run::tracer`'s reads at a stop):
//! `process_vm_readv` first (one syscall per window, no file descriptor),
//! `/proc/TID/mem` when that is refused (kernels built without
//! CONFIG_CROSS_MEMORY_ATTACH, or a seccomp policy in the supervisor's own
//! sandbox).

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

const PAGE: u64 = 4096;

/// Reads `buf.len()` bytes at `addr` in `tid`'s address space. Returns how
/// many bytes were read: a read that runs into an unmapped page stops there
/// instead of failing, so callers can ask for more than they are sure exists.
pub(crate) fn read_partial(tid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    match vm_readv(tid, addr, buf) {
        Ok(n) => Ok(n),
        // EFAULT means the first page is not mapped: /proc/TID/mem would say
        // the same, so only a refusal of the syscall itself falls back.
        Err(Errno::EPERM | Errno::ENOSYS | Errno::EACCES) => {
            let mem = File::open(format!("/proc/{tid}/mem"))
                .map_err(|e| with_context(e, format!("opening /proc/{tid}/mem")))?;
            read_proc_mem(&mem, addr, buf)
        }
        Err(e) => Err(with_context(
            io::Error::from(e),
            format!("reading {} bytes at {addr:#x} in {tid}", buf.len()),
        )),
    }
}

fn vm_readv(tid: i32, addr: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    if buf.is_empty() {
        return Ok(0);
    }
    // The kernel does not split one remote iovec on a fault: either all of
    // it is copied or none. One iovec per page makes a read that runs off the
    // end of a mapping return the pages before it.
    let end = addr.checked_add(buf.len() as u64).ok_or(Errno::EFAULT)?;
    let pages = (end.div_ceil(PAGE) - addr / PAGE) as usize;
    // A stop's reads (a poll array, a pipe's two fds, a path) span a page
    // or two: their iovecs stay on the stack.
    const INLINE: usize = 4;
    let mut inline = [RemoteIoVec { base: 0, len: 0 }; INLINE];
    let mut heap = Vec::new();
    let remote: &mut [RemoteIoVec] = if pages <= INLINE {
        &mut inline[..pages]
    } else {
        heap.resize(pages, RemoteIoVec { base: 0, len: 0 });
        &mut heap
    };
    let mut at = addr;
    for slot in remote.iter_mut() {
        let stop = ((at / PAGE) + 1)
            .checked_mul(PAGE)
            .map_or(end, |next| next.min(end));
        *slot = RemoteIoVec {
            base: usize::try_from(at).map_err(|_| Errno::EFAULT)?,
            len: (stop - at) as usize,
        };
        at = stop;
    }
    let mut local = [IoSliceMut::new(buf)];
    process_vm_readv(Pid::from_raw(tid), &mut local, remote)
}

fn read_proc_mem(mem: &File, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let Some(at) = addr.checked_add(done as u64) else {
            break;
        };
        match mem.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A fault part-way is the end of the mapping, not a failure.
            Err(_) if done > 0 => break,
            Err(e) => {
                return Err(with_context(
                    e,
                    format!("reading /proc/TID/mem at {addr:#x}"),
                ))
            }
        }
    }
    Ok(done)
}

/// Reads exactly `len` bytes or fails.
pub(crate) fn read_exact(tid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = read_partial(tid, addr, &mut buf)?;
    if n < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("only {n} of {len} bytes readable at {addr:#x} in {tid}"),
        ));
    }
    Ok(buf)
}

/// Appends up to `len` bytes of `tid`'s memory at `addr` to `out`, fewer
/// when the range runs into unmapped memory; returns how many. A dead
/// tracee reads as nothing. Reads into `out`'s spare capacity: the
/// exec stop reads up to a MiB of stack this way without zeroing it first.
pub(crate) fn read_append(tid: i32, addr: u64, len: usize, out: &mut Vec<u8>) -> usize {
    let Some(end) = addr.checked_add(len as u64) else {
        return 0;
    };
    let mut remote = Vec::with_capacity(len / PAGE as usize + 2);
    let mut at = addr;
    while at < end {
        let next = ((at / PAGE) + 1).saturating_mul(PAGE).min(end);
        remote.push(libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: (next - at) as usize,
        });
        at = next;
    }
    // IOV_MAX; MAX_STACK keeps us far below it.
    remote.truncate(1024);
    let len = remote.iter().map(|v| v.iov_len).sum::<usize>();
    out.reserve(len);
    let spare = out.spare_capacity_mut();
    let local = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: local points at `len` bytes of out's spare capacity, which
    // the kernel only writes; the remote iovecs are only interpreted in
    // the tracee's address space.
    let n = unsafe {
        libc::process_vm_readv(
            tid,
            &local,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return match Errno::last() {
            Errno::EPERM | Errno::ENOSYS | Errno::EACCES => {
                append_from_proc_mem(tid, addr, len, out)
            }
            _ => 0,
        };
    };
    let n = n.min(len);
    // SAFETY: process_vm_readv wrote n bytes at the start of the spare
    // capacity, so they are initialised; n <= len <= spare capacity.
    unsafe { out.set_len(out.len() + n) };
    n
}

fn append_from_proc_mem(tid: i32, addr: u64, len: usize, out: &mut Vec<u8>) -> usize {
    let Ok(mem) = File::open(format!("/proc/{tid}/mem")) else {
        return 0;
    };
    let old = out.len();
    out.resize(old + len, 0);
    let n = read_proc_mem(&mem, addr, &mut out[old..]).unwrap_or(0);
    out.truncate(old + n);
    n
}

pub(crate) fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Serves the unwinder's 8-byte stack reads from a few windows fetched in
/// one syscall each: an unwind of ten frames touches a few hundred bytes of
/// stack, and a syscall per word would cost more than the unwinding itself.
pub(crate) struct StackReader {
    tid: i32,
    windows: Vec<(u64, Vec<u8>)>,
    mem: Option<File>,
    vm_readv_refused: bool,
}

/// One page per window: copying more costs more than the occasional second
/// syscall when a stack walk crosses a page (measured: 2.5 µs for a cached
/// ten-frame unwind with 4 KiB windows, 4 µs with 8 KiB, 5 µs with 16 KiB).
const WINDOW: usize = PAGE as usize;
/// Bounds the stack a walk may touch (256 KiB) and so a runaway chain.
const MAX_WINDOWS: usize = 64;

impl StackReader {
    pub(crate) fn new(tid: i32) -> StackReader {
        StackReader {
            tid,
            windows: Vec::new(),
            mem: None,
            vm_readv_refused: false,
        }
    }

    pub(crate) fn read_u64(&mut self, addr: u64) -> Result<u64, ()> {
        if let Some(v) = self.cached(addr) {
            return Ok(v);
        }
        // Stack slots are 8-byte aligned, so a word that straddles two
        // pages (two windows) only comes from a garbage pointer.
        if self.windows.len() >= MAX_WINDOWS || addr % PAGE > PAGE - 8 {
            return Err(());
        }
        let start = addr & !(PAGE - 1);
        let mut buf = vec![0u8; WINDOW];
        let n = self.fetch(start, &mut buf).map_err(|_| ())?;
        buf.truncate(n);
        self.windows.push((start, buf));
        self.cached(addr).ok_or(())
    }

    fn cached(&self, addr: u64) -> Option<u64> {
        self.windows.iter().find_map(|(start, bytes)| {
            let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
            let word = bytes.get(off..off.checked_add(8)?)?;
            Some(u64::from_le_bytes(word.try_into().ok()?))
        })
    }

    fn fetch(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
        if !self.vm_readv_refused {
            match vm_readv(self.tid, addr, buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EPERM | Errno::ENOSYS | Errno::EACCES) => self.vm_readv_refused = true,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        if self.mem.is_none() {
            self.mem = Some(File::open(format!("/proc/{}/mem", self.tid))?);
        }
        match &self.mem {
            Some(mem) => read_proc_mem(mem, addr, buf),
            None => Err(io::Error::other("no /proc/TID/mem")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn stack_reader_reads_words_of_this_process() {
        let words: Vec<u64> = (0..1024).map(|i| i * 0x0101_0101).collect();
        let base = words.as_ptr() as u64;
        let mut r = StackReader::new(me());
        for i in [0usize, 1, 511, 512, 1023] {
            assert_eq!(r.read_u64(base + 8 * i as u64), Ok(words[i]));
        }
        assert_eq!(r.read_u64(0), Err(()));
        assert_eq!(r.read_u64(u64::MAX - 3), Err(()));
    }

    #[test]
    fn a_read_past_the_end_of_a_mapping_is_partial() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let stack = maps
            .lines()
            .find(|l| l.ends_with("[stack]"))
            .expect("a [stack] line");
        let end = stack
            .split(['-', ' '])
            .nth(1)
            .and_then(|e| u64::from_str_radix(e, 16).ok())
            .expect("stack end");
        // The page after the main stack is never mapped (guard gap).
        let mut buf = [0u8; 24];
        assert_eq!(read_partial(me(), end - 8, &mut buf).ok(), Some(8));
        assert!(read_exact(me(), end - 8, 24).is_err());
        assert!(read_partial(me(), end, &mut buf).is_err());
    }
}
