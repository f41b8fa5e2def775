//! The window's quarantine: a number closed during the window is kept
//! occupied by a tombstone (an O_PATH fd of `/`, on which every read,
//! write or ioctl fails with EBADF) so that a later use of it is caught
//! instead of landing on whatever the kernel hands out next; at detach
//! every tombstone is closed again, from inside the process.
//!
//! The close itself runs unchanged (its result is the program's); at its
//! exit stop `fcntl(source, F_DUPFD_CLOEXEC, fd)` refills the number. The
//! source is one O_PATH fd planted high in the table at the first close.
//! If `handles` dies before the detach, the tombstones stay: harmless
//! O_PATH fds of `/` that the process never learns of (and drops at its
//! next exec: they are O_CLOEXEC).

use super::window::Window;
use crate::run::tracer::{self, Deferred, InjectError, Regs};

/// Where the source goes: the lowest free number at or above this many
/// below RLIMIT_NOFILE, out of the way of the low numbers a program uses.
const SOURCE_BELOW_LIMIT: u64 = 16;

impl Window<'_> {
    /// At the exit stop of a successful `close(fd)`: puts a tombstone on
    /// `fd` and evicts the oldest past `--quarantine`. Returns whether the
    /// number is now quarantined.
    pub(super) fn quarantine_at_exit(&mut self, tid: i32, tgid: i32, fd: i32) -> bool {
        if self.opts.quarantine == 0 || fd <= 2 {
            return false;
        }
        let Ok(saved) = tracer::getregs(tid) else {
            return false;
        };
        let mut d = Deferred::default();
        let result = self.tombstone(tid, tgid, fd, &saved, &mut d);
        let _ = tracer::setregs(tid, &saved);
        self.take_deferred(d);
        result.unwrap_or(false)
    }

    fn tombstone(
        &mut self,
        tid: i32,
        tgid: i32,
        fd: i32,
        saved: &Regs,
        d: &mut Deferred,
    ) -> Result<bool, InjectError> {
        let mut regs = *saved;
        let mut inject = |nr: i64, a: [u64; 6], d: &mut Deferred| -> Result<i64, InjectError> {
            let (ret, after) = tracer::inject_at_exit(tid, &regs, nr, a, d)?;
            regs = after;
            Ok(ret)
        };
        let src = match self.procs.get(&tgid).and_then(|p| p.tomb_src) {
            Some(s) => s,
            None => {
                let Some((src, in_place)) = plant_source(tid, tgid, fd, saved, &mut inject, d)?
                else {
                    return Ok(false);
                };
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.tomb_src = Some(src);
                    p.dirty.insert(src);
                    if in_place {
                        p.quarantine.push_back(fd);
                    }
                }
                if in_place {
                    return Ok(true);
                }
                src
            }
        };
        let r = inject(
            libc::SYS_fcntl,
            [src as u64, libc::F_DUPFD_CLOEXEC as u64, fd as u64, 0, 0, 0],
            d,
        )?;
        let placed = r == fd as i64;
        if !placed && r >= 0 {
            // Another thread took the number meanwhile: it is theirs.
            inject(libc::SYS_close, [r as u64, 0, 0, 0, 0, 0], d)?;
        }
        let mut evict = Vec::new();
        if let Some(p) = self.procs.get_mut(&tgid) {
            if placed {
                p.quarantine.push_back(fd);
            }
            while p.quarantine.len() > self.opts.quarantine {
                if let Some(old) = p.quarantine.pop_front() {
                    evict.push(old);
                    p.dirty.insert(old);
                }
            }
        }
        for old in evict {
            inject(libc::SYS_close, [old as u64, 0, 0, 0, 0, 0], d)?;
        }
        Ok(placed)
    }

    /// At a syscall-entry stop, during the detach: closes every tombstone
    /// and the source, then points the thread back at the call it entered,
    /// which it makes again when resumed. Returns whether that was done.
    pub(super) fn release_at_entry(&mut self, tid: i32, tgid: i32) -> bool {
        let nums: Vec<i32> = match self.procs.get(&tgid) {
            Some(p) => p.quarantine.iter().copied().chain(p.tomb_src).collect(),
            None => return true,
        };
        let Ok(entry) = tracer::getregs(tid) else {
            return false;
        };
        let mut d = Deferred::default();
        let mut done = true;
        let mut regs: Option<Regs> = None;
        for n in &nums {
            let a = [*n as u64, 0, 0, 0, 0, 0];
            let r = match &regs {
                None => tracer::replace_at_entry(tid, &entry, libc::SYS_close, a, &mut d),
                Some(r) => tracer::inject_at_exit(tid, r, libc::SYS_close, a, &mut d),
            };
            match r {
                Ok((_, after)) => regs = Some(after),
                Err(_) => {
                    done = false;
                    break;
                }
            }
        }
        if regs.is_some() {
            // The entered call again, from its `syscall` instruction.
            let mut back = entry;
            back.rax = entry.orig_rax;
            back.rip = entry.rip.wrapping_sub(tracer::SYSCALL_INSN_LEN);
            let _ = tracer::setregs(tid, &back);
        }
        if done {
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.quarantine.clear();
                p.tomb_src = None;
            }
        }
        self.take_deferred(d);
        done
    }

    /// During the detach, at the interrupt stop of a thread that was
    /// running its own code (not in a syscall: a busy loop never reaches
    /// a syscall-entry stop): closes every tombstone and the source with
    /// calls made from a `syscall` instruction the process ran before,
    /// then puts every register back. Returns whether that was done.
    pub(super) fn release_at_interrupt(&mut self, tid: i32, tgid: i32) -> bool {
        let Some(p) = self.procs.get(&tgid) else {
            return true;
        };
        let nums: Vec<i32> = p.quarantine.iter().copied().chain(p.tomb_src).collect();
        let Some(after_insn) = p.syscall_ip else {
            return false;
        };
        let Ok(saved) = tracer::getregs(tid) else {
            return false;
        };
        // In a syscall (orig_rax set): its restart makes an entry stop,
        // where release_at_entry does it.
        if saved.orig_rax != u64::MAX {
            return false;
        }
        let insn = after_insn.wrapping_sub(tracer::SYSCALL_INSN_LEN);
        if tracer::read_mem(tid, insn, 2).ok().as_deref() != Some(&[0x0f, 0x05][..]) {
            return false;
        }
        // As if the thread stood at the exit of a call made from there.
        let mut regs = saved;
        regs.rip = after_insn;
        let mut d = Deferred::default();
        let mut done = true;
        for n in &nums {
            match tracer::inject_at_exit(
                tid,
                &regs,
                libc::SYS_close,
                [*n as u64, 0, 0, 0, 0, 0],
                &mut d,
            ) {
                Ok((_, after)) => regs = after,
                Err(_) => {
                    done = false;
                    break;
                }
            }
        }
        let _ = tracer::setregs(tid, &saved);
        if done {
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.quarantine.clear();
                p.tomb_src = None;
            }
        }
        self.take_deferred(d);
        done
    }

    /// What happened to other threads, or to signals, while a thread
    /// ran injected calls: statuses go to the loop, signals are raised
    /// again.
    pub(super) fn take_deferred(&mut self, d: Deferred) {
        self.backlog.extend(d.statuses);
        for (tid, sig) in d.signals {
            let tgid = self.threads.get(&tid).map_or(tid, |t| t.tgid);
            // SAFETY: tgkill of a thread we trace, with the signal it was
            // about to take.
            unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
        }
        for (pid, _, _) in d.killed {
            self.gone(pid);
        }
    }
}

/// Opens the tombstone source: `openat(AT_FDCWD, "/", O_PATH|O_CLOEXEC)`
/// with the path written just below the red zone (and the bytes there put
/// back), then moved high. Returns the source and whether `fd` itself got
/// the first open (the lowest free number: then it is a tombstone
/// already).
fn plant_source(
    tid: i32,
    tgid: i32,
    fd: i32,
    saved: &Regs,
    inject: &mut impl FnMut(i64, [u64; 6], &mut Deferred) -> Result<i64, InjectError>,
    d: &mut Deferred,
) -> Result<Option<(i32, bool)>, InjectError> {
    let at = (saved.rsp - 512) & !7;
    let Ok(old) = tracer::read_mem(tid, at, 8) else {
        return Ok(None);
    };
    if tracer::write_mem(tid, at, b"/\0\0\0\0\0\0\0").is_err() {
        return Ok(None);
    }
    let flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    let opened = inject(
        libc::SYS_openat,
        [libc::AT_FDCWD as u64, at, flags, 0, 0, 0],
        d,
    );
    let _ = tracer::write_mem(tid, at, &old);
    let s = opened?;
    if s < 0 {
        return Ok(None);
    }
    let limit = crate::inspect::shared::nofile(tgid).map_or(1024, |(soft, _)| soft);
    let base = limit.saturating_sub(SOURCE_BELOW_LIMIT).max(3);
    let high = inject(
        libc::SYS_fcntl,
        [s as u64, libc::F_DUPFD_CLOEXEC as u64, base, 0, 0, 0],
        d,
    )?;
    if high < 0 {
        // No room up there: the first open stays the source, low.
        return Ok(Some((s as i32, false)));
    }
    if s == fd as i64 {
        return Ok(Some((high as i32, true)));
    }
    inject(libc::SYS_close, [s as u64, 0, 0, 0, 0, 0], d)?;
    Ok(Some((high as i32, false)))
}
