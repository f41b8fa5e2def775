//! From what /proc says of an fd to a handle: its type, koid and rkoid.
//! This is where the handle model meets Linux (see docs/handle-model.md).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use handles_model::{Koid, ObjType};

use super::parse::{oflags, FdInfo, LinkTarget};
use super::procdir::{ProcDir, RawFdEntry};
use super::sockdiag::{tcp_state_name, SockTable};
use super::{HandleInfo, RawFacts, Snapshot, SocketInfo, TimerInfo, VmoInfo};

/// The inode number every plain anon_inode fd shares (eventfd, epoll,
/// timerfd, ...). An fd of an anonymous type whose inode differs has a real
/// inode of its own (pidfs pidfds, for one) and that inode is its koid.
pub fn anon_inode_ino() -> Option<u64> {
    // SAFETY: eventfd(2) with valid flags; the fd is owned right away.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    fstat(&fd).map(|st| st.st_ino)
}

fn fstat(fd: &OwnedFd) -> Option<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and st is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 {
        Some(st)
    } else {
        None
    }
}

/// A process's koid: its pidfs inode. `None` on kernels without pidfs
/// (where a pidfd is an anon inode with no identity of its own) or when the
/// process is gone.
pub fn process_koid(pid: i32) -> Option<u64> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let st = fstat(&fd)?;
    (Some(st.st_ino) != anon_inode_ino()).then_some(st.st_ino)
}

/// The type of an anon_inode object from its name (`anon_inode:[NAME]`).
pub(crate) fn anon_type(name: &str) -> ObjType {
    match name {
        "eventfd" => ObjType::Event,
        "eventpoll" => ObjType::Port,
        "timerfd" => ObjType::Timer,
        "signalfd" => ObjType::Signalfd,
        "inotify" => ObjType::Inotify,
        "fanotify" => ObjType::Fanotify,
        "io_uring" => ObjType::IoUring,
        "pidfd" => ObjType::Process,
        "userfaultfd" => ObjType::Userfaultfd,
        "perf_event" => ObjType::PerfEvent,
        n if n.starts_with("bpf") => ObjType::Bpf,
        _ => ObjType::Unknown,
    }
}

fn is_tty(rdev: u64) -> bool {
    let major = libc::major(rdev);
    // 4: ttyN/ttySN, 5: /dev/tty, console, ptmx, 136-143: /dev/pts/N.
    major == 4 || major == 5 || (136..=143).contains(&major)
}

pub(crate) fn path_type(flags: u32, mode: u32, rdev: u64) -> ObjType {
    if flags & oflags::PATH != 0 {
        return ObjType::Path;
    }
    match mode & libc::S_IFMT {
        libc::S_IFREG => ObjType::File,
        libc::S_IFDIR => ObjType::Dir,
        libc::S_IFIFO => ObjType::Pipe,
        libc::S_IFCHR if is_tty(rdev) => ObjType::Tty,
        libc::S_IFCHR => ObjType::Chardev,
        libc::S_IFBLK => ObjType::Blockdev,
        libc::S_IFSOCK => ObjType::Channel,
        _ => ObjType::Unknown,
    }
}

pub(crate) fn blank(fd: i32, target: String, info: &FdInfo) -> HandleInfo {
    HandleInfo {
        fd,
        handle: 0,
        generation: 0,
        koid: 0,
        rkoid: 0,
        rights: 0,
        rights_names: Vec::new(),
        ty: ObjType::Unknown.name(),
        dev: None,
        flags: info.flags.unwrap_or(0),
        flag_names: Vec::new(),
        cloexec: info.flags.unwrap_or(0) & oflags::CLOEXEC != 0,
        target,
        pos: info.pos,
        description: String::new(),
        socket: None,
        eventfd_count: None,
        epoll_fds: None,
        timer: None,
        vmo: None,
        pidfd_pid: None,
        created: None,
        raw: RawFacts::default(),
    }
}

/// Phase one: everything that one process's /proc says about one fd.
pub(crate) fn phase_one(
    dir: &ProcDir,
    raw: RawFdEntry,
    anon_ino: Option<u64>,
) -> Option<HandleInfo> {
    let link = LinkTarget::parse(&raw.target);
    let mut info = FdInfo::parse(&raw.fdinfo);
    if info.flags.is_none() {
        info.flags = raw.link_flags;
    }
    let mut h = blank(raw.fd, raw.target, &info);
    let mut facts = RawFacts::default();
    let ty = match &link {
        LinkTarget::Socket(ino) => {
            h.koid = *ino;
            // Refined to channel/socket once the sock_diag dump is in.
            ObjType::Socket
        }
        LinkTarget::Pipe(ino) => {
            h.koid = *ino;
            ObjType::Pipe
        }
        LinkTarget::Pidfd(ino) => {
            h.koid = *ino;
            // pidfs inodes, eventfd ids and inodes elsewhere are separate
            // number spaces: the space keeps (koid, dev) unique.
            h.dev = Some("pidfs".into());
            h.pidfd_pid = info.pid;
            h.rkoid = pidfd_parent_koid(info.pid.unwrap_or(0));
            ObjType::Process
        }
        LinkTarget::AnonInode(name) => {
            let ty = anon_type(name);
            let own_ino = info.ino.filter(|&i| Some(i) != anon_ino);
            match (ty, info.eventfd_id, own_ino) {
                (ObjType::Event, Some(id), _) => {
                    h.koid = id;
                    h.dev = Some("eventfd".into());
                }
                (_, _, Some(ino)) => {
                    h.koid = ino;
                    h.dev = Some(if ty == ObjType::Process {
                        "pidfs".into()
                    } else {
                        "anon_inode".into()
                    });
                }
                _ => facts.anon = true,
            }
            match ty {
                ObjType::Event => h.eventfd_count = info.eventfd_count,
                ObjType::Port => h.epoll_fds = Some(info.epoll.iter().map(|w| w.fd).collect()),
                ObjType::Process => {
                    h.pidfd_pid = info.pid;
                    if own_ino.is_some() {
                        h.rkoid = pidfd_parent_koid(info.pid.unwrap_or(0));
                    }
                }
                ObjType::Timer => {
                    let ns = |t: Option<(u64, u64)>| {
                        t.map(|(s, n)| s.saturating_mul(1_000_000_000).saturating_add(n))
                            .unwrap_or(0)
                    };
                    h.timer = Some(Box::new(TimerInfo {
                        clock: clock_name(info.clockid.unwrap_or(-1)).to_string(),
                        value_ns: ns(info.it_value),
                        interval_ns: ns(info.it_interval),
                        ticks: info.ticks.unwrap_or(0),
                    }));
                }
                _ => {}
            }
            ty
        }
        LinkTarget::Memfd(name) => {
            let st = dir.stat_fd(raw.fd).ok();
            h.koid = st.map(|s| s.st_ino).or(info.ino).unwrap_or(0);
            // memfd inodes are numbered in their own (shmem) space, which
            // overlaps eventfd ids and pidfs inodes: the device keeps
            // (koid, dev) unique, as docs/handle-model.md promises.
            h.dev = st.map(|s| format!("{}:{}", libc::major(s.st_dev), libc::minor(s.st_dev)));
            facts.seals = memfd_seals(dir, raw.fd);
            facts.size = st.map(|s| s.st_size as u64);
            h.vmo = Some(Box::new(VmoInfo {
                name: name.clone(),
                size: facts.size,
                seals: seal_names(facts.seals.unwrap_or(0)),
            }));
            ObjType::Vmo
        }
        LinkTarget::Path(_) | LinkTarget::Other(_) => match dir.stat_fd(raw.fd) {
            Ok(st) => {
                h.koid = st.st_ino;
                h.dev = Some(format!(
                    "{}:{}",
                    libc::major(st.st_dev),
                    libc::minor(st.st_dev)
                ));
                facts.mode = st.st_mode;
                facts.size = Some(st.st_size as u64);
                facts.rdev = Some(st.st_rdev);
                if matches!(link, LinkTarget::Other(_))
                    && info.flags.unwrap_or(0) & oflags::PATH == 0
                {
                    ObjType::Unknown
                } else {
                    path_type(info.flags.unwrap_or(0), st.st_mode, st.st_rdev)
                }
            }
            // A dangling O_PATH or an fd closed under us: use what fdinfo had.
            Err(_) => {
                h.koid = info.ino.unwrap_or(0);
                if info.flags.unwrap_or(0) & oflags::PATH != 0 {
                    ObjType::Path
                } else {
                    ObjType::Unknown
                }
            }
        },
    };
    h.ty = ty.name();
    facts.link = Some(link);
    facts.info = Box::new(info);
    h.raw = facts;
    Some(h)
}

fn memfd_seals(dir: &ProcDir, fd: i32) -> Option<u32> {
    // Seals live on the inode, so a fresh open of the same memfd sees them.
    let f = dir.reopen_fd(fd, libc::O_RDONLY).ok()?;
    // SAFETY: fcntl(F_GET_SEALS) on an fd we own.
    let s = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    (s >= 0).then_some(s as u32)
}

pub fn seal_names(seals: u32) -> Vec<String> {
    use handles_model::rights::seals as s;
    [
        (s::SEAL, "F_SEAL_SEAL"),
        (s::SHRINK, "F_SEAL_SHRINK"),
        (s::GROW, "F_SEAL_GROW"),
        (s::WRITE, "F_SEAL_WRITE"),
        (s::FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
        (s::EXEC, "F_SEAL_EXEC"),
    ]
    .iter()
    .filter(|(b, _)| seals & b != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

pub fn clock_name(id: i32) -> &'static str {
    match id {
        0 => "CLOCK_REALTIME",
        1 => "CLOCK_MONOTONIC",
        7 => "CLOCK_BOOTTIME",
        8 => "CLOCK_REALTIME_ALARM",
        9 => "CLOCK_BOOTTIME_ALARM",
        _ => "CLOCK_UNKNOWN",
    }
}

/// The `system.sockprotoname` of a socket fd (`UNIX`, `TCP`, ...).
pub(crate) fn sock_protocol_name(pid: i32, fd: i32) -> Option<String> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: path is NUL-terminated, buf writable for buf.len() bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    let s = &buf[..n as usize];
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// Phase two for a socket: channel or socket, peer, addresses.
pub(crate) fn resolve_socket(
    pid: i32,
    h: &mut HandleInfo,
    socks: &SockTable,
    inet_peers: &HashMap<u64, u64>,
) {
    let Some(LinkTarget::Socket(ino)) = h.raw.link else {
        return;
    };
    if let Some(u) = socks.unix.get(&ino) {
        h.ty = ObjType::Channel.name();
        h.rkoid = u.peer;
        h.socket = Some(Box::new(SocketInfo {
            protocol: "unix".into(),
            sock_type: Some(
                match u.sock_type as i32 {
                    libc::SOCK_STREAM => "stream",
                    libc::SOCK_DGRAM => "dgram",
                    libc::SOCK_SEQPACKET => "seqpacket",
                    _ => "unknown",
                }
                .into(),
            ),
            state: Some(tcp_state_name(u.state).into()),
            local: u.name.clone(),
            remote: None,
            peer_processes: Vec::new(),
        }));
        return;
    }
    if let Some(s) = socks.inet.get(&ino) {
        let v6 = s.local.is_ipv6();
        let proto = match (s.protocol as i32, v6) {
            (libc::IPPROTO_TCP, false) => "tcp",
            (libc::IPPROTO_TCP, true) => "tcp6",
            (_, false) => "udp",
            (_, true) => "udp6",
        };
        h.rkoid = inet_peers.get(&ino).copied().unwrap_or(0);
        let connected = s.remote.port() != 0;
        h.socket = Some(Box::new(SocketInfo {
            protocol: proto.into(),
            sock_type: None,
            state: (s.protocol as i32 == libc::IPPROTO_TCP).then(|| tcp_state_name(s.state).into()),
            local: Some(s.local.to_string()),
            remote: connected.then(|| s.remote.to_string()),
            peer_processes: Vec::new(),
        }));
        return;
    }
    // Not in the dumps: another network namespace, a family sock_diag was not
    // asked about, or closed meanwhile. The protocol name still tells a unix
    // socket (a channel) from the rest.
    let proto = sock_protocol_name(pid, h.fd);
    if let Some(p) = &proto {
        if p.starts_with("UNIX") {
            h.ty = ObjType::Channel.name();
        }
    }
    h.socket = Some(Box::new(SocketInfo {
        protocol: proto.unwrap_or_else(|| "unknown".into()).to_lowercase(),
        ..SocketInfo::default()
    }));
}

/// kcmp(KCMP_FILE) of two fds: `Some(Ordering)` of their open file
/// descriptions, `None` when the kernel refuses (no ptrace access).
fn kcmp_file(a: (i32, i32), b: (i32, i32)) -> Option<std::cmp::Ordering> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes plain integers and reads nothing from our memory.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a.0, b.0, KCMP_FILE, a.1, b.1) };
    match r {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// Gives every anonymous object with no id of its own a synthetic koid,
/// equal for all handles that share one open file description (in any of
/// the processes read together).
///
/// Sorting with kcmp as the comparator makes this O(n log n) kcmp calls. The
/// sort is a plain merge sort of our own: a comparator that the kernel
/// answers inconsistently (a process exiting mid-way) must not panic the
/// way std's sort may on a non-total order.
pub(crate) fn assign_synthetic_koids(snaps: &mut [&mut Snapshot]) {
    let mut by_type: HashMap<&'static str, Vec<(i32, i32)>> = HashMap::new();
    for s in snaps.iter() {
        for h in &s.handles {
            if h.raw.anon {
                by_type.entry(h.ty).or_default().push((s.pid, h.fd));
            }
        }
    }
    let mut koids: HashMap<(i32, i32), u64> = HashMap::new();
    for (_, mut members) in by_type {
        members.sort_unstable();
        let cmp = |a: &(i32, i32), b: &(i32, i32)| kcmp_file(*a, *b).unwrap_or_else(|| a.cmp(b));
        merge_sort(&mut members, &cmp);
        let mut i = 0;
        while i < members.len() {
            let mut j = i + 1;
            while j < members.len()
                && kcmp_file(members[i], members[j]) == Some(std::cmp::Ordering::Equal)
            {
                j += 1;
            }
            let first = members[i..j].iter().min().copied().unwrap_or(members[i]);
            let koid = Koid::synthetic(first.0, first.1).0;
            for m in &members[i..j] {
                koids.insert(*m, koid);
            }
            i = j;
        }
    }
    for s in snaps.iter_mut() {
        let pid = s.pid;
        for h in &mut s.handles {
            if let Some(k) = koids.get(&(pid, h.fd)) {
                h.koid = *k;
            }
        }
    }
}

fn merge_sort<T: Copy>(v: &mut [T], cmp: &impl Fn(&T, &T) -> std::cmp::Ordering) {
    if v.len() <= 1 {
        return;
    }
    let mid = v.len() / 2;
    merge_sort(&mut v[..mid], cmp);
    merge_sort(&mut v[mid..], cmp);
    let mut merged = Vec::with_capacity(v.len());
    let (mut i, mut j) = (0, mid);
    while i < mid && j < v.len() {
        if cmp(&v[j], &v[i]) == std::cmp::Ordering::Less {
            merged.push(v[j]);
            j += 1;
        } else {
            merged.push(v[i]);
            i += 1;
        }
    }
    merged.extend_from_slice(&v[i..mid]);
    merged.extend_from_slice(&v[j..]);
    v.copy_from_slice(&merged);
}

/// The rkoid of a pidfd: the koid of its process's parent.
pub(crate) fn pidfd_parent_koid(pidfd_pid: i64) -> u64 {
    if pidfd_pid <= 0 {
        return 0;
    }
    let ppid = std::fs::read_to_string(format!("/proc/{pidfd_pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse::<i32>().ok()
        });
    match ppid {
        Some(pp) if pp > 0 => process_koid(pp).unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sort_survives_inconsistent_comparator() {
        let mut v: Vec<u32> = (0..100).rev().collect();
        merge_sort(&mut v, &|a, b| a.cmp(b));
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        let mut w: Vec<u32> = (0..50).collect();
        merge_sort(&mut w, &|_, _| std::cmp::Ordering::Less);
        assert_eq!(w.len(), 50);
    }

    #[test]
    fn types_from_modes() {
        assert_eq!(path_type(0, libc::S_IFREG, 0), ObjType::File);
        assert_eq!(path_type(oflags::PATH, libc::S_IFREG, 0), ObjType::Path);
        assert_eq!(
            path_type(0, libc::S_IFCHR, libc::makedev(136, 3)),
            ObjType::Tty
        );
        assert_eq!(
            path_type(0, libc::S_IFCHR, libc::makedev(1, 3)),
            ObjType::Chardev
        );
        assert_eq!(anon_type("bpf-map"), ObjType::Bpf);
        assert_eq!(anon_type("[weird]"), ObjType::Unknown);
    }
}
