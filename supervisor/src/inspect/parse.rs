//! Pure parsers for what /proc says about an fd: the `/proc/PID/fd/N` link
//! target and the `/proc/PID/fdinfo/N` text. No I/O here, so they are tested
//! on literals and fuzzed.

/// What `readlink /proc/PID/fd/N` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// `socket:[INODE]`
    Socket(u64),
    /// `pipe:[INODE]`
    Pipe(u64),
    /// `anon_inode:[eventfd]`, `anon_inode:inotify`, ... with the name
    /// stripped of brackets.
    AnonInode(String),
    /// `pidfd:[INODE]` (pidfs on kernels that name it so).
    Pidfd(u64),
    /// `/memfd:NAME (deleted)`.
    Memfd(String),
    /// A path in the file system (possibly ending in ` (deleted)`).
    Path(String),
    /// Anything else, such as `net:[...]`, `mnt:[...]`, `user:[...]`
    /// namespace files or a future kernel's new form.
    Other(String),
}

fn bracketed_inode(s: &str, prefix: &str) -> Option<u64> {
    s.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl LinkTarget {
    pub fn parse(target: &str) -> LinkTarget {
        if let Some(ino) = bracketed_inode(target, "socket:") {
            return LinkTarget::Socket(ino);
        }
        if let Some(ino) = bracketed_inode(target, "pipe:") {
            return LinkTarget::Pipe(ino);
        }
        if let Some(ino) = bracketed_inode(target, "pidfd:") {
            return LinkTarget::Pidfd(ino);
        }
        if let Some(rest) = target.strip_prefix("anon_inode:") {
            let name = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(rest);
            return LinkTarget::AnonInode(name.to_string());
        }
        if let Some(rest) = target.strip_prefix("/memfd:") {
            // Every memfd is unlinked, so the kernel always appends
            // " (deleted)"; a real file called /memfd:x that is still linked
            // is therefore not mistaken for one.
            if let Some(name) = rest.strip_suffix(" (deleted)") {
                return LinkTarget::Memfd(name.to_string());
            }
        }
        if target.starts_with('/') {
            return LinkTarget::Path(target.to_string());
        }
        LinkTarget::Other(target.to_string())
    }
}

/// Open flags as the kernel reports them in fdinfo (octal `flags:`).
pub mod oflags {
    pub const ACCMODE: u32 = 0o3;
    pub const RDONLY: u32 = 0o0;
    pub const WRONLY: u32 = 0o1;
    pub const RDWR: u32 = 0o2;
    pub const PATH: u32 = 0o10000000;
    pub const CLOEXEC: u32 = 0o2000000;

    /// Flag names for the long view, in the order `fcntl(2)` lists them.
    pub const NAMED: &[(u32, &str)] = &[
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o4010000, "O_SYNC"),
        (0o10000, "O_DSYNC"),
        (0o20000, "O_ASYNC"),
        (0o40000, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o10000000, "O_PATH"),
    ];

    /// `O_RDONLY|O_CLOEXEC|...`: the access mode first, then every set flag.
    /// O_DSYNC is not listed separately when O_SYNC (which includes it) is.
    pub fn names(flags: u32) -> Vec<&'static str> {
        let mut out = Vec::new();
        if flags & PATH == 0 {
            out.push(match flags & ACCMODE {
                RDONLY => "O_RDONLY",
                WRONLY => "O_WRONLY",
                RDWR => "O_RDWR",
                _ => "O_ACCMODE",
            });
        }
        let sync = flags & 0o4010000 == 0o4010000;
        for &(bit, name) in NAMED {
            if bit == 0o10000 && sync {
                continue;
            }
            if flags & bit == bit {
                out.push(name);
            }
        }
        out
    }
}

/// One `tfd:` line of an epoll fdinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpollWatch {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// The fields of `/proc/PID/fdinfo/N` that `handles` uses. Fields a kernel
/// does not print stay `None`; unknown lines are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: Option<u64>,
    pub flags: Option<u32>,
    pub mnt_id: Option<u64>,
    pub ino: Option<u64>,
    pub eventfd_count: Option<u64>,
    pub eventfd_id: Option<u64>,
    pub eventfd_semaphore: Option<bool>,
    /// pidfd: the pid in the reader's pid namespace (-1 once reaped, 0 when
    /// outside the namespace).
    pub pid: Option<i64>,
    pub epoll: Vec<EpollWatch>,
    /// timerfd fields.
    pub clockid: Option<i32>,
    pub ticks: Option<u64>,
    pub settime_flags: Option<u32>,
    pub it_value: Option<(u64, u64)>,
    pub it_interval: Option<(u64, u64)>,
    /// signalfd: the signal mask as a hex string.
    pub sigmask: Option<String>,
    /// inotify: the number of watches.
    pub inotify_watches: usize,
    /// fanotify: the number of marks.
    pub fanotify_marks: usize,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?;
    let rest = rest.strip_prefix(':')?;
    Some(rest.trim())
}

/// Parses `(sec, nsec)` from `(1, 500)`.
fn parse_timespec(s: &str) -> Option<(u64, u64)> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// `key:value` pairs separated by whitespace, as in an epoll `tfd:` line.
fn kv_pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut words = s.split_whitespace().peekable();
    std::iter::from_fn(move || {
        let w = words.next()?;
        match w.split_once(':') {
            Some((k, v)) if !v.is_empty() => Some((k, v)),
            Some((k, _)) => Some((k, words.next().unwrap_or(""))),
            None => Some((w, "")),
        }
    })
}

impl FdInfo {
    pub fn parse(text: &str) -> FdInfo {
        let mut info = FdInfo::default();
        for line in text.lines() {
            if let Some(v) = field(line, "pos") {
                info.pos = v.parse().ok();
            } else if let Some(v) = field(line, "flags") {
                info.flags = u32::from_str_radix(v, 8).ok();
            } else if let Some(v) = field(line, "mnt_id") {
                info.mnt_id = v.parse().ok();
            } else if let Some(v) = field(line, "ino") {
                info.ino = v.parse().ok();
            } else if let Some(v) = field(line, "eventfd-count") {
                info.eventfd_count = u64::from_str_radix(v, 16).ok();
            } else if let Some(v) = field(line, "eventfd-id") {
                info.eventfd_id = v.parse().ok();
            } else if let Some(v) = field(line, "eventfd-semaphore") {
                info.eventfd_semaphore = Some(v == "1");
            } else if let Some(v) = field(line, "Pid") {
                info.pid = v.parse().ok();
            } else if let Some(v) = field(line, "clockid") {
                info.clockid = v.parse().ok();
            } else if let Some(v) = field(line, "ticks") {
                info.ticks = v.parse().ok();
            } else if let Some(v) = field(line, "settime flags") {
                info.settime_flags = u32::from_str_radix(v, 8).ok();
            } else if let Some(v) = field(line, "it_value") {
                info.it_value = parse_timespec(v);
            } else if let Some(v) = field(line, "it_interval") {
                info.it_interval = parse_timespec(v);
            } else if let Some(v) = field(line, "sigmask") {
                info.sigmask = Some(v.to_string());
            } else if line.starts_with("inotify ") {
                info.inotify_watches += 1;
            } else if line.starts_with("fanotify ") && line.contains("ino:") {
                info.fanotify_marks += 1;
            } else if let Some(v) = field(line, "tfd") {
                // "tfd:        5 events:       19 data:                5  pos:0 ino:3 sdev:e"
                let mut watch = EpollWatch {
                    fd: -1,
                    events: 0,
                    data: 0,
                };
                if let Some(fd) = v.split_whitespace().next().and_then(|s| s.parse().ok()) {
                    watch.fd = fd;
                }
                for (k, val) in kv_pairs(v) {
                    match k {
                        "events" => watch.events = u32::from_str_radix(val, 16).unwrap_or(0),
                        "data" => watch.data = u64::from_str_radix(val, 16).unwrap_or(0),
                        _ => {}
                    }
                }
                if watch.fd >= 0 {
                    info.epoll.push(watch);
                }
            }
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert_eq!(LinkTarget::parse("socket:[1234]"), LinkTarget::Socket(1234));
        assert_eq!(LinkTarget::parse("pipe:[99]"), LinkTarget::Pipe(99));
        assert_eq!(LinkTarget::parse("pidfd:[77]"), LinkTarget::Pidfd(77));
        assert_eq!(
            LinkTarget::parse("anon_inode:[eventfd]"),
            LinkTarget::AnonInode("eventfd".into())
        );
        assert_eq!(
            LinkTarget::parse("anon_inode:inotify"),
            LinkTarget::AnonInode("inotify".into())
        );
        assert_eq!(
            LinkTarget::parse("/memfd:my buf (deleted)"),
            LinkTarget::Memfd("my buf".into())
        );
        assert_eq!(
            LinkTarget::parse("/memfd:notreally"),
            LinkTarget::Path("/memfd:notreally".into())
        );
        assert_eq!(
            LinkTarget::parse("/tmp/x (deleted)"),
            LinkTarget::Path("/tmp/x (deleted)".into())
        );
        assert_eq!(
            LinkTarget::parse("net:[4026531840]"),
            LinkTarget::Other("net:[4026531840]".into())
        );
        assert_eq!(
            LinkTarget::parse("socket:[12x]"),
            LinkTarget::Other("socket:[12x]".into())
        );
        assert_eq!(LinkTarget::parse(""), LinkTarget::Other("".into()));
    }

    #[test]
    fn fdinfo_eventfd() {
        let i = FdInfo::parse(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\neventfd-count:                a\neventfd-id: 7\neventfd-semaphore: 1\n",
        );
        assert_eq!(i.flags, Some(0o2000002));
        assert_eq!(i.ino, Some(1038));
        assert_eq!(i.eventfd_count, Some(10));
        assert_eq!(i.eventfd_id, Some(7));
        assert_eq!(i.eventfd_semaphore, Some(true));
    }

    #[test]
    fn fdinfo_epoll_and_timer() {
        let i = FdInfo::parse(
            "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\ntfd:        5 events:       19 data:                5  pos:0 ino:3 sdev:e\ntfd:        7 events:        1 data:       ffffffffffffffff  pos:0 ino:4 sdev:e\n",
        );
        assert_eq!(i.epoll.len(), 2);
        assert_eq!(i.epoll[0].fd, 5);
        assert_eq!(i.epoll[0].events, 0x19);
        assert_eq!(i.epoll[1].data, u64::MAX);
        let t = FdInfo::parse(
            "clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (0, 499)\nit_interval: (2, 0)\n",
        );
        assert_eq!(t.clockid, Some(1));
        assert_eq!(t.settime_flags, Some(1));
        assert_eq!(t.it_value, Some((0, 499)));
        assert_eq!(t.it_interval, Some((2, 0)));
    }

    #[test]
    fn fdinfo_garbage_is_ignored() {
        let i = FdInfo::parse("flags:\tzz\npos\nino:\n:::\ntfd: x events: \n\u{0}\n");
        assert_eq!(i.flags, None);
        assert_eq!(i.ino, None);
        assert!(i.epoll.is_empty());
    }

    #[test]
    fn flag_names() {
        assert_eq!(
            oflags::names(0o2004002),
            ["O_RDWR", "O_NONBLOCK", "O_CLOEXEC"]
        );
        assert_eq!(oflags::names(0o10000000), ["O_PATH"]);
        assert_eq!(oflags::names(0o4010001), ["O_WRONLY", "O_SYNC"]);
    }
}
