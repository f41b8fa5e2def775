//! Exception reports, in the spirit of Zircon's crash reports: what
//! happened, where, to which handle, and the three stacks that explain it
//! (the offending call, where the handle was closed, where it was opened).
//!
//! The text is `handles_model::report`'s, which the shim writes too when
//! no supervisor does; here is what the supervisor keeps of a report
//! until it writes it (and puts in the JSON report).

use handles_model::report::{self, HandleLine, Head, Lossy, Sink, SyscallText, Title};

use crate::backtrace::Frame;

/// A symbolized stack with a caption.
pub struct Section {
    pub title: String,
    pub frames: Vec<Frame>,
}

pub struct ExceptionReport {
    /// `bad-handle`, `new-file`, ...
    pub condition: String,
    /// Finer than the condition: `double-close`, `use-closed`, `new-pipe`...
    pub kind: String,
    /// The fd involved, when there is one.
    pub fd: Option<i32>,
    pub action: String,
    pub pid: i32,
    pub tid: i32,
    pub process_name: String,
    pub thread_name: String,
    /// `read(5, 0x7ffd2a10, 4096)`
    pub syscall: String,
    /// One line about the handle involved.
    pub handle: Option<String>,
    /// The same handle as the JSON report has it.
    pub handle_json: Option<crate::json::Handle<'static>>,
    /// What went wrong, in words.
    pub what: String,
    /// What happens next (`the call fails with EBADF; SIGTRAP follows`).
    pub outcome: String,
    pub sections: Vec<Section>,
}

impl ExceptionReport {
    /// What makes two reports the same context: the condition and kind,
    /// and the code locations (module and offset, the same in every
    /// process of a program) of the offending stack and of the stack that
    /// closed the handle.
    pub fn context_key(&self) -> String {
        let mut key = format!("{}/{}", self.condition, self.kind);
        for s in self.sections.iter().filter(|s| Title::is_context(&s.title)) {
            key.push('|');
            for f in &s.frames {
                key.push_str(&format!(
                    " {}+{:x}",
                    f.module.as_deref().unwrap_or("?"),
                    f.module_offset
                ));
            }
        }
        key
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.render_to(&mut Lossy(&mut s));
        s
    }

    fn render_to(&self, w: &mut impl Sink) -> std::fmt::Result {
        Head {
            condition: &self.condition,
            action: &self.action,
            pid: self.pid,
            process: self.process_name.as_bytes(),
            tid: self.tid,
            thread: self.thread_name.as_bytes(),
            syscall: &self.syscall,
            handle: self.handle.as_deref().map(HandleLine::Text),
            what: &self.what,
            outcome: &self.outcome,
        }
        .write_to(w)?;
        for sec in &self.sections {
            report::write_title(w, &sec.title)?;
            if sec.frames.is_empty() {
                report::write_no_stack(w)?;
            }
            for f in &sec.frames {
                report::write_frame(w, f)?;
            }
        }
        Ok(())
    }
}

/// Formats a syscall with its arguments the way strace does for ints and
/// pointers: fd arguments in decimal, the rest in hex.
pub fn format_syscall(name: &str, args: &[u64], nargs: usize, fd_mask: u8) -> String {
    SyscallText {
        name,
        args,
        nargs,
        fd_mask,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(index: usize, module: &str, offset: u64) -> Frame {
        Frame {
            index,
            addr: 0x5555_0000_0000 + offset,
            module: Some(module.into()),
            module_offset: offset,
            function: Some("use_after_close".into()),
            function_offset: 0,
            file: Some("/src/fixture.c".into()),
            line: Some(42),
            inlined_into: Vec::new(),
            python: false,
        }
    }

    fn report(closer_frames: Vec<Frame>) -> ExceptionReport {
        ExceptionReport {
            condition: "bad-handle".into(),
            kind: "use-closed".into(),
            fd: Some(5),
            action: "allow-exception".into(),
            pid: 42,
            tid: 43,
            process_name: "fixture".into(),
            thread_name: "worker".into(),
            syscall: format_syscall("read", &[5, 0x7ffd_2a10, 4096, 0, 0, 0], 3, 0b1),
            handle: Some("0x3a1f2c07 (fd 5): closed pipe pipe:[81234]".into()),
            handle_json: None,
            what: "use of a closed handle".into(),
            outcome: "the call fails with EBADF; SIGTRAP follows".into(),
            sections: vec![
                Section {
                    title: Title::Backtrace.to_string(),
                    frames: vec![frame(0, "/bin/fixture", 0x11c9)],
                },
                Section {
                    title: Title::Closed {
                        how: Some("close()"),
                        pid: 42,
                    }
                    .to_string(),
                    frames: closer_frames,
                },
                Section {
                    title: Title::Opened {
                        origin: "opened by pipe2()",
                        pid: 42,
                    }
                    .to_string(),
                    frames: vec![frame(0, "/bin/fixture", 0x1000)],
                },
            ],
        }
    }

    /// The supervisor's report, line by line as the integration tests and
    /// users see it (the shim writes the same lines, tested in the model).
    #[test]
    fn a_report_renders_every_line() {
        assert_eq!(
            report(Vec::new()).render(),
            "handles: <== policy exception: bad-handle (action allow-exception)\n\
             handles:     process 42 (fixture) thread 43 (worker)\n\
             handles:     syscall read(5, 0x7ffd2a10, 4096)\n\
             handles:     handle 0x3a1f2c07 (fd 5): closed pipe pipe:[81234]\n\
             handles:     use of a closed handle\n\
             handles:     the call fails with EBADF; SIGTRAP follows\n\
             handles: backtrace:\n\
             handles:     #0 0x00005555000011c9 in use_after_close at /src/fixture.c:42 (fixture+0x11c9)\n\
             handles: closed by close() in process 42 at:\n\
             handles:     (no stack recorded)\n\
             handles: originally opened by pipe2() in process 42 at:\n\
             handles:     #0 0x0000555500001000 in use_after_close at /src/fixture.c:42 (fixture+0x1000)\n"
        );
    }

    #[test]
    fn the_context_is_the_offending_and_the_closing_stacks() {
        let a = report(vec![frame(0, "/bin/fixture", 0x2000)]);
        let mut b = report(vec![frame(0, "/bin/fixture", 0x2000)]);
        // Where the handle was opened does not make another context.
        b.sections[2].frames = vec![frame(0, "/bin/fixture", 0x3000)];
        assert_eq!(a.context_key(), b.context_key());
        let c = report(vec![frame(0, "/bin/fixture", 0x2004)]);
        assert_ne!(a.context_key(), c.context_key());
    }

    #[test]
    fn syscall_formatting() {
        assert_eq!(
            format_syscall("read", &[5, 0x7ffd_2a10, 4096, 0, 0, 0], 3, 0b1),
            "read(5, 0x7ffd2a10, 4096)"
        );
        assert_eq!(
            format_syscall("close", &[u64::MAX, 0, 0, 0, 0, 0], 1, 0b1),
            "close(-1)"
        );
    }
}
