//! Per-test leak attribution (#20): under `handles run --leak-check`,
//! `python3 -m pytest` reports the handles each test created and left
//! open under the test's node id, at its Python line, with no install
//! step (the plugin comes through PYTEST_PLUGINS); a session-scoped
//! fixture's handles are not blamed on the test that first used it;
//! pytest's exit status is unchanged; JSON and SARIF carry the test id; a
//! C runner marks its boundaries through `handles_checkpoint` too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Per-test attribution needs the supervisor: `--no-ptrace` has no leak
/// checks at all.
const MODES: [&str; 3] = ["", "--strict", "--no-shim"];

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("pertest")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Copies the pytest files into `dir` (pytest writes next to them).
fn with_tests(dir: &Path, files: &[&str]) {
    for f in files {
        std::fs::copy(
            repo_root().join("tests/fixtures/pytest").join(f),
            dir.join(f),
        )
        .expect("copy test file");
    }
}

fn have_pytest(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pytest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(test, "python3 cannot import pytest");
    }
    ok
}

fn pytest(dir: &Path, handles_args: &[&str], files: &[&str]) -> Output {
    let mut cmd = Command::new(handles());
    cmd.arg("run").args(handles_args).arg("--");
    cmd.args(["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(files)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTEST_ADDOPTS")
        .env_remove("PYTEST_PLUGINS");
    cmd.output().expect("run handles")
}

fn native_pytest(dir: &Path, files: &[&str]) -> Output {
    Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(files)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTEST_ADDOPTS")
        .env_remove("PYTEST_PLUGINS")
        .output()
        .expect("run pytest")
}

fn line_of(path: &Path, text: &str) -> usize {
    std::fs::read_to_string(path)
        .expect("test source")
        .lines()
        .position(|l| l.contains(text))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{text:?} not in {}", path.display()))
}

/// The lines of the report of test `id` (up to the next report).
fn test_section<'a>(err: &'a str, id: &str) -> Vec<&'a str> {
    let head = format!("==== leak check: test {id} (");
    err.lines()
        .skip_while(|l| !l.contains(&head))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.contains("===="))
        .map(|(_, l)| l)
        .collect()
}

#[test]
fn only_the_leaky_tests_are_named_at_their_python_lines_in_every_mode() {
    if !have_pytest("only_the_leaky_tests_are_named_at_their_python_lines_in_every_mode") {
        return;
    }
    for mode in MODES {
        let dir = scratch(&format!("sample{}", mode.replace('-', "")));
        with_tests(&dir, &["test_sample.py"]);
        let src = dir.join("test_sample.py");
        let file = src.display().to_string();
        let file_line = line_of(&src, "fd = os.open(tmp_path / \"leak.txt\"");
        let socket_line = line_of(&src, "s = socket.socket()");
        let mut args = vec!["--leak-check"];
        args.extend(mode.split_whitespace());
        let out = pytest(&dir, &args, &["test_sample.py"]);
        let err = stderr_of(&out);
        let what = format!("mode {mode:?}:\n{}\n{err}", stdout_of(&out));
        assert_eq!(out.status.code(), Some(0), "{what}");
        assert!(stdout_of(&out).contains("4 passed"), "{what}");

        let leaky_file = test_section(&err, "test_sample.py::test_leaky_file");
        assert!(
            leaky_file
                .iter()
                .any(|l| l.contains(&format!("{file}:{file_line} in test_leaky_file (Python)"))),
            "{what}"
        );
        assert!(
            leaky_file
                .iter()
                .any(|l| l.contains(" file ") && l.ends_with("leak.txt")),
            "{what}"
        );
        let leaky_socket = test_section(&err, "test_sample.py::test_leaky_socket");
        assert!(
            leaky_socket.iter().any(|l| l.contains(&format!(
                "{file}:{socket_line} in test_leaky_socket (Python)"
            ))),
            "{what}"
        );
        assert!(
            leaky_socket.iter().any(|l| l.contains(" socket koid ")),
            "{what}"
        );
        // The clean tests are not named; the session-scoped fixture's log
        // (opened during test_clean's setup, closed at the session's end)
        // is nobody's leak, nor is the function fixture's closed file.
        assert!(!err.contains("test test_sample.py::test_clean"), "{what}");
        assert_eq!(err.matches("==== leak check: test ").count(), 2, "{what}");
        assert!(!err.contains("shared.log"), "{what}");
        assert!(!err.contains("scratch.txt"), "{what}");
    }
}

#[test]
fn pytests_status_is_unchanged_and_error_exitcode_counts_test_leaks() {
    if !have_pytest("pytests_status_is_unchanged_and_error_exitcode_counts_test_leaks") {
        return;
    }
    let dir = scratch("status");
    with_tests(&dir, &["test_failing.py", "test_sample.py"]);
    let native = native_pytest(&dir, &["test_failing.py"]);
    assert_eq!(native.status.code(), Some(1), "{}", stdout_of(&native));
    for mode in MODES {
        let mut args = vec!["--leak-check"];
        args.extend(mode.split_whitespace());
        let out = pytest(&dir, &args, &["test_failing.py"]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), native.status.code(), "{mode:?}: {err}");
        assert!(stdout_of(&out).contains("1 failed, 1 passed"), "{mode:?}");
        assert!(
            err.contains("==== leak check: test test_failing.py::test_fails_and_leaks ("),
            "{mode:?}: {err}"
        );
        assert!(
            !err.contains("test test_failing.py::test_passes"),
            "{mode:?}: {err}"
        );
    }
    // All tests pass, one leaks: --error-exitcode says so.
    let out = pytest(
        &dir,
        &["--leak-check", "--error-exitcode=23"],
        &["test_sample.py"],
    );
    assert_eq!(out.status.code(), Some(23), "{}", stderr_of(&out));
}

#[test]
fn json_and_sarif_carry_the_test_id() {
    if !have_pytest("json_and_sarif_carry_the_test_id") {
        return;
    }
    let dir = scratch("json");
    with_tests(&dir, &["test_sample.py"]);
    let src = dir.join("test_sample.py");
    let file_line = line_of(&src, "fd = os.open(tmp_path / \"leak.txt\"") as i64;
    let report = dir.join("r.json");
    let sarif = dir.join("r.sarif");
    let out = pytest(
        &dir,
        &[
            "--leak-check",
            "--report",
            report.to_str().unwrap(),
            "--sarif",
            sarif.to_str().unwrap(),
        ],
        &["test_sample.py"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    validate_file(module_path!(), &report, &docs_schema("report.schema.json"))
        .unwrap_or_else(|e| panic!("report invalid: {e}"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let tests: Vec<&str> = v["test_leaks"]
        .as_array()
        .expect("test_leaks")
        .iter()
        .map(|t| t["test"].as_str().unwrap())
        .collect();
    assert_eq!(
        tests,
        [
            "test_sample.py::test_leaky_file",
            "test_sample.py::test_leaky_socket"
        ],
        "{v:#}"
    );
    assert_eq!(v["summary"]["test_leaked_handles"], 2, "{v:#}");
    let first = &v["test_leaks"][0];
    assert!(first["pid"].as_i64().is_some(), "{first:#}");
    assert!(
        first["groups"][0]["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "python"
                && f["function"] == "test_leaky_file"
                && f["line"] == file_line),
        "{first:#}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif).expect("sarif")).expect("JSON");
    let results: Vec<&serde_json::Value> = s["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ruleId"] == "test-leak")
        .collect();
    assert_eq!(results.len(), 2, "{s:#}");
    let file_result = results
        .iter()
        .find(|r| r["properties"]["test"] == "test_sample.py::test_leaky_file")
        .expect("the file leak's result");
    assert_eq!(
        file_result["locations"][0]["physicalLocation"]["region"]["startLine"], file_line,
        "{file_result:#}"
    );
}

#[test]
fn a_c_runner_marks_its_tests_through_handles_checkpoint_in_every_mode() {
    let prog = fixture("checkpoint_runner");
    let leak_line = line_of(
        &repo_root().join("tests/fixtures/checkpoint_runner.c"),
        "never closed",
    );
    for mode in MODES {
        let out = Command::new(handles())
            .arg("run")
            .args(mode.split_whitespace())
            .args(["--leak-check", "--error-exitcode=23", "--"])
            .arg(&prog)
            .output()
            .expect("run handles");
        let err = stderr_of(&out);
        let what = format!("mode {mode:?}:\n{err}");
        assert_eq!(out.status.code(), Some(23), "{what}");
        assert!(stdout_of(&out).contains("checkpoint answered 0"), "{what}");
        let leaky = test_section(&err, "suite::leaky");
        assert!(
            leaky.iter().any(|l| l.contains("in test_leaky at ")
                && l.contains(&format!("checkpoint_runner.c:{leak_line} "))),
            "{what}"
        );
        assert!(!err.contains("test suite::clean"), "{what}");
    }
    // Without leak checks, or without a supervisor, nothing answers: the
    // call fails, the runner goes on, nothing is reported.
    for mode in MODES {
        let out = Command::new(handles())
            .arg("run")
            .args(mode.split_whitespace())
            .args(["--error-exitcode=23", "--"])
            .arg(&prog)
            .output()
            .expect("run handles");
        assert_eq!(out.status.code(), Some(0), "{mode:?}: {}", stderr_of(&out));
        assert!(
            stdout_of(&out).contains("checkpoint answered -1"),
            "{mode:?}"
        );
        assert!(!stderr_of(&out).contains("handles: ===="), "{mode:?}");
    }
    let out = Command::new(&prog).output().expect("run natively");
    assert!(
        stdout_of(&out).contains("checkpoint answered -1"),
        "{}",
        stdout_of(&out)
    );
}
