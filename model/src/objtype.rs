//! Object types: Zircon's names where the Linux object is the same idea,
//! plain Linux names elsewhere.

/// The type of the kernel object behind a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjType {
    File,
    Dir,
    Pipe,
    /// AF_UNIX socket: a message pipe that can carry handles.
    Channel,
    /// Any other socket family (inet, inet6, netlink, packet, vsock, ...).
    Socket,
    /// eventfd.
    Event,
    /// epoll.
    Port,
    /// timerfd.
    Timer,
    Signalfd,
    /// memfd.
    Vmo,
    /// pidfd.
    Process,
    Inotify,
    Fanotify,
    IoUring,
    Userfaultfd,
    PerfEvent,
    Bpf,
    Tty,
    Chardev,
    Blockdev,
    /// An O_PATH descriptor.
    Path,
    Unknown,
}

impl ObjType {
    pub const ALL: [ObjType; 22] = [
        ObjType::File,
        ObjType::Dir,
        ObjType::Pipe,
        ObjType::Channel,
        ObjType::Socket,
        ObjType::Event,
        ObjType::Port,
        ObjType::Timer,
        ObjType::Signalfd,
        ObjType::Vmo,
        ObjType::Process,
        ObjType::Inotify,
        ObjType::Fanotify,
        ObjType::IoUring,
        ObjType::Userfaultfd,
        ObjType::PerfEvent,
        ObjType::Bpf,
        ObjType::Tty,
        ObjType::Chardev,
        ObjType::Blockdev,
        ObjType::Path,
        ObjType::Unknown,
    ];

    /// The name shown in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ObjType::File => "file",
            ObjType::Dir => "dir",
            ObjType::Pipe => "pipe",
            ObjType::Channel => "channel",
            ObjType::Socket => "socket",
            ObjType::Event => "event",
            ObjType::Port => "port",
            ObjType::Timer => "timer",
            ObjType::Signalfd => "signalfd",
            ObjType::Vmo => "vmo",
            ObjType::Process => "process",
            ObjType::Inotify => "inotify",
            ObjType::Fanotify => "fanotify",
            ObjType::IoUring => "io_uring",
            ObjType::Userfaultfd => "userfaultfd",
            ObjType::PerfEvent => "perf_event",
            ObjType::Bpf => "bpf",
            ObjType::Tty => "tty",
            ObjType::Chardev => "chardev",
            ObjType::Blockdev => "blockdev",
            ObjType::Path => "path",
            ObjType::Unknown => "unknown",
        }
    }

    /// Whether closing an object of this type can never fail: the kernel's
    /// close returns only what the file's `flush` returns, and these objects
    /// have none (pipes, sockets, anonymous-inode objects, memfds, O_PATH
    /// fds). Files, directories, devices and unknown objects may sit on
    /// NFS, FUSE, 9p or CIFS, whose flush reports deferred write errors:
    /// their number must not be replaced with dup3 (its implicit close
    /// discards that result) but closed for real.
    pub fn close_cannot_fail(self) -> bool {
        matches!(
            self,
            ObjType::Pipe
                | ObjType::Channel
                | ObjType::Socket
                | ObjType::Event
                | ObjType::Port
                | ObjType::Timer
                | ObjType::Signalfd
                | ObjType::Vmo
                | ObjType::Process
                | ObjType::Inotify
                | ObjType::Path
        )
    }

    /// The `ZX_OBJ_TYPE_*` name used by the debugger views. Types Zircon has
    /// no equivalent for get a `ZX_OBJ_TYPE_LINUX_*` name so that the column
    /// stays one vocabulary.
    pub fn zx_name(self) -> &'static str {
        match self {
            ObjType::File => "ZX_OBJ_TYPE_LINUX_FILE",
            ObjType::Dir => "ZX_OBJ_TYPE_LINUX_DIR",
            ObjType::Pipe => "ZX_OBJ_TYPE_LINUX_PIPE",
            ObjType::Channel => "ZX_OBJ_TYPE_CHANNEL",
            ObjType::Socket => "ZX_OBJ_TYPE_SOCKET",
            ObjType::Event => "ZX_OBJ_TYPE_EVENT",
            ObjType::Port => "ZX_OBJ_TYPE_PORT",
            ObjType::Timer => "ZX_OBJ_TYPE_TIMER",
            ObjType::Signalfd => "ZX_OBJ_TYPE_LINUX_SIGNALFD",
            ObjType::Vmo => "ZX_OBJ_TYPE_VMO",
            ObjType::Process => "ZX_OBJ_TYPE_PROCESS",
            ObjType::Inotify => "ZX_OBJ_TYPE_LINUX_INOTIFY",
            ObjType::Fanotify => "ZX_OBJ_TYPE_LINUX_FANOTIFY",
            ObjType::IoUring => "ZX_OBJ_TYPE_LINUX_IO_URING",
            ObjType::Userfaultfd => "ZX_OBJ_TYPE_PAGER",
            ObjType::PerfEvent => "ZX_OBJ_TYPE_LINUX_PERF_EVENT",
            ObjType::Bpf => "ZX_OBJ_TYPE_LINUX_BPF",
            ObjType::Tty => "ZX_OBJ_TYPE_LINUX_TTY",
            ObjType::Chardev => "ZX_OBJ_TYPE_LINUX_CHARDEV",
            ObjType::Blockdev => "ZX_OBJ_TYPE_LINUX_BLOCKDEV",
            ObjType::Path => "ZX_OBJ_TYPE_LINUX_PATH",
            ObjType::Unknown => "ZX_OBJ_TYPE_NONE",
        }
    }

    /// Parses a type name as shown by [`ObjType::name`].
    pub fn from_name(name: &str) -> Option<ObjType> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for (i, t) in ObjType::ALL.iter().enumerate() {
            assert_eq!(ObjType::from_name(t.name()), Some(*t));
            for u in &ObjType::ALL[i + 1..] {
                assert_ne!(t.name(), u.name());
            }
        }
        assert_eq!(ObjType::from_name("nonsense"), None);
    }
}
