//! libc functions the shim wraps by calling the real ones, found in the
//! next object with dlsym(RTLD_NEXT) at their wrapper's first call (or
//! at the process's first fork: see `stdio::resolve_all`).

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A libc function found in the next object (libc) with
/// dlsym(RTLD_NEXT), at its wrapper's first call (or at the process's
/// first fork, see `stdio::resolve_all`).
pub struct Real {
    /// 0: not looked up yet, [`MISSING`]: not found, else its address.
    p: AtomicUsize,
    name: &'static core::ffi::CStr,
}

/// [`Real::p`] of a function libc does not have: looked up once (a
/// failed dlsym allocates its error message).
pub const MISSING: usize = 1;

impl Real {
    pub const fn new(name: &'static core::ffi::CStr) -> Real {
        Real {
            p: AtomicUsize::new(0),
            name,
        }
    }

    pub fn addr(&self) -> usize {
        let p = self.p.load(Relaxed);
        if p != 0 {
            return p;
        }
        // SAFETY: dlsym with a NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        let p = if p == 0 { MISSING } else { p };
        self.p.store(p, Relaxed);
        p
    }

    /// The function as `F` if it is resolved already: a wrapper's fast
    /// path never calls dlsym.
    #[inline(always)]
    pub fn resolved<F: Copy>(&self) -> Option<F> {
        const { assert!(core::mem::size_of::<F>() == core::mem::size_of::<usize>()) };
        let p = self.p.load(Relaxed);
        // SAFETY: p is libc's function of type F (the caller names it).
        (p > MISSING).then(|| unsafe { core::mem::transmute_copy::<usize, F>(&p) })
    }

    /// The function as `F` (a function pointer type matching libc's).
    pub fn get<F: Copy>(&self) -> Option<F> {
        const { assert!(core::mem::size_of::<F>() == core::mem::size_of::<usize>()) };
        let p = self.addr();
        // SAFETY: p is libc's function of type F (the caller names it).
        (p > MISSING).then(|| unsafe { core::mem::transmute_copy::<usize, F>(&p) })
    }
}
