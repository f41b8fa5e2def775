//! Where the shim's reports go: a stack buffer flushed to fd 2 with raw
//! writes (no allocation, no stdio: a report may be written from inside
//! a libc call). The report writer (report.rs) and the Python frames'
//! (python.rs) both write through it.

use core::fmt::Write;

use handles_model::report::Sink;

use crate::sys;

/// A 2 KiB stack buffer that flushes to fd 2 when full.
pub(crate) struct Out {
    buf: [u8; 2048],
    n: usize,
}

impl Out {
    pub(crate) fn new() -> Out {
        Out {
            buf: [0; 2048],
            n: 0,
        }
    }

    pub(crate) fn flush(&mut self) {
        sys::write_all(2, &self.buf[..self.n]);
        self.n = 0;
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        for chunk in b.chunks(512) {
            if self.n + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.n..self.n + chunk.len()].copy_from_slice(chunk);
            self.n += chunk.len();
        }
    }
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

impl Sink for Out {
    fn raw(&mut self, b: &[u8]) -> core::fmt::Result {
        self.bytes(b);
        Ok(())
    }
}
