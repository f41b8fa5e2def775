//! The shared handle table as `handles <pid>` and the supervisor read it:
//! a process can scribble anything on its own shim's table, so
//! `TableView` must validate every byte, clamp to the mapping, and give up
//! on a slot whose sequence counter never settles (no hang, no panic).
//!
//! The first input byte picks a preparation: as is, or with a valid header
//! written over the first 64 bytes (so the fuzzer reaches the slot and
//! stack readers without having to guess the layout), with the capacity
//! taken from the input.
#![no_main]

use handles_model::table::{self, TableView, HEADER_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // 8-aligned copy, as an mmap would be; optionally misaligned by `skip`.
    let mut words = vec![0u64; rest.len().div_ceil(8) + 1];
    // SAFETY: the u64 buffer holds at least rest.len() + 8 bytes; u8 has
    // no alignment requirement.
    let buf =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    buf[..rest.len()].copy_from_slice(rest);
    let mem = &mut buf[..rest.len() + 8];
    if mode & 1 == 1 && mem.len() >= HEADER_SIZE {
        let cap =
            u32::from_le_bytes([mem[20], mem[21], mem[22], mem[23]]) % (table::MAX_CAPACITY + 2);
        // SAFETY: mem starts 8-aligned and holds at least HEADER_SIZE
        // bytes; Header is all atomics, so any bytes are a valid Header.
        let header = unsafe { &*(mem.as_ptr() as *const table::Header) };
        header.init(cap, 1, 2, table::writer::SHIM);
    }
    let skip = usize::from(mode >> 1 & 1);
    let Ok(view) = TableView::new(&mem[skip..rest.len() + skip]) else {
        return;
    };
    let cap = view.capacity();
    assert!(HEADER_SIZE + cap * table::SLOT_SIZE <= rest.len());
    let _ = (view.pid(), view.mixer(), view.writer());
    for fd in (0..cap.min(256)).chain([cap.saturating_sub(1), cap, cap + 1]) {
        let fd = i32::try_from(fd).unwrap_or(i32::MAX);
        let _ = view.slot(fd);
        if let Some(d) = view.detail(fd) {
            assert!(d.created.len <= table::STACK_DEPTH);
            assert!(d.closed.len <= table::STACK_DEPTH);
            let _ = d.created.frames();
        }
    }
    for fd in [-1, i32::MIN, i32::MAX] {
        assert_eq!(view.slot(fd), None);
        assert_eq!(view.detail(fd), None);
    }
});
