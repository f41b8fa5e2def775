//! The quarantine is invisible (issue 14, items 2 and 3): a quarantined
//! number is held by a tombstone, an O_PATH fd, which the kernel accepts
//! where a call only needs a name (fstatat with AT_EMPTY_PATH, statx,
//! fchownat, a relative fstatat on a dirfd) and shows in /proc/self/fd,
//! /proc/self/fdinfo and /dev/fd. A program must learn nothing of it:
//! every call on a closed number answers as natively (EBADF), its names
//! answer ENOENT, listings leave it out, in every mode, under every
//! policy that lets a program go on, and where tombstones cannot come
//! from open_tree (a seccomp sandbox, valgrind). The expected answers
//! come from the same program run natively.

mod common;

use std::process::{Command, Output, Stdio};

use common::{describe, fixture, handles, stdout_of};

const MODES: [&[&str]; 4] = [&[], &["--strict"], &["--no-shim"], &["--no-ptrace"]];

/// Policies under which a program goes on after using a closed number.
const GOING_ON: [&[&str]; 3] = [
    &["--policy", "bad-handle=allow"],
    &["--on-exception=continue"],
    &["--policy", "bad-handle=deny"],
];

fn native(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run natively")
}

fn under(opts: &[&str], prog: &str, args: &[&str]) -> Output {
    Command::new(handles())
        .arg("run")
        .args(opts)
        .arg("--")
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run handles")
}

#[test]
fn every_call_on_a_quarantined_number_answers_as_on_a_closed_one() {
    let prog = fixture("tomb_answers");
    let prog = prog.to_str().expect("utf-8 path");
    for sandbox in [&[][..], &["sandbox"][..]] {
        let n = native(prog, sandbox);
        assert_eq!(n.status.code(), Some(0), "{}", describe(&n));
        let expected = stdout_of(&n);
        assert!(
            expected.contains("fstatat-empty        -1 EBADF"),
            "{expected}"
        );
        assert!(
            expected.contains("open-devfd           -1 ENOENT"),
            "{expected}"
        );
        for mode in MODES {
            for policy in GOING_ON {
                let opts: Vec<&str> = mode.iter().chain(policy.iter()).copied().collect();
                let o = under(&opts, prog, sandbox);
                assert_eq!(
                    o.status.code(),
                    Some(0),
                    "{opts:?} {sandbox:?}\n{}",
                    describe(&o)
                );
                assert_eq!(
                    stdout_of(&o),
                    expected,
                    "{opts:?} {sandbox:?}: answers differ from native\n{}",
                    describe(&o)
                );
            }
        }
    }
}

/// A shell script that closes fd 5 and asks about it by name, then counts
/// its own fds as a child (`ls`) lists them.
// The listings go to files, not through `$(ls ... | wc -l)`: the command
// substitution's pipe is open in the shell for a moment that races with
// the listing, natively too (6 or 7 entries).
const SHELL: &str = r#"exec 5>"$1"; exec 5>&-
if [ -e /dev/fd/5 ]; then echo "fd5 exists"; else echo "fd5 gone"; fi
if (echo hi > /dev/fd/5) 2>/dev/null; then echo "write ok"; else echo "write refused"; fi
ls /proc/$$/fd > "$1.fd"; echo "fd entries $(wc -l < "$1.fd")"
ls /proc/$$/fdinfo > "$1.fdinfo"; echo "fdinfo entries $(wc -l < "$1.fdinfo")"
if cat /proc/$$/fdinfo/5 >/dev/null 2>&1; then echo "fdinfo5 read"; else echo "fdinfo5 gone"; fi
"#;

#[test]
fn shells_see_their_fd_table_as_natively() {
    let dir = tempfile_dir("shells");
    let file = format!("{dir}/f");
    for shell in ["bash", "dash"] {
        if Command::new(shell).arg("-c").arg("true").status().is_err() {
            common::skip(shell, "is not installed");
            continue;
        }
        let args = ["-c", SHELL, shell, file.as_str()];
        let n = native(shell, &args);
        let expected = stdout_of(&n);
        assert!(expected.contains("fd5 gone"), "{}", describe(&n));
        assert!(expected.contains("write refused"), "{}", describe(&n));
        for mode in MODES {
            let o = under(mode, shell, &args);
            assert_eq!(
                o.status.code(),
                n.status.code(),
                "{shell} {mode:?}\n{}",
                describe(&o)
            );
            assert_eq!(
                stdout_of(&o),
                expected,
                "{shell} {mode:?}\n{}",
                describe(&o)
            );
        }
    }
}

/// Python closes many files while it starts (every module it imports), so
/// its quarantine is full of tombstones by the time the script runs.
const PYTHON: &str = r#"
import os
f = os.open("/etc/hostname", os.O_RDONLY)
os.close(f)
print("procfd", os.path.exists("/proc/self/fd/%d" % f))
print("devfd", os.path.exists("/dev/fd/%d" % f))
print("fdinfo", os.path.exists("/proc/self/fdinfo/%d" % f))
# The listing's own fd is in it: its number differs under the quarantine,
# not how many there are.
print("fds", len(os.listdir("/proc/self/fd")))
print("fdinfos", len(os.listdir("/proc/self/fdinfo")))
try:
    os.stat(f)
    print("fstat ok")
except OSError as e:
    print("fstat", e.errno)
"#;

#[test]
fn python_sees_its_fd_table_as_natively() {
    if Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_err()
    {
        common::skip(
            "python_sees_its_fd_table_as_natively",
            "python3 is not installed",
        );
        return;
    }
    let n = native("python3", &["-c", PYTHON]);
    assert_eq!(n.status.code(), Some(0), "{}", describe(&n));
    let expected = stdout_of(&n);
    assert!(expected.contains("procfd False"), "{expected}");
    for mode in MODES {
        for policy in [&[][..], &["--on-exception=continue"][..]] {
            let opts: Vec<&str> = mode.iter().chain(policy.iter()).copied().collect();
            let o = under(&opts, "python3", &["-c", PYTHON]);
            // os.stat(closed fd) is a question (fstat): no report, EBADF.
            assert_eq!(o.status.code(), Some(0), "{opts:?}\n{}", describe(&o));
            assert_eq!(stdout_of(&o), expected, "{opts:?}\n{}", describe(&o));
        }
    }
}

fn tempfile_dir(tag: &str) -> String {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tombstones-{tag}"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir.to_str().expect("utf-8 path").to_string()
}

/// CPython's test_close_fds_when_max_fd_is_lowered in small: fds opened
/// above a soft limit lowered afterwards, and a grandchild under that
/// limit asking which numbers are open. The shim keeps its own fds just
/// above such a limit (`table::own_fds_at`); the rule that a number at or
/// above RLIMIT_NOFILE is a sentinel must not let them show.
const LOWERED: &str = r#"
import os, resource, subprocess, sys
fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(40)]
for fd in sorted(fds)[:14]:
    os.close(fd)
    fds.remove(fd)
for fd in fds:
    os.set_inheritable(fd, True)
rl = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (29, rl[1]))
ask = "import os\nok=[]\nfor fd in range(%d):\n  try:\n    os.fstat(fd); ok.append(fd)\n  except OSError: pass\nprint(ok)\n" % (max(fds) + 1)
run = "import subprocess,sys; subprocess.Popen([sys.executable,'-c',%r], close_fds=True).wait()" % ask
subprocess.Popen([sys.executable, '-c', run], close_fds=False).wait()
"#;

#[test]
fn the_tools_fds_above_a_lowered_limit_stay_hidden() {
    if Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_err()
    {
        common::skip(
            "the_tools_fds_above_a_lowered_limit_stay_hidden",
            "python3 is not installed",
        );
        return;
    }
    let n = native("python3", &["-c", LOWERED]);
    assert_eq!(stdout_of(&n), "[0, 1, 2]\n", "{}", describe(&n));
    for mode in MODES {
        let o = under(mode, "python3", &["-c", LOWERED]);
        assert_eq!(stdout_of(&o), stdout_of(&n), "{mode:?}\n{}", describe(&o));
    }
}
