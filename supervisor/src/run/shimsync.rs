//! Keeping the supervisor's model and the shim's table of a process in
//! step: the shim's announcement, mapping its table when first needed,
//! and publishing what the supervisor changed (into the shim's table, or
//! into a table of the supervisor's own for a process without a shim).

use std::collections::HashSet;

use handles_model::ObjType;

use super::procfs::{fd_numbers, nofile_limit};
use super::publish::Published;
use super::shimtable::{ShimSays, ShimTable, Update};
use super::state::Job;
use crate::backtrace::ModuleMap;

impl Job {
    /// The shim of `tid`'s process announced its table at `fd`. Under the
    /// lenient filter nothing of the start-up stopped here, so nothing
    /// needs writing into it: it is mapped when something needs it
    /// (`sync_shim`), which for most short-lived processes is never.
    /// Under the strict filter it is mapped now, the shim's mixer taken
    /// (values must agree) and everything the supervisor knows that the
    /// shim cannot (its tombstones, its tombstone source) written there.
    pub(super) fn on_announce(&mut self, tid: i32, tgid: i32, fd: i32) {
        let strict = match self.procs.get_mut(&tgid) {
            Some(p) => {
                // A forked child's table marks what it inherited from its
                // parent (how::FORKED): nothing to read here for its leak
                // check (listing its fds and reading their records cost a
                // fifth of the supervisor's time in a shell script).
                let shim = ShimTable::announced(tgid, fd);
                if self.opts.inherit_check {
                    // The inherit check reads this image's records at its
                    // exec, when the table's fd and the image's modules
                    // are gone from /proc: mapped and listed now.
                    let _ = shim.table();
                    if p.maps.is_none() {
                        p.maps = ModuleMap::read(tgid).ok();
                    }
                }
                p.shim = Some(shim);
                p.strict
            }
            None => return,
        };
        if !strict {
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.awaiting_shim = false;
                p.loading = false;
            }
            if let Some(t) = self.threads.get(&tid) {
                t.table.borrow_mut().touch_all();
            }
            return;
        }
        self.sync_shim(tid, tgid);
        if self.procs.get(&tgid).is_none_or(|p| p.shim.is_none()) {
            return;
        }
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.awaiting_shim = false;
            p.loading = false;
        }
        // Before the announcement the shim's own start-up (its table's fd,
        // mapped with an mmap that stopped here) may have been taken for
        // handles of the program's: drop what the kernel no longer has.
        let present: HashSet<i32> = fd_numbers(&format!("/proc/{tgid}/fd"))
            .into_iter()
            .collect();
        if let Some(t) = self.threads.get(&tid) {
            let mut table = t.table.borrow_mut();
            for fd in table.numbers() {
                if !present.contains(&fd) && table.is_open(fd) {
                    table.forget_open(fd);
                }
            }
        }
        self.publish(tid);
    }

    /// Brings the model of `tid`'s process in line with its shim's table
    /// before anything reads it: maps an announced table (dropping it if
    /// the announcement was not a genuine table), takes its mixer, and
    /// after an exec whose fd listing was skipped keeps of the handles the
    /// model had only those the shim registered as inherited (the others
    /// were O_CLOEXEC, or closed and reused since).
    pub(super) fn sync_shim(&mut self, tid: i32, tgid: i32) {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return;
        };
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        if p.shim.is_none() && p.awaiting_shim && !p.strict {
            // Shims do not announce here (HANDLES_ANNOUNCE=0): one made
            // its table if one named for this process is open.
            if let Some(fd) = crate::inspect::shared::own_table_fd(tgid) {
                p.shim = Some(ShimTable::announced(tgid, fd));
                p.awaiting_shim = false;
                p.loading = false;
            }
        }
        if let Some(shim) = p.shim.as_ref().filter(|s| !s.synced.get()) {
            shim.synced.set(true);
            match shim.mixer() {
                Some(mixer) => {
                    let mut table = t.table.borrow_mut();
                    table.mixer = mixer;
                    table.touch_all();
                }
                None => {
                    // Not (yet) a sealed table of this process: one caught
                    // halfway through the shim's start-up (a stop there,
                    // under a new-* entry or a handle budget, finds it
                    // before it is sealed and moved). Looked for again.
                    p.shim = None;
                    p.awaiting_shim = p.awaiting_shim || !p.strict;
                }
            }
        }
        if !p.exec_unverified {
            return;
        }
        p.exec_unverified = false;
        let mut table = t.table.borrow_mut();
        let open: Vec<i32> = table.open_fds().map(|(fd, _)| fd).collect();
        match p.shim.as_ref() {
            Some(shim) => {
                for fd in open {
                    if !shim.holds_inherited(fd) {
                        table.forget_open(fd);
                    }
                }
            }
            None => {
                // The shim never came: ask the kernel (what opened since
                // without stopping here is adopted when it is used).
                let present: HashSet<i32> = fd_numbers(&format!("/proc/{tgid}/fd"))
                    .into_iter()
                    .collect();
                for fd in open {
                    if !present.contains(&fd) {
                        table.forget_open(fd);
                    }
                }
            }
        }
    }

    /// Brings the published table of `tid`'s process up to date.
    pub(super) fn publish(&mut self, tid: i32) {
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let tgid = t.tgid;
        match self.procs.get(&tgid) {
            Some(p) if p.shim.is_some() => {
                self.publish_to_shim(tid, tgid);
                return;
            }
            // Its shim will make the table (a memfd per short-lived
            // process would cost more than the process's own work).
            Some(p) if p.awaiting_shim => return,
            _ => {}
        }
        let mut table = t.table.borrow_mut();
        let dirty = table.take_dirty();
        if dirty.is_empty() && self.published.contains_key(&tgid) {
            return;
        }
        let mixer = table.mixer;
        let stale = self
            .published
            .get(&tgid)
            .is_some_and(|p| p.mixer() != mixer);
        if stale || !self.published.contains_key(&tgid) {
            let cap = nofile_limit(tgid).min(u64::from(handles_model::table::MAX_CAPACITY)) as u32;
            match Published::new(tgid, mixer, cap) {
                Ok(p) => {
                    self.published.insert(tgid, p);
                }
                Err(_) => return,
            }
            // A fresh table needs every slot.
            let mut all = table.numbers();
            all.extend(table.tomb_src);
            for fd in all {
                if let Some(p) = self.published.get_mut(&tgid) {
                    p.set_from(&table, fd);
                }
            }
            return;
        }
        if let Some(p) = self.published.get_mut(&tgid) {
            for fd in dirty {
                p.set_from(&table, fd);
            }
        }
    }

    /// Brings job process `pid`'s model in line with its shim's table
    /// (found if it was not yet), through any of its threads.
    pub(super) fn sync_shim_of(&mut self, pid: i32) {
        let thread = self
            .threads
            .iter()
            .find(|(_, t)| t.tgid == pid)
            .map(|(&k, _)| k);
        if let Some(tid) = thread {
            self.sync_shim(tid, pid);
        }
    }

    /// Writes the fds the supervisor changed since the last publish into
    /// the shim's table of `tgid` (instead of a table of its own), and
    /// takes over the generations the shim's table gives them.
    pub(super) fn publish_to_shim(&mut self, tid: i32, tgid: i32) {
        use super::fdtable::{Origin, Slot};
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let table_rc = t.table.clone();
        let dirty = table_rc.borrow_mut().take_dirty();
        for fd in dirty {
            // What the model says, copied out so the model is not borrowed
            // while /proc is read for the object's name.
            enum Want {
                Open(u32, Vec<u64>),
                Tomb(u32, Vec<u64>),
                Internal,
                Free,
                Skip,
            }
            let want = {
                let table = table_rc.borrow();
                if table.tomb_src == Some(fd) {
                    Want::Internal
                } else {
                    match table.get(fd) {
                        // Made by the shim, or there before the image
                        // started (the shim registers those itself):
                        // already in its table. Naming each inherited fd
                        // here cost every exec a readlink and a stat per
                        // fd.
                        Some(Slot::Open(h))
                            if matches!(h.origin, Origin::Shim | Origin::Inherited) =>
                        {
                            Want::Skip
                        }
                        Some(Slot::Open(h)) => Want::Open(
                            h.origin.how_code(),
                            h.created.as_ref().map_or_else(Vec::new, |s| s.to_vec()),
                        ),
                        Some(Slot::Tombstone(c)) => Want::Tomb(
                            c.generation,
                            c.closed.as_ref().map_or_else(Vec::new, |s| s.to_vec()),
                        ),
                        None => Want::Free,
                    }
                }
            };
            let written = match want {
                Want::Skip => None,
                Want::Open(how, created) => {
                    let facts = self.object_facts(tgid, fd);
                    let update = Update::Open {
                        how,
                        ty: ObjType::from_name(facts.ty),
                        name: &facts.target,
                        created: &created,
                    };
                    self.shim_update(tgid, fd, &update)
                }
                Want::Tomb(..) if self.shim_made_anew(tgid, fd) => {
                    // The shim put a handle on the number since our model
                    // took its tombstone (bash's `exec 3>file` onto a
                    // quarantined 3, a dup2 the shim made without a stop;
                    // a fork child's model is its parent's from before):
                    // its table is the truth for what it did.
                    table_rc.borrow_mut().drop_tombstone(fd);
                    table_rc.borrow_mut().open(fd, Origin::Shim, None, tgid);
                    None
                }
                Want::Tomb(generation, closed) => self.shim_update(
                    tgid,
                    fd,
                    &Update::Tombstone {
                        generation,
                        closed: &closed,
                    },
                ),
                Want::Internal => self.shim_update(tgid, fd, &Update::Internal),
                Want::Free => self.shim_update(tgid, fd, &Update::Free),
            };
            if let Some(g) = written {
                table_rc.borrow_mut().set_generation(fd, g);
            }
        }
    }

    /// Whether the shim's table of `tgid` has a handle open at `fd` that
    /// the kernel holds as a live object (not an O_PATH fd, which every
    /// tombstone is).
    fn shim_made_anew(&self, tgid: i32, fd: i32) -> bool {
        matches!(self.shim_says(tgid, fd), ShimSays::Open(_))
            && std::fs::read_to_string(format!("/proc/{tgid}/fdinfo/{fd}"))
                .ok()
                .and_then(|text| crate::inspect::parse::FdInfo::parse(&text).flags)
                .is_some_and(|flags| flags & libc::O_PATH as u32 == 0)
    }

    pub(super) fn shim_update(&self, tgid: i32, fd: i32, u: &Update) -> Option<u32> {
        self.procs.get(&tgid)?.shim.as_ref()?.update(fd, u)
    }
}
