//! The fd syscalls: one table that both the seccomp prefilter and the
//! supervisor's policy code read, so the set of syscalls that stop a tracee
//! and the set the policy knows how to judge can never drift apart.
//!
//! x86_64 numbers. Syscalls newer than the build machine's libc headers are
//! numbered here directly.

use crate::seccomp::TracedSyscall;

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
            Kind::Use | Kind::Poll | Kind::Select | Kind::Mmap
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
            nr: $nr as i64,
            name: stringify!($name),
            kind: Kind::$kind,
            nargs: $nargs,
            fd_args: $fds,
            dirfd_args: $dirs,
        },)*];
    };
}

use libc as l;

table! {
    read = l::SYS_read, Use, 3, fds 0b1, dirfds 0;
    write = l::SYS_write, Use, 3, fds 0b1, dirfds 0;
    open = l::SYS_open, Create, 3, fds 0, dirfds 0;
    close = l::SYS_close, Close, 1, fds 0b1, dirfds 0;
    fstat = l::SYS_fstat, Use, 2, fds 0b1, dirfds 0;
    poll = l::SYS_poll, Poll, 3, fds 0, dirfds 0;
    lseek = l::SYS_lseek, Use, 3, fds 0b1, dirfds 0;
    mmap = l::SYS_mmap, Mmap, 6, fds 0, dirfds 0;
    ioctl = l::SYS_ioctl, Use, 3, fds 0b1, dirfds 0;
    pread64 = l::SYS_pread64, Use, 4, fds 0b1, dirfds 0;
    pwrite64 = l::SYS_pwrite64, Use, 4, fds 0b1, dirfds 0;
    readv = l::SYS_readv, Use, 3, fds 0b1, dirfds 0;
    writev = l::SYS_writev, Use, 3, fds 0b1, dirfds 0;
    pipe = l::SYS_pipe, Pipe, 1, fds 0, dirfds 0;
    select = l::SYS_select, Select, 5, fds 0, dirfds 0;
    dup = l::SYS_dup, Dup, 1, fds 0b1, dirfds 0;
    dup2 = l::SYS_dup2, DupTo, 2, fds 0b1, dirfds 0;
    sendfile = l::SYS_sendfile, Use, 4, fds 0b11, dirfds 0;
    socket = l::SYS_socket, Create, 3, fds 0, dirfds 0;
    connect = l::SYS_connect, Use, 3, fds 0b1, dirfds 0;
    accept = l::SYS_accept, Create, 3, fds 0b1, dirfds 0;
    sendto = l::SYS_sendto, Use, 6, fds 0b1, dirfds 0;
    recvfrom = l::SYS_recvfrom, Use, 6, fds 0b1, dirfds 0;
    sendmsg = l::SYS_sendmsg, Use, 3, fds 0b1, dirfds 0;
    recvmsg = l::SYS_recvmsg, RecvMsg, 3, fds 0b1, dirfds 0;
    shutdown = l::SYS_shutdown, Use, 2, fds 0b1, dirfds 0;
    bind = l::SYS_bind, Use, 3, fds 0b1, dirfds 0;
    listen = l::SYS_listen, Use, 2, fds 0b1, dirfds 0;
    getsockname = l::SYS_getsockname, Use, 3, fds 0b1, dirfds 0;
    getpeername = l::SYS_getpeername, Use, 3, fds 0b1, dirfds 0;
    socketpair = l::SYS_socketpair, SocketPair, 4, fds 0, dirfds 0;
    setsockopt = l::SYS_setsockopt, Use, 5, fds 0b1, dirfds 0;
    getsockopt = l::SYS_getsockopt, Use, 5, fds 0b1, dirfds 0;
    fcntl = l::SYS_fcntl, Fcntl, 3, fds 0b1, dirfds 0;
    flock = l::SYS_flock, Use, 2, fds 0b1, dirfds 0;
    fsync = l::SYS_fsync, Use, 1, fds 0b1, dirfds 0;
    fdatasync = l::SYS_fdatasync, Use, 1, fds 0b1, dirfds 0;
    ftruncate = l::SYS_ftruncate, Use, 2, fds 0b1, dirfds 0;
    getdents = l::SYS_getdents, Use, 3, fds 0b1, dirfds 0;
    fchdir = l::SYS_fchdir, Use, 1, fds 0b1, dirfds 0;
    creat = l::SYS_creat, Create, 2, fds 0, dirfds 0;
    fchmod = l::SYS_fchmod, Use, 2, fds 0b1, dirfds 0;
    fchown = l::SYS_fchown, Use, 3, fds 0b1, dirfds 0;
    fstatfs = l::SYS_fstatfs, Use, 2, fds 0b1, dirfds 0;
    readahead = l::SYS_readahead, Use, 3, fds 0b1, dirfds 0;
    fsetxattr = l::SYS_fsetxattr, Use, 5, fds 0b1, dirfds 0;
    fgetxattr = l::SYS_fgetxattr, Use, 4, fds 0b1, dirfds 0;
    flistxattr = l::SYS_flistxattr, Use, 3, fds 0b1, dirfds 0;
    fremovexattr = l::SYS_fremovexattr, Use, 2, fds 0b1, dirfds 0;
    epoll_create = l::SYS_epoll_create, Create, 1, fds 0, dirfds 0;
    getdents64 = l::SYS_getdents64, Use, 3, fds 0b1, dirfds 0;
    fadvise64 = l::SYS_fadvise64, Use, 4, fds 0b1, dirfds 0;
    epoll_wait = l::SYS_epoll_wait, Use, 4, fds 0b1, dirfds 0;
    epoll_ctl = l::SYS_epoll_ctl, Use, 4, fds 0b101, dirfds 0;
    mq_open = l::SYS_mq_open, Create, 4, fds 0, dirfds 0;
    mq_timedsend = l::SYS_mq_timedsend, Use, 5, fds 0b1, dirfds 0;
    mq_timedreceive = l::SYS_mq_timedreceive, Use, 5, fds 0b1, dirfds 0;
    mq_notify = l::SYS_mq_notify, Use, 2, fds 0b1, dirfds 0;
    mq_getsetattr = l::SYS_mq_getsetattr, Use, 3, fds 0b1, dirfds 0;
    inotify_init = l::SYS_inotify_init, Create, 0, fds 0, dirfds 0;
    inotify_add_watch = l::SYS_inotify_add_watch, Use, 3, fds 0b1, dirfds 0;
    inotify_rm_watch = l::SYS_inotify_rm_watch, Use, 2, fds 0b1, dirfds 0;
    openat = l::SYS_openat, Create, 4, fds 0, dirfds 0b1;
    mkdirat = l::SYS_mkdirat, Use, 3, fds 0, dirfds 0b1;
    mknodat = l::SYS_mknodat, Use, 4, fds 0, dirfds 0b1;
    fchownat = l::SYS_fchownat, Use, 5, fds 0, dirfds 0b1;
    futimesat = l::SYS_futimesat, Use, 3, fds 0, dirfds 0b1;
    newfstatat = l::SYS_newfstatat, Use, 4, fds 0, dirfds 0b1;
    unlinkat = l::SYS_unlinkat, Use, 3, fds 0, dirfds 0b1;
    renameat = l::SYS_renameat, Use, 4, fds 0, dirfds 0b101;
    linkat = l::SYS_linkat, Use, 5, fds 0, dirfds 0b101;
    symlinkat = l::SYS_symlinkat, Use, 3, fds 0, dirfds 0b10;
    readlinkat = l::SYS_readlinkat, Use, 4, fds 0, dirfds 0b1;
    fchmodat = l::SYS_fchmodat, Use, 3, fds 0, dirfds 0b1;
    faccessat = l::SYS_faccessat, Use, 3, fds 0, dirfds 0b1;
    pselect6 = l::SYS_pselect6, Select, 6, fds 0, dirfds 0;
    ppoll = l::SYS_ppoll, Poll, 5, fds 0, dirfds 0;
    splice = l::SYS_splice, Use, 6, fds 0b101, dirfds 0;
    tee = l::SYS_tee, Use, 4, fds 0b11, dirfds 0;
    sync_file_range = l::SYS_sync_file_range, Use, 4, fds 0b1, dirfds 0;
    vmsplice = l::SYS_vmsplice, Use, 4, fds 0b1, dirfds 0;
    utimensat = l::SYS_utimensat, Use, 4, fds 0, dirfds 0b1;
    epoll_pwait = l::SYS_epoll_pwait, Use, 6, fds 0b1, dirfds 0;
    signalfd = l::SYS_signalfd, Signalfd, 3, fds 0, dirfds 0;
    timerfd_create = l::SYS_timerfd_create, Create, 2, fds 0, dirfds 0;
    eventfd = l::SYS_eventfd, Create, 1, fds 0, dirfds 0;
    fallocate = l::SYS_fallocate, Use, 4, fds 0b1, dirfds 0;
    timerfd_settime = l::SYS_timerfd_settime, Use, 4, fds 0b1, dirfds 0;
    timerfd_gettime = l::SYS_timerfd_gettime, Use, 2, fds 0b1, dirfds 0;
    accept4 = l::SYS_accept4, Create, 4, fds 0b1, dirfds 0;
    signalfd4 = l::SYS_signalfd4, Signalfd, 4, fds 0, dirfds 0;
    eventfd2 = l::SYS_eventfd2, Create, 2, fds 0, dirfds 0;
    epoll_create1 = l::SYS_epoll_create1, Create, 1, fds 0, dirfds 0;
    dup3 = l::SYS_dup3, DupTo, 3, fds 0b1, dirfds 0;
    pipe2 = l::SYS_pipe2, Pipe, 2, fds 0, dirfds 0;
    inotify_init1 = l::SYS_inotify_init1, Create, 1, fds 0, dirfds 0;
    preadv = l::SYS_preadv, Use, 5, fds 0b1, dirfds 0;
    pwritev = l::SYS_pwritev, Use, 5, fds 0b1, dirfds 0;
    perf_event_open = l::SYS_perf_event_open, Create, 5, fds 0, dirfds 0;
    recvmmsg = l::SYS_recvmmsg, RecvMmsg, 5, fds 0b1, dirfds 0;
    fanotify_init = l::SYS_fanotify_init, Create, 2, fds 0, dirfds 0;
    fanotify_mark = l::SYS_fanotify_mark, Use, 5, fds 0b1, dirfds 0b1000;
    name_to_handle_at = l::SYS_name_to_handle_at, Use, 5, fds 0, dirfds 0b1;
    open_by_handle_at = l::SYS_open_by_handle_at, Create, 3, fds 0b1, dirfds 0;
    syncfs = l::SYS_syncfs, Use, 1, fds 0b1, dirfds 0;
    sendmmsg = l::SYS_sendmmsg, Use, 4, fds 0b1, dirfds 0;
    setns = l::SYS_setns, Use, 2, fds 0b1, dirfds 0;
    renameat2 = l::SYS_renameat2, Use, 5, fds 0, dirfds 0b101;
    memfd_create = l::SYS_memfd_create, Create, 2, fds 0, dirfds 0;
    bpf = l::SYS_bpf, Bpf, 3, fds 0, dirfds 0;
    execveat = l::SYS_execveat, Use, 5, fds 0, dirfds 0b1;
    userfaultfd = l::SYS_userfaultfd, Create, 1, fds 0, dirfds 0;
    copy_file_range = l::SYS_copy_file_range, Use, 6, fds 0b101, dirfds 0;
    preadv2 = l::SYS_preadv2, Use, 6, fds 0b1, dirfds 0;
    pwritev2 = l::SYS_pwritev2, Use, 6, fds 0b1, dirfds 0;
    statx = l::SYS_statx, Use, 5, fds 0, dirfds 0b1;
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

/// Looks a syscall up by number (binary search: the table is sorted).
pub fn lookup(nr: i64) -> Option<&'static Desc> {
    TABLE
        .binary_search_by_key(&nr, |d| d.nr)
        .ok()
        .map(|i| &TABLE[i])
}

/// Which syscalls the prefilter stops on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckLevel {
    /// Every fd-taking syscall: uses of closed handles are caught.
    All,
    /// Only creation, close and dup: much cheaper, but a read or write on a
    /// closed fd is not seen (the quarantine still makes it fail with EBADF).
    Lifecycle,
}

/// The prefilter's traced set for `level`.
pub fn traced(level: CheckLevel) -> Vec<TracedSyscall> {
    TABLE
        .iter()
        .filter(|d| level == CheckLevel::All || d.is_lifecycle())
        .map(|d| TracedSyscall {
            nr: d.nr,
            cookie_arg: d.cookie_arg(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(TABLE.windows(2).all(|w| w[0].nr < w[1].nr), "sorted by nr");
        assert_eq!(lookup(libc::SYS_close).map(|d| d.name), Some("close"));
        assert!(lookup(libc::SYS_getpid).is_none());
    }

    #[test]
    fn fd_args_within_nargs() {
        for d in TABLE {
            let mask = (1u16 << d.nargs) - 1;
            assert_eq!(u16::from(d.fd_args | d.dirfd_args) & !mask, 0, "{}", d.name);
        }
    }

    #[test]
    fn six_argument_syscalls_have_no_cookie_slot() {
        assert_eq!(lookup(libc::SYS_mmap).and_then(|d| d.cookie_arg()), None);
        assert_eq!(
            lookup(libc::SYS_close).and_then(|d| d.cookie_arg()),
            Some(1)
        );
    }
}
