//! Random numbers for the job's cookie and the tables' mixers.

pub(super) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        // Fall back to something that differs per run; the cookie finds
        // bugs, it is not a security boundary.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    }
}

/// A new process's table mixer: per job, a splitmix64 sequence seeded
/// once from getrandom. A mixer only has to differ between processes
/// (it keeps one process's handle values from being mistaken for
/// another's); a getrandom syscall for every fork cost a syscall in the
/// stop every new process makes the job wait on.
pub(super) fn next_mixer() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Relaxed);
    if s == 0 {
        // 0 means "not seeded": a seed of 0 is nudged off it.
        s = random_u64() | 1;
        STATE.store(s, Relaxed);
    }
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}
