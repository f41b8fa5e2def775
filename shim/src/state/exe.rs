//! The executable's file name, for the stacks of reports.

use core::sync::atomic::{AtomicU32, Ordering::*};

use super::*;
use crate::sys;

/// The executable's file name, for reports (dladdr gives the main program
/// an empty module name). Read at the first report that needs it, not at
/// start-up: most processes never report.
struct ExeName {
    /// 0: not read, 1: being read, 2: read (`bytes` never changes again).
    state: AtomicU32,
    len: AtomicU32,
    bytes: core::cell::UnsafeCell<[u8; 256]>,
}

// SAFETY: `bytes` is written only by the one thread that moved `state`
// from 0 to 1, and read only after `state` says 2 (release/acquire).
unsafe impl Sync for ExeName {}

static EXE: ExeName = ExeName {
    state: AtomicU32::new(0),
    len: AtomicU32::new(0),
    bytes: core::cell::UnsafeCell::new([0; 256]),
};

/// The last component of what `/proc/self/exe` links to (`?` when it
/// cannot be read). Runs inside wrappers (reports): a raw readlink into
/// a local buffer, no allocation. A thread that finds another reading it
/// waits a little, then makes do with `?` (it may be the reader itself,
/// interrupted by a signal handler that reports).
pub fn exe_name() -> &'static [u8] {
    if EXE.state.compare_exchange(0, 1, Acquire, Acquire).is_ok() {
        let mut link = [0u8; PATH_MAX];
        // SAFETY: readlink of a static NUL-terminated path into a local
        // buffer of the length given.
        let n = unsafe {
            sys::sc(
                libc::SYS_readlink,
                [
                    c"/proc/self/exe".as_ptr() as u64,
                    link.as_mut_ptr() as u64,
                    link.len() as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        let link = &link[..n.clamp(0, PATH_MAX as i64) as usize];
        let name = &link[link.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)..];
        let len = name.len().min(256);
        // SAFETY: this thread alone moved the state to 1 (see ExeName).
        unsafe { (&mut *EXE.bytes.get())[..len].copy_from_slice(&name[..len]) };
        EXE.len.store(len as u32, Relaxed);
        EXE.state.store(2, Release);
    }
    for _ in 0..100_000 {
        if EXE.state.load(Acquire) == 2 {
            let len = (EXE.len.load(Relaxed) as usize).min(256);
            if len == 0 {
                break;
            }
            // SAFETY: read, and never written again (see ExeName).
            return unsafe { &(&*EXE.bytes.get())[..len] };
        }
        core::hint::spin_loop();
    }
    b"?"
}
