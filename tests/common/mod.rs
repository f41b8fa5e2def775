//! Shared helpers for the integration tests: the built `handles` binary, C
//! fixtures compiled on demand, and children that report readiness.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::Mutex;

/// The `handles` binary cargo built for this test run.
pub fn handles() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handles"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

static COMPILE: Mutex<()> = Mutex::new(());

/// Compiles `tests/fixtures/NAME.c` (with `extra` cc flags) once per test
/// binary and returns the executable's path. Fixtures are built with -g and
/// frame pointers so reports can name their functions and lines.
pub fn fixture_with(name: &str, extra: &[&str]) -> PathBuf {
    let _guard = COMPILE.lock().unwrap_or_else(|e| e.into_inner());
    let src = repo_root().join("tests/fixtures").join(format!("{name}.c"));
    let tag = if extra.is_empty() {
        String::new()
    } else {
        format!(
            "-{}",
            extra
                .iter()
                .map(|f| f.trim_start_matches('-').replace(['/', '='], "_"))
                .collect::<Vec<_>>()
                .join("-")
        )
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).expect("create fixture dir");
    let out = dir.join(format!("{name}{tag}"));
    let fresh = match (std::fs::metadata(&src), std::fs::metadata(&out)) {
        (Ok(s), Ok(o)) => o.modified().ok() >= s.modified().ok(),
        _ => false,
    };
    if !fresh {
        let status = Command::new("cc")
            .args([
                "-g",
                "-O0",
                "-fno-omit-frame-pointer",
                "-pthread",
                "-Wall",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .args(extra)
            .status()
            .expect("run cc");
        assert!(status.success(), "compiling fixture {name} failed");
    }
    out
}

pub fn fixture(name: &str) -> PathBuf {
    fixture_with(name, &[])
}

/// A child process that is killed when dropped.
pub struct Running {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    /// Lines the child printed before (and including) its READY line.
    pub lines: Vec<String>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads the next line of the child's stdout.
    pub fn next_line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.stdout.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end().to_string()),
        }
    }

    /// The value after `key=` on any line printed before READY.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    pub fn rest_of_stdout(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_to_string(&mut s);
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with piped stdin/stdout and waits until it prints a line
/// `READY`. The child keeps running until the `Running` is dropped (or its
/// stdin is closed, for fixtures that wait on it).
pub fn spawn_ready(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fixture");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut r = Running {
        child,
        stdout: BufReader::new(stdout),
        lines: Vec::new(),
    };
    loop {
        match r.next_line() {
            Some(l) if l == "READY" => break,
            Some(l) => r.lines.push(l),
            None => panic!("fixture exited before READY; printed {:?}", r.lines),
        }
    }
    r
}

/// Runs `handles` with `args` and returns its output.
pub fn run_handles<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(handles())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run handles")
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run's status, stdout and stderr, for an assertion's message.
pub fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout_of(o),
        stderr_of(o)
    )
}

/// How a run ended, the same whether `handles` supervised it (exit code
/// 128 + signal, as a shell reports it) or became it (`--no-ptrace`: the
/// signal itself).
pub fn ending(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) if c > 128 => format!("signal {}", c - 128),
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// A test whose prerequisite (a tool `.ci/run` installs, root) is missing
/// calls this and returns: it says so on stderr, or, when
/// `HANDLES_TEST_STRICT=1` (set by `.ci/run`, where every prerequisite was
/// installed), fails, so that CI never counts a test that did not run as
/// passed. Conditions of the machine rather than of the install (no
/// /dev/fuse, a Python version pyenv lacks) stay plain skips.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("HANDLES_TEST_STRICT").is_some_and(|v| v == "1") {
        panic!("{test}: {why} (HANDLES_TEST_STRICT=1: a prerequisite .ci/run installs is missing)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// One of the JSON Schemas under docs/ (`report.schema.json`, …).
pub fn docs_schema(name: &str) -> PathBuf {
    repo_root().join("docs").join(name)
}

/// Validates the JSON document in the file `doc` against the JSON Schema
/// in the file `schema` with python's jsonschema (what .ci/run installs);
/// Err carries the validator's message. Without python3 or jsonschema the
/// check goes through [`skip`] and passes (it fails under
/// HANDLES_TEST_STRICT=1).
pub fn validate_file(test: &str, doc: &Path, schema: &Path) -> Result<(), String> {
    let have = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        skip(
            test,
            "python3 with jsonschema is needed to validate JSON output",
        );
        return Ok(());
    }
    let script = "import json,sys,jsonschema\n\
        doc = json.load(open(sys.argv[1]))\n\
        schema = json.load(open(sys.argv[2]))\n\
        jsonschema.validators.validator_for(schema).check_schema(schema)\n\
        jsonschema.validate(doc, schema)\n";
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(doc)
        .arg(schema)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// [`validate_file`] for a document held in memory; panics with the
/// validator's message and the document when it does not validate.
pub fn assert_valid(test: &str, doc: &serde_json::Value, schema: &Path) {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("handles-valid-{}-{n}.json", std::process::id()));
    std::fs::write(&path, doc.to_string()).expect("write the document");
    let r = validate_file(test, &path, schema);
    let _ = std::fs::remove_file(&path);
    if let Err(e) = r {
        panic!(
            "{test}: not valid against {}:\n{e}\n{doc:#}",
            schema.display()
        );
    }
}

/// The SARIF 2.1.0 schema: HANDLES_SARIF_SCHEMA, or the copy .ci/run puts
/// in target/, or one fetched from the npm registry (the schema ships in
/// @microsoft/jest-sarif). None, through [`skip`], when none can be had.
pub fn sarif_schema(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HANDLES_SARIF_SCHEMA") {
        return Some(PathBuf::from(p));
    }
    let cached = repo_root().join("target/sarif-2.1.0.json");
    if cached.exists() {
        return Some(cached);
    }
    let dir = std::env::temp_dir().join(format!("handles-sarif-schema-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let ok = Command::new("sh")
        .arg("-c")
        .arg("npm pack -q @microsoft/jest-sarif >/dev/null 2>&1 && tar xzf microsoft-jest-sarif-*.tgz && mkdir -p \"$(dirname \"$1\")\" && cp package/lib/schemas/sarif-2.1.0-rtm.5.json \"$1\"")
        .arg("sh")
        .arg(&cached)
        .current_dir(&dir)
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        return Some(cached);
    }
    skip(
        test,
        "no SARIF 2.1.0 schema: set HANDLES_SARIF_SCHEMA or let npm fetch @microsoft/jest-sarif",
    );
    None
}
