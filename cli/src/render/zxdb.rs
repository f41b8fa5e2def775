//! The debugger views, after zxdb's `handle` command: a list of every
//! handle, and the details of one.

use comfy_table::{presets::NOTHING, Cell, CellAlignment, Table};

/// comfy-table pads every cell; trailing blanks only get in a reader's way.
fn trimmed(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
use handles_supervisor::inspect::HandleInfo;

pub fn list(rows: &[&HandleInfo]) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(vec![
        Cell::new("Handle").set_alignment(CellAlignment::Right),
        Cell::new("Type"),
        Cell::new("Koid").set_alignment(CellAlignment::Right),
    ]);
    for h in rows {
        t.add_row(vec![
            Cell::new(format!("{:#010x}", h.handle)).set_alignment(CellAlignment::Right),
            Cell::new(h.obj_type().zx_name()),
            Cell::new(h.koid).set_alignment(CellAlignment::Right),
        ]);
    }
    trimmed(&t)
}

pub fn detail(h: &HandleInfo) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![
            Cell::new(k).set_alignment(CellAlignment::Right),
            Cell::new(v),
        ]);
    };
    row("Type", h.obj_type().zx_name().to_string());
    row("Value", format!("{:#010x}", h.handle));
    let mut names = h.rights().names();
    row(
        "Rights",
        names.next().unwrap_or("ZX_RIGHT_NONE").to_string(),
    );
    for n in names {
        row("", n.to_string());
    }
    row("Koid", h.koid.to_string());
    row("Related koid", h.rkoid.to_string());
    row("Linux type", h.ty.to_string());
    row("Fd", h.fd.to_string());
    row("Flags", h.flag_names.join("|"));
    if let Some(d) = &h.dev {
        row("Device", d.clone());
    }
    row("Target", h.target.clone());
    if !h.description.is_empty() && h.description != h.target {
        row("Description", h.description.clone());
    }
    if let Some(p) = h.pos {
        row("Offset", p.to_string());
    }
    if let Some(c) = &h.created {
        row(
            "Origin",
            c.how.describe().unwrap_or_else(|| "unknown".into()),
        );
        for (i, f) in c.frames.iter().enumerate() {
            row(if i == 0 { "Created at" } else { "" }, f.to_string());
        }
    }
    trimmed(&t)
}
