//! The job policy's conditions other than bad-handle, applied in the
//! window as `handles run --no-shim` applies them: every syscall stops
//! there anyway, so nothing needs a seccomp filter.
//!
//! - `new-*`: judged at the exit stop of a creating call, on the object
//!   the new fd refers to (an AF_UNIX socket is a channel). `deny` closes
//!   the new fds from inside the process and makes the call fail with
//!   EPERM, as under `handles run`.
//! - `wrong-object`: judged at the entry stop of a call that needs one
//!   kind of object (socket calls, epoll, timerfd, inotify, pidfd,
//!   getdents); `deny` makes it fail with the kernel's errno without
//!   running.
//!
//! The dynamic loader's opens (the libraries a `dlopen` maps) are not the
//! program's handles: new-* does not judge them, as under `handles run`.

use handles_model::objtype::ObjType;

use super::window::{skip_with, Window};
use crate::backtrace::Frame;
use crate::policy::{Action, Condition};
use crate::run::report::{format_syscall, ExceptionReport, Section};
use crate::run::syscalls::Desc;
use crate::run::tracer::{self, Deferred};
use crate::run::{expected_object, object_facts_at, refine_socket};

/// The type of `fd` in `tgid`, as the job's checks classify it.
fn object_type(tgid: i32, fd: i32) -> ObjType {
    let facts = object_facts_at(None, tgid, fd);
    let ty = ObjType::from_name(facts.ty).unwrap_or(ObjType::Unknown);
    refine_socket(tgid, fd, ty)
}

/// Whether an action reports (and then raises).
fn reports(action: Action) -> bool {
    matches!(
        action,
        Action::AllowException | Action::DenyException | Action::Kill
    )
}

/// What an exception's report says of a call, beyond the condition's own
/// words.
struct Call<'d> {
    desc: &'d Desc,
    args: [u64; 6],
    fd: i32,
}

impl Window<'_> {
    /// Whether any new-* condition is not `allow` (else creations are not
    /// classified: it costs a /proc lookup per new fd).
    pub(super) fn judges_new(&self) -> bool {
        Condition::NEW
            .iter()
            .any(|&c| self.opts.policy.get(c).action != Action::Allow)
    }

    /// At the exit stop of a call that created `fds`: the new-* policy.
    /// Returns whether the creation was denied (the fds are closed again
    /// and the call fails with EPERM).
    pub(super) fn new_policy(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        args: [u64; 6],
        fds: &[i32],
    ) -> bool {
        if self.made_by_loader(tid, tgid) {
            return false;
        }
        let policy = self.opts.policy;
        let Some((action, ty, fd)) = fds.iter().find_map(|&fd| {
            let ty = object_type(tgid, fd);
            let action = policy.action_for_new(ty);
            (action != Action::Allow).then_some((action, ty, fd))
        }) else {
            return false;
        };
        let deny = matches!(action, Action::Deny | Action::DenyException | Action::Kill);
        let condition = Condition::for_new_object(ty).name();
        let mut skipped = false;
        if reports(action) {
            let frames = self.offending_frames(tid, tgid);
            skipped = self.suppressed_exception(condition, condition, &frames);
            if !skipped {
                let report = self.condition_report(
                    tid,
                    tgid,
                    condition,
                    action,
                    &Call { desc, args, fd },
                    format!("fd {fd}: new {}", ty.name()),
                    format!("creation of a {} handle", ty.name()),
                    if deny {
                        "the call fails with EPERM".into()
                    } else {
                        "the call succeeds".into()
                    },
                    frames,
                );
                self.emit(&report);
            }
        }
        if deny {
            self.undo_creation(tid, fds);
        }
        if !skipped {
            self.raise(tid, tgid, action);
        }
        deny
    }

    /// Whether the call `tid` stopped in was made from the dynamic loader
    /// (its `syscall` instruction lies in ld.so's mapping).
    fn made_by_loader(&mut self, tid: i32, tgid: i32) -> bool {
        let Ok(regs) = tracer::getregs(tid) else {
            return false;
        };
        let Some(p) = self.procs.get_mut(&tgid) else {
            return false;
        };
        if p.maps.is_none() {
            p.maps = crate::backtrace::ModuleMap::read(tgid).ok();
        }
        p.maps
            .as_ref()
            .and_then(|m| m.mapping_of(regs.rip))
            .and_then(|m| m.path.rsplit('/').next())
            .is_some_and(|name| name.starts_with("ld-linux"))
    }

    /// Closes `fds` from inside the process at the exit stop of the call
    /// that made them, and makes that call return EPERM.
    fn undo_creation(&mut self, tid: i32, fds: &[i32]) {
        let Ok(exit) = tracer::getregs(tid) else {
            return;
        };
        let mut regs = exit;
        let mut d = Deferred::default();
        for &f in fds {
            match tracer::inject_at_exit(
                tid,
                &regs,
                libc::SYS_close,
                [f as u64, 0, 0, 0, 0, 0],
                &mut d,
            ) {
                Ok((_, after)) => regs = after,
                Err(_) => break,
            }
        }
        let mut done = exit;
        done.rax = (-(libc::EPERM as i64)) as u64;
        let _ = tracer::setregs(tid, &done);
        self.take_deferred(d);
    }

    /// At the entry stop of `desc`: the wrong-object policy. Returns
    /// whether the call was skipped (it fails without running).
    pub(super) fn wrong_object(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        args: [u64; 6],
    ) -> bool {
        let action = self.opts.policy.get(Condition::WrongObject).action;
        if action == Action::Allow {
            return false;
        }
        let Some((expected, errno)) = expected_object(desc.name) else {
            return false;
        };
        let fd = args[0] as i32;
        if fd < 0 || !super::model::fd_exists(tgid, fd) {
            return false;
        }
        let ty = object_type(tgid, fd);
        if expected.contains(&ty) {
            return false;
        }
        let deny = matches!(action, Action::Deny | Action::DenyException | Action::Kill);
        let condition = Condition::WrongObject.name();
        let mut skipped = false;
        if reports(action) {
            let frames = self.offending_frames(tid, tgid);
            skipped = self.suppressed_exception(condition, condition, &frames);
            if !skipped {
                let wanted: Vec<&str> = expected.iter().map(|t| t.name()).collect();
                let report = self.condition_report(
                    tid,
                    tgid,
                    condition,
                    action,
                    &Call { desc, args, fd },
                    format!("fd {fd}: {}", ty.name()),
                    format!(
                        "{}() on a {} handle; it needs a {}",
                        desc.name,
                        ty.name(),
                        wanted.join(" or ")
                    ),
                    if deny {
                        format!(
                            "the call fails with {:?} without running",
                            nix::errno::Errno::from_raw(errno)
                        )
                    } else {
                        "the call runs".into()
                    },
                    frames,
                );
                self.emit(&report);
            }
        }
        if deny {
            skip_with(tid, errno);
        }
        if !skipped {
            self.raise(tid, tgid, action);
        }
        deny
    }

    /// The offending thread's stack, symbolized.
    fn offending_frames(&mut self, tid: i32, tgid: i32) -> Vec<Frame> {
        let here = self.stack(tid, tgid);
        self.symbolize(tgid, here.as_ref())
    }

    #[allow(clippy::too_many_arguments)]
    fn condition_report(
        &self,
        tid: i32,
        tgid: i32,
        condition: &str,
        action: Action,
        call: &Call<'_>,
        handle: String,
        what: String,
        outcome: String,
        frames: Vec<Frame>,
    ) -> ExceptionReport {
        ExceptionReport {
            condition: condition.into(),
            kind: condition.into(),
            fd: Some(call.fd),
            action: action.name().into(),
            pid: tgid,
            tid,
            process_name: self
                .procs
                .get(&tgid)
                .map_or_else(|| "?".into(), |p| p.name.clone()),
            thread_name: super::model::comm(tgid, tid),
            syscall: format_syscall(
                call.desc.name,
                &call.args,
                call.desc.nargs as usize,
                call.desc.fd_args | call.desc.dirfd_args,
            ),
            handle: Some(handle),
            handle_json: None,
            what,
            outcome: format!("{outcome}; {}", self.then(action)),
            sections: vec![Section {
                title: "backtrace".into(),
                frames,
            }],
        }
    }
}
