//! The fd syscalls (x86_64): one table that the seccomp prefilter, the
//! supervisor's policy code and the shim's cookie placement all read, so the
//! set of syscalls that stop a tracee, the set the policy judges and the
//! register the shim puts its cookie in can never drift apart.

/// What a syscall does to the fd table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only uses the fds in its fd arguments.
    Use,
    /// Returns a new fd (and uses its fd arguments, if any).
    Create,
    /// `dup(old)`: uses arg 0, returns a new fd.
    Dup,
    /// `dup2(old, new)` / `dup3(old, new, flags)`: uses arg 0, replaces arg 1.
    DupTo,
    /// `fcntl(fd, cmd, ...)`: F_DUPFD/F_DUPFD_CLOEXEC create a new fd.
    Fcntl,
    Close,
    CloseRange,
    /// `pipe(int[2])`, `pipe2(int[2], flags)`: two fds written to memory.
    Pipe,
    /// `socketpair(d, t, p, int[2])`.
    SocketPair,
    /// `recvmsg`/`recvmmsg`: may receive fds through SCM_RIGHTS.
    RecvMsg,
    RecvMmsg,
    /// `poll`/`ppoll`: fds in a `struct pollfd` array.
    Poll,
    /// `select`/`pselect6`: fds in fd_set bitmaps.
    Select,
    /// `signalfd(fd, ...)`: -1 creates, an fd updates.
    Signalfd,
    /// `mmap`: arg 4 is an fd unless MAP_ANONYMOUS.
    Mmap,
    /// `bpf(cmd, ...)`: some commands return a new fd.
    Bpf,
    /// `setrlimit`/`prlimit64`: no fd, but RLIMIT_NOFILE decides how many
    /// fd numbers the quarantine may hold.
    Limit,
    /// `stat`/`lstat`/`access`/`readlink`: no fd, but a path that may name
    /// an fd-table entry (`/dev/fd/N`, `/proc/self/fd/N`), which must
    /// answer ENOENT for a hidden number (see [`crate::fdpath`]).
    Lookup,
}

/// One fd syscall.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub nr: i64,
    pub name: &'static str,
    pub kind: Kind,
    /// Number of arguments the syscall takes: the first unused register
    /// carries the shim's cookie.
    pub nargs: u8,
    /// Bit i set: argument i is an fd that must be open.
    pub fd_args: u8,
    /// Bit i set: argument i is a directory fd where AT_FDCWD is allowed.
    pub dirfd_args: u8,
}

impl Desc {
    /// Is this syscall part of the fd lifecycle (creates, closes or
    /// duplicates handles)? `--check=lifecycle` traces only these.
    pub fn is_lifecycle(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Use | Kind::Poll | Kind::Select | Kind::Mmap | Kind::Lookup
        )
    }

    /// The argument register left free for the cookie.
    pub fn cookie_arg(&self) -> Option<u8> {
        (self.nargs < 6).then_some(self.nargs)
    }
}

macro_rules! table {
    ($($name:ident = $nr:expr, $kind:ident, $nargs:expr, fds $fds:expr, dirfds $dirs:expr;)*) => {
        /// Every fd syscall `handles` knows, in syscall-number order.
        pub static TABLE: &[Desc] = &[$(Desc {
            nr: $nr,
            name: stringify!($name),
            kind: Kind::$kind,
            nargs: $nargs,
            fd_args: $fds,
            dirfd_args: $dirs,
        },)*];
    };
}

table! {
    read = 0, Use, 3, fds 0b1, dirfds 0;
    write = 1, Use, 3, fds 0b1, dirfds 0;
    open = 2, Create, 3, fds 0, dirfds 0;
    close = 3, Close, 1, fds 0b1, dirfds 0;
    stat = 4, Lookup, 2, fds 0, dirfds 0;
    fstat = 5, Use, 2, fds 0b1, dirfds 0;
    lstat = 6, Lookup, 2, fds 0, dirfds 0;
    poll = 7, Poll, 3, fds 0, dirfds 0;
    lseek = 8, Use, 3, fds 0b1, dirfds 0;
    mmap = 9, Mmap, 6, fds 0, dirfds 0;
    ioctl = 16, Use, 3, fds 0b1, dirfds 0;
    pread64 = 17, Use, 4, fds 0b1, dirfds 0;
    pwrite64 = 18, Use, 4, fds 0b1, dirfds 0;
    readv = 19, Use, 3, fds 0b1, dirfds 0;
    writev = 20, Use, 3, fds 0b1, dirfds 0;
    access = 21, Lookup, 2, fds 0, dirfds 0;
    pipe = 22, Pipe, 1, fds 0, dirfds 0;
    select = 23, Select, 5, fds 0, dirfds 0;
    dup = 32, Dup, 1, fds 0b1, dirfds 0;
    dup2 = 33, DupTo, 2, fds 0b1, dirfds 0;
    sendfile = 40, Use, 4, fds 0b11, dirfds 0;
    socket = 41, Create, 3, fds 0, dirfds 0;
    connect = 42, Use, 3, fds 0b1, dirfds 0;
    accept = 43, Create, 3, fds 0b1, dirfds 0;
    sendto = 44, Use, 6, fds 0b1, dirfds 0;
    recvfrom = 45, Use, 6, fds 0b1, dirfds 0;
    sendmsg = 46, Use, 3, fds 0b1, dirfds 0;
    recvmsg = 47, RecvMsg, 3, fds 0b1, dirfds 0;
    shutdown = 48, Use, 2, fds 0b1, dirfds 0;
    bind = 49, Use, 3, fds 0b1, dirfds 0;
    listen = 50, Use, 2, fds 0b1, dirfds 0;
    getsockname = 51, Use, 3, fds 0b1, dirfds 0;
    getpeername = 52, Use, 3, fds 0b1, dirfds 0;
    socketpair = 53, SocketPair, 4, fds 0, dirfds 0;
    setsockopt = 54, Use, 5, fds 0b1, dirfds 0;
    getsockopt = 55, Use, 5, fds 0b1, dirfds 0;
    fcntl = 72, Fcntl, 3, fds 0b1, dirfds 0;
    flock = 73, Use, 2, fds 0b1, dirfds 0;
    fsync = 74, Use, 1, fds 0b1, dirfds 0;
    fdatasync = 75, Use, 1, fds 0b1, dirfds 0;
    ftruncate = 77, Use, 2, fds 0b1, dirfds 0;
    getdents = 78, Use, 3, fds 0b1, dirfds 0;
    fchdir = 81, Use, 1, fds 0b1, dirfds 0;
    creat = 85, Create, 2, fds 0, dirfds 0;
    readlink = 89, Lookup, 3, fds 0, dirfds 0;
    fchmod = 91, Use, 2, fds 0b1, dirfds 0;
    fchown = 93, Use, 3, fds 0b1, dirfds 0;
    fstatfs = 138, Use, 2, fds 0b1, dirfds 0;
    setrlimit = 160, Limit, 2, fds 0, dirfds 0;
    readahead = 187, Use, 3, fds 0b1, dirfds 0;
    fsetxattr = 190, Use, 5, fds 0b1, dirfds 0;
    fgetxattr = 193, Use, 4, fds 0b1, dirfds 0;
    flistxattr = 196, Use, 3, fds 0b1, dirfds 0;
    fremovexattr = 199, Use, 2, fds 0b1, dirfds 0;
    epoll_create = 213, Create, 1, fds 0, dirfds 0;
    getdents64 = 217, Use, 3, fds 0b1, dirfds 0;
    fadvise64 = 221, Use, 4, fds 0b1, dirfds 0;
    epoll_wait = 232, Use, 4, fds 0b1, dirfds 0;
    epoll_ctl = 233, Use, 4, fds 0b101, dirfds 0;
    mq_open = 240, Create, 4, fds 0, dirfds 0;
    mq_timedsend = 242, Use, 5, fds 0b1, dirfds 0;
    mq_timedreceive = 243, Use, 5, fds 0b1, dirfds 0;
    mq_notify = 244, Use, 2, fds 0b1, dirfds 0;
    mq_getsetattr = 245, Use, 3, fds 0b1, dirfds 0;
    inotify_init = 253, Create, 0, fds 0, dirfds 0;
    inotify_add_watch = 254, Use, 3, fds 0b1, dirfds 0;
    inotify_rm_watch = 255, Use, 2, fds 0b1, dirfds 0;
    openat = 257, Create, 4, fds 0, dirfds 0b1;
    mkdirat = 258, Use, 3, fds 0, dirfds 0b1;
    mknodat = 259, Use, 4, fds 0, dirfds 0b1;
    fchownat = 260, Use, 5, fds 0, dirfds 0b1;
    futimesat = 261, Use, 3, fds 0, dirfds 0b1;
    newfstatat = 262, Use, 4, fds 0, dirfds 0b1;
    unlinkat = 263, Use, 3, fds 0, dirfds 0b1;
    renameat = 264, Use, 4, fds 0, dirfds 0b101;
    linkat = 265, Use, 5, fds 0, dirfds 0b101;
    symlinkat = 266, Use, 3, fds 0, dirfds 0b10;
    readlinkat = 267, Use, 4, fds 0, dirfds 0b1;
    fchmodat = 268, Use, 3, fds 0, dirfds 0b1;
    faccessat = 269, Use, 3, fds 0, dirfds 0b1;
    pselect6 = 270, Select, 6, fds 0, dirfds 0;
    ppoll = 271, Poll, 5, fds 0, dirfds 0;
    splice = 275, Use, 6, fds 0b101, dirfds 0;
    tee = 276, Use, 4, fds 0b11, dirfds 0;
    sync_file_range = 277, Use, 4, fds 0b1, dirfds 0;
    vmsplice = 278, Use, 4, fds 0b1, dirfds 0;
    utimensat = 280, Use, 4, fds 0, dirfds 0b1;
    epoll_pwait = 281, Use, 6, fds 0b1, dirfds 0;
    signalfd = 282, Signalfd, 3, fds 0, dirfds 0;
    timerfd_create = 283, Create, 2, fds 0, dirfds 0;
    eventfd = 284, Create, 1, fds 0, dirfds 0;
    fallocate = 285, Use, 4, fds 0b1, dirfds 0;
    timerfd_settime = 286, Use, 4, fds 0b1, dirfds 0;
    timerfd_gettime = 287, Use, 2, fds 0b1, dirfds 0;
    accept4 = 288, Create, 4, fds 0b1, dirfds 0;
    signalfd4 = 289, Signalfd, 4, fds 0, dirfds 0;
    eventfd2 = 290, Create, 2, fds 0, dirfds 0;
    epoll_create1 = 291, Create, 1, fds 0, dirfds 0;
    dup3 = 292, DupTo, 3, fds 0b1, dirfds 0;
    pipe2 = 293, Pipe, 2, fds 0, dirfds 0;
    inotify_init1 = 294, Create, 1, fds 0, dirfds 0;
    preadv = 295, Use, 5, fds 0b1, dirfds 0;
    pwritev = 296, Use, 5, fds 0b1, dirfds 0;
    perf_event_open = 298, Create, 5, fds 0, dirfds 0;
    recvmmsg = 299, RecvMmsg, 5, fds 0b1, dirfds 0;
    fanotify_init = 300, Create, 2, fds 0, dirfds 0;
    fanotify_mark = 301, Use, 5, fds 0b1, dirfds 0b1000;
    prlimit64 = 302, Limit, 4, fds 0, dirfds 0;
    name_to_handle_at = 303, Use, 5, fds 0, dirfds 0b1;
    open_by_handle_at = 304, Create, 3, fds 0b1, dirfds 0;
    syncfs = 306, Use, 1, fds 0b1, dirfds 0;
    sendmmsg = 307, Use, 4, fds 0b1, dirfds 0;
    setns = 308, Use, 2, fds 0b1, dirfds 0;
    renameat2 = 316, Use, 5, fds 0, dirfds 0b101;
    memfd_create = 319, Create, 2, fds 0, dirfds 0;
    bpf = 321, Bpf, 3, fds 0, dirfds 0;
    execveat = 322, Use, 5, fds 0, dirfds 0b1;
    userfaultfd = 323, Create, 1, fds 0, dirfds 0;
    copy_file_range = 326, Use, 6, fds 0b101, dirfds 0;
    preadv2 = 327, Use, 6, fds 0b1, dirfds 0;
    pwritev2 = 328, Use, 6, fds 0b1, dirfds 0;
    statx = 332, Use, 5, fds 0, dirfds 0b1;
    pidfd_send_signal = 424, Use, 4, fds 0b1, dirfds 0;
    io_uring_setup = 425, Create, 2, fds 0, dirfds 0;
    io_uring_enter = 426, Use, 6, fds 0b1, dirfds 0;
    io_uring_register = 427, Use, 4, fds 0b1, dirfds 0;
    open_tree = 428, Create, 3, fds 0, dirfds 0b1;
    move_mount = 429, Use, 5, fds 0, dirfds 0b101;
    fsopen = 430, Create, 2, fds 0, dirfds 0;
    fsconfig = 431, Use, 5, fds 0b1, dirfds 0;
    fsmount = 432, Create, 3, fds 0b1, dirfds 0;
    fspick = 433, Create, 3, fds 0, dirfds 0b1;
    pidfd_open = 434, Create, 2, fds 0, dirfds 0;
    close_range = 436, CloseRange, 3, fds 0, dirfds 0;
    openat2 = 437, Create, 4, fds 0, dirfds 0b1;
    pidfd_getfd = 438, Create, 3, fds 0b1, dirfds 0;
    faccessat2 = 439, Use, 4, fds 0, dirfds 0b1;
    process_madvise = 440, Use, 5, fds 0b1, dirfds 0;
    epoll_pwait2 = 441, Use, 6, fds 0b1, dirfds 0;
    mount_setattr = 442, Use, 5, fds 0, dirfds 0b1;
    quotactl_fd = 443, Use, 4, fds 0b1, dirfds 0;
    landlock_create_ruleset = 444, Create, 3, fds 0, dirfds 0;
    landlock_add_rule = 445, Use, 4, fds 0b1, dirfds 0;
    landlock_restrict_self = 446, Use, 2, fds 0b1, dirfds 0;
    memfd_secret = 447, Create, 1, fds 0, dirfds 0;
    process_mrelease = 448, Use, 2, fds 0b1, dirfds 0;
    cachestat = 451, Use, 4, fds 0b1, dirfds 0;
    fchmodat2 = 452, Use, 4, fds 0, dirfds 0b1;
    setxattrat = 463, Use, 6, fds 0, dirfds 0b1;
    getxattrat = 464, Use, 6, fds 0, dirfds 0b1;
    listxattrat = 465, Use, 5, fds 0, dirfds 0b1;
    removexattrat = 466, Use, 4, fds 0, dirfds 0b1;
    open_tree_attr = 467, Create, 5, fds 0, dirfds 0b1;
    file_getattr = 468, Use, 5, fds 0, dirfds 0b1;
    file_setattr = 469, Use, 5, fds 0, dirfds 0b1;
}

/// The argument that holds the path of a call that looks a path up and
/// may meet an fd-table entry there (`fdpath`): opens and the questions
/// programs ask of `/dev/fd/N` (stat, access, readlink).
pub fn path_arg(nr: i64) -> Option<usize> {
    match nr {
        2 | 4 | 6 | 21 | 85 | 89 => Some(0),
        257 | 262 | 267 | 269 | 332 | 437 | 439 => Some(1),
        _ => None,
    }
}

/// Looks a syscall up by number in a constant: the shim's wrappers take
/// their fd and directory-fd positions from the table at compile time.
pub const fn desc(nr: i64) -> Option<&'static Desc> {
    let mut i = 0;
    while i < TABLE.len() {
        if TABLE[i].nr == nr {
            return Some(&TABLE[i]);
        }
        i += 1;
    }
    None
}

/// The position of the `n`th (from 0) set bit of `mask`, 6 if it has
/// fewer: with [`desc`], the argument a wrapper finds its `n`th fd in.
pub const fn nth_arg(mask: u8, n: u32) -> usize {
    let mut seen = 0;
    let mut i = 0;
    while i < 6 {
        if mask & (1 << i) != 0 {
            if seen == n {
                return i;
            }
            seen += 1;
        }
        i += 1;
    }
    6
}

/// Looks a syscall up by number (binary search: the table is sorted).
pub fn lookup(nr: i64) -> Option<&'static Desc> {
    TABLE
        .binary_search_by_key(&nr, |d| d.nr)
        .ok()
        .map(|i| &TABLE[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_lookups_agree_with_the_binary_search() {
        for d in TABLE {
            assert_eq!(desc(d.nr).map(|x| x.name), Some(d.name));
        }
        assert!(desc(39).is_none());
        assert_eq!(nth_arg(0b101, 0), 0);
        assert_eq!(nth_arg(0b101, 1), 2);
        assert_eq!(nth_arg(0b10, 0), 1);
        assert_eq!(nth_arg(0b1, 1), 6);
        assert_eq!(nth_arg(0, 0), 6);
    }

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(TABLE.windows(2).all(|w| w[0].nr < w[1].nr), "sorted by nr");
        assert_eq!(lookup(3).map(|d| d.name), Some("close"));
        assert!(lookup(39).is_none(), "getpid is not an fd syscall");
    }

    #[test]
    fn fd_args_within_nargs() {
        for d in TABLE {
            let mask = (1u16 << d.nargs) - 1;
            assert_eq!(u16::from(d.fd_args | d.dirfd_args) & !mask, 0, "{}", d.name);
        }
    }

    #[test]
    fn path_arguments() {
        for (name, arg) in [
            ("open", 0),
            ("stat", 0),
            ("lstat", 0),
            ("access", 0),
            ("creat", 0),
            ("readlink", 0),
            ("openat", 1),
            ("newfstatat", 1),
            ("readlinkat", 1),
            ("faccessat", 1),
            ("statx", 1),
            ("openat2", 1),
            ("faccessat2", 1),
        ] {
            let d = TABLE.iter().find(|d| d.name == name).expect(name);
            assert_eq!(path_arg(d.nr), Some(arg), "{name}");
            // The path comes right after the dirfd, where there is one.
            assert!(
                d.dirfd_args == 0 || d.dirfd_args == 1 << (arg - 1),
                "{name}"
            );
        }
        assert_eq!(path_arg(0), None);
    }

    #[test]
    fn six_argument_syscalls_have_no_cookie_slot() {
        assert_eq!(lookup(9).and_then(|d| d.cookie_arg()), None, "mmap");
        assert_eq!(lookup(3).and_then(|d| d.cookie_arg()), Some(1), "close");
    }
}
