//! `handles --all`: one row per process of the machine.

use std::collections::BTreeMap;
use std::io::{self, Write};

use handles_model::ObjType;
use handles_supervisor::inspect::machine::{self, Access, ProcCounts, TableCounts};
use handles_supervisor::inspect::Source;
use serde::Serialize;

use crate::args::ShowArgs;
use crate::exit;
use crate::filter::TypeFilter;

pub const SCHEMA: &str = "handles.machine.v1";

/// A row with the type filter applied.
#[derive(Serialize)]
pub struct Row<'a> {
    pub pid: i32,
    pub name: &'a str,
    pub access: Access,
    pub source: Source,
    pub complete: bool,
    /// Handles of the selected types (all types without a filter); null
    /// when unknown (a process we may not read, when the kernel does not
    /// tell its count or a type filter is on).
    pub handle_count: Option<usize>,
    pub types: BTreeMap<&'static str, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableCounts>,
}

#[derive(Serialize)]
struct Totals {
    processes: usize,
    handles: usize,
    unreadable: usize,
}

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    processes: Vec<Row<'a>>,
    totals: Totals,
}

/// Applies the filter and sorts: most handles first, then by pid; the
/// processes that could not be read last.
pub fn rows<'a>(all: &'a [ProcCounts], filter: &TypeFilter, filtered: bool) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = all
        .iter()
        .map(|p| {
            let types: BTreeMap<&'static str, usize> = p
                .types
                .iter()
                .filter(|(t, _)| filter.shows(ObjType::from_name(t).unwrap_or(ObjType::Unknown)))
                .map(|(t, n)| (*t, *n))
                .collect();
            let handle_count = match p.access {
                Access::Ok => Some(types.values().sum()),
                // Only the total is known, not which types.
                Access::PermissionDenied => {
                    (!filtered && p.handle_count > 0).then_some(p.handle_count)
                }
            };
            Row {
                pid: p.pid,
                name: &p.name,
                access: p.access,
                source: p.source,
                complete: p.complete,
                handle_count,
                types,
                table: p.table,
            }
        })
        // With a filter, a process holding none of those types is not a
        // row of the answer; one we could not read might be.
        .filter(|r| !filtered || r.handle_count > Some(0) || r.access != Access::Ok)
        .collect();
    rows.sort_by(|a, b| {
        (a.access != Access::Ok)
            .cmp(&(b.access != Access::Ok))
            .then(b.handle_count.cmp(&a.handle_count))
            .then(a.pid.cmp(&b.pid))
    });
    rows
}

/// `file 120, channel 100, pipe 40`: the largest first.
pub fn type_list(types: &BTreeMap<&'static str, usize>) -> String {
    let mut v: Vec<(&str, usize)> = types.iter().map(|(t, n)| (*t, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(a: &ShowArgs) -> u8 {
    let filter = match TypeFilter::from_args(a) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("handles: {e}");
            return exit::USAGE;
        }
    };
    let filtered =
        a.task || a.vmo || a.port || a.channel || a.event || a.socket || !a.types.is_empty();
    let all = match machine::scan(None) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("handles: listing /proc: {e}");
            return exit::IO;
        }
    };
    let rows = rows(&all, &filter, filtered);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let res = if a.json {
        let totals = Totals {
            processes: rows.len(),
            handles: readable_handles(&rows),
            unreadable: rows.iter().filter(|r| r.access != Access::Ok).count(),
        };
        let doc = Document {
            schema: SCHEMA,
            processes: rows,
            totals,
        };
        serde_json::to_writer_pretty(&mut out, &doc)
            .map_err(io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        plain(&mut out, &rows)
    };
    match res.and_then(|_| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("handles: writing output: {e}");
            exit::IO
        }
    }
}

fn plain(out: &mut impl Write, rows: &[Row<'_>]) -> io::Result<()> {
    let pw = rows
        .iter()
        .map(|r| r.pid.to_string().len())
        .max()
        .unwrap_or(0)
        .max(3);
    let nw = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 16);
    writeln!(
        out,
        "{:>pw$} {:<nw$} {:>7}  by type",
        "pid", "name", "handles"
    )?;
    for r in rows {
        let name: String = r.name.chars().take(nw).collect();
        match r.access {
            Access::PermissionDenied => {
                writeln!(
                    out,
                    "{:>pw$} {:<nw$} {:>7}  (permission denied)",
                    r.pid, name, "-"
                )?;
                continue;
            }
            Access::Ok => {}
        }
        write!(
            out,
            "{:>pw$} {:<nw$} {:>7}  {}",
            r.pid,
            name,
            r.handle_count.unwrap_or(0),
            type_list(&r.types)
        )?;
        if let Some(t) = &r.table {
            let who = if r.source == Source::Supervisor {
                "supervisor"
            } else {
                "shim"
            };
            write!(
                out,
                "  [{who}: {} created, {} quarantined]",
                t.created, t.quarantined
            )?;
        }
        if !r.complete {
            write!(out, "  (exited while read)")?;
        }
        writeln!(out)?;
    }
    let readable = rows.iter().filter(|r| r.access == Access::Ok).count();
    let unreadable = rows.len() - readable;
    let handles = readable_handles(rows);
    write!(
        out,
        "{}, {}",
        counted(readable, "process", "processes"),
        counted(handles, "handle", "handles")
    )?;
    if unreadable > 0 {
        write!(
            out,
            "; {} not readable",
            counted(unreadable, "process", "processes")
        )?;
    }
    writeln!(out)
}

/// `1 process`, `2 processes`.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Handles of the processes that could be read (the totals' handles).
fn readable_handles(rows: &[Row<'_>]) -> usize {
    rows.iter()
        .filter(|r| r.access == Access::Ok)
        .filter_map(|r| r.handle_count)
        .sum()
}
