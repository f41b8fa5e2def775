//! `readlink /proc/PID/fd/N` targets. A file name can hold any byte but
//! NUL and '/' sits anywhere, so a program chooses most of this text.
#![no_main]

use handles_supervisor::inspect::parse::LinkTarget;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match LinkTarget::parse(&text) {
        // Only the kernel writes these (a path starts with '/'); the inode
        // is read leniently ("socket:[+007]" is inode 7).
        LinkTarget::Socket(_) => assert!(text.starts_with("socket:[") && text.ends_with(']')),
        LinkTarget::Pipe(_) => assert!(text.starts_with("pipe:[") && text.ends_with(']')),
        LinkTarget::Pidfd(_) => assert!(text.starts_with("pidfd:[") && text.ends_with(']')),
        LinkTarget::Memfd(name) => {
            assert_eq!(
                LinkTarget::parse(&format!("/memfd:{name} (deleted)")),
                LinkTarget::Memfd(name)
            );
        }
        LinkTarget::Path(p) => assert!(p.starts_with('/')),
        LinkTarget::AnonInode(_) | LinkTarget::Other(_) => {}
    }
});
