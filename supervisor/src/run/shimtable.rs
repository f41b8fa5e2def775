//! The shim's table, as the supervisor sees it.
//!
//! Calls the shim makes carry the job's cookie and never stop at the
//! supervisor, so for the fds they create and close the supervisor's own
//! model knows nothing: the shim's table (a memfd in the process, named
//! `handles-table:<pid>`, layout `handles_model::table`) is the truth for
//! them. The supervisor reads it when its model has no answer: a
//! tombstone there is a closed handle (with the shim's close and creation
//! stacks), an OPEN slot a live one.

use handles_model::table::{state, SlotDetail};

use crate::inspect::shared::{find_among_fds, MappedTable};

pub(super) struct ShimTable {
    mapped: MappedTable,
}

/// What the shim's table says of an fd.
pub(super) enum ShimSays {
    Open,
    /// Closed by the program through the shim (quarantined there).
    Tombstone(Box<SlotDetail>),
    /// One of the shim's own fds (its table, its tombstone source).
    Internal,
    Unknown,
}

impl ShimTable {
    /// Finds the table of process `tgid` among its own fds.
    pub(super) fn find(tgid: i32) -> Option<ShimTable> {
        let mapped = find_among_fds(tgid, tgid)?;
        // A table that does not validate is ignored: a program can scribble
        // on its own shim's memory.
        mapped.view().ok()?;
        Some(ShimTable { mapped })
    }

    pub(super) fn says(&self, fd: i32) -> ShimSays {
        let Ok(view) = self.mapped.view() else {
            return ShimSays::Unknown;
        };
        match view.detail(fd) {
            Some(d) if d.value.state == state::OPEN => ShimSays::Open,
            Some(d) if d.value.state == state::TOMBSTONE => ShimSays::Tombstone(Box::new(d)),
            Some(d) if d.value.state == state::INTERNAL => ShimSays::Internal,
            _ => ShimSays::Unknown,
        }
    }

    /// Which of `fds` (the numbers open in the kernel) the shim holds open,
    /// with their creation stacks. Asking only for those keeps this cheap
    /// in a table with a million slots.
    pub(super) fn open_fds(&self, fds: &[i32]) -> Vec<(i32, Vec<u64>, u32)> {
        let Ok(view) = self.mapped.view() else {
            return Vec::new();
        };
        fds.iter()
            .copied()
            .filter_map(|fd| {
                let d = view.detail(fd)?;
                (d.value.state == state::OPEN)
                    .then(|| (fd, d.created.frames().to_vec(), d.value.generation))
            })
            .collect()
    }
}
