//! Property tests: every parser of outside input answers malformed input
//! with an error or an empty result, never a panic (issue 6's "bad input,
//! fuzzed"). The inputs are what a hostile or broken kernel, file or
//! program could hand us: /proc fdinfo and link text, sock_diag netlink
//! bytes, suppression files, and a shim's shared table.

use handles_model::table::TableView;
use handles_supervisor::inspect::parse::{FdInfo, LinkTarget};
use handles_supervisor::inspect::sockdiag::{parse_inet, parse_unix, split_messages};
use handles_supervisor::suppress::Suppressions;
use proptest::prelude::*;

fn fdinfo_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "pos",
        "flags",
        "mnt_id",
        "ino",
        "eventfd-count",
        "eventfd-id",
        "Pid",
        "tfd",
        "clockid",
        "it_value",
        "it_interval",
        "settime flags",
        "sigmask",
        "inotify wd",
        "fanotify ino",
    ]);
    prop::collection::vec((key, ".{0,40}"), 0..20).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("{k}:\t{v}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn fdinfo_parser_never_panics(text in ".{0,400}") {
        let _ = FdInfo::parse(&text);
    }

    #[test]
    fn fdinfo_parser_never_panics_on_fdinfo_shaped_text(text in fdinfo_like()) {
        let _ = FdInfo::parse(&text);
    }

    #[test]
    fn link_parser_never_panics(text in ".{0,200}") {
        let _ = LinkTarget::parse(&text);
    }

    #[test]
    fn sock_diag_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let mut out = Vec::new();
        let _ = split_messages(&bytes, &mut out);
        for m in &out {
            let _ = parse_unix(m);
            let _ = parse_inet(m, 6);
        }
        let _ = parse_unix(&bytes);
        let _ = parse_inet(&bytes, 17);
    }

    #[test]
    fn suppression_parser_never_panics(text in "(\\[[a-z]{0,5}\\]?|[a-z]{0,6} ?= ?[a-z:*/]{0,10}|#.{0,10}|.{0,20})(\n(\\[[a-z]{0,5}\\]?|[a-z]{0,6} ?= ?[a-z:*/]{0,10}|.{0,20})){0,12}") {
        if let Err(e) = Suppressions::parse(&text, "fuzz.supp") {
            // Errors are one line and name the file.
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'));
            prop_assert!(msg.starts_with("fuzz.supp"));
        }
    }

    #[test]
    fn table_reader_never_panics_on_scribbled_memory(words in prop::collection::vec(any::<u64>(), 0..256), magic in any::<bool>()) {
        let mut words = words;
        if magic && words.len() > 2 {
            // A valid magic and version over garbage: the reader must still
            // check the layout.
            words[0] = handles_model::table::MAGIC;
            words[1] = u64::from(handles_model::table::VERSION);
        }
        // SAFETY: reinterpreting initialised u64s as bytes, 8-aligned.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
        if let Ok(view) = TableView::new(bytes) {
            for fd in [-1, 0, 1, 7, 1000, i32::MAX] {
                let _ = view.slot(fd);
                let _ = view.detail(fd);
            }
        }
    }
}
