//! Python frames in reports (issue #15 item 2): every CPython 3.8 to
//! 3.13 found on this machine (pyenv builds, Debian's python3), with the
//! shim (default) and without it (`--no-shim`: the supervisor alone).
//! A version that is not installed is skipped with a line on stderr.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{handles, repo_root, spawn_ready, stderr_of};

/// The interpreters to try: (label, path).
fn interpreters() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    for minor in 8..=13 {
        let dir = root.join("versions");
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|v| v.starts_with(&format!("3.{minor}.")))
                .max()
        });
        match found {
            Some(v) => out.push((format!("pyenv {v}"), dir.join(&v).join("bin/python3"))),
            None => eprintln!(
                "skipping CPython 3.{minor}: no pyenv build under {}",
                dir.display()
            ),
        }
    }
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        out.push(("/usr/bin/python3".into(), system));
    } else {
        eprintln!("skipping /usr/bin/python3: not installed");
    }
    out.retain(|(label, p)| {
        let ok = p.exists();
        if !ok {
            eprintln!("skipping {label}: {} missing", p.display());
        }
        ok
    });
    out
}

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/python").join(name)
}

const MODES: [&[&str]; 2] = [&[], &["--no-shim"]];

/// The lines of `report` from the line containing `start` up to (not
/// including) the next line containing any of `ends`.
fn section<'a>(report: &'a str, start: &str, ends: &[&str]) -> Vec<&'a str> {
    report
        .lines()
        .skip_while(|l| !l.contains(start))
        .skip(1)
        .take_while(|l| !ends.iter().any(|e| l.contains(e)))
        .collect()
}

fn has_python_frame(lines: &[&str], file_line: &str, function: &str) -> bool {
    let want = format!("{file_line} in {function} (Python)");
    lines.iter().any(|l| l.contains(&want))
}

#[test]
fn use_after_close_names_the_python_lines_of_use_close_and_open() {
    let uac = script("use_after_close.py");
    let file = uac.display().to_string();
    let mut ran = 0;
    for (label, py) in interpreters() {
        // And the shim alone, which writes its own reports.
        for mode in MODES.iter().copied().chain([&["--no-ptrace"][..]]) {
            let out = Command::new(handles())
                .arg("run")
                .args(mode)
                .arg("--")
                .arg(&py)
                .arg(&uac)
                .output()
                .expect("run handles");
            let err = stderr_of(&out);
            let what = format!("{label} {mode:?}:\n{err}");
            // SIGTRAP: 133 through the supervisor; --no-ptrace execs the
            // program, which dies of the signal itself.
            use std::os::unix::process::ExitStatusExt;
            let trapped = out.status.code() == Some(133) || out.status.signal() == Some(5);
            assert!(trapped, "{:?} {what}", out.status);
            // The supervisor says "closed by close() in process", the
            // shim "closed in process".
            let ends = ["handles: closed", "handles: originally", "ERROR SUMMARY"];
            let offending = section(&err, "handles: backtrace:", &ends);
            let closed = section(&err, "handles: closed", &ends);
            let opened = section(&err, "handles: originally opened", &ends);
            // 3.8 names the script as given (absolute here), later
            // versions as an absolute path too.
            assert!(
                has_python_frame(&offending, &format!("{file}:16"), "use_it"),
                "{what}"
            );
            assert!(
                has_python_frame(&offending, &format!("{file}:26"), "main"),
                "{what}"
            );
            assert!(
                has_python_frame(&offending, &format!("{file}:30"), "<module>"),
                "{what}"
            );
            assert!(
                has_python_frame(&closed, &format!("{file}:12"), "close_it"),
                "{what}"
            );
            assert!(
                has_python_frame(&closed, &format!("{file}:25"), "main"),
                "{what}"
            );
            assert!(
                has_python_frame(&opened, &format!("{file}:8"), "open_it"),
                "{what}"
            );
            assert!(
                has_python_frame(&opened, &format!("{file}:24"), "main"),
                "{what}"
            );
            // In place of the evaluation loop's frames, not beside them
            // (under --no-ptrace `handles symbolize` merges them so).
            assert!(!err.contains("in _PyEval_EvalFrameDefault"), "{what}");
            // The Python frames follow the C call that made the syscall.
            let first_py = offending.iter().position(|l| l.contains("(Python)"));
            let os_read = offending.iter().position(|l| l.contains("os_read"));
            if let (Some(p), Some(r)) = (first_py, os_read) {
                assert!(r < p, "{what}");
            }
            ran += 1;
        }
    }
    if ran == 0 {
        eprintln!("skipping: no CPython 3.8-3.13 on this machine");
    }
}

#[test]
fn leak_check_names_the_python_line_that_made_each_leaked_handle() {
    let leaks = script("leaks.py");
    let file = leaks.display().to_string();
    for (label, py) in interpreters() {
        for mode in MODES {
            let out = Command::new(handles())
                .args(["run", "--leak-check"])
                .args(mode)
                .arg("--")
                .arg(&py)
                .arg(&leaks)
                .output()
                .expect("run handles");
            let err = stderr_of(&out);
            let what = format!("{label} {mode:?}:\n{err}");
            let ends = ["created by", "LEAK SUMMARY"];
            let socket = section(&err, "created by socket()", &ends);
            let opened = section(&err, "created by openat()", &ends);
            assert!(
                has_python_frame(&socket, &format!("{file}:10"), "make_socket"),
                "{what}"
            );
            assert!(
                has_python_frame(&socket, &format!("{file}:17"), "<module>"),
                "{what}"
            );
            assert!(
                has_python_frame(&opened, &format!("{file}:14"), "open_log"),
                "{what}"
            );
            // The interpreter freed these code objects before the check:
            // they are named from what was recorded, not shown as freed.
            assert!(!err.contains("<freed code object>"), "{what}");
        }
    }
}

#[test]
fn json_report_and_sarif_point_at_the_python_line() {
    let Some((label, py)) = interpreters().into_iter().next_back() else {
        eprintln!("skipping: no CPython 3.8-3.13 on this machine");
        return;
    };
    let uac = script("use_after_close.py");
    let file = uac.display().to_string();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-report");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for mode in MODES {
        let report = dir.join("report.json");
        let sarif = dir.join("report.sarif");
        let out = Command::new(handles())
            .arg("run")
            .args(mode)
            .arg("--report")
            .arg(&report)
            .arg("--sarif")
            .arg(&sarif)
            .arg("--")
            .arg(&py)
            .arg(&uac)
            .output()
            .expect("run handles");
        let what = format!("{label} {mode:?}:\n{}", stderr_of(&out));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("json");
        common::assert_valid(
            "json_report_and_sarif_point_at_the_python_line",
            &r,
            &common::docs_schema("report.schema.json"),
        );
        let stacks = &r["exceptions"][0]["stacks"];
        let frame_at = |stack: usize, function: &str| {
            stacks[stack]["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["kind"] == "python" && f["function"] == function)
                .cloned()
        };
        let use_frame =
            frame_at(0, "use_it").unwrap_or_else(|| panic!("no use_it frame: {r}\n{what}"));
        assert_eq!(use_frame["file"], file.as_str(), "{what}");
        assert_eq!(use_frame["line"], 16, "{what}");
        let close_frame =
            frame_at(1, "close_it").unwrap_or_else(|| panic!("no close_it: {r}\n{what}"));
        assert_eq!(close_frame["line"], 12, "{what}");
        let open_frame =
            frame_at(2, "open_it").unwrap_or_else(|| panic!("no open_it: {r}\n{what}"));
        assert_eq!(open_frame["line"], 8, "{what}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sarif).expect("sarif written")).expect("json");
        let loc = &s["runs"][0]["results"][0]["locations"][0]["physicalLocation"];
        assert_eq!(
            loc["artifactLocation"]["uri"],
            format!("file://{file}"),
            "{s}\n{what}"
        );
        assert_eq!(loc["region"]["startLine"], 16, "{s}\n{what}");
    }
}

#[test]
fn handles_pid_stacks_show_the_python_lines_that_made_each_handle() {
    let Some((label, py)) = interpreters().into_iter().next_back() else {
        eprintln!("skipping: no CPython 3.8-3.13 on this machine");
        return;
    };
    let holds = script("holds.py");
    let file = holds.display().to_string();
    for mode in MODES {
        let mut cmd = Command::new(handles());
        cmd.arg("run").args(mode).arg("--").arg(&py).arg(&holds);
        let running = spawn_ready(cmd);
        let pid = running.value("pid").expect("the script prints its pid");
        let out = Command::new(handles())
            .args([pid.as_str(), "--stacks"])
            .output()
            .expect("run handles");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let what = format!("{label} {mode:?}:\n{text}{}", stderr_of(&out));
        let ends = ["created by"];
        let file_block = section(&text, "created by openat()", &ends);
        let sock_block = section(&text, "created by socket()", &ends);
        assert!(
            has_python_frame(&file_block, &format!("{file}:9"), "open_log"),
            "{what}"
        );
        assert!(
            has_python_frame(&file_block, &format!("{file}:16"), "<module>"),
            "{what}"
        );
        assert!(
            has_python_frame(&sock_block, &format!("{file}:13"), "make_sock"),
            "{what}"
        );
        let out = Command::new(handles())
            .args([pid.as_str(), "--stacks", "--json"])
            .output()
            .expect("run handles");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        common::assert_valid(
            "handles_pid_stacks_show_the_python_lines_that_made_each_handle",
            &v,
            &common::docs_schema("table.schema.json"),
        );
        let found = v["processes"][0]["handles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["created"]["frames"].as_array())
            .flatten()
            .any(|f| f["kind"] == "python" && f["function"] == "open_log" && f["line"] == 9);
        assert!(found, "{v}\n{what}");
        drop(running);
    }
}

/// CPython 3.8 names a script given by a relative path as given
/// (`sub/x.py`), later versions by its absolute path: reports show the
/// absolute path in every version and every mode (the text, the JSON
/// report, the leak check).
#[test]
fn a_script_given_by_a_relative_path_is_named_by_its_absolute_path() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-relative");
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).expect("scratch dir");
    for name in ["use_after_close.py", "leaks.py"] {
        std::fs::copy(script(name), sub.join(name)).expect("copy the script");
    }
    let uac = sub.join("use_after_close.py").display().to_string();
    let leaks = sub.join("leaks.py").display().to_string();
    let report = dir.join("report.json");
    for (label, py) in interpreters() {
        for mode in MODES.iter().copied().chain([&["--no-ptrace"][..]]) {
            let supervised = !mode.contains(&"--no-ptrace");
            let mut cmd = Command::new(handles());
            cmd.arg("run").args(mode);
            if supervised {
                cmd.arg("--report").arg(&report);
            }
            let out = cmd
                .arg("--")
                .arg(&py)
                .arg("sub/use_after_close.py")
                .current_dir(&dir)
                .output()
                .expect("run handles");
            let err = stderr_of(&out);
            let what = format!("{label} {mode:?}:\n{err}");
            let ends = ["handles: closed", "handles: originally", "ERROR SUMMARY"];
            let offending = section(&err, "handles: backtrace:", &ends);
            let closed = section(&err, "handles: closed", &ends);
            let opened = section(&err, "handles: originally opened", &ends);
            assert!(
                has_python_frame(&offending, &format!("{uac}:16"), "use_it"),
                "{what}"
            );
            assert!(
                has_python_frame(&offending, &format!("{uac}:30"), "<module>"),
                "{what}"
            );
            assert!(
                has_python_frame(&closed, &format!("{uac}:12"), "close_it"),
                "{what}"
            );
            assert!(
                has_python_frame(&opened, &format!("{uac}:8"), "open_it"),
                "{what}"
            );
            assert!(!err.contains(" sub/use_after_close.py:"), "{what}");
            if supervised {
                let r: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&report).expect("report written"))
                        .expect("json");
                // The handle's own stacks; an earlier handle at the same
                // number (an import's file, when the number was reused) is
                // named in a section of its own.
                let files: Vec<&str> = r["exceptions"][0]["stacks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| {
                        !s["title"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("the number was reused"))
                    })
                    .flat_map(|s| s["frames"].as_array().into_iter().flatten())
                    .filter(|f| f["kind"] == "python")
                    .filter_map(|f| f["file"].as_str())
                    .collect();
                assert!(files.len() >= 6, "{r}\n{what}");
                assert!(files.iter().all(|f| *f == uac), "{files:?}\n{what}");
                let _ = std::fs::remove_file(&report);
                // The leak check runs after the interpreter freed its code
                // objects: the names come from what the shim recorded.
                let out = Command::new(handles())
                    .args(["run", "--leak-check"])
                    .args(mode)
                    .arg("--")
                    .arg(&py)
                    .arg("sub/leaks.py")
                    .current_dir(&dir)
                    .output()
                    .expect("run handles");
                let err = stderr_of(&out);
                let what = format!("{label} {mode:?} leak check:\n{err}");
                let opened = section(&err, "created by openat()", &["created by", "LEAK SUMMARY"]);
                assert!(
                    has_python_frame(&opened, &format!("{leaks}:14"), "open_log"),
                    "{what}"
                );
                assert!(!err.contains(" sub/leaks.py:"), "{what}");
            }
        }
    }
}

/// A handle opened and closed before a fork and used in the child: the
/// child's report takes the open and the close from the records its
/// table inherited at the fork, Python frames included.
#[test]
fn a_forked_child_reports_the_python_lines_its_parent_recorded() {
    let prog = script("fork_stale.py");
    let file = prog.display().to_string();
    let src = std::fs::read_to_string(&prog).expect("read the script");
    let line_of = |mark: &str| {
        src.lines()
            .position(|l| l.contains(mark))
            .map(|i| i + 1)
            .expect("marker")
    };
    let (open, close, usage) = (line_of("# OPEN"), line_of("# CLOSE"), line_of("# USE"));
    let mut ran = 0;
    for (label, py) in interpreters() {
        for mode in MODES.iter().copied().chain([&["--no-ptrace"][..]]) {
            let out = Command::new(handles())
                .arg("run")
                .args(mode)
                .args(["--on-exception=continue", "--"])
                .arg(&py)
                .arg(&prog)
                .output()
                .expect("run handles");
            let err = stderr_of(&out);
            let what = format!("{label} {mode:?}:\n{err}");
            assert_eq!(out.status.code(), Some(0), "{what}");
            let ends = [
                "handles: closed",
                "handles: originally",
                "ERROR SUMMARY",
                "handles: the number",
            ];
            let offending = section(&err, "handles: backtrace:", &ends);
            let closed = section(&err, "handles: closed", &ends);
            let opened = section(&err, "handles: originally opened", &ends);
            assert!(
                has_python_frame(&offending, &format!("{file}:{usage}"), "child"),
                "{what}"
            );
            assert!(
                has_python_frame(&closed, &format!("{file}:{close}"), "close_it"),
                "{what}"
            );
            assert!(
                has_python_frame(&opened, &format!("{file}:{open}"), "open_it"),
                "{what}"
            );
            ran += 1;
        }
    }
    if ran == 0 {
        eprintln!("skipping: no CPython 3.8-3.13 on this machine");
    }
}
