//! The calling thread's Python frames, recorded with every creation and
//! close stack of a CPython program (table's Python area; the supervisor
//! resolves them to file:line when it reports).
//!
//! The first capture in a process finds the interpreter: a loaded module
//! named `python3.N` or `libpython3.N…` (the executable's name from
//! /proc/self/exe) that exports `_PyRuntime` and `PyCode_Type`, looked up
//! in its own GNU hash table (no dlsym: a failed lookup there allocates
//! its error message). Every other process pays that once and nothing
//! after.
//!
//! A capture takes the thread's own thread state from CPython's gilstate
//! TSS key (set for the thread's whole life, kept while the thread blocks
//! without the GIL in the very call being recorded), then walks its frame
//! chain with `handles_model::python::walk`. Only this thread changes its
//! chain, and it is inside the wrapper, so the chain holds still. Every
//! load goes through [`Local`], which reads only pages a
//! `process_vm_readv` probe found readable (remembered in a small cache),
//! so a wrong pointer costs a frame, never a fault.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use handles_model::python::{self as py, Layout, Memory, PyFrame};
use handles_model::table::PY_DEPTH;

use crate::sys;

/// Python frames of one capture.
#[derive(Clone, Copy)]
pub struct PyPcs {
    pub frames: [PyFrame; PY_DEPTH],
    pub n: usize,
}

impl PyPcs {
    pub const EMPTY: PyPcs = PyPcs {
        frames: [PyFrame {
            code: 0,
            lasti: 0,
            check: 0,
            entry: false,
            line: 0,
        }; PY_DEPTH],
        n: 0,
    };
    pub fn frames(&self) -> &[PyFrame] {
        &self.frames[..self.n.min(PY_DEPTH)]
    }
}

const UNKNOWN: u8 = 0;
const NONE: u8 = 1;
const READY: u8 = 2;
const DETECTING: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static MINOR: AtomicU32 = AtomicU32::new(0);
static RUNTIME: AtomicU64 = AtomicU64::new(0);
static CODE_TYPE: AtomicU64 = AtomicU64::new(0);

/// No Python frames in this process (`HANDLES_PYTHON_FRAMES=0`, for
/// measuring what they cost).
pub fn disable() {
    STATE.store(NONE, Relaxed);
}

/// The calling thread's Python frames, innermost first; empty outside a
/// CPython program, before its interpreter made this thread's state, and
/// while another thread still looks for the interpreter.
pub fn capture() -> PyPcs {
    let state = STATE.load(Relaxed);
    let state = if state == UNKNOWN { detect() } else { state };
    if state != READY {
        return PyPcs::EMPTY;
    }
    let Some(l) = py::layout(3, MINOR.load(Relaxed)) else {
        return PyPcs::EMPTY;
    };
    walk(l, RUNTIME.load(Relaxed), CODE_TYPE.load(Relaxed))
}

fn walk(l: &Layout, runtime: u64, code_type: u64) -> PyPcs {
    let mut mem = Local::default();
    // Py_tss_t: int _is_initialized; pthread_key_t _key.
    let tss = runtime + l.runtime_tss;
    let (Some(init), Some(key)) = (mem.u32_at(tss), mem.u32_at(tss + 4)) else {
        return PyPcs::EMPTY;
    };
    if init == 0 {
        return PyPcs::EMPTY;
    }
    // SAFETY: pthread_getspecific takes any key value: one the process
    // never created reads as NULL (or a stale value, which the walk checks
    // like any pointer).
    let ts = unsafe { libc::pthread_getspecific(key) } as u64;
    if !py::plausible(ts) {
        return PyPcs::EMPTY;
    }
    let mut out = PyPcs::EMPTY;
    out.n = py::walk(&mut mem, l, ts, code_type, &mut out.frames);
    let codes = crate::state::codes();
    for f in &mut out.frames[..out.n] {
        // The usual case, a call site seen before: its line cached and
        // its code registered, nothing more to read.
        let cached = cached_line(f);
        let registered = codes.as_ref().is_none_or(|c| c.contains(f.code, f.check));
        if let (Some(line), true) = (cached, registered) {
            f.line = line;
            continue;
        }
        let Some(fields) = py::code_fields(&mut mem, l, f.code, code_type) else {
            continue;
        };
        f.line = match cached {
            Some(line) => line,
            None => line_of(&mut mem, l, f, &fields),
        };
        if let Some(codes) = codes.as_ref().filter(|_| !registered) {
            register(&mut mem, l, codes, f, &fields);
        }
    }
    out
}

/// Writes Python frames after a report's native frames (numbered from
/// `first`), named from the table's code registry: the shim never reads
/// a code object's strings when it reports (a freed one cannot be told
/// from a live one there); a code object the registry does not have is
/// `<freed code object>`.
pub(crate) fn write_frames(
    w: &mut crate::out::Out,
    frames: &[PyFrame],
    first: usize,
) -> core::fmt::Result {
    use core::fmt::Write;
    let codes = crate::state::codes();
    for (i, f) in frames.iter().enumerate() {
        handles_model::report::write_frame_start(w, first + i)?;
        match codes.as_ref().and_then(|c| c.get(f.code, f.check)) {
            Some(r) => {
                w.bytes(r.file());
                if f.line != 0 {
                    write!(w, ":{}", f.line)?;
                }
                w.write_str(" in ")?;
                w.bytes(r.name());
            }
            None => w.write_str("<freed code object>")?,
        }
        writeln!(w, " (Python)")?;
    }
    Ok(())
}

/// Lines already computed, by (code, instruction, check): a program
/// opens and closes from the same few places over and over, and decoding
/// a long line table each time would cost more than the rest of the
/// capture. Direct-mapped; an entry is a key and a value that repeats the
/// key's fingerprint, so a torn pair reads as a miss.
static LINES: [[AtomicU64; 2]; 1024] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; 1024];

fn line_key(f: &PyFrame) -> u64 {
    f.code ^ (u64::from(f.lasti) << 48) ^ (u64::from(f.check) << 16).rotate_left(7)
}

fn line_slot(f: &PyFrame) -> (u64, u32, &'static [AtomicU64; 2]) {
    let key = line_key(f);
    let fp = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
    let e = &LINES[(key.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 54) as usize % 1024];
    (key, fp, e)
}

fn cached_line(f: &PyFrame) -> Option<u32> {
    let (key, fp, e) = line_slot(f);
    let v = e[1].load(Relaxed);
    (e[0].load(Relaxed) == key && (v >> 32) as u32 == fp).then_some(v as u32)
}

fn line_of(mem: &mut Local, l: &Layout, f: &PyFrame, fields: &py::CodeFields) -> u32 {
    let (key, fp, e) = line_slot(f);
    let Some((at, len)) = py::bytes_payload(mem, fields.linetable) else {
        return 0;
    };
    // Reads the table in small chunks: decoding touches it once, in order.
    let mut chunk = [0u8; 64];
    let mut chunk_at = usize::MAX;
    let mut byte = |i: usize| -> Option<u8> {
        let base = i & !63;
        if base != chunk_at {
            let n = (len as usize).saturating_sub(base).min(64);
            if !mem.read(at + base as u64, &mut chunk[..n]) {
                return None;
            }
            chunk_at = base;
        }
        chunk.get(i - base).copied()
    };
    let line = py::line_from(
        l.lines,
        &mut byte,
        len as usize,
        fields.firstlineno,
        f.lasti,
    )
    .unwrap_or(0);
    e[0].store(key, Relaxed);
    e[1].store(u64::from(line) | (u64::from(fp) << 32), Relaxed);
    line
}

/// Copies a code object's file and function into the table's registry.
#[cold]
fn register(
    mem: &mut Local,
    l: &Layout,
    codes: &handles_model::table::CodeRegistry<'_>,
    f: &PyFrame,
    fields: &py::CodeFields,
) {
    use handles_model::table::{CODE_FILE_SIZE, CODE_NAME_SIZE};
    let mut name = [0u8; CODE_NAME_SIZE];
    let name_obj = if fields.qualname != 0 {
        fields.qualname
    } else {
        fields.name
    };
    let Some(n) = py::read_str(mem, l, name_obj, &mut name) else {
        return;
    };
    let mut file = [0u8; CODE_FILE_SIZE];
    let Some(k) = read_tail(mem, l, fields.filename, &mut file) else {
        return;
    };
    crate::state::note_code_written(f.code, f.check);
    codes.insert(f.code, f.check, fields.firstlineno, &name[..n], &file[..k]);
}

/// A string's last bytes behind `...` when it does not fit (a path's
/// tail says more than its head), for ASCII strings; others from the
/// start.
fn read_tail(mem: &mut Local, l: &Layout, s: u64, out: &mut [u8]) -> Option<usize> {
    let len = mem.u64_at(s + 16)?;
    let state = mem.u32_at(s + 32)?;
    let ascii_compact = state & (1 << 5) != 0 && state & (1 << 6) != 0;
    if !ascii_compact || len as usize <= out.len() {
        return py::read_str(mem, l, s, out);
    }
    let keep = out.len() - 3;
    out[..3].copy_from_slice(b"...");
    mem.read(s + l.ascii_size + len - keep as u64, &mut out[3..])
        .then_some(out.len())
}

/// Finds the interpreter (once per process; a forked child inherits the
/// answer). Returns the new state.
#[cold]
fn detect() -> u8 {
    if STATE
        .compare_exchange(UNKNOWN, DETECTING, Relaxed, Relaxed)
        .is_err()
    {
        return STATE.load(Relaxed);
    }
    let mut found = Found::default();
    // SAFETY: the callback only reads the program headers and dynamic
    // sections the loader hands it, which stay mapped during the call.
    unsafe { libc::dl_iterate_phdr(Some(each_object), (&raw mut found).cast()) };
    let state = match found.minor {
        Some(minor) if found.runtime != 0 && found.code_type != 0 => {
            MINOR.store(minor, Relaxed);
            RUNTIME.store(found.runtime, Relaxed);
            CODE_TYPE.store(found.code_type, Relaxed);
            READY
        }
        _ => NONE,
    };
    STATE.store(state, Relaxed);
    state
}

#[derive(Default)]
struct Found {
    minor: Option<u32>,
    runtime: u64,
    code_type: u64,
}

unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our `Found`.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Found>()) };
    // SAFETY: the loader's program headers of a loaded object.
    let phdrs =
        unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr;
    // The symbols first (lookups in memory): only an interpreter's object
    // is worth its name, which for the main program costs a readlink of
    // /proc/self/exe, in every process that records a stack.
    // SAFETY: a loaded object's dynamic section and hash table.
    let (runtime, code_type) = unsafe {
        (
            lookup(base, phdrs, b"_PyRuntime"),
            lookup(base, phdrs, b"PyCode_Type"),
        )
    };
    let (Some(runtime), Some(code_type)) = (runtime, code_type) else {
        return 0;
    };
    let mut exe = [0u8; 512];
    let name: &[u8] = if info.dlpi_name.is_null() {
        &[]
    } else {
        // SAFETY: dlpi_name, when not null, is a NUL-terminated string
        // the loader keeps for the object's lifetime.
        unsafe { core::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    // The main program's name is empty here.
    let name = if name.is_empty() {
        exe_path(&mut exe)
    } else {
        name
    };
    let Some(minor) = py::minor_from_name(name) else {
        return 0;
    };
    if py::layout(3, minor).is_none() {
        return 0;
    }
    // SAFETY: as above.
    let version = unsafe { lookup(base, phdrs, b"Py_Version") };
    if minor >= 11 {
        // Py_Version (3.11+) is PY_VERSION_HEX: the name must not lie.
        let v = version.and_then(|a| Local::default().u32_at(a));
        if v.map(|v| (v >> 24, (v >> 16) & 0xff)) != Some((3, minor)) {
            return 0;
        }
    }
    *found = Found {
        minor: Some(minor),
        runtime,
        code_type,
    };
    1
}

fn exe_path(buf: &mut [u8; 512]) -> &[u8] {
    // SAFETY: readlink writes at most buf.len() bytes into buf.
    let n = unsafe {
        sys::raw(
            libc::SYS_readlink,
            [
                c"/proc/self/exe".as_ptr() as u64,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
                0,
                0,
                0,
            ],
        )
    };
    &buf[..n.clamp(0, buf.len() as i64) as usize]
}

/// `Elf64_Dyn` (the libc crate has no definition of it).
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

const PT_DYNAMIC: u32 = 2;
const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;

/// The address of the defined dynamic symbol `name` of the object loaded
/// at `base`, through its GNU hash table.
///
/// # Safety
/// `phdrs` and `base` must describe a loaded object (its dynamic section
/// and the tables it points at are mapped).
unsafe fn lookup(base: u64, phdrs: &[libc::Elf64_Phdr], name: &[u8]) -> Option<u64> {
    let dynamic = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC)?;
    let mut d = (base + dynamic.p_vaddr) as *const Dyn;
    let (mut gnu_hash, mut symtab, mut strtab) = (0u64, 0u64, 0u64);
    // glibc rewrites these entries to run-time addresses on x86_64; an
    // entry it left alone is still module-relative.
    let at = |v: u64| if v < base { v + base } else { v };
    for _ in 0..1024 {
        // SAFETY: the dynamic section ends with DT_NULL (bounded anyway).
        let e = unsafe { &*d };
        match e.tag {
            DT_NULL => break,
            DT_GNU_HASH => gnu_hash = at(e.val),
            DT_SYMTAB => symtab = at(e.val),
            DT_STRTAB => strtab = at(e.val),
            _ => {}
        }
        // SAFETY: still inside the dynamic section (not past DT_NULL).
        d = unsafe { d.add(1) };
    }
    if gnu_hash == 0 || symtab == 0 || strtab == 0 {
        return None;
    }
    let h = name.iter().fold(5381u32, |h, &c| {
        h.wrapping_mul(33).wrapping_add(u32::from(c))
    });
    // SAFETY: the GNU hash table's layout: nbuckets, symoffset,
    // bloom_size, bloom_shift, bloom words, buckets, chains; symbol
    // indexes from it are the object's own.
    unsafe {
        let words = gnu_hash as *const u32;
        let nbuckets = *words;
        let symoffset = *words.add(1);
        let bloom_size = *words.add(2);
        if nbuckets == 0 {
            return None;
        }
        let buckets = words.add(4 + 2 * bloom_size as usize);
        let chains = buckets.add(nbuckets as usize);
        let first = *buckets.add((h % nbuckets) as usize);
        if first < symoffset {
            return None;
        }
        // A chain ends with an odd hash; bounded against a corrupt table.
        for i in first..first.saturating_add(1 << 20) {
            let ch = *chains.add((i - symoffset) as usize);
            if ch | 1 == h | 1 {
                let sym = &*(symtab as *const libc::Elf64_Sym).add(i as usize);
                let s = core::ffi::CStr::from_ptr(
                    (strtab + u64::from(sym.st_name)) as *const libc::c_char,
                );
                if s.to_bytes() == name && sym.st_shndx != 0 {
                    return Some(base + sym.st_value);
                }
            }
            if ch & 1 != 0 {
                return None;
            }
        }
    }
    None
}

/// Reads this process's memory with plain loads, after making sure each
/// page is readable: a `process_vm_readv` of one byte (EFAULT instead of a
/// fault), its answer remembered per page in a small direct-mapped cache.
/// A page once found readable is assumed to stay so: the walk reads live
/// objects of the calling thread, which nothing unmaps under it.
#[derive(Default)]
struct Local {
    /// The last page found readable (+1; 0: none): most reads of a walk
    /// fall on the page of the read before.
    last: u64,
}

const PAGE: u64 = 4096;
static PAGES: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];

fn page_readable(page: u64) -> bool {
    let slot = &PAGES[((page ^ (page >> 9)) % 512) as usize];
    if slot.load(Relaxed) == page + 1 {
        return true;
    }
    let mut byte = 0u8;
    let local = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: (page * PAGE) as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: reads one byte of our own memory into `byte`; an unmapped
    // or unreadable address fails with EFAULT.
    let r = unsafe {
        sys::raw(
            libc::SYS_process_vm_readv,
            [
                sys::getpid() as u64,
                (&raw const local) as u64,
                1,
                (&raw const remote) as u64,
                1,
                0,
            ],
        )
    };
    if r == 1 {
        slot.store(page + 1, Relaxed);
        true
    } else {
        false
    }
}

impl Local {
    /// Whether every page of `[addr, addr + len)` is readable.
    fn readable(&mut self, addr: u64, len: usize) -> bool {
        let Some(end) = addr.checked_add(len as u64) else {
            return false;
        };
        if addr < 0x1000 || end > 0x0000_8000_0000_0000 {
            return false;
        }
        let mut page = addr / PAGE;
        while page * PAGE < end {
            if page + 1 != self.last {
                if !page_readable(page) {
                    return false;
                }
                self.last = page + 1;
            }
            page += 1;
        }
        true
    }

    /// A `T` read with one plain load (no memcpy call per field).
    fn load<T: Copy>(&mut self, addr: u64) -> Option<T> {
        if !self.readable(addr, size_of::<T>()) {
            return None;
        }
        // SAFETY: every page of the value was found readable; it may
        // change under us (other threads), which only makes it wrong, and
        // every value is checked by the walker. T is a plain integer.
        Some(unsafe { core::ptr::read_unaligned(addr as *const T) })
    }
}

impl Memory for Local {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        if !self.readable(addr, buf.len()) {
            return false;
        }
        // SAFETY: every page of the range was found readable; see `load`.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len());
        }
        true
    }
    fn u64_at(&mut self, addr: u64) -> Option<u64> {
        self.load(addr)
    }
    fn u32_at(&mut self, addr: u64) -> Option<u32> {
        self.load(addr)
    }
    fn u8_at(&mut self, addr: u64) -> Option<u8> {
        self.load(addr)
    }
}
