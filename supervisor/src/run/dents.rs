//! Hiding tombstones from a program's own listing of its fds.
//!
//! A quarantined number is held by a tombstone, which the kernel lists in
//! `/proc/PID/fd` like any fd. A program that lists its fds (to close them
//! all before exec, as gdb does, or to report them) must not see numbers it
//! closed: `getdents64` on a `/proc/PID/fd` directory of a job process is
//! followed to its exit and the entries of hidden numbers (tombstones, the
//! tombstone source) are removed from the buffer before the program reads
//! it.

use super::job::*;
use super::shimtable::ShimSays;

/// `/proc/PID/fd`, `/proc/self/fd`, `/proc/PID/task/TID/fd`: the pid whose
/// fds a directory lists, if the link target is one of those.
pub(super) fn listed_pid(target: &str, tgid: i32) -> Option<i32> {
    let rest = target.strip_prefix("/proc/")?;
    let (who, rest) = rest.split_once('/')?;
    let pid = match who {
        "self" | "thread-self" => tgid,
        n => n.parse().ok()?,
    };
    let ok = rest == "fd"
        || rest
            .strip_prefix("task/")
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(tid, tail)| tid.parse::<i32>().is_ok() && tail == "fd");
    ok.then_some(pid)
}

/// Removes from a `linux_dirent64` buffer the records whose name is a
/// number `hide` says is hidden. Returns the compacted buffer; malformed
/// records end the walk (what was read so far is kept).
pub(super) fn filter_dirents(buf: &[u8], hide: impl Fn(i32) -> bool) -> Vec<u8> {
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
    pub(super) fn watch_listing(&mut self, tid: i32, tgid: i32, regs: &Regs) -> bool {
        let fd = regs.rdi as i32;
        let facts = self.object_facts(tgid, fd);
        let Some(pid) = listed_pid(&facts.target, tgid) else {
            return false;
        };
        // The listed process's shim table, found if it was not yet.
        if let Some(other) = self
            .threads
            .iter()
            .find(|(_, t)| t.tgid == pid)
            .map(|(&k, _)| k)
        {
            self.sync_shim(other, pid);
        }
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
            return false;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = Some(ExitWork::Listing { entry: *regs, pid });
        }
        let _ = ptrace::syscall(Pid::from_raw(tid), None);
        true
    }

    /// At the getdents64 exit: drop the hidden entries. If that leaves
    /// nothing of a non-empty batch, the call is run again for the next
    /// batch (returning 0 would tell the program the listing ended).
    pub(super) fn filter_listing(&mut self, tid: i32, entry: &Regs, exit: &Regs, pid: i32) {
        let ret = exit.rax as i64;
        if ret <= 0 {
            self.resume(tid, None);
            return;
        }
        let Ok(buf) = tracer::read_mem(tid, entry.rsi, ret as usize) else {
            self.resume(tid, None);
            return;
        };
        let table = self
            .threads
            .values()
            .find(|t| t.tgid == pid)
            .map(|t| t.table.clone());
        let Some(table) = table else {
            self.resume(tid, None);
            return;
        };
        let kept = {
            let t = table.borrow();
            // The shim's tombstones and own fds hide too.
            let shim = self.procs.get(&pid).and_then(|p| p.shim.as_ref());
            filter_dirents(&buf, |n| {
                t.is_hidden(n)
                    || shim.is_some_and(|s| {
                        matches!(s.says(n), ShimSays::Tombstone(_) | ShimSays::Internal)
                    })
            })
        };
        if kept.len() == buf.len() {
            self.resume(tid, None);
            return;
        }
        if kept.is_empty() {
            let mut again = *entry;
            again.rax = entry.orig_rax;
            again.rip = entry.rip.wrapping_sub(tracer::SYSCALL_INSN_LEN);
            let _ = tracer::setregs(tid, &again);
            self.resume(tid, None);
            return;
        }
        if tracer::write_mem(tid, entry.rsi, &kept).is_ok() {
            let mut done = *exit;
            done.rax = kept.len() as u64;
            let _ = tracer::setregs(tid, &done);
        }
        self.resume(tid, None);
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
        assert_eq!(listed_pid("/proc/123/fdinfo", 7), None);
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
