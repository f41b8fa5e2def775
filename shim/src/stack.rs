//! Call stacks as return addresses, symbolized later by readers.
//!
//! Creation and close stacks are recorded on every open and close, so they
//! must be cheap: the wrappers that create or close fds enter through a
//! small trampoline that sets up a frame pointer and hands it to the
//! implementation, and the stack is a frame-pointer walk from there. The
//! first frame (the program's call site) is always exact; deeper frames
//! exist where the program keeps frame pointers (-O0, or
//! -fno-omit-frame-pointer, as several distributions now build). The walk
//! stays inside the calling thread's stack, so a garbage frame pointer
//! ends it instead of faulting. `HANDLES_STACKS=unwind` records with
//! glibc's DWARF unwinder (`backtrace()`) instead: complete, about 2 µs a
//! stack. The offending stack of a report always uses the unwinder.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};

use handles_model::table::STACK_DEPTH;

use crate::state::Pcs;

/// Top of the main thread's stack (`__libc_stack_end`).
static MAIN_TOP: AtomicUsize = AtomicUsize::new(0);
/// This library's load address: its frames are left out of stacks.
static SELF_BASE: AtomicUsize = AtomicUsize::new(0);
/// Record creation/close stacks with the DWARF unwinder.
pub static UNWIND: AtomicBool = AtomicBool::new(false);
/// Frames to record (`HANDLES_STACK_DEPTH`, 0 turns recording off).
pub static DEPTH: AtomicU32 = AtomicU32::new(STACK_DEPTH as u32);

extern "C" {
    fn backtrace(buf: *mut *mut libc::c_void, size: libc::c_int) -> libc::c_int;
}

pub fn init() {
    // SAFETY: dlsym with a static name; the symbol, if found, is a
    // pointer-sized variable of ld.so.
    unsafe {
        let p = libc::dlsym(libc::RTLD_DEFAULT, c"__libc_stack_end".as_ptr());
        if !p.is_null() {
            MAIN_TOP.store(*(p as *const usize), Relaxed);
        }
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(init as *const libc::c_void, &mut info) != 0 {
            SELF_BASE.store(info.dli_fbase as usize, Relaxed);
        }
        // Loads libgcc_s now: its first use allocates and opens files,
        // which must not happen inside a wrapper.
        let mut buf = [core::ptr::null_mut(); 4];
        backtrace(buf.as_mut_ptr(), 4);
    }
}

pub fn self_base() -> usize {
    SELF_BASE.load(Relaxed)
}

#[inline(always)]
fn rsp() -> usize {
    let sp: usize;
    // SAFETY: reads the stack pointer.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    sp
}

/// The top of the current thread's stack, or 0 when it cannot be told
/// (an alternate signal stack, a coroutine).
fn stack_top(sp: usize) -> usize {
    // glibc places a thread's descriptor (pthread_self) at the top of the
    // thread's stack block; the main thread's stack ends at
    // __libc_stack_end.
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    if sp < me && me - sp < 1 << 28 {
        return me;
    }
    let main = MAIN_TOP.load(Relaxed);
    if sp < main && main - sp < 1 << 30 {
        return main;
    }
    0
}

/// The stack of the wrapper call whose trampoline frame is `frame` (0:
/// no trampoline, use the unwinder).
#[inline(never)]
pub fn capture(frame: usize) -> Pcs {
    let depth = (DEPTH.load(Relaxed) as usize).min(STACK_DEPTH);
    if depth == 0 {
        return Pcs::EMPTY;
    }
    if frame == 0 || UNWIND.load(Relaxed) {
        return unwind(depth, 0);
    }
    let mut out = Pcs::EMPTY;
    let sp = rsp();
    let top = stack_top(sp);
    // SAFETY: `frame` is the trampoline's frame on this thread's stack:
    // [frame] is the caller's rbp, [frame + 8] the return address.
    let (mut fp, ret) = unsafe { (*(frame as *const usize), *((frame + 8) as *const usize)) };
    out.pcs[0] = ret as u64;
    out.n = 1;
    let mut lo = frame;
    while out.n < depth {
        if fp <= lo || fp % 8 != 0 || top == 0 || fp + 16 > top {
            break;
        }
        // SAFETY: fp lies between a live frame of this thread and the top
        // of its stack, so both words are mapped.
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret < 4096 {
            break;
        }
        out.pcs[out.n] = ret as u64;
        out.n += 1;
        lo = fp;
        fp = next;
    }
    out
}

/// A stack from glibc's unwinder, without this library's frames; `skip`
/// more frames are dropped from the top.
pub fn unwind(depth: usize, skip: usize) -> Pcs {
    let mut raw = [core::ptr::null_mut::<libc::c_void>(); 64];
    // SAFETY: backtrace fills at most raw.len() entries.
    let n = unsafe { backtrace(raw.as_mut_ptr(), raw.len() as libc::c_int) };
    let n = usize::try_from(n).unwrap_or(0).min(raw.len());
    let base = self_base();
    let mut out = Pcs::EMPTY;
    let mut skipped = 0;
    for &pc in &raw[..n] {
        if out.n >= depth.min(STACK_DEPTH) {
            break;
        }
        if base != 0 && module_base(pc as usize) == base {
            continue;
        }
        if skipped < skip {
            skipped += 1;
            continue;
        }
        out.pcs[out.n] = pc as u64;
        out.n += 1;
    }
    out
}

fn module_base(pc: usize) -> usize {
    // SAFETY: dladdr only reads the loader's tables.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(pc as *const libc::c_void, &mut info) != 0 {
            info.dli_fbase as usize
        } else {
            0
        }
    }
}

/// (module path, load address) of `pc`, for `module+0xOFF` frames.
pub fn module_of(pc: usize) -> Option<(&'static [u8], usize)> {
    // SAFETY: dladdr only reads the loader's tables; dli_fname points into
    // the loader's link map, which lives as long as the module.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(pc as *const libc::c_void, &mut info) == 0 {
            return None;
        }
        let name = if info.dli_fname.is_null() {
            &[][..]
        } else {
            core::ffi::CStr::from_ptr(info.dli_fname).to_bytes()
        };
        Some((name, info.dli_fbase as usize))
    }
}
