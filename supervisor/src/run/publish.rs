//! Publishes the supervisor's view of each traced process as a shared
//! handle table (layout in `handles_model::table`), so that `handles <pid>`
//! shows the values, generations and hidden tombstones the supervisor
//! knows, and `handles --stacks <pid>` how each handle was made and the
//! stack that made it, without stopping anything.
//!
//! The table lives in a memfd named `handles-table:<pid>` that only the
//! supervisor holds; a reader finds it through the process's TracerPid, and
//! may open it only if it could ptrace the supervisor (the permission check
//! of /proc/PID/fd).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use std::sync::atomic::Ordering;

use handles_model::table::{self, Header, Slot, SlotStacks, SlotValue};

use super::fdtable::{FdTable, Slot as ModelSlot};

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
        let name = handles_model::protocol::TableName::new(pid);
        let name = name.as_cstr();
        // SAFETY: memfd_create with a NUL-terminated name; owned right away.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
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
        // Anyone who may ptrace us can open this memfd through
        // /proc/PID/fd, a traced program included: sealed against
        // shrinking, it cannot make our own mapping's pages vanish under
        // us (SIGBUS). Growing stays possible.
        // SAFETY: F_ADD_SEALS on our own memfd.
        if unsafe { libc::fcntl(p.fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(p)
    }

    fn map(&mut self, capacity: u32) -> io::Result<()> {
        let len = table::table_size(capacity);
        if !self.base.is_null() {
            // The stack area starts after the last slot, so it moves when
            // the table grows: no reader may take the old layout for the
            // new one meanwhile (Header::init stores the magic last).
            self.header().magic.store(0, Ordering::Release);
        }
        // SAFETY: ftruncate on our memfd.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(self.keep_old_layout());
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
            return Err(self.keep_old_layout());
        }
        if !self.base.is_null() {
            // SAFETY: unmapping our previous mapping of this memfd.
            unsafe { libc::munmap(self.base.cast(), self.len) };
            let old = self.capacity;
            if capacity > old {
                let from = table::stacks_offset(old);
                let to = table::stacks_offset(capacity);
                let n = old as usize * table::STACKS_SIZE;
                let py_from = table::py_offset(old);
                let py_to = table::py_offset(capacity);
                let py_n = old as usize * table::PY_STACKS_SIZE;
                // SAFETY: every range lies inside the new mapping of `len`
                // bytes (py_to + py_n <= table_size(capacity) as old <
                // capacity); `copy` is a memmove, and they overlap. The
                // Python area moves first (it moves furthest), then the
                // stacks; what lies between the moved areas (slots and
                // records old..capacity) starts empty.
                unsafe {
                    let b: *mut u8 = base.cast();
                    std::ptr::copy(b.add(py_from), b.add(py_to), py_n);
                    std::ptr::copy(b.add(from), b.add(to), n);
                    std::ptr::write_bytes(b.add(from), 0, to - from);
                    std::ptr::write_bytes(b.add(to + n), 0, py_to - (to + n));
                }
            }
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

    /// After a failed growth: the old mapping and layout stay in use (the
    /// file may have grown; nothing lies beyond the old layout). Returns
    /// the error that made it fail.
    fn keep_old_layout(&self) -> io::Error {
        let e = io::Error::last_os_error();
        if !self.base.is_null() {
            self.header().init(
                self.capacity,
                self.pid as u32,
                self.mixer,
                table::writer::SUPERVISOR,
            );
        }
        e
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

    fn stacks(&self, fd: i32) -> Option<&SlotStacks> {
        let i = u32::try_from(fd).ok()?;
        if i >= self.capacity {
            return None;
        }
        // SAFETY: record i lies inside the mapping (i < capacity, and the
        // mapping is table_size(capacity) bytes); its offset is a multiple
        // of 8; SlotStacks is all atomics.
        Some(unsafe {
            &*(self
                .base
                .add(table::stacks_offset(self.capacity) + i as usize * table::STACKS_SIZE)
                as *const SlotStacks)
        })
    }

    fn py_stacks(&self, fd: i32) -> Option<&table::PyStacks> {
        let i = u32::try_from(fd).ok()?;
        if i >= self.capacity {
            return None;
        }
        // SAFETY: record i lies inside the mapping (table_size(capacity)
        // bytes end with the Python area); its offset is a multiple of 8;
        // PyStacks is all atomics.
        Some(unsafe {
            &*(self
                .base
                .add(table::py_offset(self.capacity) + i as usize * table::PY_STACKS_SIZE)
                as *const table::PyStacks)
        })
    }

    pub fn mixer(&self) -> u32 {
        self.mixer
    }

    /// Writes the slot of `fd`, growing the table if needed. Its creation
    /// stack is cleared: it belonged to an earlier handle.
    pub fn set(&mut self, fd: i32, v: SlotValue) {
        self.set_created(fd, v, &[]);
    }

    /// Writes the slot of `fd` (with `v.how`, how the handle was made) and
    /// its creation stack as one snapshot, growing the table if needed.
    /// `created` is innermost first; its first address may be the one
    /// after the `syscall` instruction (what the unwinder gives), which a
    /// reader symbolizes as the return address it takes it for. At most
    /// `table::STACK_DEPTH` frames are kept.
    pub fn set_created(&mut self, fd: i32, v: SlotValue, created: &[u64]) {
        if fd < 0 {
            return;
        }
        if fd as u32 >= self.capacity {
            let want = (fd as u32 + 1).next_power_of_two().min(table::MAX_CAPACITY);
            if want <= fd as u32 || self.map(want).is_err() {
                return;
            }
        }
        let (Some(s), Some(st)) = (self.slot(fd), self.stacks(fd)) else {
            return;
        };
        // Python frames travel as tagged words in the supervisor's stacks
        // (backtrace/python.rs); the table keeps them in its Python area.
        let (native, py) = crate::backtrace::python::decode(created);
        let l = s.lock(1 << 20);
        s.store(&l, v);
        st.set_created(&l, &native);
        if let Some(cell) = self.py_stacks(fd) {
            cell.set_created(&l, &py[..py.len().min(table::PY_DEPTH)]);
        }
        s.unlock(l);
    }

    /// Publishes what the supervisor's model says of `fd`: its slot, how
    /// the handle was made and the stack that made it.
    pub fn set_from(&mut self, model: &FdTable, fd: i32) {
        let mut v = model.slot_value(fd);
        match model.get(fd) {
            Some(ModelSlot::Open(h)) if model.tomb_src != Some(fd) => {
                v.how = h.origin.how_code();
                let created = h.created.as_deref().map_or(&[][..], Vec::as_slice);
                self.set_created(fd, v, created);
            }
            _ => self.set(fd, v),
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

#[cfg(test)]
mod tests {
    use super::super::fdtable::Origin;
    use super::*;
    use handles_model::table::{how, state, TableView};

    fn view_of(p: &Published) -> TableView<'_> {
        // SAFETY: base maps len bytes for the life of p.
        let b = unsafe { std::slice::from_raw_parts(p.base as *const u8, p.len) };
        TableView::new(b).expect("a valid table")
    }

    fn open(generation: u32, how: u32) -> SlotValue {
        SlotValue {
            state: state::OPEN,
            generation,
            how,
            ..SlotValue::default()
        }
    }

    #[test]
    fn stacks_are_published_cleared_and_survive_growth() {
        let mut p = Published::new(std::process::id() as i32, 0x1230, 64).expect("memfd");
        p.set_created(3, open(1, how::INHERITED), &[0x10, 0x20]);
        p.set_created(63, open(2, how::RECEIVED), &[0x30]);
        let d = view_of(&p).detail(3).expect("slot 3");
        assert_eq!(d.created.frames(), &[0x10, 0x20]);
        assert_eq!(d.value.how, how::INHERITED);

        // Growing moves the stack area behind the new slots.
        p.set_created(200, open(5, how::ADOPTED), &[0x40]);
        assert!(p.capacity >= 201);
        let v = view_of(&p);
        assert_eq!(v.capacity(), p.capacity as usize);
        assert_eq!(
            v.detail(3).map(|d| d.created.frames().to_vec()),
            Some(vec![0x10, 0x20])
        );
        assert_eq!(
            v.detail(63).map(|d| d.created.frames().to_vec()),
            Some(vec![0x30])
        );
        assert_eq!(v.detail(63).map(|d| d.value.generation), Some(2));
        assert_eq!(
            v.detail(200).map(|d| d.created.frames().to_vec()),
            Some(vec![0x40])
        );
        for fd in 64..200 {
            let d = v.detail(fd).expect("readable");
            assert_eq!(d.value, SlotValue::default(), "fd {fd} starts free");
            assert!(d.created.frames().is_empty(), "fd {fd} has no stack");
        }

        // A plain set is a new handle: the old stack goes.
        p.set(3, open(7, how::UNKNOWN));
        let d = view_of(&p).detail(3).expect("slot 3");
        assert!(d.created.frames().is_empty());
        assert_eq!(d.value.generation, 7);
    }

    #[test]
    fn the_model_publishes_how_and_the_creation_stack() {
        let mut model = FdTable::new(0);
        let stack: super::super::fdtable::Stack = std::sync::Arc::new(vec![0x51, 0x52]);
        model.open(4, Origin::Syscall("openat"), Some(stack), 1);
        model.open(5, Origin::Inherited, None, 1);
        let mut p = Published::new(std::process::id() as i32, 0, 64).expect("memfd");
        p.set_from(&model, 4);
        p.set_from(&model, 5);
        p.set_from(&model, 6);
        let v = view_of(&p);
        let d = v.detail(4).expect("slot 4");
        assert_eq!(d.value.state, state::OPEN);
        assert_eq!(d.created.frames(), &[0x51, 0x52]);
        let openat = handles_model::syscalls::TABLE
            .iter()
            .find(|d| d.name == "openat")
            .map(|d| d.nr as u32)
            .expect("openat");
        assert_eq!(d.value.how, how::syscall(openat));
        let d = v.detail(5).expect("slot 5");
        assert_eq!(d.value.how, how::INHERITED);
        assert!(d.created.frames().is_empty());
        assert_eq!(v.slot(6), Some(SlotValue::default()));
    }
}
