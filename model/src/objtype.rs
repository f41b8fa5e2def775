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

    /// The type's code in the shared table (`Slot::obj_type`): written by
    /// one process and read by another, possibly built from another
    /// version, so each type keeps its number for good. A new type takes
    /// the next free number; 0 is "not classified".
    pub const fn code(self) -> u32 {
        match self {
            ObjType::File => 1,
            ObjType::Dir => 2,
            ObjType::Pipe => 3,
            ObjType::Channel => 4,
            ObjType::Socket => 5,
            ObjType::Event => 6,
            ObjType::Port => 7,
            ObjType::Timer => 8,
            ObjType::Signalfd => 9,
            ObjType::Vmo => 10,
            ObjType::Process => 11,
            ObjType::Inotify => 12,
            ObjType::Fanotify => 13,
            ObjType::IoUring => 14,
            ObjType::Userfaultfd => 15,
            ObjType::PerfEvent => 16,
            ObjType::Bpf => 17,
            ObjType::Tty => 18,
            ObjType::Chardev => 19,
            ObjType::Blockdev => 20,
            ObjType::Path => 21,
            ObjType::Unknown => 22,
        }
    }

    /// The type [`ObjType::code`] gives `code`; None for 0 and for codes
    /// no type has.
    pub const fn from_code(code: u32) -> Option<ObjType> {
        Some(match code {
            1 => ObjType::File,
            2 => ObjType::Dir,
            3 => ObjType::Pipe,
            4 => ObjType::Channel,
            5 => ObjType::Socket,
            6 => ObjType::Event,
            7 => ObjType::Port,
            8 => ObjType::Timer,
            9 => ObjType::Signalfd,
            10 => ObjType::Vmo,
            11 => ObjType::Process,
            12 => ObjType::Inotify,
            13 => ObjType::Fanotify,
            14 => ObjType::IoUring,
            15 => ObjType::Userfaultfd,
            16 => ObjType::PerfEvent,
            17 => ObjType::Bpf,
            18 => ObjType::Tty,
            19 => ObjType::Chardev,
            20 => ObjType::Blockdev,
            21 => ObjType::Path,
            22 => ObjType::Unknown,
            _ => return None,
        })
    }

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

    /// The codes are a wire format between builds: this list is the
    /// record of which number is which type, and a change to it is a
    /// change of the table's format.
    #[test]
    fn codes_are_pinned() {
        let pinned = [
            (ObjType::File, 1),
            (ObjType::Dir, 2),
            (ObjType::Pipe, 3),
            (ObjType::Channel, 4),
            (ObjType::Socket, 5),
            (ObjType::Event, 6),
            (ObjType::Port, 7),
            (ObjType::Timer, 8),
            (ObjType::Signalfd, 9),
            (ObjType::Vmo, 10),
            (ObjType::Process, 11),
            (ObjType::Inotify, 12),
            (ObjType::Fanotify, 13),
            (ObjType::IoUring, 14),
            (ObjType::Userfaultfd, 15),
            (ObjType::PerfEvent, 16),
            (ObjType::Bpf, 17),
            (ObjType::Tty, 18),
            (ObjType::Chardev, 19),
            (ObjType::Blockdev, 20),
            (ObjType::Path, 21),
            (ObjType::Unknown, 22),
        ];
        assert_eq!(
            pinned.len(),
            ObjType::ALL.len(),
            "a type without a pinned code"
        );
        for (t, code) in pinned {
            assert_eq!(t.code(), code, "{t:?}");
            assert_eq!(ObjType::from_code(code), Some(t));
        }
        assert_eq!(ObjType::from_code(0), None);
        assert_eq!(ObjType::from_code(pinned.len() as u32 + 1), None);
        assert_eq!(ObjType::from_code(u32::MAX), None);
    }
}
