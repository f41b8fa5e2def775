//! The table's mapping: where the wrappers find a slot, its stacks and
//! its Python records, the slot locks, and making the memfd (named
//! `handles-table:<pid>`, layout `handles_model::table`) and telling a
//! supervisor about it.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering::*};

use handles_model::protocol::{Message, TableName};
use handles_model::table::{self, Locked, Slot, SlotStacks};

use super::*;
use crate::sys;

/// The table the wrappers check and write: the memfd's mapping (what
/// readers map, what a supervisor may update under the same slot locks);
/// in a forked child that has not made its own table yet, the mirror
/// [`BASE`] (its snapshot of the parent's table at the fork).
pub(super) static PUB: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());

/// Slots in the table: fds from this number up have none.
pub(super) static CAP: AtomicU32 = AtomicU32::new(0);

/// The mixer of the table's handle values (its header's): a forked
/// child's own table has a new one.
pub static MIXER: AtomicU32 = AtomicU32::new(0);

/// The slot of `fd`; None for negative fds and fds beyond the table.
#[inline(always)]
pub fn slot(fd: i32) -> Option<&'static Slot> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    Some(slot_at(pb, fd))
}

pub fn stacks(fd: i32) -> Option<&'static SlotStacks> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    Some(stacks_at(pb, cap, fd))
}

/// The records of `fd` as this process has them, to read (a report):
/// the published table's, or in a forked child the snapshot's it left
/// there ([`records_base`]). Writers use [`stacks`] and the like.
pub fn recorded(
    fd: i32,
) -> Option<(
    &'static SlotStacks,
    &'static table::PyStacks,
    &'static table::Earlier,
)> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    let b = records_base(fd, pb);
    Some((
        stacks_at(b, cap, fd),
        py_at(b, cap, fd),
        earlier_at(b, cap, fd),
    ))
}

/// The Python records of `fd` in the published table.
pub fn py_stacks(fd: i32) -> Option<&'static table::PyStacks> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    Some(py_at(pb, cap, fd))
}

/// The Python records of `fd` in the table mapped at `base`.
pub(super) fn py_at(base: *mut u8, cap: u32, fd: i32) -> &'static table::PyStacks {
    // SAFETY: as slot_at; the Python area follows the stack records, and
    // the table is mapped table_size(cap) bytes long.
    unsafe {
        &*(base.add(table::py_offset(cap) + fd as usize * table::PY_STACKS_SIZE)
            as *const table::PyStacks)
    }
}

/// The earlier-handle record of `fd` in the published table.
pub fn earlier(fd: i32) -> Option<&'static table::Earlier> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if (fd as u32) >= cap || pb.is_null() {
        return None;
    }
    Some(earlier_at(pb, cap, fd))
}

/// The earlier-handle record of `fd` in the table mapped at `base`.
pub(super) fn earlier_at(base: *mut u8, cap: u32, fd: i32) -> &'static table::Earlier {
    // SAFETY: as slot_at; the earlier-handle area ends the table, which
    // is mapped table_size(cap) bytes long; its offset is a multiple of 8.
    unsafe {
        &*(base.add(table::earlier_offset(cap) + fd as usize * table::EARLIER_SIZE)
            as *const table::Earlier)
    }
}

/// The code registry of the published table.
pub fn codes() -> Option<table::CodeRegistry<'static>> {
    let cap = CAP.load(Relaxed);
    let pb = PUB.load(Relaxed);
    if pb.is_null() {
        return None;
    }
    Some(codes_at(pb, cap))
}

/// The code registry of the table mapped at `base`.
pub(super) fn codes_at(base: *mut u8, cap: u32) -> table::CodeRegistry<'static> {
    // SAFETY: the table is mapped table_size(cap) bytes long and holds
    // the registry at codes_offset(cap), a multiple of 8; all atomics.
    let entries = unsafe {
        core::slice::from_raw_parts(
            base.add(table::codes_offset(cap)) as *const table::CodeEntry,
            table::CODE_SLOTS,
        )
    };
    table::CodeRegistry { entries }
}

/// The slot's state, one relaxed load: the wrappers' fast path.
#[inline(always)]
pub fn state_of(fd: i32) -> Option<u32> {
    slot(fd).map(|s| s.state.load(Relaxed))
}

pub(super) fn slot_at(base: *mut u8, fd: i32) -> &'static Slot {
    // SAFETY: callers pass a live table mapping of CAP slots and fd < CAP.
    unsafe { &*(base.add(table::HEADER_SIZE + fd as usize * table::SLOT_SIZE) as *const Slot) }
}

pub(super) fn stacks_at(base: *mut u8, cap: u32, fd: i32) -> &'static SlotStacks {
    // SAFETY: as slot_at; the stack area follows the slots.
    unsafe {
        &*(base.add(table::stacks_offset(cap) + fd as usize * table::STACKS_SIZE)
            as *const SlotStacks)
    }
}

/// Mirrors slot `fd` and releases its lock.
pub fn unlock(fd: i32, s: &Slot, l: Locked) {
    mirror(fd, s, &l);
    s.unlock(l);
}

/// Takes a slot's lock. Another thread holds it for at most one syscall;
/// the same thread never waits for itself (nested calls skip the table).
pub fn lock(s: &Slot) -> Locked {
    for i in 0u32..200_000 {
        if let Some(l) = s.try_lock() {
            return l;
        }
        if i > 100 {
            // SAFETY: sched_yield has no arguments.
            unsafe { sys::raw(libc::SYS_sched_yield, [0; 6]) };
        } else {
            core::hint::spin_loop();
        }
    }
    // A holder that stays away this long is stopped (debugger) or gone.
    s.steal_lock()
}

/// Whether the supervisor wants announcements (`HANDLES_ANNOUNCE=0`: it
/// finds the table by its name when it needs it, which under its lenient
/// filter and without leak checks is rarely; each announcement is a
/// ptrace stop).
pub static ANNOUNCE: AtomicBool = AtomicBool::new(true);

/// Tells a supervisor where the table is: `fcntl(TABLE_FD, F_GETFD)`
/// with the ANNOUNCE marker in the cookie register. Its prefilter stops
/// on every marker, so the supervisor learns of the table without
/// scanning /proc/PID/fd, and maps it from /proc/PID/fd/<arg0>. Nothing
/// without a cookie (no supervisor to tell).
pub fn announce() {
    let fd = TABLE_FD.load(Relaxed);
    if !sys::COOKIE_ON.load(Relaxed) || !ANNOUNCE.load(Relaxed) || fd < 0 || !has_own_table() {
        return;
    }
    let e = Message::Announce { fd }.encode(0);
    // SAFETY: F_GETFD on the table's fd reads its flags, nothing else.
    unsafe { sys::marked(e.nr, e.args, e.tag) };
}

/// Creates, sizes, seals and maps a new table memfd; returns (fd, base).
pub(super) fn new_table(pid: i32, cap: u32) -> Option<(i32, *mut u8)> {
    let name = TableName::new(pid);
    // SAFETY: memfd_create with a NUL-terminated name in a local buffer.
    let fd = unsafe {
        sys::own(
            libc::SYS_memfd_create,
            [
                name.as_cstr().as_ptr() as u64,
                (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as u64,
                0,
                0,
                0,
                0,
            ],
        )
    };
    if fd < 0 {
        return None;
    }
    let fd = fd as i32;
    let len = table::table_size(cap);
    // SAFETY: ftruncate on our memfd.
    let r = unsafe { sys::sc(libc::SYS_ftruncate, [fd as u64, len as u64, 0, 0, 0, 0]) };
    // Readers map the whole file: it must never shrink under them.
    let sealed = sys::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK as u64);
    if r < 0 || sealed < 0 {
        sys::close(fd);
        return None;
    }
    // SAFETY: a fresh shared mapping of our memfd.
    let base = unsafe {
        sys::sc(
            libc::SYS_mmap,
            [
                0,
                len as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                libc::MAP_SHARED as u64,
                fd as u64,
                0,
            ],
        )
    };
    if (-4095..0).contains(&base) {
        sys::close(fd);
        return None;
    }
    Some((fd, base as *mut u8))
}

pub(super) fn header(base: *mut u8) -> &'static table::Header {
    // SAFETY: base is a live, page-aligned table mapping; all atomics.
    unsafe { &*(base as *const table::Header) }
}

/// Makes the process's table (constructor only, single-threaded in
/// practice). Returns false when the shim must stay inactive.
pub fn create_table(pid: i32, cap: u32) -> bool {
    let Some((fd, base)) = new_table(pid, cap) else {
        return false;
    };
    let mixer = sys::random_u32();
    MIXER.store(mixer, Relaxed);
    CAP.store(cap, Relaxed);
    PUB.store(base, Relaxed);
    OWN_PID.store(pid, Relaxed);
    header(base).init(cap, pid as u32, mixer, table::writer::SHIM);
    let fd = move_high(fd);
    TABLE_FD.store(fd, Relaxed);
    mark_internal(fd);
    init_fork_mark();
    true
}

/// Number of slots.
pub fn capacity() -> u32 {
    CAP.load(Relaxed)
}
