//! Fuchsia's `handles` table, and its long form.
//!
//! ```text
//!     handle   koid rkoid     rights type
//! 0xa8d44a0f: 29973       0x0000d0ef vmo
//! 2 handles
//! ```
//! koid and rkoid are right-aligned to the widest value shown; rkoid is
//! blank when 0.

use std::io::{self, Write};

use handles_supervisor::inspect::mappings::Mapped;
use handles_supervisor::inspect::HandleInfo;

fn width(values: impl Iterator<Item = u64>, title: &str) -> usize {
    values
        .map(|v| if v == 0 { 0 } else { v.to_string().len() })
        .max()
        .unwrap_or(0)
        .max(title.len())
}

fn rkoid_text(v: u64) -> String {
    if v == 0 {
        String::new()
    } else {
        v.to_string()
    }
}

pub fn short(out: &mut impl Write, rows: &[&HandleInfo]) -> io::Result<()> {
    let kw = width(rows.iter().map(|h| h.koid), "koid");
    let rw = width(rows.iter().map(|h| h.rkoid), "rkoid");
    writeln!(
        out,
        "{:>10}  {:>kw$} {:>rw$} {:>10} type",
        "handle", "koid", "rkoid", "rights"
    )?;
    for h in rows {
        writeln!(
            out,
            "{:#010x}: {:>kw$} {:>rw$} {:#010x} {}",
            h.handle,
            h.koid,
            rkoid_text(h.rkoid),
            h.rights,
            h.ty
        )?;
    }
    writeln!(out, "{} handles", rows.len())
}

pub fn long(out: &mut impl Write, rows: &[&HandleInfo]) -> io::Result<()> {
    let fw = rows
        .iter()
        .map(|h| h.fd.to_string().len())
        .max()
        .unwrap_or(0)
        .max(2);
    let kw = width(rows.iter().map(|h| h.koid), "koid");
    let rw = width(rows.iter().map(|h| h.rkoid), "rkoid");
    let dw = rows
        .iter()
        .map(|h| h.dev.as_deref().map_or(0, str::len))
        .max()
        .unwrap_or(0)
        .max(3);
    let tw = rows.iter().map(|h| h.ty.len()).max().unwrap_or(0).max(4);
    let flags: Vec<String> = rows.iter().map(|h| h.flag_names.join("|")).collect();
    let lw = flags.iter().map(String::len).max().unwrap_or(0).max(5);
    writeln!(
        out,
        "{:>fw$} {:>10}  {:>kw$} {:>dw$} {:>rw$} {:>10} {:<tw$} {:<lw$} description",
        "fd", "handle", "koid", "dev", "rkoid", "rights", "type", "flags"
    )?;
    for (h, fl) in rows.iter().zip(&flags) {
        writeln!(
            out,
            "{:>fw$} {:#010x}: {:>kw$} {:>dw$} {:>rw$} {:#010x} {:<tw$} {:<lw$} {}",
            h.fd,
            h.handle,
            h.koid,
            h.dev.as_deref().unwrap_or(""),
            rkoid_text(h.rkoid),
            h.rights,
            h.ty,
            fl,
            h.description
        )?;
    }
    let objects = {
        let mut seen: Vec<(u64, Option<&str>)> =
            rows.iter().map(|h| (h.koid, h.dev.as_deref())).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    writeln!(out, "{} handles, {} objects", rows.len(), objects)
}

/// `--mappings`: objects held only through memory mappings, in the short
/// table's columns with `-` for the handle value they do not have, the
/// mapped path after the type.
/// The koid column is as wide as the handle rows' above it (`handles`),
/// so that both line up.
pub fn mapped(out: &mut impl Write, handles: &[&HandleInfo], rows: &[Mapped]) -> io::Result<()> {
    let kw = width(
        rows.iter()
            .map(|m| m.koid)
            .chain(handles.iter().map(|h| h.koid)),
        "koid",
    );
    let rw = width(handles.iter().map(|h| h.rkoid), "rkoid");
    for m in rows {
        writeln!(
            out,
            "{:>10}: {:>kw$} {:>rw$} {:#010x} {} {}",
            "-", m.koid, "", m.rights, m.ty, m.path
        )?;
    }
    writeln!(out, "{} mapped objects without a handle", rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rkoid_blank_when_zero() {
        assert_eq!(rkoid_text(0), "");
        assert_eq!(rkoid_text(12), "12");
        assert_eq!(width([0u64, 123456].into_iter(), "koid"), 6);
        assert_eq!(width(std::iter::empty(), "rkoid"), 5);
    }
}
