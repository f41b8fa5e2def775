//! The fds a poll or select call names, read from the stopped thread's
//! memory: the window's checks (window.rs) and its hiding (hidden.rs)
//! both ask.

use crate::run::tracer;

/// The fds of a poll/ppoll call's array (at most 4,096 entries read).
pub(super) fn polled_fds(tid: i32, array: u64, n: u64) -> Vec<i32> {
    let n = (n as usize).min(4096);
    tracer::read_mem(tid, array, n * 8)
        .map(|buf| {
            buf.chunks_exact(8)
                .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                .filter(|&fd| fd >= 0)
                .collect()
        })
        .unwrap_or_default()
}

/// The fds set in a select call's three sets (`nfds` at most 1,024).
pub(super) fn selected_fds(tid: i32, nfds: u64, sets: [u64; 3]) -> Vec<i32> {
    let nfds = (nfds as i64).clamp(0, 1024) as usize;
    let bytes = nfds.div_ceil(64) * 8;
    let mut fds = Vec::new();
    for set in sets.into_iter().filter(|&s| s != 0) {
        let Ok(buf) = tracer::read_mem(tid, set, bytes) else {
            continue;
        };
        for (i, byte) in buf.iter().enumerate() {
            for bit in 0..8 {
                let fd = i * 8 + bit;
                if fd < nfds && byte & (1 << bit) != 0 && !fds.contains(&(fd as i32)) {
                    fds.push(fd as i32);
                }
            }
        }
    }
    fds
}
