//! Objects a process holds alive only through memory mappings
//! (`handles --mappings`): a memfd or a file that was mapped and whose fd
//! was then closed. The mapping keeps the object alive as a handle would;
//! Zircon would show the VMO's mapping, Linux shows a line of
//! /proc/PID/maps.
//!
//! /proc/PID/maps gives each mapping's protection, device and inode;
//! /proc/PID/map_files/START-END, stat'ed, gives the object's type and the
//! same (device, inode) `stat` of an fd would give, so "also held by an
//! fd" is the table's own same-object rule.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;

use handles_model::{ObjType, Rights};
use serde::Serialize;

use super::classify::path_type;
use super::parse::LinkTarget;
use super::procdir::classify;
use super::{InspectError, Snapshot};

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    /// `major:minor` in decimal, as the table's `dev`.
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

/// Parses one maps line; None for anything malformed.
pub fn parse_line(line: &str) -> Option<MapLine> {
    // "7f..-7f.. rw-s 00000000 00:01 1026    /memfd:x (deleted)"
    let mut rest = line;
    let mut next = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (w, r) = t.split_at(end);
        rest = r;
        (!w.is_empty()).then_some(w)
    };
    let range = next()?;
    let perms = next()?.as_bytes();
    let _offset = next()?;
    let dev = next()?;
    let inode = next()?.parse().ok()?;
    let path = rest.trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        dev: format!(
            "{}:{}",
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?
        ),
        inode,
        path,
    })
}

/// An object held through mappings only.
#[derive(Clone, Debug, Serialize)]
pub struct Mapped {
    pub koid: u64,
    pub dev: String,
    pub rights: u32,
    pub rights_names: Vec<&'static str>,
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The path maps shows (`/memfd:NAME (deleted)` for a memfd).
    pub path: String,
    /// How many mappings of it, and their total size in bytes.
    pub mappings: usize,
    pub mapped_bytes: u64,
}

/// The rights a mapping gives: ZX_RIGHT_MAP always, READ and EXECUTE as
/// its protection says, WRITE only for a shared writable mapping (a
/// private one writes a copy, never the object).
pub fn rights_of(m: &MapLine) -> Rights {
    let mut r = Rights::MAP;
    if m.read {
        r = r.union(Rights::READ);
    }
    if m.write && m.shared {
        r = r.union(Rights::WRITE);
    }
    if m.exec {
        r = r.union(Rights::EXECUTE);
    }
    r
}

fn stat(path: &str) -> Option<libc::stat> {
    let c = CString::new(path).ok()?;
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is writable.
    (unsafe { libc::stat(c.as_ptr(), &mut st) } == 0).then_some(st)
}

/// The objects process `snap.pid` maps and holds no fd to (by the
/// table's same-object rule, koid and device), in address order of their
/// first mapping.
pub fn read(snap: &Snapshot) -> Result<Vec<Mapped>, InspectError> {
    let pid = snap.pid;
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| classify(pid, "maps", e))?;
    let held: HashSet<(u64, &str)> = snap
        .handles
        .iter()
        .filter_map(|h| Some((h.koid, h.dev.as_deref()?)))
        .collect();
    let mut order: Vec<(String, u64)> = Vec::new();
    let mut out: BTreeMap<(String, u64), Mapped> = BTreeMap::new();
    for line in text.lines() {
        let Some(m) = parse_line(line) else { continue };
        // Anonymous memory, the heap, the stack, vdso: no object.
        if m.inode == 0 {
            continue;
        }
        let files = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let st = stat(&files);
        let (dev, koid) = match st {
            Some(s) => (
                format!("{}:{}", libc::major(s.st_dev), libc::minor(s.st_dev)),
                s.st_ino,
            ),
            None => (m.dev.clone(), m.inode),
        };
        if held.contains(&(koid, dev.as_str())) {
            continue;
        }
        // A memfd as the fd links name it (always " (deleted)"), SysV
        // shared memory, or shared anonymous memory (shmem's /dev/zero).
        let memfd = matches!(LinkTarget::parse(&m.path), LinkTarget::Memfd(_))
            || m.path.starts_with("/SYSV")
            || m.path == "/dev/zero (deleted)";
        let ty = if memfd {
            ObjType::Vmo
        } else {
            st.map_or(ObjType::File, |s| path_type(0, s.st_mode, s.st_rdev))
        };
        let key = (dev.clone(), koid);
        let e = out.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Mapped {
                koid,
                dev,
                rights: 0,
                rights_names: Vec::new(),
                ty: ty.name(),
                path: m.path.clone(),
                mappings: 0,
                mapped_bytes: 0,
            }
        });
        e.rights |= rights_of(&m).0;
        e.mappings += 1;
        e.mapped_bytes += m.end.saturating_sub(m.start);
    }
    Ok(order
        .into_iter()
        .filter_map(|k| out.remove(&k))
        .map(|mut m| {
            m.rights_names = Rights(m.rights).names().collect();
            m
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let m = parse_line("7f00a000-7f00b000 rw-s 00000000 00:01 1026    /memfd:buf (deleted)")
            .expect("parses");
        assert_eq!((m.start, m.end), (0x7f00a000, 0x7f00b000));
        assert!(m.read && m.write && !m.exec && m.shared);
        assert_eq!(m.dev, "0:1");
        assert_eq!(m.inode, 1026);
        assert_eq!(m.path, "/memfd:buf (deleted)");
        let r = rights_of(&m);
        assert_eq!(r, Rights::MAP.union(Rights::READ).union(Rights::WRITE));
        let lib = parse_line("7f1-7f2 r-xp 00001000 fd:01 393 /usr/lib/a b.so").expect("parses");
        assert_eq!(lib.dev, "253:1");
        assert_eq!(lib.path, "/usr/lib/a b.so");
        assert_eq!(
            rights_of(&lib),
            Rights::MAP.union(Rights::READ).union(Rights::EXECUTE)
        );
        // Private writable: the object itself is never written.
        let p = parse_line("1-2 rw-p 0 08:01 5 /f").expect("parses");
        assert_eq!(rights_of(&p), Rights::MAP.union(Rights::READ));
        let anon = parse_line("1-2 rw-p 00000000 00:00 0 ").expect("parses");
        assert_eq!((anon.inode, anon.path.as_str()), (0, ""));
        for bad in [
            "",
            "zz-1 r--p 0 0:0 1 /x",
            "1-2 r 0 00:00 1",
            "1-2 r--p 0 0000 1 /x",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }
}
