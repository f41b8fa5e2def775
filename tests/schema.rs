//! Every JSON document `handles` writes, produced by real runs and checked
//! against the JSON Schemas in docs/ (`report.schema.json` for
//! `--report`, `table.schema.json` for `handles PID --json`,
//! `graph.schema.json` for `handles graph --json`), in every mode where it
//! applies: one frame object and one handle object wherever a frame or a
//! handle appears, the SARIF file's included (its property bags carry the
//! same objects), and the JSON agreeing with the text report it sits next
//! to. `--no-ptrace` has no `--report` or `--sarif` (no supervisor writes
//! them); its tables are checked.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_valid, docs_schema, fixture, handles, spawn_ready, stderr_of};
use serde_json::Value;

/// The modes with a supervisor, which write `--report` and `--sarif`.
const REPORT_MODES: [&[&str]; 3] = [&[], &["--strict"], &["--no-shim"]];
/// Every mode, for what `handles PID` reads of a job's process.
const MODES: [&[&str]; 4] = [&[], &["--strict"], &["--no-shim"], &["--no-ptrace"]];

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("handles-schema-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", p.display()))
}

fn hex(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok()
}

/// The line of `tests/fixtures/NAME.c` holding `marker`.
fn line_of(name: &str, marker: &str) -> u64 {
    let src = std::fs::read_to_string(common::repo_root().join(format!("tests/fixtures/{name}.c")))
        .expect("read fixture");
    src.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker} in {name}.c")) as u64
        + 1
}

/// Runs `handles run MODE --report R --sarif S [extra] -- PROG ARGS` and
/// returns (its output, the report, the SARIF document).
fn run_with_reports(
    tag: &str,
    mode: &[&str],
    extra: &[&str],
    prog: &Path,
    args: &[&str],
) -> (std::process::Output, Value, Value) {
    let dir = scratch(tag);
    let (report, sarif) = (dir.join("r.json"), dir.join("r.sarif"));
    let out = Command::new(handles())
        .arg("run")
        .args(mode)
        .args(extra)
        .arg("--report")
        .arg(&report)
        .arg("--sarif")
        .arg(&sarif)
        .arg("--")
        .arg(prog)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run handles");
    let (r, s) = (read_json(&report), read_json(&sarif));
    let _ = std::fs::remove_dir_all(&dir);
    (out, r, s)
}

/// The SARIF results carry the report's objects: each stack frame's
/// property bag holds the report's frame, and a result's handles are the
/// report's handles.
fn sarif_frames(result: &Value) -> Vec<Vec<Value>> {
    result["stacks"]
        .as_array()
        .expect("SARIF stacks")
        .iter()
        .map(|s| {
            s["frames"]
                .as_array()
                .expect("SARIF frames")
                .iter()
                .map(|f| f["properties"]["frame"].clone())
                .collect()
        })
        .collect()
}

fn report_frames(stacks: &Value) -> Vec<Vec<Value>> {
    stacks
        .as_array()
        .expect("stacks")
        .iter()
        .map(|s| s["frames"].as_array().expect("frames").clone())
        .collect()
}

#[test]
fn exception_reports_validate_and_name_the_handle_as_an_object() {
    let prog = fixture("run_bugs");
    let use_line = line_of("run_bugs", "BUG: use");
    for mode in REPORT_MODES {
        let work = scratch("exc-work");
        let (out, r, s) = run_with_reports(
            "exc",
            mode,
            &[],
            &prog,
            &["reuse", work.to_str().expect("utf-8 path")],
        );
        let what = format!("{mode:?}:\n{}", stderr_of(&out));
        assert_eq!(out.status.code(), Some(133), "{what}");
        assert_valid("exception reports", &r, &docs_schema("report.schema.json"));
        if let Some(schema) = common::sarif_schema("exception reports") {
            assert_valid("exception reports (SARIF)", &s, &schema);
        }
        assert_eq!(r["schema"], "handles.run.v3", "{what}");
        let a: i64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("a=").and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("no a= line: {what}"));
        let e = &r["exceptions"][0];
        assert_eq!(e["kind"], "use-closed", "{what}");
        let h = &e["handle"];
        assert_eq!(h["fd"], a, "{h:#}\n{what}");
        assert_eq!(h["state"], "closed", "{h:#}");
        assert_eq!(h["type"], "file", "{h:#}");
        // The koid is known where the supervisor saw the object (the
        // shim's closes do not say); null otherwise, never 0.
        assert!(
            h["koid"].is_null() || h["koid"].as_u64().is_some_and(|k| k > 0),
            "{h:#}"
        );
        assert!(h["generation"].is_u64(), "{h:#}");
        let desc = format!("{}/a.txt", work.display());
        assert_eq!(h["description"], desc.as_str(), "{h:#}");
        // The one line of the text report, kept beside the object, and
        // the object agree.
        let value = h["value"].as_u64().expect("a closed handle has a value");
        assert_eq!(value & 3, 3, "{h:#}");
        let koid = h["koid"]
            .as_u64()
            .map(|k| format!(" koid {k}"))
            .unwrap_or_default();
        let line = format!("{value:#010x} (fd {a}): closed file{koid} {desc}");
        assert_eq!(e["handle_text"], line.as_str(), "{e:#}");
        assert!(
            stderr_of(&out).contains(&format!("handles:     handle {line}\n")),
            "{what}"
        );
        // Native frames only (a C program), each with every key.
        let stacks = report_frames(&e["stacks"]);
        assert_eq!(stacks.len(), 3, "offending, closed, opened: {e:#}");
        for f in stacks.iter().flatten() {
            assert_eq!(f["kind"], "native", "{f:#}");
            assert!(
                hex(&f["address"]).is_some() && hex(&f["offset"]).is_some(),
                "{f:#}"
            );
            assert!(f["inlined_into"].is_array(), "{f:#}");
        }
        let use_frame = stacks[0]
            .iter()
            .find(|f| f["function"] == "use_after_close")
            .unwrap_or_else(|| panic!("no use_after_close frame: {e:#}"));
        assert_eq!(use_frame["line"], use_line, "{use_frame:#}");
        assert!(
            use_frame["module"]
                .as_str()
                .is_some_and(|m| m.ends_with("/run_bugs")),
            "{use_frame:#}"
        );
        // SARIF: the same frames and the same handle.
        let result = &s["runs"][0]["results"][0];
        assert_eq!(sarif_frames(result), stacks, "{result:#}");
        assert_eq!(&result["properties"]["handle"], h, "{result:#}");
        let _ = std::fs::remove_dir_all(&work);
    }
}

#[test]
fn a_never_opened_number_is_a_handle_without_a_value() {
    let prog = fixture("run_bugs");
    for mode in REPORT_MODES {
        let (out, r, _) = run_with_reports("never", mode, &[], &prog, &["never-opened"]);
        let what = format!("{mode:?}:\n{}", stderr_of(&out));
        // A lone close of a never-opened number is held until the thread's
        // next close shows it is no sweep; here the program ends first.
        assert_eq!(out.status.code(), Some(0), "{what}");
        assert_valid("never opened", &r, &docs_schema("report.schema.json"));
        let e = &r["exceptions"][0];
        assert_eq!(e["kind"], "close-never-opened", "{e:#}\n{what}");
        assert_eq!(
            e["handle"],
            serde_json::json!({
                "value": null, "fd": 77, "generation": null, "state": "not-open",
                "type": null, "koid": null, "dev": null, "rights": null, "description": null
            }),
            "{what}"
        );
        assert_eq!(e["handle_text"], "fd 77: not open", "{what}");
    }
}

/// `handles:   0x0b6af1ff fd 6 pipe koid 1063257 read end` lines of the
/// leak reports: (value, fd, type, koid).
fn text_leaks(stderr: &str) -> BTreeSet<(u64, i64, String, u64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("handles:   0x"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((
                u64::from_str_radix(w.first()?, 16).ok()?,
                w.get(2)?.parse().ok()?,
                w.get(3)?.to_string(),
                w.get(5)?.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn leak_reports_validate_and_agree_with_the_text_report() {
    let prog = fixture("leaks");
    for mode in REPORT_MODES {
        let (out, r, s) = run_with_reports("leaks", mode, &["--leak-check"], &prog, &["basic"]);
        let stderr = stderr_of(&out);
        let what = format!("{mode:?}:\n{stderr}");
        assert_eq!(out.status.code(), Some(0), "{what}");
        assert_valid("leak reports", &r, &docs_schema("report.schema.json"));
        if let Some(schema) = common::sarif_schema("leak reports") {
            assert_valid("leak reports (SARIF)", &s, &schema);
        }
        let groups = r["leaks"][0]["groups"].as_array().expect("leak groups");
        let mut json_leaks = BTreeSet::new();
        for g in groups {
            for l in g["handles"].as_array().expect("handles") {
                let h = &l["handle"];
                assert_eq!(h["state"], "open", "{h:#}");
                assert!(h["generation"].is_u64() && h["rights"].is_u64(), "{h:#}");
                json_leaks.insert((
                    h["value"].as_u64().expect("value"),
                    h["fd"].as_i64().expect("fd"),
                    h["type"].as_str().expect("type").to_string(),
                    h["koid"].as_u64().expect("koid"),
                ));
            }
            for f in g["stack"].as_array().expect("stack") {
                assert_eq!(f["kind"], "native", "{f:#}");
            }
        }
        let types: BTreeSet<&str> = json_leaks.iter().map(|l| l.2.as_str()).collect();
        assert!(types.contains("file") && types.contains("pipe"), "{r:#}");
        assert_eq!(json_leaks, text_leaks(&stderr), "{r:#}\n{what}");
        // SARIF: one result per group, its frames and handles the report's.
        let results: Vec<&Value> = s["runs"][0]["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter(|x| x["ruleId"] == "leak")
            .collect();
        assert_eq!(results.len(), groups.len(), "{s:#}");
        for (res, g) in results.iter().zip(groups) {
            assert_eq!(
                sarif_frames(res),
                vec![g["stack"].as_array().expect("stack").clone()]
            );
            let handles: Vec<&Value> = g["handles"]
                .as_array()
                .expect("handles")
                .iter()
                .map(|l| &l["handle"])
                .collect();
            let sarif_handles: Vec<&Value> = res["properties"]["handles"]
                .as_array()
                .expect("SARIF handles")
                .iter()
                .collect();
            assert_eq!(sarif_handles, handles, "{res:#}");
        }
    }
}

fn handles_json(args: &[&str]) -> Value {
    let out = Command::new(handles())
        .args(args)
        .output()
        .expect("run handles");
    assert!(
        out.status.success(),
        "handles {args:?}: {}",
        stderr_of(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("handles {args:?}: {e}"))
}

#[test]
fn tables_validate_in_every_mode_with_stacks_in_the_frame_shape() {
    let prog = fixture("stacks");
    let open_line = line_of("stacks", "STACK:open");
    let schema = docs_schema("table.schema.json");
    // An unmanaged process: this test's own.
    let me = std::process::id().to_string();
    for args in [
        vec!["--json", me.as_str()],
        vec!["--json", "--mappings", me.as_str()],
    ] {
        let doc = handles_json(&args);
        assert_valid("unmanaged table", &doc, &schema);
        assert_eq!(doc["processes"][0]["source"], "proc");
    }
    for mode in MODES {
        let mut cmd = Command::new(handles());
        cmd.arg("run")
            .args(mode)
            .arg("--")
            .arg(&prog)
            .arg("/etc/hostname");
        let running = spawn_ready(cmd);
        let pid = running.value("pid").expect("pid=");
        let file: i64 = running
            .value("file")
            .and_then(|f| f.parse().ok())
            .expect("file=");
        for extra in [&[][..], &["--mappings"][..]] {
            let mut args = vec!["--json", "--stacks", pid.as_str()];
            args.extend_from_slice(extra);
            let doc = handles_json(&args);
            assert_valid("job table", &doc, &schema);
            assert_eq!(doc["schema"], "handles.table.v2");
        }
        let doc = handles_json(&["--json", "--stacks", pid.as_str()]);
        let p = &doc["processes"][0];
        assert_ne!(p["source"], "proc", "{mode:?}: {p:#}");
        let row = p["handles"]
            .as_array()
            .expect("handles")
            .iter()
            .find(|h| h["fd"] == file)
            .unwrap_or_else(|| panic!("{mode:?}: fd {file} not listed: {p:#}"));
        assert_eq!(row["state"], "open", "{row:#}");
        assert_eq!(row["type"], "file", "{row:#}");
        assert_eq!(row["description"], "/etc/hostname", "{row:#}");
        let frames = row["created"]["frames"]
            .as_array()
            .expect("creation frames");
        let f = frames
            .iter()
            .find(|f| f["function"] == "open_config")
            .unwrap_or_else(|| panic!("{mode:?}: no open_config frame: {row:#}"));
        assert_eq!(f["kind"], "native", "{f:#}");
        assert_eq!(f["line"], open_line, "{f:#}");
        assert!(hex(&f["address"]).is_some_and(|a| a > hex(&f["offset"]).unwrap_or(u64::MAX)));
        drop(running);
    }
}

#[test]
fn graphs_validate_with_handle_objects_on_their_edges() {
    let prog = fixture("stacks");
    let mut cmd = Command::new(handles());
    cmd.arg("run").arg("--").arg(&prog).arg("/etc/hostname");
    let running = spawn_ready(cmd);
    let pid = running.value("pid").expect("pid=");
    // Its stdin and stdout are pipes this test holds the other ends of.
    let doc = handles_json(&["graph", "--json", pid.as_str()]);
    assert_valid("graph", &doc, &docs_schema("graph.schema.json"));
    assert_eq!(doc["schema"], "handles.graph.v2");
    let edges: Vec<&Value> = doc["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| {
            e["kind"] == "handle"
                && e["pid"].as_i64().map(|p| p.to_string()).as_deref() == Some(pid.as_str())
        })
        .collect();
    assert!(
        edges
            .iter()
            .any(|e| e["handle"]["fd"] == 0 && e["handle"]["type"] == "pipe"),
        "{doc:#}"
    );
    drop(running);
}

#[test]
fn the_schemas_share_one_frame_and_one_handle_definition() {
    let load = |n: &str| read_json(&docs_schema(n));
    let (report, table, graph) = (
        load("report.schema.json"),
        load("table.schema.json"),
        load("graph.schema.json"),
    );
    for def in ["frame", "nativeFrame", "pythonFrame", "handle"] {
        assert_eq!(report["$defs"][def], table["$defs"][def], "{def}");
        assert!(report["$defs"][def].is_object(), "{def}");
    }
    assert_eq!(report["$defs"]["handle"], graph["$defs"]["handle"]);
}
