//! `/proc/PID/fdinfo/N` text: the kernel's, but any kernel version's, and
//! parsed field by field with no I/O.
#![no_main]

use handles_supervisor::inspect::parse::{oflags, FdInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let info = FdInfo::parse(&text);
    if let Some(f) = info.flags {
        let _ = oflags::names(f);
    }
    assert!(info.epoll.iter().all(|w| w.fd >= 0));
});
