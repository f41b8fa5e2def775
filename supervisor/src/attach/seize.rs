//! Seizing every thread of a process, and the detach that gives it back.
//!
//! No PTRACE_O_EXITKILL: if `handles` dies (SIGKILL included) the kernel
//! detaches its tracees and they run on, unharmed. No seccomp filter, for
//! the same reason: nothing of the window outlives the tracer.

use std::collections::HashSet;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::preflight::{self, AttachError};
use super::window::{tgid_of, Thread, Window};
use crate::run::tracer::{self, Waited};

fn options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXEC
}

fn tasks(tgid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{tgid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether we already trace `tid` (a thread auto-attached through
/// PTRACE_O_TRACECLONE before the listing reached it).
fn traced_by_us(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
        })
        .is_some_and(|t| t == std::process::id())
}

impl Window<'_> {
    /// Seizes every thread, listing /proc/PID/task again until a listing
    /// brings no new one (threads created meanwhile by a thread not yet
    /// seized), then interrupts each so that it starts stopping at
    /// syscalls.
    pub(super) fn seize_all(&mut self) -> Result<(), AttachError> {
        let mut seized: HashSet<i32> = HashSet::new();
        loop {
            let fresh: Vec<i32> = tasks(self.tgid)
                .into_iter()
                .filter(|t| !seized.contains(t))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for tid in fresh {
                match ptrace::seize(Pid::from_raw(tid), options()) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => continue,
                    Err(Errno::EPERM) if !seized.is_empty() && traced_by_us(tid) => {}
                    Err(e) => {
                        let err = match e {
                            Errno::EPERM if seized.is_empty() => {
                                preflight::explain_eperm(self.tgid)
                            }
                            _ => AttachError::Other(format!(
                                "PTRACE_SEIZE of thread {tid} of process {}: {e}",
                                self.tgid
                            )),
                        };
                        self.detach_all();
                        return Err(err);
                    }
                }
                seized.insert(tid);
                self.threads
                    .insert(tid, Thread::new(tgid_of(tid).unwrap_or(self.tgid)));
            }
        }
        if seized.is_empty() {
            return Err(AttachError::ExitedBefore(self.tgid));
        }
        for &tid in &seized {
            let _ = ptrace::interrupt(Pid::from_raw(tid));
        }
        Ok(())
    }

    /// Whether process `tgid` still holds tombstones to release.
    fn holds_tombstones(&self, tgid: i32) -> bool {
        self.procs
            .get(&tgid)
            .is_some_and(|p| !p.exited && (p.tomb_src.is_some() || !p.quarantine.is_empty()))
    }

    /// Detaches every thread: each is interrupted, and detached at the
    /// first stop it reports (passing on a signal it was about to take).
    /// In a process holding tombstones, the first thread to reach a
    /// syscall-entry stop releases them all first (an interrupted blocking
    /// call restarts, which makes such a stop). Children forked meanwhile
    /// are detached at their first stop. Returns how many threads did not
    /// stop in time.
    pub(super) fn detach_all(&mut self) -> usize {
        let mut left: HashSet<i32> = self.threads.keys().copied().collect();
        for &tid in &left {
            let _ = ptrace::interrupt(Pid::from_raw(tid));
        }
        let deadline = Instant::now() + super::window::DETACH_TIMEOUT;
        // A process whose threads make no syscall (a busy loop) never
        // gets to release its tombstones: past this, they are left.
        let release_until = Instant::now() + super::window::DETACH_TIMEOUT / 2;
        while !left.is_empty() && Instant::now() < deadline {
            let st = match self.backlog.pop() {
                Some(st) => st,
                None => match tracer::wait(None) {
                    Ok(Waited::Status(st)) => st,
                    Ok(Waited::SignalStop(tid, sig)) => {
                        // A real-time signal: detached with it.
                        let _ = tracer::resume_with(tid, sig, true);
                        left.remove(&tid);
                        continue;
                    }
                    Ok(Waited::Killed(pid, _, _)) => {
                        left.remove(&pid);
                        self.gone(pid);
                        continue;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                },
            };
            let pid = match st {
                WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
                    left.remove(&pid.as_raw());
                    self.gone(pid.as_raw());
                    continue;
                }
                WaitStatus::PtraceEvent(pid, _, _)
                | WaitStatus::PtraceSyscall(pid)
                | WaitStatus::Stopped(pid, _) => pid,
                _ => continue,
            };
            let tid = pid.as_raw();
            let tgid = self
                .threads
                .get(&tid)
                .map(|t| t.tgid)
                .or_else(|| tgid_of(tid))
                .unwrap_or(tid);
            if let WaitStatus::PtraceEvent(_, _, event) = st {
                if matches!(
                    event,
                    libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE
                ) {
                    // The new task is ours until it stops once.
                    if let Ok(child) = ptrace::getevent(pid) {
                        left.insert(child as i32);
                    }
                }
            }
            let sig = match st {
                WaitStatus::Stopped(_, sig) => Some(sig),
                _ => None,
            };
            // A group stop (SIGSTOP) must stay stopped: detached as it is,
            // with its tombstones.
            let group_stop = matches!(
                st,
                WaitStatus::PtraceEvent(_, s, libc::PTRACE_EVENT_STOP) if s != nix::sys::signal::Signal::SIGTRAP
            );
            if self.holds_tombstones(tgid) && !group_stop && Instant::now() < release_until {
                let at_entry = matches!(st, WaitStatus::PtraceSyscall(_))
                    && super::window::syscall_info(tid)
                        .is_some_and(|i| i.op == super::window::OP_ENTRY);
                if at_entry {
                    self.release_at_entry(tid, tgid);
                } else if matches!(
                    st,
                    WaitStatus::PtraceEvent(
                        _,
                        nix::sys::signal::Signal::SIGTRAP,
                        libc::PTRACE_EVENT_STOP
                    )
                ) && self.release_at_interrupt(tid, tgid)
                {
                    // Released from its own code: it may go now.
                    let _ = ptrace::detach(pid, None);
                    left.remove(&tid);
                    continue;
                }
                // On to a syscall-entry stop (the re-made call's, after a
                // release), where it is detached or releases.
                if ptrace::syscall(pid, sig).is_err() {
                    left.remove(&tid);
                }
                continue;
            }
            let _ = ptrace::detach(pid, sig);
            left.remove(&tid);
        }
        self.threads.clear();
        left.len()
    }
}
