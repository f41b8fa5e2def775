//! Whole native stacks in every mode (issue #15, item 1).
//!
//! The shim records creation and close stacks in-process with its CFI
//! unwinder; the supervisor alone (`--no-shim`) unwinds remotely. For every
//! bug and leak fixture, built at -O0 with frame pointers and at -O2
//! without them, each stack of a report (the offending call, closed by,
//! originally opened by, each leak group's creation) must name the same
//! functions and file:line in the default mode as under `--no-shim`. The
//! only difference allowed is where a stack starts: the supervisor stops
//! inside libc's syscall wrapper (fopen's, fclose's internals), the shim
//! at the wrapper's caller, so leading libc frames are left out of both.
//!
//! `--stack-depth` bounds every mode alike, and above the table's 64
//! frames it is a usage error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

/// The fixtures' two builds: as the other tests build them, and as
/// distributions build packages.
const BUILDS: [&[&str]; 2] = [&[], &["-O2", "-fomit-frame-pointer"]];

/// One report stack: its title (pids left out) and its frames as
/// `function at file:line [inlined …]` (or the bare symbol).
type Section = (String, Vec<String>);

/// A fresh scratch directory for one run (the bug fixtures write files).
fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "stacks-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn run(mode: &[&str], args: &[&str], prog: &Path, prog_args: &[&str], dir: &Path) -> Output {
    Command::new(handles())
        .arg("run")
        .args(mode)
        .args(args)
        .arg("--")
        .arg(prog)
        .args(prog_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("HANDLES_STACKS")
        .output()
        .expect("run handles")
}

/// The module a frame line names: `(libc.so.6+0x2724a)` → `libc.so.6`.
fn module(frame: &str) -> &str {
    frame
        .rsplit_once(" (")
        .and_then(|(_, m)| m.rsplit_once('+'))
        .map_or("", |(m, _)| m)
}

/// `#3 0x00007f… in main at x.c:10 (prog+0x11bb)` → `main at x.c:10`.
/// A frame without source keeps its symbol without the offset (the
/// return address and the address after a syscall instruction may name
/// the same frame one byte apart).
fn frame_key(frame: &str) -> String {
    let body = frame.rsplit_once(" (").map_or(frame, |(b, _)| b);
    let Some((_, what)) = body.split_once(" in ") else {
        return format!("?{}", module(frame));
    };
    if what.contains(" at ") {
        what.to_string()
    } else {
        what.split('+').next().unwrap_or(what).to_string()
    }
}

fn is_libc(frame: &str) -> bool {
    let m = module(frame);
    m.starts_with("libc.so") || m.starts_with("ld-linux")
}

fn normalize_title(t: &str) -> String {
    let mut out = Vec::new();
    let mut words = t.split(' ').peekable();
    while let Some(w) = words.next() {
        out.push(w.to_string());
        if w == "process" && words.peek().is_some() {
            words.next();
            out.push("N".into());
        }
    }
    out.join(" ")
}

/// Every stack of the reports on stderr, sorted (leak groups follow the
/// table's order, which may differ between modes).
fn sections(stderr: &str) -> Vec<Section> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("handles: ") else {
            continue;
        };
        let trimmed = rest.trim_start();
        if trimmed.starts_with('#') && rest.starts_with("    ") {
            if let Some((_, frames)) = cur.as_mut() {
                frames.push(trimmed.to_string());
            }
            continue;
        }
        if let Some(s) = cur.take() {
            out.push(s);
        }
        if !rest.starts_with(' ') && rest.ends_with(':') {
            cur = Some((normalize_title(rest), Vec::new()));
        }
    }
    out.extend(cur);
    let mut out: Vec<Section> = out
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(t, frames)| {
            let keys = frames
                .iter()
                .skip_while(|f| is_libc(f))
                .map(|f| frame_key(f))
                .collect();
            (t, keys)
        })
        .collect();
    out.sort();
    out
}

fn show(s: &[Section]) -> String {
    s.iter()
        .map(|(t, f)| format!("{t}\n    {}", f.join("\n    ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `fixture` with `prog_args` in both modes and both builds and
/// checks that the stacks agree and are whole.
fn same_stacks(fixture: &str, args: &[&str], prog_args: &[&str]) {
    for build in BUILDS {
        let prog = fixture_with(fixture, build);
        let shim = run(&[], args, &prog, prog_args, &scratch());
        let remote = run(&["--no-shim"], args, &prog, prog_args, &scratch());
        let (a, b) = (sections(&stderr_of(&shim)), sections(&stderr_of(&remote)));
        let what = format!("{fixture} {prog_args:?} {build:?}");
        assert!(
            a.iter().any(|(t, _)| t != "backtrace:"),
            "{what}: no creation or close stack in\n{}",
            stderr_of(&shim)
        );
        assert_eq!(
            a,
            b,
            "{what}: default mode\n{}\n--no-shim\n{}",
            show(&a),
            show(&b)
        );
        // Whole: every stack reaches the outermost frame, the process's
        // entry point or a thread's (glibc's clone3, whose return address
        // is undefined).
        for (t, frames) in &a {
            assert!(
                frames.last().is_some_and(|f| f == "_start"
                    || f.starts_with("clone3")
                    || f.starts_with("__clone3")),
                "{what}: {t} is not whole: {frames:?}"
            );
        }
    }
}

#[test]
fn bug_stacks_are_whole_and_the_same_in_every_mode() {
    for mode in ["reuse", "thread", "fork", "exec"] {
        same_stacks("run_bugs", &[], &[mode, "."]);
    }
    for mode in ["double-close", "raw-double-close"] {
        same_stacks("run_bugs", &[], &[mode]);
    }
}

#[test]
fn error_path_fclose_and_dup_stacks_are_whole_and_the_same_in_every_mode() {
    for mode in ["error-path", "error-path-reuse"] {
        same_stacks("bug_error_path", &[], &[mode]);
    }
    for mode in ["close-then-fclose", "close-then-fclose-buffered"] {
        same_stacks("bug_fclose", &[], &[mode]);
    }
    for mode in ["dup", "dup2", "dupfd"] {
        same_stacks("bug_stale_dup", &[], &[mode]);
    }
}

#[test]
fn leak_stacks_are_whole_and_the_same_in_every_mode() {
    for mode in ["basic", "child", "thread", "scm", "kinds", "exec"] {
        same_stacks("leaks", &["--leak-check"], &[mode]);
    }
}

#[test]
fn stacks_through_dlopen_and_library_code_are_the_same_in_every_mode() {
    for build in BUILDS {
        let lib_flags: Vec<&str> = build.iter().copied().chain(["-shared", "-fPIC"]).collect();
        let lib = fixture_with("dlopen_plugin", &lib_flags);
        let lib = lib.to_string_lossy().into_owned();
        let prog = fixture_with("dlopen_leak", build);
        let args = ["--leak-check"];
        let shim = sections(&stderr_of(&run(&[], &args, &prog, &[&lib], &scratch())));
        let remote = sections(&stderr_of(&run(
            &["--no-shim"],
            &args,
            &prog,
            &[&lib],
            &scratch(),
        )));
        assert_eq!(shim.len(), 2, "{build:?}: two leaks\n{}", show(&shim));
        assert_eq!(
            shim,
            remote,
            "{build:?}\n{}\n--no-shim\n{}",
            show(&shim),
            show(&remote)
        );
        // The constructor's leak is seen through the loader's frames down
        // to main's dlopen call.
        assert!(
            shim.iter()
                .any(|(_, f)| f.iter().any(|x| x.starts_with("_dl_init"))
                    && f.iter().any(|x| x.contains("main at "))),
            "{build:?}: {}",
            show(&shim)
        );
    }
}

/// dlclose, then another library loaded at the same address with the
/// same code and other frame sizes: the shim must not use the rules it
/// cached for the first (its dlclose wrapper forgets them).
#[test]
fn stacks_after_dlclose_and_a_reload_at_the_same_address_are_right() {
    for build in BUILDS {
        let libs: Vec<String> = ["-DPAD=16", "-DPAD=96"]
            .iter()
            .map(|pad| {
                let flags: Vec<&str> = build
                    .iter()
                    .copied()
                    .chain(["-shared", "-fPIC", pad])
                    .collect();
                fixture_with("dlopen_plugin", &flags)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let prog = fixture_with("dlopen_leak", build);
        let prog_args = [libs[0].as_str(), libs[1].as_str()];
        let args = ["--leak-check"];
        let o = run(&[], &args, &prog, &prog_args, &scratch());
        let shim = sections(&stderr_of(&o));
        let remote = sections(&stderr_of(&run(
            &["--no-shim"],
            &args,
            &prog,
            &prog_args,
            &scratch(),
        )));
        assert_eq!(shim.len(), 4, "{build:?}: four leaks\n{}", stderr_of(&o));
        assert_eq!(
            shim,
            remote,
            "{build:?}\n{}\n--no-shim\n{}",
            show(&shim),
            show(&remote)
        );
        for (t, frames) in &shim {
            assert_eq!(
                frames.last().map(String::as_str),
                Some("_start"),
                "{build:?}: {t}: {frames:?}"
            );
        }
    }
}

/// The frames of the deep fixture's one leak group.
fn deep_frames(mode: &[&str], depth: Option<&str>, build: &[&str]) -> Vec<String> {
    let prog = fixture_with("deep_stack", build);
    let mut args = vec!["--leak-check"];
    if let Some(d) = depth {
        args.extend(["--stack-depth", d]);
    }
    let o = run(mode, &args, &prog, &["80"], &scratch());
    let s = sections(&stderr_of(&o));
    let leak: Vec<_> = s
        .into_iter()
        .filter(|(t, _)| t.contains("created by openat()"))
        .collect();
    assert_eq!(leak.len(), 1, "{}", stderr_of(&o));
    leak.into_iter().next().map(|(_, f)| f).unwrap_or_default()
}

#[test]
fn stack_depth_is_honoured_in_every_mode() {
    for build in BUILDS {
        for (depth, want) in [
            (None, 32),
            (Some("64"), 64),
            (Some("50"), 50),
            (Some("3"), 3),
        ] {
            let shim = deep_frames(&[], depth, build);
            let remote = deep_frames(&["--no-shim"], depth, build);
            assert_eq!(shim.len(), want, "{build:?} {depth:?}: {shim:?}");
            assert!(shim.iter().all(|f| f.starts_with("descend at ")));
            // The supervisor's depth counts libc's open64 frame, which
            // the leading-libc rule leaves out.
            assert_eq!(remote.len(), want - 1, "{build:?} {depth:?}: {remote:?}");
            assert_eq!(shim[..want - 1], remote[..], "{build:?} {depth:?}");
        }
    }
}

/// How many frames each stack of the first report on stderr has, by
/// title: `backtrace:` first.
fn frame_counts(stderr: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("handles: ") else {
            continue;
        };
        if rest.starts_with("    #") {
            if let Some(last) = out.last_mut() {
                last.1 += 1;
            }
        } else if !rest.starts_with(' ') && rest.ends_with(':') {
            out.push((normalize_title(rest), 0));
        }
    }
    out
}

#[test]
fn stack_depth_bounds_the_offending_stack_too_in_every_mode() {
    let prog = fixture_with("run_bugs", BUILDS[1]);
    for mode in [&[][..], &["--no-shim"], &["--no-ptrace"]] {
        for (args, bug) in [
            (&["reuse", "."][..], "use"),
            (&["double-close"], "held close"),
        ] {
            let o = run(mode, &["--stack-depth", "2"], &prog, args, &scratch());
            let counts = frame_counts(&stderr_of(&o));
            assert!(!counts.is_empty(), "{mode:?} {bug}: {}", stderr_of(&o));
            // Every stack is cut at 2 frames, none is left empty (the
            // shim's own frames at a stop in the shim do not count).
            for (t, n) in &counts {
                assert_eq!(*n, 2, "{mode:?} {bug}: {t}\n{}", stderr_of(&o));
            }
        }
    }
}

#[test]
fn stack_depth_above_the_table_is_a_usage_error() {
    let o = Command::new(handles())
        .args(["run", "--stack-depth", "65", "--", "true"])
        .output()
        .expect("run handles");
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    let err = stderr_of(&o);
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains("--stack-depth") && first.contains("0..=64"),
        "{err}"
    );
    let o = Command::new(handles())
        .args(["run", "--stack-depth", "64", "--", "true"])
        .output()
        .expect("run handles");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
}
