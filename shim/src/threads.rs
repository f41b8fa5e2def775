//! pthread_create: a forked child whose table is still its private
//! snapshot (or not made yet) makes it shared before a second thread
//! starts, so that the table never changes under a running writer (see
//! `state::fork`).

use crate::real::Real;
use crate::state as st;

static REAL: Real = Real::new(c"pthread_create");

type PthreadCreate = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    *mut libc::c_void,
) -> libc::c_int;

/// # Safety
/// libc's pthread_create contract: the caller's arguments are passed on
/// unchanged.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    st::publish_now();
    match REAL.get::<PthreadCreate>() {
        // SAFETY: libc's pthread_create, with the program's arguments.
        Some(f) => unsafe { f(thread, attr, start, arg) },
        None => libc::EAGAIN,
    }
}
