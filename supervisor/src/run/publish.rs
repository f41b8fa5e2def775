//! Publishes the supervisor's view of each traced process as a shared
//! handle table (layout in `handles_model::table`), so that `handles <pid>`
//! shows the values, generations and hidden tombstones the supervisor
//! knows, without stopping anything.
//!
//! The table lives in a memfd named `handles-table:<pid>` that only the
//! supervisor holds; a reader finds it through the process's TracerPid, and
//! may open it only if it could ptrace the supervisor (the permission check
//! of /proc/PID/fd).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use handles_model::table::{self, Header, Slot, SlotValue};

/// Name prefix of published tables (`/memfd:handles-table:PID`).
pub const NAME_PREFIX: &str = "handles-table:";

pub struct Published {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
    capacity: u32,
    pid: i32,
    mixer: u32,
}

impl Published {
    pub fn new(pid: i32, mixer: u32, capacity: u32) -> io::Result<Published> {
        let name = CString::new(format!("{NAME_PREFIX}{pid}")).map_err(io::Error::other)?;
        // SAFETY: memfd_create with a NUL-terminated name; owned right away.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd, ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut p = Published {
            fd,
            base: std::ptr::null_mut(),
            len: 0,
            capacity: 0,
            pid,
            mixer,
        };
        p.map(capacity.clamp(64, table::MAX_CAPACITY))?;
        Ok(p)
    }

    fn map(&mut self, capacity: u32) -> io::Result<()> {
        let len = table::table_size(capacity);
        // SAFETY: ftruncate on our memfd.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new shared mapping of our memfd; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if !self.base.is_null() {
            // SAFETY: unmapping our previous mapping of this memfd.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
        self.base = base.cast();
        self.len = len;
        self.capacity = capacity;
        self.header().init(
            capacity,
            self.pid as u32,
            self.mixer,
            table::writer::SUPERVISOR,
        );
        Ok(())
    }

    fn header(&self) -> &Header {
        // SAFETY: base maps at least HEADER_SIZE bytes, page-aligned; the
        // header is all atomics.
        unsafe { &*(self.base as *const Header) }
    }

    fn slot(&self, fd: i32) -> Option<&Slot> {
        let i = u32::try_from(fd).ok()?;
        if i >= self.capacity {
            return None;
        }
        // SAFETY: slot i lies inside the mapping (i < capacity).
        Some(unsafe {
            &*(self
                .base
                .add(table::HEADER_SIZE + i as usize * table::SLOT_SIZE)
                as *const Slot)
        })
    }

    pub fn mixer(&self) -> u32 {
        self.mixer
    }

    /// Writes the slot of `fd`, growing the table if needed.
    pub fn set(&mut self, fd: i32, v: SlotValue) {
        if fd < 0 {
            return;
        }
        if fd as u32 >= self.capacity {
            let want = (fd as u32 + 1).next_power_of_two().min(table::MAX_CAPACITY);
            if want <= fd as u32 || self.map(want).is_err() {
                return;
            }
        }
        if let Some(s) = self.slot(fd) {
            s.write(v);
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if !self.base.is_null() {
            // SAFETY: unmapping our own mapping once.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
    }
}
