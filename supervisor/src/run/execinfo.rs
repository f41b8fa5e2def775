//! What a new image was started with, read from its initial stack at the
//! PTRACE_EVENT_EXEC stop instead of from /proc.
//!
//! At that stop the image has not run one instruction: the stack at rsp
//! is still exactly what the kernel's `create_elf_tables` wrote (argc, the
//! argv and envp pointer arrays, the auxiliary vector) above which lie the
//! argv strings, the environment strings and the exec'd filename
//! (AT_EXECFN), contiguous, in that order, ending 8 bytes below the top of
//! the stack mapping. One `process_vm_readv` call gets all of it (two for
//! a stack beyond 32 KiB), and two more tell glibc's loader by its soname.
//! Measured at the exec stops of a traced shell's children (the ignored
//! test `measure_exec_stop`): about 25–30 µs for all of it, getregs
//! included, against 125–140 µs for reading /proc/PID/environ, auxv,
//! maps and comm. Most of what is left is a first access to a new
//! address space (a 64-byte read costs ~6 µs there, ~2 µs warm) and
//! faulting in the loader's first page and its .dynamic, which the loader
//! would otherwise fault in itself.
//!
//! Every answer here is "the same as /proc, or nothing": anything
//! unexpected (a 32-bit or x32 image, a dead tracee, a layout that is not
//! the kernel's, a stack larger than [`MAX_STACK`]) gives `None` or
//! `false`, and the caller falls back to /proc.

// Not called yet: on_exec takes it up in a separate change.

use std::borrow::Cow;
use std::ffi::CStr;
use std::ops::Range;

use super::tracer::Regs;

/// The code segment selector of a 64-bit thread (__USER_CS); a 32-bit one
/// runs with 0x23.
const USER64_CS: u64 = 0x33;

/// The first read from rsp: the pointer arrays, the random gap of up to
/// 8 KiB that `arch_align_stack` leaves below the strings, and the strings
/// of a usual environment (with a 2 KB environment, rsp is 3–12 KB below
/// the top). A read stops short at the end of the stack mapping, so
/// asking for more than is there costs nothing.
const FIRST_READ: usize = 32 << 10;

/// Beyond this much stack the caller reads /proc instead (the kernel
/// allows up to 6 MiB of arguments and environment). A stack larger than
/// [`FIRST_READ`] is read in a second call that asks for all of this and
/// stops at the end of the mapping.
pub const MAX_STACK: usize = 1 << 20;

/// Granularity of the remote iovecs: process_vm_readv documents partial
/// transfers only at iovec boundaries, so a read meant to stop at the end
/// of the stack mapping asks page by page.
const PAGE: u64 = 4096;

/// The soname of glibc's x86_64 dynamic loader.
const GLIBC_LOADER: &[u8] = b"ld-linux-x86-64.so.2";

/// The initial stack of a thread stopped at PTRACE_EVENT_EXEC.
#[derive(Debug)]
pub struct ExecInfo {
    /// Tracee memory from rsp to the end of AT_EXECFN's string.
    mem: Vec<u8>,
    /// The argument count and strings (each with its NUL, as
    /// /proc/PID/cmdline has them): checked by the tests, used by nobody.
    #[cfg(test)]
    argc: usize,
    #[cfg(test)]
    args: Range<usize>,
    /// The environment strings, each with its NUL: /proc/PID/environ.
    environ: Range<usize>,
    /// The auxv pairs up to and with AT_NULL: /proc/PID/auxv.
    auxv: Range<usize>,
    /// AT_EXECFN's string, without its NUL.
    execfn: Range<usize>,
}

impl ExecInfo {
    /// Reads the initial stack of `tid`, stopped at PTRACE_EVENT_EXEC with
    /// `regs`. None for a 32-bit image (its stack holds 32-bit words) and
    /// whenever [`ExecInfo::read`] gives None.
    pub fn from_regs(tid: i32, regs: &Regs) -> Option<ExecInfo> {
        if regs.cs != USER64_CS {
            return None;
        }
        ExecInfo::read(tid, regs.rsp)
    }

    /// Reads the initial stack of `tid` at `rsp`, which must be the rsp of
    /// its PTRACE_EVENT_EXEC stop: after the image has run, the stack is
    /// its own. One process_vm_readv, or two when the stack from rsp up
    /// is larger than [`FIRST_READ`].
    ///
    /// None when the tracee is gone, the stack is not the layout the
    /// kernel writes for a 64-bit image (an x32 image's argc word reads as
    /// a huge count), there is no AT_EXECFN, or it spans more than
    /// [`MAX_STACK`]: the caller then reads /proc/PID/environ, auxv and
    /// comm as before.
    pub fn read(tid: i32, rsp: u64) -> Option<ExecInfo> {
        // The ABI has rsp 16-byte aligned at process entry.
        if rsp == 0 || !rsp.is_multiple_of(16) {
            return None;
        }
        let mut stack = Stack::new(tid, rsp);
        stack.ensure(8)?;
        let argc = usize::try_from(stack.word(0)?).ok()?;
        // Each argument costs at least its pointer and a NUL.
        if argc > MAX_STACK / 9 {
            return None;
        }
        // argc, argv[], NULL
        let envp_at = 8 * (argc + 2);
        stack.ensure(envp_at + 8)?;
        if stack.word(envp_at - 8)? != 0 {
            return None;
        }
        let mut envc = 0;
        loop {
            let at = envp_at + 8 * envc;
            stack.ensure(at + 8)?;
            if stack.word(at)? == 0 {
                break;
            }
            envc += 1;
        }
        let auxv_at = envp_at + 8 * (envc + 1);
        let mut auxv_end = auxv_at;
        let mut execfn = None;
        loop {
            stack.ensure(auxv_end + 16)?;
            let key = stack.word(auxv_end)?;
            let value = stack.word(auxv_end + 8)?;
            auxv_end += 16;
            if key == libc::AT_NULL {
                break;
            }
            if key == libc::AT_EXECFN && execfn.is_none() {
                execfn = Some(value);
            }
        }
        let execfn_at = stack.offset(execfn?)?;
        if execfn_at < auxv_end {
            return None;
        }
        let name_len = loop {
            if let Some(s) = stack.mem.get(execfn_at..) {
                if let Ok(name) = CStr::from_bytes_until_nul(s) {
                    break name.to_bytes().len();
                }
            }
            // Grows or fails: the loop ends within MAX_STACK.
            stack.ensure(stack.mem.len().max(execfn_at) + 1)?;
        };
        let execfn = execfn_at..execfn_at + name_len;

        // The strings run from argv[0] up to AT_EXECFN's, each pointer
        // just past the previous string's NUL: check that much of the
        // kernel's layout, so that splitting the blocks at NULs gives back
        // exactly the strings the pointers name.
        let pointers = |first: usize, count: usize| -> Option<Vec<usize>> {
            (0..count)
                .map(|i| stack.offset(stack.word(first + 8 * i)?))
                .collect()
        };
        let argv = pointers(8, argc)?;
        let envp = pointers(envp_at, envc)?;
        let strings_at = argv.first().or(envp.first()).copied().unwrap_or(execfn_at);
        if strings_at < auxv_end {
            return None;
        }
        let mut next = strings_at;
        for &p in argv.iter().chain(&envp) {
            if p < next || (p > strings_at && stack.mem.get(p - 1) != Some(&0)) {
                return None;
            }
            next = p + 1;
        }
        if next > execfn_at || (execfn_at > strings_at && stack.mem.get(execfn_at - 1) != Some(&0))
        {
            return None;
        }
        let env_at = envp.first().copied().unwrap_or(execfn_at);
        let mut mem = stack.mem;
        mem.truncate(execfn.end + 1);
        Some(ExecInfo {
            mem,
            #[cfg(test)]
            argc,
            #[cfg(test)]
            args: strings_at..env_at,
            environ: env_at..execfn_at,
            auxv: auxv_at..auxv_end,
            execfn,
        })
    }

    #[cfg(test)]
    pub fn argc(&self) -> usize {
        self.argc
    }

    /// The arguments, as in /proc/PID/cmdline.
    #[cfg(test)]
    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        entries(&self.mem[self.args.clone()])
    }

    /// The environment block, byte for byte what /proc/PID/environ reads
    /// at this stop: `NAME=VALUE` strings, each ending in a NUL.
    pub fn environ(&self) -> &[u8] {
        &self.mem[self.environ.clone()]
    }

    /// The environment strings, without their NULs (an entry need not
    /// hold a '=': execve takes any string). A test oracle.
    #[cfg(test)]
    pub fn env_entries(&self) -> impl Iterator<Item = &[u8]> {
        entries(self.environ())
    }

    /// The value of `name` in the environment: the first entry that
    /// starts with `name=`, as getenv finds it.
    pub fn env(&self, name: &[u8]) -> Option<&[u8]> {
        getenv_in(self.environ(), name)
    }

    /// The auxiliary vector, byte for byte what /proc/PID/auxv reads.
    pub fn auxv_raw(&self) -> &[u8] {
        &self.mem[self.auxv.clone()]
    }

    /// The value of auxv entry `key` (a `libc::AT_*`), as `job::Auxv::get`
    /// answers it. A static binary has AT_BASE 0, not no AT_BASE.
    pub fn auxv(&self, key: u64) -> Option<u64> {
        self.auxv_raw().chunks_exact(16).find_map(|c| {
            let k = u64::from_ne_bytes(c[..8].try_into().ok()?);
            let v = u64::from_ne_bytes(c[8..].try_into().ok()?);
            (k == key).then_some(v)
        })
    }

    /// The filename the kernel executed (AT_EXECFN): the path execve was
    /// given, or "/dev/fd/N" ("/dev/fd/N/PATH") for an execveat relative
    /// to fd N. For a script it is the script's, not the interpreter's.
    pub fn execfn(&self) -> Option<&[u8]> {
        Some(&self.mem[self.execfn.clone()])
    }

    /// What /proc/PID/comm says (without its newline): the kernel's
    /// `__set_task_comm(kbasename(bprm->filename))` in begin_new_exec,
    /// that is, what follows the last '/' of AT_EXECFN, cut to 15 bytes.
    ///
    /// None when that rule may not be the kernel's: an execveat of fd N
    /// itself (AT_EMPTY_PATH: fexecve), whose filename "/dev/fd/N" gives
    /// "N" before Linux 6.14 and the file's dentry name since; and a name
    /// that is not UTF-8 (job::comm reads /proc as a String). The caller
    /// then reads /proc/PID/comm. job::comm also trims trailing
    /// whitespace, which this does not.
    pub fn comm_guess(&self) -> Option<String> {
        let file = self.execfn()?;
        if is_dev_fd(file) {
            return None;
        }
        let base = file
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(file, |i| &file[i + 1..]);
        // TASK_COMM_LEN less the NUL.
        let base = &base[..base.len().min(15)];
        String::from_utf8(base.to_vec()).ok()
    }
}

/// Whether the ELF image mapped at `at_base` (AT_BASE) in `tid` is glibc's
/// x86_64 dynamic loader (the only one that can load the shim: musl's
/// honours LD_PRELOAD too, but the shim links against glibc), judged by
/// its DT_SONAME, read from tracee memory: the ELF header, the program
/// headers, PT_DYNAMIC, and DT_STRTAB + DT_SONAME. Two process_vm_readv
/// calls for glibc's loader (its .dynstr lies in its first page).
///
/// At the exec stop the loader has not relocated itself, so the dynamic
/// entries hold link-time addresses, which are added to `at_base`; values
/// already inside the image (a loader that has run) are taken as they
/// are.
///
/// False for AT_BASE 0 (a static binary), for a 32-bit or x32 loader, for
/// musl's (libc.so, with no soname), for anything unreadable (a dead
/// tracee) or not an ELF image. Unlike the /proc/PID/maps check it
/// replaces, which looked at the mapped file's name, it also says true
/// for glibc's loader installed under another name (before glibc 2.34 the
/// file was ld-2.NN.so, with ld-linux-x86-64.so.2 a symlink to it).
pub fn loader_is_glibc(tid: i32, at_base: u64) -> bool {
    glibc_soname(tid, at_base).is_some()
}

/// What [`image_layout`] reads of an ELF image: its first page, the
/// extent of its PT_LOAD segments from its base, and its PT_DYNAMIC
/// (address, size).
type Layout = (Vec<u8>, u64, Option<(u64, u64)>);

/// The ELF image mapped at `base` in `tid`.
fn image_layout(tid: i32, base: u64) -> Option<Layout> {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PHENT: usize = 56;
    if base == 0 || !base.is_multiple_of(PAGE) {
        return None;
    }
    // The header, the program headers and, in glibc's loader, .dynstr.
    let mut head = Vec::new();
    crate::backtrace::memory::read_append(tid, base, PAGE as usize, &mut head);
    let ehdr = head.get(..64)?;
    // ELF magic, ELFCLASS64, ELFDATA2LSB, ET_DYN, EM_X86_64.
    if ehdr[..6] != *b"\x7fELF\x02\x01" || u16_at(ehdr, 16)? != 3 || u16_at(ehdr, 18)? != 62 {
        return None;
    }
    let phoff = usize::try_from(u64_at(ehdr, 32)?).ok()?;
    let phnum = usize::from(u16_at(ehdr, 56)?);
    if usize::from(u16_at(ehdr, 54)?) != PHENT || phnum == 0 || phoff >= MAX_STACK {
        return None;
    }
    let phdrs_len = PHENT * phnum;
    let phdrs: Cow<[u8]> = match head.get(phoff..phoff + phdrs_len) {
        Some(p) => Cow::Borrowed(p),
        None => {
            let mut v = Vec::new();
            crate::backtrace::memory::read_append(
                tid,
                base.checked_add(phoff as u64)?,
                phdrs_len,
                &mut v,
            );
            Cow::Owned(v)
        }
    };
    if phdrs.len() < phdrs_len {
        return None;
    }
    let mut span = 0u64;
    let mut dynamic = None;
    for ph in phdrs.chunks_exact(PHENT) {
        let vaddr = u64_at(ph, 16)?;
        match u32_at(ph, 0)? {
            PT_LOAD => span = span.max(vaddr.checked_add(u64_at(ph, 40)?)?),
            PT_DYNAMIC => dynamic = Some((vaddr, u64_at(ph, 32)?)),
            _ => {}
        }
    }
    Some((head, span, dynamic))
}

/// How far the ELF image mapped at `base` (the dynamic loader, at
/// AT_BASE) extends: the calls made from there are the loader's.
pub fn image_span(tid: i32, base: u64) -> Option<u64> {
    image_layout(tid, base).map(|(_, span, _)| span)
}

fn glibc_soname(tid: i32, base: u64) -> Option<()> {
    const DT_NULL: u64 = 0;
    const DT_STRTAB: u64 = 5;
    const DT_STRSZ: u64 = 10;
    const DT_SONAME: u64 = 14;
    let (head, span, dynamic) = image_layout(tid, base)?;
    let (dyn_vaddr, dyn_size) = dynamic?;
    // A link-time address, or one the loader relocated already.
    let at = |addr: u64| -> Option<u64> {
        if addr < span {
            base.checked_add(addr)
        } else {
            (addr >= base && addr - base < span).then_some(addr)
        }
    };
    let dyn_len = usize::try_from(dyn_size.min(16 << 10)).ok()?;
    let mut dyns = Vec::new();
    crate::backtrace::memory::read_append(tid, at(dyn_vaddr)?, dyn_len, &mut dyns);
    let (mut strtab, mut strsz, mut soname) = (None, None, None);
    for d in dyns.chunks_exact(16) {
        let (tag, val) = (u64_at(d, 0)?, u64_at(d, 8)?);
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_SONAME => soname = Some(val),
            _ => {}
        }
    }
    let soname = soname?;
    if strsz.is_some_and(|n| soname >= n) {
        return None;
    }
    let addr = at(strtab?)?.checked_add(soname)?;
    let want = GLIBC_LOADER.len() + 1;
    let in_head = addr
        .checked_sub(base)
        .and_then(|o| usize::try_from(o).ok())
        .and_then(|o| head.get(o..o.checked_add(want)?));
    let name = match in_head {
        Some(n) => n.to_vec(),
        None => {
            let mut v = Vec::new();
            crate::backtrace::memory::read_append(tid, addr, want, &mut v);
            v
        }
    };
    (name.get(..GLIBC_LOADER.len()) == Some(GLIBC_LOADER)
        && name.get(GLIBC_LOADER.len()) == Some(&0))
    .then_some(())
}

/// "/dev/fd/N": the filename of an execveat(N, "", AT_EMPTY_PATH).
fn is_dev_fd(file: &[u8]) -> bool {
    file.strip_prefix(b"/dev/fd/")
        .is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
}

/// The value of `name` in an environment block as /proc/PID/environ has
/// it (the first `name=` entry, as getenv finds it).
pub fn getenv_in<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    entries(block).find_map(|kv| kv.strip_prefix(name)?.strip_prefix(b"="))
}

/// NUL-terminated strings of a block, without their NULs.
fn entries(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    // An empty block has no entries, not one empty one.
    block
        .strip_suffix(b"\0")
        .into_iter()
        .flat_map(|body| body.split(|&b| b == 0))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The stack read so far, from rsp.
struct Stack {
    tid: i32,
    rsp: u64,
    mem: Vec<u8>,
    /// A read stopped short: the end of the mapping (or the tracee) is
    /// behind us, and asking again would give nothing more.
    at_end: bool,
}

impl Stack {
    fn new(tid: i32, rsp: u64) -> Stack {
        Stack {
            tid,
            rsp,
            mem: Vec::new(),
            at_end: false,
        }
    }

    /// Makes sure the first `len` bytes are read. The first read asks
    /// for [`FIRST_READ`], a second for everything up to [`MAX_STACK`]:
    /// it stops at the end of the mapping, so there is no third.
    fn ensure(&mut self, len: usize) -> Option<()> {
        if self.mem.len() >= len {
            return Some(());
        }
        if self.at_end || len > MAX_STACK {
            return None;
        }
        let ask_for = if self.mem.is_empty() {
            FIRST_READ
        } else {
            MAX_STACK
        };
        let target = ask_for.max(len);
        let ask = target - self.mem.len();
        let addr = self.rsp.checked_add(self.mem.len() as u64)?;
        if crate::backtrace::memory::read_append(self.tid, addr, ask, &mut self.mem) < ask {
            self.at_end = true;
        }
        (self.mem.len() >= len).then_some(())
    }

    fn word(&self, at: usize) -> Option<u64> {
        u64_at(&self.mem, at)
    }

    /// The offset from rsp of a stack address, if it lies within what
    /// [`MAX_STACK`] allows.
    fn offset(&self, addr: u64) -> Option<usize> {
        let off = usize::try_from(addr.checked_sub(self.rsp)?).ok()?;
        (off < MAX_STACK).then_some(off)
    }
}

#[cfg(test)]
mod tests {
    //! Each test forks a child that stops itself under PTRACE_TRACEME,
    //! gets PTRACE_O_TRACEEXEC, and execs a real program; at its
    //! PTRACE_EVENT_EXEC stop every answer is compared with /proc, the
    //! source the module replaces.

    use super::*;
    use crate::run::tracer;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// How the child execs.
    enum How<'a> {
        Path(&'a Path),
        /// fexecve: execveat(fd, "", AT_EMPTY_PATH).
        Fd(&'a Path),
        /// execveat(fd of `dir`, `name`, 0).
        DirFd(&'a Path, &'a str),
    }

    /// A child at its exec stop; killed and reaped when dropped.
    struct Stopped {
        pid: i32,
    }

    impl Drop for Stopped {
        fn drop(&mut self) {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            reap(self.pid);
        }
    }

    fn reap(pid: i32) {
        loop {
            let mut st = 0;
            // SAFETY: waitpid writes one int into `st`.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if r < 0 || libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                return;
            }
        }
    }

    fn wait_status(pid: i32) -> i32 {
        loop {
            let mut st = 0;
            // SAFETY: waitpid writes one int into `st`.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
            if r == pid {
                return st;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "waitpid: {e}");
        }
    }

    fn cstring(b: &[u8]) -> CString {
        CString::new(b).expect("no NUL in test strings")
    }

    fn open(path: &Path, flags: i32) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        let p = cstring(path.as_os_str().as_bytes());
        // SAFETY: open(2) of a NUL-terminated path; the fd is owned below.
        let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open {}", path.display());
        // SAFETY: fd was just opened and is owned by nobody else.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    /// Forks a child that execs `how` with `argv` and `env`, and returns
    /// it at its PTRACE_EVENT_EXEC stop; None if the exec failed.
    fn exec_stop(how: How, argv: &[&[u8]], env: &[&[u8]]) -> Option<Stopped> {
        use std::os::fd::AsRawFd;
        // Everything the child needs is made before fork: the test
        // harness has other threads, so the child may only make syscalls.
        let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
        let env: Vec<CString> = env.iter().map(|e| cstring(e)).collect();
        let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argp.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let (fd, name, flags) = match how {
            How::Path(p) => (None, cstring(p.as_os_str().as_bytes()), 0),
            How::Fd(p) => (
                Some(open(p, libc::O_RDONLY)),
                cstring(b""),
                libc::AT_EMPTY_PATH,
            ),
            How::DirFd(d, n) => (
                Some(open(d, libc::O_RDONLY | libc::O_DIRECTORY)),
                cstring(n.as_bytes()),
                0,
            ),
        };
        let dirfd = fd.as_ref().map_or(libc::AT_FDCWD, |f| f.as_raw_fd());
        // SAFETY: the child makes only async-signal-safe syscalls on
        // memory prepared before the fork, then execs or _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: see above; execveat keeps the CLOEXEC fd long
            // enough to exec it.
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                // A group of its own, for measure_exec_stop's waitpid.
                libc::setpgid(0, 0);
                libc::raise(libc::SIGSTOP);
                libc::syscall(
                    libc::SYS_execveat,
                    dirfd,
                    name.as_ptr(),
                    argp.as_ptr(),
                    envp.as_ptr(),
                    flags,
                );
                libc::_exit(127);
            }
        }
        let child = Stopped { pid };
        let st = wait_status(pid);
        assert!(libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) == libc::SIGSTOP);
        let opts = libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_EXITKILL;
        // SAFETY: PTRACE_SETOPTIONS and PTRACE_CONT of our stopped tracee.
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts), 0);
            assert_eq!(libc::ptrace(libc::PTRACE_CONT, pid, 0, 0), 0);
        }
        let st = wait_status(pid);
        if libc::WIFEXITED(st) {
            // Reaped already: nothing for Drop to kill.
            std::mem::forget(child);
            return None;
        }
        assert!(
            libc::WIFSTOPPED(st) && st >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8),
            "not an exec stop: {st:#x}"
        );
        Some(child)
    }

    fn proc_file(pid: i32, what: &str) -> Vec<u8> {
        std::fs::read(format!("/proc/{pid}/{what}")).expect("read /proc")
    }

    /// The check `shimtable::glibc_loader_at` makes, on /proc/PID/maps.
    fn maps_say_glibc(pid: i32, base: u64) -> bool {
        let maps = String::from_utf8(proc_file(pid, "maps")).expect("maps is text");
        let start = format!("{base:x}-");
        maps.lines()
            .find(|l| l.starts_with(&start))
            .and_then(|l| l.rsplit('/').next())
            .is_some_and(|name| name.starts_with("ld-linux-x86-64.so"))
    }

    fn info_of(child: &Stopped) -> Option<ExecInfo> {
        let regs = tracer::getregs(child.pid).expect("getregs");
        ExecInfo::from_regs(child.pid, &regs)
    }

    /// Compares every answer with /proc; returns what the loader check said.
    fn check_against_proc(child: &Stopped, info: &ExecInfo) -> bool {
        let pid = child.pid;
        assert!(info.environ() == proc_file(pid, "environ"), "environ");
        assert_eq!(info.auxv_raw(), proc_file(pid, "auxv"), "auxv");
        let cmdline: Vec<u8> = info
            .args()
            .flat_map(|a| a.iter().chain(b"\0"))
            .copied()
            .collect();
        assert!(cmdline == proc_file(pid, "cmdline"), "cmdline");
        assert_eq!(info.args().count(), info.argc());
        let comm = proc_file(pid, "comm");
        let comm = comm.strip_suffix(b"\n").expect("comm ends in a newline");
        if let Some(guess) = info.comm_guess() {
            assert_eq!(guess.as_bytes(), comm, "comm");
        }
        let base = info.auxv(libc::AT_BASE).expect("AT_BASE is always there");
        let glibc = loader_is_glibc(pid, base);
        assert_eq!(glibc, maps_say_glibc(pid, base), "loader at {base:#x}");
        glibc
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d =
                std::env::temp_dir().join(format!("handles-execinfo-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("scratch dir");
            Scratch(d)
        }

        /// Compiles a do-nothing C program with `cc` (or `musl-gcc`) and
        /// `flags`; None where the toolchain cannot.
        fn build(&self, cc: &str, flags: &[&str], name: &str) -> Option<PathBuf> {
            let src = self.0.join("nothing.c");
            std::fs::write(&src, "int main(void) { return 0; }\n").ok()?;
            let out = self.0.join(name);
            let ok = Command::new(cc)
                .args(flags)
                .arg("-o")
                .arg(&out)
                .arg(&src)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped: {cc} {flags:?} cannot build here");
            }
            ok.then_some(out)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn bin_true() -> PathBuf {
        let p = PathBuf::from("/bin/true");
        assert!(p.exists(), "/bin/true");
        p
    }

    #[test]
    fn a_custom_environment_reads_as_proc_does() {
        let t = bin_true();
        let env: &[&[u8]] = &[
            b"A=1",
            b"EMPTY=",
            b"DUP=first",
            b"DUP=second",
            b"NOEQUALS",
            b"",
            b"=nameless",
            b"HANDLES_POLICY=bad-fd=deny",
            b"LAST=z",
        ];
        let child = exec_stop(How::Path(&t), &[b"true", b"one", b"", b"three"], env)
            .expect("exec /bin/true");
        let info = info_of(&child).expect("ExecInfo");
        assert!(check_against_proc(&child, &info), "/bin/true is glibc's");
        assert_eq!(info.env(b"A"), Some(&b"1"[..]));
        assert_eq!(info.env(b"EMPTY"), Some(&b""[..]));
        assert_eq!(
            info.env(b"DUP"),
            Some(&b"first"[..]),
            "the first, as getenv"
        );
        assert_eq!(info.env(b"NOEQUALS"), None);
        assert_eq!(info.env(b""), Some(&b"nameless"[..]));
        assert_eq!(info.env(b"LAS"), None);
        assert_eq!(info.env(b"HANDLES_POLICY"), Some(&b"bad-fd=deny"[..]));
        assert_eq!(info.env_entries().count(), env.len());
        assert_eq!(info.argc(), 4);
        let args: Vec<&[u8]> = info.args().collect();
        assert_eq!(args, [&b"true"[..], b"one", b"", b"three"]);
        assert_eq!(info.execfn(), Some(t.as_os_str().as_bytes()));
        assert_eq!(info.comm_guess().as_deref(), Some("true"));
        assert!(info.auxv(libc::AT_BASE).is_some_and(|b| b != 0));
        assert_eq!(info.auxv(libc::AT_SECURE), Some(0));
        assert_eq!(info.auxv(0xdead), None);
    }

    #[test]
    fn no_environment_and_no_arguments() {
        let t = bin_true();
        // Since Linux 5.18 an empty argv execs with argc 1 and "".
        let child = exec_stop(How::Path(&t), &[], &[]).expect("exec /bin/true");
        let info = info_of(&child).expect("ExecInfo");
        check_against_proc(&child, &info);
        assert_eq!(info.environ(), b"");
        assert_eq!(info.env_entries().count(), 0);
        assert_eq!(info.env(b"PATH"), None);
    }

    #[test]
    fn a_large_environment_and_argv_are_read_whole() {
        let t = bin_true();
        let big: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let mut v = format!("BIG{i}=").into_bytes();
                v.resize(50_000, b'a' + i as u8);
                v
            })
            .collect();
        // Pointer arrays alone beyond the first read.
        let small: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("V{i}={i}").into_bytes())
            .collect();
        let mut env: Vec<&[u8]> = big.iter().map(|v| &v[..]).collect();
        env.extend(small.iter().map(|v| &v[..]));
        env.push(b"TAIL=end");
        let args: Vec<Vec<u8>> = (0..2000).map(|i| format!("arg-{i}").into_bytes()).collect();
        let argv: Vec<&[u8]> = args.iter().map(|v| &v[..]).collect();
        let child = exec_stop(How::Path(&t), &argv, &env).expect("exec /bin/true");
        let info = info_of(&child).expect("ExecInfo");
        assert!(info.environ().len() > 200_000);
        assert!(check_against_proc(&child, &info));
        assert_eq!(info.argc(), 2000);
        assert_eq!(info.env(b"TAIL"), Some(&b"end"[..]));
        assert_eq!(info.env(b"V2999"), Some(&b"2999"[..]));
        assert_eq!(info.env(b"BIG3").map(<[u8]>::len), Some(50_000 - 5));
    }

    #[test]
    fn a_stack_beyond_the_cap_is_left_to_proc() {
        let t = bin_true();
        // 10 x 120 KB: within the kernel's limits (each string < 128 KiB),
        // beyond MAX_STACK.
        let big: Vec<Vec<u8>> = (0..10)
            .map(|i| {
                let mut v = format!("HUGE{i}=").into_bytes();
                v.resize(120_000, b'x');
                v
            })
            .collect();
        let env: Vec<&[u8]> = big.iter().map(|v| &v[..]).collect();
        let Some(child) = exec_stop(How::Path(&t), &[b"true"], &env) else {
            eprintln!("skipped: the stack limit refuses a 1.2 MB environment");
            return;
        };
        assert!(info_of(&child).is_none());
    }

    #[test]
    fn comm_follows_the_kernel_rule() {
        let t = bin_true();
        let s = Scratch::new("comm");
        let check = |how: How, execfn: &[u8], comm: Option<&str>| {
            let child = exec_stop(how, &[b"x"], &[b"A=1"]).expect("exec");
            let info = info_of(&child).expect("ExecInfo");
            check_against_proc(&child, &info);
            assert_eq!(info.execfn(), Some(execfn));
            assert_eq!(info.comm_guess().as_deref(), comm);
            let proc_comm = proc_file(child.pid, "comm");
            if let Some(c) = comm {
                assert_eq!(proc_comm, format!("{c}\n").as_bytes());
            }
            proc_comm
        };

        // Through a symlink: the link's name, cut to 15 bytes.
        let link = s.0.join("a-rather-long-program-name");
        std::os::unix::fs::symlink(&t, &link).expect("symlink");
        check(
            How::Path(&link),
            link.as_os_str().as_bytes(),
            Some("a-rather-long-p"),
        );

        // A script: its own name, not its interpreter's.
        let script = s.0.join("my-script.sh");
        std::fs::write(&script, format!("#!{}\n", t.display())).expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        check(
            How::Path(&script),
            script.as_os_str().as_bytes(),
            Some("my-script.sh"),
        );

        // execveat relative to a directory fd: "/dev/fd/N/NAME".
        let dir = t.parent().expect("/bin");
        let child = exec_stop(How::DirFd(dir, "true"), &[b"x"], &[]).expect("execveat");
        let info = info_of(&child).expect("ExecInfo");
        check_against_proc(&child, &info);
        let f = info.execfn().expect("execfn");
        assert!(f.starts_with(b"/dev/fd/") && f.ends_with(b"/true"), "{f:?}");
        assert_eq!(info.comm_guess().as_deref(), Some("true"));
        drop(child);

        // fexecve: "/dev/fd/N", whose comm depends on the kernel.
        let child = exec_stop(How::Fd(&t), &[b"x"], &[]).expect("fexecve");
        let info = info_of(&child).expect("ExecInfo");
        check_against_proc(&child, &info);
        assert!(info.execfn().is_some_and(is_dev_fd));
        assert_eq!(info.comm_guess(), None);
        eprintln!(
            "fexecve: execfn {:?}, comm {:?}",
            String::from_utf8_lossy(info.execfn().unwrap_or_default()),
            String::from_utf8_lossy(&proc_file(child.pid, "comm"))
        );
        drop(child);

        // Not UTF-8 once cut: 14 ASCII bytes and a 2-byte character.
        let name = "aaaaaaaaaaaaaa\u{e9}";
        let link = s.0.join(name);
        std::os::unix::fs::symlink(&t, &link).expect("symlink");
        let proc_comm = check(How::Path(&link), link.as_os_str().as_bytes(), None);
        assert_eq!(proc_comm, [&name.as_bytes()[..15], b"\n"].concat());

        // A name that is exactly 15 bytes is whole.
        let link = s.0.join("fifteen-bytes-x");
        std::os::unix::fs::symlink(&t, &link).expect("symlink");
        check(
            How::Path(&link),
            link.as_os_str().as_bytes(),
            Some("fifteen-bytes-x"),
        );
    }

    #[test]
    fn a_static_binary_has_no_loader() {
        let s = Scratch::new("static");
        let Some(bin) = s.build("cc", &["-static"], "static") else {
            return;
        };
        let child = exec_stop(How::Path(&bin), &[b"static"], &[b"A=1"]).expect("exec");
        let info = info_of(&child).expect("ExecInfo");
        assert!(!check_against_proc(&child, &info));
        assert_eq!(info.auxv(libc::AT_BASE), Some(0));
        assert!(!loader_is_glibc(child.pid, 0));
        // The program's own image is an ELF file, with no soname.
        let phdr = info.auxv(libc::AT_PHDR).expect("AT_PHDR");
        assert!(!loader_is_glibc(child.pid, phdr & !(PAGE - 1)));
    }

    #[test]
    fn musls_loader_is_not_glibcs() {
        if !Path::new("/lib/ld-musl-x86_64.so.1").exists() {
            eprintln!("skipped: no musl loader");
            return;
        }
        let s = Scratch::new("musl");
        let Some(bin) = s.build("musl-gcc", &[], "musl") else {
            return;
        };
        let child = exec_stop(How::Path(&bin), &[b"musl"], &[b"A=1"]).expect("exec");
        let info = info_of(&child).expect("ExecInfo");
        assert!(!check_against_proc(&child, &info));
        assert!(info.auxv(libc::AT_BASE).is_some_and(|b| b != 0));
    }

    #[test]
    fn a_32_bit_image_is_refused() {
        let s = Scratch::new("m32");
        let Some(bin) = s.build("cc", &["-m32"], "m32") else {
            return;
        };
        let child = exec_stop(How::Path(&bin), &[b"m32"], &[b"A=1"]).expect("exec");
        let regs = tracer::getregs(child.pid).expect("getregs");
        assert_ne!(regs.cs, USER64_CS);
        assert!(ExecInfo::from_regs(child.pid, &regs).is_none());
        // Even without the cs check, the 32-bit words do not parse.
        assert!(ExecInfo::read(child.pid, regs.rsp).is_none());
        let auxv = proc_file(child.pid, "auxv");
        let base = auxv.chunks_exact(8).find_map(|c| {
            let k = u32::from_ne_bytes(c[..4].try_into().ok()?);
            let v = u32::from_ne_bytes(c[4..].try_into().ok()?);
            (u64::from(k) == libc::AT_BASE).then_some(u64::from(v))
        });
        let base = base.expect("AT_BASE");
        assert_ne!(base, 0);
        assert!(!loader_is_glibc(child.pid, base));
        assert!(!maps_say_glibc(child.pid, base));
    }

    #[test]
    fn wrong_addresses_and_dead_tracees_give_nothing() {
        let t = bin_true();
        let child = exec_stop(How::Path(&t), &[b"true", b"x"], &[b"A=1"]).expect("exec");
        let pid = child.pid;
        let regs = tracer::getregs(pid).expect("getregs");
        let info = info_of(&child).expect("ExecInfo");
        let base = info.auxv(libc::AT_BASE).expect("AT_BASE");
        // Not the exec stop's rsp: argv[0]'s pointer taken for argc.
        assert!(ExecInfo::read(pid, regs.rsp + 16).is_none());
        assert!(ExecInfo::read(pid, regs.rsp + 8).is_none());
        assert!(ExecInfo::read(pid, 0x1000).is_none());
        assert!(ExecInfo::read(pid, u64::MAX - 15).is_none());
        assert!(!loader_is_glibc(pid, base + PAGE));
        assert!(!loader_is_glibc(pid, base + 1));
        assert!(!loader_is_glibc(pid, regs.rsp & !(PAGE - 1)));
        assert!(!loader_is_glibc(pid, !(PAGE - 1)));
        assert!(loader_is_glibc(pid, base));

        // Killed, not yet reaped: a zombie has no memory.
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // SAFETY: waitid into a local siginfo; WNOWAIT leaves it a zombie.
        unsafe {
            let mut si: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut si,
                libc::WEXITED | libc::WNOWAIT | libc::__WALL,
            );
        }
        assert!(ExecInfo::read(pid, regs.rsp).is_none());
        assert!(!loader_is_glibc(pid, base));
        drop(child);
        // Reaped: no such process.
        assert!(ExecInfo::read(pid, regs.rsp).is_none());
        assert!(!loader_is_glibc(pid, base));
    }

    /// Times what on_exec would do with this module against the /proc
    /// reads it replaces. Run with `cargo test --release -p
    /// handles-supervisor --lib measure_exec_stop -- --ignored
    /// --nocapture`.
    ///
    /// The exec'ing processes are forked by a traced shell, as under
    /// `handles run`: a fork of our own per sample would make our heap
    /// copy-on-write and charge the first writes into the read buffers
    /// with page faults the supervisor does not have.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_exec_stop() {
        use std::time::{Duration, Instant};
        const RUNS: usize = 400;
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let new_way = |pid: i32| {
            let regs = tracer::getregs(pid).expect("getregs");
            let info = ExecInfo::from_regs(pid, &regs).expect("ExecInfo");
            let base = info.auxv(libc::AT_BASE).unwrap_or(0);
            let glibc = base != 0 && loader_is_glibc(pid, base);
            let comm = info.comm_guess().expect("comm");
            (info.env(b"LD_PRELOAD").is_some(), glibc, comm)
        };
        let old_way = |pid: i32| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let auxv = std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default();
            let base = auxv
                .chunks_exact(16)
                .find_map(|c| {
                    let k = u64::from_ne_bytes(c[..8].try_into().ok()?);
                    let v = u64::from_ne_bytes(c[8..].try_into().ok()?);
                    (k == libc::AT_BASE).then_some(v)
                })
                .unwrap_or(0);
            let glibc = base != 0 && maps_say_glibc(pid, base);
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (
                env.split(|&b| b == 0)
                    .any(|kv| kv.starts_with(b"LD_PRELOAD=")),
                glibc,
                comm.trim_end().to_string(),
            )
        };
        let t = bin_true();
        let script = format!(
            "i=0; while [ $i -lt {RUNS} ]; do {}; i=$((i+1)); done",
            t.display()
        );
        let env: Vec<Vec<u8>> = std::env::vars_os()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        let env: Vec<&[u8]> = env.iter().map(|v| &v[..]).collect();
        let sh = exec_stop(
            How::Path(Path::new("/bin/sh")),
            &[b"sh", b"-c", script.as_bytes()],
            &env,
        )
        .expect("exec /bin/sh");
        let opts = libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_EXITKILL
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACECLONE;
        // SAFETY: PTRACE_SETOPTIONS and PTRACE_CONT of our stopped tracee.
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SETOPTIONS, sh.pid, 0, opts), 0);
            assert_eq!(libc::ptrace(libc::PTRACE_CONT, sh.pid, 0, 0), 0);
        }
        let (mut new_first, mut new_second) = (Vec::new(), Vec::new());
        let (mut old_first, mut old_second) = (Vec::new(), Vec::new());
        let (mut regs_t, mut read_t, mut loader_t) = (Vec::new(), Vec::new(), Vec::new());
        let mut n = 0usize;
        loop {
            let mut st = 0;
            // The shell and what it forks, and no other test's children:
            // exec_stop put the shell in a process group of its own.
            // SAFETY: waitpid writes one int into `st`.
            let pid = unsafe { libc::waitpid(-sh.pid, &mut st, libc::__WALL) };
            if pid < 0 {
                break;
            }
            if pid == sh.pid && (libc::WIFEXITED(st) || libc::WIFSIGNALED(st)) {
                std::mem::forget(sh);
                break;
            }
            if !libc::WIFSTOPPED(st) {
                continue;
            }
            let mut sig = 0;
            if st >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8) && pid != sh.pid {
                // Alternate which goes first: the first touch of the
                // tracee's pages and /proc entries costs more.
                let (a, b) = match n % 3 {
                    0 => {
                        let s = Instant::now();
                        let a = new_way(pid);
                        let m = Instant::now();
                        let b = old_way(pid);
                        new_first.push(m - s);
                        old_second.push(m.elapsed());
                        (a, b)
                    }
                    1 => {
                        let s = Instant::now();
                        let b = old_way(pid);
                        let m = Instant::now();
                        let a = new_way(pid);
                        old_first.push(m - s);
                        new_second.push(m.elapsed());
                        (a, b)
                    }
                    // The new way's pieces on their own.
                    _ => {
                        let s = Instant::now();
                        let regs = tracer::getregs(pid).expect("getregs");
                        let r = Instant::now();
                        let info = ExecInfo::from_regs(pid, &regs).expect("read");
                        let i = Instant::now();
                        assert!(loader_is_glibc(pid, info.auxv(libc::AT_BASE).unwrap_or(0)));
                        loader_t.push(i.elapsed());
                        regs_t.push(r - s);
                        read_t.push(i - r);
                        (new_way(pid), old_way(pid))
                    }
                };
                assert_eq!(a, b);
                n += 1;
            } else if libc::WSTOPSIG(st) != libc::SIGTRAP && libc::WSTOPSIG(st) != libc::SIGSTOP {
                sig = libc::WSTOPSIG(st);
            }
            // SAFETY: PTRACE_CONT of one of our tracees.
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig) };
        }
        assert_eq!(n, RUNS);
        eprintln!(
            "{RUNS} exec stops of {} forked by a traced sh, medians:\n  \
             getregs + ExecInfo + loader_is_glibc + env + comm_guess: {:?} first, {:?} second\n  \
             /proc environ + auxv + maps scan + comm:                {:?} first, {:?} second\n  \
             alone, first: getregs {:?}, ExecInfo::from_regs {:?}, loader_is_glibc {:?}",
            t.display(),
            median(&mut new_first),
            median(&mut new_second),
            median(&mut old_first),
            median(&mut old_second),
            median(&mut regs_t),
            median(&mut read_t),
            median(&mut loader_t),
        );
    }

    #[test]
    fn blocks_split_into_their_strings() {
        assert_eq!(entries(b"").count(), 0);
        assert_eq!(entries(b"\0").collect::<Vec<_>>(), [b""]);
        assert_eq!(
            entries(b"a\0\0b\0").collect::<Vec<_>>(),
            [&b"a"[..], b"", b"b"]
        );
        assert!(is_dev_fd(b"/dev/fd/3"));
        assert!(is_dev_fd(b"/dev/fd/123"));
        assert!(!is_dev_fd(b"/dev/fd/"));
        assert!(!is_dev_fd(b"/dev/fd/3/true"));
        assert!(!is_dev_fd(b"/dev/fd/x"));
    }
}
