//! Hiding tombstones from a program's own listing of its fds.
//!
//! A quarantined number is held by a tombstone, which the kernel lists in
//! `/proc/PID/fd` like any fd. A program that lists its fds (to close them
//! all before exec, as gdb does, or to report them) must not see numbers it
//! closed: `getdents64` on a `/proc/PID/fd` directory of a job process is
//! followed to its exit and the entries of hidden numbers (tombstones, the
//! tombstone source) are removed from the buffer before the program reads
//! it.

use handles_model::fdpath::{self, Whose};

use super::shimtable::ShimSays;
use super::state::{ExitWork, Job};
use super::tracer;
use super::tracer::{Regs, Resumed, Stopped};

/// The process whose fds the directory at `target` lists (an fd
/// directory's link, or a path a program names: `/proc/PID/fd`,
/// `/proc/PID/fdinfo`, per thread, `self`), `tgid` being the process that
/// resolves it.
pub(crate) fn listed_pid(target: &str, tgid: i32) -> Option<i32> {
    match fdpath::listing(target.as_bytes())? {
        Whose::This => Some(tgid),
        Whose::Pid(p) => Some(p),
    }
}

/// Removes from a `linux_dirent64` buffer the records whose name is a
/// number `hide` says is hidden. Returns the compacted buffer; malformed
/// records end the walk (what was read so far is kept).
pub(crate) fn filter_dirents(buf: &[u8], hide: impl Fn(i32) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len());
    let mut off = 0usize;
    while off + 19 <= buf.len() {
        let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
        if reclen < 19 || off + reclen > buf.len() {
            break;
        }
        let rec = &buf[off..off + reclen];
        let name = &rec[19..];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let hidden = std::str::from_utf8(&name[..end])
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .is_some_and(&hide);
        if !hidden {
            out.extend_from_slice(rec);
        }
        off += reclen;
    }
    out
}

impl Job {
    /// At a getdents64 entry: if the directory lists the fds of a job
    /// process that has hidden numbers, follow the call to its exit.
    pub(super) fn watch_listing(&mut self, stop: Stopped, tgid: i32, regs: &Regs) -> Resumed {
        let fd = regs.rdi as i32;
        let facts = self.object_facts(tgid, fd);
        let Some(pid) = listed_pid(&facts.target, tgid) else {
            return stop.cont();
        };
        self.sync_shim_of(pid);
        let hides = self
            .threads
            .values()
            .find(|t| t.tgid == pid)
            .is_some_and(|t| {
                let table = t.table.borrow();
                table.quarantined() > 0 || table.tomb_src.is_some()
            })
            || self.procs.get(&pid).is_some_and(|p| p.shim.is_some());
        if !hides {
            return stop.cont();
        }
        if let Some(t) = self.threads.get_mut(&stop.tid()) {
            t.pending = Some(ExitWork::Listing { entry: *regs, pid });
        }
        stop.to_exit()
    }

    /// Whether fd `fd` of job process `pid` is one the program must not
    /// see: a tombstone (the supervisor's or the shim's) or a tool's own.
    pub(super) fn hidden_in(&self, pid: i32, fd: i32) -> bool {
        let Some(t) = self.threads.values().find(|t| t.tgid == pid) else {
            return false;
        };
        let shim = self.procs.get(&pid).and_then(|p| p.shim.as_ref());
        t.table.borrow().is_hidden(fd)
            || shim
                .is_some_and(|s| matches!(s.says(fd), ShimSays::Tombstone(_) | ShimSays::Internal))
    }

    /// Whether the path at `addr` in `tid`'s memory (process `tgid`) names
    /// an fd-table entry of a job process that is hidden
    /// ([`Job::hidden_in`]): `/dev/fd/N`, `/proc/self/fd/N`,
    /// `/proc/PID/fdinfo/N`... (`fdpath::entry`).
    pub(super) fn names_hidden_entry(&mut self, stop: &Stopped, tgid: i32, addr: u64) -> bool {
        let Some(path) = stop.read_head(addr, 64) else {
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
            Whose::Pid(p) => match self.threads.get(&p) {
                Some(t) => t.tgid,
                None => return false,
            },
        };
        self.sync_shim_of(pid);
        self.hidden_in(pid, e.fd)
    }

    /// At the getdents64 exit: drop the hidden entries. If that leaves
    /// nothing of a non-empty batch, the call is run again for the next
    /// batch (returning 0 would tell the program the listing ended).
    pub(super) fn filter_listing(
        &mut self,
        stop: Stopped,
        entry: &Regs,
        exit: &Regs,
        pid: i32,
    ) -> Resumed {
        let ret = exit.rax as i64;
        if ret <= 0 {
            return stop.cont();
        }
        let Ok(buf) = stop.read_mem(entry.rsi, ret as usize) else {
            return stop.cont();
        };
        if !self.threads.values().any(|t| t.tgid == pid) {
            return stop.cont();
        }
        let kept = filter_dirents(&buf, |n| self.hidden_in(pid, n));
        if kept.len() == buf.len() {
            return stop.cont();
        }
        if kept.is_empty() {
            let mut again = *entry;
            again.rax = entry.orig_rax;
            again.rip = entry.rip.wrapping_sub(tracer::SYSCALL_INSN_LEN);
            let _ = stop.set_regs(&again);
            return stop.cont();
        }
        if stop.write_mem(entry.rsi, &kept).is_ok() {
            let mut done = *exit;
            done.rax = kept.len() as u64;
            let _ = stop.set_regs(&done);
        }
        stop.cont()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> Vec<u8> {
        let mut r = vec![0u8; 19];
        r.extend_from_slice(name.as_bytes());
        r.push(0);
        while !r.len().is_multiple_of(8) {
            r.push(0);
        }
        let len = r.len() as u16;
        r[16..18].copy_from_slice(&len.to_ne_bytes());
        r
    }

    #[test]
    fn listed_pids() {
        assert_eq!(listed_pid("/proc/self/fd", 7), Some(7));
        assert_eq!(listed_pid("/proc/123/fd", 7), Some(123));
        assert_eq!(listed_pid("/proc/123/task/124/fd", 7), Some(123));
        assert_eq!(listed_pid("/proc/123/fdinfo", 7), Some(123));
        assert_eq!(listed_pid("/proc/123/fd/4", 7), None);
        assert_eq!(listed_pid("/tmp/fd", 7), None);
    }

    #[test]
    fn hidden_numbers_are_dropped() {
        let buf: Vec<u8> = [".", "..", "0", "3", "4", "19999"]
            .iter()
            .flat_map(|n| rec(n))
            .collect();
        let kept = filter_dirents(&buf, |n| n == 3 || n == 19999);
        let expect: Vec<u8> = [".", "..", "0", "4"].iter().flat_map(|n| rec(n)).collect();
        assert_eq!(kept, expect);
        // Garbage ends the walk without panicking.
        assert!(filter_dirents(&[1, 2, 3], |_| true).is_empty());
        let mut bad = rec("5");
        bad[16] = 200;
        assert!(filter_dirents(&bad, |_| false).is_empty());
    }
}
