//! Call stacks as return addresses, symbolized later by readers.
//!
//! Creation and close stacks are recorded on every open and close, so they
//! must be cheap and must be safe inside a libc wrapper: the wrappers that
//! create or close fds enter through a small trampoline that sets up a
//! frame pointer and hands it to the implementation. That frame gives the
//! caller's return address, stack pointer and rbp exactly; from there
//! [`capture`] unwinds with the shim's own CFI unwinder ([`crate::cfi`]:
//! the modules' `.eh_frame_hdr`/`.eh_frame`, one cached rule per return
//! address, no allocation, no loader lock, every read bounds-checked), so
//! stacks are whole in optimized code without frame pointers, the same as
//! the supervisor's remote unwinding gives. Frames without CFI are
//! stepped by their frame pointer. The walk stays inside the calling
//! thread's stack (its top from glibc's thread descriptor or
//! `__libc_stack_end`), so garbage ends it instead of faulting.
//!
//! `HANDLES_STACKS=fp` records by the frame-pointer walk alone (one frame
//! in code without frame pointers); `HANDLES_STACKS=unwind` with libgcc's
//! unwinder (about 2 µs a stack: it interprets every frame's CFI on every
//! call). The offending stack of a report in the shim-alone mode (rare)
//! and the stack of a `syscall(2)` close (no trampoline) use libgcc's.
//!
//! libgcc's unwinder is linked statically into the shim (build.rs):
//! glibc's backtrace() would dlopen libgcc_s.so.1 at its first call,
//! which allocates and opens files (not something to do inside a
//! wrapper), and preloading it costs every process about 0.1 ms. The
//! static copy finds unwind tables with _dl_find_object, without
//! allocating.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};

use handles_model::table::{DEFAULT_STACK_DEPTH, STACK_DEPTH};

use crate::cfi;
use crate::state::Pcs;

/// Top of the main thread's stack (`__libc_stack_end`).
static MAIN_TOP: AtomicUsize = AtomicUsize::new(0);
/// This library's load address: its frames are left out of stacks.
static SELF_BASE: AtomicUsize = AtomicUsize::new(0);
/// Record creation/close stacks with libgcc's unwinder
/// (`HANDLES_STACKS=unwind`).
pub static UNWIND: AtomicBool = AtomicBool::new(false);
/// Record creation/close stacks by the frame-pointer walk alone
/// (`HANDLES_STACKS=fp`).
pub static FRAME_POINTERS: AtomicBool = AtomicBool::new(false);
/// Frames to record (`HANDLES_STACK_DEPTH`, 0 turns recording off).
pub static DEPTH: AtomicU32 = AtomicU32::new(DEFAULT_STACK_DEPTH as u32);

#[repr(C)]
struct UnwindContext {
    _opaque: [u8; 0],
}

/// _URC_NO_REASON: go on to the next frame.
const URC_NO_REASON: libc::c_int = 0;
/// _URC_END_OF_STACK: any other value stops the walk.
const URC_END_OF_STACK: libc::c_int = 5;

extern "C" {
    fn _Unwind_Backtrace(
        trace: extern "C" fn(*mut UnwindContext, *mut libc::c_void) -> libc::c_int,
        arg: *mut libc::c_void,
    ) -> libc::c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
    /// ld.so's record of where the initial (main thread's) stack ends.
    static __libc_stack_end: *const libc::c_void;
    /// This object's ELF header, defined by the linker (hidden).
    static __ehdr_start: u8;
}

pub fn init() {
    // SAFETY: __libc_stack_end is set by ld.so before any constructor
    // runs and never changes; __ehdr_start is only taken the address of.
    unsafe {
        MAIN_TOP.store(__libc_stack_end as usize, Relaxed);
        // The linker's symbol for this object's ELF header, which sits at
        // its load address (what dladdr's dli_fbase says, without a walk
        // of the loader's tables).
        SELF_BASE.store(&raw const __ehdr_start as usize, Relaxed);
    }
}

/// Return addresses of the calling thread's stack, innermost first, into
/// `out`; returns how many.
fn backtrace(out: &mut [usize]) -> usize {
    struct Walk<'a> {
        out: &'a mut [usize],
        n: usize,
    }
    extern "C" fn step(ctx: *mut UnwindContext, arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: arg is the &mut Walk passed below, alive for the walk.
        let w = unsafe { &mut *arg.cast::<Walk>() };
        // SAFETY: ctx is the unwinder's context for the current frame.
        let ip = unsafe { _Unwind_GetIP(ctx) };
        if ip == 0 || w.n >= w.out.len() {
            return URC_END_OF_STACK;
        }
        w.out[w.n] = ip;
        w.n += 1;
        URC_NO_REASON
    }
    let mut w = Walk { out, n: 0 };
    // SAFETY: the callback only writes within w, which outlives the call.
    unsafe { _Unwind_Backtrace(step, (&mut w as *mut Walk).cast()) };
    w.n
}

/// libc's dlclose, found at the wrapper's first call (0: not yet).
#[cfg(not(test))]
static REAL_DLCLOSE: AtomicUsize = AtomicUsize::new(0);

/// dlclose: the library's code may be unmapped and another library
/// mapped at its addresses, so the CFI unwinder's cached rules are
/// forgotten (`cfi::forget_rules`) once it returns. The real function is
/// looked up with dlsym at the first call: dlclose takes the loader's
/// lock itself, so the lookup adds no new way to block.
#[cfg(not(test))]
#[no_mangle]
pub unsafe extern "C" fn dlclose(handle: *mut libc::c_void) -> libc::c_int {
    type DlcloseFn = unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int;
    let mut p = REAL_DLCLOSE.load(Relaxed);
    if p == 0 {
        // SAFETY: dlsym with a NUL-terminated name.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlclose".as_ptr()) } as usize;
        if p == 0 {
            return -1;
        }
        REAL_DLCLOSE.store(p, Relaxed);
    }
    // SAFETY: p is libc's dlclose (non-null, found by name).
    let f = unsafe { core::mem::transmute::<usize, DlcloseFn>(p) };
    // SAFETY: libc's dlclose, with the program's handle.
    let r = unsafe { f(handle) };
    cfi::forget_rules();
    r
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
/// no trampoline, use libgcc's unwinder).
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
    // [frame] is the caller's rbp (the trampoline pushed it on entry, and
    // rbp is callee-saved, so it is the caller's own), [frame + 8] the
    // return address into the caller.
    let (fp, ret) = unsafe { (*(frame as *const usize), *((frame + 8) as *const usize)) };
    out.pcs[0] = ret as u64;
    out.n = 1;
    if top == 0 {
        return out;
    }
    if FRAME_POINTERS.load(Relaxed) {
        fp_walk(&mut out, depth, frame, fp, top);
        return out;
    }
    // The caller's registers at the call: its stack pointer is just above
    // the return address, its rbp the one the trampoline saved.
    let mut regs = cfi::Regs {
        pc: ret as u64,
        sp: frame as u64 + 16,
        fp: fp as u64,
    };
    while out.n < depth {
        match cfi::step(&regs, sp as u64, top as u64) {
            Some(next) => {
                out.pcs[out.n] = next.pc;
                out.n += 1;
                regs = next;
            }
            None => break,
        }
    }
    out
}

/// The frame-pointer walk (`HANDLES_STACKS=fp`): from the trampoline's
/// saved rbp `fp`, while each frame pointer lies above the last and below
/// the stack's `top`.
fn fp_walk(out: &mut Pcs, depth: usize, frame: usize, mut fp: usize, top: usize) {
    let mut lo = frame;
    while out.n < depth {
        if fp <= lo || !fp.is_multiple_of(8) || fp + 16 > top {
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
}

/// A stack from the DWARF unwinder, without this library's frames; `skip`
/// more frames are dropped from the top.
pub fn unwind(depth: usize, skip: usize) -> Pcs {
    // `HANDLES_STACK_DEPTH` bounds the offending stack of a report too, as
    // the supervisor's `--stack-depth` does; with recording off (0) a
    // report still carries its whole stack, as the supervisor's does.
    let depth = match DEPTH.load(Relaxed) as usize {
        0 => depth,
        d => depth.min(d),
    };
    // Room for the shim's own frames, which are dropped.
    let mut raw = [0usize; STACK_DEPTH + 32];
    let n = backtrace(&mut raw);
    let base = self_base();
    let mut out = Pcs::EMPTY;
    let mut skipped = 0;
    for &pc in &raw[..n] {
        if out.n >= depth.min(STACK_DEPTH) {
            break;
        }
        if base != 0 && module_base(pc) == base {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_base_is_where_the_loader_put_this_object() {
        init();
        assert_eq!(
            module_of(init as *const () as usize).map(|(_, base)| base),
            Some(self_base())
        );
    }

    /// This thread's stack by the CFI unwinder, from the caller of this
    /// function, and libgcc's for comparison.
    #[inline(never)]
    fn both_stacks() -> ([u64; 64], usize, [usize; 64], usize) {
        let (pc, sp, fp): (u64, u64, u64);
        // SAFETY: reads the instruction pointer and two registers.
        unsafe {
            core::arch::asm!(
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack)
            )
        };
        let top = stack_top(sp as usize) as u64;
        assert_ne!(top, 0, "a test thread's stack top is known");
        // pc is inside this function, not a return address: the rule is
        // looked up at pc + 1 - 1.
        let mut regs = cfi::Regs { pc: pc + 1, sp, fp };
        let mut mine = [0u64; 64];
        let mut n = 0;
        while n < mine.len() {
            match cfi::step(&regs, sp, top) {
                Some(next) => {
                    mine[n] = next.pc;
                    n += 1;
                    regs = next;
                }
                None => break,
            }
        }
        let mut theirs = [0usize; 64];
        let m = backtrace(&mut theirs);
        (mine, n, theirs, m)
    }

    #[test]
    fn the_cfi_walk_matches_libgccs_unwinder() {
        compare_walks(2);
    }

    /// Threads that fill and read the rule cache at once (the same return
    /// addresses, so the same entries) all get libgcc's stacks.
    #[test]
    fn racing_threads_share_the_rule_cache() {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| compare_walks(300));
            }
        });
    }

    fn compare_walks(rounds: usize) {
        for round in 0..rounds {
            // The second round runs from the rule cache.
            let (mine, n, theirs, m) = both_stacks();
            let theirs = &theirs[..m];
            let mine = &mine[..n];
            assert!(n >= 4, "round {round}: a whole stack, got {mine:x?}");
            // libgcc's list starts inside both_stacks; ours at its caller.
            let at = theirs
                .iter()
                .position(|&pc| pc as u64 == mine[0])
                .unwrap_or_else(|| panic!("{mine:x?} not in {theirs:x?}"));
            let theirs: Vec<u64> = theirs[at..].iter().map(|&pc| pc as u64).collect();
            assert_eq!(mine, &theirs[..], "round {round}");
        }
    }
}
