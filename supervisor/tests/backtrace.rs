//! Remote unwinding and symbolization of real C programs stopped under
//! ptrace: with and without frame pointers, CFI and symbols, static, and
//! stopped inside libc and the vdso.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handles_supervisor::backtrace::{
    Frame, ModuleMap, StartRegs, StopReason, Symbolizer, Unwinder,
};
use nix::sys::ptrace;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

const SOURCE: &str = "bt_chain.c";

fn source_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(SOURCE)
}

/// Compiles the fixture with `flags` into a binary named `name`.
fn build(name: &str, flags: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("backtrace-fixtures");
    std::fs::create_dir_all(&dir).expect("create fixture dir");
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(source_path())
        .status()
        .expect("run cc");
    assert!(status.success(), "cc {flags:?} failed");
    out
}

fn strip(bin: &Path, name: &str) -> PathBuf {
    let out = bin.with_file_name(name);
    let status = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
        .expect("run strip");
    assert!(status.success(), "strip failed");
    out
}

/// The 1-based line of the marker comment in the fixture source.
fn line_of(marker: &str) -> u32 {
    let src = std::fs::read_to_string(source_path()).expect("read fixture source");
    let tag = format!("/* {marker} */");
    let i = src
        .lines()
        .position(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("marker {marker} not in fixture"));
    i as u32 + 1
}

/// A traced child, killed when dropped. The child's stdin pipe stays open
/// as long as this lives, so a read(0) in the fixture blocks.
struct Tracee {
    child: Child,
}

impl Tracee {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn wait_stop(&self) -> Signal {
        match waitpid(self.pid(), None).expect("waitpid") {
            WaitStatus::Stopped(_, sig) => sig,
            other => panic!("fixture did not stop: {other:?}"),
        }
    }

    fn regs(&self) -> StartRegs {
        let regs = ptrace::getregs(self.pid()).expect("PTRACE_GETREGS");
        StartRegs::from(&regs)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = waitpid(self.pid(), None);
    }
}

/// Starts `bin args` under PTRACE_TRACEME and lets it run past its exec
/// stop. The calling thread is the tracer.
fn start(bin: &Path, args: &[&str]) -> Tracee {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the ptrace(PTRACE_TRACEME) syscall, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    let t = Tracee {
        child: cmd.spawn().expect("spawn fixture"),
    };
    assert_eq!(t.wait_stop(), Signal::SIGTRAP, "exec stop");
    ptrace::cont(t.pid(), None).expect("PTRACE_CONT");
    t
}

/// Starts the fixture in mode 0 and waits until it has stopped itself with
/// raise(SIGSTOP) inside `inner`.
fn start_stopped(bin: &Path, depth: u32) -> Tracee {
    let t = start(bin, &["0", &depth.to_string()]);
    assert_eq!(t.wait_stop(), Signal::SIGSTOP);
    t
}

fn backtrace(t: &Tracee) -> Vec<Frame> {
    let maps = ModuleMap::read(t.pid().as_raw()).expect("read maps");
    let addrs = Unwinder::new().unwind(t.pid().as_raw(), &maps, t.regs(), 64);
    let frames = Symbolizer::new().symbolize(&maps, &addrs, true);
    eprintln!("{}", render(&frames));
    frames
}

fn render(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| format!("  {f}\n"))
        .collect::<String>()
}

fn position(frames: &[Frame], function: &str) -> Option<usize> {
    frames
        .iter()
        .position(|f| f.function.as_deref() == Some(function))
}

/// inner, middle, outer and main appear in that order, adjacent, each with
/// the fixture's file and the line of the call it is in.
fn assert_chain(frames: &[Frame], inner_line: u32) {
    assert_chain_from(frames, &[inner_line]);
}

/// [`assert_chain`] where inner may be at any of `inner_lines`.
fn assert_chain_from(frames: &[Frame], inner_lines: &[u32]) {
    let text = render(frames);
    let inner = position(frames, "inner").unwrap_or_else(|| panic!("no inner in\n{text}"));
    let inner_line = frames[inner].line.filter(|l| inner_lines.contains(l));
    assert!(
        inner_line.is_some(),
        "inner not at {inner_lines:?}:\n{text}"
    );
    let expect = [
        ("inner", inner_line.unwrap_or(0)),
        ("middle", line_of("CALL_INNER")),
        ("outer", line_of("CALL_MIDDLE")),
        ("main", line_of("CALL_OUTER")),
    ];
    for (k, (function, line)) in expect.iter().enumerate() {
        let f = frames
            .get(inner + k)
            .unwrap_or_else(|| panic!("stack ends before {function}:\n{text}"));
        assert_eq!(
            f.function.as_deref(),
            Some(*function),
            "frame {}:\n{text}",
            inner + k
        );
        assert_eq!(f.line, Some(*line), "line of {function}:\n{text}");
        let file = f.file.as_deref().unwrap_or("");
        assert!(
            file.ends_with(SOURCE),
            "file of {function} is {file:?}:\n{text}"
        );
    }
}

#[test]
fn unwinds_a_frame_pointer_build_from_inside_libc() {
    let bin = build("chain-O0", &["-g", "-O0", "-fno-omit-frame-pointer"]);
    let t = start_stopped(&bin, 0);
    let frames = backtrace(&t);
    assert_chain(&frames, line_of("STOP_INNER"));
    let text = render(&frames);
    // Frame 0 is in libc (raise and the kill it makes), and the walk goes
    // on past main into libc's start code.
    assert!(
        frames[0]
            .module_name()
            .is_some_and(|m| m.starts_with("libc")),
        "frame 0 not in libc:\n{text}"
    );
    let main = position(&frames, "main").unwrap_or(0);
    assert!(
        frames[main + 1..]
            .iter()
            .any(|f| f.module_name().is_some_and(|m| m.starts_with("libc"))),
        "no libc frame after main:\n{text}"
    );
    assert!(text.contains("in inner at "), "{text}");
    assert!(text.contains("(chain-O0+0x"), "{text}");
    // _start's CFI marks the end of the stack.
    let maps = ModuleMap::read(t.pid().as_raw()).expect("read maps");
    let unwound = Unwinder::new().unwind_detailed(t.pid().as_raw(), &maps, t.regs(), 64);
    assert_eq!(unwound.stop, StopReason::EndOfStack, "{text}");
    assert_eq!(unwound.frames.len(), frames.len());
}

#[test]
fn unwinds_an_optimized_build_without_frame_pointers_through_cfi() {
    let bin = build("chain-O2", &["-g", "-O2", "-fomit-frame-pointer"]);
    let t = start_stopped(&bin, 0);
    assert_chain(&backtrace(&t), line_of("STOP_INNER"));
}

#[test]
fn falls_back_to_frame_pointers_where_there_is_no_cfi() {
    // No .eh_frame entries for the fixture's own functions: only the rbp
    // chain leads from inner back to main.
    let bin = build(
        "chain-nocfi",
        &[
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
        ],
    );
    let t = start_stopped(&bin, 0);
    assert_chain(&backtrace(&t), line_of("STOP_INNER"));
}

#[test]
fn unwinds_a_static_binary() {
    let bin = build("chain-static", &["-g", "-O0", "-static"]);
    let t = start_stopped(&bin, 0);
    let frames = backtrace(&t);
    assert_chain(&frames, line_of("STOP_INNER"));
    let text = render(&frames);
    // libc is linked in: frame 0 is raise's code inside the binary itself.
    assert_eq!(frames[0].module_name(), Some("chain-static"), "{text}");
    assert!(frames[0].function.is_some(), "{text}");
}

#[test]
fn unwinds_a_static_pie_binary() {
    let bin = build("chain-static-pie", &["-g", "-O2", "-static-pie"]);
    let t = start_stopped(&bin, 0);
    let frames = backtrace(&t);
    assert_chain(&frames, line_of("STOP_INNER"));
    assert_eq!(frames[0].module_name(), Some("chain-static-pie"));
}

#[test]
fn stripped_binary_gives_module_offsets_that_match_the_unstripped_one() {
    let bin = build("chain-for-strip", &["-g", "-O0"]);
    let stripped = strip(&bin, "chain-stripped");
    let full = {
        let t = start_stopped(&bin, 0);
        backtrace(&t)
    };
    let bare = {
        let t = start_stopped(&stripped, 0);
        backtrace(&t)
    };
    let (full_text, bare_text) = (render(&full), render(&bare));
    let own = |frames: &[Frame], name: &str| -> Vec<(u64, Option<String>)> {
        frames
            .iter()
            .filter(|f| f.module_name() == Some(name))
            .map(|f| (f.module_offset, f.function.clone()))
            .collect()
    };
    let full_own = own(&full, "chain-for-strip");
    let bare_own = own(&bare, "chain-stripped");
    assert!(full_own.len() >= 4, "{full_text}");
    // Same code, so the same offsets; the stripped one has no names for
    // the fixture's own functions, which are not exported (not in .dynsym).
    assert_eq!(
        full_own.iter().map(|f| f.0).collect::<Vec<_>>(),
        bare_own.iter().map(|f| f.0).collect::<Vec<_>>(),
        "full:\n{full_text}stripped:\n{bare_text}"
    );
    for (offset, function) in &bare_own {
        assert!(
            function.is_none(),
            "{offset:#x} named {function:?}:\n{bare_text}"
        );
    }
    let stripped_frames = bare
        .iter()
        .filter(|f| f.module_name() == Some("chain-stripped"));
    for f in stripped_frames {
        assert!(f.file.is_none() && f.line.is_none(), "{bare_text}");
    }
    assert!(bare_text.contains("(chain-stripped+0x"), "{bare_text}");
}

#[test]
fn stripped_binary_with_exported_functions_is_named_from_dynsym() {
    let bin = build("chain-rdynamic", &["-g", "-O0", "-rdynamic"]);
    let stripped = strip(&bin, "chain-rdynamic-stripped");
    let t = start_stopped(&stripped, 0);
    let frames = backtrace(&t);
    let text = render(&frames);
    let names: Vec<&str> = frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect();
    let inner = names
        .iter()
        .position(|n| *n == "inner")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        &names[inner..inner + 4],
        ["inner", "middle", "outer", "main"],
        "{text}"
    );
    let f = &frames[position(&frames, "middle").unwrap_or(0)];
    assert!(f.file.is_none() && f.function_offset > 0, "{text}");
    assert!(text.contains("in middle+0x"), "{text}");
}

#[test]
fn unwinds_out_of_a_blocking_read_in_libc() {
    let bin = build("chain-read", &["-g", "-O2"]);
    let t = start(&bin, &["1"]);
    // Wait until the fixture sits in read(2) (syscall 0), then stop it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sys = std::fs::read_to_string(format!("/proc/{}/syscall", t.pid())).unwrap_or_default();
        if sys.starts_with("0 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fixture never blocked in read: {sys:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(t.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    assert_eq!(t.wait_stop(), Signal::SIGSTOP);
    let frames = backtrace(&t);
    let text = render(&frames);
    assert!(
        frames[0]
            .module_name()
            .is_some_and(|m| m.starts_with("libc")),
        "frame 0 not in libc:\n{text}"
    );
    assert_chain(&frames, line_of("READ_INNER"));
}

#[test]
fn unwinds_out_of_the_vdso() {
    // Bound at load time: a sample inside the lazy-binding trampoline
    // (_dl_runtime_resolve, whose CFA is in rbx, which framehop cannot
    // follow) would lose the frame that called it.
    let bin = build("chain-vdso", &["-g", "-O0", "-Wl,-z,now"]);
    let t = start(&bin, &["2"]);
    let pid = t.pid();
    // The fixture stops itself just before its loop.
    assert_eq!(t.wait_stop(), Signal::SIGSTOP);
    ptrace::cont(pid, None).expect("PTRACE_CONT");
    let maps = ModuleMap::read(pid.as_raw()).expect("read maps");
    let mut unwinder = Unwinder::new();
    let mut symbolizer = Symbolizer::new();
    let (mut in_vdso, mut samples) = (0, 0);
    // Sample the clock_gettime loop until a few stops land in the vdso;
    // every stop, in the vdso or not, must unwind to main. (A loaded
    // machine can take thousands of samples to land one there: 2,000 once
    // found none while other test suites ran beside it.)
    while in_vdso < 5 && samples < 10_000 {
        samples += 1;
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        assert_eq!(t.wait_stop(), Signal::SIGSTOP);
        let addrs = unwinder.unwind(pid.as_raw(), &maps, t.regs(), 64);
        let frames = symbolizer.symbolize(&maps, &addrs, true);
        let text = render(&frames);
        if frames[0].module.as_deref() == Some("[vdso]") {
            in_vdso += 1;
            assert!(frames[0].function.is_some(), "vdso frame unnamed:\n{text}");
        }
        // The first sample may still be on the way out of the raise.
        assert_chain_from(&frames, &[line_of("CLOCK_INNER"), line_of("CLOCK_READY")]);
        // Resume without delivering the SIGSTOP.
        ptrace::cont(pid, None).expect("PTRACE_CONT");
    }
    assert!(in_vdso > 0, "no sample in the vdso out of {samples}");
}

#[test]
fn inlined_functions_are_reported_with_their_caller() {
    let bin = build("chain-inline", &["-g", "-O2", "-DINLINE_MIDDLE"]);
    let t = start_stopped(&bin, 0);
    let frames = backtrace(&t);
    let text = render(&frames);
    let inner = position(&frames, "inner").unwrap_or_else(|| panic!("{text}"));
    // One return address, two functions: the call to inner is in middle's
    // code, which sits inlined in outer.
    let f = &frames[inner + 1];
    assert_eq!(f.function.as_deref(), Some("middle"), "{text}");
    assert_eq!(f.line, Some(line_of("CALL_INNER")), "{text}");
    assert_eq!(f.inlined_into.len(), 1, "{text}");
    assert_eq!(
        f.inlined_into[0].function.as_deref(),
        Some("outer"),
        "{text}"
    );
    assert_eq!(
        f.inlined_into[0].line,
        Some(line_of("CALL_MIDDLE")),
        "{text}"
    );
    assert!(text.contains("[inlined into outer at "), "{text}");
    let main = &frames[inner + 2];
    assert_eq!(main.function.as_deref(), Some("main"), "{text}");
    assert_eq!(main.line, Some(line_of("CALL_OUTER")), "{text}");
}

#[test]
fn symbolizes_after_the_process_has_exited() {
    // The supervisor unwinds when an fd is created and symbolizes only if
    // a report needs it, maybe after the process is gone.
    let bin = build("chain-exited", &["-g", "-O0"]);
    let (maps, addrs) = {
        let t = start_stopped(&bin, 0);
        let maps = ModuleMap::read(t.pid().as_raw()).expect("read maps");
        let addrs = Unwinder::new().unwind(t.pid().as_raw(), &maps, t.regs(), 64);
        (maps, addrs)
    };
    let frames = Symbolizer::new().symbolize(&maps, &addrs, true);
    assert_chain(&frames, line_of("STOP_INNER"));
}

#[test]
fn handles_a_binary_deleted_while_it_runs() {
    let bin = build("chain-deleted", &["-g", "-O0"]);
    let t = start_stopped(&bin, 0);
    std::fs::remove_file(&bin).expect("delete fixture");
    let maps = ModuleMap::read(t.pid().as_raw()).expect("read maps");
    let m = maps.mapping_of(t.regs().ip).map(|m| m.path.clone());
    let own = maps
        .mappings()
        .iter()
        .find(|m| m.path.ends_with("chain-deleted"))
        .expect("fixture mapping");
    assert!(own.deleted, "{own:?}");
    let addrs = Unwinder::new().unwind(t.pid().as_raw(), &maps, t.regs(), 64);
    let frames = Symbolizer::new().symbolize(&maps, &addrs, true);
    let text = render(&frames);
    let map_file = format!("/proc/{}/map_files/{:x}-{:x}", t.pid(), own.start, own.end);
    if std::fs::File::open(map_file).is_ok() {
        // /proc/PID/map_files serves the deleted file (to root).
        assert_chain(&frames, line_of("STOP_INNER"));
    } else {
        // Without it: no unwind info and no symbols for the binary, but the
        // frame-pointer chain and module offsets still work.
        assert!(frames.len() > 3, "{m:?}\n{text}");
    }
}

#[test]
fn a_rebuilt_binary_is_read_again() {
    let mut unwinder = Unwinder::new();
    let mut symbolizer = Symbolizer::new();
    let mut run = |flags: &[&str]| {
        let bin = build("chain-rebuilt", flags);
        let t = start_stopped(&bin, 0);
        let maps = ModuleMap::read(t.pid().as_raw()).expect("read maps");
        let addrs = unwinder.unwind(t.pid().as_raw(), &maps, t.regs(), 64);
        symbolizer.symbolize(&maps, &addrs, true)
    };
    // Same path, different code: the caches must not serve the first
    // build's unwind info or line table for the second.
    assert_chain(&run(&["-g", "-O0"]), line_of("STOP_INNER"));
    assert_chain(
        &run(&["-g", "-O2", "-fomit-frame-pointer"]),
        line_of("STOP_INNER"),
    );
}

#[test]
fn stops_cleanly_on_garbage_registers() {
    let bin = build("chain-garbage", &["-g", "-O0"]);
    let t = start_stopped(&bin, 0);
    let maps = ModuleMap::read(t.pid().as_raw()).expect("read maps");
    let mut unwinder = Unwinder::new();
    for regs in [
        StartRegs {
            ip: 0,
            sp: 0,
            bp: 0,
        },
        StartRegs {
            ip: 0x1234,
            sp: 8,
            bp: 0xdead_beef,
        },
        StartRegs {
            ip: u64::MAX,
            sp: u64::MAX,
            bp: u64::MAX,
        },
    ] {
        let unwound = unwinder.unwind_detailed(t.pid().as_raw(), &maps, regs, 64);
        assert_ne!(unwound.stop, StopReason::MaxFrames);
        let addrs = unwound.frames;
        assert_eq!(addrs.first(), Some(&regs.ip));
        let frames = Symbolizer::new().symbolize(&maps, &addrs, true);
        assert_eq!(frames.len(), addrs.len());
    }
    assert!(unwinder
        .unwind(t.pid().as_raw(), &maps, t.regs(), 0)
        .is_empty());
    assert_eq!(
        unwinder.unwind(t.pid().as_raw(), &maps, t.regs(), 2).len(),
        2
    );
}

/// How long a ten-frame stack takes to unwind and symbolize, cold and
/// cached. Prints the numbers (run with --nocapture to see them); asserts
/// only a generous bound on the cached unwind.
#[test]
fn timing_of_a_ten_frame_stack() {
    let bin = build("chain-timing", &["-g", "-O0"]);
    let t = start_stopped(&bin, 1);
    let pid = t.pid().as_raw();
    let regs = t.regs();

    let t0 = Instant::now();
    let maps = ModuleMap::read(pid).expect("read maps");
    let read_maps = t0.elapsed();

    let mut unwinder = Unwinder::new();
    let t0 = Instant::now();
    let addrs = unwinder.unwind(pid, &maps, regs, 64);
    let cold_unwind = t0.elapsed();

    let mut symbolizer = Symbolizer::new();
    let t0 = Instant::now();
    let frames = symbolizer.symbolize(&maps, &addrs, true);
    let cold_symbolize = t0.elapsed();

    const N: u32 = 200;
    let t0 = Instant::now();
    for _ in 0..N {
        std::hint::black_box(unwinder.unwind(pid, &maps, regs, 64));
    }
    let warm_unwind = t0.elapsed() / N;
    let t0 = Instant::now();
    for _ in 0..N {
        std::hint::black_box(symbolizer.symbolize(&maps, &addrs, true));
    }
    let warm_symbolize = t0.elapsed() / N;
    let t0 = Instant::now();
    for _ in 0..N {
        std::hint::black_box(ModuleMap::read(pid).expect("read maps"));
    }
    let warm_maps = t0.elapsed() / N;

    eprintln!(
        "{} frames:\n{}ModuleMap::read: first {read_maps:?}, then {warm_maps:?}\n\
         unwind: first {cold_unwind:?}, cached {warm_unwind:?}\n\
         symbolize: first {cold_symbolize:?}, cached {warm_symbolize:?}",
        frames.len(),
        render(&frames)
    );
    assert!(frames.len() >= 10, "{}", render(&frames));
    assert!(warm_unwind < Duration::from_millis(5), "{warm_unwind:?}");
}
