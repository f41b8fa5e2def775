//! The text of an exception report and of the error summary, for the
//! supervisor and for the shim alone (`handles run --no-ptrace`), which
//! write the same lines for the same event.
//!
//! A report, every line starting with `handles: ` so that a program's own
//! stderr can be told apart from ours:
//!
//! ```text
//! handles: <== policy exception: bad-handle (action allow-exception)
//! handles:     process 4242 (prog) thread 4242 (prog)
//! handles:     syscall read(5, 0x7ffd2a10, 4096)
//! handles:     handle 0x3a1f2c07 (fd 5): closed pipe pipe:[81234]
//! handles:     use of a closed handle (quarantined)
//! handles:     the call fails with EBADF; SIGTRAP follows
//! handles: backtrace:
//! handles:     #0 ...
//! handles: closed by close() in process 4242 at:
//! handles:     (no stack recorded)
//! ```
//!
//! What the lines say comes from elsewhere in this crate where it is
//! decided: the kinds' sentences and the outcome from [`crate::judge`],
//! the condition and action names from [`crate::policy`]. Here is their
//! shape: the head ([`Head`]), the handle line ([`HandleLine`]), the
//! stacks' titles ([`Title`]) and frame lines, and the summary
//! ([`Summary`]). Nothing allocates; the writer is any
//! [`core::fmt::Write`] (the shim's is a stack buffer).

use core::fmt::{self, Display, Write};

/// What every line of ours starts with.
pub const PREFIX: &str = "handles: ";
/// What every line under a heading starts with.
const DETAIL: &str = "handles:     ";

/// A writer for report text. Names and paths are bytes that may not be
/// UTF-8: [`Sink::raw`] writes them as they are where the writer can (the
/// shim writes bytes to fd 2), else lossily ([`Lossy`]).
pub trait Sink: Write {
    fn raw(&mut self, b: &[u8]) -> fmt::Result {
        for chunk in b.utf8_chunks() {
            self.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                self.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

/// A [`Sink`] over any [`Write`] (a `String`): bytes that are not UTF-8
/// become U+FFFD.
pub struct Lossy<W>(pub W);

impl<W: Write> Write for Lossy<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(s)
    }
}

impl<W: Write> Sink for Lossy<W> {}

/// A syscall with its arguments, the way strace writes ints and pointers:
/// fd arguments in decimal, small values in decimal, the rest in hex.
pub struct SyscallText<'a> {
    pub name: &'a str,
    pub args: &'a [u64],
    /// How many of `args` the syscall takes.
    pub nargs: usize,
    /// Bit i set: argument i is an fd.
    pub fd_mask: u8,
}

impl Display for SyscallText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.name)?;
        for (i, &a) in self.args.iter().take(self.nargs).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if self.fd_mask & (1 << i) != 0 {
                write!(f, "{}", a as i32)?;
            } else if a < 0x10000 {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a:#x}")?;
            }
        }
        f.write_str(")")
    }
}

/// What a report says of the handle involved (after `handle `).
pub enum HandleLine<'a> {
    /// A handle that was closed: its value, fd, object type, koid and
    /// name (each left out when empty or 0).
    Closed {
        value: &'a dyn Display,
        fd: i32,
        ty: &'a str,
        koid: u64,
        name: &'a [u8],
    },
    /// A number that is not open, and never was as far as we know.
    NotOpen { fd: i32 },
    /// Written elsewhere (the supervisor keeps the line as text).
    Text(&'a str),
}

impl HandleLine<'_> {
    /// The line's content, without its prefix.
    pub fn write_to(&self, w: &mut (impl Sink + ?Sized)) -> fmt::Result {
        match *self {
            HandleLine::Closed {
                value,
                fd,
                ty,
                koid,
                name,
            } => {
                write!(w, "{value} (fd {fd}): closed")?;
                if !ty.is_empty() {
                    write!(w, " {ty}")?;
                }
                if koid != 0 {
                    write!(w, " koid {koid}")?;
                }
                if !name.is_empty() {
                    w.write_str(" ")?;
                    w.raw(name)?;
                }
                Ok(())
            }
            HandleLine::NotOpen { fd } => write!(w, "fd {fd}: not open"),
            HandleLine::Text(t) => w.write_str(t),
        }
    }
}

/// A report's lines before its stacks.
pub struct Head<'a> {
    /// The policy condition (`bad-handle`, `new-pipe`, ...).
    pub condition: &'a dyn Display,
    pub action: &'a dyn Display,
    pub pid: i32,
    pub process: &'a [u8],
    pub tid: i32,
    pub thread: &'a [u8],
    pub syscall: &'a dyn Display,
    pub handle: Option<HandleLine<'a>>,
    /// What went wrong, in words (`judge::Kind::sentence`).
    pub what: &'a dyn Display,
    /// What happens next (`judge::write_outcome`).
    pub outcome: &'a dyn Display,
}

impl Head<'_> {
    pub fn write_to(&self, w: &mut (impl Sink + ?Sized)) -> fmt::Result {
        writeln!(
            w,
            "{PREFIX}<== policy exception: {} (action {})",
            self.condition, self.action
        )?;
        write!(w, "{DETAIL}process {} (", self.pid)?;
        w.raw(self.process)?;
        write!(w, ") thread {} (", self.tid)?;
        w.raw(self.thread)?;
        writeln!(w, ")")?;
        writeln!(w, "{DETAIL}syscall {}", self.syscall)?;
        if let Some(h) = &self.handle {
            write!(w, "{DETAIL}handle ")?;
            h.write_to(w)?;
            writeln!(w)?;
        }
        writeln!(w, "{DETAIL}{}", self.what)?;
        writeln!(w, "{DETAIL}{}", self.outcome)
    }
}

/// The title of one of a report's stacks.
#[derive(Clone, Copy)]
pub enum Title<'a> {
    /// The offending call's.
    Backtrace,
    /// Where the handle was closed: `closed[ by HOW] in process PID at`.
    Closed { how: Option<&'a str>, pid: i32 },
    /// Where it was made: `originally ORIGIN in process PID at` (`opened
    /// by openat()`, `inherited`, ...).
    Opened { origin: &'a str, pid: i32 },
}

impl Title<'_> {
    /// The title of the offending call's stack, as it stands in a
    /// report's structured form.
    pub const BACKTRACE: &'static str = "backtrace";

    /// Whether a stack's title names the offending call's stack or the
    /// one that closed the handle: what tells two reports' contexts apart.
    pub fn is_context(title: &str) -> bool {
        title == Self::BACKTRACE || title.starts_with("closed by")
    }
}

impl Display for Title<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Title::Backtrace => f.write_str(Title::BACKTRACE),
            Title::Closed { how: None, pid } => write!(f, "closed in process {pid} at"),
            Title::Closed {
                how: Some(how),
                pid,
            } => {
                write!(f, "closed by {how} in process {pid} at")
            }
            Title::Opened { origin, pid } => write!(f, "originally {origin} in process {pid} at"),
        }
    }
}

/// The title of the stack where the handle before the last at a reused
/// number was closed: `the number was reused: the stale copy may instead
/// be of the handle before it, HANDLE, closed[ by HOW] in process PID
/// at`. The program passed only the number, so its stale copy may be of
/// either handle.
pub struct EarlierTitle<'a> {
    pub handle: HandleLine<'a>,
    pub how: Option<&'a str>,
    pub pid: i32,
}

impl EarlierTitle<'_> {
    /// The words that open the title.
    pub const LEAD: &'static str =
        "the number was reused: the stale copy may instead be of the handle before it,";

    /// The title's content, without its prefix.
    pub fn write_to(&self, w: &mut (impl Sink + ?Sized)) -> fmt::Result {
        write!(w, "{} ", Self::LEAD)?;
        self.handle.write_to(w)?;
        let closed = Title::Closed {
            how: self.how,
            pid: self.pid,
        };
        write!(w, ", {closed}")
    }

    /// The title's line.
    pub fn write_line(&self, w: &mut (impl Sink + ?Sized)) -> fmt::Result {
        w.write_str(PREFIX)?;
        self.write_to(w)?;
        writeln!(w, ":")
    }
}

/// A stack's title line.
pub fn write_title(w: &mut (impl Sink + ?Sized), title: &dyn Display) -> fmt::Result {
    writeln!(w, "{PREFIX}{title}:")
}

/// The line of a stack with no frames.
pub fn write_no_stack(w: &mut (impl Sink + ?Sized)) -> fmt::Result {
    writeln!(w, "{DETAIL}(no stack recorded)")
}

/// A frame's line.
pub fn write_frame(w: &mut (impl Sink + ?Sized), frame: &dyn Display) -> fmt::Result {
    writeln!(w, "{DETAIL}{frame}")
}

/// A frame's line whose text is bytes (a symbolizer's output).
pub fn write_frame_raw(w: &mut (impl Sink + ?Sized), frame: &[u8]) -> fmt::Result {
    w.write_str(DETAIL)?;
    w.raw(frame)?;
    writeln!(w)
}

/// The start of a frame's line that the caller finishes, for frames made
/// of parts (`#3 0x... (prog+0x1234)`, a Python frame).
pub fn write_frame_start(w: &mut (impl Sink + ?Sized), index: usize) -> fmt::Result {
    write!(w, "{DETAIL}#{index} ")
}

/// valgrind's closing line: `ERROR SUMMARY: N exceptions from C contexts
/// (S suppressed)`.
pub struct Summary {
    pub exceptions: u64,
    pub contexts: u64,
    pub suppressed: u64,
    /// Written by one process of the job for itself (the shim alone, in a
    /// process that is not the job's first).
    pub this_process: bool,
}

impl Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |n: u64| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{PREFIX}ERROR SUMMARY: {} exception{} from {} context{} ({} suppressed){}",
            self.exceptions,
            s(self.exceptions),
            self.contexts,
            s(self.contexts),
            self.suppressed,
            if self.this_process {
                " in this process"
            } else {
                ""
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed-size writer: the model has no String.
    struct Buf {
        b: [u8; 1024],
        n: usize,
    }

    impl Buf {
        fn new() -> Buf {
            Buf { b: [0; 1024], n: 0 }
        }
        fn text(&self) -> &str {
            core::str::from_utf8(&self.b[..self.n]).expect("utf-8")
        }
    }

    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.n + s.len();
            self.b
                .get_mut(self.n..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }

    impl Sink for Buf {}

    #[test]
    fn a_bad_handle_report() {
        let mut w = Buf::new();
        let head = Head {
            condition: &"bad-handle",
            action: &"allow-exception",
            pid: 42,
            process: b"prog",
            tid: 43,
            thread: b"worker",
            syscall: &SyscallText {
                name: "read",
                args: &[5, 0x7ffd_2a10, 4096, 0, 0, 0],
                nargs: 3,
                fd_mask: 0b1,
            },
            handle: Some(HandleLine::Closed {
                value: &"0x3a1f2c07",
                fd: 5,
                ty: "pipe",
                koid: 0,
                name: b"pipe:[81234]",
            }),
            what: &"use of a closed handle",
            outcome: &"the call fails with EBADF; SIGTRAP follows",
        };
        head.write_to(&mut w).unwrap();
        write_title(&mut w, &Title::Backtrace).unwrap();
        write_frame(&mut w, &"#0 0x0000000000401136 (prog+0x1136)").unwrap();
        write_title(&mut w, &Title::Closed { how: None, pid: 42 }).unwrap();
        write_no_stack(&mut w).unwrap();
        write_title(
            &mut w,
            &Title::Opened {
                origin: "opened",
                pid: 42,
            },
        )
        .unwrap();
        write_frame_start(&mut w, 0).unwrap();
        w.write_str("x.py:3 in f (Python)\n").unwrap();
        assert_eq!(
            w.text(),
            "handles: <== policy exception: bad-handle (action allow-exception)\n\
             handles:     process 42 (prog) thread 43 (worker)\n\
             handles:     syscall read(5, 0x7ffd2a10, 4096)\n\
             handles:     handle 0x3a1f2c07 (fd 5): closed pipe pipe:[81234]\n\
             handles:     use of a closed handle\n\
             handles:     the call fails with EBADF; SIGTRAP follows\n\
             handles: backtrace:\n\
             handles:     #0 0x0000000000401136 (prog+0x1136)\n\
             handles: closed in process 42 at:\n\
             handles:     (no stack recorded)\n\
             handles: originally opened in process 42 at:\n\
             handles:     #0 x.py:3 in f (Python)\n"
        );
    }

    #[test]
    fn handle_lines() {
        let line = |h: HandleLine<'_>| {
            let mut w = Buf::new();
            h.write_to(&mut w).unwrap();
            let mut s = [0u8; 128];
            let n = w.n;
            s[..n].copy_from_slice(&w.b[..n]);
            (s, n)
        };
        let (s, n) = line(HandleLine::Closed {
            value: &"0x7",
            fd: 1,
            ty: "",
            koid: 9,
            name: b"",
        });
        assert_eq!(&s[..n], b"0x7 (fd 1): closed koid 9");
        let (s, n) = line(HandleLine::NotOpen { fd: 12 });
        assert_eq!(&s[..n], b"fd 12: not open");
        // A name that is not UTF-8, through a lossy writer.
        let (s, n) = line(HandleLine::Closed {
            value: &"0x7",
            fd: 1,
            ty: "file",
            koid: 0,
            name: b"/tmp/a\xffb",
        });
        assert_eq!(
            &s[..n],
            "0x7 (fd 1): closed file /tmp/a\u{fffd}b".as_bytes()
        );
    }

    #[test]
    fn syscalls_are_written_like_strace() {
        let mut w = Buf::new();
        let close = SyscallText {
            name: "close",
            args: &[u64::MAX, 0, 0, 0, 0, 0],
            nargs: 1,
            fd_mask: 0b1,
        };
        write!(w, "{close}").unwrap();
        assert_eq!(w.text(), "close(-1)");
    }

    #[test]
    fn summaries() {
        let mut w = Buf::new();
        let one = Summary {
            exceptions: 1,
            contexts: 1,
            suppressed: 0,
            this_process: true,
        };
        write!(w, "{one}").unwrap();
        assert_eq!(
            w.text(),
            "handles: ERROR SUMMARY: 1 exception from 1 context (0 suppressed) in this process"
        );
        let mut w = Buf::new();
        let many = Summary {
            exceptions: 3,
            contexts: 2,
            suppressed: 4,
            this_process: false,
        };
        write!(w, "{many}").unwrap();
        assert_eq!(
            w.text(),
            "handles: ERROR SUMMARY: 3 exceptions from 2 contexts (4 suppressed)"
        );
        assert!(Title::is_context("backtrace"));
        assert!(Title::is_context("closed by close() in process 1 at"));
        assert!(!Title::is_context("originally inherited in process 1 at"));
    }
}
