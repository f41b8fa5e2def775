//! One-line descriptions for the long view, and who holds a socket's peer.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use handles_model::ObjType;

use super::parse::{oflags, LinkTarget};
use super::{HandleInfo, PeerProcess};

fn secs(ns: u64) -> String {
    if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else {
        format!("{:.3}s", ns as f64 / 1e9)
    }
}

/// Signal names for a signalfd's mask (hex, bit N-1 for signal N).
fn signal_names(mask_hex: &str) -> String {
    let Ok(mask) = u64::from_str_radix(mask_hex, 16) else {
        return format!("mask {mask_hex}");
    };
    let names: Vec<String> = (1..=64u32)
        .filter(|n| mask & (1u64 << (n - 1)) != 0)
        .map(|n| match nix::sys::signal::Signal::try_from(n as i32) {
            Ok(s) => s.as_str().to_string(),
            Err(_) => format!("SIG{n}"),
        })
        .collect();
    if names.is_empty() {
        "no signals".into()
    } else {
        names.join(",")
    }
}

/// The long view's description of a handle.
pub fn describe(h: &HandleInfo) -> String {
    let mut d = String::new();
    match h.obj_type() {
        ObjType::Pipe => {
            let end = match h.flags & oflags::ACCMODE {
                oflags::RDONLY => "read end",
                oflags::WRONLY => "write end",
                _ => "read/write",
            };
            match &h.raw.link {
                Some(LinkTarget::Pipe(_)) => d.push_str(end),
                _ => {
                    let _ = write!(d, "fifo {} ({end})", h.target);
                }
            }
        }
        ObjType::Channel | ObjType::Socket => {
            if let Some(s) = &h.socket {
                d.push_str(&s.protocol);
                if let Some(t) = &s.sock_type {
                    let _ = write!(d, " {t}");
                }
                if let Some(st) = &s.state {
                    let _ = write!(d, " {st}");
                }
                if let Some(l) = &s.local {
                    let _ = write!(d, " {l}");
                }
                if let Some(r) = &s.remote {
                    let _ = write!(d, " -> {r}");
                }
                if !s.peer_processes.is_empty() {
                    let peers: Vec<String> = s
                        .peer_processes
                        .iter()
                        .map(|p| format!("{}({}) fd {}", p.pid, p.name, p.fd))
                        .collect();
                    let _ = write!(d, " peer {}", peers.join(", "));
                } else if h.rkoid != 0 {
                    let _ = write!(d, " peer socket:[{}]", h.rkoid);
                }
            } else {
                d.push_str(&h.target);
            }
        }
        ObjType::Event => {
            let sem = if h.raw.info.eventfd_semaphore == Some(true) {
                " semaphore"
            } else {
                ""
            };
            let _ = write!(d, "count {}{sem}", h.eventfd_count.unwrap_or(0));
        }
        ObjType::Port => {
            let fds = h.epoll_fds.as_deref().unwrap_or(&[]);
            if fds.is_empty() {
                d.push_str("watching nothing");
            } else {
                let list: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
                let _ = write!(d, "watching fds {}", list.join(","));
            }
        }
        ObjType::Timer => {
            if let Some(t) = &h.timer {
                if t.value_ns == 0 {
                    let _ = write!(d, "{} disarmed", t.clock);
                } else {
                    let _ = write!(d, "{} next in {}", t.clock, secs(t.value_ns));
                    if t.interval_ns != 0 {
                        let _ = write!(d, " every {}", secs(t.interval_ns));
                    }
                }
                if t.ticks != 0 {
                    let _ = write!(d, " ({} unread ticks)", t.ticks);
                }
            }
        }
        ObjType::Signalfd => {
            d.push_str(&signal_names(h.raw.info.sigmask.as_deref().unwrap_or("0")));
        }
        ObjType::Vmo => {
            if let Some(v) = &h.vmo {
                let _ = write!(d, "memfd:{}", v.name);
                if let Some(sz) = v.size {
                    let _ = write!(d, " size {sz}");
                }
                if !v.seals.is_empty() {
                    let _ = write!(d, " seals {}", v.seals.join("|"));
                }
            }
        }
        ObjType::Process => match h.pidfd_pid {
            Some(p) if p > 0 => {
                let name = std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default();
                let _ = write!(d, "pid {p}");
                if !name.is_empty() {
                    let _ = write!(d, " ({name})");
                }
            }
            Some(_) => d.push_str("exited process"),
            None => d.push_str("process"),
        },
        ObjType::Inotify => {
            let _ = write!(d, "{} watches", h.raw.info.inotify_watches);
        }
        ObjType::Fanotify => {
            let _ = write!(d, "{} marks", h.raw.info.fanotify_marks);
        }
        _ => d.push_str(&h.target),
    }
    d
}

/// Which processes hold each of `inodes` (socket inodes), found by reading
/// every process's fd links, as `lsof +E` does. Only the long view pays for
/// this; processes we may not read are skipped.
pub fn socket_owners(inodes: &HashSet<u64>) -> HashMap<u64, Vec<PeerProcess>> {
    let mut owners: HashMap<u64, Vec<PeerProcess>> = HashMap::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut name = None;
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(target) = std::fs::read_link(fd_entry.path()) else {
                continue;
            };
            if let LinkTarget::Socket(ino) = LinkTarget::parse(&target.to_string_lossy()) {
                if inodes.contains(&ino) {
                    let name = name
                        .get_or_insert_with(|| {
                            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                                .map(|s| s.trim_end().to_string())
                                .unwrap_or_default()
                        })
                        .clone();
                    owners
                        .entry(ino)
                        .or_default()
                        .push(PeerProcess { pid, name, fd });
                }
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_mask_names() {
        assert_eq!(signal_names("0000000000000002"), "SIGINT");
        assert_eq!(signal_names("0000000000004002"), "SIGINT,SIGTERM");
        assert_eq!(signal_names("zz"), "mask zz");
    }

    #[test]
    fn seconds() {
        assert_eq!(secs(2_000_000_000), "2s");
        assert_eq!(secs(500_000_000), "0.500s");
    }
}
