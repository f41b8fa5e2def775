//! `handles PID` during a window: each process's model, published as the
//! handle table `handles run` publishes for a process without a shim
//! (`run::publish`, layout in `handles_model::table`), so that another
//! terminal sees values, generations and creation stacks.
//!
//! The table is a memfd in the supervisor, never in the attached process:
//! a reader finds it through the process's TracerPid, as for a job. The
//! process's fd table gets nothing to be released at detach (an fd
//! injected there would have to be closed from inside, and would stay
//! behind if handles were killed); once detached, TracerPid is 0 and no
//! reader looks for the table any more.
//!
//! What a slot says:
//! - a handle created during the window: OPEN, how = its creating
//!   syscall (received for SCM_RIGHTS), its creation stack;
//! - a handle older than the window: OPEN, generation 1, how = found open
//!   (a forked child's copy of a window handle keeps its creation);
//! - a quarantined number: TOMBSTONE, the tombstone source: INTERNAL
//!   (both hidden by readers);
//! - generations count the handles a number held as far as the window
//!   knows, from 1 for the handle it held when the window met it.

use std::hash::BuildHasher;

use handles_model::table::{how, state, SlotValue};

use super::model::Proc;
use super::window::Window;
use crate::run::publish::Published;

/// A mixer per table, as a job draws one per process: values differ
/// between two windows on the same process.
fn mixer(tgid: i32) -> u32 {
    std::collections::hash_map::RandomState::new().hash_one(tgid) as u32
}

/// The slot value and creation stack published for `fd` of `p`.
fn slot_of(p: &Proc, fd: i32) -> (SlotValue, Option<&[u64]>) {
    let generation = p.generations.get(&fd).copied().unwrap_or(0);
    if p.tomb_src == Some(fd) {
        let v = SlotValue {
            state: state::INTERNAL,
            ..SlotValue::default()
        };
        return (v, None);
    }
    if p.quarantine.contains(&fd) {
        let v = SlotValue {
            state: state::TOMBSTONE,
            generation,
            ..SlotValue::default()
        };
        return (v, None);
    }
    let created = match (p.open.get(&fd), p.adopted.get(&fd)) {
        (Some(c), _) | (None, Some(Some(c))) => Some(c),
        (None, Some(None)) => None,
        (None, None) => return (SlotValue::default(), None),
    };
    let v = SlotValue {
        state: state::OPEN,
        generation,
        how: created.map_or(how::ADOPTED, |c| match c.nr {
            libc::SYS_recvmsg | libc::SYS_recvmmsg => how::RECEIVED,
            nr => u32::try_from(nr).map_or(how::UNKNOWN, how::syscall),
        }),
        ..SlotValue::default()
    };
    (v, created.map(|c| c.stack.as_slice()))
}

impl Window<'_> {
    /// Publishes process `tgid`'s whole model in a new table (the window
    /// met it, forked it, or it exec'ed).
    pub(super) fn publish_afresh(&mut self, tgid: i32) {
        self.tables.remove(&tgid);
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        p.dirty.clear();
        if p.exited {
            return;
        }
        let cap = crate::inspect::shared::nofile(tgid).map_or(1024, |(soft, _)| soft);
        let cap = cap.min(u64::from(handles_model::table::MAX_CAPACITY)) as u32;
        let Ok(mut t) = Published::new(tgid, mixer(tgid), cap) else {
            // `handles PID` then shows what /proc says; the window itself
            // does not need the table.
            return;
        };
        for fd in p.known_numbers() {
            let (v, stack) = slot_of(p, fd);
            t.set_created(fd, v, stack.unwrap_or(&[]));
        }
        self.tables.insert(tgid, t);
    }

    /// Brings the published slots of `tgid` that changed up to date.
    pub(super) fn publish(&mut self, tgid: i32) {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        if p.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut p.dirty);
        let Some(t) = self.tables.get_mut(&tgid) else {
            return;
        };
        for fd in dirty {
            let (v, stack) = slot_of(p, fd);
            t.set_created(fd, v, stack.unwrap_or(&[]));
        }
    }

    /// A process that exited has no table to show.
    pub(super) fn unpublish(&mut self, tgid: i32) {
        self.tables.remove(&tgid);
    }
}
