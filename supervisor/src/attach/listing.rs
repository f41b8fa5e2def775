//! Hiding the window's tombstones from the process's own listings of its
//! fds, as `handles run` hides its own (`run::dents`): a getdents64 on a
//! `/proc/PID/fd` (or fdinfo) directory of a process holding tombstones is
//! followed to its exit, and the entries of the quarantined numbers and of
//! the tombstone source are taken out of the buffer before the program
//! reads it.

use super::window::Window;
use crate::run::tracer;
use crate::run::{filter_dirents, listed_pid};

impl Window<'_> {
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
