//! The graph of kernel objects shared between processes (`handles graph`):
//! pipes with the end each process holds, unix socket pairs and loopback
//! TCP connections (two objects joined by a peer link), eventfds, memfds
//! and files held by several processes, and pidfds (one process holding
//! another).
//!
//! Built from the snapshots the inspector reads for every process, so a
//! koid here is the koid `handles PID` shows, and "the same object" is its
//! rule: equal koid and device.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use handles_model::{ObjType, Rights};
use serde::Serialize;

use super::parse::oflags;
use super::Snapshot;
use crate::json;

/// A process of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct ProcNode {
    pub id: String,
    pub pid: i32,
    pub name: String,
    pub koid: Option<u64>,
}

/// A kernel object held by processes of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct ObjNode {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub koid: u64,
    /// The peer's koid for a connected socket, 0 otherwise.
    pub rkoid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// `readlink` of one of its fds (a path, `pipe:[N]`, ...).
    pub target: String,
}

/// A process and one of its fds: one side of an edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct End {
    pub pid: i32,
    pub name: String,
    pub fd: i32,
}

/// A handle: a process holding an object (or, for a pidfd, a process).
#[derive(Clone, Debug, Serialize)]
pub struct HandleEdge {
    /// `handle` (process → object) or `pidfd` (process → process).
    pub kind: &'static str,
    pub from: String,
    pub to: String,
    pub pid: i32,
    pub name: String,
    #[serde(skip)]
    pub fd: i32,
    #[serde(skip)]
    pub handle: u32,
    #[serde(skip)]
    pub rights: u32,
    /// The handle object of every JSON document (value, fd, rights, …).
    #[serde(rename = "handle")]
    pub object: json::Handle<'static>,
    pub rights_names: Vec<&'static str>,
    /// `read` or `write` for a pipe's end, absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<&'static str>,
    /// For a pidfd: the process it refers to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<i32>,
}

/// Two objects that are each other's peer (a socketpair, a connected unix
/// socket, a loopback TCP connection), with the fds holding each side.
#[derive(Clone, Debug, Serialize)]
pub struct PeerEdge {
    pub kind: &'static str,
    pub from: String,
    pub to: String,
    pub from_ends: Vec<End>,
    pub to_ends: Vec<End>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    pub processes: Vec<ProcNode>,
    pub objects: Vec<ObjNode>,
    pub handles: Vec<HandleEdge>,
    pub peers: Vec<PeerEdge>,
}

type Key = (u64, Option<String>, &'static str);

fn object_id(ty: &str, koid: u64, dev: Option<&str>) -> String {
    match dev {
        // Pipes and sockets have no device: their koid is unique in its
        // type. Files, memfds and the rest carry their number space.
        Some(d) => format!("{ty}:{d}:{koid}"),
        None => format!("{ty}:{koid}"),
    }
}

fn process_id(pid: i32) -> String {
    format!("process:{pid}")
}

/// Builds the graph of `snaps`. With `focus`, only what touches those
/// processes is kept (the other side may be any process read).
pub fn build(snaps: &[&Snapshot], focus: Option<&BTreeSet<i32>>) -> Graph {
    // Holders of every object, by the same-object rule.
    let mut holders: BTreeMap<Key, Vec<(usize, usize)>> = BTreeMap::new();
    for (si, s) in snaps.iter().enumerate() {
        for (hi, h) in s.handles.iter().enumerate() {
            if h.koid == 0 {
                continue;
            }
            holders
                .entry((h.koid, h.dev.clone(), h.ty))
                .or_default()
                .push((si, hi));
        }
    }
    let pids_of = |v: &[(usize, usize)]| -> BTreeSet<i32> {
        v.iter().map(|&(si, _)| snaps[si].pid).collect()
    };
    let in_focus = |pids: &BTreeSet<i32>| focus.is_none_or(|f| pids.iter().any(|p| f.contains(p)));
    let sockety = |ty: &str| ty == ObjType::Channel.name() || ty == ObjType::Socket.name();
    // Sockets by koid, to find a peer's holders.
    let by_sock: HashMap<u64, &Key> = holders
        .keys()
        .filter(|k| sockety(k.2) && k.1.is_none())
        .map(|k| (k.0, k))
        .collect();

    let mut kept: BTreeSet<Key> = BTreeSet::new();
    let mut peers: Vec<(Key, Key)> = Vec::new();
    for (key, hs) in &holders {
        if key.2 == ObjType::Process.name() {
            continue; // pidfds are process-to-process edges, below
        }
        let pids = pids_of(hs);
        if pids.len() >= 2 && in_focus(&pids) {
            kept.insert(key.clone());
        }
        if sockety(key.2) {
            let rkoid = hs
                .first()
                .map(|&(si, hi)| snaps[si].handles[hi].rkoid)
                .unwrap_or(0);
            let Some(&pk) = by_sock.get(&rkoid) else {
                continue;
            };
            // Each pair once, from its lower koid.
            if rkoid <= key.0 {
                continue;
            }
            let mut both = pids.clone();
            both.extend(pids_of(&holders[pk]));
            if both.len() >= 2 && in_focus(&both) {
                kept.insert(key.clone());
                kept.insert(pk.clone());
                peers.push((key.clone(), pk.clone()));
            }
        }
    }

    let mut g = Graph::default();
    let mut procs: BTreeSet<i32> = BTreeSet::new();
    for key in &kept {
        let hs = &holders[key];
        let (si0, hi0) = hs[0];
        let h0 = &snaps[si0].handles[hi0];
        let id = object_id(key.2, key.0, key.1.as_deref());
        g.objects.push(ObjNode {
            id: id.clone(),
            ty: key.2,
            koid: key.0,
            rkoid: h0.rkoid,
            dev: key.1.clone(),
            target: h0.target.clone(),
        });
        for &(si, hi) in hs {
            let s = snaps[si];
            let h = &s.handles[hi];
            procs.insert(s.pid);
            let end = (key.2 == ObjType::Pipe.name()).then_some(match h.flags & oflags::ACCMODE {
                oflags::RDONLY => "read",
                oflags::WRONLY => "write",
                _ => "read-write",
            });
            g.handles.push(HandleEdge {
                kind: "handle",
                from: process_id(s.pid),
                to: id.clone(),
                pid: s.pid,
                name: s.name.clone(),
                fd: h.fd,
                handle: h.handle,
                rights: h.rights,
                object: h.json().into_owned(),
                rights_names: Rights(h.rights).names().collect(),
                end,
                target_pid: None,
            });
        }
    }
    let ends = |key: &Key| -> Vec<End> {
        let mut v: Vec<End> = holders[key]
            .iter()
            .map(|&(si, hi)| End {
                pid: snaps[si].pid,
                name: snaps[si].name.clone(),
                fd: snaps[si].handles[hi].fd,
            })
            .collect();
        v.sort();
        v
    };
    for (a, b) in &peers {
        g.peers.push(PeerEdge {
            kind: "peer",
            from: object_id(a.2, a.0, a.1.as_deref()),
            to: object_id(b.2, b.0, b.1.as_deref()),
            from_ends: ends(a),
            to_ends: ends(b),
        });
    }
    // pidfds: process → process.
    let read: HashMap<i32, &Snapshot> = snaps.iter().map(|s| (s.pid, *s)).collect();
    for s in snaps {
        for h in &s.handles {
            let Some(target) = h.pidfd_pid.and_then(|p| i32::try_from(p).ok()) else {
                continue;
            };
            if target <= 0 || h.ty != ObjType::Process.name() {
                continue;
            }
            if focus.is_some_and(|f| !f.contains(&s.pid) && !f.contains(&target)) {
                continue;
            }
            procs.insert(s.pid);
            procs.insert(target);
            g.handles.push(HandleEdge {
                kind: "pidfd",
                from: process_id(s.pid),
                to: process_id(target),
                pid: s.pid,
                name: s.name.clone(),
                fd: h.fd,
                handle: h.handle,
                rights: h.rights,
                object: h.json().into_owned(),
                rights_names: Rights(h.rights).names().collect(),
                end: None,
                target_pid: Some(target),
            });
        }
    }
    for pid in procs {
        let (name, koid) = match read.get(&pid) {
            Some(s) => (s.name.clone(), s.koid),
            // A pidfd's process that was not read (gone, or not ours).
            None => (
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|n| n.trim_end().to_string())
                    .unwrap_or_default(),
                None,
            ),
        };
        g.processes.push(ProcNode {
            id: process_id(pid),
            pid,
            name,
            koid,
        });
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::classify::blank;
    use crate::inspect::parse::FdInfo;
    use crate::inspect::Source;

    fn h(fd: i32, ty: ObjType, koid: u64, rkoid: u64, flags: u32) -> crate::inspect::HandleInfo {
        let mut h = blank(fd, format!("{}:[{koid}]", ty.name()), &FdInfo::default());
        h.ty = ty.name();
        h.koid = koid;
        h.rkoid = rkoid;
        h.flags = flags;
        h
    }

    fn snap(pid: i32, handles: Vec<crate::inspect::HandleInfo>) -> Snapshot {
        Snapshot {
            pid,
            name: format!("p{pid}"),
            koid: None,
            source: Source::Proc,
            mixer: 0,
            complete: true,
            table_error: None,
            handles,
        }
    }

    #[test]
    fn shared_objects_pairs_and_focus() {
        let a = snap(
            10,
            vec![
                h(3, ObjType::Pipe, 100, 0, oflags::RDONLY),
                // A dup within one process is not sharing.
                h(4, ObjType::Pipe, 200, 0, oflags::RDONLY),
                h(5, ObjType::Pipe, 200, 0, oflags::WRONLY),
                h(6, ObjType::Channel, 300, 301, oflags::RDWR),
                // A socket whose peer nobody read holds: no pair.
                h(7, ObjType::Channel, 400, 401, oflags::RDWR),
            ],
        );
        let b = snap(
            20,
            vec![
                h(3, ObjType::Pipe, 100, 0, oflags::WRONLY),
                h(4, ObjType::Channel, 301, 300, oflags::RDWR),
            ],
        );
        let c = snap(30, vec![h(3, ObjType::Pipe, 500, 0, oflags::RDONLY)]);
        let g = build(&[&a, &b, &c], None);
        let ids: Vec<&str> = g.objects.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["pipe:100", "channel:300", "channel:301"]);
        let ends: Vec<(i32, i32, Option<&str>)> = g
            .handles
            .iter()
            .filter(|e| e.to == "pipe:100")
            .map(|e| (e.pid, e.fd, e.end))
            .collect();
        assert_eq!(ends, [(10, 3, Some("read")), (20, 3, Some("write"))]);
        assert_eq!(g.peers.len(), 1);
        assert_eq!(
            (g.peers[0].from.as_str(), g.peers[0].to.as_str()),
            ("channel:300", "channel:301")
        );
        assert_eq!(g.peers[0].from_ends[0].fd, 6);
        assert_eq!(g.peers[0].to_ends[0].pid, 20);
        let pids: Vec<i32> = g.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10, 20]);
        // Focused on process 30, which shares nothing: an empty graph.
        let focus: BTreeSet<i32> = [30].into();
        let g = build(&[&a, &b, &c], Some(&focus));
        assert!(g.objects.is_empty() && g.handles.is_empty() && g.processes.is_empty());
        // Focused on 20: both of its objects, with their other sides.
        let focus: BTreeSet<i32> = [20].into();
        let g = build(&[&a, &b, &c], Some(&focus));
        assert_eq!(g.objects.len(), 3);
    }
}
