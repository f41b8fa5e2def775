//! Hiding the window's tombstones from the process, as `handles run`
//! hides its own:
//!
//! - a getdents64 on a `/proc/PID/fd` (or fdinfo) directory of a process
//!   holding tombstones is followed to its exit, and the entries of the
//!   quarantined numbers and of the tombstone source are taken out of the
//!   buffer before the program reads it (`run::dents`'s filter);
//! - poll/ppoll entries on a quarantined number get POLLNVAL at the exit,
//!   as a closed fd does natively (an O_PATH tombstone would poll ready);
//!   a poll is a question, not a use: no report (docs/policy.md's judge);
//! - select's sets are uses (`used_fds` in window.rs): natively a closed
//!   fd in a set fails the call with EBADF;
//! - a path naming a tombstone's entry (`/proc/self/fd/N`, `/dev/fd/N`,
//!   `/proc/PID/fdinfo/N`) fails with ENOENT without running: natively
//!   nothing holds that number, so nothing has that name.

use handles_model::fdpath::{self, Whose};

use super::fdsets::polled_fds;
use super::window::Window;
use crate::run::syscalls::{path_arg, Desc};
use crate::run::tracer::{self, Stopped};
use crate::run::{filter_dirents, fix_poll, listed_pid};

impl Window<'_> {
    /// At the entry of a call with a path argument: whether the path names
    /// the fd-table entry of a number a window process hides.
    pub(super) fn names_hidden_entry(
        &self,
        tid: i32,
        tgid: i32,
        desc: &Desc,
        args: &[u64; 6],
    ) -> bool {
        let Some(i) = path_arg(desc.nr) else {
            return false;
        };
        // Most paths are settled by their first two bytes.
        let Some(path) = tracer::read_head(tid, args[i], 64) else {
            return false;
        };
        if !fdpath::may_name_table(&path) {
            return false;
        }
        let Some(e) = fdpath::entry(&path) else {
            return false;
        };
        let pid = match e.whose {
            Whose::This => tgid,
            // A thread's /proc entry shows its process's table.
            Whose::Pid(p) => self.threads.get(&p).map_or(p, |t| t.tgid),
        };
        self.procs
            .get(&pid)
            .is_some_and(|p| p.tomb_src == Some(e.fd) || p.quarantine.contains(&e.fd))
    }

    /// At a poll/ppoll entry: the polled numbers the window hides.
    pub(super) fn polled_hidden(&self, tid: i32, tgid: i32, args: &[u64; 6]) -> Vec<i32> {
        let Some(p) = self.procs.get(&tgid) else {
            return Vec::new();
        };
        if p.quarantine.is_empty() && p.tomb_src.is_none() {
            return Vec::new();
        }
        polled_fds(tid, args[0], args[1])
            .into_iter()
            .filter(|&fd| p.tomb_src == Some(fd) || p.quarantine.contains(&fd))
            .collect()
    }

    /// At the poll/ppoll exit: POLLNVAL for the hidden numbers, and the
    /// ready count redone.
    pub(super) fn fix_poll(&self, tid: i32, args: &[u64; 6], hidden: &[i32]) {
        let Ok(exit) = tracer::getregs(tid) else {
            return;
        };
        // fix_poll reads the array and its length from the entry's
        // registers: the arguments are all it needs of them.
        let mut entry = exit;
        entry.rdi = args[0];
        entry.rsi = args[1];
        // This window's loop holds the thread's stop (run/'s loop owns
        // its own, attach's these): the reader the job's checks take.
        fix_poll(&Stopped::reported(tid), &entry, &exit, hidden);
    }

    /// At a getdents64 entry on `fd`: the window process whose fds the
    /// directory lists, if that process holds numbers to hide.
    pub(super) fn listing_to_filter(&self, tgid: i32, fd: i32) -> Option<i32> {
        let target = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
        let pid = listed_pid(&target.to_string_lossy(), tgid)?;
        // A thread's directory lists its process's table.
        let pid = self.threads.get(&pid).map_or(pid, |t| t.tgid);
        let p = self.procs.get(&pid)?;
        (!p.quarantine.is_empty() || p.tomb_src.is_some()).then_some(pid)
    }

    /// At the getdents64 exit, `ret` bytes at `buf`: drops the hidden
    /// entries. If that leaves nothing of a non-empty batch, the call is
    /// made again for the next batch (returning 0 would tell the program
    /// the listing ended).
    pub(super) fn filter_listing(&mut self, tid: i32, buf: u64, ret: i64, pid: i32) {
        if ret <= 0 {
            return;
        }
        let Ok(bytes) = tracer::read_mem(tid, buf, ret as usize) else {
            return;
        };
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let kept = filter_dirents(&bytes, |n| {
            p.tomb_src == Some(n) || p.quarantine.contains(&n)
        });
        if kept.len() == bytes.len() {
            return;
        }
        let Ok(mut regs) = tracer::getregs(tid) else {
            return;
        };
        if kept.is_empty() {
            regs.rax = regs.orig_rax;
            regs.rip = regs.rip.wrapping_sub(tracer::SYSCALL_INSN_LEN);
            let _ = tracer::setregs(tid, &regs);
            return;
        }
        if tracer::write_mem(tid, buf, &kept).is_ok() {
            regs.rax = kept.len() as u64;
            let _ = tracer::setregs(tid, &regs);
        }
    }
}
