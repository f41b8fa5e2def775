//! What a window reports at detach: the leak suspects (handles created
//! during the window and still open, grouped by creation stack, as the
//! `--leak-check` reports group them), the creations and closes per
//! stack, and the machine-readable reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::json;

use super::model::Stack;
use super::window::{Ended, Outcome, Window};
use super::AttachError;
use crate::backtrace::Frame;
use crate::inspect::{Inspector, Options};
use crate::run::leaks::{self, Leak, LeakGroup, ProcessLeaks};
use crate::run::output::{self, SerProcess};
use crate::suppress::{Event, Facts};
use handles_model::handle::{Fd, HandleValue};

/// The frame a stack is named by in one-line summaries: the innermost
/// Python frame when there is one (the interpreter's C frames below it are
/// the same for every call of `open`), else the innermost one outside the
/// C library and the dynamic loader (the program's call, not libc's
/// wrapper).
fn place(frames: &[Frame]) -> String {
    let system = |f: &&Frame| {
        f.module_name()
            .is_some_and(|m| m.starts_with("libc.so") || m.starts_with("ld-linux"))
    };
    let f = frames
        .iter()
        .find(|f| f.python)
        .or_else(|| frames.iter().find(|f| !system(f)))
        .or_else(|| frames.first());
    match f {
        None => "(no stack)".into(),
        Some(f) => {
            let mut s = f
                .function
                .clone()
                .unwrap_or_else(|| format!("{:#x}", f.addr));
            if let (Some(file), Some(line)) = (&f.file, f.line) {
                let _ = write!(s, " at {file}:{line}");
            } else if let Some(m) = f.module_name() {
                let _ = write!(s, " ({m}+{:#x})", f.module_offset);
            }
            s
        }
    }
}

struct StackLine {
    origin: &'static str,
    created: usize,
    closed: usize,
    frames: Vec<Frame>,
}

impl Window<'_> {
    /// The leak suspects of one live process, and with
    /// `--gen-suppressions` a rule for each group.
    fn suspects(&mut self, tgid: i32) -> Option<(ProcessLeaks, String)> {
        let proc_ = self.procs.get(&tgid)?;
        let name = proc_.name.clone();
        let open: Vec<(i32, &'static str, Stack)> = proc_
            .open
            .iter()
            .map(|(&fd, c)| (fd, c.origin, c.stack.clone()))
            .collect();
        // The values `handles PID` showed during the window.
        let mixer = self.tables.get(&tgid).map(|t| t.mixer());
        let generations = proc_.generations.clone();
        let snapshot = Inspector::new(Options {
            long: true,
            peers: false,
        })
        .read_task(tgid, tgid)
        .ok()?;
        let mut by_stack: BTreeMap<Vec<u64>, (Stack, Vec<Leak>)> = BTreeMap::new();
        for (fd, origin, stack) in open {
            // Gone without a close the window saw (an exec, a close in a
            // call it does not follow): not a suspect.
            let Some(h) = snapshot.handles.iter().find(|h| h.fd == fd) else {
                continue;
            };
            let generation = generations.get(&fd).copied();
            let handle = match (mixer, generation) {
                (Some(m), Some(g)) => HandleValue::encode(Fd(fd), g, m).0,
                _ => h.handle,
            };
            let leak = Leak {
                fd,
                handle,
                generation: mixer.and(generation),
                ty: h.ty.to_string(),
                koid: h.koid,
                dev: h.dev.clone(),
                rights: Some(h.rights),
                description: h.description.clone(),
                origin: origin.to_string(),
                inherited: false,
            };
            by_stack
                .entry(stack.to_vec())
                .or_insert_with(|| (stack.clone(), Vec::new()))
                .1
                .push(leak);
        }
        let mut groups = Vec::new();
        let mut suppressed = 0;
        let mut rules = String::new();
        for (_, (stack, mut handles)) in by_stack {
            handles.sort_by_key(|h| h.fd);
            let frames = self.symbolize(tgid, Some(&stack));
            let before = handles.len();
            handles.retain(|l| {
                let event = Event {
                    report: "leak",
                    kind: "leak",
                    ty: &l.ty,
                    path: &l.description,
                    frames: crate::suppress::FrameRef::all(&frames),
                };
                let facts = Facts {
                    fd: Some(l.fd),
                    arguments: &[],
                };
                self.opts
                    .suppressions
                    .matching_with(&event, &facts)
                    .is_none()
            });
            suppressed += before - handles.len();
            let Some(first) = handles.first() else {
                continue;
            };
            if self.opts.gen_suppressions {
                let event = Event {
                    report: "leak",
                    kind: "leak",
                    ty: &first.ty,
                    path: &first.description,
                    frames: crate::suppress::FrameRef::all(&frames),
                };
                let name = format!("leak-{}-{}", first.ty, first.origin.replace(' ', "-"));
                rules.push_str(
                    &crate::suppress::Rule::for_event(
                        &name,
                        &event,
                        crate::suppress::GENERATED_FRAMES,
                    )
                    .render(),
                );
            }
            groups.push(LeakGroup {
                handles,
                stack: frames,
            });
        }
        // The biggest group first: the likeliest leak.
        groups.sort_by_key(|g| std::cmp::Reverse(g.handles.len()));
        let leaks = ProcessLeaks {
            pid: tgid,
            name,
            groups,
            suppressed,
        };
        Some((leaks, rules))
    }

    fn stack_lines(&mut self, tgid: i32) -> Vec<StackLine> {
        let counts: Vec<(Vec<u64>, &'static str, usize, usize)> = self
            .procs
            .get(&tgid)
            .map(|p| {
                p.counts
                    .iter()
                    .map(|(k, c)| (k.clone(), c.origin, c.created, c.closed))
                    .collect()
            })
            .unwrap_or_default();
        let mut lines: Vec<StackLine> = counts
            .into_iter()
            .map(|(k, origin, created, closed)| StackLine {
                origin,
                created,
                closed,
                frames: self.symbolize(tgid, Some(&std::rc::Rc::new(k))),
            })
            .collect();
        lines.sort_by(|a, b| {
            (b.created - b.closed, b.created).cmp(&(a.created - a.closed, a.created))
        });
        lines
    }

    pub(super) fn finish(
        &mut self,
        ended: Ended,
        not_detached: usize,
    ) -> Result<Outcome, AttachError> {
        let seconds = self.started.elapsed().as_secs_f64();
        let mut text = String::new();
        let mut all_leaks = Vec::new();
        let mut json_stacks = Vec::new();
        let order = self.order.clone();
        for tgid in order {
            let Some(exited) = self.procs.get(&tgid).map(|p| p.exited) else {
                continue;
            };
            let name = self.procs[&tgid].name.clone();
            let lines = self.stack_lines(tgid);
            if exited {
                let _ = writeln!(
                    text,
                    "handles: process {tgid} ({name}) exited during the window"
                );
            } else if let Some((p, rules)) = self.suspects(tgid) {
                let frames: Vec<Vec<Frame>> = p.groups.iter().map(|g| g.stack.clone()).collect();
                let n = p.count();
                if n > 0 {
                    let _ = writeln!(
                        text,
                        "handles: ==== leak suspects: process {tgid} ({name}) holds {n} handle{} created during the {seconds:.1} s window ====",
                        if n == 1 { "" } else { "s" }
                    );
                    text.push_str(&leaks::render_groups(&p, &frames));
                    text.push_str(&rules);
                }
                all_leaks.push(p);
            }
            let created: usize = lines.iter().map(|l| l.created).sum();
            let closed: usize = lines.iter().map(|l| l.closed).sum();
            let _ = writeln!(
                text,
                "handles: ==== window summary: process {tgid} ({name}): {created} handle{} created, {closed} of them closed, per creation stack ====",
                if created == 1 { "" } else { "s" }
            );
            for l in &lines {
                let _ = writeln!(
                    text,
                    "handles: {:>6} created {:>6} closed {:>6} open  {}() in {}",
                    l.created,
                    l.closed,
                    l.created - l.closed,
                    l.origin,
                    place(&l.frames)
                );
                json_stacks.push(json!({
                    "pid": tgid,
                    "origin": l.origin,
                    "created": l.created,
                    "closed": l.closed,
                    "stack": l.frames.iter().map(crate::json::frame_value).collect::<Vec<_>>(),
                }));
            }
        }
        let why = match ended {
            Ended::Duration => "its duration elapsed".to_string(),
            Ended::Signal(s) => format!("signal {s}"),
            Ended::Exited => "the process exited".to_string(),
        };
        let _ = writeln!(
            text,
            "handles: detached from process {} after {seconds:.1} s (window ended: {why})",
            self.tgid
        );
        if not_detached > 0 {
            let _ = writeln!(
                text,
                "handles: {not_detached} thread{} did not stop for the detach in time; the kernel detaches them when handles exits",
                if not_detached == 1 { "" } else { "s" }
            );
        }
        text.push_str(&leaks::summary(&all_leaks));
        let _ = writeln!(
            text,
            "handles: ERROR SUMMARY: {} exception{} from {} context{} ({} suppressed)",
            self.exception_count,
            if self.exception_count == 1 { "" } else { "s" },
            self.exceptions.len(),
            if self.exceptions.len() == 1 { "" } else { "s" },
            self.suppressed,
        );
        let _ = std::io::stderr().write_all(text.as_bytes());

        let leaked: usize = all_leaks.iter().map(|p| p.count()).sum();
        self.write_machine_reports(&all_leaks, seconds, &why, json_stacks)?;
        Ok(Outcome {
            ended,
            leaks: leaked,
            exceptions: self.exception_count,
            not_detached,
        })
    }

    fn write_machine_reports(
        &self,
        leaks: &[ProcessLeaks],
        seconds: f64,
        why: &str,
        stacks: Vec<serde_json::Value>,
    ) -> Result<(), AttachError> {
        let write = |path: &std::path::Path, v: &serde_json::Value| {
            let text = serde_json::to_string_pretty(v).unwrap_or_default();
            std::fs::write(path, text + "\n")
                .map_err(|e| AttachError::Other(format!("writing {}: {e}", path.display())))
        };
        if let Some(p) = &self.opts.report {
            let command: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", self.tgid))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let procs: Vec<SerProcess> = self
                .order
                .iter()
                .filter_map(|t| {
                    let p = self.procs.get(t)?;
                    Some(SerProcess {
                        pid: *t,
                        parent: p.parent,
                        names: vec![p.name.clone()],
                        exit: None,
                    })
                })
                .collect();
            let mut v = output::json_report(
                &command,
                None,
                &self.exceptions,
                leaks,
                &procs,
                self.suppressed,
            );
            v["attach"] = json!({
                "pid": self.tgid,
                "seconds": seconds,
                "ended": why,
                "stacks": stacks,
            });
            write(p, &v)?;
        }
        if let Some(p) = &self.opts.sarif {
            let v = output::sarif(env!("CARGO_PKG_VERSION"), &self.exceptions, leaks);
            write(p, &v)?;
        }
        Ok(())
    }
}
