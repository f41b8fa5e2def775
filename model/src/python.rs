//! CPython's interpreter state, as another process (the supervisor) or the
//! process itself (the shim) can read it: per-version struct layouts for
//! CPython 3.8 to 3.13 on x86_64, a walker from the runtime to a thread's
//! Python frames, and the decoders of the line tables.
//!
//! Everything here goes through [`Memory`], so the same walker reads with
//! plain loads in the shim and with process_vm_readv in the supervisor, and
//! treats what it reads as untrusted: each pointer is checked before it is
//! followed, every loop is bounded, a bad read ends the walk.
//!
//! A walked frame is a [`PyFrame`]: the code object's address, the
//! instruction offset in it, and a check word made of the code object's
//! own fields. Resolving it to file, function and line happens later and
//! elsewhere (the supervisor), so the check lets the resolver tell the code
//! object the frame ran from a different object that took its address
//! since (it then says so, rather than name the wrong code).
//!
//! The offsets were measured with `offsetof` against each version's
//! internal headers (pyenv builds and Debian's 3.11); only the fields the
//! walker needs are listed.

/// Reads the memory the interpreter lives in.
pub trait Memory {
    /// Fills `buf` from `addr`; false when any byte is unreadable.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;

    fn u64_at(&mut self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
    fn u32_at(&mut self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }
    fn u8_at(&mut self, addr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b).then_some(b[0])
    }
}

/// A reader that fetched one block of an object (a frame's or a code
/// object's header, all the fields the walk wants) with a single read and
/// answers reads inside it from that copy; anything else, or everything
/// when the block could not be read whole (an object at the end of a
/// mapping), goes to the reader beneath. One read instead of five or six:
/// each read of the shim's own memory checks its pages, and the
/// supervisor's is a `process_vm_readv`.
struct Window<'m, M: Memory> {
    mem: &'m mut M,
    base: u64,
    buf: [u8; WINDOW],
    len: usize,
}

/// Past the last field the walk reads in any layout: a `PyFrameObject`'s
/// `f_lasti` ends at 108, a code object's `co_linetable` at 144.
const WINDOW: usize = 144;

impl<'m, M: Memory> Window<'m, M> {
    fn new(mem: &'m mut M, base: u64, len: usize) -> Self {
        let mut buf = [0u8; WINDOW];
        let len = len.min(WINDOW);
        let len = if mem.read(base, &mut buf[..len]) {
            len
        } else {
            0
        };
        Window {
            mem,
            base,
            buf,
            len,
        }
    }
}

impl<M: Memory> Window<'_, M> {
    /// The `N` bytes at `addr` from the copy, if they are all in it; a
    /// fixed size, so that no call to memcpy is made per field.
    fn copied<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let bytes = self.buf[..self.len].get(off..off.checked_add(N)?)?;
        bytes.try_into().ok()
    }
}

impl<M: Memory> Memory for Window<'_, M> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        let inside = addr
            .checked_sub(self.base)
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| Some(off..off.checked_add(buf.len())?))
            .and_then(|r| self.buf[..self.len].get(r));
        match inside {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => self.mem.read(addr, buf),
        }
    }
    fn u64_at(&mut self, addr: u64) -> Option<u64> {
        match self.copied(addr) {
            Some(b) => Some(u64::from_le_bytes(b)),
            None => self.mem.u64_at(addr),
        }
    }
    fn u32_at(&mut self, addr: u64) -> Option<u32> {
        match self.copied(addr) {
            Some(b) => Some(u32::from_le_bytes(b)),
            None => self.mem.u32_at(addr),
        }
    }
    fn u8_at(&mut self, addr: u64) -> Option<u8> {
        match self.copied::<1>(addr) {
            Some(b) => Some(b[0]),
            None => self.mem.u8_at(addr),
        }
    }
}

/// How far into an object of `l`'s kind the walk's fields reach: the
/// frame's (`frame` true) or the code object's.
fn span(l: &Layout, frame: bool) -> usize {
    let ends: [u64; 5] = if frame {
        let lasti = if l.frames == FrameKind::Objects { 4 } else { 8 };
        [
            l.f_back + 8,
            l.f_code + 8,
            l.f_lasti + lasti,
            l.f_owner + 1,
            l.f_is_entry + 1,
        ]
    } else {
        [
            16,
            l.co_filename + 8,
            l.co_name + 8,
            l.co_qualname + 8,
            (l.co_firstlineno + 4).max(l.co_linetable + 8),
        ]
    };
    ends.iter().copied().max().unwrap_or(0) as usize
}

/// How a version keeps its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// 3.8 to 3.10: `PyThreadState.frame`, a chain of `PyFrameObject`s,
    /// one `_PyEval_EvalFrameDefault` call each.
    Objects,
    /// 3.11 and 3.12: `PyThreadState.cframe->current_frame`, a chain of
    /// `_PyInterpreterFrame`s; one evaluation call runs several.
    CFrame,
    /// 3.13: `PyThreadState.current_frame`.
    Direct,
}

/// How a version's code object maps an instruction offset to a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTable {
    /// 3.8, 3.9: `co_lnotab`, offsets in bytes.
    Lnotab,
    /// 3.10: `co_linetable` of (byte delta, line delta) pairs.
    Pairs310,
    /// 3.11 and later: the location table, lengths in code units.
    Locations,
}

/// Field offsets of one CPython minor version (x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub minor: u32,
    pub frames: FrameKind,
    pub lines: LineTable,
    /// `_PyRuntime.interpreters.head`.
    pub runtime_interpreters: u64,
    /// `_PyRuntime`'s gilstate `Py_tss_t autoTSSkey` (the thread's own
    /// thread state, kept while the thread waits without the GIL).
    pub runtime_tss: u64,
    pub interp_next: u64,
    pub interp_threads: u64,
    pub ts_next: u64,
    /// `thread_id`: the thread's `pthread_self()`.
    pub ts_thread_id: u64,
    /// `native_thread_id` (3.11 and later), else 0.
    pub ts_native_id: u64,
    /// `frame`, `cframe` or `current_frame` (see [`FrameKind`]).
    pub ts_frame: u64,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_current: u64,
    /// `PyFrameObject` f_back, f_code, f_lasti; or `_PyInterpreterFrame`
    /// previous, f_code / f_executable, prev_instr / instr_ptr.
    pub f_back: u64,
    pub f_code: u64,
    pub f_lasti: u64,
    /// `_PyInterpreterFrame.owner` (3.11+); `is_entry` (3.11 only, else 0).
    pub f_owner: u64,
    pub f_is_entry: u64,
    pub co_filename: u64,
    pub co_name: u64,
    /// `co_qualname` (3.11+), else 0.
    pub co_qualname: u64,
    pub co_firstlineno: u64,
    /// `co_lnotab` (3.8, 3.9) or `co_linetable`: a bytes object.
    pub co_linetable: u64,
    /// ≤3.10: `co_code` (a bytes object); 3.11+: `co_code_adaptive`, the
    /// inline code units.
    pub co_code: u64,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where
    /// a compact string's characters start.
    pub ascii_size: u64,
    pub compact_size: u64,
}

/// `_PyInterpreterFrame.owner` of the entry frame each evaluation call
/// pushes on the C stack (3.12+): no Python code of its own.
const FRAME_OWNED_BY_CSTACK: u8 = 3;

const fn objects(minor: u32, runtime_tss: u64, f_lasti: u64) -> Layout {
    Layout {
        minor,
        frames: FrameKind::Objects,
        lines: if minor >= 10 {
            LineTable::Pairs310
        } else {
            LineTable::Lnotab
        },
        runtime_interpreters: 32,
        runtime_tss,
        interp_next: 0,
        interp_threads: 8,
        ts_next: 8,
        ts_thread_id: 176,
        ts_native_id: 0,
        ts_frame: 24,
        cframe_current: 0,
        f_back: 24,
        f_code: 32,
        f_lasti,
        f_owner: 0,
        f_is_entry: 0,
        co_filename: 104,
        co_name: 112,
        co_qualname: 0,
        co_firstlineno: 40,
        co_linetable: 120,
        co_code: 48,
        ascii_size: 48,
        compact_size: 72,
    }
}

pub const V3_8: Layout = objects(8, 1392, 104);
pub const V3_9: Layout = objects(9, 584, 104);
pub const V3_10: Layout = objects(10, 584, 96);
pub const V3_11: Layout = Layout {
    minor: 11,
    frames: FrameKind::CFrame,
    lines: LineTable::Locations,
    runtime_interpreters: 40,
    runtime_tss: 592,
    interp_next: 0,
    interp_threads: 16,
    ts_next: 8,
    ts_thread_id: 152,
    ts_native_id: 160,
    ts_frame: 56,
    cframe_current: 8,
    f_back: 48,
    f_code: 32,
    f_lasti: 56,
    f_owner: 69,
    f_is_entry: 68,
    co_filename: 112,
    co_name: 120,
    co_qualname: 128,
    co_firstlineno: 72,
    co_linetable: 136,
    co_code: 184,
    ascii_size: 48,
    compact_size: 72,
};
pub const V3_12: Layout = Layout {
    minor: 12,
    frames: FrameKind::CFrame,
    lines: LineTable::Locations,
    runtime_interpreters: 40,
    runtime_tss: 1544,
    interp_next: 0,
    interp_threads: 72,
    ts_next: 8,
    ts_thread_id: 136,
    ts_native_id: 144,
    ts_frame: 56,
    cframe_current: 0,
    f_back: 8,
    f_code: 0,
    f_lasti: 56,
    f_owner: 70,
    f_is_entry: 0,
    co_filename: 112,
    co_name: 120,
    co_qualname: 128,
    co_firstlineno: 68,
    co_linetable: 136,
    co_code: 192,
    ascii_size: 40,
    compact_size: 56,
};
pub const V3_13: Layout = Layout {
    minor: 13,
    frames: FrameKind::Direct,
    runtime_interpreters: 632,
    runtime_tss: 2160,
    interp_next: 7264,
    interp_threads: 7344,
    ts_thread_id: 152,
    ts_native_id: 160,
    ts_frame: 72,
    co_code: 200,
    ..V3_12
};

/// The layout of CPython 3.`minor`, if known.
pub fn layout(major: u32, minor: u32) -> Option<&'static Layout> {
    match (major, minor) {
        (3, 8) => Some(&V3_8),
        (3, 9) => Some(&V3_9),
        (3, 10) => Some(&V3_10),
        (3, 11) => Some(&V3_11),
        (3, 12) => Some(&V3_12),
        (3, 13) => Some(&V3_13),
        _ => None,
    }
}

/// The minor version in a file name such as `python3.11` or
/// `libpython3.9.so.1.0`: the digits after `python3.`. None for any other
/// name, and for debug (`3.13d`) and free-threaded (`3.13t`) builds,
/// whose structures differ from the release layouts here.
pub fn minor_from_name(name: &[u8]) -> Option<u32> {
    let base = match name.iter().rposition(|&b| b == b'/') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    let rest = base
        .strip_prefix(b"libpython3.")
        .or_else(|| base.strip_prefix(b"python3."))?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 2 {
        return None;
    }
    // `python3.11-config` is a script, `python3.11.py` no binary: accept
    // only the end of the name or a `.so` suffix.
    let tail = &rest[digits..];
    let ok = tail.is_empty() || tail.starts_with(b".so");
    if !ok {
        return None;
    }
    let mut v = 0u32;
    for &d in &rest[..digits] {
        v = v * 10 + u32::from(d - b'0');
    }
    Some(v)
}

/// One Python frame as walked: resolved later (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PyFrame {
    /// The code object's address.
    pub code: u64,
    /// The instruction's offset: bytes (3.8, 3.9) or code units (3.10+),
    /// what [`line_for`] takes.
    pub lasti: u32,
    /// [`code_check`] of the code object when the frame was walked.
    pub check: u32,
    /// The last frame its `_PyEval_EvalFrameDefault` call runs (the
    /// outermost of the group that C call evaluates): frames up to and
    /// including this one stand for one native evaluation frame.
    pub entry: bool,
    /// The line, when it was computed where the frame was walked (the
    /// shim does, so that a frame resolves after its code object is
    /// freed); 0 when only `lasti` is known.
    pub line: u32,
}

/// A user-space address a pointer field may hold: not null, aligned, below
/// the x86_64 canonical user limit.
pub fn plausible(ptr: u64) -> bool {
    (0x1000..0x0000_8000_0000_0000).contains(&ptr) && ptr.is_multiple_of(8)
}

/// What identifies a code object beyond its address: its filename and name
/// objects' addresses and its first line, mixed into 32 bits.
pub fn code_check(filename: u64, name: u64, firstlineno: u32) -> u32 {
    let mut h = filename.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= name.rotate_left(29).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= u64::from(firstlineno).wrapping_mul(0x1656_67B1_9E37_79F9);
    h ^= h >> 31;
    let c = (h ^ (h >> 32)) as u32;
    // 0 stands for "no check" in stored records.
    if c == 0 {
        1
    } else {
        c
    }
}

/// The fields of a code object a check and a resolution need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFields {
    pub filename: u64,
    pub name: u64,
    pub qualname: u64,
    pub firstlineno: u32,
    pub linetable: u64,
    pub check: u32,
}

/// Reads a code object's fields; `code_type` (the address of
/// `PyCode_Type`, 0 when unknown) must be its type when given, so that a
/// frame's pointer to something else (3.13's `f_executable` may be None)
/// or a freed and reused block is not taken for code.
pub fn code_fields<M: Memory>(
    mem: &mut M,
    l: &Layout,
    code: u64,
    code_type: u64,
) -> Option<CodeFields> {
    if !plausible(code) {
        return None;
    }
    let mem = &mut Window::new(mem, code, span(l, false));
    let refcnt = mem.u64_at(code)?;
    let ty = mem.u64_at(code + 8)?;
    // A live object's count is small and positive (3.12's immortal count
    // is u32::MAX); a freed block holds an allocator's list pointer or 0
    // there.
    if refcnt == 0 || refcnt > u64::from(u32::MAX) {
        return None;
    }
    if code_type != 0 && ty != code_type {
        return None;
    }
    let filename = mem.u64_at(code + l.co_filename)?;
    let name = mem.u64_at(code + l.co_name)?;
    let qualname = if l.co_qualname != 0 {
        mem.u64_at(code + l.co_qualname)?
    } else {
        0
    };
    let firstlineno = mem.u32_at(code + l.co_firstlineno)?;
    let linetable = mem.u64_at(code + l.co_linetable)?;
    if !plausible(filename) || !plausible(name) || !plausible(linetable) {
        return None;
    }
    Some(CodeFields {
        filename,
        name,
        qualname,
        firstlineno,
        linetable,
        check: code_check(filename, name, firstlineno),
    })
}

/// The thread state of the thread whose `pthread_self()` is `pthread` (on
/// x86_64 glibc: its fs base) or whose kernel thread id is `tid` (3.11+),
/// found by walking every interpreter's thread list from `runtime` (the
/// address of `_PyRuntime`). Not the GIL holder: a thread blocked in a
/// syscall released the GIL, and its thread state is still its own.
pub fn find_thread_state<M: Memory>(
    mem: &mut M,
    l: &Layout,
    runtime: u64,
    pthread: u64,
    tid: u32,
) -> Option<u64> {
    let mut interp = mem.u64_at(runtime + l.runtime_interpreters)?;
    for _ in 0..64 {
        if !plausible(interp) {
            return None;
        }
        let mut ts = mem.u64_at(interp + l.interp_threads)?;
        for _ in 0..4096 {
            if !plausible(ts) {
                break;
            }
            let id = mem.u64_at(ts + l.ts_thread_id)?;
            if pthread != 0 && id == pthread {
                return Some(ts);
            }
            if l.ts_native_id != 0 && tid != 0 {
                let native = mem.u64_at(ts + l.ts_native_id)?;
                if native == u64::from(tid) {
                    return Some(ts);
                }
            }
            ts = mem.u64_at(ts + l.ts_next)?;
        }
        interp = mem.u64_at(interp + l.interp_next)?;
    }
    None
}

/// The thread's innermost frame pointer.
fn current_frame<M: Memory>(mem: &mut M, l: &Layout, tstate: u64) -> Option<u64> {
    let f = mem.u64_at(tstate + l.ts_frame)?;
    match l.frames {
        FrameKind::Objects | FrameKind::Direct => Some(f),
        FrameKind::CFrame => {
            if !plausible(f) {
                return None;
            }
            mem.u64_at(f + l.cframe_current)
        }
    }
}

/// What one frame says: the C stack's entry frame (3.12+: no code of its
/// own), or a frame of code.
enum FrameRead {
    Entry {
        back: u64,
    },
    Code {
        back: u64,
        code: u64,
        lasti: u32,
        entry: bool,
    },
}

/// Reads the frame at `frame`; None when a field cannot be read.
fn frame_fields<M: Memory>(mem: &mut M, l: &Layout, frame: u64) -> Option<FrameRead> {
    let back = mem.u64_at(frame + l.f_back)?;
    if l.frames == FrameKind::Objects {
        let code = mem.u64_at(frame + l.f_code)?;
        let lasti = mem.u32_at(frame + l.f_lasti)?;
        // -1: not started yet.
        let lasti = if (lasti as i32) < 0 { 0 } else { lasti };
        return Some(FrameRead::Code {
            back,
            code,
            lasti,
            entry: true,
        });
    }
    let owner = mem.u8_at(frame + l.f_owner)?;
    if owner == FRAME_OWNED_BY_CSTACK {
        return Some(FrameRead::Entry { back });
    }
    let entry = l.f_is_entry != 0 && mem.u8_at(frame + l.f_is_entry).unwrap_or(0) != 0;
    let code = mem.u64_at(frame + l.f_code)?;
    let instr = mem.u64_at(frame + l.f_lasti)?;
    let first = code.wrapping_add(l.co_code);
    // prev_instr is one unit before the first instruction in a frame that
    // has not started yet.
    let units = instr.wrapping_sub(first) as i64 / 2;
    Some(FrameRead::Code {
        back,
        code,
        lasti: units.clamp(0, i64::from(u32::MAX)) as u32,
        entry,
    })
}

/// Walks the frames of `tstate`, innermost first, into `out`; returns how
/// many were written. Frames whose code cannot be read are left out; the
/// walk stops at the first unreadable link or after `out.len()` frames
/// (the outermost are then missing).
pub fn walk<M: Memory>(
    mem: &mut M,
    l: &Layout,
    tstate: u64,
    code_type: u64,
    out: &mut [PyFrame],
) -> usize {
    let mut n = 0;
    let Some(mut frame) = current_frame(mem, l, tstate) else {
        return 0;
    };
    // Bounds a cycle in a corrupt chain; frames beyond `out` are not
    // needed, but entry frames (3.12+) are not in `out`, so allow more.
    for _ in 0..(out.len() * 2 + 64) {
        if n == out.len() || !plausible(frame) {
            break;
        }
        let Some(read) = frame_fields(&mut Window::new(mem, frame, span(l, true)), l, frame) else {
            break;
        };
        let (back, code, lasti, entry) = match read {
            FrameRead::Entry { back } => {
                if let Some(last) = n.checked_sub(1).and_then(|i| out.get_mut(i)) {
                    last.entry = true;
                }
                frame = back;
                continue;
            }
            FrameRead::Code {
                back,
                code,
                lasti,
                entry,
            } => (back, code, lasti, entry),
        };
        if let Some(fields) = code_fields(mem, l, code, code_type) {
            if let Some(slot) = out.get_mut(n) {
                *slot = PyFrame {
                    code,
                    lasti,
                    check: fields.check,
                    entry,
                    line: 0,
                };
                n += 1;
            }
        }
        frame = back;
    }
    n
}

/// The line of instruction `lasti` (see [`PyFrame::lasti`]) in a code
/// object's line table, `first` its `co_firstlineno`. None where the table
/// says the instruction has no line (or the table ends first).
pub fn line_for(kind: LineTable, table: &[u8], first: u32, lasti: u32) -> Option<u32> {
    line_from(
        kind,
        &mut |i| table.get(i).copied(),
        table.len(),
        first,
        lasti,
    )
}

/// [`line_for`] over a table read through `byte` (index → byte), `len`
/// bytes long: the shim decodes a table in place, in small reads.
pub fn line_from(
    kind: LineTable,
    byte: &mut dyn FnMut(usize) -> Option<u8>,
    len: usize,
    first: u32,
    lasti: u32,
) -> Option<u32> {
    match kind {
        LineTable::Lnotab => lnotab(byte, len, first, lasti),
        LineTable::Pairs310 => pairs310(byte, len, first, lasti.saturating_mul(2)),
        LineTable::Locations => locations(byte, len, first, lasti),
    }
}

/// 3.8/3.9: pairs of (byte offset increment, signed line increment); the
/// line of an offset is the sum of the increments of the pairs that start
/// at or before it.
fn lnotab(
    byte: &mut dyn FnMut(usize) -> Option<u8>,
    len: usize,
    first: u32,
    lasti: u32,
) -> Option<u32> {
    let mut line = i64::from(first);
    let mut addr = 0u64;
    for i in (0..len / 2).map(|p| 2 * p) {
        addr += u64::from(byte(i)?);
        if addr > u64::from(lasti) {
            break;
        }
        line += i64::from(byte(i + 1)? as i8);
    }
    u32::try_from(line).ok()
}

/// 3.10: pairs of (byte length, signed line delta) covering consecutive
/// ranges; a delta of -128 marks a range without a line.
fn pairs310(
    byte: &mut dyn FnMut(usize) -> Option<u8>,
    len: usize,
    first: u32,
    addr: u32,
) -> Option<u32> {
    let mut line = i64::from(first);
    let mut end = 0u64;
    for i in (0..len / 2).map(|p| 2 * p) {
        let start = end;
        end += u64::from(byte(i)?);
        let delta = byte(i + 1)? as i8;
        let this = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if (start..end).contains(&u64::from(addr)) {
            return this.and_then(|l| u32::try_from(l).ok());
        }
    }
    None
}

/// 3.11+: the location table. Each entry starts with a byte whose top bit
/// is set: bits 3-6 say its form, bits 0-2 its length in code units minus
/// one; the forms carry a line delta (and columns this does not need).
fn locations(
    byte: &mut dyn FnMut(usize) -> Option<u8>,
    len: usize,
    first: u32,
    unit: u32,
) -> Option<u32> {
    let mut line = i64::from(first);
    let mut at = 0usize;
    let mut start = 0u64;
    let mut next = |at: &mut usize| -> Option<u8> {
        if *at >= len {
            return None;
        }
        let b = byte(*at)?;
        *at += 1;
        Some(b)
    };
    fn varint(next: &mut dyn FnMut(&mut usize) -> Option<u8>, at: &mut usize) -> Option<u64> {
        let mut b = next(at)?;
        let mut v = u64::from(b & 63);
        let mut shift = 6;
        while b & 64 != 0 && shift < 60 {
            b = next(at)?;
            v |= u64::from(b & 63) << shift;
            shift += 6;
        }
        Some(v)
    }
    fn svarint(next: &mut dyn FnMut(&mut usize) -> Option<u8>, at: &mut usize) -> Option<i64> {
        let v = varint(next, at)?;
        Some(if v & 1 != 0 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    }
    while at < len {
        let head = next(&mut at)?;
        if head & 0x80 == 0 {
            return None;
        }
        let form = (head >> 3) & 15;
        let len = u64::from(head & 7) + 1;
        let this = match form {
            15 => None,
            14 => {
                line += svarint(&mut next, &mut at)?;
                varint(&mut next, &mut at)?;
                varint(&mut next, &mut at)?;
                varint(&mut next, &mut at)?;
                Some(line)
            }
            13 => {
                line += svarint(&mut next, &mut at)?;
                Some(line)
            }
            10..=12 => {
                line += i64::from(form - 10);
                at += 2;
                Some(line)
            }
            _ => {
                at += 1;
                Some(line)
            }
        };
        let end = start + len;
        if (start..end).contains(&u64::from(unit)) {
            return this.and_then(|l| u32::try_from(l).ok());
        }
        start = end;
    }
    None
}

/// Decodes a compact `str` object's characters into `out` as UTF-8 (cut
/// at `out`'s length on a character boundary); returns the bytes written,
/// None when `s` is no compact string (not something a code object's name
/// or filename is).
pub fn read_str<M: Memory>(mem: &mut M, l: &Layout, s: u64, out: &mut [u8]) -> Option<usize> {
    if !plausible(s) {
        return None;
    }
    let len = mem.u64_at(s + 16)?;
    let state = mem.u32_at(s + 32)?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || len > 1 << 20 {
        return None;
    }
    if ascii {
        let n = (len as usize).min(out.len());
        return mem.read(s + l.ascii_size, &mut out[..n]).then_some(n);
    }
    let width = match kind {
        1 | 2 | 4 => u64::from(kind),
        _ => return None,
    };
    let data = s + l.compact_size;
    let mut n = 0;
    for i in 0..len {
        let mut c = [0u8; 4];
        if !mem.read(data + i * width, &mut c[..width as usize]) {
            return None;
        }
        let ch = char::from_u32(u32::from_le_bytes(c)).unwrap_or(char::REPLACEMENT_CHARACTER);
        let w = ch.len_utf8();
        if n + w > out.len() {
            break;
        }
        ch.encode_utf8(&mut out[n..n + w]);
        n += w;
    }
    Some(n)
}

/// The payload of a `bytes` object: (address, length).
pub fn bytes_payload<M: Memory>(mem: &mut M, b: u64) -> Option<(u64, u64)> {
    if !plausible(b) {
        return None;
    }
    let len = mem.u64_at(b + 16)?;
    (len < 1 << 26).then_some((b + 32, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory of `len` bytes at `base` holding each address's low byte,
    /// counting reads.
    struct Fake {
        base: u64,
        len: u64,
        reads: usize,
    }

    impl Memory for Fake {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            self.reads += 1;
            if addr < self.base || addr + buf.len() as u64 > self.base + self.len {
                return false;
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (addr + i as u64) as u8;
            }
            true
        }
    }

    #[test]
    fn a_window_answers_from_one_read() {
        let mut mem = Fake {
            base: 0x1000,
            len: 0x1000,
            reads: 0,
        };
        {
            let mut w = Window::new(&mut mem, 0x1010, 64);
            assert_eq!(w.u8_at(0x1010), Some(0x10));
            assert_eq!(
                w.u64_at(0x1048),
                Some(u64::from_le_bytes([
                    0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f
                ]))
            );
            assert_eq!(w.u32_at(0x1040), Some(0x4342_4140));
            // Outside the window (before it, straddling its end): the reader
            // beneath answers.
            assert_eq!(w.u8_at(0x1008), Some(0x08));
            assert_eq!(
                w.u64_at(0x104c),
                Some(u64::from_le_bytes([
                    0x4c, 0x4d, 0x4e, 0x4f, 0x50, 0x51, 0x52, 0x53
                ]))
            );
        }
        assert_eq!(mem.reads, 3);
    }

    #[test]
    fn a_window_that_cannot_be_read_whole_reads_field_by_field() {
        // The object sits at the end of its mapping: the block read fails,
        // each field is still read.
        let mut mem = Fake {
            base: 0x1000,
            len: 0x40,
            reads: 0,
        };
        {
            let mut w = Window::new(&mut mem, 0x1020, 144);
            assert_eq!(w.u8_at(0x1021), Some(0x21));
            assert_eq!(w.u8_at(0x1080), None);
        }
        assert_eq!(mem.reads, 3);
    }

    #[test]
    fn spans_cover_every_field() {
        for l in [&V3_8, &V3_9, &V3_10, &V3_11, &V3_12, &V3_13] {
            let f = span(l, true);
            assert!(
                f <= WINDOW && f as u64 >= l.f_lasti + 4,
                "3.{} frame {f}",
                l.minor
            );
            let c = span(l, false);
            assert!(
                c <= WINDOW && c as u64 >= l.co_linetable + 8,
                "3.{} code {c}",
                l.minor
            );
        }
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(minor_from_name(b"/usr/bin/python3.11"), Some(11));
        assert_eq!(
            minor_from_name(b"/root/.pyenv/versions/3.9.18/lib/libpython3.9.so.1.0"),
            Some(9)
        );
        assert_eq!(minor_from_name(b"libpython3.13d.so"), None);
        assert_eq!(minor_from_name(b"/usr/bin/python3.13t"), None);
        assert_eq!(minor_from_name(b"python3"), None);
        assert_eq!(minor_from_name(b"python3.11-config"), None);
        assert_eq!(minor_from_name(b"/usr/bin/perl"), None);
    }

    #[test]
    fn lnotab_lines() {
        // Offsets 0→line 10, 6→11, 20→13.
        let t = [6, 1, 14, 2];
        assert_eq!(line_for(LineTable::Lnotab, &t, 10, 0), Some(10));
        assert_eq!(line_for(LineTable::Lnotab, &t, 10, 5), Some(10));
        assert_eq!(line_for(LineTable::Lnotab, &t, 10, 6), Some(11));
        assert_eq!(line_for(LineTable::Lnotab, &t, 10, 30), Some(13));
    }

    #[test]
    fn pairs310_lines() {
        // [0,4) line 11, [4,8) no line, [8,12) line 9.
        let t = [4, 1, 4, 0x80, 4, 0xFE];
        assert_eq!(line_for(LineTable::Pairs310, &t, 10, 1), Some(11));
        assert_eq!(line_for(LineTable::Pairs310, &t, 10, 2), None);
        assert_eq!(line_for(LineTable::Pairs310, &t, 10, 5), Some(9));
        assert_eq!(line_for(LineTable::Pairs310, &t, 10, 6), None);
        assert_eq!(line_for(LineTable::Pairs310, &t, 10, 4), Some(9));
    }

    #[test]
    fn location_table_lines() {
        // Entry 1: short form (0), 2 units, line 10. Entry 2: one-line form
        // 11 (+1), 1 unit. Entry 3: no-column form 13, svarint -2 (5), 3
        // units. Entry 4: no location, 1 unit. Entry 5: long form 14,
        // +3, end line, columns.
        let t = [
            0x80 | 1,
            0,
            0x80 | (11 << 3),
            1,
            2,
            0x80 | (13 << 3) | 2,
            5,
            0x80 | (15 << 3),
            0x80 | (14 << 3),
            6,
            0,
            1,
            2,
        ];
        assert_eq!(line_for(LineTable::Locations, &t, 10, 0), Some(10));
        assert_eq!(line_for(LineTable::Locations, &t, 10, 1), Some(10));
        assert_eq!(line_for(LineTable::Locations, &t, 10, 2), Some(11));
        assert_eq!(line_for(LineTable::Locations, &t, 10, 3), Some(9));
        assert_eq!(line_for(LineTable::Locations, &t, 10, 5), Some(9));
        assert_eq!(line_for(LineTable::Locations, &t, 10, 6), None);
        assert_eq!(line_for(LineTable::Locations, &t, 10, 7), Some(12));
        assert_eq!(line_for(LineTable::Locations, &t, 10, 8), None);
    }

    #[test]
    fn checks_differ_and_are_never_zero() {
        let a = code_check(0x7f00_0000_1000, 0x7f00_0000_2000, 10);
        assert_ne!(a, code_check(0x7f00_0000_1000, 0x7f00_0000_2000, 11));
        assert_ne!(a, code_check(0x7f00_0000_1008, 0x7f00_0000_2000, 10));
        assert_ne!(a, 0);
    }
}
