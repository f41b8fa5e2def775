//! One verdict: a call gets the same bad-handle verdict in every mode
//! (default, `--strict`, `--no-shim`, `--no-ptrace`) whatever other
//! options and policy entries are given (issue #13).
//!
//! Each case (a bug fixture, or a correct program using an idiom) runs
//! under every mode crossed with option sets that must not change its
//! verdict: each kind of condition alone and in pairs, `--max-handles`,
//! `--leak-check`, `--quarantine` small and large, a policy file, a nested
//! job, and `--on-exception=continue`. A bug must be reported (its
//! sentence on stderr) and end as the action says; an idiom must print
//! and end as natively, with no report.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const MODES: [&str; 4] = ["", "--strict", "--no-shim", "--no-ptrace"];

#[derive(Clone, Copy)]
enum Expect {
    /// Reported with this sentence.
    Bug(&'static str),
    /// As natively, no report.
    Idiom,
}

struct Case {
    name: &'static str,
    fixture: &'static str,
    args: Vec<String>,
    expect: Expect,
    /// The bug is a close the judge holds to the program's end (no close
    /// follows it): reported then, and the program ends as natively.
    held_to_end: bool,
}

/// What the option set does to a bug's ending.
#[derive(Clone, Copy, PartialEq)]
enum Ends {
    Trap,
    Kill,
    /// `--on-exception=continue`: the program goes on to its own end.
    Native,
}

struct Options {
    name: &'static str,
    args: Vec<String>,
    ends: Ends,
    /// Refused with `--no-ptrace` (it needs the supervisor).
    needs_ptrace: bool,
    /// A `handles run` inside the job.
    nested: bool,
}

fn opts(name: &'static str, args: &[&str]) -> Options {
    Options {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        ends: Ends::Trap,
        needs_ptrace: false,
        nested: false,
    }
}

fn option_sets(dir: &Path) -> Vec<Options> {
    let file = dir.join("policy");
    std::fs::write(
        &file,
        "# a stricter action for bad handles, and a locked new-* entry\n\
         bad-handle=kill\n\
         new-socket=deny-exception:override-deny\n",
    )
    .expect("write policy file");
    let file = file.to_string_lossy().into_owned();
    vec![
        opts("no options", &[]),
        opts("new-socket=deny", &["--policy", "new-socket=deny"]),
        opts(
            "new-timer=kill and wrong-object=deny-exception",
            &[
                "--policy",
                "new-timer=kill",
                "--policy",
                "wrong-object=deny-exception",
            ],
        ),
        opts(
            "new-vmo=allow-exception:override-deny and new-event=deny",
            &[
                "--policy",
                "new-vmo=allow-exception:override-deny",
                "--policy",
                "new-event=deny",
            ],
        ),
        opts("new-any=allow", &["--policy", "new-any=allow"]),
        Options {
            needs_ptrace: true,
            ..opts("--max-handles 100", &["--max-handles", "100"])
        },
        Options {
            needs_ptrace: true,
            ..opts("--leak-check", &["--leak-check"])
        },
        opts("--quarantine 8", &["--quarantine", "8"]),
        opts("--quarantine 256", &["--quarantine", "256"]),
        Options {
            ends: Ends::Kill,
            ..opts(
                "policy file with bad-handle=kill",
                &["--policy-file", &file],
            )
        },
        Options {
            nested: true,
            needs_ptrace: true,
            ..opts("nested job", &[])
        },
        Options {
            ends: Ends::Native,
            ..opts("--on-exception=continue", &["--on-exception=continue"])
        },
    ]
}

fn cases(dir: &Path) -> Vec<Case> {
    let d = dir.to_string_lossy().into_owned();
    let case = |name, fixture, args: &[&str], expect| Case {
        name,
        fixture,
        args: args.iter().map(|s| s.to_string()).collect(),
        expect,
        held_to_end: false,
    };
    vec![
        case(
            "stale write after reuse",
            "run_bugs",
            &["reuse", &d],
            Expect::Bug("use of a closed handle"),
        ),
        case(
            "double close",
            "run_bugs",
            &["double-close"],
            Expect::Bug("close of a closed handle (double close)"),
        ),
        Case {
            held_to_end: true,
            ..case(
                "close of a never-opened fd",
                "run_bugs",
                &["never-opened"],
                Expect::Bug("close of a handle that was never opened"),
            )
        },
        case(
            "ascending close sweep",
            "idiom_sweeps",
            &["asc"],
            Expect::Idiom,
        ),
        case(
            "fstat of a closed stdout",
            "idiom_questions",
            &["fstat-closed-stdout"],
            Expect::Idiom,
        ),
    ]
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("matrix-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn every_mode_and_option_set_gives_one_verdict() {
    let dir = scratch("verdicts");
    let mut failures = Vec::new();
    let mut runs = 0;
    for case in cases(&dir) {
        let prog = fixture(case.fixture);
        let native = run(Command::new(&prog).args(&case.args));
        for o in option_sets(&dir) {
            for mode in MODES {
                if o.needs_ptrace && mode == "--no-ptrace" {
                    continue;
                }
                let mut cmd = Command::new(handles());
                cmd.arg("run");
                if !mode.is_empty() {
                    cmd.arg(mode);
                }
                cmd.args(&o.args).arg("--");
                if o.nested {
                    cmd.arg(handles()).args(["run", "--"]);
                }
                cmd.arg(&prog).args(&case.args);
                let out = run(&mut cmd);
                runs += 1;
                let err = String::from_utf8_lossy(&out.stderr);
                let stdout = String::from_utf8_lossy(&out.stdout);
                let reported = err.contains("<== policy exception: bad-handle");
                let mode_name = if mode.is_empty() { "default" } else { mode };
                let what = format!("{} under {mode_name} with {}", case.name, o.name);
                let mut fail = |why: String| {
                    failures.push(format!("{what}: {why}\n--- stderr:\n{err}"));
                };
                match case.expect {
                    Expect::Bug(sentence) => {
                        if !reported || !err.contains(sentence) {
                            fail(format!("no report saying '{sentence}'"));
                        }
                        let want = match o.ends {
                            _ if case.held_to_end => ending(&native.status),
                            Ends::Trap => "signal 5".to_string(),
                            Ends::Kill => "signal 9".to_string(),
                            Ends::Native => ending(&native.status),
                        };
                        if ending(&out.status) != want {
                            fail(format!("ended {} (want {want})", ending(&out.status)));
                        }
                        if !err.contains("ERROR SUMMARY: ") {
                            fail("no ERROR SUMMARY line".into());
                        }
                    }
                    Expect::Idiom => {
                        if reported {
                            fail("reported".into());
                        }
                        if ending(&out.status) != ending(&native.status) {
                            fail(format!(
                                "ended {} (natively {})",
                                ending(&out.status),
                                ending(&native.status)
                            ));
                        }
                        if stdout != String::from_utf8_lossy(&native.stdout) {
                            fail(format!(
                                "printed {stdout:?}, natively {:?}",
                                String::from_utf8_lossy(&native.stdout)
                            ));
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {runs} runs gave another verdict:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_held_close_is_raised_at_the_next_close_or_written_at_the_end() {
    // bug_error_path: close(fd) in a helper, other work, then close(fd)
    // again in the cleanup: a lone double close the judge holds (it might
    // have begun a sweep). With no close after it, it is written when the
    // program ends, which ends as natively; with one (error-path-reuse
    // closes its file afterwards), the exception is raised there.
    let prog = fixture("bug_error_path");
    let native = run(Command::new(&prog).arg("error-path"));
    for mode in MODES {
        let args: Vec<&str> = if mode.is_empty() { vec![] } else { vec![mode] };
        let out = run(Command::new(handles())
            .arg("run")
            .args(&args)
            .arg("--")
            .arg(&prog)
            .arg(OsStr::new("error-path")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("close of a closed handle (double close)")
                && err.contains("before another close showed a sweep"),
            "{mode}: {err}"
        );
        assert_eq!(ending(&out.status), ending(&native.status), "{mode}: {err}");
        let out = run(Command::new(handles())
            .arg("run")
            .args(&args)
            .arg("--")
            .arg(&prog)
            .arg(OsStr::new("error-path-reuse")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("close of a closed handle (double close)"),
            "{mode}: {err}"
        );
        assert_eq!(ending(&out.status), "signal 5", "{mode}: {err}");
    }
}

#[test]
fn quarantine_n_means_n_in_every_mode() {
    // --quarantine 256 with 70 closes between the close of a log fd and
    // its stale use: the number is still held in every mode, so the write
    // is caught and the file opened meanwhile stays empty (the shim used
    // to hold 64 at most, silently).
    let prog = fixture("run_quarantine_deep");
    for mode in MODES {
        let dir = scratch(&format!("deep{}", mode.trim_start_matches('-')));
        let args: Vec<&str> = if mode.is_empty() { vec![] } else { vec![mode] };
        let out = run(Command::new(handles())
            .arg("run")
            .args(&args)
            .args(["--quarantine", "256", "--on-exception=continue", "--"])
            .arg(&prog)
            .arg(&dir));
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            err.contains("use of a closed handle (its fd number is quarantined)"),
            "{mode}: {err}"
        );
        assert!(
            stdout.contains("live got the log's number: no")
                && stdout.contains("stale write=-1 errno=9")
                && stdout.contains("live file holds 0 bytes"),
            "{mode}: {stdout}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Above the documented bound: a usage error, not a silent cap.
    let out = run(Command::new(handles()).args(["run", "--quarantine", "1025", "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_number_no_fd_can_have_is_a_sentinel_in_every_mode() {
    // At or above RLIMIT_NOFILE no fd can exist: closing INT_MAX is a
    // program's "no fd" value, not a handle (tmux does it); a never-opened
    // number below the limit is still reported. Both layers must agree.
    let prog = fixture("run_close_n");
    for mode in MODES {
        let args: Vec<&str> = if mode.is_empty() { vec![] } else { vec![mode] };
        for (n, reported) in [("2147483647", false), ("1048576", false), ("100", true)] {
            let out = run(Command::new(handles())
                .arg("run")
                .args(&args)
                .arg("--")
                .arg(&prog)
                .arg(n));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                err.contains("close of a handle that was never opened"),
                reported,
                "{mode} close({n}): {err}"
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "close=-1 errno=9\n",
                "{mode} close({n})"
            );
        }
    }
}
