//! The quarantine: `close(fd)` becomes `dup3(tombstone, fd)` so the
//! number is not reused at once; planting the tombstone source, eviction,
//! and giving numbers back under fd pressure.

use super::job::*;

impl Job {
    /// A close of an open handle, quarantined unless `quarantine` is false
    /// (a sweep's close: see `judge::Verdict::Unquarantined`).
    pub(super) fn on_close(&mut self, tid: i32, tgid: i32, regs: Regs, quarantine: bool) {
        let fd = regs.rdi as i32;
        let facts = self.object_facts(tgid, fd);
        let stack = self.capture_stack(tid, tgid, Some(&regs));
        let loading = self.procs.get(&tgid).is_some_and(|p| p.loading)
            || self.made_by_loader(tid, tgid, regs.rip);
        let quarantine = quarantine
            && self.opts.quarantine > 0
            && fd > 2
            && !loading
            && self.room_for_tombstone(tid, tgid);
        if !quarantine {
            if let Some(t) = self.threads.get(&tid) {
                t.table
                    .borrow_mut()
                    .close(fd, stack, tgid, facts, "close()", false);
            }
            self.resume(tid, None);
            return;
        }
        match self.close_into_tombstone(tid, tgid, &regs, fd) {
            Ok(tombstoned) => {
                if let Some(t) = self.threads.get(&tid) {
                    t.table
                        .borrow_mut()
                        .close(fd, stack, tgid, facts, "close()", tombstoned);
                }
                self.resume(tid, None);
            }
            Err(InjectError::Gone) => {}
            Err(InjectError::Ptrace(_)) => self.resume(tid, None),
        }
    }

    /// Was the call at `ip` made by the dynamic loader (the fds of the
    /// libraries it maps, closed before the program runs)? Quarantining
    /// those would shift every fd number the program gets after them.
    fn made_by_loader(&mut self, tid: i32, tgid: i32, ip: u64) -> bool {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return false;
        };
        let (base, end) = &mut p.loader;
        if *base == 0 {
            return false;
        }
        let base = *base;
        let end = *end.get_or_insert_with(|| {
            super::execinfo::image_span(tid, base).map_or(base, |span| base.saturating_add(span))
        });
        (base..end).contains(&ip)
    }

    /// The process's RLIMIT_NOFILE, re-read every 1024 questions.
    pub(super) fn cached_nofile(&mut self, tgid: i32) -> u64 {
        let Some(p) = self.procs.get_mut(&tgid) else {
            return nofile_limit(tgid);
        };
        match &mut p.nofile {
            Some((limit, asked)) if *asked < 1024 => {
                *asked += 1;
                *limit
            }
            slot => {
                let limit = nofile_limit(tgid);
                *slot = Some((limit, 0));
                limit
            }
        }
    }

    /// Whether one more tombstone fits: under the quarantine bound after
    /// eviction, below 1024 for programs that use select(), and clear of
    /// RLIMIT_NOFILE.
    pub(super) fn room_for_tombstone(&mut self, tid: i32, tgid: i32) -> bool {
        let limit = self.cached_nofile(tgid);
        let Some(t) = self.threads.get(&tid) else {
            return false;
        };
        let table = t.table.borrow();
        let used = table.used() as u64;
        used + 16 < limit && used + 16 < 1024
    }

    /// Replaces the close at `entry` with `dup3(tomb_src, fd, O_CLOEXEC)`,
    /// planting the tombstone source first if needed, evicting old
    /// tombstones past the bound, and makes the call return 0. Returns
    /// whether the fd is now a tombstone (false: it was plainly closed).
    pub(super) fn close_into_tombstone(
        &mut self,
        tid: i32,
        tgid: i32,
        entry: &Regs,
        fd: i32,
    ) -> Result<bool, InjectError> {
        let table = self.threads[&tid].table.clone();
        let src = table.borrow().tomb_src;
        let mut state = match src {
            Some(s) => {
                let (ret, exit) = tracer::replace_at_entry(
                    tid,
                    entry,
                    libc::SYS_dup3,
                    [s as u64, fd as u64, libc::O_CLOEXEC as u64, 0, 0, 0],
                    &mut self.deferred,
                )?;
                if ret == fd as i64 {
                    exit
                } else {
                    // The source is gone (closed by the program under
                    // another name): close for real and plant anew next time.
                    table.borrow_mut().set_tomb_src(None);
                    return self.close_for_real(tid, &exit, entry, fd);
                }
            }
            None => {
                let (planted, exit) = self.plant_tomb_src(tid, tgid, entry)?;
                match planted {
                    Some(s) => {
                        table.borrow_mut().set_tomb_src(Some(s));
                        let (ret, exit) = tracer::inject_at_exit(
                            tid,
                            &exit,
                            libc::SYS_dup3,
                            [
                                s as u64,
                                fd as u64,
                                libc::O_CLOEXEC as u64,
                                self.cookie,
                                0,
                                0,
                            ],
                            &mut self.deferred,
                        )?;
                        if ret != fd as i64 {
                            return self.close_for_real(tid, &exit, entry, fd);
                        }
                        exit
                    }
                    None => return self.close_for_real(tid, &exit, entry, fd),
                }
            }
        };
        // Evict down to half the bound once it is exceeded, in runs, so a
        // loop that churns fds pays for eviction once per many closes.
        let cap = self.opts.quarantine;
        let evict = {
            let mut t = table.borrow_mut();
            if t.quarantined() + 1 > cap {
                t.evict(cap / 2)
            } else {
                Vec::new()
            }
        };
        for (first, last) in runs(&evict) {
            let (_, exit) = if first == last {
                tracer::inject_at_exit(
                    tid,
                    &state,
                    libc::SYS_close,
                    [first as u64, self.cookie, 0, 0, 0, 0],
                    &mut self.deferred,
                )?
            } else {
                tracer::inject_at_exit(
                    tid,
                    &state,
                    436,
                    [first as u64, last as u64, 0, self.cookie, 0, 0],
                    &mut self.deferred,
                )?
            };
            state = exit;
        }
        let mut done = *entry;
        done.rax = 0;
        tracer::setregs(tid, &done)?;
        Ok(true)
    }

    /// The quarantine could not take `fd`: close it plainly from the exit
    /// stop at `state` and give the program close's own result.
    fn close_for_real(
        &mut self,
        tid: i32,
        state: &Regs,
        entry: &Regs,
        fd: i32,
    ) -> Result<bool, InjectError> {
        let (_, exit) = tracer::inject_at_exit(
            tid,
            state,
            libc::SYS_close,
            [fd as u64, self.cookie, 0, 0, 0, 0],
            &mut self.deferred,
        )?;
        let mut done = *entry;
        done.rax = exit.rax;
        tracer::setregs(tid, &done)?;
        Ok(false)
    }

    /// Opens `/` with O_PATH|O_CLOEXEC in the tracee and moves it high, to
    /// be the source of tombstones. Runs in place of the syscall at `entry`;
    /// returns the fd (None if it could not be made) and the registers at
    /// the last injected syscall's exit.
    pub(super) fn plant_tomb_src(
        &mut self,
        tid: i32,
        tgid: i32,
        entry: &Regs,
    ) -> Result<(Option<i32>, Regs), InjectError> {
        // The path goes below the red zone of the thread's stack, saved and
        // restored around the call.
        let addr = entry.rsp.wrapping_sub(512) & !0xf;
        let saved = tracer::read_mem(tid, addr, 8).ok();
        let path_ok = saved.is_some() && tracer::write_mem(tid, addr, b"/\0").is_ok();
        let nr = if path_ok {
            libc::SYS_openat
        } else {
            libc::SYS_getpid
        };
        let (ret, mut exit) = tracer::replace_at_entry(
            tid,
            entry,
            nr,
            [
                libc::AT_FDCWD as u64,
                addr,
                (libc::O_PATH | libc::O_CLOEXEC) as u64,
                0,
                self.cookie,
                0,
            ],
            &mut self.deferred,
        )?;
        if let Some(s) = &saved {
            let _ = tracer::write_mem(tid, addr, s);
        }
        if !path_ok || ret < 0 {
            return Ok((None, exit));
        }
        let low = ret;
        let limit = nofile_limit(tgid).clamp(64, 1 << 20);
        let mut placed = None;
        for want in [limit - 1, limit / 2, 1023] {
            if want <= low as u64 {
                continue;
            }
            let (r, e) = tracer::inject_at_exit(
                tid,
                &exit,
                libc::SYS_fcntl,
                [
                    low as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                    want,
                    self.cookie,
                    0,
                    0,
                ],
                &mut self.deferred,
            )?;
            exit = e;
            if r >= 0 {
                placed = Some(r as i32);
                break;
            }
        }
        let (_, e) = tracer::inject_at_exit(
            tid,
            &exit,
            libc::SYS_close,
            [low as u64, self.cookie, 0, 0, 0, 0],
            &mut self.deferred,
        )?;
        Ok((placed, e))
    }

    /// Closes every tombstone (and with `with_src` the tombstone source) of
    /// the thread's table. Leaves the thread at an injected syscall's exit
    /// stop: the caller sets the registers it wants after.
    pub(super) fn release_tombstones(
        &mut self,
        tid: i32,
        exit: &Regs,
        with_src: bool,
    ) -> Result<bool, InjectError> {
        let table = self.threads[&tid].table.clone();
        let (mut fds, src) = {
            let mut t = table.borrow_mut();
            let fds = t.evict(0);
            let src = if with_src { t.tomb_src } else { None };
            if with_src {
                t.set_tomb_src(None);
            }
            (fds, src)
        };
        if let Some(s) = src {
            fds.push(s);
            fds.sort_unstable();
        }
        if fds.is_empty() {
            return Ok(false);
        }
        let mut state = *exit;
        for (first, last) in runs(&fds) {
            let (_, e) = tracer::inject_at_exit(
                tid,
                &state,
                436,
                [first as u64, last as u64, 0, self.cookie, 0, 0],
                &mut self.deferred,
            )?;
            state = e;
        }
        Ok(true)
    }
}
