//! The job policy at a syscall's entry: which fds a call uses, whether
//! each is a valid handle, and what bad-handle, wrong-object, new-* and
//! --max-handles do about it. Every policy decision is made here.

use handles_model::judge::{self, Known};
use handles_model::ObjType;

use super::fdtable::{Origin, Slot};
use super::procfs::fd_exists;
use super::shimtable::{self, ShimSays};
use super::state::{Bad, Job};
use super::syscalls::{Desc, Kind};
use super::tracer::{Regs, Stopped};
use crate::policy::{Action, Condition, Policy};

impl Job {
    /// The fds a syscall uses, read from its registers (and memory for
    /// poll/select).
    pub(super) fn used_fds(&self, stop: &Stopped, desc: &Desc, a: &[u64; 6]) -> Vec<i32> {
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
                if let Ok(buf) = stop.read_mem(a[0], n * 8) {
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
                    if let Ok(buf) = stop.read_mem(set, bytes) {
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
        // The child's own snapshot first (what it closed itself while its
        // table was private, or what it inherited, as it was at the fork),
        // then its parent's table as it is now.
        let parents = view.detail_py(fd);
        let private = super::private::PrivateTable::from_header(tid, tgid, &view)
            .and_then(|mut p| Some((p.is_own(), p.record(fd)?)));
        if let Some((own, (d, py, earlier))) = private {
            if d.value.state == state::TOMBSTONE {
                // The parent's own tombstone of the same handle (closed
                // there before the fork), or any tombstone of a snapshot
                // the child never wrote.
                let inherited = !own
                    || parents.as_ref().is_some_and(|(p, ..)| {
                        p.value.state == state::TOMBSTONE
                            && p.value.generation == d.value.generation
                            && p.value.koid == d.value.koid
                    });
                let closer = if inherited { owner } else { tgid };
                let t = self.threads.get(&tid)?;
                t.table.borrow_mut().remember_closed(
                    fd,
                    shimtable::closed_handle(closer, &d, &py, earlier.as_ref()),
                );
                return Some(if inherited {
                    Bad::StaleInherited
                } else {
                    Bad::Stale
                });
            }
        }
        match parents {
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

    /// The fd arguments of a call, with their argument positions (poll's
    /// and select's sets are questions, judged by the poll path or
    /// answered by the kernel; they are not listed).
    pub(super) fn fd_args(&self, desc: &Desc, a: &[u64; 6]) -> Vec<(usize, i32)> {
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
    pub(super) fn known(&mut self, tid: i32, fd: i32) -> Known {
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
    pub(super) fn asked_by_an_opener(&mut self, stop: &Stopped, tgid: i32, regs: &Regs) -> bool {
        let nr = regs.orig_rax as i64;
        if nr != libc::SYS_fcntl && nr != libc::SYS_newfstatat && nr != libc::SYS_fstat {
            return false;
        }
        let frames = self.offending_stack(stop, tgid, regs);
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
    pub(super) fn is_shell(&mut self, tgid: i32) -> bool {
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
