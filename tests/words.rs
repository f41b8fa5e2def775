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

/// A number handed out again and closed again before the stale use: the
/// report names the last handle at the number (closed where it was) and
/// the one before it, with its close stack, since the stale copy may be of
/// either; the same in every mode.
#[test]
fn a_reused_number_names_both_handles_it_held() {
    let prog = fixture("reused_number");
    let prog = prog.to_str().expect("utf-8 path");
    let dir = tempdir();
    for mode in MODES {
        let o = Command::new(handles())
            .arg("run")
            .args(mode)
            .args([
                "--quarantine=1",
                "--on-exception=continue",
                "--",
                prog,
                &dir,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run handles");
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(0), "{mode:?}\n{err}");
        assert!(err.contains("reused=yes read=-1"), "{mode:?}\n{err}");
        assert_eq!(
            kinds(&err),
            ["use of a closed handle (its fd number is quarantined)"],
            "{mode:?}\n{err}"
        );
        let handle = err
            .lines()
            .find(|l| l.contains("handle ") && l.contains("(fd "))
            .unwrap_or_default();
        assert!(handle.ends_with("third-data"), "{mode:?}: {handle}\n{err}");
        let lead = "the number was reused: the stale copy may instead be of the handle before it,";
        let earlier = err.lines().position(|l| l.contains(lead));
        let Some(at) = earlier else {
            panic!("{mode:?}: no earlier handle\n{err}");
        };
        let line = err.lines().nth(at).unwrap_or_default();
        assert!(
            line.contains("first-log, closed"),
            "{mode:?}: {line}\n{err}"
        );
        // Its close stack: the function that closed the first file.
        let next: Vec<&str> = err.lines().skip(at + 1).take(4).collect();
        assert!(
            next.iter().any(|l| l.contains("close_first_log")),
            "{mode:?}: {next:?}\n{err}"
        );
        // The last handle's own close is the other function.
        let closed_at = err
            .lines()
            .position(|l| l.contains("closed") && l.ends_with(" at:"));
        let closed_next: Vec<&str> = err
            .lines()
            .skip(closed_at.unwrap_or(0) + 1)
            .take(4)
            .collect();
        assert!(
            closed_next.iter().any(|l| l.contains("close_third")),
            "{mode:?}: {closed_next:?}\n{err}"
        );
    }
}

fn tempdir() -> String {
    let d = std::env::temp_dir().join(format!("handles-reused-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("make a scratch dir");
    d.to_str().expect("utf-8 path").to_string()
}

/// A program run under valgrind inside the job: valgrind's core makes the
/// program's syscalls itself, with the program's registers. The verdict
/// is the same in every supervised mode (the shim loaded into valgrind's
/// guest passes calls through unmarked, so the supervisor sees them): the
/// stale write is reported and fails instead of landing in the new file.
#[test]
fn a_stale_write_under_valgrind_gets_one_verdict_in_every_mode() {
    if !Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        common::skip("a_stale_write_under_valgrind", "valgrind is not installed");
        return;
    }
    let prog = fixture("run_bugs");
    let prog = prog.to_str().expect("utf-8 path");
    let dir = tempdir();
    for mode in [&[][..], &["--strict"], &["--no-shim"]] {
        let o = Command::new(handles())
            .arg("run")
            .args(mode)
            .args([
                "--on-exception=continue",
                "--",
                "valgrind",
                "-q",
                prog,
                "reuse",
                &dir,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run handles");
        let err = stderr_of(&o);
        assert_eq!(
            kinds(&err),
            ["use of a closed handle (its fd number is quarantined)"],
            "{mode:?}\n{err}"
        );
        assert!(err.contains("syscall write("), "{mode:?}\n{err}");
    }
}
