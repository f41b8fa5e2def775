//! How each handle was made, from the table its shim or supervisor
//! publishes: the `how` code of its slot and the creation stack recorded
//! with it, symbolized against the process's modules (`handles --stacks`).
//!
//! Nothing here runs unless stacks are asked for: reading them costs one
//! snapshot of each open slot's stack record, and symbolizing costs the
//! process's maps and the DWARF of every module its stacks pass through.

use std::collections::HashMap;

use handles_model::python::PyFrame;
use handles_model::table::{how, CodeRegistry, PyStack, SlotDetail};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::backtrace::python::PythonResolver;
use crate::backtrace::{Frame, ModuleMap, Symbolizer};
use crate::json::FrameJson;

/// How a handle came to be, as its slot's `how` code says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Made by this syscall (`openat`, `pipe2`, `socket`, …).
    Syscall(&'static str),
    /// Open when the process image started (inherited across exec).
    Inherited,
    /// Received through SCM_RIGHTS.
    Received,
    /// Found open without its creation having been seen.
    Adopted,
    /// The writer did not say (or named a syscall this build does not know).
    Unknown,
}

impl How {
    pub fn from_code(code: u32) -> How {
        match how::base(code) {
            how::INHERITED => How::Inherited,
            how::RECEIVED => How::Received,
            how::ADOPTED => How::Adopted,
            c => how::syscall_nr(c)
                .and_then(|nr| handles_model::syscalls::lookup(i64::from(nr)))
                .map_or(How::Unknown, |d| How::Syscall(d.name)),
        }
    }

    /// The JSON `by`: the syscall's name, `inherited`, `scm_rights`,
    /// `found_open`, or None when unknown.
    pub fn name(self) -> Option<&'static str> {
        match self {
            How::Syscall(n) => Some(n),
            How::Inherited => Some("inherited"),
            How::Received => Some("scm_rights"),
            How::Adopted => Some("found_open"),
            How::Unknown => None,
        }
    }

    /// What a report says: `openat()`, `inherited`, `received through
    /// SCM_RIGHTS`, `found open`, or None when unknown.
    pub fn describe(self) -> Option<String> {
        match self {
            How::Syscall(n) => Some(format!("{n}()")),
            How::Inherited => Some("inherited".into()),
            How::Received => Some("received through SCM_RIGHTS".into()),
            How::Adopted => Some("found open".into()),
            How::Unknown => None,
        }
    }

    /// The heading of a creation stack: `created by openat() at`,
    /// `received through SCM_RIGHTS at`, or `created at` when unknown.
    pub fn heading(self) -> String {
        match self {
            How::Syscall(n) => format!("created by {n}() at"),
            How::Inherited => "inherited, created at".into(),
            How::Received => "received through SCM_RIGHTS at".into(),
            How::Adopted => "found open, created at".into(),
            How::Unknown => "created at".into(),
        }
    }
}

/// How a handle was made and where.
#[derive(Clone, Debug)]
pub struct Creation {
    pub how: How,
    /// The recorded stack: return addresses, innermost first.
    pub pcs: Vec<u64>,
    /// The stack symbolized (filled by the inspector once every process is
    /// read; one frame per address, the shim's own frames left out; Python
    /// frames in place of the interpreter's evaluation frames).
    pub frames: Vec<Frame>,
    /// The Python frames recorded with the stack (CPython programs).
    pub py: Vec<PyFrame>,
    /// Their file and function as the table's code registry had them when
    /// read, for code objects freed by the time they are resolved.
    pub py_names: Vec<Option<(String, String)>>,
}

impl Creation {
    /// The creation of an open slot, if it recorded a stack.
    pub(crate) fn from_detail(
        d: &SlotDetail,
        py: &PyStack,
        codes: &CodeRegistry<'_>,
    ) -> Option<Creation> {
        let pcs = d.created.frames();
        (!pcs.is_empty()).then(|| Creation {
            how: How::from_code(d.value.how),
            pcs: pcs.to_vec(),
            frames: Vec::new(),
            py: py.frames().to_vec(),
            py_names: py
                .frames()
                .iter()
                .map(|f| {
                    codes.get(f.code, f.check).map(|r| {
                        (
                            String::from_utf8_lossy(r.file()).into_owned(),
                            String::from_utf8_lossy(r.name()).into_owned(),
                        )
                    })
                })
                .collect(),
        })
    }
}

impl Serialize for Creation {
    /// `{"by": "openat", "frames": [FRAME, …]}` (docs/json.md).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_map(Some(2))?;
        st.serialize_entry("by", &self.how.name())?;
        st.serialize_entry(
            "frames",
            &self.frames.iter().map(FrameJson).collect::<Vec<_>>(),
        )?;
        st.end()
    }
}

/// Whether a frame is the shim's own (its wrappers): a stack starts at the
/// program's call, as the supervisor's reports do.
fn is_shim_frame(f: &Frame) -> bool {
    f.module_name()
        .is_some_and(|m| m.starts_with("libhandles_shim"))
}

/// Symbolizes the creation stacks of one process's handles. Every address
/// is a return address, looked up at `pc - 1` (inside its call
/// instruction, so the line is the call's); the supervisor's frame 0, the
/// address after a `syscall` instruction, is looked up inside that
/// instruction the same way. Each distinct address is symbolized once.
pub(crate) fn symbolize<'h>(
    symbolizer: &mut Symbolizer,
    python: &mut PythonResolver,
    pid: i32,
    creations: impl Iterator<Item = &'h mut Creation>,
) {
    let maps = ModuleMap::read(pid).ok();
    let mut seen: HashMap<u64, Frame> = HashMap::new();
    for c in creations {
        let mut frames = Vec::with_capacity(c.pcs.len());
        for &pc in &c.pcs {
            let f = seen.entry(pc).or_insert_with(|| match &maps {
                Some(m) => symbolizer
                    .symbolize(m, &[pc], false)
                    .pop()
                    .unwrap_or_else(|| Frame::bare(0, pc)),
                None => Frame::bare(0, pc),
            });
            if !is_shim_frame(f) {
                frames.push(f.clone());
            }
        }
        if !c.py.is_empty() {
            for (f, names) in c.py.iter().zip(&c.py_names) {
                if let Some((file, function)) = names {
                    python.remember(pid, f, file, function);
                }
            }
            let interp = maps.as_ref().and_then(|m| python.interpreter(m));
            let resolved = python.resolve(pid, interp.as_ref(), None, &c.py);
            frames = crate::backtrace::python::merge(frames, resolved, &c.py);
        }
        for (i, f) in frames.iter_mut().enumerate() {
            f.index = i;
        }
        c.frames = frames;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_codes_name_the_call() {
        let openat = handles_model::syscalls::TABLE
            .iter()
            .find(|d| d.name == "openat")
            .map(|d| d.nr)
            .expect("openat is in the table");
        let code = how::syscall(u32::try_from(openat).expect("small"));
        assert_eq!(How::from_code(code), How::Syscall("openat"));
        assert_eq!(How::from_code(code).heading(), "created by openat() at");
        assert_eq!(How::from_code(code).name(), Some("openat"));
        assert_eq!(How::from_code(how::INHERITED), How::Inherited);
        assert_eq!(
            How::from_code(how::RECEIVED).describe().as_deref(),
            Some("received through SCM_RIGHTS")
        );
        assert_eq!(How::from_code(how::ADOPTED).name(), Some("found_open"));
        assert_eq!(How::from_code(how::UNKNOWN), How::Unknown);
        assert_eq!(How::from_code(how::UNKNOWN).heading(), "created at");
        // A hostile or newer writer's codes are unknown, never a panic.
        assert_eq!(How::from_code(u32::MAX), How::Unknown);
        assert_eq!(How::from_code(how::syscall(60_000)), How::Unknown);
    }

    #[test]
    fn json_shape() {
        let c = Creation {
            how: How::Syscall("pipe2"),
            pcs: vec![0x1000],
            frames: vec![Frame {
                function: Some("make_pipe".into()),
                file: Some("/src/x.c".into()),
                line: Some(7),
                module: Some("/bin/x".into()),
                module_offset: 0x11c9,
                ..Frame::bare(0, 0x1000)
            }],
            py: Vec::new(),
            py_names: Vec::new(),
        };
        let v = serde_json::to_value(&c).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({
                "by": "pipe2",
                "frames": [{
                    "kind": "native", "address": "0x1000", "function": "make_pipe",
                    "file": "/src/x.c", "line": 7, "module": "/bin/x", "offset": "0x11c9",
                    "inlined_into": []
                }]
            })
        );
        let u = Creation {
            how: How::Unknown,
            pcs: vec![5],
            frames: vec![Frame::bare(0, 5)],
            py: Vec::new(),
            py_names: Vec::new(),
        };
        let v = serde_json::to_value(&u).expect("serializes");
        assert_eq!(v["by"], serde_json::Value::Null);
        assert_eq!(v["frames"][0]["module"], serde_json::Value::Null);
    }

    #[test]
    fn unreadable_maps_give_bare_frames_and_shim_frames_are_dropped() {
        let mut c = Creation {
            how: How::Unknown,
            pcs: vec![0x10, 0x20, 0x10],
            frames: Vec::new(),
            py: Vec::new(),
            py_names: Vec::new(),
        };
        // No such process: the maps cannot be read.
        symbolize(
            &mut Symbolizer::new(),
            &mut PythonResolver::new(),
            i32::MAX,
            std::iter::once(&mut c),
        );
        let got: Vec<(usize, u64)> = c.frames.iter().map(|f| (f.index, f.addr)).collect();
        assert_eq!(got, vec![(0, 0x10), (1, 0x20), (2, 0x10)]);
        let shim = Frame {
            module: Some("/x/libhandles_shim.so".into()),
            ..Frame::bare(0, 1)
        };
        assert!(is_shim_frame(&shim));
        assert!(!is_shim_frame(&Frame::bare(0, 1)));
    }
}
