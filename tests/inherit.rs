//! `handles run --inherit-check` (#20): handles that cross an exec
//! implicitly are reported with their creation lines and the program they
//! crossed into; what shells, make, xargs and CPython's subprocess pass on
//! purpose is not. Every mode with a supervisor gives the same verdict;
//! `--no-ptrace` refuses the option (no layer there sees the exec whole).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The modes that can decide (docs/inherit.md).
const MODES: [&str; 3] = ["", "--strict", "--no-shim"];

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("inherit")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(mode: &str, extra: &[&str], dir: &Path, program: &[&str]) -> Output {
    Command::new(handles())
        .arg("run")
        .args(mode.split_whitespace())
        .arg("--inherit-check")
        .args(extra)
        .arg("--")
        .args(program)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run handles")
}

/// The 1-based line of the fixture's source that contains `text`.
fn line_of(fixture: &str, text: &str) -> usize {
    let src = std::fs::read_to_string(repo_root().join("tests/fixtures").join(fixture))
        .expect("fixture source");
    src.lines()
        .position(|l| l.contains(text))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{text:?} not in {fixture}"))
}

fn true_path() -> String {
    for d in ["/usr/bin", "/bin"] {
        let p = Path::new(d).join("true");
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("no true(1)");
}

#[test]
fn a_listening_socket_and_a_log_file_cross_into_the_child_and_are_reported_in_every_mode() {
    let prog = fixture("inherit_leak");
    let prog = prog.to_str().expect("utf-8 path");
    let truth = true_path();
    let socket_line = line_of("inherit_leak.c", "socket(AF_INET");
    let log_line = line_of("inherit_leak.c", "O_APPEND, 0600");
    for mode in MODES {
        let dir = scratch(&format!("leak{}", mode.replace('-', "")));
        let log = dir.join("server.log");
        let report = dir.join("r.json");
        let sarif = dir.join("r.sarif");
        let out = run(
            mode,
            &[
                "--error-exitcode=23",
                "--report",
                report.to_str().unwrap(),
                "--sarif",
                sarif.to_str().unwrap(),
            ],
            &dir,
            &[prog, log.to_str().unwrap(), &truth],
        );
        let err = stderr_of(&out);
        let what = format!("mode {mode:?}:\n{err}");
        assert_eq!(out.status.code(), Some(23), "{what}");
        assert!(
            err.contains(&format!("execs {truth}: 2 handles cross implicitly")),
            "{what}"
        );
        assert!(
            err.lines().any(|l| l.contains("in listen_socket at ")
                && l.contains(&format!("inherit_leak.c:{socket_line} "))),
            "socket's creation line: {what}"
        );
        assert!(
            err.lines().any(|l| l.contains("in open_log at ")
                && l.contains(&format!("inherit_leak.c:{log_line} "))),
            "log's creation line: {what}"
        );
        assert!(
            err.lines().any(|l| l.contains(" fd 3 socket ")
                && l.contains("LISTEN")
                && l.ends_with(&format!("crossed into {truth}"))),
            "{what}"
        );
        assert!(
            err.lines().any(|l| l.contains(" fd 4 file ")
                && l.contains("server.log")
                && l.ends_with(&format!("crossed into {truth}"))),
            "{what}"
        );
        // O_CLOEXEC (the config file, the pipe's read end) does not cross;
        // the pipe end dup2'ed onto 7 after the fork is passed on purpose.
        assert!(!err.contains("/etc/hostname"), "{what}");
        assert!(!err.contains(" fd 7 "), "{what}");
        assert!(
            err.contains("INHERIT SUMMARY: 2 handles crossed 1 exec implicitly"),
            "{what}"
        );

        validate_file(module_path!(), &report, &docs_schema("report.schema.json"))
            .unwrap_or_else(|e| panic!("report invalid: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
                .expect("report is JSON");
        let crossings = v["crossings"].as_array().expect("crossings array");
        assert_eq!(v["summary"]["implicit_crossings"], 2, "{v:#}");
        let mut fds: Vec<i64> = crossings
            .iter()
            .flat_map(|g| g["handles"].as_array().unwrap().iter())
            .map(|h| h["handle"]["fd"].as_i64().unwrap())
            .collect();
        fds.sort_unstable();
        assert_eq!(fds, [3, 4], "{v:#}");
        for g in crossings {
            assert_eq!(g["into"], truth.as_str(), "{g:#}");
            assert_eq!(g["from"], "inherit_leak", "{g:#}");
            let line = if g["handles"][0]["handle"]["type"] == "socket" {
                socket_line
            } else {
                log_line
            };
            assert!(
                g["stack"].as_array().unwrap().iter().any(|f| f["file"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("inherit_leak.c"))
                    && f["line"] == line),
                "{g:#}"
            );
        }
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&sarif).expect("sarif written"))
                .expect("sarif is JSON");
        let results = s["runs"][0]["results"].as_array().expect("results");
        let lines: Vec<i64> = results
            .iter()
            .filter(|r| r["ruleId"] == "implicit-crossing")
            .map(|r| {
                r["locations"][0]["physicalLocation"]["region"]["startLine"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(lines.len(), 2, "{s:#}");
        assert!(lines.contains(&(socket_line as i64)), "{s:#}");
        assert!(lines.contains(&(log_line as i64)), "{s:#}");
    }
}

#[test]
fn the_status_is_the_programs_without_error_exitcode_and_a_rule_suppresses() {
    let prog = fixture("inherit_leak");
    let prog = prog.to_str().expect("utf-8 path");
    let truth = true_path();
    let dir = scratch("status");
    let log = dir.join("server.log");
    let out = run("", &[], &dir, &[prog, log.to_str().unwrap(), &truth]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("2 handles cross implicitly"));

    let rules = dir.join("rules.supp");
    std::fs::write(&rules, "[listener]\nreport = inherit\ntype = socket\n").unwrap();
    for mode in MODES {
        let out = run(
            mode,
            &[
                "--error-exitcode=23",
                "--suppressions",
                rules.to_str().unwrap(),
            ],
            &dir,
            &[prog, log.to_str().unwrap(), &truth],
        );
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(23), "{mode:?}: {err}");
        assert!(
            err.contains("INHERIT SUMMARY: 1 handle crossed 1 exec implicitly (1 suppressed)"),
            "{mode:?}: {err}"
        );
        assert!(!err.contains(" socket koid"), "{mode:?}: {err}");
    }
}

#[test]
fn gen_suppressions_rules_silence_exactly_the_crossings_they_were_made_for() {
    let prog = fixture("inherit_leak");
    let prog = prog.to_str().expect("utf-8 path");
    let truth = true_path();
    let dir = scratch("gen");
    let log = dir.join("server.log");
    let out = run(
        "",
        &["--gen-suppressions"],
        &dir,
        &[prog, log.to_str().unwrap(), &truth],
    );
    let rules: String = stderr_of(&out)
        .lines()
        .filter(|l| !l.starts_with("handles: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(rules.matches("report = inherit").count(), 2, "{rules}");
    let file = dir.join("gen.supp");
    std::fs::write(&file, &rules).unwrap();
    for mode in MODES {
        let out = run(
            mode,
            &[
                "--error-exitcode=23",
                "--suppressions",
                file.to_str().unwrap(),
            ],
            &dir,
            &[prog, log.to_str().unwrap(), &truth],
        );
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(0), "{mode:?}: {err}\n{rules}");
        assert!(
            err.contains("INHERIT SUMMARY: 0 handles crossed 0 execs implicitly (2 suppressed)"),
            "{mode:?}: {err}"
        );
    }
}

#[test]
fn the_shim_alone_cannot_decide_and_says_so() {
    let out = run_handles(["run", "--no-ptrace", "--inherit-check", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("--inherit-check"),
        "{}",
        stderr_of(&out)
    );
}

/// Runs `program` in every mode and asserts that nothing crossed
/// implicitly and the program succeeded.
fn no_report(what: &str, dir: &Path, program: &[&str]) {
    for mode in MODES {
        let out = run(mode, &["--error-exitcode=23"], dir, program);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(0), "{what} {mode:?}:\n{err}");
        assert!(
            err.contains("INHERIT SUMMARY: 0 handles crossed 0 execs implicitly"),
            "{what} {mode:?}:\n{err}"
        );
    }
}

#[test]
fn shell_redirections_and_pipelines_pass_handles_on_purpose() {
    let dir = scratch("shells");
    let script = "exec 3>out3; exec 4<&0; echo a | cat | wc -l >&3; \
                  ls -l /proc/self/fd 5</etc/hostname >/dev/null; \
                  (cat /etc/hostname 6>&3 | tr a-z A-Z >&3); exec 3>&-; cat out3 >/dev/null";
    no_report("bash", &dir, &["bash", "-c", script]);
    // A script run by its path (its process is named after the script,
    // not the shell) that execs its last command with a redirection open.
    let by_path = dir.join("build.sh");
    std::fs::write(
        &by_path,
        "#!/bin/bash\nexec 3>out3\necho built >&3\nexec ls -l /proc/self/fd >/dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &by_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    no_report("a bash script by path", &dir, &[by_path.to_str().unwrap()]);
    if Command::new("dash").arg("-c").arg("true").output().is_ok() {
        no_report("dash", &dir, &["dash", "-c", script]);
    } else {
        skip(
            "shell_redirections_and_pipelines_pass_handles_on_purpose",
            "no dash",
        );
    }
}

#[test]
fn make_and_its_jobserver_pass_handles_on_purpose() {
    if Command::new("make").arg("--version").output().is_err() {
        skip("make_and_its_jobserver_pass_handles_on_purpose", "no make");
        return;
    }
    let dir = scratch("make");
    std::fs::write(
        dir.join("Makefile"),
        "all: sub\n\t@echo top > top.out\n\t@cat top.out | wc -c > /dev/null\n\
         sub:\n\t@$(MAKE) -s -f Sub.mk\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("Sub.mk"),
        "all: a b\na:\n\t@ls /proc/self/fd > a.out\nb:\n\t@echo b > b.out\n",
    )
    .unwrap();
    // -j2: a jobserver pipe, made inheritable for the recursive make.
    no_report("make -j2", &dir, &["make", "-s", "-j2"]);
    no_report("make", &dir, &["make", "-s"]);
}

#[test]
fn xargs_passes_nothing_of_its_own() {
    let dir = scratch("xargs");
    no_report(
        "xargs",
        &dir,
        &[
            "sh",
            "-c",
            "printf 'a\\nb\\nc\\n' | xargs -n1 -P2 echo > xargs.out",
        ],
    );
}

#[test]
fn cpython_subprocess_pass_fds_and_shell_pipelines_pass_on_purpose() {
    let dir = scratch("python");
    let script = dir.join("spawn.py");
    std::fs::write(
        &script,
        r#"import os, subprocess
r, w = os.pipe()
subprocess.run(["sh", "-c", f"echo hi > /proc/self/fd/{w}"], pass_fds=[w], check=True)
os.close(w)
assert os.read(r, 10) == b"hi\n"
os.set_inheritable(r, True)
subprocess.run(["true"], close_fds=False, check=True)
subprocess.run("ls | wc -l > /dev/null", shell=True, check=True)
with open("out.txt", "w") as f:
    subprocess.run(["cat", "/etc/hostname"], stdout=f, check=True)
"#,
    )
    .unwrap();
    no_report("python3", &dir, &["python3", script.to_str().unwrap()]);
}

#[test]
fn a_handle_the_execing_image_made_itself_is_reported_at_its_line() {
    let prog = fixture("inherit_direct");
    let prog = prog.to_str().expect("utf-8 path");
    let truth = true_path();
    let line = line_of("inherit_direct.c", "/* crosses */");
    let dir = scratch("direct");
    for mode in MODES {
        let out = run(mode, &["--error-exitcode=23"], &dir, &[prog, &truth]);
        let err = stderr_of(&out);
        let what = format!("mode {mode:?}:\n{err}");
        assert_eq!(out.status.code(), Some(23), "{what}");
        assert!(
            err.contains(&format!(
                "(inherit_direct) execs {truth}: 1 handle crosses implicitly"
            )),
            "{what}"
        );
        assert!(
            err.lines()
                .any(|l| l.contains("in main at ")
                    && l.contains(&format!("inherit_direct.c:{line} "))),
            "{what}"
        );
        assert!(
            err.lines().any(|l| l.contains(" fd 3 file ")
                && l.contains("/etc/hostname")
                && l.ends_with(&format!("crossed into {truth}"))),
            "{what}"
        );
    }
}
