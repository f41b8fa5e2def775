//! What the supervisor learns at each exec about the file exec'd, kept by
//! the path the program gave execve (AT_EXECFN).
//!
//! Every exec needs the file's set-ID bits and capabilities (the
//! privilege notice) and, when the shim is preloaded, whether the image's
//! loader is glibc's (the shim can only load there). Found from scratch,
//! that is a stat and a getxattr through `/proc/PID/exe` (a new pid's
//! /proc dentries are made on each lookup) and three reads of the
//! loader's ELF headers from the tracee: half of the supervisor's time
//! on a configure-style script, which execs the same dozen programs
//! hundreds of times. Kept by path, an exec costs one stat of that path
//! (a dcache walk) when the file is unchanged.
//!
//! The file at the path is the image only when the path names an ELF
//! file: for a script, the kernel runs the interpreter, and
//! `/proc/PID/exe` names that. So an entry is made only after the first
//! exec compared both: the same file (device, inode) makes a `Direct`
//! entry, whose facts stand for every later exec of the path while its
//! identity (device, inode, ctime, mtime, size) is unchanged (chmod,
//! setcap and a rewrite all change ctime); anything else makes an
//! `Indirect` one, which only says "ask /proc every time".

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use super::privilege::FileBits;

/// A file's identity, as far as its exec facts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: u64,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: m.size(),
        }
    }

    fn same_file(&self, other: &FileId) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The path is the image: its bits, and whether its loader is
    /// glibc's once an exec asked (None: not yet).
    Direct { bits: FileBits, glibc: Option<bool> },
    /// A script, or a path that did not lead to the image: no facts.
    Indirect,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: FileId,
    kind: Kind,
}

/// Entries kept at most; past it the cache starts again (a job that
/// execs this many distinct paths is not the one this saves time for).
const MAX_ENTRIES: usize = 4096;

/// The facts of one exec, and where to keep what is learnt later.
#[derive(Debug, Default)]
pub(crate) struct ExecFacts {
    /// The file's privilege bits; None when they could not be read.
    pub bits: Option<FileBits>,
    /// The loader verdict the cache holds for this image.
    pub glibc: Option<bool>,
    /// The cache key while the entry's loader verdict is still to learn.
    key: Option<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Images {
    by_path: HashMap<Vec<u8>, Entry>,
}

/// What an entry says for a file now found with `id`: its facts when it
/// is a `Direct` entry for that very file, None when /proc must be asked.
fn cached(entry: Option<&Entry>, id: &FileId) -> Option<(FileBits, Option<bool>)> {
    match entry {
        Some(Entry {
            id: known,
            kind: Kind::Direct { bits, glibc },
        }) if known == id => Some((*bits, *glibc)),
        _ => None,
    }
}

/// The entry the first exec of a path leaves: `Direct` when the path's
/// file is the image's.
fn learnt(path_id: FileId, exe_id: &FileId, bits: FileBits) -> Entry {
    let kind = if path_id.same_file(exe_id) {
        Kind::Direct { bits, glibc: None }
    } else {
        Kind::Indirect
    };
    Entry { id: path_id, kind }
}

impl Images {
    /// The facts of the image process `pid` has just exec'd by `execfn`
    /// (AT_EXECFN; None when unknown). Reads `/proc/PID/exe` only when
    /// the cache has no fact for the file the path names now.
    pub fn exec(&mut self, pid: i32, execfn: Option<&[u8]>) -> ExecFacts {
        let path = execfn.filter(|p| p.first() == Some(&b'/'));
        let path_id = path.and_then(|p| {
            std::fs::metadata(std::ffi::OsStr::from_bytes(p))
                .ok()
                .map(|m| FileId::of(&m))
        });
        if let (Some(p), Some(id)) = (path, path_id.as_ref()) {
            if let Some((bits, glibc)) = cached(self.by_path.get(p), id) {
                return ExecFacts {
                    bits: Some(bits),
                    glibc,
                    // Only a verdict still to learn needs its entry again.
                    key: glibc.is_none().then(|| p.to_vec()),
                };
            }
        }
        let Some((bits, exe_id)) = exe_bits(pid) else {
            return ExecFacts::default();
        };
        let mut key = None;
        if let (Some(p), Some(id)) = (path, path_id) {
            if self.by_path.len() >= MAX_ENTRIES {
                self.by_path.clear();
            }
            let entry = learnt(id, &exe_id, bits);
            if matches!(entry.kind, Kind::Direct { .. }) {
                key = Some(p.to_vec());
            }
            self.by_path.insert(p.to_vec(), entry);
        }
        ExecFacts {
            bits: Some(bits),
            glibc: None,
            key,
        }
    }

    /// Keeps the loader verdict an exec found for its image.
    pub fn learn_glibc(&mut self, facts: &ExecFacts, glibc: bool) {
        let Some(e) = facts.key.as_ref().and_then(|k| self.by_path.get_mut(k)) else {
            return;
        };
        if let Kind::Direct { glibc: g, .. } = &mut e.kind {
            *g = Some(glibc);
        }
    }
}

/// The privilege bits of the image process `pid` runs, and that file's
/// identity: a stat through `/proc/PID/exe` (the kernel's own link to the
/// file, stat'ed through the link: the tracer may, as the tracee's
/// tracer) and a getxattr. None when it cannot be read.
pub(crate) fn exe_bits(pid: i32) -> Option<(FileBits, FileId)> {
    let exe = format!("/proc/{pid}/exe");
    let meta = std::fs::metadata(&exe).ok()?;
    let caps = super::privilege::has_file_caps(std::path::Path::new(&exe));
    let bits = FileBits::from_mode(meta.mode(), meta.uid(), meta.gid(), caps);
    Some((bits, FileId::of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, ctime: i64) -> FileId {
        FileId {
            dev: 1,
            ino,
            ctime: (ctime, 0),
            mtime: (5, 0),
            size: 100,
        }
    }

    const PLAIN: FileBits = FileBits {
        setuid: None,
        setgid: None,
        caps: false,
    };

    #[test]
    fn the_path_of_the_image_itself_is_kept_with_its_facts() {
        let e = learnt(id(7, 1), &id(7, 1), PLAIN);
        assert_eq!(
            e.kind,
            Kind::Direct {
                bits: PLAIN,
                glibc: None
            }
        );
        assert_eq!(cached(Some(&e), &id(7, 1)), Some((PLAIN, None)));
    }

    #[test]
    fn a_script_path_keeps_no_facts() {
        // The path names the script; /proc/PID/exe its interpreter.
        let e = learnt(id(7, 1), &id(9, 1), PLAIN);
        assert_eq!(e.kind, Kind::Indirect);
        assert_eq!(cached(Some(&e), &id(7, 1)), None);
    }

    #[test]
    fn any_change_to_the_file_asks_again() {
        let e = learnt(id(7, 1), &id(7, 1), PLAIN);
        // chmod u+s / setcap: a new ctime.
        assert_eq!(cached(Some(&e), &id(7, 2)), None);
        // Replaced by another file at the same path.
        assert_eq!(cached(Some(&e), &id(8, 1)), None);
        let mut grown = id(7, 1);
        grown.size = 200;
        assert_eq!(cached(Some(&e), &grown), None);
        assert_eq!(cached(None, &id(7, 1)), None);
    }
}
