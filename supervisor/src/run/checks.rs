//! The job policy at a syscall's entry: which fds a call uses, whether
//! each is a valid handle, and what bad-handle, wrong-object, new-* and
//! --max-handles do about it. Every policy decision is made here.

use handles_model::judge::{self, Known, Moment, Verdict};
use handles_model::report::{EarlierTitle, HandleLine, Lossy, Title};

use super::job::*;
use super::shimtable::{self, ShimSays, ShimTable};
use crate::backtrace::Frame;
use crate::json;

impl Job {
    /// The fds a syscall uses, read from its registers (and memory for
    /// poll/select).
    pub(super) fn used_fds(&self, tid: i32, desc: &Desc, a: &[u64; 6]) -> Vec<i32> {
        let mut fds = Vec::new();
        for (i, &arg) in a.iter().enumerate() {
            if (desc.fd_args | desc.dirfd_args) & (1 << i) != 0 {
                let fd = arg as i32;
                if fd >= 0 {
                    fds.push(fd);
                }
            }
        }
        match desc.kind {
            Kind::Mmap if a[3] & libc::MAP_ANONYMOUS as u64 == 0 && (a[4] as i32) >= 0 => {
                fds.push(a[4] as i32);
            }
            Kind::Signalfd if (a[0] as i32) >= 0 => fds.push(a[0] as i32),
            Kind::Poll => {
                let n = (a[1] as usize).min(4096);
                if let Ok(buf) = tracer::read_mem(tid, a[0], n * 8) {
                    for chunk in buf.chunks_exact(8) {
                        let fd = i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                        if fd >= 0 {
                            fds.push(fd);
                        }
                    }
                }
            }
            Kind::Select => {
                let nfds = (a[0] as i64).clamp(0, 1024) as usize;
                let bytes = nfds.div_ceil(64) * 8;
                for set in [a[1], a[2], a[3]] {
                    if set == 0 {
                        continue;
                    }
                    if let Ok(buf) = tracer::read_mem(tid, set, bytes) {
                        for (i, byte) in buf.iter().enumerate() {
                            for bit in 0..8 {
                                let fd = i * 8 + bit;
                                if fd < nfds && byte & (1 << bit) != 0 {
                                    fds.push(fd as i32);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        fds
    }

    /// Is `fd` a valid handle in the thread's table? Unknown fds that /proc
    /// shows open are adopted (we missed their creation), never reported.
    pub(super) fn check_fd(&mut self, tid: i32, fd: i32) -> Option<Bad> {
        let tgid = self.threads.get(&tid)?.tgid;
        // The shim closes and creates without stopping here: where it is
        // loaded, its table is the truth for what it did.
        match self.shim_says(tgid, fd) {
            ShimSays::Tombstone(r) => {
                let (closer, r, bad) = match self.inherited_tombstone_record(tgid, fd, &r) {
                    Some((owner, parents)) => (owner, Box::new(parents), Bad::StaleInherited),
                    None => (tgid, r, Bad::Stale),
                };
                let t = self.threads.get(&tid)?;
                let mut table = t.table.borrow_mut();
                table.forget_open(fd);
                table.remember_closed(
                    fd,
                    shimtable::closed_handle(closer, &r.0, &r.1, r.2.as_ref()),
                );
                return Some(bad);
            }
            ShimSays::Internal => return Some(Bad::Internal),
            ShimSays::Closed(d) if !fd_exists(tgid, fd) => {
                // Closed through the shim, number not reused: a closed
                // handle, reported with what it was and where it was
                // closed (a closed stdio number is never quarantined).
                let t = self.threads.get(&tid)?;
                let mut table = t.table.borrow_mut();
                table.forget_open(fd);
                table.drop_tombstone(fd);
                table.remember_closed(fd, shimtable::closed_handle(tgid, &d.0, &d.1, d.2.as_ref()));
                return Some(Bad::NotOpen);
            }
            ShimSays::Free | ShimSays::Closed(_) => {
                // The shim closed it for real (no room in its quarantine),
                // released one of our tombstones under fd pressure, or
                // never had it: our model is stale unless the kernel still
                // has the number (made by a call neither of us saw).
                let t = self.threads.get(&tid)?;
                let mut table = t.table.borrow_mut();
                if table.get(fd).is_some() && !fd_exists(tgid, fd) {
                    table.forget_open(fd);
                    table.drop_tombstone(fd);
                }
            }
            ShimSays::Open(generation) => {
                // The shim made a new handle at this number (after giving
                // one of our tombstones back under fd pressure): ours is
                // stale.
                let t = self.threads.get(&tid)?;
                let mut table = t.table.borrow_mut();
                if matches!(table.get(fd), Some(Slot::Tombstone(_))) {
                    table.drop_tombstone(fd);
                }
                if table.get(fd).is_none() {
                    table.open(fd, Origin::Shim, None, tgid);
                    table.set_generation(fd, generation);
                }
                return None;
            }
            ShimSays::Unknown => {}
        }
        let t = self.threads.get(&tid)?;
        let table = t.table.borrow();
        match table.get(fd) {
            Some(Slot::Open(_)) => None,
            Some(Slot::Tombstone(c)) if c.closer == tgid => Some(Bad::Stale),
            Some(Slot::Tombstone(_)) => Some(Bad::StaleInherited),
            None if table.tomb_src == Some(fd) => Some(Bad::Internal),
            None => {
                if !fd_exists(tgid, fd) {
                    return Some(Bad::NotOpen);
                }
                drop(table);
                if let Some(bad) = self.parents_shim_says(tid, tgid, fd) {
                    return Some(bad);
                }
                let t = self.threads.get(&tid)?;
                t.table
                    .borrow_mut()
                    .open(fd, Origin::Discovered, None, tgid);
                None
            }
        }
    }

    /// A forked child makes its shim table only at its first write: until
    /// then the shim's fds it inherited (its parent's table, tombstones
    /// and tombstone source: O_PATH fds on that table's memfd) are
    /// unknown here. The parent's table, mapped through the fd itself,
    /// tells them apart: its own fds are INTERNAL there, anything else on
    /// that memfd is a tombstone the parent had at the fork.
    fn parents_shim_says(&mut self, tid: i32, tgid: i32, fd: i32) -> Option<Bad> {
        use handles_model::table::state;
        let p = self.procs.get(&tgid)?;
        if !self.shim_injected || p.shim.is_some() || !p.awaiting_shim {
            return None;
        }
        let target = self.object_facts(tgid, fd).target;
        let owner = crate::inspect::shared::table_owner(&target)?;
        let table = crate::inspect::shared::inherited_table(tgid, fd, owner)?;
        let view = table.view().ok()?;
        match view.detail_py(fd) {
            Some((d, ..)) if d.value.state == state::INTERNAL => Some(Bad::Internal),
            Some((d, c, x)) if d.value.state == state::TOMBSTONE => {
                let earlier = view.earlier(fd);
                // Still the parent's tombstone: what it closed there (the
                // parent may have closed the number again since the fork;
                // then this is its later close, rarely so).
                let t = self.threads.get(&tid)?;
                t.table.borrow_mut().remember_closed(
                    fd,
                    shimtable::closed_handle(owner, &d, &(c, x), earlier.as_ref()),
                );
                Some(Bad::StaleInherited)
            }
            _ => Some(Bad::StaleInherited),
        }
    }

    /// A forked child's own table leaves the records of the tombstones
    /// it inherited in its private snapshot (shim/src/state/fork.rs),
    /// out of reach here. The tombstone itself, an O_PATH fd on its
    /// parent's table, reaches the parent's record of the same handle
    /// (same generation and koid) while the parent has not handed the
    /// number out again. The parent's pid and its record, or None when
    /// the child's table has the record (or the parent's has moved on).
    fn inherited_tombstone_record(
        &mut self,
        tgid: i32,
        fd: i32,
        r: &shimtable::ShimRecord,
    ) -> Option<(i32, shimtable::ShimRecord)> {
        if !r.0.created.frames().is_empty() || !r.0.closed.frames().is_empty() {
            return None;
        }
        let target = self.object_facts(tgid, fd).target;
        let owner = crate::inspect::shared::table_owner(&target)?;
        let table = crate::inspect::shared::inherited_table(tgid, fd, owner)?;
        let view = table.view().ok()?;
        let (d, c, x) = view.detail_py(fd)?;
        let same = d.value.generation == r.0.value.generation
            && d.value.koid == r.0.value.koid
            && d.value.obj_type == r.0.value.obj_type;
        same.then(|| (owner, (d, (c, x), view.earlier(fd))))
    }

    /// The symbolized stack of the call being judged. Reports always carry
    /// it, even with stack recording off (`--stack-depth 0`).
    pub(super) fn offending_stack(&mut self, tid: i32, tgid: i32, regs: &Regs) -> Vec<Frame> {
        let stack = self.capture_stack(tid, tgid, Some(regs)).or_else(|| {
            let maps = ModuleMap::read(tgid).ok()?;
            let mut pcs = self.unwinder.unwind(tid, &maps, StartRegs::from(regs), 64);
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.maps.get_or_insert(maps);
            }
            self.append_python(tid, tgid, regs, &mut pcs);
            Some(Arc::new(pcs))
        });
        self.symbolize(tgid, stack.as_ref())
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

    /// `object_facts_at` through the process's cached /proc/PID/fd dirfd.
    pub(super) fn object_facts(&mut self, tgid: i32, fd: i32) -> ObjectFacts {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return object_facts_at(None, tgid, fd);
        };
        if p.fd_dir.is_none() {
            p.fd_dir = std::fs::File::open(format!("/proc/{tgid}/fd"))
                .ok()
                .map(std::os::fd::OwnedFd::from);
        }
        object_facts_at(p.fd_dir.as_ref(), tgid, fd)
    }

    /// What the shim's table of `tgid` says of `fd` (Unknown until the
    /// shim announced its table: before that it has done nothing).
    pub(super) fn shim_says(&self, tgid: i32, fd: i32) -> ShimSays {
        self.procs
            .get(&tgid)
            .and_then(|p| p.shim.as_ref())
            .map_or(ShimSays::Unknown, |s| s.says(fd))
    }

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
        if p.shim.is_none() && p.awaiting_shim && !p.strict && self.opts.leak_mode == LeakMode::Off
        {
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

    pub(super) fn on_seccomp(&mut self, tid: i32) {
        let Ok(regs) = tracer::getregs(tid) else {
            return;
        };
        let nr = regs.orig_rax as i64;
        let desc = match syscalls::lookup(nr) {
            // A 32-bit syscall (int 0x80) numbers differently: let it be.
            Some(d) if regs.cs == 0x33 => d,
            _ => {
                self.resume(tid, None);
                return;
            }
        };
        let Some(tgid) = self.threads.get(&tid).map(|t| t.tgid) else {
            self.resume(tid, None);
            return;
        };
        let a = tracer::args(&regs);
        if nr == libc::SYS_fcntl
            && a[0] as i32 == -1
            && a[1] as u32 == handles_model::table::CHECKPOINT_CMD
        {
            if self.opts.leak_mode != LeakMode::Off {
                self.on_checkpoint(tid, tgid, regs, a[2]);
            } else {
                // Nothing counts leaks: the call fails as natively (EBADF),
                // never judged (marked, it would pass for a bad call the
                // shim hands over).
                self.resume(tid, None);
            }
            return;
        }
        if self.shim_injected && shimtable::is_announcement(nr, &a, self.cookie) {
            self.on_announce(tid, tgid, a[0] as i32);
            self.resume(tid, None);
            return;
        }
        let tag = if self.shim_injected {
            shimtable::marker_of(nr, &a, self.cookie)
        } else {
            None
        };
        // A marked call is one the shim's judge already found to raise an
        // exception: it is acted on here, not judged again.
        let marked = tag.is_some();
        self.sync_shim(tid, tgid);
        if self.opts.inherit_check {
            self.note_inheritable(tgid, nr, &a);
            if tag == Some(handles_model::table::marker::INHERIT) {
                // Only news for the inherit check: the call runs as is.
                self.resume(tid, None);
                return;
            }
        }
        if tag == Some(handles_model::table::marker::OWN) {
            // The shim's own bookkeeping (its table, its tombstone source,
            // a quarantine's dup3), stopped only because a new-* entry or
            // a handle budget stops every creating call: not the program's.
            self.resume(tid, None);
            return;
        }
        if let Some(h) = shimtable::held_by_shim(nr, &a, self.cookie) {
            if self.shim_injected {
                self.on_shim_held(tid, tgid, regs, h);
                return;
            }
        }
        let (desc, a) = match shimtable::proxied(nr, &a, self.cookie) {
            Some(p) if self.shim_injected => p,
            _ => (desc, a),
        };
        if let Some(i) = syscalls::path_arg(desc.nr) {
            if self.names_hidden_entry(tid, tgid, a[i]) {
                // A name of a tombstone or of a tool's own fd: natively
                // nothing holds that number, so nothing has that name.
                self.skip_with(tid, regs, libc::ENOENT);
                self.resume(tid, None);
                return;
            }
        }
        if desc.kind == Kind::Poll {
            // poll() on a closed fd is defined: that entry gets POLLNVAL.
            // Programs use it to ask which fds are open (findutils' fd leak
            // check in xargs does), so it is a question (the judge's rule);
            // but a tombstone would poll as ready, so its entries are fixed
            // up at the exit.
            let hidden: Vec<i32> = self
                .used_fds(tid, desc, &a)
                .into_iter()
                .filter(|&fd| {
                    matches!(
                        self.check_fd(tid, fd),
                        Some(Bad::Stale | Bad::StaleInherited | Bad::Internal)
                    )
                })
                .collect();
            if hidden.is_empty() {
                self.resume(tid, None);
            } else {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending = Some(ExitWork::Poll {
                        entry: regs,
                        hidden,
                    });
                }
                let _ = ptrace::syscall(Pid::from_raw(tid), None);
            }
            return;
        }
        if self.judge_call(tid, tgid, regs, desc, &a, marked) {
            return;
        }
        if let Some((expected, errno)) = expected_object(desc.name) {
            let action = self.action_of(tgid, Condition::WrongObject);
            let fd = a[0] as i32;
            if action != Action::Allow && fd >= 0 {
                let facts = self.object_facts(tgid, fd);
                let ty = refine_socket(
                    tgid,
                    fd,
                    ObjType::from_name(facts.ty).unwrap_or(ObjType::Unknown),
                );
                if !expected.contains(&ty) {
                    self.wrong_object(tid, tgid, regs, desc, fd, ty, expected, errno, action);
                    return;
                }
            }
        }
        match desc.kind {
            Kind::Use
                if desc.nr == libc::SYS_getdents64 && self.watch_listing(tid, tgid, &regs) => {}
            Kind::Use | Kind::Poll | Kind::Select | Kind::Mmap | Kind::Lookup => {
                self.resume(tid, None)
            }
            Kind::Limit => {
                // RLIMIT_NOFILE may change: read it afresh next time.
                for p in self.procs.values_mut() {
                    p.nofile = None;
                }
                self.resume(tid, None);
            }
            Kind::Close => self.on_close(tid, tgid, regs, true),
            Kind::Fcntl => {
                let cmd = a[1] as i32;
                if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
                    self.follow_to_exit(tid, tgid, desc, regs);
                } else {
                    self.resume(tid, None);
                }
            }
            Kind::Signalfd if (a[0] as i32) >= 0 => self.resume(tid, None),
            Kind::CloseRange => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending = Some(ExitWork::CloseRange { entry: regs });
                }
                let _ = ptrace::syscall(Pid::from_raw(tid), None);
            }
            _ => self.follow_to_exit(tid, tgid, desc, regs),
        }
    }

    /// The fd arguments of a call, with their argument positions (poll's
    /// and select's sets are questions, judged by the poll path or
    /// answered by the kernel; they are not listed).
    fn fd_args(&self, desc: &Desc, a: &[u64; 6]) -> Vec<(usize, i32)> {
        let mut fds = Vec::new();
        for (i, &arg) in a.iter().enumerate() {
            if (desc.fd_args | desc.dirfd_args) & (1 << i) != 0 && (arg as i32) >= 0 {
                fds.push((i, arg as i32));
            }
        }
        match desc.kind {
            Kind::Mmap if a[3] & libc::MAP_ANONYMOUS as u64 == 0 && (a[4] as i32) >= 0 => {
                fds.push((4, a[4] as i32));
            }
            Kind::Signalfd if (a[0] as i32) >= 0 => fds.push((0, a[0] as i32)),
            _ => {}
        }
        fds
    }

    /// What the tables know of `fd` for the judge.
    fn known(&mut self, tid: i32, fd: i32) -> Known {
        match self.check_fd(tid, fd) {
            None => Known::Open,
            Some(Bad::Internal) => Known::Internal,
            Some(Bad::Stale | Bad::StaleInherited) => Known::Closed { quarantined: true },
            Some(Bad::NotOpen) => {
                let closed = self
                    .threads
                    .get(&tid)
                    .is_some_and(|t| t.table.borrow().closed_info(fd).is_some());
                if closed {
                    Known::Closed { quarantined: false }
                } else {
                    Known::NeverHeld
                }
            }
        }
    }

    /// Whether the stopped question (an F_GETFL, an fstat) is asked by
    /// libc's fdopen or fdopendir, which begin to use their fd that way:
    /// the few innermost frames are symbolized, only for a question on a
    /// number that is not open (rare, and about to be reported if so).
    fn asked_by_an_opener(&mut self, tid: i32, tgid: i32, regs: &Regs) -> bool {
        let nr = regs.orig_rax as i64;
        if nr != libc::SYS_fcntl && nr != libc::SYS_newfstatat && nr != libc::SYS_fstat {
            return false;
        }
        let frames = self.offending_stack(tid, tgid, regs);
        frames.iter().take(4).any(|f| {
            f.function.as_deref().is_some_and(|name| {
                matches!(
                    name,
                    "fdopen" | "_IO_fdopen" | "_IO_new_fdopen" | "fdopendir" | "__fdopendir"
                )
            })
        })
    }

    /// Is `tgid`'s image a shell? Read from /proc/PID/exe at first need
    /// (the name a script was started by is the script's).
    fn is_shell(&mut self, tgid: i32) -> bool {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return false;
        };
        *p.shell.get_or_insert_with(|| {
            std::fs::read_link(format!("/proc/{tgid}/exe"))
                .ok()
                .and_then(|e| e.file_name().map(|n| judge::is_shell(n.as_encoded_bytes())))
                .unwrap_or(false)
        })
    }

    /// Judges a stopped call's fd arguments and acts on the decision.
    /// Returns true when it resumed (or killed) the thread itself; false
    /// when the call goes on to the rest of the checks.
    fn judge_call(
        &mut self,
        tid: i32,
        tgid: i32,
        regs: Regs,
        desc: &'static Desc,
        a: &[u64; 6],
        marked: bool,
    ) -> bool {
        let mut args = Vec::new();
        let fds = self.fd_args(desc, a);
        let limit = if fds.is_empty() {
            u64::MAX
        } else {
            self.cached_nofile(tgid)
        };
        for (i, fd) in fds {
            let known = self.known(tid, fd);
            if u64::from(fd as u32) >= limit && known != Known::Internal {
                // A number at or above RLIMIT_NOFILE is one the program
                // cannot be given: a sentinel (tmux's compat code closes
                // INT_MAX), not a handle to judge; the kernel answers
                // (the shim's rule too). The tools' own fds above a low
                // limit stay hidden.
                if desc.kind == Kind::Close {
                    self.resume(tid, None);
                    return true;
                }
                continue;
            }
            let mut op = judge::op_of(desc.nr, a, i, false);
            if known != Known::Open && desc.dirfd_args & (1 << i) != 0 {
                // The path after a dirfd decides what the dirfd is for:
                // an absolute path ignores it, an empty one (AT_EMPTY_PATH)
                // names the fd itself.
                let first = a
                    .get(i + 1)
                    .and_then(|&p| tracer::read_mem(tid, p, 1).ok())
                    .and_then(|b| b.first().copied());
                match first {
                    Some(b'/') => continue,
                    Some(0) => op = judge::op_of(desc.nr, a, i, true),
                    _ => {}
                }
            }
            if marked && op == judge::Op::Question {
                // The shim stands a libc function's use (fdopen, ...) for
                // an fstat: it judged a use.
                op = judge::Op::Use;
            }
            if !marked
                && op == judge::Op::Question
                && known != Known::Open
                && self.asked_by_an_opener(tid, tgid, &regs)
            {
                // fdopen's F_GETFL and fdopendir's fstat are how libc
                // starts to use the fd: the shim judges those functions
                // as uses, and so must the supervisor where no shim is.
                op = judge::Op::Use;
            }
            args.push(judge::Arg { op, fd, known });
        }
        let policy = self.policy_of(tgid);
        let decision = if marked {
            judge::Decision {
                flush: judge::Flush::None,
                verdict: judge::judge_now(&args, &policy),
            }
        } else {
            let shell = args.iter().any(|a| a.known != Known::Open) && self.is_shell(tgid);
            let Some(t) = self.threads.get_mut(&tid) else {
                return false;
            };
            judge::judge(&mut t.memo, &args, shell, &policy)
        };
        match decision.flush {
            judge::Flush::Raise(_) => self.flush_held(tid, true),
            judge::Flush::Drop(_) => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.held = None;
                }
            }
            judge::Flush::None => {}
        }
        match decision.verdict {
            Verdict::Run
                if args
                    .iter()
                    .any(|a| a.op == judge::Op::Close && a.known != Known::Open) =>
            {
                // A close the judge lets run on a number that is not open:
                // the kernel answers (EBADF), nothing to quarantine.
                self.resume(tid, None);
                true
            }
            Verdict::Run => false,
            Verdict::Unquarantined => {
                self.on_close(tid, tgid, regs, false);
                true
            }
            Verdict::Fail(errno) => {
                self.skip_with(tid, regs, errno);
                self.resume(tid, None);
                true
            }
            Verdict::Release => {
                if let Some(a) = args.iter().find(|a| a.op == judge::Op::Close) {
                    self.give_back(tid, tgid, a.fd);
                } else {
                    self.resume(tid, None);
                }
                true
            }
            Verdict::Hold(h) => {
                let offending = self.offending_stack(tid, tgid, &regs);
                let report = self.bad_handle_report(
                    tid,
                    tgid,
                    &regs,
                    desc,
                    h.fd,
                    h.kind,
                    h.action,
                    Moment::HeldDue,
                    h.quarantined,
                    offending,
                );
                self.keep_held(tid, report, h.action);
                if h.quarantined {
                    self.give_back(tid, tgid, h.fd);
                } else {
                    self.skip_with(tid, regs, libc::EBADF);
                    self.resume(tid, None);
                }
                true
            }
            Verdict::Raise {
                fd,
                kind,
                action,
                quarantined,
                run,
                ..
            } => {
                let offending = self.offending_stack(tid, tgid, &regs);
                let report = self.bad_handle_report(
                    tid,
                    tgid,
                    &regs,
                    desc,
                    fd,
                    kind,
                    action,
                    if run { Moment::Ran } else { Moment::Failed },
                    quarantined,
                    offending,
                );
                if !run {
                    self.skip_with(tid, regs, libc::EBADF);
                }
                match report {
                    Some(r) => {
                        self.emit(&r);
                        self.raise(tid, tgid, action);
                    }
                    // Suppressed: the call is answered as a closed fd
                    // would be, and nothing follows.
                    None => self.resume(tid, None),
                }
                true
            }
        }
    }

    /// Gives the quarantined number `fd` back to the kernel
    /// (`Verdict::Release`): the stopped close runs on the tombstone, and
    /// its exit is made to answer EBADF, as the closed number would.
    fn give_back(&mut self, tid: i32, tgid: i32, fd: i32) {
        if let Some(t) = self.threads.get(&tid) {
            t.table.borrow_mut().drop_tombstone(fd);
        }
        self.shim_update(tgid, fd, &shimtable::Update::Free);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Some(ExitWork::Release);
        }
        let _ = ptrace::syscall(Pid::from_raw(tid), None);
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

    /// The shim's judge held a close (HOLD: the report is built now, from
    /// the stack the shim captured, and kept for the thread), or decided
    /// one it held (HELD_RAISE: written and raised now; HELD_DROP: a sweep
    /// followed). The supervisor keeps it so that a thread that ends or
    /// execs first still gets it written.
    fn on_shim_held(&mut self, tid: i32, tgid: i32, regs: Regs, h: shimtable::HeldByShim) {
        use handles_model::table::marker;
        self.skip_with(tid, regs, libc::EBADF);
        match h.tag {
            marker::HELD_RAISE => {
                self.flush_held(tid, true);
                self.resume(tid, None);
                return;
            }
            marker::HELD_DROP => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.held = None;
                }
                self.resume(tid, None);
                return;
            }
            marker::RELEASE => {
                if let Some(t) = self.threads.get(&tid) {
                    t.table.borrow_mut().drop_tombstone(h.fd);
                }
                self.resume(tid, None);
                return;
            }
            _ => {}
        }
        let Some(desc) = syscalls::lookup(h.nr) else {
            self.resume(tid, None);
            return;
        };
        let pcs: Vec<u64> = tracer::read_mem(tid, h.pcs, h.n * 8)
            .map(|b| {
                b.chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                    .take_while(|&pc| pc != 0)
                    .collect()
            })
            .unwrap_or_default();
        let mut pcs = pcs;
        // The thread is stopped in the held call's context: its Python
        // frames are the call's.
        self.append_python(tid, tgid, &regs, &mut pcs);
        let offending = self.symbolize(tgid, Some(&Arc::new(pcs)));
        let known = self.known(tid, h.fd);
        let op = judge::op_of(h.nr, &[h.fd as u64, 0, 0, 0, 0, 0], 0, false);
        let policy = self.policy_of(tgid);
        let verdict = judge::judge_now(
            &[judge::Arg {
                op,
                fd: h.fd,
                known,
            }],
            &policy,
        );
        let Verdict::Raise {
            kind,
            action,
            quarantined,
            ..
        } = verdict
        else {
            self.resume(tid, None);
            return;
        };
        let mut call = regs;
        call.rdi = h.fd as u64;
        let report = self.bad_handle_report(
            tid,
            tgid,
            &call,
            desc,
            h.fd,
            kind,
            action,
            Moment::HeldDue,
            quarantined,
            offending,
        );
        self.keep_held(tid, report, action);
        self.resume(tid, None);
    }

    /// Keeps the report of a close the judge held, for the thread's next
    /// close (or its end) to write (`flush_held`); None: suppressed.
    fn keep_held(&mut self, tid: i32, report: Option<ExceptionReport>, action: Action) {
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
        tid: i32,
        tgid: i32,
        regs: Regs,
        desc: &'static Desc,
        fd: i32,
        ty: ObjType,
        expected: &[ObjType],
        errno: i32,
        action: Action,
    ) {
        let deny = matches!(action, Action::Deny | Action::DenyException | Action::Kill);
        if matches!(
            action,
            Action::AllowException | Action::DenyException | Action::Kill
        ) {
            let frames = self.offending_stack(tid, tgid, &regs);
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
            self.skip_with(tid, regs, errno);
        }
        self.raise(tid, tgid, action);
    }

    /// `--max-handles`: the process holds more handles than its budget, the
    /// sign of a runaway leak long before EMFILE. Reported once per process,
    /// as an exception (SIGTRAP follows).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn over_budget(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        count: usize,
        max: usize,
        fd: Option<i32>,
    ) {
        let frames = self.offending_stack(tid, tgid, entry);
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
        self.raise(tid, tgid, Action::AllowException);
    }

    /// Applies the new-* conditions to freshly created fds. Returns true when
    /// it resumed (or killed) the thread itself.
    pub(super) fn new_policy(
        &mut self,
        tid: i32,
        tgid: i32,
        desc: &'static Desc,
        entry: &Regs,
        fds: &[i32],
    ) -> bool {
        if self.made_by_loader(tid, tgid, entry.rip) {
            // The dynamic loader's opens (the libraries it maps, the
            // preloaded shim) are not the program's handles.
            return false;
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
            return false;
        };
        let condition =
            Condition::for_new_object(ObjType::from_name(ty).unwrap_or(ObjType::Unknown));
        let deny = matches!(action, Action::Deny | Action::DenyException);
        if deny {
            let Ok(mut exit) = tracer::getregs(tid) else {
                return true;
            };
            for &f in fds {
                match tracer::inject_at_exit(
                    tid,
                    &exit,
                    libc::SYS_close,
                    [f as u64, self.cookie, 0, 0, 0, 0],
                    &mut self.deferred,
                ) {
                    Ok((_, e)) => exit = e,
                    Err(_) => return true,
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
            let _ = tracer::setregs(tid, &done);
        }
        if matches!(
            action,
            Action::AllowException | Action::DenyException | Action::Kill
        ) {
            let regs = *entry;
            let frames = self.offending_stack(tid, tgid, &regs);
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
            self.raise(tid, tgid, action);
            return true;
        }
        self.resume(tid, None);
        true
    }
}

/// The object types a syscall's first (fd) argument must have, and the
/// errno the kernel gives for any other.
pub(crate) fn expected_object(name: &str) -> Option<(&'static [ObjType], i32)> {
    const SOCK: &[ObjType] = &[ObjType::Socket, ObjType::Channel];
    Some(match name {
        "connect" | "accept" | "accept4" | "sendto" | "recvfrom" | "sendmsg" | "recvmsg"
        | "sendmmsg" | "recvmmsg" | "shutdown" | "bind" | "listen" | "getsockname"
        | "getpeername" | "setsockopt" | "getsockopt" => (SOCK, libc::ENOTSOCK),
        "epoll_ctl" | "epoll_wait" | "epoll_pwait" | "epoll_pwait2" => {
            (&[ObjType::Port], libc::EINVAL)
        }
        "timerfd_settime" | "timerfd_gettime" => (&[ObjType::Timer], libc::EINVAL),
        "inotify_add_watch" | "inotify_rm_watch" => (&[ObjType::Inotify], libc::EINVAL),
        "pidfd_send_signal" | "pidfd_getfd" | "process_madvise" | "process_mrelease" => {
            (&[ObjType::Process], libc::EBADF)
        }
        "getdents" | "getdents64" | "fchdir" => (&[ObjType::Dir], libc::ENOTDIR),
        _ => return None,
    })
}

/// Must every call of `desc` stop at the supervisor, even one the shim
/// makes? The shim checks handles in-process, but the conditions that
/// judge what is created (new-*, a handle budget) or what kind of object
/// a call is made on (wrong-object) are the supervisor's alone: for those
/// the shim's cookie buys no exemption. The job's policy at the start
/// decides (a nested job that turns one on later is not seen for calls
/// the shim makes: docs/shim.md).
pub(super) fn judged_at_every_call(desc: &Desc, policy: &Policy, budget: bool) -> bool {
    let creates = matches!(
        desc.kind,
        Kind::Create
            | Kind::Dup
            | Kind::DupTo
            | Kind::Fcntl
            | Kind::Pipe
            | Kind::SocketPair
            | Kind::RecvMsg
            | Kind::RecvMmsg
            | Kind::Signalfd
    );
    let judges_new = budget
        || Condition::NEW
            .iter()
            .any(|&c| policy.get(c).action != Action::Allow);
    let judges_kind = policy.get(Condition::WrongObject).action != Action::Allow;
    (creates && judges_new) || (judges_kind && expected_object(desc.name).is_some())
}

/// A socket's type in the model: AF_UNIX sockets are channels.
pub(crate) fn refine_socket(tgid: i32, fd: i32, ty: ObjType) -> ObjType {
    if ty == ObjType::Socket
        && crate::inspect::classify::sock_protocol_name(tgid, fd)
            .is_some_and(|p| p.starts_with("UNIX"))
    {
        ObjType::Channel
    } else {
        ty
    }
}

/// Type, koid and link target of an open fd, read through the process's
/// `/proc/PID/fd` directory fd (`dir`) when there is one: what a later
/// report says the handle was. Taken at every close, so it avoids the full
/// /proc path walk.
pub(crate) fn object_facts_at(
    dir: Option<&std::os::fd::OwnedFd>,
    tgid: i32,
    fd: i32,
) -> ObjectFacts {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(fd.to_string()).unwrap_or_default();
    let mut buf = [0u8; 4096];
    let (n, dirfd, cpath) = match dir {
        Some(d) => {
            // SAFETY: name is NUL-terminated and buf writable for its length.
            let n = unsafe {
                libc::readlinkat(
                    d.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            (n, d.as_raw_fd(), name.clone())
        }
        None => {
            let path = std::ffi::CString::new(format!("/proc/{tgid}/fd/{fd}")).unwrap_or_default();
            // SAFETY: as above, with an absolute path.
            let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            (n, libc::AT_FDCWD, path)
        }
    };
    if n <= 0 {
        return ObjectFacts::default();
    }
    let target = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let stat = || -> Option<libc::stat> {
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: cpath is NUL-terminated, st writable; follows the magic link.
        (unsafe { libc::fstatat(dirfd, cpath.as_ptr(), &mut st, 0) } == 0).then_some(st)
    };
    let (ty, koid) = match LinkTarget::parse(&target) {
        LinkTarget::Socket(i) => (ObjType::Socket, i),
        LinkTarget::Pipe(i) => (ObjType::Pipe, i),
        LinkTarget::Pidfd(i) => (ObjType::Process, i),
        LinkTarget::Memfd(_) => (ObjType::Vmo, stat().map_or(0, |s| s.st_ino)),
        LinkTarget::AnonInode(name) => (crate::inspect::classify::anon_type(&name), 0),
        LinkTarget::Path(_) | LinkTarget::Other(_) => match stat() {
            Some(s) if s.st_mode & libc::S_IFMT == libc::S_IFDIR => (ObjType::Dir, s.st_ino),
            Some(s) if s.st_mode & libc::S_IFMT == libc::S_IFREG => (ObjType::File, s.st_ino),
            Some(s) => (ObjType::Chardev, s.st_ino),
            None => (ObjType::Unknown, 0),
        },
    };
    ObjectFacts {
        ty: ty.name(),
        koid,
        target,
    }
}

/// Whether a frame is in glibc's dynamic loader.
fn in_dynamic_loader(f: &Frame) -> bool {
    f.module
        .as_deref()
        .and_then(|m| m.rsplit('/').next())
        .is_some_and(|name| name.starts_with("ld-linux"))
}
