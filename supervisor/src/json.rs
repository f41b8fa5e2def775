//! The two objects every JSON document of `handles` shares: a stack frame
//! and a handle. `--report` (handles.run.v3), `handles PID --json`
//! (handles.table.v2), `handles graph --json` (handles.graph.v2) and the
//! SARIF writer's property bags all write them through the functions here
//! and nowhere else, so a consumer parses one shape wherever it finds
//! `frames`, `stack` or `handle` (docs/report.md, docs/json.md).
//!
//! - [`frame`] / [`FrameJson`] / [`serialize_frames`]: one frame, native
//!   (`"kind": "native"`: address, module, offset, function, file, line,
//!   inlined_into) or Python (`"kind": "python"`: file, line, function).
//! - [`Handle`] and [`handle_fields`]: one handle (value, fd, generation,
//!   state, type, koid, dev, rights, description); a table row is a handle
//!   with the long view's fields after these.

use std::borrow::Cow;

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

use crate::backtrace::Frame;

/// Writes one frame. Every key of its kind is present, null when unknown,
/// so that a consumer never has to tell "absent" from "unknown".
/// Addresses are hex strings: 64-bit values that JSON numbers cannot carry
/// exactly everywhere, and written as the text reports write them.
pub fn frame<S: Serializer>(f: &Frame, s: S) -> Result<S::Ok, S::Error> {
    if f.python {
        // The code object's address (`f.addr`) is left out: it names
        // nothing a reader can look up, and is reused once freed.
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("kind", "python")?;
        m.serialize_entry("file", &f.file)?;
        m.serialize_entry("line", &f.line)?;
        m.serialize_entry("function", &f.function)?;
        return m.end();
    }
    let mut m = s.serialize_map(Some(8))?;
    m.serialize_entry("kind", "native")?;
    m.serialize_entry("address", &hex(f.addr))?;
    m.serialize_entry("module", &f.module)?;
    m.serialize_entry("offset", &hex(f.module_offset))?;
    m.serialize_entry("function", &f.function)?;
    m.serialize_entry("file", &f.file)?;
    m.serialize_entry("line", &f.line)?;
    m.serialize_entry("inlined_into", &Inlined(f))?;
    m.end()
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The functions a native frame's code was inlined into, innermost first,
/// each with the call site that inlined the one before it.
struct Inlined<'a>(&'a Frame);

impl Serialize for Inlined<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let calls = &self.0.inlined_into;
        let mut seq = s.serialize_seq(Some(calls.len()))?;
        for c in calls {
            seq.serialize_element(&InlinedCall(c))?;
        }
        seq.end()
    }
}

struct InlinedCall<'a>(&'a crate::backtrace::InlinedCall);

impl Serialize for InlinedCall<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("function", &self.0.function)?;
        m.serialize_entry("file", &self.0.file)?;
        m.serialize_entry("line", &self.0.line)?;
        m.end()
    }
}

/// A frame as a `Serialize` value, for documents built with `json!` or
/// derived structs.
#[derive(Clone, Copy)]
pub struct FrameJson<'a>(pub &'a Frame);

impl Serialize for FrameJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        frame(self.0, s)
    }
}

/// A stack, innermost frame first; usable as
/// `#[serde(serialize_with = "handles_supervisor::json::serialize_frames")]`.
pub fn serialize_frames<S: Serializer>(frames: &[Frame], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(frames.iter().map(FrameJson))
}

/// A stack as a `serde_json::Value` (the SARIF writer's documents).
pub fn frames_value(frames: &[Frame]) -> serde_json::Value {
    serde_json::Value::Array(frames.iter().map(frame_value).collect())
}

/// One frame as a `serde_json::Value`.
pub fn frame_value(f: &Frame) -> serde_json::Value {
    // Serializing into a Value fails only for maps with non-string keys.
    serde_json::to_value(FrameJson(f)).unwrap_or(serde_json::Value::Null)
}

/// Where a handle stands when it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleState {
    /// Open in the process (a table row, a leak, a wrong-object call).
    Open,
    /// Closed by the program; its number is quarantined or reused.
    Closed,
    /// A number that held no handle the job knows of.
    NotOpen,
}

impl HandleState {
    pub fn name(self) -> &'static str {
        match self {
            HandleState::Open => "open",
            HandleState::Closed => "closed",
            HandleState::NotOpen => "not-open",
        }
    }
}

/// One handle as every JSON document shows it. What the writer does not
/// know is None and written as null: a closed handle's rights, the value
/// of a number that never held a handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle<'a> {
    /// The Zircon-style handle value (docs/handle-model.md).
    pub value: Option<u32>,
    pub fd: i32,
    /// How many handles this fd number held before this one.
    pub generation: Option<u32>,
    pub state: HandleState,
    /// The type name (`file`, `pipe`, `socket`, `vmo`, …).
    pub ty: Option<Cow<'a, str>>,
    pub koid: Option<u64>,
    /// `major:minor` of a file's device, or the number space of a koid
    /// that is not an inode of a device (docs/json.md).
    pub dev: Option<Cow<'a, str>>,
    /// Zircon rights bits.
    pub rights: Option<u32>,
    /// What the object is, in words: a path, `read end`, a socket's
    /// addresses (the long view's description).
    pub description: Option<Cow<'a, str>>,
}

impl<'a> Handle<'a> {
    /// A handle of which only the fd number is known.
    pub fn fd_only(fd: i32, state: HandleState) -> Handle<'a> {
        Handle {
            value: None,
            fd,
            generation: None,
            state,
            ty: None,
            koid: None,
            dev: None,
            rights: None,
            description: None,
        }
    }

    /// An owned copy, for reports kept until the job ends.
    pub fn into_owned(self) -> Handle<'static> {
        let own = |c: Option<Cow<'a, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        Handle {
            value: self.value,
            fd: self.fd,
            generation: self.generation,
            state: self.state,
            ty: own(self.ty),
            koid: self.koid,
            dev: own(self.dev),
            rights: self.rights,
            description: own(self.description),
        }
    }
}

/// Writes a handle's keys into a map being serialized: the whole of a
/// [`Handle`] object, and the first keys of a table row, which adds the
/// long view's fields after them.
pub fn handle_fields<M: SerializeMap>(m: &mut M, h: &Handle<'_>) -> Result<(), M::Error> {
    m.serialize_entry("value", &h.value)?;
    m.serialize_entry("fd", &h.fd)?;
    m.serialize_entry("generation", &h.generation)?;
    m.serialize_entry("state", h.state.name())?;
    m.serialize_entry("type", &h.ty)?;
    m.serialize_entry("koid", &h.koid)?;
    m.serialize_entry("dev", &h.dev)?;
    m.serialize_entry("rights", &h.rights)?;
    m.serialize_entry("description", &h.description)?;
    Ok(())
}

impl Serialize for Handle<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(9))?;
        handle_fields(&mut m, self)?;
        m.end()
    }
}

/// One handle as a `serde_json::Value` (the SARIF writer's documents).
pub fn handle_value(h: &Handle<'_>) -> serde_json::Value {
    serde_json::to_value(h).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtrace::InlinedCall as Call;
    use serde_json::json;

    fn native() -> Frame {
        Frame {
            index: 0,
            addr: 0x55e1_0d9c_20bd,
            module: Some("/tmp/t/server".into()),
            module_offset: 0x10bd,
            function: Some("use_after_close".into()),
            function_offset: 0x1d,
            file: Some("/tmp/t/uac.c".into()),
            line: Some(10),
            inlined_into: vec![Call {
                function: Some("main".into()),
                file: Some("/tmp/t/uac.c".into()),
                line: Some(20),
            }],
            python: false,
        }
    }

    #[test]
    fn native_frames_carry_every_key() {
        assert_eq!(
            frame_value(&native()),
            json!({
                "kind": "native", "address": "0x55e10d9c20bd", "module": "/tmp/t/server",
                "offset": "0x10bd", "function": "use_after_close", "file": "/tmp/t/uac.c",
                "line": 10,
                "inlined_into": [{"function": "main", "file": "/tmp/t/uac.c", "line": 20}]
            })
        );
        let bare = Frame {
            module: None,
            function: None,
            file: None,
            line: None,
            inlined_into: Vec::new(),
            ..native()
        };
        assert_eq!(
            frame_value(&bare),
            json!({
                "kind": "native", "address": "0x55e10d9c20bd", "module": null,
                "offset": "0x10bd", "function": null, "file": null, "line": null,
                "inlined_into": []
            })
        );
    }

    #[test]
    fn python_frames_name_the_code_and_nothing_else() {
        let py = Frame {
            addr: 0x7f00_1234_5678,
            module: None,
            module_offset: 0,
            function: Some("use_it".into()),
            file: Some("/srv/app/uac.py".into()),
            line: Some(16),
            inlined_into: Vec::new(),
            python: true,
            ..native()
        };
        assert_eq!(
            frame_value(&py),
            json!({"kind": "python", "file": "/srv/app/uac.py", "line": 16, "function": "use_it"})
        );
    }

    #[test]
    fn handles_write_unknowns_as_null() {
        let h = Handle {
            value: Some(0x15b8_d57b),
            generation: Some(1),
            ty: Some("file".into()),
            koid: Some(42),
            description: Some("/tmp/a".into()),
            ..Handle::fd_only(3, HandleState::Closed)
        };
        assert_eq!(
            handle_value(&h),
            json!({
                "value": 0x15b8_d57b_u32, "fd": 3, "generation": 1, "state": "closed",
                "type": "file", "koid": 42, "dev": null, "rights": null,
                "description": "/tmp/a"
            })
        );
        assert_eq!(
            handle_value(&Handle::fd_only(9, HandleState::NotOpen))["state"],
            "not-open"
        );
    }
}
