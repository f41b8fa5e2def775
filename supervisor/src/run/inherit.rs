//! `--inherit-check`: at every exec in the job, the handles that cross
//! into the new image implicitly (the rule is `handles_model::inherit`,
//! docs/inherit.md). This module gathers the facts at the exec event and
//! reports; it decides nothing itself.

use handles_model::inherit::{self as rule, Blame, Record, Verdict};
use handles_model::table::how;
use serde::Serialize;
use serde_json::{json, Value};

use super::job::*;
use super::shimtable::{self, ShimSays};
use crate::suppress::Facts;

/// One handle that crossed an exec implicitly.
#[derive(Clone, Debug)]
pub struct CrossedHandle {
    pub fd: i32,
    pub handle: u32,
    pub ty: String,
    pub koid: u64,
    pub description: String,
    /// The call that made it (`socket`, `openat`, ...).
    pub origin: String,
}

impl CrossedHandle {
    /// The handle as every JSON document shows one.
    pub fn json(&self) -> crate::json::Handle<'_> {
        crate::json::Handle {
            value: Some(self.handle),
            ty: Some(self.ty.as_str().into()),
            koid: Some(self.koid),
            description: Some(self.description.as_str().into()),
            ..crate::json::Handle::fd_only(self.fd, crate::json::HandleState::Open)
        }
    }
}

impl Serialize for CrossedHandle {
    /// `{"handle": HANDLE, "origin"}` (docs/report.md), as a leak's.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("handle", &self.json())?;
        m.serialize_entry("origin", &self.origin)?;
        m.end()
    }
}

/// Handles that crossed one exec and share one creation stack.
#[derive(Clone, Debug, Serialize)]
pub struct CrossingGroup {
    /// The process that exec'd.
    pub pid: i32,
    /// Its image before the exec.
    pub from: String,
    /// The program it exec'd (what the handles crossed into).
    pub into: String,
    /// The process whose record made them (the exec'ing one, or the
    /// parent it was forked from).
    pub created_in: i32,
    pub handles: Vec<CrossedHandle>,
    #[serde(serialize_with = "crate::json::serialize_frames")]
    pub stack: Vec<crate::backtrace::Frame>,
}

/// What the inherit check found in the whole job.
#[derive(Debug, Default)]
pub struct Crossings {
    pub groups: Vec<CrossingGroup>,
    pub suppressed: usize,
}

impl Crossings {
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.handles.len()).sum()
    }
}

/// Handles that crossed, by (creating process, creation stack).
type Group = (Option<Stack>, Vec<CrossedHandle>);

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

/// One group's text: the creating stack, then its handles.
fn render(g: &CrossingGroup, frames: &[crate::backtrace::Frame]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut types: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let origin = g.handles.first().map_or("?", |h| h.origin.as_str());
    let by = if origin.contains(' ') {
        origin.to_string()
    } else {
        format!("{origin}()")
    };
    let _ = writeln!(
        s,
        "handles: {} handle{} ({}) created by {by} in process {} at:",
        g.handles.len(),
        if g.handles.len() == 1 { "" } else { "s" },
        types.join(", "),
        g.created_in,
    );
    if frames.is_empty() {
        let _ = writeln!(s, "handles:     (no creation stack recorded)");
    }
    for f in frames {
        let _ = writeln!(s, "handles:     {f}");
    }
    for h in &g.handles {
        let _ = writeln!(
            s,
            "handles:   {:#010x} fd {} {} koid {} {} crossed into {}",
            h.handle, h.fd, h.ty, h.koid, h.description, g.into
        );
    }
    s
}

/// `INHERIT SUMMARY: N handles crossed M execs implicitly`.
pub fn summary(c: &Crossings) -> String {
    let n = c.count();
    let execs: std::collections::HashSet<(i32, &str)> =
        c.groups.iter().map(|g| (g.pid, g.into.as_str())).collect();
    let mut s = format!(
        "handles: INHERIT SUMMARY: {n} handle{} crossed {} exec{} implicitly",
        if n == 1 { "" } else { "s" },
        execs.len(),
        if execs.len() == 1 { "" } else { "s" },
    );
    if c.suppressed > 0 {
        s.push_str(&format!(" ({} suppressed)", c.suppressed));
    }
    s.push('\n');
    s
}

/// The JSON report's `crossings` (added beside what `output::json_report`
/// writes; docs/report.md).
pub fn add_to_json(report: &mut Value, c: &Crossings) {
    report["crossings"] = json!(c.groups);
    if let Some(s) = report.get_mut("summary") {
        s["implicit_crossings"] = json!(c.count());
    }
}

/// SARIF: one `implicit-crossing` result per group, located at its
/// creation frame (the results the frame serializer already places).
pub fn add_to_sarif(sarif: &mut Value, c: &Crossings) {
    let Some(results) = super::output::sarif_rule(
        sarif,
        "implicit-crossing",
        "A handle that crossed an exec without O_CLOEXEC and without being passed on purpose",
    ) else {
        return;
    };
    for g in &c.groups {
        let fds: Vec<i32> = g.handles.iter().map(|h| h.fd).collect();
        let types: Vec<&str> = g.handles.iter().map(|h| h.ty.as_str()).collect();
        let r = json!({
            "ruleId": "implicit-crossing",
            "level": "error",
            "message": { "text": format!(
                "{} handle(s) ({}) created by {}() in process {} crossed into {} implicitly (exec by process {} ({})): fds {:?}",
                g.handles.len(),
                types.join(", "),
                g.handles.first().map_or("?", |h| h.origin.as_str()),
                g.created_in,
                g.into,
                g.pid,
                g.from,
                fds
            ) },
            "stacks": [super::output::sarif_stack("created at", &g.stack)],
            "properties": {
                "pid": g.pid,
                "into": g.into,
                "handles": g.handles.iter().map(|h| crate::json::handle_value(&h.json())).collect::<Vec<_>>(),
            },
        });
        results.push(super::output::with_location(r, &g.stack));
    }
}
