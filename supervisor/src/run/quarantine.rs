//! The quarantine: `close(fd)` is followed by `F_DUPFD_CLOEXEC(tombstone,
//! fd)` (or becomes `dup3(tombstone, fd)` for objects whose close cannot
//! fail) so the number is not reused at once; planting the tombstone
//! source, eviction, and giving numbers back under fd pressure.

use handles_model::ObjType;

use super::decide;
use super::fdtable::runs;
use super::procfs::nofile_limit;
use super::state::Job;
use super::tracer::{InjectError, Regs, Resumed, Stopped};

impl Job {
    /// A close of an open handle, quarantined unless `quarantine` is false
    /// (a sweep's close: see `judge::Verdict::Unquarantined`).
    pub(super) fn on_close(
        &mut self,
        stop: Stopped,
        tgid: i32,
        regs: Regs,
        quarantine: bool,
    ) -> Resumed {
        let tid = stop.tid();
        let fd = regs.rdi as i32;
        let facts = self.object_facts(tgid, fd);
        let stack = self.capture_stack(&stop, tgid, Some(&regs));
        let loading = self.procs.get(&tgid).is_some_and(|p| p.loading)
            || self.made_by_loader(&stop, tgid, regs.rip);
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
            return stop.cont();
        }
        let cannot_fail = ObjType::from_name(facts.ty).is_some_and(|t| t.close_cannot_fail())
            || (matches!(facts.ty, "file" | "dir") && on_fs_without_flush(tgid, fd));
        match self.close_into_tombstone(&stop, tgid, &regs, fd, cannot_fail) {
            Ok(tombstoned) => {
                if let Some(t) = self.threads.get(&tid) {
                    t.table
                        .borrow_mut()
                        .close(fd, stack, tgid, facts, "close()", tombstoned);
                }
                stop.cont()
            }
            Err(InjectError::Gone) => stop.gone(),
            Err(InjectError::Ptrace(_)) => stop.cont(),
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
        let used = t.table.borrow().used() as u64;
        decide::room_for_tombstone(used, limit)
    }

    /// Runs the close at `entry` and puts a tombstone on its number,
    /// planting the tombstone source first if needed, evicting old
    /// tombstones past the bound; the program gets close's own result.
    /// Returns whether the fd is now a tombstone (false: it was plainly
    /// closed).
    ///
    /// `dup3(tomb_src, fd)` holds the number without a gap, but its
    /// implicit close discards the file's flush result, which is where
    /// NFS/FUSE/9p/CIFS report a failed write-back: it is kept only for
    /// objects whose close cannot fail (`cannot_fail`, from the object's
    /// type as /proc shows it at this stop). Anything else is closed for
    /// real and its number taken back with `F_DUPFD_CLOEXEC(tomb_src, fd)`:
    /// that returns the lowest free number >= fd, so if another thread got
    /// `fd` in between, it returns a higher one, which is closed again and
    /// the other thread's handle is left alone.
    pub(super) fn close_into_tombstone(
        &mut self,
        stop: &Stopped,
        tgid: i32,
        entry: &Regs,
        fd: i32,
        cannot_fail: bool,
    ) -> Result<bool, InjectError> {
        let table = self.threads[&stop.tid()].table.clone();
        let mut src = table.borrow().tomb_src;
        // The registers at the last injected syscall's exit; None while
        // the thread is still at the program's own syscall entry.
        let mut at = None;
        if src.is_none() {
            let (planted, exit) = self.plant_tomb_src(stop, tgid, entry)?;
            table.borrow_mut().set_tomb_src(planted);
            if planted.is_none() {
                return self.close_for_real(stop, &exit, entry, fd);
            }
            src = planted;
            at = Some(exit);
        }
        let Some(s) = src else {
            return Err(InjectError::Gone);
        };
        let cookie = self.cookie;
        let (s, fd64) = (s as u64, fd as u64);
        let ebadf = -i64::from(libc::EBADF);
        let (result, held) = if cannot_fail {
            let dup = [s, fd64, libc::O_CLOEXEC as u64, cookie, 0, 0];
            let r = self.syscall_in(stop, entry, &mut at, libc::SYS_dup3, dup)?;
            if r == i64::from(fd) {
                (0, true)
            } else {
                if r == ebadf {
                    // The source is gone (closed by the program under
                    // another name): plant anew next time.
                    table.borrow_mut().set_tomb_src(None);
                }
                let close = [fd64, cookie, 0, 0, 0, 0];
                (
                    self.syscall_in(stop, entry, &mut at, libc::SYS_close, close)?,
                    false,
                )
            }
        } else {
            let close = [fd64, cookie, 0, 0, 0, 0];
            let r = self.syscall_in(stop, entry, &mut at, libc::SYS_close, close)?;
            // EBADF: it was not open, so the number is not ours to take.
            let held = r != ebadf && {
                let again = [s, libc::F_DUPFD_CLOEXEC as u64, fd64, cookie, 0, 0];
                let d = self.syscall_in(stop, entry, &mut at, libc::SYS_fcntl, again)?;
                if d >= 0 && d != i64::from(fd) {
                    // Another thread's handle sits at fd; ours is the spare.
                    let spare = [d as u64, cookie, 0, 0, 0, 0];
                    self.syscall_in(stop, entry, &mut at, libc::SYS_close, spare)?;
                } else if d == ebadf {
                    table.borrow_mut().set_tomb_src(None);
                }
                d == i64::from(fd)
            };
            (r, held)
        };
        let (true, Some(mut state)) = (held, at) else {
            let mut done = *entry;
            done.rax = result as u64;
            stop.set_regs(&done)?;
            return Ok(false);
        };
        // Evict down to half the bound once it is exceeded, in runs, so a
        // loop that churns fds pays for eviction once per many closes.
        let cap = self.opts.quarantine;
        let evict = {
            let mut t = table.borrow_mut();
            match decide::evict_to(t.quarantined(), cap) {
                Some(keep) => t.evict(keep),
                None => Vec::new(),
            }
        };
        for (first, last) in runs(&evict) {
            let (_, exit) = if first == last {
                stop.inject_at_exit(
                    &state,
                    libc::SYS_close,
                    [first as u64, self.cookie, 0, 0, 0, 0],
                    &mut self.deferred,
                )?
            } else {
                stop.inject_at_exit(
                    &state,
                    436,
                    [first as u64, last as u64, 0, self.cookie, 0, 0],
                    &mut self.deferred,
                )?
            };
            state = exit;
        }
        let mut done = *entry;
        done.rax = result as u64;
        stop.set_regs(&done)?;
        Ok(true)
    }

    /// Runs `nr(a)` in the stopped thread: in place of the program's
    /// syscall at `entry` when nothing ran yet (`at` None), else after the
    /// injected syscall whose exit registers `at` holds. Returns the raw
    /// result and leaves `at` at this syscall's exit.
    fn syscall_in(
        &mut self,
        stop: &Stopped,
        entry: &Regs,
        at: &mut Option<Regs>,
        nr: i64,
        a: [u64; 6],
    ) -> Result<i64, InjectError> {
        let (ret, exit) = match at {
            None => stop.replace_at_entry(entry, nr, a, &mut self.deferred)?,
            Some(prev) => stop.inject_at_exit(prev, nr, a, &mut self.deferred)?,
        };
        *at = Some(exit);
        Ok(ret)
    }

    /// The quarantine could not take `fd`: close it plainly from the exit
    /// stop at `state` and give the program close's own result.
    fn close_for_real(
        &mut self,
        stop: &Stopped,
        state: &Regs,
        entry: &Regs,
        fd: i32,
    ) -> Result<bool, InjectError> {
        let (_, exit) = stop.inject_at_exit(
            state,
            libc::SYS_close,
            [fd as u64, self.cookie, 0, 0, 0, 0],
            &mut self.deferred,
        )?;
        let mut done = *entry;
        done.rax = exit.rax;
        stop.set_regs(&done)?;
        Ok(false)
    }

    /// Opens `/dev/null` with O_PATH|O_CLOEXEC in the tracee and moves it
    /// high, to be the source of tombstones: not a directory, so that an
    /// `*at` call that nobody checks (libc's own, under the shim) on a
    /// quarantined dirfd fails with ENOTDIR instead of resolving its path
    /// from somewhere (an O_PATH fd of `/` did that). Runs in place of the syscall at `entry`;
    /// returns the fd (None if it could not be made) and the registers at
    /// the last injected syscall's exit.
    pub(super) fn plant_tomb_src(
        &mut self,
        stop: &Stopped,
        tgid: i32,
        entry: &Regs,
    ) -> Result<(Option<i32>, Regs), InjectError> {
        // The path goes below the red zone of the thread's stack, saved and
        // restored around the call.
        let addr = entry.rsp.wrapping_sub(512) & !0xf;
        let saved = stop.read_mem(addr, 8).ok();
        let path_ok = saved.is_some() && stop.write_mem(addr, b"/dev/null\0").is_ok();
        let nr = if path_ok {
            libc::SYS_openat
        } else {
            libc::SYS_getpid
        };
        let (ret, mut exit) = stop.replace_at_entry(
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
            let _ = stop.write_mem(addr, s);
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
            let (r, e) = stop.inject_at_exit(
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
        let (_, e) = stop.inject_at_exit(
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
        stop: &Stopped,
        exit: &Regs,
        with_src: bool,
    ) -> Result<bool, InjectError> {
        let table = self.threads[&stop.tid()].table.clone();
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
            let (_, e) = stop.inject_at_exit(
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

/// Whether `fd` of `tgid` is on a local file system whose files have no
/// `flush` (ext2/3/4, XFS, Btrfs, tmpfs), so that its close cannot fail
/// and one injected `dup3` may replace close + `F_DUPFD` (two ptrace
/// round trips fewer; a `statfs` costs the supervisor about a
/// microsecond). Anything else, overlayfs included (it passes flush on to
/// the file system below), takes the honest path. The shim does not do
/// this: the `fstatfs` would cost what it saves.
fn on_fs_without_flush(tgid: i32, fd: i32) -> bool {
    let Ok(path) = std::ffi::CString::new(format!("/proc/{tgid}/fd/{fd}")) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated, st writable; follows the magic link
    // to the open file's file system.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    matches!(
        st.f_type,
        libc::EXT4_SUPER_MAGIC
            | libc::XFS_SUPER_MAGIC
            | libc::BTRFS_SUPER_MAGIC
            | libc::TMPFS_MAGIC
    )
}
