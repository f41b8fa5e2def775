//! The right words in every mode (issue 14, item 5): a use of a closed fd
//! that libc makes for the program (fdopen's F_GETFL, fdopendir's fstat,
//! readdir's getdents64) or that hits a number never quarantined (stdio)
//! gets the same verdict and the same kind in every mode, names a closed
//! handle with the stack that closed it, and the program sees what it
//! sees natively.

mod common;

use std::process::{Command, Output, Stdio};

use common::{fixture, handles, stderr_of};

const MODES: [&[&str]; 4] = [&[], &["--strict"], &["--no-shim"], &["--no-ptrace"]];

fn run(opts: &[&str], prog: &str, case: &str) -> Output {
    Command::new(handles())
        .arg("run")
        .args(opts)
        .args(["--on-exception=continue", "--", prog, case])
        .stdin(Stdio::null())
        .output()
        .expect("run handles")
}

/// The kinds reported, in order ("use of a closed handle ...").
fn kinds(err: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.strip_prefix("handles:     "))
        .filter(|l| l.contains(" of a ") && l.contains("handle"))
        .map(str::to_string)
        .collect()
}

/// The program's own line (`what=result errno`), the same as natively.
fn said(err: &str) -> Vec<String> {
    err.lines()
        .filter(|l| !l.starts_with("handles:") && l.contains('='))
        .map(str::to_string)
        .collect()
}

#[test]
fn libc_uses_and_closed_stdio_get_one_verdict_in_every_mode() {
    let prog = fixture("right_words");
    let prog = prog.to_str().expect("utf-8 path");
    for (case, expected) in [
        ("stdio", &["use of a closed handle"][..]),
        (
            "fdopen",
            &["use of a closed handle (its fd number is quarantined)"][..],
        ),
        (
            "fdopendir",
            &["use of a closed handle (its fd number is quarantined)"][..],
        ),
        (
            "readdir",
            &[
                "use of a closed handle (its fd number is quarantined)",
                "close of a closed handle (double close)",
            ][..],
        ),
        (
            "buffered",
            &["use of a closed handle (its fd number is quarantined)"][..],
        ),
    ] {
        let native = Command::new(prog)
            .arg(case)
            .stdin(Stdio::null())
            .output()
            .expect("run natively");
        let native_said = said(&stderr_of(&native));
        assert_eq!(native_said.len(), 1, "{case}: {}", stderr_of(&native));
        for mode in MODES {
            let o = run(mode, prog, case);
            let err = stderr_of(&o);
            assert_eq!(o.status.code(), Some(0), "{case} {mode:?}\n{err}");
            assert_eq!(kinds(&err), expected, "{case} {mode:?}\n{err}");
            assert_eq!(said(&err), native_said, "{case} {mode:?}\n{err}");
            // A closed handle, with where it was closed, in every mode.
            assert!(
                err.lines().any(|l| l.contains("): closed")),
                "{case} {mode:?}: the handle is not called closed\n{err}"
            );
            assert!(
                err.lines()
                    .any(|l| l.starts_with("handles: closed by")
                        || l.starts_with("handles: closed in")),
                "{case} {mode:?}: no close stack\n{err}"
            );
        }
    }
}

/// With no supervisor the shim writes the report, and `handles symbolize`
/// gives its stacks functions and lines, as in the other modes.
#[test]
fn no_ptrace_reports_point_at_source_lines() {
    let prog = fixture("right_words");
    let prog = prog.to_str().expect("utf-8 path");
    let o = run(&["--no-ptrace"], prog, "fdopen");
    let err = stderr_of(&o);
    let frames: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("handles:     #"))
        .collect();
    // The use, the close and the open, each in main, at its own line.
    let in_main: Vec<&&str> = frames
        .iter()
        .filter(|l| l.contains(" in main at ") && l.contains("right_words.c:"))
        .collect();
    assert_eq!(in_main.len(), 3, "{err}");
    assert!(
        err.contains("): closed object /etc/hostname")
            || err.contains("): closed file /etc/hostname"),
        "{err}"
    );
}
