//! Exception reports: built (bad-handle, wrong-object, max-handles),
//! counted per context, written, held for a close sweep, and the
//! consequence delivered to the offender (SIGKILL, SIGTRAP, a stop for a
//! debugger).

use std::path::PathBuf;

use handles_model::judge::{self, Moment};
use handles_model::report::{EarlierTitle, HandleLine, Lossy, Title};
use handles_model::ObjType;

use super::fdtable::{Origin, Slot};
use super::leaks::LeakMode;
use super::options::{exit_json, OnException, RunError};
use super::output::{self, SerException, SerProcess};
use super::procfs::comm;
use super::report::{format_syscall, ExceptionReport, Section};
use super::signals;
use super::state::{HeldReport, Job};
use super::syscalls::Desc;
use super::tracer::{self, Regs, Resumed, Stopped};
use crate::backtrace::Frame;
use crate::json;
use crate::policy::Action;
use crate::suppress::{Event, FrameRef};

impl Job {
    /// Writes an exception report and counts it. Reports are counted per
    /// context (the offending stack and the stack that closed the handle,
    /// as valgrind's are): the first of a context is written in full,
    /// later ones only counted, in the summary and in `--report`/`--sarif`.
    pub(super) fn emit(&mut self, report: &ExceptionReport) {
        self.exceptions += 1;
        let key = report.context_key();
        if let Some(&i) = self.contexts.get(&key) {
            if let Some(e) = self.exception_list.get_mut(i) {
                e.count += 1;
            }
            return;
        }
        self.contexts.insert(key, self.exception_list.len());
        let mut text = report.render();
        if self.opts.gen_suppressions {
            // Printed bare after the report, ready to paste into a
            // suppressions file, as after a leak report.
            text.push_str(&self.rule_for(report));
        }
        self.write_report(&text);
        self.exception_list.push(SerException::first_of(report));
    }

    /// valgrind's closing line, in every mode, so that a CI log always
    /// ends with a count.
    pub(super) fn error_summary(&self) -> String {
        let summary = handles_model::report::Summary {
            exceptions: self.exceptions as u64,
            contexts: self.contexts.len() as u64,
            suppressed: self.suppressed as u64,
            this_process: false,
        };
        format!("{summary}\n")
    }

    /// `--gen-suppressions`: the rule that matches exactly this report.
    /// Its object type is the one suppression matching sees
    /// (`bad_handle_report`):
    /// the closed handle's, which the table still holds at this point.
    fn rule_for(&self, report: &ExceptionReport) -> String {
        let ty = match (report.condition.as_str(), report.fd) {
            ("bad-handle", Some(fd)) => self
                .threads
                .get(&report.tid)
                .and_then(|t| t.table.borrow().closed_info(fd).map(|c| c.facts.ty)),
            _ => None,
        };
        // The first section is the offending call's stack.
        let frames: Vec<FrameRef<'_>> = report
            .sections
            .first()
            .map(|s| FrameRef::all(&s.frames))
            .unwrap_or_default();
        crate::suppress::exception_rule(&report.condition, &report.kind, ty.unwrap_or(""), &frames)
    }

    /// `--report` and `--sarif`, written once the job is over.
    pub(super) fn write_machine_reports(&self) -> Result<(), RunError> {
        let write = |path: &PathBuf, v: &serde_json::Value| -> Result<(), RunError> {
            let text = serde_json::to_string_pretty(v).unwrap_or_default();
            std::fs::write(path, text + "\n").map_err(|e| RunError::Log {
                path: path.clone(),
                source: e,
            })
        };
        if let Some(p) = &self.opts.report {
            let mut command = vec![self.opts.program.to_string_lossy().into_owned()];
            command.extend(
                self.opts
                    .args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned()),
            );
            let exit = self.root_exit.map(exit_json);
            let procs: Vec<SerProcess> = self.tree.values().cloned().collect();
            let mut v = output::json_report(
                &command,
                exit,
                &self.exception_list,
                &self.leak_reports,
                &procs,
                self.suppressed,
            );
            if self.opts.inherit_check {
                super::inherit::add_to_json(&mut v, &self.crossings);
            }
            if self.opts.leak_mode != LeakMode::Off {
                super::pertest::add_to_json(&mut v, &self.test_leaks);
            }
            write(p, &v)?;
        }
        if let Some(p) = &self.opts.sarif {
            let mut v = output::sarif(
                env!("CARGO_PKG_VERSION"),
                &self.exception_list,
                &self.leak_reports,
            );
            if self.opts.inherit_check {
                super::inherit::add_to_sarif(&mut v, &self.crossings);
            }
            if self.opts.leak_mode != LeakMode::Off {
                super::pertest::add_to_sarif(&mut v, &self.test_leaks);
            }
            write(p, &v)?;
        }
        Ok(())
    }

    /// After a report: kill, trap, or stop the offender, and resume it.
    pub(super) fn raise(&mut self, stop: Stopped, tgid: i32, action: Action) -> Resumed {
        self.deliver(stop.tid(), tgid, action);
        stop.cont()
    }

    /// The consequence of an exception, without resuming: SIGKILL, a
    /// pending SIGTRAP (delivered when the call returns, as a synchronous
    /// exception would be), a stop for the debugger, or nothing
    /// (`--on-exception=continue`).
    pub(super) fn deliver(&mut self, tid: i32, tgid: i32, action: Action) {
        match action {
            Action::Kill => {
                // SAFETY: kill(2) of one of our tracees.
                unsafe { libc::kill(tgid, libc::SIGKILL) };
            }
            Action::AllowException | Action::DenyException => match self.opts.on_exception {
                OnException::Trap => {
                    // SAFETY: tgkill to one of our tracees.
                    unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, libc::SIGTRAP) };
                }
                OnException::Stop => {
                    if let Some(p) = self.procs.get_mut(&tgid) {
                        p.detaching = true;
                    }
                    // SAFETY: kill(2) of one of our tracees.
                    unsafe { libc::kill(tgid, libc::SIGSTOP) };
                    if self.stopped.is_empty() {
                        signals::install_tick();
                    }
                    if !self.stopped.contains(&tgid) {
                        self.stopped.push(tgid);
                    }
                    // Only the root is our child: its exit reaches us even
                    // detached; another process's does not.
                    let waits_for = if tgid == self.root {
                        format!(
                            "the job's other processes, and process {tgid} once it is resumed, to exit"
                        )
                    } else {
                        "the job's other processes to exit".to_string()
                    };
                    let me = std::process::id();
                    self.write_report(&format!(
                        "handles: process {tgid} is stopped and detached; attach a debugger with: gdb -p {tgid}\n\
                         handles:     or resume it without one: kill -CONT {tgid} (its fd syscalls then fail \
                         with ENOSYS: no supervisor serves its seccomp filter any more)\n\
                         handles: waiting for {waits_for}; Ctrl-C or SIGTERM to handles (pid {me}) ends the \
                         wait: the other processes are killed, {tgid} stays stopped, and handles exits \
                         with 128 + the signal (130, 143)\n"
                    ));
                }
                OnException::Continue => {}
            },
            _ => {}
        }
    }

    /// The fields every exception report shares: who, where, which call.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report_head(
        &self,
        condition: String,
        kind: String,
        fd: Option<i32>,
        action: String,
        tid: i32,
        tgid: i32,
        desc: &Desc,
        regs: &Regs,
    ) -> ExceptionReport {
        ExceptionReport {
            condition,
            kind,
            fd,
            action,
            pid: tgid,
            tid,
            process_name: self
                .procs
                .get(&tgid)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            thread_name: comm(tid),
            syscall: format_syscall(
                desc.name,
                &tracer::args(regs),
                desc.nargs as usize,
                desc.fd_args | desc.dirfd_args,
            ),
            handle: None,
            handle_json: None,
            what: String::new(),
            outcome: String::new(),
            sections: Vec::new(),
        }
    }

    /// The report of a close the judge held is due: no sweep followed.
    /// Written now; with `deliver`, the action's consequence is delivered
    /// to the thread at its current call (at the thread's exit or exec
    /// there is nobody left to deliver it to).
    pub(super) fn flush_held(&mut self, tid: i32, deliver: bool) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let tgid = t.tgid;
        let Some(mut h) = t.held.take() else {
            return;
        };
        if !deliver {
            h.report.outcome.clear();
            // Writing into a String cannot fail.
            let _ = judge::write_outcome(
                &mut h.report.outcome,
                h.action,
                Moment::HeldEnded,
                self.opts.on_exception,
            );
        }
        self.emit(&h.report);
        if deliver {
            self.deliver(tid, tgid, h.action);
        }
    }

    /// Keeps the report of a close the judge held, for the thread's next
    /// close (or its end) to write (`flush_held`); None: suppressed.
    pub(super) fn keep_held(&mut self, tid: i32, report: Option<ExceptionReport>, action: Action) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.held = report.map(|report| Box::new(HeldReport { report, action }));
        }
    }

    /// The bad-handle report of a call, or None when a suppression matches
    /// it (counted).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bad_handle_report(
        &mut self,
        tid: i32,
        tgid: i32,
        regs: &Regs,
        desc: &'static Desc,
        fd: i32,
        kind: judge::Kind,
        action: Action,
        moment: Moment,
        quarantined: bool,
        backtrace: Vec<Frame>,
    ) -> Option<ExceptionReport> {
        let (closed_info, value) = {
            let t = self.threads.get(&tid)?;
            let table = t.table.borrow();
            let info = table.closed_info(fd).cloned();
            let value = info.as_ref().map(|c| table.value_of(fd, c.generation));
            (info, value)
        };
        let handle = match (&closed_info, &value) {
            (Some(c), Some(v)) => HandleLine::Closed {
                value: v,
                fd,
                ty: c.facts.ty,
                koid: c.facts.koid,
                name: c.facts.target.as_bytes(),
            },
            _ => HandleLine::NotOpen { fd },
        };
        let mut line = String::new();
        // Writing into a String cannot fail.
        let _ = handle.write_to(&mut Lossy(&mut line));
        let handle = line;
        let handle_json = match (&closed_info, &value) {
            (Some(c), Some(v)) => json::Handle {
                value: Some(v.0),
                generation: Some(c.generation),
                ty: (!c.facts.ty.is_empty()).then_some(c.facts.ty.into()),
                koid: (c.facts.koid != 0).then_some(c.facts.koid),
                description: (!c.facts.target.is_empty()).then(|| c.facts.target.clone().into()),
                ..json::Handle::fd_only(fd, json::HandleState::Closed)
            },
            _ => json::Handle::fd_only(fd, json::HandleState::NotOpen),
        };
        let mut outcome = String::new();
        // Writing into a String cannot fail.
        let _ = judge::write_outcome(&mut outcome, action, moment, self.opts.on_exception);
        let suppressed = {
            let event = Event {
                report: "bad-handle",
                kind: kind.name(),
                ty: closed_info.as_ref().map_or("", |c| c.facts.ty),
                path: closed_info.as_ref().map_or("", |c| c.facts.target.as_str()),
                frames: FrameRef::all(&backtrace),
            };
            self.opts.suppressions.matching(&event).is_some()
        };
        if suppressed {
            self.suppressed += 1;
            return None;
        }
        let mut sections = vec![Section {
            title: Title::Backtrace.to_string(),
            frames: backtrace,
        }];
        if let Some(c) = &closed_info {
            let frames = self.symbolize(c.closer, c.closed.as_ref());
            sections.push(Section {
                title: Title::Closed {
                    how: Some(c.how),
                    pid: c.closer,
                }
                .to_string(),
                frames,
            });
            let frames = self.symbolize(c.creator, c.created.as_ref());
            let origin = match &c.origin {
                Origin::Syscall(s) => format!("opened by {s}()"),
                Origin::Inherited => "inherited".into(),
                Origin::Received => "received through SCM_RIGHTS".into(),
                Origin::Discovered => "found open".into(),
                Origin::Shim => "opened through the shim".into(),
            };
            sections.push(Section {
                title: Title::Opened {
                    origin: &origin,
                    pid: c.creator,
                }
                .to_string(),
                frames,
            });
            if let Some(e) = c
                .earlier
                .as_deref()
                .filter(|e| e.generation != c.generation)
            {
                let v = self
                    .threads
                    .get(&tid)
                    .map(|t| t.table.borrow().value_of(fd, e.generation));
                let unknown = "a handle";
                let value: &dyn std::fmt::Display = match &v {
                    Some(v) => v,
                    None => &unknown,
                };
                let title = EarlierTitle {
                    handle: HandleLine::Closed {
                        value,
                        fd,
                        ty: e.facts.ty,
                        koid: 0,
                        name: e.facts.target.as_bytes(),
                    },
                    how: Some(e.how),
                    pid: e.closer,
                };
                let mut text = String::new();
                // Writing into a String cannot fail.
                let _ = title.write_to(&mut Lossy(&mut text));
                let frames = self.symbolize(e.closer, e.closed.as_ref());
                // A handle the dynamic loader opened and closed itself (the
                // library cache, a library it mapped) was never the
                // program's to keep a copy of: naming it would only add
                // noise to every report at a low number. The shim never
                // records those (ld.so makes its own syscalls), so every
                // mode agrees.
                if !frames.first().is_some_and(in_dynamic_loader) {
                    sections.push(Section {
                        title: text,
                        frames,
                    });
                }
            }
        }
        Some(ExceptionReport {
            handle: Some(handle),
            handle_json: Some(handle_json),
            what: kind.sentence(quarantined).into(),
            outcome,
            sections,
            ..self.report_head(
                "bad-handle".into(),
                kind.name().into(),
                Some(fd),
                action.to_string(),
                tid,
                tgid,
                desc,
                regs,
            )
        })
    }

    /// The wrong-object condition: a call on an fd of a type it cannot work
    /// on (a socket call on a file, epoll_ctl on a pipe, ...).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wrong_object(
        &mut self,
        stop: Stopped,
        tgid: i32,
        regs: Regs,
        desc: &'static Desc,
        fd: i32,
        ty: ObjType,
        expected: &[ObjType],
        errno: i32,
        action: Action,
    ) -> Resumed {
        let tid = stop.tid();
        let deny = matches!(action, Action::Deny | Action::DenyException | Action::Kill);
        if matches!(
            action,
            Action::AllowException | Action::DenyException | Action::Kill
        ) {
            let frames = self.offending_stack(&stop, tgid, &regs);
            let mut handle = json::Handle {
                ty: Some(ty.name().into()),
                ..json::Handle::fd_only(fd, json::HandleState::Open)
            };
            let value = {
                let table = self.threads[&tid].table.borrow();
                match table.get(fd) {
                    Some(Slot::Open(h)) => {
                        let v = table.value_of(fd, h.generation);
                        handle.value = Some(v.0);
                        handle.generation = Some(h.generation);
                        format!("{v} (fd {fd})")
                    }
                    _ => format!("fd {fd}"),
                }
            };
            let wanted: Vec<&str> = expected.iter().map(|t| t.name()).collect();
            let report = ExceptionReport {
                handle: Some(format!("{value}: {}", ty.name())),
                handle_json: Some(handle),
                what: format!(
                    "{}() on a {} handle; it needs a {}",
                    desc.name,
                    ty.name(),
                    wanted.join(" or ")
                ),
                outcome: if deny {
                    format!(
                        "the call fails with {:?} without running",
                        nix::errno::Errno::from_raw(errno)
                    )
                } else {
                    "the call runs".into()
                },
                sections: vec![Section {
                    title: Title::Backtrace.to_string(),
                    frames,
                }],
                ..self.report_head(
                    "wrong-object".into(),
                    "wrong-object".into(),
                    Some(fd),
                    action.to_string(),
                    tid,
                    tgid,
                    desc,
                    &regs,
                )
            };
            self.emit(&report);
        }
        if deny {
            stop.skip_with(regs, errno);
        }
        self.raise(stop, tgid, action)
    }

    /// `--max-handles`: the process holds more handles than its budget, the
    /// sign of a runaway leak long before EMFILE. Reported once per process,
    /// as an exception (SIGTRAP follows).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn over_budget(
        &mut self,
        stop: Stopped,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        count: usize,
        max: usize,
        fd: Option<i32>,
    ) -> Resumed {
        let tid = stop.tid();
        let frames = self.offending_stack(&stop, tgid, entry);
        let report = ExceptionReport {
            handle: fd.map(|f| format!("fd {f}: the newest")),
            handle_json: fd.map(|f| json::Handle::fd_only(f, json::HandleState::Open)),
            what: format!(
                "the process holds {count} handles, over its budget of {max} (--max-handles)"
            ),
            outcome: format!("the call succeeds; {}", self.opts.on_exception.words()),
            sections: vec![Section {
                title: Title::Backtrace.to_string(),
                frames,
            }],
            ..self.report_head(
                "max-handles".into(),
                "max-handles".into(),
                fd,
                "allow-exception".into(),
                tid,
                tgid,
                desc,
                entry,
            )
        };
        self.emit(&report);
        self.raise(stop, tgid, Action::AllowException)
    }
}

/// Whether a frame is in glibc's dynamic loader.
fn in_dynamic_loader(f: &Frame) -> bool {
    f.module
        .as_deref()
        .and_then(|m| m.rsplit('/').next())
        .is_some_and(|name| name.starts_with("ld-linux"))
}
