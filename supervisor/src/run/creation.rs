//! Following creating calls: to their exit stop, or (single-threaded
//! tables) by predicting the new fd and confirming it at the next stop;
//! registering what they made, SCM_RIGHTS included.

use std::cell::RefCell;
use std::rc::Rc;

use handles_model::report::Title;
use handles_model::ObjType;

use super::fdtable::{ObjectFacts, Origin, Slot, Stack};
use super::procfs::{fd_exists, refine_socket};
use super::report::{ExceptionReport, Section};
use super::state::{ExitWork, Job, Predicted};
use super::syscalls::{Desc, Kind};
use super::tracer;
use super::tracer::{Regs, Resumed, Stopped};
use crate::json;
use crate::policy::{Action, Condition};

impl Job {
    /// Confirms a predicted creation at the thread's next stop.
    pub(super) fn settle(&mut self, tid: i32) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let Some(p) = t.predicted.take() else {
            return;
        };
        let tgid = t.tgid;
        // Each predicted number that is open now was made by the call (the
        // table is this thread's alone, and nothing ran in between).
        let fds: Vec<i32> = p.fds.into_iter().filter(|&n| fd_exists(tgid, n)).collect();
        let mut table = t.table.borrow_mut();
        for fd in fds {
            if table.get(fd).is_none() {
                table.open(fd, Origin::Syscall(p.name), p.stack.clone(), tgid);
            }
            t.memo.created(fd);
        }
    }

    /// Tries to let a creating call run without an exit stop. Returns false
    /// when the exit must be seen: a table shared by threads (another
    /// creation could take the predicted number), fd pressure (EMFILE must
    /// be caught to release the quarantine), new-* policies or a handle
    /// budget (they judge the created fd before the program sees it).
    pub(super) fn predict(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        regs: &Regs,
        stack: &Option<Stack>,
    ) -> bool {
        // With a shim in the process, fds it made without stopping here
        // are missing from our table: a prediction could name one of them.
        if self.opts.max_handles.is_some() || self.shim_injected {
            return false;
        }
        let new_policy = self.procs.get(&tgid).is_some_and(|p| {
            p.policy
                .entries()
                .any(|(c, e)| c.is_new() && e.action != Action::Allow)
        });
        if new_policy {
            return false;
        }
        let limit = self.cached_nofile(tgid).min(1024);
        let Some(t) = self.threads.get(&tid) else {
            return false;
        };
        if Rc::strong_count(&t.table) != 1 {
            return false;
        }
        let table = t.table.borrow();
        if table.used() as u64 + 16 >= limit {
            return false;
        }
        let a = tracer::args(regs);
        // A local array the kernel writes pipe fds into is gone by the next
        // stop, so pairs are predicted as numbers too.
        let fds = match desc.kind {
            Kind::Pipe | Kind::SocketPair => {
                let first = table.lowest_free(0);
                let mut second = first + 1;
                while table.tomb_src == Some(second) || table.get(second).is_some() {
                    second += 1;
                }
                vec![first, second]
            }
            Kind::Create | Kind::Dup | Kind::Signalfd => vec![table.lowest_free(0)],
            Kind::Fcntl => vec![table.lowest_free(a[2].min(i32::MAX as u64) as i32)],
            _ => return false,
        };
        drop(table);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.predicted = Some(Predicted {
                name: desc.name,
                stack: stack.clone(),
                fds,
            });
        }
        true
    }

    pub(super) fn follow_to_exit(
        &mut self,
        stop: Stopped,
        tgid: i32,
        desc: &'static Desc,
        regs: Regs,
    ) -> Resumed {
        let tid = stop.tid();
        let stack = self.capture_stack(&stop, tgid, Some(&regs));
        if self.predict(tid, tgid, desc, &regs, &stack) {
            return stop.cont();
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Some(ExitWork::Create {
                desc,
                entry: regs,
                stack,
            });
        }
        stop.to_exit()
    }

    pub(super) fn after_close_range(&mut self, stop: &Stopped, tgid: i32, entry: &Regs) {
        let tid = stop.tid();
        let (first, last, flags) = (entry.rdi as u32, entry.rsi as u32, entry.rdx as u32);
        const CLOSE_RANGE_UNSHARE: u32 = 2;
        const CLOSE_RANGE_CLOEXEC: u32 = 4;
        if flags & CLOSE_RANGE_UNSHARE != 0 {
            if let Some(t) = self.threads.get_mut(&tid) {
                let copy = t.table.borrow().unshared_copy();
                t.table = Rc::new(RefCell::new(copy));
            }
        }
        if flags & CLOSE_RANGE_CLOEXEC != 0 {
            return;
        }
        let stack = self.capture_stack(stop, tgid, Some(entry));
        let Some(t) = self.threads.get(&tid) else {
            return;
        };
        let mut table = t.table.borrow_mut();
        for fd in table.numbers() {
            if (fd as u32) < first || (fd as u32) > last {
                continue;
            }
            match table.get(fd) {
                Some(Slot::Tombstone(_)) => table.drop_tombstone(fd),
                Some(Slot::Open(_)) => table.close(
                    fd,
                    stack.clone(),
                    tgid,
                    ObjectFacts::default(),
                    "close_range",
                    false,
                ),
                None => {}
            }
        }
        if table
            .tomb_src
            .is_some_and(|s| (s as u32) >= first && (s as u32) <= last)
        {
            table.set_tomb_src(None);
        }
    }

    /// Registers the fds a successful creating call made.
    pub(super) fn after_create(
        &mut self,
        stop: Stopped,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        ret: i64,
        stack: Option<Stack>,
    ) -> Resumed {
        let tid = stop.tid();
        let a = tracer::args(entry);
        let mut new_fds: Vec<i32> = Vec::new();
        let mut origin = Origin::Syscall(desc.name);
        match desc.kind {
            Kind::Pipe | Kind::SocketPair => {
                let ptr = if desc.kind == Kind::Pipe { a[0] } else { a[3] };
                if let Ok(b) = stop.read_mem(ptr, 8) {
                    new_fds.push(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    new_fds.push(i32::from_ne_bytes([b[4], b[5], b[6], b[7]]));
                }
            }
            Kind::RecvMsg => {
                origin = Origin::Received;
                new_fds.extend(scm_rights(&stop, a[1]));
            }
            Kind::RecvMmsg => {
                origin = Origin::Received;
                for i in 0..(ret.clamp(0, 1024) as u64) {
                    // struct mmsghdr { struct msghdr (56 bytes); unsigned msg_len; } padded to 64.
                    new_fds.extend(scm_rights(&stop, a[1] + i * 64));
                }
            }
            Kind::DupTo => {
                let newfd = a[1] as i32;
                if ret == newfd as i64 && a[0] as i32 != newfd {
                    let t = &self.threads[&tid];
                    let mut table = t.table.borrow_mut();
                    match table.get(newfd) {
                        Some(Slot::Open(_)) => table.close(
                            newfd,
                            stack.clone(),
                            tgid,
                            ObjectFacts::default(),
                            "dup2 onto it",
                            false,
                        ),
                        Some(Slot::Tombstone(_)) => table.drop_tombstone(newfd),
                        None => {}
                    }
                    if table.tomb_src == Some(newfd) {
                        table.set_tomb_src(None);
                    }
                    drop(table);
                    new_fds.push(newfd);
                } else if a[0] as i32 == newfd {
                    // dup2(fd, fd) is a no-op.
                }
            }
            Kind::Bpf => {
                // Commands that return a new fd.
                const CREATES: &[u64] = &[0, 5, 7, 13, 14, 17, 18, 19, 28, 30, 33, 36];
                if CREATES.contains(&a[0]) && ret > 0 {
                    new_fds.push(ret as i32);
                }
            }
            _ => new_fds.push(ret as i32),
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            let mut table = t.table.borrow_mut();
            for &fd in &new_fds {
                if fd >= 0 {
                    table.open(fd, origin.clone(), stack.clone(), tgid);
                    t.memo.created(fd);
                }
            }
        }
        if let Some(max) = self.opts.max_handles {
            let count = self.threads[&tid].table.borrow().open_count();
            let first = self.procs.get(&tgid).is_some_and(|p| !p.over_budget);
            if count > max && first {
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.over_budget = true;
                }
                let newest = new_fds.last().copied();
                return self.over_budget(stop, tgid, desc, entry, count, max, newest);
            }
        }
        let new_policy_active = self.procs.get(&tgid).is_some_and(|p| {
            p.policy
                .entries()
                .any(|(c, e)| c.is_new() && e.action != Action::Allow)
        });
        if new_policy_active && !new_fds.is_empty() {
            return match self.new_policy(stop, tgid, desc, entry, &new_fds) {
                Ok(done) => done,
                Err(stop) => stop.cont(),
            };
        }
        stop.cont()
    }

    /// Applies the new-* conditions to freshly created fds. Gives the stop
    /// back when they have nothing to say.
    pub(super) fn new_policy(
        &mut self,
        stop: Stopped,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        fds: &[i32],
    ) -> Result<Resumed, Stopped> {
        let tid = stop.tid();
        if self.made_by_loader(&stop, tgid, entry.rip) {
            // The dynamic loader's opens (the libraries it maps, the
            // preloaded shim) are not the program's handles.
            return Err(stop);
        }
        let policy = self.policy_of(tgid);
        let mut worst: Option<(Action, &'static str, i32)> = None;
        for &fd in fds {
            let facts = self.object_facts(tgid, fd);
            let ty = ObjType::from_name(facts.ty).unwrap_or(ObjType::Unknown);
            let ty = refine_socket(tgid, fd, ty);
            let action = policy.action_for_new(ty);
            if action != Action::Allow {
                worst = Some((action, ty.name(), fd));
                break;
            }
        }
        let Some((action, ty, fd)) = worst else {
            return Err(stop);
        };
        let condition =
            Condition::for_new_object(ObjType::from_name(ty).unwrap_or(ObjType::Unknown));
        let deny = matches!(action, Action::Deny | Action::DenyException);
        if deny {
            let Ok(mut exit) = stop.regs() else {
                return Ok(stop.gone());
            };
            for &f in fds {
                match stop.inject_at_exit(
                    &exit,
                    libc::SYS_close,
                    [f as u64, self.cookie, 0, 0, 0, 0],
                    &mut self.deferred,
                ) {
                    Ok((_, e)) => exit = e,
                    Err(_) => return Ok(stop.gone()),
                }
                if let Some(t) = self.threads.get(&tid) {
                    t.table.borrow_mut().close(
                        f,
                        None,
                        tgid,
                        ObjectFacts::default(),
                        "policy deny",
                        false,
                    );
                }
            }
            let mut done = *entry;
            done.rax = (-(libc::EPERM as i64)) as u64;
            let _ = stop.set_regs(&done);
        }
        if matches!(
            action,
            Action::AllowException | Action::DenyException | Action::Kill
        ) {
            let regs = *entry;
            let frames = self.offending_stack(&stop, tgid, &regs);
            let report = ExceptionReport {
                handle: Some(format!("fd {fd}: new {ty}")),
                handle_json: Some(json::Handle {
                    ty: Some(ty.into()),
                    ..json::Handle::fd_only(fd, json::HandleState::Open)
                }),
                what: format!("creation of a {ty} handle"),
                outcome: if deny {
                    "the call fails with EPERM".into()
                } else {
                    "the call succeeds".into()
                },
                sections: vec![Section {
                    title: Title::Backtrace.to_string(),
                    frames,
                }],
                ..self.report_head(
                    condition.to_string(),
                    condition.to_string(),
                    Some(fd),
                    action.to_string(),
                    tid,
                    tgid,
                    desc,
                    entry,
                )
            };
            self.emit(&report);
            return Ok(self.raise(stop, tgid, action));
        }
        Ok(stop.cont())
    }
}

/// The fds a received message carries in SCM_RIGHTS control messages.
pub(crate) fn scm_rights(stop: &Stopped, msghdr: u64) -> Vec<i32> {
    let mut fds = Vec::new();
    // struct msghdr: name(8) namelen(4)+pad(4) iov(8) iovlen(8) control(8) controllen(8) flags(4)
    let Ok(control) = stop.read_u64(msghdr + 32) else {
        return fds;
    };
    let Ok(len) = stop.read_u64(msghdr + 40) else {
        return fds;
    };
    if control == 0 || len < 16 {
        return fds;
    }
    let Ok(buf) = stop.read_mem(control, (len as usize).min(64 * 1024)) else {
        return fds;
    };
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let mut l = [0u8; 8];
        l.copy_from_slice(&buf[off..off + 8]);
        let cmsg_len = u64::from_ne_bytes(l) as usize;
        let level = i32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        let ty = i32::from_ne_bytes([buf[off + 12], buf[off + 13], buf[off + 14], buf[off + 15]]);
        if cmsg_len < 16 || off + cmsg_len > buf.len() {
            break;
        }
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            for c in buf[off + 16..off + cmsg_len].chunks_exact(4) {
                fds.push(i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        off += (cmsg_len + 7) & !7;
    }
    fds
}

/// At a poll/ppoll exit: entries naming a hidden number (a tombstone) get
/// POLLNVAL, as a closed fd does natively, and the count is redone.
pub(crate) fn fix_poll(stop: &Stopped, entry: &Regs, exit: &Regs, hidden: &[i32]) {
    if (exit.rax as i64) < 0 {
        return;
    }
    let n = (entry.rsi as usize).min(4096);
    let Ok(mut buf) = stop.read_mem(entry.rdi, n * 8) else {
        return;
    };
    let mut ready = 0u64;
    for e in buf.chunks_exact_mut(8) {
        let fd = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
        if fd >= 0 && hidden.contains(&fd) {
            e[6..8].copy_from_slice(&libc::POLLNVAL.to_ne_bytes());
        }
        if i16::from_ne_bytes([e[6], e[7]]) != 0 {
            ready += 1;
        }
    }
    if stop.write_mem(entry.rdi, &buf).is_ok() {
        let mut done = *exit;
        done.rax = ready;
        let _ = stop.set_regs(&done);
    }
}
