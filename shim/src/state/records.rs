//! What the table records of each handle: its creation and close, with
//! their stacks, how it was made and the name it was opened by.

use core::ffi::c_char;
use core::sync::atomic::Ordering::*;

use handles_model::table::{self, state, Locked, Slot, SlotStacks, SlotValue, STACK_DEPTH};

use super::*;
use crate::fddir;

/// The calling thread's Python frames for a record whose native stack is
/// `pcs`: none when no stack is recorded at all (HANDLES_STACK_DEPTH=0,
/// fds registered at start-up).
fn py_frames(pcs: &Pcs) -> crate::python::PyPcs {
    if pcs.n == 0 {
        crate::python::PyPcs::EMPTY
    } else {
        crate::python::capture()
    }
}

/// The Python records of `fd`, when `frames` must be written there:
/// always when there are frames; an empty record only where the table
/// may hold one to clear ([`table::HEADER_PYTHON`]). A program that never
/// runs Python then leaves the Python area's pages untouched.
fn py_to_write(
    fd: i32,
    frames: &[handles_model::python::PyFrame],
) -> Option<&'static table::PyStacks> {
    let pb = PUB.load(Relaxed);
    if pb.is_null() {
        return None;
    }
    let h = header(pb);
    if !frames.is_empty() {
        h.note_python();
    } else if !h.has_python() {
        return None;
    }
    py_stacks(fd)
}

/// Return addresses, innermost first.
#[derive(Clone, Copy)]
pub struct Pcs {
    pub pcs: [u64; STACK_DEPTH],
    pub n: usize,
}

impl Pcs {
    pub const EMPTY: Pcs = Pcs {
        pcs: [0; STACK_DEPTH],
        n: 0,
    };
    pub fn frames(&self) -> &[u64] {
        &self.pcs[..self.n.min(STACK_DEPTH)]
    }
}

/// The name a new handle is recorded with (table v3: the path as the
/// program passed it, cut to its tail past 63 bytes).
#[derive(Clone, Copy)]
pub enum Named {
    No,
    /// The program's NUL-terminated path (null: none). Read after the
    /// call succeeded, so the kernel has already read it.
    Path(*const c_char),
    /// `memfd:` and the program's NUL-terminated memfd name.
    Memfd(*const c_char),
    /// A duplicate of the handle at this fd: its name and its type.
    DupOf(i32),
}

/// Longest path the kernel accepts (PATH_MAX, with its NUL).
pub(super) const PATH_MAX: usize = 4096;

/// The bytes of a NUL-terminated string, at most `max` of them.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string (or at least `max`
/// readable bytes) that stays alive while the slice is used.
unsafe fn c_bytes<'a>(p: *const c_char, max: usize) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    let mut n = 0;
    // SAFETY: the caller's promise; the scan stops at the NUL or at max.
    while n < max && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the n bytes just scanned.
    unsafe { core::slice::from_raw_parts(p.cast::<u8>(), n) }
}

/// Stores `name` for the new handle at `fd`; runs under its lock after
/// `set_created` (which cleared the old name). `dup` is the source's name,
/// read before `set_created` (the source may be the same slot: freopen).
fn set_name(st: &SlotStacks, l: &Locked, name: Named, dup: &table::Name) {
    match name {
        Named::No => {}
        Named::Path(p) => {
            // SAFETY: see Named::Path.
            let b = unsafe { c_bytes(p, PATH_MAX) };
            if !b.is_empty() {
                st.set_name(l, b);
            }
        }
        Named::Memfd(p) => {
            // memfd names are at most 249 bytes (MFD_NAME_MAX_LEN).
            let mut buf = [0u8; 6 + 249];
            buf[..6].copy_from_slice(b"memfd:");
            // SAFETY: see Named::Memfd; the kernel accepted at most 249
            // bytes before the NUL.
            let b = unsafe { c_bytes(p, 249) };
            buf[6..6 + b.len()].copy_from_slice(b);
            st.set_name(l, &buf[..6 + b.len()]);
        }
        Named::DupOf(_) => {
            if dup.len > 0 {
                st.set_name(l, dup.as_bytes());
            }
        }
    }
}

/// Records a new handle at `fd` (its number may be reused: the generation
/// moves on). `ty` is an obj_type code, 0 when the call did not tell;
/// `how` a `table::how` code (the creating syscall's); `name` what the
/// handle was opened by. A [`Named::DupOf`] takes the source's type too.
pub fn created(fd: i32, ty: u32, how: u32, name: Named, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    created_locked(fd, s, &l, ty, how, name, pcs);
    unlock(fd, s, l);
}

/// Widens the table's fd bound (`Header::note_fd`) to `fd`, a number
/// this process made a handle at: a leak check reads the slots below it.
fn note_fd(fd: i32) {
    let pb = PUB.load(Relaxed);
    if !pb.is_null() {
        header(pb).note_fd(fd);
    }
}

/// [`created`] for a caller that already holds the slot's lock.
pub fn created_locked(fd: i32, s: &Slot, l: &Locked, ty: u32, how: u32, name: Named, pcs: &Pcs) {
    fddir::forget(fd);
    crate::report::note_created(fd);
    note_fd(fd);
    let old = s.load(l);
    materialize(fd, l);
    if old.state == state::INTERNAL {
        lost_internal(fd);
    }
    // A dup's source is read without its lock (taking a second slot lock
    // here could deadlock): only a program that races a close of the
    // source against the dup sees a torn name.
    let (ty, dup) = match name {
        Named::DupOf(src) => (
            slot(src).map_or(ty, |x| x.obj_type.load(Relaxed)),
            stacks(src).map(|x| x.name()).unwrap_or_default(),
        ),
        _ => (ty, table::Name::default()),
    };
    s.store(
        l,
        SlotValue {
            state: state::OPEN,
            generation: old.generation.wrapping_add(1),
            obj_type: ty,
            koid: 0,
            rights: 0,
            how,
        },
    );
    if let Some(st) = stacks(fd) {
        if let Some(e) = earlier(fd) {
            e.keep(l, &old, st, py_to_write(fd, &[]));
        }
        st.set_created(l, pcs.frames());
        set_name(st, l, name, &dup);
        mark_dirty(DIRTY_CREATED | DIRTY_CLOSED);
    }
    let py_now = py_frames(pcs);
    if let Some(py) = py_to_write(fd, py_now.frames()) {
        py.set_created(l, py_now.frames());
    }
    account(old.state, state::OPEN);
}

/// Takes over an fd the kernel has open but the shim never saw created
/// (inherited, or opened by a path that bypasses the wrappers).
pub fn adopt(fd: i32) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    let mut v = s.load(&l);
    if v.state == state::FREE {
        materialize(fd, &l);
        note_fd(fd);
        v.state = state::OPEN;
        v.obj_type = 0;
        v.how = table::how::ADOPTED;
        s.store(&l, v);
        if let Some(st) = stacks(fd) {
            st.set_created(&l, &[]);
            mark_dirty(DIRTY_CREATED | DIRTY_CLOSED);
        }
        if let Some(py) = py_to_write(fd, &[]) {
            py.set_created(&l, &[]);
        }
        account(state::FREE, state::OPEN);
    }
    unlock(fd, s, l);
}

/// Records that the handle at `fd` was closed, quarantined or not; the
/// caller holds the lock.
pub fn closed_locked(fd: i32, s: &Slot, l: &Locked, tombstone: bool, pcs: &Pcs) {
    fddir::forget(fd);
    materialize(fd, l);
    let mut v = s.load(l);
    let was = v.state;
    v.state = if tombstone {
        state::TOMBSTONE
    } else {
        state::FREE
    };
    s.store(l, v);
    if let Some(st) = stacks(fd) {
        st.set_closed(l, pcs.frames());
        mark_dirty(DIRTY_CLOSED);
    }
    let py_now = py_frames(pcs);
    if let Some(py) = py_to_write(fd, py_now.frames()) {
        py.set_closed(l, py_now.frames());
    }
    account(was, v.state);
}

/// Turns the record of a handle just closed for real ([`closed_locked`]
/// with `tombstone` false) into a tombstone's, once its number was taken
/// back: the close stacks written then are the truth, and capturing them
/// again (the Python walk above all) would double the close's cost. A
/// slot that is no longer FREE (another thread's use adopted the number
/// in the window) gets the whole record again.
pub fn tombstoned_locked(fd: i32, s: &Slot, l: &Locked, pcs: &Pcs) {
    let mut v = s.load(l);
    if v.state != state::FREE {
        closed_locked(fd, s, l, true, pcs);
        return;
    }
    v.state = state::TOMBSTONE;
    s.store(l, v);
    account(state::FREE, state::TOMBSTONE);
}

/// Records a close of `fd` that the shim did not quarantine.
pub fn closed(fd: i32, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let l = lock(s);
    closed_locked(fd, s, &l, false, pcs);
    unlock(fd, s, l);
}

/// Marks `fd` free because it was closed wholesale (close_range): an open
/// handle gets the close stack, a tombstone keeps the stack of the close
/// that made it.
pub fn closed_in_range(fd: i32, pcs: &Pcs) {
    let Some(s) = slot(fd) else { return };
    let st = s.state.load(Relaxed);
    if st != state::OPEN && st != state::TOMBSTONE {
        return;
    }
    let l = lock(s);
    let mut v = s.load(&l);
    if v.state == state::OPEN {
        closed_locked(fd, s, &l, false, pcs);
    } else if v.state == state::TOMBSTONE {
        v.state = state::FREE;
        s.store(&l, v);
        account(state::TOMBSTONE, state::FREE);
    }
    unlock(fd, s, l);
}

/// The obj_type code recorded for `fd` (0 when unknown).
pub fn type_of(fd: i32) -> u32 {
    slot(fd).map_or(0, |s| s.obj_type.load(Relaxed))
}
