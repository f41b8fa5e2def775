//! The check every wrapper makes of the fds it is given, before the call:
//! one atomic load of the slot state when all is well, the judge
//! (`report::judged`) otherwise. The fd wrappers (wrap.rs), the path
//! wrappers (lookup.rs) and stdio's listing wrappers all ask it.

use core::ffi::c_int;

use handles_model::judge::{Arg, Op};
use handles_model::table::state;

use crate::report::{self, Call};
use crate::state::{self as st, active, enter, leave};
use crate::sys::ret;

const EBADF: i64 = -(libc::EBADF as i64);

/// The fast check of a wrapper: None to go on with the call, Some(value
/// to return, libc convention) when the judge says otherwise. One atomic
/// load of the slot state when all is well.
#[inline(always)]
pub fn check(fd: c_int, what: Op, nr: i64, args: [u64; 6], frame: usize) -> Option<i64> {
    if !active() {
        return None;
    }
    match st::state_of(fd) {
        None | Some(state::OPEN) => None,
        _ => check_slow(fd, what, &Call::syscall(nr, args), frame),
    }
}

#[cold]
#[inline(never)]
fn check_slow(fd: c_int, op: Op, call: &Call, frame: usize) -> Option<i64> {
    if !enter() {
        // Nested (a signal handler inside the shim): no judging, but a
        // quarantined number still answers EBADF.
        let s = st::state_of(fd);
        return (s == Some(state::TOMBSTONE) || st::internal(fd)).then(|| ret(EBADF));
    }
    st::ensure_own_table();
    let known = report::known(fd);
    let v = report::judged(&[Arg { op, fd, known }], call, frame);
    leave();
    let v = v?;
    report::apply(v.after);
    Some(ret(v.result?))
}
