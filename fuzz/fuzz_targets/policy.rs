//! The policy parsers: a policy file's text (`--policy-file`), one spec
//! (`--policy`), and the encoded form a nested job reads from
//! HANDLES_POLICY (the program's own environment, so hostile).
//!
//! Beyond "no panic": whatever parses must print and read back as itself.
#![no_main]

use handles_supervisor::policy::{parse_spec, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_spec(text);
    if let Ok(p) = text.parse::<Policy>() {
        let shown = p.to_string();
        let again: Policy = shown
            .parse()
            .unwrap_or_else(|e| panic!("a policy's own text does not parse: {e}\n{shown}"));
        assert_eq!(p, again, "display/parse round trip");
        let enc = p.encode();
        let dec = Policy::decode(&enc)
            .unwrap_or_else(|e| panic!("a policy's own encoding does not decode: {e}\n{enc}"));
        assert_eq!(p, dec, "encode/decode round trip");
    }
    if let Ok(p) = Policy::decode(text) {
        assert_eq!(
            Policy::decode(&p.encode()).ok(),
            Some(p),
            "decode/encode round trip"
        );
    }
    // Errors are shown to the user on one line... or a few: they must at
    // least format.
    if let Err(e) = text.parse::<Policy>() {
        let _ = e.to_string();
    }
});
