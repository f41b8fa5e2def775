//! `--inherit-check` at an exec: which handles cross it implicitly, and
//! whom to blame (the records are inherit.rs's).

use std::collections::HashSet;

use handles_model::inherit as rule;
use handles_model::inherit::{Blame, Record, Verdict};
use handles_model::table::how;

use super::fdtable::{Origin, Slot, Stack};
use super::inherit::{render, CrossedHandle, CrossingGroup, Group};
use super::procfs::fd_numbers;
use super::shimtable;
use super::shimtable::ShimSays;
use super::state::Job;
use crate::backtrace::ModuleMap;
use crate::suppress::{Event, Facts, FrameRef};

/// A record of one fd number, as `rule::judge` and the report want it.
struct Known {
    record: Record,
    stack: Option<Stack>,
    origin: String,
}

fn origin_name(o: &Origin) -> String {
    match o {
        Origin::Syscall(s) => s.to_string(),
        Origin::Received => "recvmsg (SCM_RIGHTS)".into(),
        Origin::Discovered => "an untraced call".into(),
        Origin::Shim => "the shim".into(),
        Origin::Inherited => "inherited".into(),
    }
}

/// Whether process `pid` holds at `fd` the very file `other` holds at
/// `fd` (kcmp KCMP_FILE).
fn same_file(pid: i32, other: i32, fd: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes plain integers and reads no memory of ours.
    unsafe { libc::syscall(libc::SYS_kcmp, pid, other, KCMP_FILE, fd, fd) == 0 }
}

/// Whether `pid`'s fd `fd` has close-on-exec set (fdinfo's `flags`, octal,
/// carry O_CLOEXEC for it).
fn cloexec(pid: i32, fd: i32) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())?;
    Some(flags & libc::O_CLOEXEC as u32 != 0)
}

pub(super) fn image_is_shell(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|e| {
            e.file_name()
                .map(|n| handles_model::judge::is_shell(n.as_encoded_bytes()))
        })
        .unwrap_or(false)
}

/// One group's text: the creating stack, then its handles.
impl Job {
    /// The handle now open at `fd` in `tgid`, as (generation) the shim's
    /// table or the model numbers it: the key of `Process::inheritable`.
    fn generation_of(&self, tgid: i32, fd: i32) -> Option<u32> {
        if let Some(ShimSays::Open(g)) = self
            .procs
            .get(&tgid)
            .and_then(|p| p.shim.as_ref())
            .map(|s| s.says(fd))
        {
            return Some(g);
        }
        let t = self.threads.values().find(|t| t.tgid == tgid)?;
        let table = t.table.borrow();
        match table.get(fd) {
            Some(Slot::Open(h)) => Some(h.generation),
            _ => None,
        }
    }

    /// An `fcntl(F_SETFD)` clearing close-on-exec or an `ioctl(FIONCLEX)`:
    /// the handle was made inheritable on purpose. Called at the stop,
    /// before the call runs (a failing one changes nothing that matters:
    /// the number is not open then).
    pub(super) fn note_inheritable(&mut self, tgid: i32, nr: i64, a: &[u64; 6]) {
        let clears = match nr {
            libc::SYS_fcntl => a[1] as i32 == libc::F_SETFD && a[2] & libc::FD_CLOEXEC as u64 == 0,
            libc::SYS_ioctl => a[1] == libc::FIONCLEX,
            _ => false,
        };
        if !clears {
            return;
        }
        let fd = a[0] as i32;
        let Some(g) = self.generation_of(tgid, fd) else {
            return;
        };
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.inheritable.insert((fd, g));
        }
    }

    /// What the records of process `pid` (its shim's table, else the
    /// model of its fd table) say of `fd`.
    fn records_of(&self, pid: i32, fd: i32) -> Known {
        let inheritable = |g: u32| {
            self.procs
                .get(&pid)
                .is_some_and(|p| p.inheritable.contains(&(fd, g)))
        };
        let created = |placing: bool, g: u32| Record::Created {
            placing,
            inheritable: inheritable(g),
        };
        let shim = self.procs.get(&pid).and_then(|p| p.shim.as_ref());
        if let Some((_, d, py)) = shim.and_then(|s| s.open_fds(&[fd]).into_iter().next()) {
            let g = d.value.generation;
            let origin = shimtable::origin_of(d.value.how);
            let record = match how::base(d.value.how) {
                how::INHERITED => Record::AtImageStart,
                how::UNKNOWN | how::ADOPTED => Record::Unknown,
                _ => match &origin {
                    Origin::Syscall(name) => created(rule::is_placing_call(name), g),
                    _ => created(false, g),
                },
            };
            // A number the shim only adopted may have stopped here first.
            if record != Record::Unknown {
                return Known {
                    record,
                    stack: shimtable::call_stack(d.created.frames(), &py.0),
                    origin: origin_name(&origin),
                };
            }
        }
        let Some(t) = self.threads.values().find(|t| t.tgid == pid) else {
            return Known {
                record: Record::Unknown,
                stack: None,
                origin: "an untraced call".into(),
            };
        };
        let table = t.table.borrow();
        match table.get(fd) {
            Some(Slot::Open(h)) => {
                let record = match &h.origin {
                    Origin::Inherited => Record::AtImageStart,
                    Origin::Syscall(name) => created(rule::is_placing_call(name), h.generation),
                    Origin::Received => created(false, h.generation),
                    Origin::Discovered | Origin::Shim => Record::Unknown,
                };
                Known {
                    record,
                    stack: h.created.clone(),
                    origin: origin_name(&h.origin),
                }
            }
            _ => Known {
                record: Record::Unknown,
                stack: None,
                origin: "an untraced call".into(),
            },
        }
    }

    /// At PTRACE_EVENT_EXEC of `tid` (process `tgid`), before the model
    /// forgets the old image: judge every fd that survived the exec.
    /// `into` names the new program.
    pub(super) fn inherit_check(&mut self, tid: i32, tgid: i32, into: &str) {
        let survivors = fd_numbers(&format!("/proc/{tgid}/fd"));
        let (from, shell, parent) = match self.procs.get(&tgid) {
            Some(p) => (
                p.name.clone(),
                p.shell
                    .unwrap_or_else(|| handles_model::judge::is_shell(p.name.as_bytes())),
                p.forked_from
                    .filter(|&pp| self.procs.contains_key(&pp) && pp != tgid),
            ),
            None => return,
        };
        let parent_shell = parent.is_some_and(image_is_shell);
        let hidden = |fd: i32| {
            let own = self
                .threads
                .get(&tid)
                .is_some_and(|t| t.table.borrow().is_hidden(fd));
            own || self
                .procs
                .get(&tgid)
                .and_then(|p| p.shim.as_ref())
                .is_some_and(|s| matches!(s.says(fd), ShimSays::Tombstone(_) | ShimSays::Internal))
        };
        let mut found: Vec<(i32, Known, i32)> = Vec::new();
        for fd in survivors {
            if fd <= 2 || hidden(fd) {
                continue;
            }
            let own = self.records_of(tgid, fd);
            let facts = parent.map(|pp| {
                let same = same_file(pp, tgid, fd);
                rule::Parent {
                    same_object: same,
                    cloexec: same && cloexec(pp, fd).unwrap_or(false),
                    shell: parent_shell,
                    record: if same {
                        self.records_of(pp, fd).record
                    } else {
                        Record::Unknown
                    },
                }
            });
            let verdict = rule::judge(&rule::Crossing {
                fd,
                shell,
                own: own.record,
                parent: facts,
            });
            match verdict {
                Verdict::Implicit(Blame::Parent) => {
                    let pp = parent.unwrap_or(tgid);
                    let mut k = self.records_of(pp, fd);
                    if k.stack.is_none() {
                        k.stack = own.stack;
                    }
                    found.push((fd, k, pp));
                }
                // A forked child's own records point into the image it
                // shares with its parent, whose modules are still mapped
                // (the exec'ing image's are gone).
                Verdict::Implicit(Blame::Own) => found.push((fd, own, parent.unwrap_or(tgid))),
                _ => {}
            }
        }
        if found.is_empty() {
            return;
        }
        let snapshot = crate::inspect::Inspector::new(crate::inspect::Options {
            long: true,
            peers: false,
        })
        .read_task(tgid, tid)
        .ok();
        let mut map: std::collections::BTreeMap<(i32, Vec<u64>), Group> = Default::default();
        for (fd, k, creator) in found {
            let Some(h) = snapshot
                .as_ref()
                .and_then(|s| s.handles.iter().find(|h| h.fd == fd))
            else {
                continue;
            };
            let key = (
                creator,
                k.stack.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
            );
            map.entry(key)
                .or_insert_with(|| (k.stack.clone(), Vec::new()))
                .1
                .push(CrossedHandle {
                    fd,
                    handle: h.handle,
                    ty: h.ty.to_string(),
                    koid: h.koid,
                    description: h.description.clone(),
                    origin: k.origin,
                });
        }
        let mut text = String::new();
        let mut rules = String::new();
        let mut groups = Vec::new();
        // The exec'ing image's modules are gone; its cached map (if a
        // report read one) is the only way to name its frames. /proc now
        // shows the new image: reading it would name the wrong code.
        let old_maps = self.procs.get(&tgid).is_some_and(|p| p.maps.is_some());
        // A live parent's cached map may predate its libraries (read at a
        // stop of the dynamic loader's): read afresh, once per report.
        let creators: HashSet<i32> = map.keys().map(|k| k.0).filter(|&c| c != tgid).collect();
        for c in creators {
            if let Some(p) = self.procs.get_mut(&c) {
                if let Ok(fresh) = ModuleMap::read(c) {
                    p.maps = Some(fresh);
                }
            }
        }
        for ((creator, _), (stack, handles)) in map {
            let stack = stack.filter(|_| creator != tgid || old_maps);
            let frames = self.symbolize(creator, stack.as_ref());
            let mut kept = Vec::new();
            for c in handles {
                let event = Event {
                    report: "inherit",
                    kind: "implicit-crossing",
                    ty: &c.ty,
                    path: &c.description,
                    frames: FrameRef::all(&frames),
                };
                let facts = Facts {
                    fd: Some(c.fd),
                    arguments: &[],
                };
                if self
                    .opts
                    .suppressions
                    .matching_with(&event, &facts)
                    .is_some()
                {
                    self.crossings.suppressed += 1;
                    continue;
                }
                if self.opts.gen_suppressions && kept.is_empty() {
                    let name = format!("inherit-{}-{}", c.ty, c.origin.replace(' ', "-"));
                    rules.push_str(&crate::suppress::Rule::for_event(&name, &event, 4).render());
                }
                kept.push(c);
            }
            if kept.is_empty() {
                continue;
            }
            let group = CrossingGroup {
                pid: tgid,
                from: from.clone(),
                into: into.to_string(),
                created_in: creator,
                handles: kept,
                stack: frames.clone(),
            };
            text.push_str(&render(&group, &frames));
            groups.push(group);
        }
        if groups.is_empty() {
            return;
        }
        let n: usize = groups.iter().map(|g| g.handles.len()).sum();
        let head = format!(
            "handles: ==== inherit check: process {tgid} ({from}) execs {into}: {n} handle{} cross{} implicitly ====\n",
            if n == 1 { "" } else { "s" },
            if n == 1 { "es" } else { "" },
        );
        let mut out = head;
        out.push_str(&text);
        out.push_str(&rules);
        self.write_report(&out);
        self.crossings.groups.extend(groups);
    }
}
