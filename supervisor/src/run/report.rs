//! Exception reports, in the spirit of Zircon's crash reports: what
//! happened, where, to which handle, and the three stacks that explain it
//! (the offending call, where the handle was closed, where it was opened).
//!
//! Every line starts with `handles: ` so that a program's own stderr can be
//! told apart from ours.

use std::fmt::Write;

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
        for s in self
            .sections
            .iter()
            .filter(|s| s.title == "backtrace" || s.title.starts_with("closed by"))
        {
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
        let _ = writeln!(
            s,
            "handles: <== policy exception: {} (action {})",
            self.condition, self.action
        );
        let _ = writeln!(
            s,
            "handles:     process {} ({}) thread {} ({})",
            self.pid, self.process_name, self.tid, self.thread_name
        );
        let _ = writeln!(s, "handles:     syscall {}", self.syscall);
        if let Some(h) = &self.handle {
            let _ = writeln!(s, "handles:     handle {h}");
        }
        let _ = writeln!(s, "handles:     {}", self.what);
        let _ = writeln!(s, "handles:     {}", self.outcome);
        for sec in &self.sections {
            let _ = writeln!(s, "handles: {}:", sec.title);
            if sec.frames.is_empty() {
                let _ = writeln!(s, "handles:     (no stack recorded)");
            }
            for f in &sec.frames {
                let _ = writeln!(s, "handles:     {f}");
            }
        }
        s
    }
}

/// Formats a syscall with its arguments the way strace does for ints and
/// pointers: fd arguments in decimal, the rest in hex.
pub fn format_syscall(name: &str, args: &[u64], nargs: usize, fd_mask: u8) -> String {
    let mut s = format!("{name}(");
    for (i, a) in args.iter().take(nargs).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        if fd_mask & (1 << i) != 0 {
            let _ = write!(s, "{}", *a as i32);
        } else if *a < 0x10000 {
            let _ = write!(s, "{a}");
        } else {
            let _ = write!(s, "{a:#x}");
        }
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
