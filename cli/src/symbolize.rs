//! `handles symbolize PID`: the shim's symbolizer when no supervisor is
//! there to write its reports (`handles run --no-ptrace`).
//!
//! The shim records stacks as return addresses and has no symbol or line
//! tables of its own (reading DWARF inside a libc wrapper would allocate
//! and open files). When it writes a report it starts this command with
//! the stacks on stdin, hex addresses one per line and an empty line after
//! each stack, and prints what comes back in their place: the same frames,
//! with functions, files and lines, as the supervisor's reports show them.
//! Output: one line per frame (`#1 0x… in f at file.c:12 (prog+0x11e1)`)
//! and an empty line after each stack.

use std::io::{BufRead, Write};

use handles_supervisor::backtrace::{ModuleMap, Symbolizer};

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
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut stack: Vec<u64> = Vec::new();
    let mut flush = |stack: &mut Vec<u64>, out: &mut dyn Write| -> std::io::Result<()> {
        // Every address is a return address (the shim's unwinder reports
        // those): looked up inside the call.
        for frame in symbolizer.symbolize(&maps, stack, false) {
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
            if flush(&mut stack, &mut out).is_err() {
                return exit::IO;
            }
            continue;
        }
        let hex = line.trim_start_matches("0x");
        if let Ok(a) = u64::from_str_radix(hex, 16) {
            stack.push(a);
        }
    }
    if !stack.is_empty() && flush(&mut stack, &mut out).is_err() {
        return exit::IO;
    }
    if out.flush().is_err() {
        return exit::IO;
    }
    exit::OK
}
