//! `handles watch PID|--all`: a live view, redrawn in place like top, or
//! one line per interval when stdout is not a terminal.
//!
//! The terminal is put in a non-canonical, no-echo mode (so `q` arrives
//! at once and is not echoed) and restored on every way out: `q`, the
//! watched process exiting, an error, and SIGINT/SIGTERM/SIGHUP, which
//! only set a flag that the loop's poll(2) returns for (EINTR).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use handles_supervisor::inspect::machine;
use handles_supervisor::inspect::{resolve_tgid, InspectError, Inspector, Options, Snapshot};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use crate::args::WatchArgs;
use crate::exit;

/// The signal that ended the watch, 0 while none did.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Restores the terminal's mode when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter(fd: BorrowedFd<'_>) -> nix::Result<RawMode> {
        let saved = termios::tcgetattr(fd)?;
        let mut t = saved.clone();
        // No line buffering and no echo; ISIG stays, so Ctrl-C is a
        // SIGINT that ends the watch the same way as `kill -INT`.
        t.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
        t.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
        t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(fd, SetArg::TCSANOW, &t)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn isatty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Waits up to `d` for a key on stdin (when `keys`). Returns the key
/// read, or None on timeout or signal.
fn wait_key(d: Duration, keys: bool) -> Option<u8> {
    let deadline = Instant::now() + d;
    loop {
        if SIGNALLED.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        if !keys {
            // SAFETY: poll with no descriptors is a sleep that a signal
            // interrupts.
            unsafe { libc::poll(std::ptr::null_mut(), 0, ms) };
            continue;
        }
        let mut p = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into a local buffer.
            let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) };
            if n == 1 {
                return Some(b[0]);
            }
            // End of input: no more keys, keep the interval.
            if n == 0 {
                // SAFETY: as above, a plain sleep for the rest.
                unsafe { libc::poll(std::ptr::null_mut(), 0, ms) };
            }
        }
    }
}

fn install_signals() {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(s, &act) };
    }
}

fn error_code(e: &InspectError) -> u8 {
    match e {
        InspectError::NoSuchProcess(_) => exit::NO_SUCH_PROCESS,
        InspectError::PermissionDenied(_) => exit::PERMISSION,
        InspectError::Io { .. } => exit::IO,
    }
}

/// A handle or a process of one read.
struct Item {
    /// Identity across reads: fd, koid and type of a handle (a number
    /// reused for another object is a new handle), a process's pid.
    key: String,
    /// What the view shows of it.
    text: String,
    /// A process's handle count (--all); 1 for a handle.
    count: usize,
}

/// One read of what is watched.
struct Frame {
    total: usize,
    types: BTreeMap<&'static str, usize>,
    /// The handles (PID mode) or processes (--all), to tell what is new.
    items: Vec<Item>,
    /// Creation sites and how many open handles each made (job processes).
    sites: HashMap<String, usize>,
}

fn site_of(c: &handles_supervisor::inspect::stacks::Creation, ty: &str) -> String {
    // The first frame with a source line outside libc: the program's call.
    let f = c
        .frames
        .iter()
        .find(|f| f.file.is_some() && !f.module_name().is_some_and(|m| m.starts_with("libc")))
        .or_else(|| c.frames.first());
    let how = c.how.describe().unwrap_or_else(|| "?".into());
    match f {
        Some(f) => {
            let func = f.function.as_deref().unwrap_or("??");
            match (&f.file, f.line) {
                (Some(file), Some(line)) => format!("{ty} by {how} in {func} at {file}:{line}"),
                _ => format!(
                    "{ty} by {how} in {func} ({}+{:#x})",
                    f.module_name().unwrap_or("?"),
                    f.module_offset
                ),
            }
        }
        None => format!("{ty} by {how}"),
    }
}

fn read_pid(inspector: &mut Inspector, pid: i32) -> Result<Frame, InspectError> {
    let snap: Snapshot = inspector
        .read_many(&[pid])
        .pop()
        .unwrap_or(Err(InspectError::NoSuchProcess(pid)))?;
    let mut types = BTreeMap::new();
    let mut sites = HashMap::new();
    for h in &snap.handles {
        *types.entry(h.ty).or_default() += 1;
        if let Some(c) = &h.created {
            *sites.entry(site_of(c, h.ty)).or_default() += 1;
        }
    }
    let items = snap
        .handles
        .iter()
        .map(|h| Item {
            key: format!("{}:{}:{}", h.fd, h.koid, h.ty),
            text: format!(
                "{:#010x} fd {} {} koid {} {}",
                h.handle, h.fd, h.ty, h.koid, h.target
            ),
            count: 1,
        })
        .collect();
    Ok(Frame {
        total: snap.handles.len(),
        types,
        items,
        sites,
    })
}

fn read_all() -> io::Result<Frame> {
    let rows = machine::scan(None)?;
    let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in &rows {
        for (t, n) in &r.types {
            *types.entry(t).or_default() += n;
        }
    }
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| b.handle_count.cmp(&a.handle_count).then(a.pid.cmp(&b.pid)));
    Ok(Frame {
        total: rows.iter().map(|r| r.handle_count).sum(),
        types,
        items: sorted
            .iter()
            .map(|r| Item {
                key: r.pid.to_string(),
                text: r.name.clone(),
                count: r.handle_count,
            })
            .collect(),
        sites: HashMap::new(),
    })
}

fn signed(d: i64) -> String {
    if d > 0 {
        format!("+{d}")
    } else {
        d.to_string()
    }
}

pub fn run(a: &WatchArgs) -> u8 {
    let target = match &a.pid {
        Some(p) => match p.trim().parse::<i32>() {
            Ok(n) if n > 0 => Some(match resolve_tgid(n) {
                Ok((tgid, _)) => tgid,
                Err(_) => n,
            }),
            _ => {
                eprintln!("handles: '{p}' is not a process id");
                return exit::USAGE;
            }
        },
        None => None,
    };
    let tty = isatty(1);
    let keys = tty && isatty(0);
    install_signals();
    let raw = if keys {
        match RawMode::enter(io::stdin().as_fd()) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("handles: cannot set the terminal's mode: {e}");
                return exit::IO;
            }
        }
    } else {
        None
    };
    let code = watch(a, target, tty, keys);
    // The terminal back as it was before anything more is printed.
    drop(raw);
    if tty {
        let mut out = io::stdout();
        let _ = write!(out, "\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
    code
}

fn watch(a: &WatchArgs, target: Option<i32>, tty: bool, keys: bool) -> u8 {
    let mut inspector = Inspector::new(Options::default()).with_stacks(true);
    let interval = Duration::from_secs_f64(a.interval);
    let start = Instant::now();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if tty {
        // The alternate screen, cursor hidden: the shell's screen comes
        // back as it was when the watch ends.
        let _ = write!(out, "\x1b[?1049h\x1b[?25l");
    }
    let mut prev: Option<Frame> = None;
    let mut history: Vec<usize> = Vec::new();
    let mut n = 0u64;
    loop {
        let frame = match target {
            Some(pid) => match read_pid(&mut inspector, pid) {
                Ok(f) => f,
                Err(e) => {
                    let code = error_code(&e);
                    if tty {
                        let _ = write!(out, "\x1b[?25h\x1b[?1049l");
                        let _ = out.flush();
                    }
                    if n > 0 && matches!(e, InspectError::NoSuchProcess(_)) {
                        eprintln!("handles: process {pid} exited");
                    } else {
                        eprintln!("handles: {e}");
                    }
                    return code;
                }
            },
            None => match read_all() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("handles: listing /proc: {e}");
                    return exit::IO;
                }
            },
        };
        n += 1;
        history.push(frame.total);
        let elapsed = start.elapsed().as_secs_f64();
        let res = if tty {
            let mut buf = Vec::new();
            screen(
                &mut buf,
                a,
                target,
                &frame,
                prev.as_ref(),
                &history,
                elapsed,
            )
            .and_then(|_| fit(&mut out, &buf))
        } else {
            line(&mut out, target, &frame, prev.as_ref(), elapsed)
        };
        if let Err(e) = res.and_then(|_| out.flush()) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return exit::OK;
            }
            eprintln!("handles: writing output: {e}");
            return exit::IO;
        }
        prev = Some(frame);
        if a.count.is_some_and(|c| n >= c) {
            return exit::OK;
        }
        if let Some(k) = wait_key(interval, keys) {
            if k == b'q' || k == b'Q' {
                return exit::OK;
            }
        }
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 {
            return (128 + sig).clamp(0, 255) as u8;
        }
    }
}

/// The terminal's height, when stdout is one that says.
fn term_rows() -> Option<usize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let r = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some(usize::from(ws.ws_row))
}

/// Writes a drawn screen, cut to the terminal's height: a line more
/// would scroll the top of the view away.
fn fit(out: &mut impl Write, screen: &[u8]) -> io::Result<()> {
    let rows = term_rows().unwrap_or(usize::MAX);
    let text = String::from_utf8_lossy(screen);
    let lines: Vec<&str> = text.split("\r\n").collect();
    let keep = lines.len().min(rows.saturating_sub(1).max(1));
    out.write_all(lines[..keep].join("\r\n").as_bytes())
}

/// Per type: (count, change since the previous read).
fn changes(frame: &Frame, prev: Option<&Frame>) -> Vec<(&'static str, usize, i64)> {
    let mut names: BTreeSet<&'static str> = frame.types.keys().copied().collect();
    if let Some(p) = prev {
        names.extend(p.types.keys().copied());
    }
    names
        .into_iter()
        .map(|t| {
            let now = frame.types.get(t).copied().unwrap_or(0);
            let before = prev.map_or(now, |p| p.types.get(t).copied().unwrap_or(0));
            (t, now, now as i64 - before as i64)
        })
        .collect()
}

/// The creation site whose open handles grew most since the last read.
fn fastest_site(frame: &Frame, prev: Option<&Frame>) -> Option<(String, i64)> {
    let prev = prev?;
    frame
        .sites
        .iter()
        .map(|(s, &n)| (s, n as i64 - prev.sites.get(s).copied().unwrap_or(0) as i64))
        .filter(|&(_, d)| d > 0)
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(s, d)| (s.clone(), d))
}

fn line(
    out: &mut impl Write,
    target: Option<i32>,
    frame: &Frame,
    prev: Option<&Frame>,
    elapsed: f64,
) -> io::Result<()> {
    let change = prev.map_or(0, |p| frame.total as i64 - p.total as i64);
    match target {
        Some(pid) => write!(out, "t={elapsed:.2}s pid={pid}")?,
        None => write!(out, "t={elapsed:.2}s all processes={}", frame.items.len())?,
    }
    write!(out, " total={} change={}", frame.total, signed(change))?;
    for (t, n, d) in changes(frame, prev) {
        if d != 0 {
            write!(out, " {t}={n}({})", signed(d))?;
        } else {
            write!(out, " {t}={n}")?;
        }
    }
    if let Some(p) = prev {
        let before: BTreeSet<&str> = p.items.iter().map(|i| i.key.as_str()).collect();
        let new = frame
            .items
            .iter()
            .filter(|i| !before.contains(i.key.as_str()))
            .count();
        if target.is_some() {
            write!(out, " new={new}")?;
        }
    }
    if let Some((site, d)) = fastest_site(frame, prev) {
        write!(out, " fastest=\"{site}\"({})", signed(d))?;
    }
    writeln!(out)
}

fn screen(
    out: &mut impl Write,
    a: &WatchArgs,
    target: Option<i32>,
    frame: &Frame,
    prev: Option<&Frame>,
    history: &[usize],
    elapsed: f64,
) -> io::Result<()> {
    let secs = a.interval;
    // Home and clear: the whole view is redrawn in place.
    write!(out, "\x1b[H\x1b[2J")?;
    match target {
        Some(pid) => write!(out, "handles watch {pid}")?,
        None => write!(out, "handles watch --all")?,
    }
    write!(out, "   every {secs}s   {elapsed:.1}s   q quits\r\n\r\n")?;
    write!(
        out,
        "{:<12} {:>8} {:>8} {:>10}\r\n",
        "type", "count", "change", "rate/s"
    )?;
    for (t, n, d) in changes(frame, prev) {
        let rate = d as f64 / secs;
        let row = format!("{t:<12} {n:>8} {:>8} {rate:>10.1}", signed(d));
        if d > 0 {
            write!(out, "\x1b[1m{row}\x1b[0m\r\n")?;
        } else {
            write!(out, "{row}\r\n")?;
        }
    }
    let change = prev.map_or(0, |p| frame.total as i64 - p.total as i64);
    write!(
        out,
        "{:<12} {:>8} {:>8} {:>10.1}\r\n",
        "total",
        frame.total,
        signed(change),
        change as f64 / secs
    )?;
    let tail: Vec<String> = history
        .iter()
        .rev()
        .take(12)
        .rev()
        .map(|n| n.to_string())
        .collect();
    write!(out, "history      {}\r\n", tail.join(" "))?;
    if let Some((site, d)) = fastest_site(frame, prev) {
        write!(out, "\r\nfastest-growing: {} created {site}\r\n", signed(d))?;
    }
    write!(out, "\r\n")?;
    let before: BTreeSet<&str> = prev
        .map(|p| p.items.iter().map(|i| i.key.as_str()).collect())
        .unwrap_or_default();
    match target {
        Some(_) => {
            // The handles new since the last read, highlighted (the
            // first 20: a screen, not a table; `handles PID` has them all).
            let mut shown = 0;
            for i in &frame.items {
                if prev.is_some() && !before.contains(i.key.as_str()) && shown < 20 {
                    write!(out, "\x1b[7mnew {}\x1b[0m\r\n", i.text)?;
                    shown += 1;
                }
            }
        }
        None => {
            write!(
                out,
                "{:>8} {:<16} {:>8} {:>8}\r\n",
                "pid", "name", "handles", "change"
            )?;
            let old: HashMap<&str, usize> = prev
                .map(|p| p.items.iter().map(|i| (i.key.as_str(), i.count)).collect())
                .unwrap_or_default();
            for i in frame.items.iter().take(20) {
                // A process that was not there before is new, not grown.
                let d = old
                    .get(i.key.as_str())
                    .map_or(0, |&o| i.count as i64 - o as i64);
                let row = format!(
                    "{:>8} {:<16.16} {:>8} {:>8}",
                    i.key,
                    i.text,
                    i.count,
                    signed(d)
                );
                if d > 0 {
                    write!(out, "\x1b[7m{row}\x1b[0m\r\n")?;
                } else {
                    write!(out, "{row}\r\n")?;
                }
            }
        }
    }
    Ok(())
}
