//! The suppression file parser (`--suppressions FILE`), the globs its
//! rules match with, and `--gen-suppressions`' rendering: a parsed rule
//! renders to text that parses back to the same rule.
#![no_main]

use handles_supervisor::suppress::{Event, FrameRef, Suppressions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Suppressions::parse(text, "fuzz.supp") {
        Ok(s) => {
            for r in &s.rules {
                let shown = r.render();
                let again = Suppressions::parse(&shown, "again.supp")
                    .unwrap_or_else(|e| panic!("a rendered rule does not parse: {e}\n{shown}"));
                assert_eq!(again.rules.len(), 1, "{shown}");
                assert_eq!(&again.rules[0], r, "render/parse round trip\n{shown}");
            }
            // Match the rules against an event made of the input's lines.
            let lines: Vec<&str> = text.lines().take(8).collect();
            let at = |i: usize| lines.get(i).copied().unwrap_or("");
            let frames = [
                FrameRef {
                    function: Some(at(4)),
                    module: Some(at(5)),
                    file: Some(at(6)),
                },
                FrameRef::default(),
            ];
            let e = Event {
                report: at(0),
                kind: at(1),
                ty: at(2),
                path: at(3),
                frames: frames.to_vec(),
            };
            let _ = s.matching(&e);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.starts_with("fuzz.supp:"), "{msg}");
        }
    }
});
