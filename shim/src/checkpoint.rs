//! `handles_checkpoint(name)`: a test boundary, for per-test leak
//! attribution (docs/per-test.md). Any test runner can call it (C through
//! `dlsym(RTLD_DEFAULT, "handles_checkpoint")`, Python through ctypes):
//!
//! - `name` a test's id: the handles this process creates from now on
//!   belong to that test (it begins, or resumes after a pause);
//! - `name` empty: from now on they belong to no test (a pause: a fixture
//!   of a wider scope being set up);
//! - `name` NULL: the current test ended: the supervisor reports the
//!   handles it created that are still open.
//!
//! The boundary is the supervisor's to act on: the call is an
//! `fcntl(-1, CHECKPOINT_CMD, name)` marked so that it stops there in
//! every filter mode. Without a supervisor (`--no-ptrace`, a plain
//! LD_PRELOAD) the kernel fails it with EBADF: the function returns -1
//! and the program goes on.

use handles_model::table::{marker, CHECKPOINT_CMD};

use crate::sys;

/// Returns 0 when a supervisor took the boundary, -1 otherwise.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string (read by the supervisor).
#[no_mangle]
pub unsafe extern "C" fn handles_checkpoint(name: *const libc::c_char) -> libc::c_int {
    // The supervisor reads the process's table at the boundary: a forked
    // child's private one is made shared first.
    crate::state::publish_now();
    let a = [
        -1i64 as u64,
        u64::from(CHECKPOINT_CMD),
        name as u64,
        0,
        0,
        0,
    ];
    // SAFETY: fcntl on fd -1 reads nothing of ours; the supervisor reads
    // `name` from our memory at the stop, the kernel never does.
    let r = unsafe { sys::marked(libc::SYS_fcntl, a, marker::CHECKPOINT) };
    if r == 0 {
        0
    } else {
        -1
    }
}
