//! Remote unwinding and symbolization of a stopped thread's stack
//! (x86_64 Linux).
//!
//! The two halves are separate on purpose: the supervisor may record a stack
//! on every fd-creating syscall, so [`Unwinder::unwind`] is the cheap part
//! (addresses only, unwind tables cached per module file and rules per
//! address), and [`Symbolizer::symbolize`] runs only when a report is
//! written.
//!
//! ```no_run
//! use handles_supervisor::backtrace::{ModuleMap, StartRegs, Symbolizer, Unwinder};
//! # fn f(tid: i32, regs: libc::user_regs_struct) -> std::io::Result<()> {
//! let maps = ModuleMap::read(tid)?;
//! let mut unwinder = Unwinder::new();
//! let addrs = unwinder.unwind(tid, &maps, StartRegs::from(&regs), 64);
//! for frame in Symbolizer::new().symbolize(&maps, &addrs, true) {
//!     eprintln!("{frame}");
//! }
//! # Ok(()) }
//! ```
//!
//! Not handled: unwinding through signal frames (`__restore_rt`); CFI that
//! framehop cannot express, i.e. a CFA computed from a register other than
//! rsp/rbp or by a DWARF expression (ld.so's lazy-binding trampoline
//! `_dl_runtime_resolve_*`, PLT stubs): such a frame falls back to the frame
//! pointer, which skips its caller when the caller keeps no frame pointer
//! of its own; split DWARF (.dwo); MiniDebugInfo (.gnu_debugdata).
//! Stops at syscalls, which is what the supervisor unwinds from, are in
//! ordinary libc functions and are not affected.

mod elf;
mod maps;
pub(crate) mod memory;
pub mod python;
mod symbolize;
mod unwind;

use std::fmt;

pub use maps::{build_id_from_headers, Mapping, ModuleMap};
pub use symbolize::Symbolizer;
pub use unwind::{StartRegs, StopReason, Unwinder, Unwound};

/// Symbolizes a recorded stack of process `pid` (native return addresses,
/// with its Python frames as tagged words, `python::encode`) against the
/// modules `cached` lists, or its /proc maps read now when the caller
/// kept none (no frames when neither can be had): the shim's own frames
/// left out (its wrappers and
/// report path are not the program's), the Python frames merged in where
/// the interpreter called (resolved with `codes`, a shim's code registry,
/// when there is one), indexed from 0. `handles run`'s reports and
/// `handles attach`'s window both name stacks this way.
pub fn symbolize_recorded(
    symbolizer: &mut Symbolizer,
    python: &mut python::PythonResolver,
    cached: Option<&ModuleMap>,
    pid: i32,
    stack: &[u64],
    codes: Option<&handles_model::table::CodeRegistry<'_>>,
) -> Vec<Frame> {
    with_maps(cached, pid, |maps| {
        let (native, py_frames) = python::decode(stack);
        let mut frames = without_shim(symbolizer.symbolize(maps, &native, true));
        if !py_frames.is_empty() {
            let interp = python.interpreter(maps);
            let resolved = python.resolve(pid, interp.as_ref(), codes, &py_frames);
            frames = python::merge(frames, resolved, &py_frames);
        }
        for (i, f) in frames.iter_mut().enumerate() {
            f.index = i;
        }
        frames
    })
    .unwrap_or_default()
}

/// `f` of the maps given, or of process `pid`'s read now; None when they
/// cannot be read.
fn with_maps<T>(
    cached: Option<&ModuleMap>,
    pid: i32,
    f: impl FnOnce(&ModuleMap) -> T,
) -> Option<T> {
    match cached {
        Some(m) => Some(f(m)),
        None => ModuleMap::read(pid).ok().map(|m| f(&m)),
    }
}

/// The frames that are not the shim's own (its wrappers record from
/// inside themselves).
fn without_shim(frames: Vec<Frame>) -> Vec<Frame> {
    frames
        .into_iter()
        .filter(|f| {
            !f.module_name()
                .is_some_and(|m| m.starts_with("libhandles_shim"))
        })
        .collect()
}

/// The native frames of a recorded stack with their modules only (see
/// [`Symbolizer::modules_only`]), the shim's own dropped as in
/// [`symbolize_recorded`]; empty when the maps cannot be read. A rule
/// that matches these (it names no function or source file) matches the
/// fully symbolized stack too: the modules are the same.
pub fn modules_of_recorded(cached: Option<&ModuleMap>, pid: i32, stack: &[u64]) -> Vec<Frame> {
    with_maps(cached, pid, |maps| {
        without_shim(Symbolizer::modules_only(maps, &python::decode(stack).0))
    })
    .unwrap_or_default()
}

/// A function that the frame's code was inlined into, outermost last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinedCall {
    pub function: Option<String>,
    /// Where this function calls (inlines) the one before it in the list.
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// One symbolized stack frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Position in the stack, 0 for the innermost frame.
    pub index: usize,
    /// The instruction pointer (frame 0) or return address.
    pub addr: u64,
    /// Full path of the module, or `[vdso]`.
    pub module: Option<String>,
    /// `addr` in the module's own addresses (see [`Mapping::module_offset`]).
    pub module_offset: u64,
    /// Demangled; for inlined code, the innermost inlined function.
    pub function: Option<String>,
    /// `addr` minus the start of the enclosing function symbol (0 if none).
    pub function_offset: u64,
    pub file: Option<String>,
    /// For a return address, the line of the call.
    pub line: Option<u32>,
    /// The functions `function` was inlined into, innermost first.
    pub inlined_into: Vec<InlinedCall>,
    /// A Python frame (see [`python`]): `function`, `file` and `line` are
    /// the code object's, `addr` is the code object's address, no module.
    pub python: bool,
}

impl Frame {
    /// A frame that knows only its address so far.
    pub fn bare(index: usize, addr: u64) -> Frame {
        Frame {
            index,
            addr,
            module: None,
            module_offset: 0,
            function: None,
            function_offset: 0,
            file: None,
            line: None,
            inlined_into: Vec::new(),
            python: false,
        }
    }

    /// The module's file name without its directory.
    pub fn module_name(&self) -> Option<&str> {
        self.module
            .as_deref()
            .map(|m| m.rsplit_once('/').map_or(m, |(_, name)| name))
    }
}

impl fmt::Display for Frame {
    /// `#1 0x000055d1c2a4b1c9 in use_after_close at /path/fixture.c:42 (fixture+0x11c9)`,
    /// `#3 0x00007f… in __libc_start_call_main+0x7a (libc.so.6+0x271ca)`,
    /// `#4 0x… (unknown)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.python {
            // `#2 /srv/app/db.py:41 in Store.open (Python)`, as a Python
            // traceback names a frame; no address: a code object's says
            // nothing to the reader.
            write!(f, "#{} ", self.index)?;
            match (&self.file, self.line) {
                (Some(file), Some(line)) => write!(f, "{file}:{line} in ")?,
                (Some(file), None) => write!(f, "{file} in ")?,
                _ => {}
            }
            return write!(f, "{} (Python)", self.function.as_deref().unwrap_or("??"));
        }
        write!(f, "#{} {:#018x}", self.index, self.addr)?;
        if let Some(function) = &self.function {
            write!(f, " in {function}")?;
            match (&self.file, self.line) {
                (Some(file), line) => {
                    write!(f, " at {file}")?;
                    if let Some(line) = line {
                        write!(f, ":{line}")?;
                    }
                }
                (None, _) if self.function_offset != 0 => {
                    write!(f, "+{:#x}", self.function_offset)?
                }
                (None, _) => {}
            }
        } else if let (Some(file), Some(line)) = (&self.file, self.line) {
            write!(f, " at {file}:{line}")?;
        }
        for call in &self.inlined_into {
            write!(
                f,
                " [inlined into {}",
                call.function.as_deref().unwrap_or("??")
            )?;
            if let Some(file) = &call.file {
                write!(f, " at {file}")?;
                if let Some(line) = call.line {
                    write!(f, ":{line}")?;
                }
            }
            write!(f, "]")?;
        }
        match self.module_name() {
            Some(module) => write!(f, " ({module}+{:#x})", self.module_offset),
            None => write!(f, " (unknown)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            index: 1,
            addr: 0x55d1c2a4b1c9,
            module: Some("/tmp/fixture".into()),
            module_offset: 0x11c9,
            function: Some("use_after_close".into()),
            function_offset: 0x20,
            file: Some("/path/fixture.c".into()),
            line: Some(42),
            inlined_into: Vec::new(),
            python: false,
        }
    }

    #[test]
    fn display_with_debug_info() {
        assert_eq!(
            frame().to_string(),
            "#1 0x000055d1c2a4b1c9 in use_after_close at /path/fixture.c:42 (fixture+0x11c9)"
        );
    }

    #[test]
    fn display_with_symbols_only() {
        let f = Frame {
            index: 3,
            addr: 0x7f12345671ca,
            module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
            module_offset: 0x271ca,
            function: Some("__libc_start_call_main".into()),
            function_offset: 0x7a,
            file: None,
            line: None,
            ..frame()
        };
        assert_eq!(
            f.to_string(),
            "#3 0x00007f12345671ca in __libc_start_call_main+0x7a (libc.so.6+0x271ca)"
        );
    }

    #[test]
    fn display_module_only_and_unknown() {
        let f = Frame {
            function: None,
            file: None,
            line: None,
            ..frame()
        };
        assert_eq!(f.to_string(), "#1 0x000055d1c2a4b1c9 (fixture+0x11c9)");
        let f = Frame { module: None, ..f };
        assert_eq!(f.to_string(), "#1 0x000055d1c2a4b1c9 (unknown)");
    }

    #[test]
    fn display_inlined() {
        let f = Frame {
            inlined_into: vec![InlinedCall {
                function: Some("outer".into()),
                file: Some("/path/fixture.c".into()),
                line: Some(50),
            }],
            ..frame()
        };
        assert_eq!(
            f.to_string(),
            "#1 0x000055d1c2a4b1c9 in use_after_close at /path/fixture.c:42 \
             [inlined into outer at /path/fixture.c:50] (fixture+0x11c9)"
        );
    }

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            symbolize::demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(symbolize::demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(symbolize::demangle("read"), "read");
    }
}
