//! `handles symbolize PID`: the shim's symbolizer when no supervisor is
//! there to write its reports (`handles run --no-ptrace`).
//!
//! The shim records stacks as return addresses and has no symbol or line
//! tables of its own (reading DWARF inside a libc wrapper would allocate
//! and open files). When it writes a report it starts this command with
//! the stacks on stdin, hex addresses one per line and an empty line after
//! each stack, and prints what comes back in their place: the same frames,
//! with functions, files and lines, as the supervisor's reports show them.
//! A stack's Python frames, if any, follow its addresses as lines
//! `py ENTRY LINE FILE\tFUNCTION` (ENTRY 1 on the last frame an
//! evaluation-loop call runs), named by the shim from its code registry;
//! they take the place of the interpreter's evaluation frames, as in the
//! supervisor's reports. Output: one line per frame (`#1 0x… in f at
//! file.c:12 (prog+0x11e1)`, `#4 app.py:3 in main (Python)`) and an empty
//! line after each stack.

use std::io::{BufRead, Write};

use handles_model::python::PyFrame;
use handles_supervisor::backtrace::{python, Frame, ModuleMap, Symbolizer};

use crate::exit;

pub fn run(pid: i32) -> u8 {
    let maps = match ModuleMap::read(pid) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("handles: symbolize: process {pid}: {e}");
            return exit::NO_SUCH_PROCESS;
        }
    };
    let mut symbolizer = Symbolizer::new();
    // CPython 3.8's relative script names, made absolute as the
    // supervisor's reports make them (python::absolute_script_path).
    let mut script_dir: Option<std::path::PathBuf> = None;
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut stack: Vec<u64> = Vec::new();
    let mut py: Vec<(Frame, PyFrame)> = Vec::new();
    let mut flush = |stack: &mut Vec<u64>,
                     py: &mut Vec<(Frame, PyFrame)>,
                     out: &mut dyn Write|
     -> std::io::Result<()> {
        // Every address is a return address (the shim's unwinder reports
        // those): looked up inside the call.
        let native = symbolizer.symbolize(&maps, stack, false);
        let (frames, groups): (Vec<Frame>, Vec<PyFrame>) = py.drain(..).unzip();
        for mut frame in python::merge(native, frames, &groups) {
            if let Some(file) = frame.file.as_deref().filter(|_| frame.python) {
                let dir = match &script_dir {
                    Some(d) if d.join(file).is_file() => Some(d.clone()),
                    _ => python::script_dir(pid, file),
                };
                if let Some(d) = dir {
                    frame.file = Some(python::absolute_script_path(file, &d));
                    script_dir = Some(d);
                }
            }
            writeln!(out, "{frame}")?;
        }
        writeln!(out)?;
        stack.clear();
        Ok(())
    };
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            if flush(&mut stack, &mut py, &mut out).is_err() {
                return exit::IO;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("py ") {
            if let Some(f) = python_line(rest) {
                py.push(f);
            }
            continue;
        }
        let hex = line.trim_start_matches("0x");
        if let Ok(a) = u64::from_str_radix(hex, 16) {
            stack.push(a);
        }
    }
    if !stack.is_empty() && flush(&mut stack, &mut py, &mut out).is_err() {
        return exit::IO;
    }
    if out.flush().is_err() {
        return exit::IO;
    }
    exit::OK
}

/// `ENTRY LINE FILE\tFUNCTION` (LINE 0: unknown; no tab: a freed code
/// object, FUNCTION alone).
fn python_line(rest: &str) -> Option<(Frame, PyFrame)> {
    let mut it = rest.splitn(3, ' ');
    let entry = it.next()? == "1";
    let line: u32 = it.next()?.parse().ok()?;
    let named = it.next()?;
    let (file, function) = match named.split_once('\t') {
        Some((file, function)) => (Some(file.to_string()), function.to_string()),
        // The whole rest, spaces and all (`<freed code object>`).
        None => (None, named.to_string()),
    };
    let frame = Frame {
        index: 0,
        addr: 0,
        module: None,
        module_offset: 0,
        function: Some(function),
        function_offset: 0,
        file,
        line: (line != 0).then_some(line),
        inlined_into: Vec::new(),
        python: true,
    };
    let raw = PyFrame {
        entry,
        ..Default::default()
    };
    Some((frame, raw))
}

#[cfg(test)]
mod tests {
    use super::python_line;

    #[test]
    fn a_freed_code_object_keeps_its_whole_name() {
        let (f, raw) = python_line("0 0 <freed code object>").expect("parsed");
        assert_eq!(f.function.as_deref(), Some("<freed code object>"));
        assert_eq!((f.file, f.line, raw.entry), (None, None, false));
        let (f, raw) = python_line("1 12 /srv/a b.py\thelper").expect("parsed");
        assert_eq!(f.file.as_deref(), Some("/srv/a b.py"));
        assert_eq!(
            (f.function.as_deref(), f.line, raw.entry),
            (Some("helper"), Some(12), true)
        );
    }
}
