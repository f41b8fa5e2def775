//! `handles <pid>...`: read, filter, render, and pick the exit code.

use std::io::{self, Write};

use handles_model::ObjType;
use handles_supervisor::inspect::mappings;
use handles_supervisor::inspect::{
    resolve_tgid, HandleInfo, InspectError, Inspector, Options, Snapshot, Source,
};

use crate::args::ShowArgs;
use crate::exit;
use crate::filter::TypeFilter;
use crate::render;

fn error_code(e: &InspectError) -> u8 {
    match e {
        InspectError::NoSuchProcess(_) => exit::NO_SUCH_PROCESS,
        InspectError::PermissionDenied(_) => exit::PERMISSION,
        InspectError::Io { .. } => exit::IO,
    }
}

/// Parses `0x1f`, `1f` is not accepted: hex needs its prefix, as in the tables.
fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What a selection by `--handle`/`--koid` asks for.
enum Lookup {
    Handle(u32),
    Koid(u64),
}

pub fn run(a: &ShowArgs) -> u8 {
    let filter = match TypeFilter::from_args(a) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("handles: {e}");
            return exit::USAGE;
        }
    };
    let lookup = if let Some(v) = &a.handle {
        match parse_number(v).and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(Lookup::Handle(n)),
            None => {
                eprintln!("handles: '{v}' is not a handle value (expected 0x followed by hex digits, or a decimal number)");
                return exit::USAGE;
            }
        }
    } else if let Some(k) = &a.koid {
        match parse_number(k) {
            Some(n) => Some(Lookup::Koid(n)),
            None => {
                eprintln!("handles: '{k}' is not a koid (expected a number)");
                return exit::USAGE;
            }
        }
    } else {
        None
    };

    let mut pids = Vec::new();
    for p in &a.pids {
        match p.trim().parse::<i32>() {
            Ok(n) if n > 0 => pids.push(n),
            _ => {
                eprintln!("handles: '{p}' is not a process id");
                return exit::USAGE;
            }
        }
    }

    let mut code = exit::OK;
    let fail = |c: u8, code: &mut u8| {
        if *code == exit::OK {
            *code = c;
        }
    };
    // Threads resolve to their process; a pid that cannot be resolved is
    // reported by the read below with the same error.
    let mut targets = Vec::new();
    for &pid in &pids {
        match resolve_tgid(pid) {
            Ok((tgid, true)) => {
                eprintln!("handles: {pid} is a thread of process {tgid}; showing process {tgid}");
                targets.push(tgid);
            }
            _ => targets.push(pid),
        }
    }

    let long = a.long || a.json || lookup.is_some();
    let mut inspector = Inspector::new(Options { long, peers: long }).with_stacks(a.stacks);
    let results = inspector.read_many(&targets);

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut json_procs = Vec::new();
    let mut json_errors = Vec::new();
    let multi = targets.len() > 1;
    let mut found_any = false;
    for (i, r) in results.iter().enumerate() {
        let snap: &Snapshot = match r {
            Ok(s) => s,
            Err(e) => {
                let _ = out.flush();
                eprintln!("handles: {e}");
                if a.json {
                    json_errors.push(render::json::ErrorOut {
                        pid: targets[i],
                        error: e.to_string(),
                    });
                }
                fail(error_code(e), &mut code);
                continue;
            }
        };
        let rows: Vec<&HandleInfo> = snap
            .handles
            .iter()
            .filter(|h| filter.shows(h.obj_type()))
            .filter(|h| match lookup {
                Some(Lookup::Handle(v)) => h.handle == v,
                Some(Lookup::Koid(k)) => h.koid == k,
                None => true,
            })
            .collect();
        // --mappings: the objects held only through mappings, filtered by
        // type like the rows.
        let mapped = if a.mappings {
            match mappings::read(snap) {
                Ok(m) => Some(
                    m.into_iter()
                        .filter(|m| {
                            filter.shows(ObjType::from_name(m.ty).unwrap_or(ObjType::Unknown))
                        })
                        .collect::<Vec<_>>(),
                ),
                // Its table was read a moment ago: gone now, it exited
                // while being read, as `handles PID` reports that.
                Err(InspectError::NoSuchProcess(pid)) => {
                    let _ = out.flush();
                    eprintln!("handles: process {pid} exited before its mappings were read");
                    fail(exit::EXITED, &mut code);
                    None
                }
                Err(e) => {
                    let _ = out.flush();
                    eprintln!("handles: {e}");
                    fail(error_code(&e), &mut code);
                    None
                }
            }
        } else {
            None
        };
        let res = if a.json {
            let mut p = render::json::process(snap, rows);
            p.mappings = mapped;
            json_procs.push(p);
            Ok(())
        } else if lookup.is_some() {
            found_any |= !rows.is_empty();
            rows.iter().enumerate().try_for_each(|(n, h)| {
                if n > 0 || (multi && i > 0) {
                    writeln!(out)?;
                }
                if multi {
                    writeln!(out, "process {} ({})", snap.pid, snap.name)?;
                }
                writeln!(out, "{}", render::zxdb::detail(h))
            })
        } else {
            (|| {
                if multi && i > 0 {
                    writeln!(out)?;
                }
                if multi || a.long {
                    match snap.koid {
                        Some(k) => {
                            writeln!(out, "process {} ({}) koid {}", snap.pid, snap.name, k)?
                        }
                        None => writeln!(out, "process {} ({})", snap.pid, snap.name)?,
                    }
                }
                if a.zxdb {
                    writeln!(out, "{}", render::zxdb::list(&rows))?;
                } else if a.long {
                    render::table::long(&mut out, &rows)?;
                } else {
                    render::table::short(&mut out, &rows)?;
                }
                if let Some(m) = &mapped {
                    render::table::mapped(&mut out, &rows, m)?;
                }
                if a.stacks {
                    render::stacks::blocks(&mut out, &rows)?;
                }
                Ok(())
            })()
        };
        if let Err(e) = res {
            return write_failed(e);
        }
        if a.stacks && snap.source == Source::Proc {
            // Said once per process, on stderr: the table above stands.
            let _ = out.flush();
            match &snap.table_error {
                Some(e) => eprintln!(
                    "handles: process {}: no creation stacks (its published handle table is unreadable: {e})",
                    snap.pid
                ),
                None => eprintln!(
                    "handles: process {}: no creation stacks (not running under handles run or the LD_PRELOAD shim)",
                    snap.pid
                ),
            }
        }
        if !snap.complete {
            let _ = out.flush();
            eprintln!(
                "handles: process {} exited while its fd table was being read; the table above is partial",
                snap.pid
            );
            fail(exit::EXITED, &mut code);
        }
    }
    if a.json {
        let doc = render::json::document(json_procs, json_errors);
        let res = serde_json::to_writer_pretty(&mut out, &doc)
            .map_err(io::Error::from)
            .and_then(|_| writeln!(out));
        if let Err(e) = res {
            return write_failed(e);
        }
    }
    if let Err(e) = out.flush() {
        return write_failed(e);
    }
    if let Some(l) = &lookup {
        if !found_any && code == exit::OK && !a.json {
            match l {
                Lookup::Handle(v) => eprintln!("handles: no handle {v:#010x} in the table"),
                Lookup::Koid(k) => eprintln!("handles: no handle to koid {k} in the table"),
            }
            code = exit::NOT_FOUND;
        }
    }
    code
}

/// A closed stdout (`handles 1 | head`) is not an error, as with ripgrep.
fn write_failed(e: io::Error) -> u8 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return exit::OK;
    }
    eprintln!("handles: writing output: {e}");
    exit::IO
}
