//! Creation stacks (`--stacks`): after a table, one block per handle whose
//! published slot recorded how it was made, in fd order.
//!
//! ```text
//! fd 3 0x5e9e33cf file /tmp/app.conf created by openat() at:
//!     #0 0x000055d1c2a4b1c9 in open_config at /src/app.c:12 (app+0x11c9)
//!     #1 0x000055d1c2a4b2a0 in main at /src/app.c:40 (app+0x12a0)
//! ```

use std::io::{self, Write};

use handles_supervisor::inspect::stacks::Creation;
use handles_supervisor::inspect::HandleInfo;

/// `fd 3 0x5e9e33cf file /tmp/app.conf created by openat() at:`: the
/// long view's description when there is one, the fd's link otherwise.
pub fn heading(h: &HandleInfo, c: &Creation) -> String {
    let what = if h.description.is_empty() {
        &h.target
    } else {
        &h.description
    };
    format!(
        "fd {} {:#010x} {} {} {}:",
        h.fd,
        h.handle,
        h.ty,
        what,
        c.how.heading()
    )
}

/// The blocks of every row with a creation stack, each after a blank line.
pub fn blocks(out: &mut impl Write, rows: &[&HandleInfo]) -> io::Result<()> {
    let mut with: Vec<(&HandleInfo, &Creation)> = rows
        .iter()
        .filter_map(|h| h.created.as_deref().map(|c| (*h, c)))
        .collect();
    with.sort_by_key(|(h, _)| h.fd);
    for (h, c) in with {
        writeln!(out)?;
        writeln!(out, "{}", heading(h, c))?;
        for f in &c.frames {
            writeln!(out, "    {f}")?;
        }
    }
    Ok(())
}
