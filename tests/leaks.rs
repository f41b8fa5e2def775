//! `handles run --leak-check`: leaks reported per process with their
//! creation stacks, suppressions, exit codes, JSON and SARIF reports.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{fixture, fixture_with, handles, stderr_of, stdout_of};

fn run(args: &[&str], prog: &Path, mode: &str) -> Output {
    Command::new(handles())
        .arg("run")
        .args(args)
        .arg("--")
        .arg(prog)
        .arg(mode)
        .stdin(Stdio::null())
        .output()
        .expect("run handles")
}

/// The source line carrying `LEAK:<name>` in the fixture.
fn line_of(name: &str) -> u32 {
    let src = std::fs::read_to_string(common::repo_root().join("tests/fixtures/leaks.c"))
        .expect("read fixture");
    let marker = format!("LEAK:{name} ");
    let idx = src
        .lines()
        .position(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no marker {marker}"));
    idx as u32 + 1
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("leak-tests")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The leak-check blocks of stderr, one string per process report.
fn process_reports(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in stderr.lines() {
        if l.starts_with("handles: ==== leak check:") {
            out.push(String::new());
        }
        if let Some(cur) = out.last_mut() {
            if l.starts_with("handles: LEAK SUMMARY") {
                continue;
            }
            cur.push_str(l);
            cur.push('\n');
        }
    }
    out
}

/// Runs the fixture in `mode` with --leak-check, asserts one process
/// report saying `says`, and returns it.
fn sole_report(mode: &str, says: &str) -> String {
    let o = run(&["--leak-check"], &fixture("leaks"), mode);
    let stderr = stderr_of(&o);
    let r = process_reports(&stderr);
    assert_eq!(r.len(), 1, "{stderr}");
    assert!(r[0].contains(says), "{stderr}");
    r[0].clone()
}

fn summary(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("handles: LEAK SUMMARY"))
        .unwrap_or_else(|| panic!("no summary in\n{stderr}"))
        .to_string()
}

/// Asserts a group of `ty` handles created in `function` at the marker's
/// line is in `report`.
fn assert_group(report: &str, ty: &str, function: &str, marker: &str) {
    let line = line_of(marker);
    let want = format!("in {function} at ");
    let found = report.split("handles: ").any(|_| true)
        && report
            .lines()
            .any(|l| l.contains(&want) && l.contains(&format!("leaks.c:{line} ")));
    assert!(found, "no frame {function} at leaks.c:{line} in\n{report}");
    assert!(
        report
            .lines()
            .any(|l| l.contains(&format!("({ty})")) && l.contains("handle")),
        "no {ty} group in\n{report}"
    );
}

#[test]
fn file_pipe_and_socket_leaks_name_their_function_and_line() {
    let o = run(&["--leak-check"], &fixture("leaks"), "basic");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let stderr = stderr_of(&o);
    let reports = process_reports(&stderr);
    assert_eq!(reports.len(), 1, "{stderr}");
    let r = &reports[0];
    assert!(r.contains("exits holding 4 handles it created"), "{r}");
    assert_group(r, "file", "leak_file", "file");
    assert_group(r, "pipe", "leak_pipe", "pipe");
    assert_group(r, "socket", "leak_socket", "socket");
    // The closed one is not a leak, and neither is stdio.
    assert_eq!(r.matches("/etc/hostname").count(), 1, "{r}");
    assert!(
        !r.lines()
            .any(|l| l.contains(" fd 0 ") || l.contains(" fd 1 ") || l.contains(" fd 2 ")),
        "{r}"
    );
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 4 handles to 3 objects in 1 process"
    );
}

#[test]
fn leak_rows_agree_with_proc_oracles() {
    // The pipe's two ends share one koid, which is the pipe inode.
    let o = run(&["--leak-check"], &fixture("leaks"), "basic");
    let stderr = stderr_of(&o);
    let pipe_rows: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" pipe koid "))
        .collect();
    assert_eq!(pipe_rows.len(), 2, "{stderr}");
    let koid = |l: &str| {
        l.split(" koid ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    assert_eq!(koid(pipe_rows[0]), koid(pipe_rows[1]));
    assert!(
        pipe_rows.iter().any(|l| l.ends_with("read end"))
            && pipe_rows.iter().any(|l| l.ends_with("write end"))
    );
    // The file's koid is /etc/hostname's inode.
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/etc/hostname").expect("stat").ino();
    assert!(
        stderr.contains(&format!(" file koid {ino} /etc/hostname")),
        "{stderr}"
    );
}

#[test]
fn a_leak_in_a_forked_child_only_is_reported_for_the_child() {
    let o = run(&["--leak-check"], &fixture("leaks"), "child");
    assert_eq!(o.status.code(), Some(0));
    let stderr = stderr_of(&o);
    let reports = process_reports(&stderr);
    assert_eq!(reports.len(), 1, "only the child leaks\n{stderr}");
    assert!(
        reports[0].contains("exits holding 1 handle it created"),
        "{stderr}"
    );
    assert_group(&reports[0], "file", "leak_file", "file");
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 1 handle to 1 object in 1 process"
    );
}

/// A forked child that only moves fds keeps its shim table private (in
/// its own memory, no memfd): its leak is still its own, with the stack
/// of the dup that made it, in every mode, and what it inherited is not
/// (the supervisor reads the child's slots in its memory at its exit).
#[test]
fn a_forked_child_that_only_moves_fds_reports_its_own_leak() {
    // (A leak check needs the supervisor: --no-ptrace refuses it.)
    for extra in [&[][..], &["--no-shim"][..], &["--strict"][..]] {
        let mut args = vec!["--leak-check"];
        args.extend(extra);
        let o = run(&args, &fixture("leaks"), "child-dup");
        let stderr = stderr_of(&o);
        assert_eq!(o.status.code(), Some(0), "{extra:?}\n{stderr}");
        let reports = process_reports(&stderr);
        assert_eq!(
            reports.len(),
            1,
            "{extra:?}: only the child leaks\n{stderr}"
        );
        assert!(
            reports[0].contains("exits holding 1 handle it created"),
            "{extra:?}\n{stderr}"
        );
        assert!(reports[0].contains("fd 7 "), "{extra:?}\n{stderr}");
        assert_group(&reports[0], "file", "leak_dup", "dup");
        assert_eq!(
            summary(&stderr),
            "handles: LEAK SUMMARY: 1 handle to 1 object in 1 process",
            "{extra:?}"
        );
    }
}

/// A forked child that makes nothing through the shim never gets a shim
/// table: --leak-check=all still lists what it inherited, from /proc, and
/// none of the shim's own fds.
#[test]
fn an_idle_forked_child_lists_its_inherited_handles_under_leak_check_all() {
    let o = run(&["--leak-check"], &fixture("leaks"), "child-idle");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert!(
        process_reports(&stderr_of(&o)).is_empty(),
        "{}",
        stderr_of(&o)
    );
    let o = run(&["--leak-check=all"], &fixture("leaks"), "child-idle");
    let stderr = stderr_of(&o);
    let reports = process_reports(&stderr);
    let child = reports
        .iter()
        .find(|r| r.contains("/etc/hostname (inherited)"))
        .unwrap_or_else(|| panic!("no report lists the inherited file\n{stderr}"));
    assert!(!child.contains("handles-table"), "{child}");
    assert!(!child.contains("memfd:"), "{child}");
}

#[test]
fn leaks_in_threads_and_exec_images_are_reported() {
    let o = run(&["--leak-check"], &fixture("leaks"), "thread");
    let r = process_reports(&stderr_of(&o));
    assert_eq!(r.len(), 1, "{}", stderr_of(&o));
    assert!(r[0].contains("in thread_main at "), "{}", r[0]);
    // exec: the new image's leaks are its own; what crossed the exec is
    // inherited, not a leak.
    sole_report("exec", "exits holding 4 handles it created");
    // An O_CLOEXEC handle the supervisor saw made does not cross the
    // exec: the new image's file at the same number is its own leak (the
    // supervisor's model of what crossed is checked against the shim's
    // table, not taken for granted).
    let r = sole_report("cloexec", "exits holding 4 handles it created");
    assert_group(&r, "file", "leak_file", "file");
    // --leak-check=all shows the inherited one too, marked.
    let o = run(&["--leak-check=all"], &fixture("leaks"), "exec");
    let stderr = stderr_of(&o);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("/etc/hostname (inherited)")),
        "{stderr}"
    );
}

#[test]
fn scm_rights_received_fds_and_anonymous_kinds_leak_too() {
    let o = run(&["--leak-check"], &fixture("leaks"), "scm");
    let stderr = stderr_of(&o);
    let r = process_reports(&stderr);
    assert_eq!(r.len(), 1, "{stderr}");
    assert!(
        r[0].contains("created by recvmsg (SCM_RIGHTS) at"),
        "{stderr}"
    );
    assert!(r[0].contains("in receive_fd at "), "{stderr}");
    let o = run(&["--leak-check"], &fixture("leaks"), "kinds");
    let stderr = stderr_of(&o);
    for (ty, marker) in [
        ("port", "epoll"),
        ("event", "eventfd"),
        ("vmo", "memfd"),
        ("process", "pidfd"),
    ] {
        assert_group(&stderr, ty, "leak_kinds", marker);
    }
}

#[test]
fn a_clean_busy_program_has_no_reports_and_exits_zero() {
    let o = run(
        &["--leak-check", "--error-exitcode=23"],
        &fixture("leaks"),
        "clean",
    );
    let stderr = stderr_of(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout_of(&o), "clean done\n");
    assert!(process_reports(&stderr).is_empty(), "{stderr}");
    assert!(!stderr.contains("policy exception"), "{stderr}");
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 0 handles to 0 objects in 0 processes"
    );
}

#[test]
fn error_exitcode_fires_on_leaks_only_when_asked() {
    let prog = fixture("leaks");
    assert_eq!(
        run(&["--leak-check", "--error-exitcode=23"], &prog, "basic")
            .status
            .code(),
        Some(23)
    );
    assert_eq!(
        run(&["--leak-check"], &prog, "basic").status.code(),
        Some(0)
    );
    // Without --leak-check no leak is reported or counted; a CI run
    // (--error-exitcode) still ends with the count.
    let o = run(&["--error-exitcode=23"], &prog, "basic");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stderr_of(&o),
        "handles: ERROR SUMMARY: 0 exceptions from 0 contexts (0 suppressed)\n"
    );
    // A bad value is a usage error.
    let o = run(&["--error-exitcode=0"], &prog, "basic");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn suppressions_silence_exactly_what_they_match() {
    let dir = scratch("supp");
    let supp = dir.join("pipes.supp");
    // The leaks fixture's basic run under the rules `text`.
    let with_rules = |text: &str| {
        std::fs::write(&supp, text).expect("write");
        run(
            &[
                "--leak-check",
                "--suppressions",
                supp.to_str().unwrap_or_default(),
            ],
            &fixture("leaks"),
            "basic",
        )
    };
    let o = with_rules(
        "# our pipe is on purpose\n[pipes]\nreport = leak\ntype = pipe\nframe = fun:leak_pipe\n",
    );
    let stderr = stderr_of(&o);
    assert!(!stderr.contains("(pipe)"), "{stderr}");
    assert!(
        stderr.contains("(file)") && stderr.contains("(socket)"),
        "{stderr}"
    );
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 2 handles to 2 objects in 1 process (2 suppressed)"
    );
    // A rule of the module alone that matches one handle of a group (the
    // pipe's read end, fd 4): the other is still reported, with its stack
    // (a group is left unsymbolized only when every handle is silenced).
    let o = with_rules("[read-end]\nreport = leak\ntype = pipe\nfd = 4\nframe = obj:*/leaks\n");
    let stderr = stderr_of(&o);
    assert!(
        stderr.contains("1 handle (pipe) created by pipe") && stderr.contains("in leak_pipe"),
        "{stderr}"
    );
    assert!(!stderr.contains(" fd 4 pipe"), "{stderr}");
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 3 handles to 3 objects in 1 process (1 suppressed)"
    );
    // A rule for another function matches nothing.
    let o = with_rules("[other]\nreport = leak\nframe = fun:nothing_like_this\n");
    assert!(
        summary(&stderr_of(&o)).contains("4 handles"),
        "{}",
        stderr_of(&o)
    );
    // A malformed file is an error naming the line, before anything runs.
    let o = with_rules("[x]\nframe = nonsense\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("pipes.supp:2:"), "{}", stderr_of(&o));
}

#[test]
fn gen_suppressions_prints_rules_that_then_suppress() {
    let dir = scratch("gen");
    let o = run(
        &["--leak-check", "--gen-suppressions"],
        &fixture("leaks"),
        "basic",
    );
    let stderr = stderr_of(&o);
    let rules: String = stderr
        .lines()
        .filter(|l| !l.starts_with("handles: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(rules.contains("[leak-"), "{stderr}");
    let supp = dir.join("gen.supp");
    std::fs::write(&supp, &rules).expect("write");
    let o = run(
        &[
            "--leak-check",
            "--suppressions",
            supp.to_str().unwrap_or_default(),
        ],
        &fixture("leaks"),
        "basic",
    );
    let s = summary(&stderr_of(&o));
    assert!(
        s.contains("LEAK SUMMARY: 0 handles") && s.contains("(4 suppressed)"),
        "{s}\n{rules}"
    );
}

#[test]
fn json_report_and_sarif_validate_against_their_schemas() {
    let dir = scratch("reports");
    let json = dir.join("r.json");
    let sarif = dir.join("r.sarif");
    let o = run(
        &[
            "--leak-check",
            "--report",
            json.to_str().unwrap_or_default(),
            "--sarif",
            sarif.to_str().unwrap_or_default(),
        ],
        &fixture("leaks"),
        "child",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let schema = common::docs_schema("report.schema.json");
    common::validate_file(
        "json_report_and_sarif_validate_against_their_schemas",
        &json,
        &schema,
    )
    .unwrap_or_else(|e| panic!("report invalid: {e}"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
    assert_eq!(v["summary"]["leaked_handles"], 1);
    assert_eq!(
        v["processes"].as_array().map(|a| a.len()),
        Some(2),
        "the job tree has parent and child"
    );
    assert!(v["processes"][1]["parent"].is_number());
    let leak = &v["leaks"][0]["groups"][0];
    assert_eq!(leak["handles"][0]["handle"]["type"], "file");
    assert!(leak["stack"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["function"] == "leak_file")));
    // SARIF: the result sits at the innermost frame with source info.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif).expect("read")).expect("json");
    let result = &s["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "leak");
    let region = &result["locations"][0]["physicalLocation"];
    assert!(
        region["artifactLocation"]["uri"]
            .as_str()
            .is_some_and(|u| u.ends_with("tests/fixtures/leaks.c")),
        "{result}"
    );
    assert_eq!(region["region"]["startLine"], line_of("file"));
    let test = "json_report_and_sarif_validate_against_their_schemas";
    if let Some(schema) = common::sarif_schema(test) {
        common::validate_file(test, &sarif, &schema)
            .unwrap_or_else(|e| panic!("SARIF invalid: {e}"));
    }
}

#[test]
fn exceptions_go_into_the_report_too() {
    let dir = scratch("exc");
    let json = dir.join("e.json");
    let prog = fixture("run_bugs");
    let work = scratch("exc-work");
    let o = Command::new(handles())
        .args(["run", "--report", json.to_str().unwrap_or_default(), "--"])
        .arg(&prog)
        .arg("reuse")
        .arg(&work)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(133), "{}", stderr_of(&o));
    common::validate_file(
        "exceptions_go_into_the_report_too",
        &json,
        &common::docs_schema("report.schema.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
    assert_eq!(v["exit"]["signal"], 5);
    let e = &v["exceptions"][0];
    assert_eq!(e["condition"], "bad-handle");
    assert_eq!(e["kind"], "use-closed");
    assert_eq!(
        e["stacks"].as_array().map(|s| s.len()),
        Some(3),
        "offending, closed, opened"
    );
}

#[test]
fn static_binaries_get_leak_reports_with_creation_stacks() {
    let o = run(
        &["--leak-check"],
        &fixture_with("leaks", &["-static"]),
        "basic",
    );
    let stderr = stderr_of(&o);
    let r = process_reports(&stderr);
    assert_eq!(r.len(), 1, "{stderr}");
    assert_group(&r[0], "file", "leak_file", "file");
    assert_group(&r[0], "pipe", "leak_pipe", "pipe");
}

#[test]
fn max_handles_raises_an_exception_past_the_budget() {
    let o = run(&["--max-handles", "20"], &fixture("leaks"), "many");
    assert_eq!(o.status.code(), Some(133), "{}", stderr_of(&o));
    let stderr = stderr_of(&o);
    assert!(stderr.contains("policy exception: max-handles"), "{stderr}");
    assert!(stderr.contains("over its budget of 20"), "{stderr}");
    assert!(stderr.contains("in leak_file at "), "{stderr}");
    // Under the budget, nothing.
    let o = run(&["--max-handles", "100"], &fixture("leaks"), "many");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
}

#[test]
fn with_the_shim_leaks_carry_the_shims_creation_stacks() {
    for mode in ["basic", "child"] {
        let o = run(&["--shim", "--leak-check"], &fixture("leaks"), mode);
        let stderr = stderr_of(&o);
        let r = process_reports(&stderr);
        assert_eq!(r.len(), 1, "{mode}\n{stderr}");
        assert_group(&r[0], "file", "leak_file", "file");
        if mode == "basic" {
            assert_group(&r[0], "pipe", "leak_pipe", "pipe");
            assert_group(&r[0], "socket", "leak_socket", "socket");
            assert!(
                summary(&stderr).contains("4 handles to 3 objects"),
                "{stderr}"
            );
        }
    }
}

/// Where `tool` is on PATH, or None (the test then says it skipped).
fn on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// A Makefile whose targets run a bash script and a dash script: the CI
/// recipe of the README (`handles run --leak-check -- make test`) in small.
fn shell_project(name: &str) -> Option<PathBuf> {
    for tool in ["make", "bash", "dash"] {
        if on_path(tool).is_none() {
            common::skip(tool, "is not installed (.ci/run installs it)");
            return None;
        }
    }
    // The recipe runs `sh`: the built-in rules know dash and bash.
    let sh = std::fs::canonicalize("/bin/sh").unwrap_or_default();
    let sh_name = sh.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    if sh_name != "dash" && sh_name != "bash" {
        eprintln!("skipped: /bin/sh is {}, not dash or bash", sh.display());
        return None;
    }
    let dir = scratch(name);
    // Each script opens and closes files properly: what a shell keeps by
    // design (its script's fd) must not be reported.
    std::fs::write(
        dir.join("check.bash"),
        "set -e\necho one > out.bash\nwhile read -r l; do test \"$l\" = one; done < out.bash\n\
         exec 5< out.bash\nread -r l <&5\nexec 5<&-\ncat out.bash > /dev/null\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("check.sh"),
        "set -e\necho two > out.sh\nread -r l < out.sh\ntest \"$l\" = two\ncat out.sh > /dev/null\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("leaky.bash"),
        "echo three > out.leak\n# never closed: a real leak when bash exits\nexec 7> out.leak\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("Makefile"),
        "test:\n\tbash check.bash\n\tsh check.sh\n\nleaky:\n\tbash leaky.bash\n",
    )
    .expect("write");
    Some(dir)
}

fn make(dir: &Path, extra: &[&str], target: &str) -> Output {
    Command::new(handles())
        .current_dir(dir)
        .args(["run", "--leak-check", "--error-exitcode=23"])
        .args(extra)
        .args(["--", "make", "-s", target])
        .stdin(Stdio::null())
        .output()
        .expect("run handles")
}

/// `grep -q` exits at its first match with the file it read still open:
/// an idiom every CI script uses (`if grep -q …`), accepted by a built-in
/// rule for exactly that file; without the built-in rules it is the one
/// report.
#[test]
fn grep_q_leaving_the_file_it_read_open_at_exit_is_not_a_leak() {
    if on_path("grep").is_none() {
        common::skip("grep", "is not installed");
        return;
    }
    let dir = scratch("grep-q");
    std::fs::write(dir.join("f.txt"), "a\nneedle\nb\n").expect("write");
    let grep = |extra: &[&str]| {
        Command::new(handles())
            .current_dir(&dir)
            .args(["run", "--leak-check", "--error-exitcode=23"])
            .args(extra)
            .args(["--", "grep", "-q", "needle", "f.txt"])
            .stdin(Stdio::null())
            .output()
            .expect("run handles")
    };
    let o = grep(&[]);
    let stderr = stderr_of(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(process_reports(&stderr).is_empty(), "{stderr}");
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 0 handles to 0 objects in 0 processes (1 suppressed)"
    );
    let o = grep(&["--no-default-suppressions"]);
    let stderr = stderr_of(&o);
    assert_eq!(o.status.code(), Some(23), "{stderr}");
    let r = process_reports(&stderr);
    assert_eq!(r.len(), 1, "{stderr}");
    assert!(
        r[0].contains("(grep)") && r[0].contains("f.txt"),
        "{stderr}"
    );
}

#[test]
fn shells_keeping_their_scripts_open_is_not_a_leak() {
    let Some(dir) = shell_project("shells") else {
        return;
    };
    let o = make(&dir, &[], "test");
    let stderr = stderr_of(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(process_reports(&stderr).is_empty(), "{stderr}");
    // Both scripts' fds were seen and accepted by the built-in rules.
    assert_eq!(
        summary(&stderr),
        "handles: LEAK SUMMARY: 0 handles to 0 objects in 0 processes (2 suppressed)"
    );
    // Without the built-in rules, those are the two reports, each the
    // script itself.
    let o = make(&dir, &["--no-default-suppressions"], "test");
    let stderr = stderr_of(&o);
    assert_eq!(o.status.code(), Some(23), "{stderr}");
    let r = process_reports(&stderr);
    assert_eq!(r.len(), 2, "{stderr}");
    assert!(
        r.iter()
            .any(|r| r.contains("(bash)") && r.contains("check.bash")),
        "{stderr}"
    );
    assert!(
        r.iter()
            .any(|r| r.contains("(sh)") && r.contains("check.sh")),
        "{stderr}"
    );
}

#[test]
fn a_shell_script_that_really_leaks_is_still_reported() {
    let Some(dir) = shell_project("shells-leak") else {
        return;
    };
    let o = make(&dir, &[], "leaky");
    let stderr = stderr_of(&o);
    assert_eq!(o.status.code(), Some(23), "{stderr}");
    let r = process_reports(&stderr);
    assert_eq!(r.len(), 1, "{stderr}");
    assert!(r[0].contains("(bash) exits holding 1 handle"), "{stderr}");
    assert!(
        r[0].contains(" fd 7 file ") && r[0].contains("out.leak"),
        "{stderr}"
    );
    // The script's own fd, in the same process, was accepted.
    assert!(summary(&stderr).ends_with("(1 suppressed)"), "{stderr}");
}

/// The lines of stderr that are not ours: the rules `--gen-suppressions`
/// prints bare, ready to paste.
fn printed_rules(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("handles: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn gen_suppressions_after_an_exception_round_trips() {
    let prog = fixture("run_bugs");
    let work = scratch("gen-exc-work");
    let work = work.to_str().unwrap_or_default();
    for (mode, flags) in [
        (&["double-close"][..], &[][..]),
        (&["reuse", work][..], &[][..]),
        (&["reuse", work][..], &["--no-shim"][..]),
    ] {
        let run = |extra: &[&str]| {
            Command::new(handles())
                .arg("run")
                .args(flags)
                .args(extra)
                .arg("--")
                .arg(&prog)
                .args(mode)
                .stdin(Stdio::null())
                .output()
                .expect("run handles")
        };
        let o = run(&["--gen-suppressions"]);
        let stderr = stderr_of(&o);
        assert!(stderr.contains("policy exception: bad-handle"), "{stderr}");
        let rules = printed_rules(&stderr);
        assert_eq!(
            rules.lines().filter(|l| l.starts_with('[')).count(),
            1,
            "one rule\n{rules}"
        );
        assert!(rules.starts_with("[bad-handle-"), "{mode:?}\n{stderr}");
        assert!(rules.contains("\nframe = fun:"), "{rules}");
        let dir = scratch("gen-exc");
        let supp = dir.join("exc.supp");
        std::fs::write(&supp, &rules).expect("write");
        let json = dir.join("exc.json");
        let o = run(&[
            "--suppressions",
            supp.to_str().unwrap_or_default(),
            "--report",
            json.to_str().unwrap_or_default(),
        ]);
        let stderr = stderr_of(&o);
        // As natively: the program ends normally.
        assert_eq!(
            o.status.code(),
            Some(0),
            "{mode:?} {flags:?}\n{stderr}\n{rules}"
        );
        assert!(!stderr.contains("policy exception"), "{stderr}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
        assert_eq!(v["summary"]["exceptions"], 0, "{v}");
        assert_eq!(v["summary"]["suppressed"], 1, "{v}");
    }
}
