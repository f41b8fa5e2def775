//! Handle values, fd numbers and koids.
//!
//! A handle value follows Zircon's encoding: the two low bits are always set
//! (so a valid handle is never 0 and never looks like a pointer), the fd
//! index and a generation counter sit above them, and the whole is XORed
//! with a per-process mixer so that values are opaque. The generation
//! changes each time an fd number is reused, so two incarnations of fd 5
//! get two different values. An unmanaged process (no shim, no supervisor)
//! is shown with mixer 0 and generation 0: its values are `(fd << 2) | 3`.

/// Bits of the value that hold the fd index. 2^20 covers the kernel's default
/// `fs.nr_open` (1,048,576); larger fds wrap and are told apart by the fd
/// column, never by decoding.
pub const INDEX_BITS: u32 = 20;
/// Bits that hold the generation (wraps after 1024 reuses of one number).
pub const GENERATION_BITS: u32 = 10;
const FIXED_BITS: u32 = 0b11;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// A file descriptor number in some process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fd(pub i32);

/// The identity of a kernel object, equal across processes: inode numbers
/// for pipes, sockets, files, memfds and pidfs; `eventfd-id` for eventfds;
/// a synthetic value for anonymous objects that have no id of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Koid(pub u64);

impl Koid {
    /// Koids at or above this are synthetic: handed out by `handles` for an
    /// open file description that the kernel gives no id (epoll, timerfd,
    /// signalfd, ...), as `SYNTHETIC_BASE | pid << 20 | fd` of one holder.
    /// 2^43 sits above the inode numbers of ordinary file systems and keeps
    /// the number short enough to read in a table.
    pub const SYNTHETIC_BASE: u64 = 1 << 43;

    pub fn is_synthetic(self) -> bool {
        self.0 >= Self::SYNTHETIC_BASE
    }

    /// The synthetic koid named after one holder of the object.
    pub fn synthetic(pid: i32, fd: i32) -> Koid {
        Koid(Self::SYNTHETIC_BASE | ((pid as u64 & 0x3f_ffff) << 20) | (fd as u64 & 0xf_ffff))
    }
}

/// An opaque Zircon-style handle value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandleValue(pub u32);

impl HandleValue {
    /// Encodes `fd` at `generation` under `mixer`. The mixer's low two bits are
    /// ignored so that the encoded value always keeps them set.
    pub fn encode(fd: Fd, generation: u32, mixer: u32) -> Self {
        let raw = ((generation & GENERATION_MASK) << (INDEX_BITS + 2))
            | (((fd.0 as u32) & INDEX_MASK) << 2)
            | FIXED_BITS;
        HandleValue(raw ^ (mixer & !FIXED_BITS))
    }

    /// The value an unmanaged process's fd is shown with.
    pub fn unmanaged(fd: Fd) -> Self {
        Self::encode(fd, 0, 0)
    }

    /// Recovers `(fd index, generation)` given the process's mixer. Returns
    /// `None` for a value that cannot be a handle (low bits not set).
    pub fn decode(self, mixer: u32) -> Option<(Fd, u32)> {
        let raw = self.0 ^ (mixer & !FIXED_BITS);
        if raw & FIXED_BITS != FIXED_BITS {
            return None;
        }
        let fd = (raw >> 2) & INDEX_MASK;
        let generation = (raw >> (INDEX_BITS + 2)) & GENERATION_MASK;
        Some((Fd(fd as i32), generation))
    }
}

impl core::fmt::Display for HandleValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmanaged_values_are_fd_shifted() {
        assert_eq!(HandleValue::unmanaged(Fd(0)).0, 3);
        assert_eq!(HandleValue::unmanaged(Fd(5)).0, (5 << 2) | 3);
        assert_eq!(HandleValue::unmanaged(Fd(5)).decode(0), Some((Fd(5), 0)));
    }

    #[test]
    fn round_trip_with_mixer_and_generation() {
        for mixer in [0u32, 0xdead_beef, 0xffff_ffff, 0x1234_5670] {
            for fd in [0, 1, 3, 1023, 65_535, (1 << 20) - 1] {
                for generation in [0, 1, 511, 1023] {
                    let v = HandleValue::encode(Fd(fd), generation, mixer);
                    assert_eq!(v.0 & 3, 3, "low bits always set");
                    assert_eq!(v.decode(mixer), Some((Fd(fd), generation)));
                }
            }
        }
    }

    #[test]
    fn generation_changes_value() {
        let a = HandleValue::encode(Fd(5), 0, 0x5555_0000);
        let b = HandleValue::encode(Fd(5), 1, 0x5555_0000);
        assert_ne!(a, b);
    }

    #[test]
    fn decode_rejects_non_handles() {
        assert_eq!(HandleValue(0).decode(0), None);
        assert_eq!(HandleValue(0x10).decode(0), None);
    }

    #[test]
    fn display_is_fuchsia_style() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{}", HandleValue(0xa8d4_4a0f)), "0xa8d44a0f");
        assert_eq!(format!("{}", HandleValue(3)), "0x00000003");
    }
}
