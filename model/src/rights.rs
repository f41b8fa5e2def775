//! Zircon rights, with Zircon's bit values, and how a Linux fd earns them.
//!
//! The mapping is documented in `docs/handle-model.md`; the function
//! [`Rights::for_fd`] is the one place it is implemented.

use crate::ObjType;

/// A set of Zircon rights (`zx_rights_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rights(pub u32);

macro_rules! rights {
    ($($name:ident = $bit:expr, $zx:literal;)*) => {
        impl Rights {
            $(pub const $name: Rights = Rights(1 << $bit);)*
            /// Every right with its `ZX_RIGHT_*` name, lowest bit first.
            pub const NAMED: &'static [(Rights, &'static str)] = &[$((Rights::$name, $zx),)*];
        }
    };
}

rights! {
    DUPLICATE = 0, "ZX_RIGHT_DUPLICATE";
    TRANSFER = 1, "ZX_RIGHT_TRANSFER";
    READ = 2, "ZX_RIGHT_READ";
    WRITE = 3, "ZX_RIGHT_WRITE";
    EXECUTE = 4, "ZX_RIGHT_EXECUTE";
    MAP = 5, "ZX_RIGHT_MAP";
    GET_PROPERTY = 6, "ZX_RIGHT_GET_PROPERTY";
    SET_PROPERTY = 7, "ZX_RIGHT_SET_PROPERTY";
    ENUMERATE = 8, "ZX_RIGHT_ENUMERATE";
    DESTROY = 9, "ZX_RIGHT_DESTROY";
    SET_POLICY = 10, "ZX_RIGHT_SET_POLICY";
    GET_POLICY = 11, "ZX_RIGHT_GET_POLICY";
    SIGNAL = 12, "ZX_RIGHT_SIGNAL";
    SIGNAL_PEER = 13, "ZX_RIGHT_SIGNAL_PEER";
    WAIT = 14, "ZX_RIGHT_WAIT";
    INSPECT = 15, "ZX_RIGHT_INSPECT";
    MANAGE_JOB = 16, "ZX_RIGHT_MANAGE_JOB";
    MANAGE_PROCESS = 17, "ZX_RIGHT_MANAGE_PROCESS";
    MANAGE_THREAD = 18, "ZX_RIGHT_MANAGE_THREAD";
    APPLY_PROFILE = 19, "ZX_RIGHT_APPLY_PROFILE";
    MANAGE_SOCKET = 20, "ZX_RIGHT_MANAGE_SOCKET";
    OP_CHILDREN = 21, "ZX_RIGHT_OP_CHILDREN";
    RESIZE = 22, "ZX_RIGHT_RESIZE";
    ATTACH_VMO = 23, "ZX_RIGHT_ATTACH_VMO";
    MANAGE_VMO = 24, "ZX_RIGHT_MANAGE_VMO";
}

/// memfd seal bits (`F_SEAL_*`), repeated here so the model needs no libc.
pub mod seals {
    pub const SEAL: u32 = 0x1;
    pub const SHRINK: u32 = 0x2;
    pub const GROW: u32 = 0x4;
    pub const WRITE: u32 = 0x8;
    pub const FUTURE_WRITE: u32 = 0x10;
    pub const EXEC: u32 = 0x20;
}

/// What the model needs to know about an fd to compute its rights.
#[derive(Clone, Copy, Debug, Default)]
pub struct FdAccess {
    /// The open file description has FMODE_READ (O_RDONLY or O_RDWR).
    pub read: bool,
    /// The open file description has FMODE_WRITE (O_WRONLY or O_RDWR).
    pub write: bool,
    /// memfd seals, when known.
    pub seals: Option<u32>,
    /// The file's mode has an execute bit (regular files only).
    pub executable: bool,
}

impl Rights {
    pub const NONE: Rights = Rights(0);
    /// Zircon's ZX_RIGHTS_BASIC.
    pub const BASIC: Rights =
        Rights(Self::TRANSFER.0 | Self::DUPLICATE.0 | Self::WAIT.0 | Self::INSPECT.0);

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub const fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rights a Linux fd carries, derived from its type and access mode.
    ///
    /// Every handle can be duplicated (dup), transferred (SCM_RIGHTS) and
    /// inspected (fstat); all but O_PATH ones get and set properties
    /// (fcntl/ioctl/setsockopt). READ/WRITE follow O_ACCMODE; WAIT marks
    /// objects that poll/epoll can wait on; MAP marks mappable ones.
    pub fn for_fd(ty: ObjType, access: FdAccess) -> Rights {
        let mut r = Self::DUPLICATE.union(Self::TRANSFER).union(Self::INSPECT);
        if ty == ObjType::Path {
            // fstat and fchdir work on O_PATH; read, write, fcntl(F_SETFL) do not.
            return r.union(Self::GET_PROPERTY);
        }
        r = r.union(Self::GET_PROPERTY).union(Self::SET_PROPERTY);
        if access.read {
            r = r.union(Self::READ);
        }
        if access.write {
            r = r.union(Self::WRITE);
        }
        let extra = match ty {
            ObjType::File => {
                let mut e = Self::MAP;
                if access.executable && access.read {
                    e = e.union(Self::EXECUTE);
                }
                if access.write {
                    e = e.union(Self::RESIZE);
                }
                e
            }
            ObjType::Dir => Self::ENUMERATE,
            ObjType::Blockdev => Self::MAP,
            ObjType::Vmo => {
                let s = access.seals.unwrap_or(0);
                let mut e = Self::MAP.union(Self::MANAGE_VMO);
                if access.write && s & (seals::GROW | seals::SHRINK) == 0 {
                    e = e.union(Self::RESIZE);
                }
                if access.read && s & seals::EXEC == 0 {
                    e = e.union(Self::EXECUTE);
                }
                if s & (seals::WRITE | seals::FUTURE_WRITE) != 0 {
                    r = r.without(Self::WRITE);
                }
                e
            }
            // A pipe end or a socket signals its peer by being written to.
            ObjType::Pipe => {
                if access.write {
                    Self::WAIT.union(Self::SIGNAL_PEER)
                } else {
                    Self::WAIT
                }
            }
            ObjType::Channel => Self::WAIT
                .union(Self::SIGNAL)
                .union(Self::SIGNAL_PEER)
                .union(Self::MANAGE_SOCKET),
            ObjType::Socket => Self::WAIT.union(Self::SIGNAL).union(Self::MANAGE_SOCKET),
            // write(2) on an eventfd signals it.
            ObjType::Event => {
                if access.write {
                    Self::WAIT.union(Self::SIGNAL)
                } else {
                    Self::WAIT
                }
            }
            ObjType::Timer => Self::WAIT.union(Self::SIGNAL),
            ObjType::Port
            | ObjType::Signalfd
            | ObjType::Inotify
            | ObjType::Fanotify
            | ObjType::Tty
            | ObjType::Chardev
            | ObjType::Userfaultfd => Self::WAIT,
            ObjType::IoUring | ObjType::PerfEvent => Self::WAIT.union(Self::MAP),
            // pidfd_send_signal, pidfd_getfd, waitid(P_PIDFD).
            ObjType::Process => Self::WAIT.union(Self::MANAGE_PROCESS).union(Self::DESTROY),
            ObjType::Bpf | ObjType::Unknown | ObjType::Path => Self::NONE,
        };
        r.union(extra)
    }

    /// The `ZX_RIGHT_*` names of the rights in this set, lowest bit first.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED
            .iter()
            .filter(move |(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
    }
}

impl core::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        self.union(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(read: bool, write: bool) -> FdAccess {
        FdAccess {
            read,
            write,
            ..FdAccess::default()
        }
    }

    #[test]
    fn pipe_ends() {
        let r = Rights::for_fd(ObjType::Pipe, acc(true, false));
        assert!(r.contains(Rights::READ) && !r.contains(Rights::WRITE));
        let w = Rights::for_fd(ObjType::Pipe, acc(false, true));
        assert!(w.contains(Rights::WRITE) && !w.contains(Rights::READ));
        assert!(r.contains(Rights::WAIT) && w.contains(Rights::WAIT));
    }

    #[test]
    fn sealed_memfd_loses_write() {
        let open = Rights::for_fd(ObjType::Vmo, acc(true, true));
        assert!(open.contains(Rights::WRITE | Rights::MAP));
        let sealed = Rights::for_fd(
            ObjType::Vmo,
            FdAccess {
                seals: Some(seals::WRITE | seals::SEAL),
                ..acc(true, true)
            },
        );
        assert!(!sealed.contains(Rights::WRITE));
        assert!(sealed.contains(Rights::READ | Rights::MAP));
    }

    #[test]
    fn dir_enumerates_and_path_is_minimal() {
        assert!(Rights::for_fd(ObjType::Dir, acc(true, false)).contains(Rights::ENUMERATE));
        let p = Rights::for_fd(ObjType::Path, acc(false, false));
        assert!(!p.contains(Rights::READ) && !p.contains(Rights::SET_PROPERTY));
        assert!(p.contains(Rights::DUPLICATE));
    }

    #[test]
    fn names_follow_bits() {
        let r = Rights::READ.union(Rights::DUPLICATE);
        let mut it = r.names();
        assert_eq!(it.next(), Some("ZX_RIGHT_DUPLICATE"));
        assert_eq!(it.next(), Some("ZX_RIGHT_READ"));
        assert_eq!(it.next(), None);
    }
}
