//! Leak checks at process exit (see `leaks.rs` for the report format).

use std::path::PathBuf;

use super::fdtable::{Origin, Stack};
use super::leaks::{Candidate, Leak, LeakGroup, LeakMode, ProcessLeaks};
use super::procfs::fd_numbers;
use super::state::Job;
use super::{leaks, shimtable};
use crate::suppress::{Event, Facts, FrameRef};
use handles_model::table::how;

/// The files a process's arguments name, for rules with `argument = yes`
/// (a shell's script): each argument that is not an option, resolved
/// against the process's current directory, and as written. Read at the
/// exit event, while /proc still has the process's memory and cwd.
fn argument_paths(tgid: i32) -> Vec<String> {
    let Ok(cmdline) = std::fs::read(format!("/proc/{tgid}/cmdline")) else {
        return Vec::new();
    };
    let cwd = PathBuf::from(format!("/proc/{tgid}/cwd"));
    let mut out = Vec::new();
    // argv[0] is the program; a handful of arguments is all a shell's
    // script can be among, and a long command line costs nothing extra.
    for raw in cmdline.split(|&b| b == 0).skip(1).take(16) {
        let Ok(arg) = std::str::from_utf8(raw) else {
            continue;
        };
        if arg.is_empty() || arg.starts_with('-') {
            continue;
        }
        if let Ok(p) = std::fs::canonicalize(cwd.join(arg)) {
            if let Some(s) = p.to_str() {
                out.push(s.to_string());
            }
        }
        out.push(arg.to_string());
    }
    out
}

/// What suppression rules match a leaked handle against.
fn leak_event<'a>(l: &'a Leak, frames: &'a [crate::backtrace::Frame]) -> Event<'a> {
    Event {
        report: "leak",
        kind: "leak",
        ty: &l.ty,
        path: &l.description,
        frames: FrameRef::all(frames),
    }
}

impl Job {
    /// The leak check of `tgid` (thread `tid`), at its last thread's
    /// exit event (after the report of a test still running then).
    pub(super) fn leak_check(&mut self, tid: i32, tgid: i32) {
        let all = self.opts.leak_mode == LeakMode::All;
        let candidates = self.leak_candidates(tid, tgid, all);
        if candidates.is_empty() {
            return;
        }
        let Some((report, stacks, rules)) = self.leak_groups(tid, tgid, candidates, all) else {
            return;
        };
        if report.count() > 0 {
            let mut text = leaks::render(&report, &stacks);
            // Rules print bare, ready to paste into a suppressions file.
            text.push_str(&rules);
            self.write_report(&text);
        }
        self.leak_reports.push(report);
    }

    /// The handles open in `tgid` (thread `tid`) that a leak check looks
    /// at: those it created, or every one with `all` (inherited marked).
    pub(super) fn leak_candidates(&mut self, tid: i32, tgid: i32, all: bool) -> Vec<Candidate> {
        self.sync_shim(tid, tgid);
        let Some(t) = self.threads.get(&tid) else {
            return Vec::new();
        };
        let table_ref = t.table.clone();
        let mut candidates: Vec<Candidate> = {
            let table = table_ref.borrow();
            table
                .open_fds()
                .filter_map(|(fd, h)| {
                    let inherited = h.origin == Origin::Inherited || h.creator != tgid;
                    (all || !inherited).then(|| {
                        (
                            fd,
                            (table.value_of(fd, h.generation).0, h.generation),
                            h.origin.clone(),
                            h.created.clone(),
                            inherited,
                        )
                    })
                })
                .collect()
        };
        // What the shim created never stopped here: its table has those
        // handles, their creation stacks and the calls that made them (a
        // forked child's table marks those its parent made: FORKED).
        // Without --leak-check=all the candidates are the handles the
        // process made: the slots below its table's fd bound, each then
        // looked up in /proc. Listing /proc/PID/fd instead made an inode
        // for each of the ~70 fds a process with a quarantine holds, at
        // every exit: a fifth of a leak check's time.
        let fd_dir = format!("/proc/{tgid}/task/{tid}/fd");
        let present = |fd: i32| std::fs::symlink_metadata(format!("{fd_dir}/{fd}")).is_ok();
        if let Some(shim) = self.procs.get(&tgid).and_then(|p| p.shim.as_ref()) {
            let table = table_ref.borrow();
            let slots = if all {
                shim.open_slots(&fd_numbers(&fd_dir))
            } else {
                shim.made_open_slots()
            };
            for (fd, v) in slots {
                if table.is_hidden(fd) {
                    continue;
                }
                // Found open by a check before the leak check (or seen
                // only as the shim's): the shim knows where it came from.
                let in_model = candidates.iter().position(|c| {
                    c.0 == fd && matches!(c.2, Origin::Discovered | Origin::Shim) && c.3.is_none()
                });
                // The slot alone rules most out (stdio and what came
                // through exec or fork): their records are not read.
                if in_model.is_none()
                    && (table.is_open(fd)
                        || (!all && (how::base(v.how) == how::INHERITED || how::forked(v.how))))
                {
                    continue;
                }
                if !all && !present(fd) {
                    continue;
                }
                let Some((d, py)) = shim.records(fd) else {
                    continue;
                };
                if d.value.state != handles_model::table::state::OPEN {
                    continue;
                }
                let origin = shimtable::origin_of(d.value.how);
                let stack = shimtable::call_stack(d.created.frames(), &py.0);
                if let Some(i) = in_model {
                    if stack.is_some() {
                        candidates[i].2 = origin;
                        candidates[i].3 = stack;
                    }
                    continue;
                }
                let code = d.value.how;
                let inherited = origin == Origin::Inherited
                    || (stack.is_none() && how::base(code) == how::UNKNOWN)
                    || how::forked(code);
                if !all && inherited {
                    continue;
                }
                candidates.push((
                    fd,
                    (table.value_of(fd, d.value.generation).0, d.value.generation),
                    if inherited { Origin::Inherited } else { origin },
                    stack,
                    inherited,
                ));
            }
        }
        let tableless = self
            .procs
            .get(&tgid)
            .is_some_and(|p| p.shim.is_none() && p.awaiting_shim);
        // A forked child whose shim kept its table private (it only moved
        // fds): its slots and records are in its memory, still there at
        // its exit stop. What it made itself (a dup onto a number) is its
        // own; what is FORKED came from its parent.
        if tableless {
            let private = super::private::PrivateTable::of(tid, tgid).filter(|p| p.is_own());
            if let Some(mut private) = private {
                let table = table_ref.borrow();
                for (fd, v) in private.made_open_slots() {
                    if table.is_hidden(fd)
                        || how::base(v.how) == how::INHERITED
                        || how::forked(v.how)
                        || !present(fd)
                    {
                        continue;
                    }
                    let Some((d, py, _)) = private.record(fd) else {
                        continue;
                    };
                    let origin = shimtable::origin_of(d.value.how);
                    let stack = shimtable::call_stack(d.created.frames(), &py.0);
                    let value = (table.value_of(fd, d.value.generation).0, d.value.generation);
                    candidates.retain(|c| c.0 != fd);
                    candidates.push((fd, value, origin, stack, false));
                }
            }
        }
        // A forked child whose shim made no table (it created and closed
        // nothing through the shim, or only moved fds): what else it holds
        // came from its parent or stopped here. Under --leak-check=all the
        // inherited ones the model does not know (the parent's shim made
        // them) are listed from /proc; the shim's own fds drop out with
        // the snapshot below.
        if all && tableless {
            let table = table_ref.borrow();
            for fd in fd_numbers(&fd_dir) {
                if table.is_hidden(fd) || candidates.iter().any(|c| c.0 == fd) {
                    continue;
                }
                candidates.push((
                    fd,
                    (table.value_of(fd, 0).0, 0),
                    Origin::Inherited,
                    None,
                    true,
                ));
            }
        }
        candidates
    }

    /// Groups `candidates` by creation stack, with what the kernel says of
    /// each handle, minus what suppressions silence: the process's leak
    /// report, the symbolized stack of each group, and the rules
    /// `--gen-suppressions` prints. None when the process cannot be read.
    pub(super) fn leak_groups(
        &mut self,
        tid: i32,
        tgid: i32,
        candidates: Vec<Candidate>,
        all: bool,
    ) -> Option<(ProcessLeaks, Vec<Vec<crate::backtrace::Frame>>, String)> {
        let fds: Vec<i32> = candidates
            .iter()
            .map(|c| c.0)
            .filter(|&fd| all || fd > 2)
            .collect();
        // Stdio alone (never a leak) needs no read of /proc.
        let snapshot = (!fds.is_empty())
            .then(|| {
                crate::inspect::Inspector::new(crate::inspect::Options {
                    long: true,
                    peers: false,
                })
                .read_task_fds(tgid, tid, &fds)
                .ok()
            })
            .flatten();
        let info = |fd: i32| {
            snapshot
                .as_ref()
                .and_then(|s| s.handles.iter().find(|h| h.fd == fd))
        };
        let mut items = Vec::new();
        for (fd, (value, generation), origin, stack, inherited) in candidates {
            // Stdio is never a leak, even when a program re-opened it.
            if fd <= 2 && !all {
                continue;
            }
            let Some(h) = info(fd) else {
                continue;
            };
            let origin = match origin {
                Origin::Syscall(s) => s.to_string(),
                Origin::Received => "recvmsg (SCM_RIGHTS)".into(),
                Origin::Discovered => "an untraced call".into(),
                Origin::Shim => "the shim".into(),
                Origin::Inherited => "inherited".into(),
            };
            let key: Vec<u64> = stack.as_ref().map(|s| s.to_vec()).unwrap_or_default();
            items.push((
                key,
                (
                    stack,
                    Leak {
                        fd,
                        handle: value,
                        generation: Some(generation),
                        ty: h.ty.to_string(),
                        koid: h.koid,
                        dev: h.dev.clone(),
                        rights: Some(h.rights),
                        description: h.description.clone(),
                        origin,
                        inherited,
                    },
                ),
            ));
        }
        let mut map: std::collections::BTreeMap<Vec<u64>, (Option<Stack>, Vec<Leak>)> =
            Default::default();
        for (k, (stack, leak)) in items {
            map.entry(k)
                .or_insert_with(|| (stack, Vec::new()))
                .1
                .push(leak);
        }
        // Read only when a rule may ask (a leak to match).
        let arguments = if map.is_empty() {
            Vec::new()
        } else {
            argument_paths(tgid)
        };
        let mut groups = Vec::new();
        let mut stacks = Vec::new();
        let mut suppressed = 0;
        let mut rules = String::new();
        let facts = |l: &Leak| Facts {
            fd: Some(l.fd),
            arguments: &arguments,
        };
        if !map.is_empty() {
            // Both passes below read the module map: once.
            if let Some(p) = self.procs.get_mut(&tgid).filter(|p| p.maps.is_none()) {
                p.maps = crate::backtrace::ModuleMap::read(tgid).ok();
            }
        }
        for (_, (stack, handles)) in map {
            // First with the modules alone: a group every handle of which
            // a rule of `obj:` frames silences (grep -q's file, a shell's
            // script fd) is not symbolized, which reads the modules' symbol
            // tables and DWARF (a tenth of a second for libc's).
            let modules = crate::backtrace::modules_of_recorded(
                self.procs.get(&tgid).and_then(|p| p.maps.as_ref()),
                tgid,
                stack.as_ref().map_or(&[][..], |s| &s[..]),
            );
            let rules_of = &self.opts.suppressions;
            if handles.iter().all(|l| {
                rules_of
                    .matching_with(&leak_event(l, &modules), &facts(l))
                    .is_some()
            }) {
                suppressed += handles.len();
                continue;
            }
            let frames = self.symbolize(tgid, stack.as_ref());
            let mut kept = Vec::new();
            for l in handles {
                let event = leak_event(&l, &frames);
                if self
                    .opts
                    .suppressions
                    .matching_with(&event, &facts(&l))
                    .is_some()
                {
                    suppressed += 1;
                    continue;
                }
                if self.opts.gen_suppressions && kept.is_empty() {
                    let name = format!("leak-{}-{}", l.ty, l.origin.replace(' ', "-"));
                    rules.push_str(&crate::suppress::Rule::for_event(&name, &event, 4).render());
                }
                kept.push(l);
            }
            if kept.is_empty() {
                continue;
            }
            groups.push(LeakGroup {
                handles: kept,
                stack: frames.clone(),
            });
            stacks.push(frames);
        }
        let report = ProcessLeaks {
            pid: tgid,
            name: self
                .procs
                .get(&tgid)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            groups,
            suppressed,
        };
        Some((report, stacks, rules))
    }
}
