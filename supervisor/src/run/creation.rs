//! Following creating calls: to their exit stop, or (single-threaded
//! tables) by predicting the new fd and confirming it at the next stop;
//! registering what they made, SCM_RIGHTS included.

use super::job::*;

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

    pub(super) fn follow_to_exit(&mut self, tid: i32, tgid: i32, desc: &'static Desc, regs: Regs) {
        let stack = self.capture_stack(tid, tgid, Some(&regs));
        if self.predict(tid, tgid, desc, &regs, &stack) {
            self.resume(tid, None);
            return;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Some(ExitWork::Create {
                desc,
                entry: regs,
                stack,
            });
        }
        let _ = ptrace::syscall(Pid::from_raw(tid), None);
    }

    pub(super) fn on_syscall_exit(&mut self, tid: i32) {
        let Some(work) = self.threads.get_mut(&tid).and_then(|t| t.pending.take()) else {
            self.resume(tid, None);
            return;
        };
        let Ok(regs) = tracer::getregs(tid) else {
            return;
        };
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            return;
        };
        let ret = regs.rax as i64;
        match work {
            ExitWork::Listing { entry, pid } => self.filter_listing(tid, &entry, &regs, pid),
            ExitWork::Poll { entry, hidden } => {
                fix_poll(tid, &entry, &regs, &hidden);
                self.resume(tid, None);
            }
            ExitWork::Release => {
                let mut done = regs;
                done.rax = (-(libc::EBADF as i64)) as u64;
                let _ = tracer::setregs(tid, &done);
                self.resume(tid, None);
            }
            ExitWork::CloseRange { entry } => {
                if ret == 0 {
                    self.after_close_range(tid, tgid, &entry);
                }
                self.resume(tid, None);
            }
            ExitWork::Create { desc, entry, stack } => {
                if matches!(errno_of(ret), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    match self.release_tombstones(tid, &regs, true) {
                        Ok(true) => {
                            // Retry the call now that the numbers are free:
                            // the program never sees an early EMFILE.
                            let mut again = entry;
                            again.rax = entry.orig_rax;
                            again.rip = entry.rip.wrapping_sub(tracer::SYSCALL_INSN_LEN);
                            let _ = tracer::setregs(tid, &again);
                            self.resume(tid, None);
                            return;
                        }
                        Ok(false) => {}
                        Err(_) => return,
                    }
                }
                if ret >= 0 {
                    // Near FD_SETSIZE the quarantine must give its numbers
                    // back: natively they would be free, and a select() user
                    // must keep getting fds below 1024.
                    let crowded = self.threads.get(&tid).is_some_and(|t| {
                        let t = t.table.borrow();
                        t.quarantined() > 0 && t.used() + 16 >= 1024
                    });
                    if crowded {
                        match self.release_tombstones(tid, &regs, false) {
                            Ok(_) => {
                                let _ = tracer::setregs(tid, &regs);
                            }
                            Err(_) => return,
                        }
                    }
                    self.after_create(tid, tgid, desc, &entry, ret, stack);
                } else {
                    self.resume(tid, None);
                }
            }
        }
    }

    pub(super) fn after_close_range(&mut self, tid: i32, tgid: i32, entry: &Regs) {
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
        let stack = self.capture_stack(tid, tgid, Some(entry));
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
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        ret: i64,
        stack: Option<Stack>,
    ) {
        let a = tracer::args(entry);
        let mut new_fds: Vec<i32> = Vec::new();
        let mut origin = Origin::Syscall(desc.name);
        match desc.kind {
            Kind::Pipe | Kind::SocketPair => {
                let ptr = if desc.kind == Kind::Pipe { a[0] } else { a[3] };
                if let Ok(b) = tracer::read_mem(tid, ptr, 8) {
                    new_fds.push(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    new_fds.push(i32::from_ne_bytes([b[4], b[5], b[6], b[7]]));
                }
            }
            Kind::RecvMsg => {
                origin = Origin::Received;
                new_fds.extend(scm_rights(tid, a[1]));
            }
            Kind::RecvMmsg => {
                origin = Origin::Received;
                for i in 0..(ret.clamp(0, 1024) as u64) {
                    // struct mmsghdr { struct msghdr (56 bytes); unsigned msg_len; } padded to 64.
                    new_fds.extend(scm_rights(tid, a[1] + i * 64));
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
                self.over_budget(tid, tgid, desc, entry, count, max, new_fds.last().copied());
                return;
            }
        }
        let new_policy_active = self.procs.get(&tgid).is_some_and(|p| {
            p.policy
                .entries()
                .any(|(c, e)| c.is_new() && e.action != Action::Allow)
        });
        if new_policy_active
            && !new_fds.is_empty()
            && self.new_policy(tid, tgid, desc, entry, &new_fds)
        {
            return;
        }
        self.resume(tid, None);
    }
}

/// The fds a received message carries in SCM_RIGHTS control messages.
pub(crate) fn scm_rights(tid: i32, msghdr: u64) -> Vec<i32> {
    let mut fds = Vec::new();
    // struct msghdr: name(8) namelen(4)+pad(4) iov(8) iovlen(8) control(8) controllen(8) flags(4)
    let Ok(control) = tracer::read_u64(tid, msghdr + 32) else {
        return fds;
    };
    let Ok(len) = tracer::read_u64(tid, msghdr + 40) else {
        return fds;
    };
    if control == 0 || len < 16 {
        return fds;
    }
    let Ok(buf) = tracer::read_mem(tid, control, (len as usize).min(64 * 1024)) else {
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
pub(crate) fn fix_poll(tid: i32, entry: &Regs, exit: &Regs, hidden: &[i32]) {
    if (exit.rax as i64) < 0 {
        return;
    }
    let n = (entry.rsi as usize).min(4096);
    let Ok(mut buf) = tracer::read_mem(tid, entry.rdi, n * 8) else {
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
    if tracer::write_mem(tid, entry.rdi, &buf).is_ok() {
        let mut done = *exit;
        done.rax = ready;
        let _ = tracer::setregs(tid, &done);
    }
}
