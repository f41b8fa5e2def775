//! Python frames in native stacks: finding a CPython interpreter in a
//! process, walking a stopped thread's Python frames
//! (`handles_model::python`, with remote reads), resolving code objects to
//! file, function and line, and merging those frames into a symbolized
//! native stack in place of the interpreter's evaluation frames, as
//! py-spy's `--native` mode shows them.
//!
//! A stack the supervisor keeps is a `Vec<u64>` of return addresses; Python
//! frames travel in the same vector as two tagged words each (see
//! [`encode`]), after the native addresses, so that every path that keeps,
//! compares or groups stacks (leak groups, report contexts) carries them
//! unchanged. No user-space address has those tags in its top byte.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use handles_model::python::{self as py, Layout, Memory, PyFrame};
use handles_model::table::CodeRegistry;
use object::{Object, ObjectSymbol, ReadCache};

use super::elf::open_module_file;
use super::maps::ModuleMap;
use super::memory::read_partial;
use super::Frame;

const TAG_CODE: u64 = 0xF1 << 56;
const TAG_AUX: u64 = 0xF2 << 56;
const TAG_MASK: u64 = 0xFF << 56;

/// Python frames kept per stack.
pub const MAX_PY_FRAMES: usize = 48;

/// Whether `word` of a stored stack is (half of) a Python frame.
pub fn is_python_word(word: u64) -> bool {
    matches!(word & TAG_MASK, TAG_CODE | TAG_AUX)
}

const VALUE_BITS: u32 = 22;
const VALUE_MAX: u32 = (1 << VALUE_BITS) - 1;
/// The value is the line (computed where the frame was walked), not the
/// instruction offset.
const LINE_MODE: u64 = 1 << 22;
const ENTRY: u64 = 1 << 23;

/// Appends `frames` to a stack as tagged words: the code object's
/// address, then its check (bits 24-55), the entry flag (23), whether the
/// value is a line (22) and the line or instruction offset (0-21).
pub fn encode(frames: &[PyFrame], out: &mut Vec<u64>) {
    for f in frames {
        out.push(TAG_CODE | (f.code & !TAG_MASK));
        let value = if f.line != 0 {
            LINE_MODE | u64::from(f.line.min(VALUE_MAX))
        } else {
            u64::from(f.lasti.min(VALUE_MAX))
        };
        out.push(TAG_AUX | (u64::from(f.check) << 24) | if f.entry { ENTRY } else { 0 } | value);
    }
}

/// Splits a stored stack into its native addresses and its Python frames.
pub fn decode(stack: &[u64]) -> (Vec<u64>, Vec<PyFrame>) {
    let mut native = Vec::with_capacity(stack.len());
    let mut frames = Vec::new();
    let mut i = 0;
    while i < stack.len() {
        let w = stack[i];
        if w & TAG_MASK == TAG_CODE {
            if let Some(&aux) = stack.get(i + 1).filter(|a| *a & TAG_MASK == TAG_AUX) {
                let value = (aux & u64::from(VALUE_MAX)) as u32;
                let line_mode = aux & LINE_MODE != 0;
                frames.push(PyFrame {
                    code: w & !TAG_MASK,
                    lasti: if line_mode { 0 } else { value },
                    line: if line_mode { value } else { 0 },
                    check: ((aux >> 24) & 0xFFFF_FFFF) as u32,
                    entry: aux & ENTRY != 0,
                });
                i += 2;
                continue;
            }
        }
        if !is_python_word(w) {
            native.push(w);
        }
        i += 1;
    }
    (native, frames)
}

/// Where a process's interpreter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interpreter {
    pub layout: &'static Layout,
    /// `_PyRuntime`.
    pub runtime: u64,
    /// `PyCode_Type`.
    pub code_type: u64,
}

/// A code object's file, names and line table, read once.
#[derive(Debug, Clone)]
struct CodeInfo {
    filename: String,
    function: String,
    firstlineno: u32,
    linetable: Vec<u8>,
}

/// Finds interpreters and resolves their frames; caches per module file
/// and per code object.
#[derive(Default)]
pub struct PythonResolver {
    /// Module path → (`_PyRuntime`, `PyCode_Type`) in module addresses.
    symbols: HashMap<String, Option<(u64, u64)>>,
    /// (pid, code address, check) → what it resolved to.
    codes: HashMap<(i32, u64, u32), CodeInfo>,
    /// pid → the directory its relative script names are resolved against
    /// (its working directory at its first capture, or [`script_dir`]).
    dirs: HashMap<i32, PathBuf>,
}

/// Reads another process's memory a page at a time: a walk reads a few
/// words from each of a few dozen objects, mostly on the same pages.
struct Remote {
    tid: i32,
    pages: Vec<(u64, Vec<u8>)>,
}

const PAGE: u64 = 4096;
const MAX_PAGES: usize = 512;

impl Remote {
    fn new(tid: i32) -> Remote {
        Remote {
            tid,
            pages: Vec::new(),
        }
    }

    fn page(&mut self, base: u64) -> Option<&[u8]> {
        if let Some(i) = self.pages.iter().position(|(b, _)| *b == base) {
            return Some(&self.pages[i].1);
        }
        if self.pages.len() >= MAX_PAGES {
            return None;
        }
        let mut buf = vec![0u8; PAGE as usize];
        let n = read_partial(self.tid, base, &mut buf).ok()?;
        buf.truncate(n);
        self.pages.push((base, buf));
        self.pages.last().map(|(_, b)| b.as_slice())
    }
}

impl Memory for Remote {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < buf.len() {
            let Some(at) = addr.checked_add(done as u64) else {
                return false;
            };
            let base = at & !(PAGE - 1);
            let off = (at - base) as usize;
            let Some(page) = self.page(base) else {
                return false;
            };
            let take = (buf.len() - done).min(PAGE as usize - off);
            let Some(src) = page.get(off..off + take) else {
                return false;
            };
            buf[done..done + take].copy_from_slice(src);
            done += take;
        }
        true
    }
}

/// CPython's evaluation loop, the native frame Python frames stand in
/// for (its `.cold` part included). Only the loop itself: the wrappers
/// that call it (`_PyEval_EvalFrame`, `PyEval_EvalFrameEx`) are frames of
/// their own when not inlined, and must not take a group of their own.
pub fn is_eval_function(name: &str) -> bool {
    name.split('.').next() == Some("_PyEval_EvalFrameDefault")
}

impl PythonResolver {
    pub fn new() -> PythonResolver {
        PythonResolver::default()
    }

    /// The interpreter of the process whose maps are `maps`: the python
    /// binary or libpython module that exports `_PyRuntime`, its version
    /// from its file name.
    pub fn interpreter(&mut self, maps: &ModuleMap) -> Option<Interpreter> {
        for m in maps.mappings() {
            let Some(minor) = py::minor_from_name(m.path.as_bytes()) else {
                continue;
            };
            let Some(layout) = py::layout(3, minor) else {
                continue;
            };
            let Some(bias) = m.bias else { continue };
            let pid = maps.pid();
            let syms = self
                .symbols
                .entry(m.path.clone())
                .or_insert_with(|| lookup_symbols(pid, m).ok().flatten());
            if let Some((runtime, code_type)) = *syms {
                return Some(Interpreter {
                    layout,
                    runtime: runtime.wrapping_add(bias),
                    code_type: code_type.wrapping_add(bias),
                });
            }
        }
        None
    }

    /// The Python frames of thread `tid` (stopped), innermost first;
    /// `fs_base` is its pthread_self(). Each code object met is resolved
    /// now and kept, so that the frames still resolve once the code object
    /// is freed (or the process gone).
    pub fn capture(
        &mut self,
        tid: i32,
        pid: i32,
        interp: &Interpreter,
        fs_base: u64,
    ) -> Vec<PyFrame> {
        let mut mem = Remote::new(tid);
        let l = interp.layout;
        // The directory is taken at the process's first capture, closest
        // to its start, before the script may have changed it.
        if let std::collections::hash_map::Entry::Vacant(e) = self.dirs.entry(pid) {
            if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
                e.insert(cwd);
            }
        }
        let Some(ts) = py::find_thread_state(&mut mem, l, interp.runtime, fs_base, tid as u32)
        else {
            return Vec::new();
        };
        let mut frames = [PyFrame::default(); MAX_PY_FRAMES];
        let n = py::walk(&mut mem, l, ts, interp.code_type, &mut frames);
        let mut frames = frames[..n].to_vec();
        for f in &mut frames {
            // The line now, as the shim does: a table keeps lines only
            // (the supervisor's published table for --no-shim).
            if let Some(info) = self.code_info(&mut mem, pid, interp, f) {
                f.line =
                    py::line_for(l.lines, &info.linetable, info.firstlineno, f.lasti).unwrap_or(0);
            }
        }
        frames
    }

    fn code_info(
        &mut self,
        mem: &mut Remote,
        pid: i32,
        interp: &Interpreter,
        f: &PyFrame,
    ) -> Option<&CodeInfo> {
        let key = (pid, f.code, f.check);
        if !self.codes.contains_key(&key) {
            let l = interp.layout;
            let fields = py::code_fields(mem, l, f.code, interp.code_type)?;
            if fields.check != f.check {
                return None;
            }
            let filename = read_string(mem, l, fields.filename)?;
            let name = if fields.qualname != 0 {
                read_string(mem, l, fields.qualname).or_else(|| read_string(mem, l, fields.name))
            } else {
                read_string(mem, l, fields.name)
            }?;
            let (at, len) = py::bytes_payload(mem, fields.linetable)?;
            let mut linetable = vec![0u8; len as usize];
            if !mem.read(at, &mut linetable) {
                return None;
            }
            // Bounds the cache: a long-running job sees many code objects.
            if self.codes.len() > 100_000 {
                self.codes.clear();
            }
            self.codes.insert(
                key,
                CodeInfo {
                    filename,
                    function: name,
                    firstlineno: fields.firstlineno,
                    linetable,
                },
            );
        }
        self.codes.get(&key)
    }

    /// Resolves frames of process `pid` (live or not): from the cache,
    /// from the shim's code registry `codes` (what the shim copied when it
    /// recorded the frame), or by reading the code object now; a code
    /// object that is no longer the one walked (freed, its memory reused)
    /// is `<freed code object>`.
    pub fn resolve(
        &mut self,
        pid: i32,
        interp: Option<&Interpreter>,
        codes: Option<&CodeRegistry<'_>>,
        frames: &[PyFrame],
    ) -> Vec<Frame> {
        let mut mem = Remote::new(pid);
        frames
            .iter()
            .map(|f| {
                let key = (pid, f.code, f.check);
                let mut info = self.codes.get(&key).cloned();
                if info.is_none() {
                    if let Some(r) = codes.and_then(|c| c.get(f.code, f.check)) {
                        let got = CodeInfo {
                            filename: String::from_utf8_lossy(r.file()).into_owned(),
                            function: String::from_utf8_lossy(r.name()).into_owned(),
                            firstlineno: r.firstlineno,
                            linetable: Vec::new(),
                        };
                        self.codes.insert(key, got.clone());
                        info = Some(got);
                    }
                }
                if info.is_none() {
                    if let Some(i) = interp {
                        info = self.code_info(&mut mem, pid, i, f).cloned();
                    }
                }
                let kind = interp.map(|i| i.layout.lines);
                let mut frame = python_frame(f, info.as_ref(), kind);
                if let Some(file) = frame.file.take() {
                    frame.file = Some(self.absolute(pid, file));
                }
                frame
            })
            .collect()
    }

    /// `file` made absolute when the interpreter named it relative (see
    /// [`absolute_script_path`]).
    fn absolute(&mut self, pid: i32, file: String) -> String {
        if !is_relative_script(&file) {
            return file;
        }
        // The noted directory is checked against the file: a script that
        // changed directory before its first capture is found by
        // script_dir; a name found nowhere stays as the interpreter has it.
        if let Some(d) = self.dirs.get(&pid).filter(|d| d.join(&file).is_file()) {
            return absolute_script_path(&file, d);
        }
        match script_dir(pid, &file) {
            Some(d) => {
                let abs = absolute_script_path(&file, &d);
                self.dirs.insert(pid, d);
                abs
            }
            None => file,
        }
    }

    /// Seeds the cache with what a code registry said of frame `f`.
    pub fn remember(&mut self, pid: i32, f: &PyFrame, file: &str, function: &str) {
        self.codes
            .entry((pid, f.code, f.check))
            .or_insert_with(|| CodeInfo {
                filename: file.to_string(),
                function: function.to_string(),
                firstlineno: 0,
                linetable: Vec::new(),
            });
    }

    /// Drops what is cached for a process that exec'd or exited and was
    /// reported on.
    pub fn forget(&mut self, pid: i32) {
        self.codes.retain(|(p, _, _), _| *p != pid);
        self.dirs.remove(&pid);
    }
}

/// A Python file name that is neither absolute nor a pseudo-file
/// (`<string>`, `<stdin>`, `<frozen importlib._bootstrap>`).
fn is_relative_script(file: &str) -> bool {
    !file.is_empty() && !file.starts_with('/') && !file.starts_with('<')
}

/// CPython 3.8 names the main script's code as the command line gave it
/// (`python3.8 sub/x.py` → `sub/x.py`, relative to the directory it
/// started in); 3.9 and later make that name absolute at start-up
/// (`/srv/app/sub/x.py`). Reports show the later versions' name in every
/// version: `file` joined to `dir` with `.` and `..` resolved by name, as
/// `os.path.abspath` does. Absolute and pseudo-file names are unchanged.
pub fn absolute_script_path(file: &str, dir: &Path) -> String {
    if !is_relative_script(file) {
        return file.to_string();
    }
    let mut out = PathBuf::from("/");
    for c in dir.join(file).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out.to_string_lossy().into_owned()
}

/// The directory process `pid`'s relative script name `file` is relative
/// to, read when no capture noted it: its working directory if the
/// script is found there, else its environment's `PWD` (the directory the
/// shell started it in) if found there; None when neither holds it.
pub fn script_dir(pid: i32, file: &str) -> Option<PathBuf> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let pwd = std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|&b| b == 0).find_map(|v| {
                v.strip_prefix(b"PWD=")
                    .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            })
        })
        .filter(|p| p.is_absolute());
    [cwd, pwd]
        .into_iter()
        .flatten()
        .find(|d| d.join(file).is_file())
}

fn python_frame(f: &PyFrame, info: Option<&CodeInfo>, kind: Option<py::LineTable>) -> Frame {
    let mut frame = Frame {
        python: true,
        ..Frame::bare(0, f.code)
    };
    match info {
        Some(info) => {
            frame.function = Some(info.function.clone());
            frame.file = Some(info.filename.clone());
            frame.line = if f.line != 0 {
                Some(f.line)
            } else if info.linetable.is_empty() {
                None
            } else {
                kind.and_then(|k| py::line_for(k, &info.linetable, info.firstlineno, f.lasti))
            };
        }
        None => frame.function = Some(FREED.to_string()),
    }
    frame
}

/// What a frame whose code object cannot be told to be the walked one
/// shows instead of a name.
pub const FREED: &str = "<freed code object>";

fn read_string(mem: &mut Remote, l: &Layout, s: u64) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = py::read_str(mem, l, s, &mut buf)?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

fn lookup_symbols(pid: i32, m: &super::maps::Mapping) -> io::Result<Option<(u64, u64)>> {
    let key = m.file_key();
    let file = open_module_file(pid, &key, m.deleted, Some((m.start, m.end)))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("parsing {} as ELF: {e}", m.path),
        )
    })?;
    let mut runtime = None;
    let mut code_type = None;
    for s in obj.dynamic_symbols().chain(obj.symbols()) {
        match s.name() {
            Ok("_PyRuntime") if s.is_definition() => runtime = Some(s.address()),
            Ok("PyCode_Type") if s.is_definition() => code_type = Some(s.address()),
            _ => {}
        }
        if runtime.is_some() && code_type.is_some() {
            break;
        }
    }
    Ok(runtime.zip(code_type))
}

/// Merges resolved Python frames into a symbolized native stack: each
/// evaluation-loop frame is replaced by the Python frames it ran (one group
/// up to an entry frame); groups left over (a native stack cut short, or
/// one without evaluation frames) follow the native frames. Renumbers.
pub fn merge(native: Vec<Frame>, python: Vec<Frame>, groups: &[PyFrame]) -> Vec<Frame> {
    if python.is_empty() {
        return native;
    }
    // Split the Python frames into per-evaluation-call groups.
    let mut grouped: Vec<Vec<Frame>> = Vec::new();
    let mut cur = Vec::new();
    for (f, raw) in python.into_iter().zip(groups) {
        cur.push(f);
        if raw.entry {
            grouped.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        grouped.push(cur);
    }
    let mut groups = grouped.into_iter();
    let mut out = Vec::with_capacity(native.len() + groups.len());
    for f in native {
        // The function the code physically is: the outermost one the
        // innermost was inlined into (`do_call_core [inlined into
        // _PyEval_EvalFrameDefault]` is an evaluation frame).
        let physical = f
            .inlined_into
            .last()
            .map_or(f.function.as_deref(), |c| c.function.as_deref());
        if physical.is_some_and(is_eval_function) {
            if let Some(g) = groups.next() {
                out.extend(g);
                continue;
            }
        }
        out.push(f);
    }
    for g in groups {
        out.extend(g);
    }
    for (i, f) in out.iter_mut().enumerate() {
        f.index = i;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_frames_come_back() {
        let frames = [
            PyFrame {
                code: 0x7f12_3456_7890,
                lasti: 41,
                check: 0xdead_beef,
                entry: false,
                line: 0,
            },
            PyFrame {
                code: 0x55_0000_1000,
                lasti: 0,
                check: 7,
                entry: true,
                line: 1234,
            },
        ];
        let mut stack = vec![0x55_0000_2000, 0x7f00_0000_0001];
        encode(&frames, &mut stack);
        assert!(stack[2..].iter().all(|w| is_python_word(*w)));
        let (native, py) = decode(&stack);
        assert_eq!(native, vec![0x55_0000_2000, 0x7f00_0000_0001]);
        assert_eq!(py, frames);
    }

    fn native(name: &str) -> Frame {
        Frame {
            index: 0,
            addr: 1,
            module: None,
            module_offset: 0,
            function: Some(name.into()),
            function_offset: 0,
            file: None,
            line: None,
            inlined_into: Vec::new(),
            python: false,
        }
    }

    #[test]
    fn merge_replaces_eval_frames_by_groups() {
        let natives = vec![
            native("read"),
            native("_PyEval_EvalFrameDefault"),
            native("PyObject_Call"),
            native("_PyEval_EvalFrameDefault"),
            native("main"),
        ];
        let raw = [
            PyFrame {
                entry: false,
                ..Default::default()
            },
            PyFrame {
                entry: true,
                ..Default::default()
            },
            PyFrame {
                entry: true,
                ..Default::default()
            },
        ];
        let pys: Vec<Frame> = ["inner", "outer", "module"]
            .iter()
            .map(|n| Frame {
                python: true,
                ..native(n)
            })
            .collect();
        let mut natives = natives;
        // An evaluation frame whose innermost code is inlined into it.
        natives[3] = Frame {
            inlined_into: vec![crate::backtrace::InlinedCall {
                function: Some("_PyEval_EvalFrameDefault".into()),
                file: None,
                line: None,
            }],
            ..native("do_call_core")
        };
        let merged = merge(natives, pys, &raw);
        let names: Vec<_> = merged
            .iter()
            .map(|f| f.function.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            ["read", "inner", "outer", "PyObject_Call", "module", "main"]
        );
        assert_eq!(merged[5].index, 5);
    }

    #[test]
    fn merge_appends_groups_a_short_stack_has_no_room_for() {
        let raw = [PyFrame {
            entry: true,
            ..Default::default()
        }];
        let pys = vec![Frame {
            python: true,
            ..native("f")
        }];
        let merged = merge(vec![native("read")], pys, &raw);
        assert_eq!(merged.len(), 2);
        assert!(merged[1].python);
    }

    /// A code object laid out as 3.11 has it, in this process's memory,
    /// with its name, file and line table.
    struct FakeCode {
        code: Vec<u64>,
        _name: Vec<u64>,
        _file: Vec<u64>,
        _table: Vec<u64>,
    }

    fn ascii(s: &str) -> Vec<u64> {
        // PyASCIIObject (48 bytes in 3.11) then the characters.
        let mut v = vec![0u64; 6 + s.len() / 8 + 1];
        v[0] = 1;
        v[2] = s.len() as u64;
        v[4] = (1 << 2) | (1 << 5) | (1 << 6);
        // SAFETY: writing bytes inside the vector's allocation.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8) };
        bytes[48..48 + s.len()].copy_from_slice(s.as_bytes());
        v
    }

    fn fake_code(code_type: u64) -> FakeCode {
        let name = ascii("helper");
        let file = ascii("/srv/app.py");
        // bytes object: ob_size at 16, data at 32; one short-form entry
        // of 4 code units, line = first line.
        let mut table = vec![0u64; 5];
        table[0] = 1;
        table[2] = 2;
        table[4] = u64::from_le_bytes([0x80 | 3, 0, 0, 0, 0, 0, 0, 0]);
        let l = &py::V3_11;
        let mut code = vec![0u64; 32];
        code[0] = 1;
        code[1] = code_type;
        code[(l.co_filename / 8) as usize] = file.as_ptr() as u64;
        code[(l.co_name / 8) as usize] = name.as_ptr() as u64;
        code[(l.co_firstlineno / 8) as usize] = 42;
        code[(l.co_linetable / 8) as usize] = table.as_ptr() as u64;
        FakeCode {
            code,
            _name: name,
            _file: file,
            _table: table,
        }
    }

    #[test]
    fn a_code_object_resolves_and_one_that_changed_since_shows_as_freed() {
        let me = std::process::id() as i32;
        let code_type = 0x1234_5678_9ab0;
        let interp = Interpreter {
            layout: &py::V3_11,
            runtime: 0,
            code_type,
        };
        let mut fake = fake_code(code_type);
        let addr = fake.code.as_ptr() as u64;
        let fields = py::code_fields(&mut Remote::new(me), &py::V3_11, addr, code_type)
            .expect("fields of the fake code object");
        let frame = PyFrame {
            code: addr,
            lasti: 2,
            check: fields.check,
            entry: true,
            line: 0,
        };
        let got = PythonResolver::new().resolve(me, Some(&interp), None, &[frame]);
        assert_eq!(got[0].function.as_deref(), Some("helper"));
        assert_eq!(got[0].file.as_deref(), Some("/srv/app.py"));
        assert_eq!(got[0].line, Some(42));
        assert!(got[0].python);
        // Another code object at the same address: the check differs.
        let other = PyFrame {
            check: frame.check ^ 1,
            ..frame
        };
        let got = PythonResolver::new().resolve(me, Some(&interp), None, &[other]);
        assert_eq!(got[0].function.as_deref(), Some(FREED));
        assert_eq!((got[0].file.as_deref(), got[0].line), (None, None));
        // Freed: the allocator's list pointer where the count was.
        fake.code[0] = 0x7f00_0000_1000;
        let got = PythonResolver::new().resolve(me, Some(&interp), None, &[frame]);
        assert_eq!(got[0].function.as_deref(), Some(FREED));
        // Of a different type.
        fake.code[0] = 1;
        fake.code[1] = code_type + 8;
        let got = PythonResolver::new().resolve(me, Some(&interp), None, &[frame]);
        assert_eq!(got[0].function.as_deref(), Some(FREED));
    }

    #[test]
    fn relative_script_names_become_absolute_as_39_makes_them() {
        let d = Path::new("/srv/app");
        assert_eq!(absolute_script_path("sub/x.py", d), "/srv/app/sub/x.py");
        assert_eq!(absolute_script_path("./sub/../x.py", d), "/srv/app/x.py");
        assert_eq!(absolute_script_path("/abs/y.py", d), "/abs/y.py");
        assert_eq!(absolute_script_path("<string>", d), "<string>");
        assert_eq!(
            absolute_script_path("<frozen importlib._bootstrap>", d),
            "<frozen importlib._bootstrap>"
        );
    }

    #[test]
    fn eval_names() {
        assert!(is_eval_function("_PyEval_EvalFrameDefault"));
        assert!(is_eval_function("_PyEval_EvalFrameDefault.cold"));
        assert!(!is_eval_function("_PyEval_Vector"));
        assert!(!is_eval_function("_PyEval_EvalFrame"));
    }
}
