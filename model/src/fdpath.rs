//! Paths that show a process's fd table: the directories that list it
//! (`/proc/PID/fd`, `/proc/PID/fdinfo`, per thread under `task/TID/`) and
//! their entries as programs spell them (`/dev/fd/N`, `/dev/stdin`,
//! `/proc/self/fd/N`, `/proc/thread-self/fdinfo/N`, ...).
//!
//! The quarantine holds closed numbers with tombstones and the tools keep
//! a few fds of their own; the kernel shows all of them in these places.
//! Both layers hide them (a listing drops their entries, a lookup of one
//! answers ENOENT, as for a closed number), so they must agree on what
//! names an fd table: this module is that one definition.

/// Whose fd table a path shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// The process that resolves the path: `self`, `thread-self`,
    /// `/dev/fd`, `/dev/stdin`.
    This,
    /// Process (or thread: all threads of a process share its table) `n`.
    Pid(i32),
}

/// One entry of an fd table named by a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub whose: Whose,
    pub fd: i32,
}

/// A number as the kernel writes fd numbers and pids in /proc: decimal,
/// no sign, no leading zero, at most `i32::MAX`.
pub fn number(b: &[u8]) -> Option<i32> {
    if b.is_empty() || b.len() > 10 || (b[0] == b'0' && b.len() > 1) {
        return None;
    }
    let mut v: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    i32::try_from(v).ok()
}

/// Splits `b` at its first `/`: (component, rest after the slash), or
/// (b, None) for the last component.
fn component(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    match b.iter().position(|&c| c == b'/') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    }
}

/// `self`, `thread-self` or a pid, then optionally `task/TID`, then `fd`
/// or `fdinfo`: whose table, and what follows the directory's name.
fn proc_table(rest: &[u8]) -> Option<(Whose, Option<&[u8]>)> {
    let (who, rest) = component(rest);
    let whose = match who {
        b"self" | b"thread-self" => Whose::This,
        n => Whose::Pid(number(n)?),
    };
    let mut rest = rest?;
    if who != b"thread-self" {
        if let Some(tail) = rest.strip_prefix(b"task/") {
            let (tid, tail) = component(tail);
            number(tid)?;
            rest = tail?;
        }
    }
    let (dir, tail) = component(rest);
    if dir != b"fd" && dir != b"fdinfo" {
        return None;
    }
    Some((whose, tail))
}

/// Whose fd table the directory at `path` lists (an opened directory's
/// link target, or a path a program opens), if it is one of those.
pub fn listing(path: &[u8]) -> Option<Whose> {
    let path = path.strip_suffix(b"/").unwrap_or(path);
    if path == b"/dev/fd" {
        return Some(Whose::This);
    }
    match proc_table(path.strip_prefix(b"/proc/")?)? {
        (whose, None) => Some(whose),
        _ => None,
    }
}

/// The fd-table entry `path` names, or looks below (`/dev/fd/3/x` goes
/// through fd 3), if it names one.
pub fn entry(path: &[u8]) -> Option<Entry> {
    let std = |fd| {
        Some(Entry {
            whose: Whose::This,
            fd,
        })
    };
    if let Some(rest) = path.strip_prefix(b"/dev/") {
        let (name, tail) = component(rest);
        return match name {
            b"stdin" => std(0),
            b"stdout" => std(1),
            b"stderr" => std(2),
            b"fd" => {
                let (n, _) = component(tail?);
                std(number(n)?)
            }
            _ => None,
        };
    }
    let (whose, tail) = proc_table(path.strip_prefix(b"/proc/")?)?;
    let (n, _) = component(tail?);
    Some(Entry {
        whose,
        fd: number(n)?,
    })
}

/// Whether a path might name an fd table at all: the one test a wrapper
/// makes on every path (two byte loads), before [`entry`].
#[inline(always)]
pub fn may_name_table(path: &[u8]) -> bool {
    matches!(path, [b'/', b'p' | b'd', ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(b"0"), Some(0));
        assert_eq!(number(b"2147483647"), Some(i32::MAX));
        assert_eq!(number(b"2147483648"), None);
        assert_eq!(number(b"03"), None);
        assert_eq!(number(b""), None);
        assert_eq!(number(b"-1"), None);
        assert_eq!(number(b"3a"), None);
    }

    #[test]
    fn listings() {
        for (p, w) in [
            (&b"/proc/123/fd"[..], Some(Whose::Pid(123))),
            (b"/proc/123/fdinfo", Some(Whose::Pid(123))),
            (b"/proc/123/task/124/fd", Some(Whose::Pid(123))),
            (b"/proc/123/task/124/fdinfo/", Some(Whose::Pid(123))),
            (b"/proc/self/fd", Some(Whose::This)),
            (b"/proc/self/fdinfo", Some(Whose::This)),
            (b"/proc/thread-self/fd", Some(Whose::This)),
            (b"/proc/self/task/9/fd", Some(Whose::This)),
            (b"/dev/fd", Some(Whose::This)),
            (b"/dev/fd/", Some(Whose::This)),
            (b"/proc/123/fd/3", None),
            (b"/proc/123/task/124", None),
            (b"/proc/123/task/x/fd", None),
            (b"/proc/thread-self/task/1/fd", None),
            (b"/proc/123", None),
            (b"/proc/123/fdx", None),
            (b"/tmp/123/fd", None),
            (b"/proc/0123/fd", None),
        ] {
            assert_eq!(listing(p), w, "{}", core::str::from_utf8(p).unwrap());
        }
    }

    #[test]
    fn entries() {
        let this = |fd| {
            Some(Entry {
                whose: Whose::This,
                fd,
            })
        };
        let pid = |p, fd| {
            Some(Entry {
                whose: Whose::Pid(p),
                fd,
            })
        };
        for (p, e) in [
            (&b"/dev/fd/5"[..], this(5)),
            (b"/dev/fd/5/etc", this(5)),
            (b"/dev/stdin", this(0)),
            (b"/dev/stdout", this(1)),
            (b"/dev/stderr", this(2)),
            (b"/proc/self/fd/7", this(7)),
            (b"/proc/self/fdinfo/7", this(7)),
            (b"/proc/thread-self/fd/7", this(7)),
            (b"/proc/thread-self/fdinfo/7", this(7)),
            (b"/proc/self/task/12/fd/7", this(7)),
            (b"/proc/42/fd/7", pid(42, 7)),
            (b"/proc/42/task/43/fdinfo/8", pid(42, 8)),
            (b"/proc/42/fd/7/sub/dir", pid(42, 7)),
            (b"/dev/fd", None),
            (b"/dev/fd/x", None),
            (b"/dev/null", None),
            (b"/dev/stdinx", None),
            (b"/proc/self/fd", None),
            (b"/proc/self/fd/", None),
            (b"/proc/self/fd/07", None),
            (b"/proc/self/maps", None),
            (b"/proc/self/task/x/fd/1", None),
            (b"/etc/hostname", None),
            (b"proc/self/fd/3", None),
        ] {
            assert_eq!(entry(p), e, "{}", core::str::from_utf8(p).unwrap());
        }
    }

    #[test]
    fn the_cheap_test_lets_every_table_path_through() {
        for p in [
            &b"/dev/fd/1"[..],
            b"/dev/stdin",
            b"/proc/self/fd/1",
            b"/proc/1/fdinfo",
        ] {
            assert!(may_name_table(p));
        }
        assert!(!may_name_table(b"/etc/passwd"));
        assert!(!may_name_table(b"fd/1"));
        assert!(!may_name_table(b""));
    }
}
