//! sock_diag netlink datagrams: split into messages, each parsed as a
//! unix_diag_msg and an inet_diag_msg.
#![no_main]

use handles_supervisor::inspect::sockdiag::{parse_inet, parse_unix, split_messages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = split_messages(data, &mut out);
    for m in &out {
        assert!(m.len() <= data.len());
        let _ = parse_unix(m);
        let _ = parse_inet(m, libc_tcp());
    }
    // The payload alone, as if it had been split already.
    let _ = parse_unix(data);
    let _ = parse_inet(data, 17);
});

fn libc_tcp() -> u8 {
    6
}
