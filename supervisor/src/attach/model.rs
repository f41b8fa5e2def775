//! What a window learns of one process's fd table: the handles created
//! during it (with their creation stacks), the numbers closed during it
//! (with their close stacks), and per creation stack how many were made
//! and closed.
//!
//! Handles that predate the window are unknown until closed: only their
//! closes are seen, never their creation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use crate::backtrace::ModuleMap;

/// Return addresses, innermost first (the first is an instruction
/// pointer), shared by every handle created at the same place.
pub(super) type Stack = Rc<Vec<u64>>;

/// A handle created during the window.
#[derive(Clone, Debug)]
pub(super) struct Created {
    /// The creating syscall's name.
    pub(super) origin: &'static str,
    /// Its number (the published table's `how`).
    pub(super) nr: i64,
    pub(super) stack: Stack,
}

/// A number closed during the window and not handed out again since.
#[derive(Clone, Debug)]
pub(super) struct Closed {
    pub(super) by_tid: i32,
    pub(super) stack: Option<Stack>,
    /// Its creation, when that was during the window too.
    pub(super) created: Option<Created>,
}

/// Creations and closes of the handles made at one stack.
#[derive(Clone, Debug, Default)]
pub(super) struct StackCount {
    pub(super) origin: &'static str,
    pub(super) created: usize,
    pub(super) closed: usize,
}

#[derive(Debug)]
pub(super) struct Proc {
    pub(super) name: String,
    /// The process that forked it during the window.
    pub(super) parent: Option<i32>,
    pub(super) maps: Option<ModuleMap>,
    pub(super) open: HashMap<i32, Created>,
    pub(super) closed: HashMap<i32, Closed>,
    pub(super) counts: BTreeMap<Vec<u64>, StackCount>,
    /// Every thread exited during the window.
    pub(super) exited: bool,
    /// The tombstone source planted in the process (tombstones.rs).
    pub(super) tomb_src: Option<i32>,
    /// Numbers holding a tombstone, oldest first.
    pub(super) quarantine: VecDeque<i32>,
    /// Open handles whose creation the window did not see in this
    /// process: those it held when the window met it (None), and a forked
    /// child's copies of its parent's window handles (their creation).
    pub(super) adopted: HashMap<i32, Option<Created>>,
    /// Per number, how many handles it has held as far as the window
    /// knows (1 for a handle older than the window): the published
    /// generation.
    pub(super) generations: HashMap<i32, u32>,
    /// Numbers whose published slot is out of date.
    pub(super) dirty: BTreeSet<i32>,
    /// The address after a `syscall` instruction of this image (the last
    /// syscall stop's), where the detach makes a thread that makes no
    /// syscall of its own release the tombstones (tombstones.rs).
    pub(super) syscall_ip: Option<u64>,
}

impl Proc {
    pub(super) fn new(tgid: i32, parent: Option<i32>) -> Proc {
        Proc {
            name: comm(tgid, tgid),
            parent,
            maps: None,
            open: HashMap::new(),
            closed: HashMap::new(),
            counts: BTreeMap::new(),
            exited: false,
            tomb_src: None,
            quarantine: VecDeque::new(),
            adopted: HashMap::new(),
            generations: HashMap::new(),
            dirty: BTreeSet::new(),
            syscall_ip: None,
        }
    }

    /// A process met as it is: every fd it holds predates the window.
    pub(super) fn found(tgid: i32, parent: Option<i32>) -> Proc {
        let mut p = Proc::new(tgid, parent);
        for fd in open_fds(tgid) {
            p.adopted.insert(fd, None);
            p.generations.insert(fd, 1);
        }
        p
    }

    /// A child forked during the window: it holds copies of its parent's
    /// handles, which it did not create, and knows the same closed
    /// numbers.
    pub(super) fn forked(parent_tgid: i32, parent: &Proc, tgid: i32) -> Proc {
        let mut p = Proc::new(tgid, Some(parent_tgid));
        p.name = parent.name.clone();
        p.maps = parent.maps.clone();
        p.closed = parent.closed.clone();
        // Its copies of the parent's tombstones are released at detach
        // like the parent's.
        p.tomb_src = parent.tomb_src;
        p.quarantine = parent.quarantine.clone();
        p.adopted = parent.adopted.clone();
        for (&fd, c) in &parent.open {
            p.adopted.insert(fd, Some(c.clone()));
        }
        p.generations = parent.generations.clone();
        p
    }

    /// Every number the published table has something to say about.
    pub(super) fn known_numbers(&self) -> BTreeSet<i32> {
        let mut all: BTreeSet<i32> = self.generations.keys().copied().collect();
        all.extend(self.quarantine.iter().copied());
        all.extend(self.tomb_src);
        all
    }

    pub(super) fn create(&mut self, fd: i32, origin: &'static str, nr: i64, stack: Stack) {
        // A number handed out again is no longer a closed one; a record
        // still open there was closed by a call the window did not follow.
        self.closed.remove(&fd);
        self.open.remove(&fd);
        self.adopted.remove(&fd);
        *self.generations.entry(fd).or_insert(0) += 1;
        self.dirty.insert(fd);
        // dup2 onto a tombstone replaced it.
        self.quarantine.retain(|&q| q != fd);
        if self.tomb_src == Some(fd) {
            self.tomb_src = None;
        }
        let c = self
            .counts
            .entry(stack.to_vec())
            .or_insert_with(|| StackCount {
                origin,
                ..StackCount::default()
            });
        c.created += 1;
        self.open.insert(fd, Created { origin, nr, stack });
    }

    pub(super) fn close(&mut self, fd: i32, by_tid: i32, stack: Option<Stack>) {
        self.dirty.insert(fd);
        let inherited = self.adopted.remove(&fd).flatten();
        let created = self.open.remove(&fd).or(inherited);
        if let Some(c) = &created {
            if let Some(n) = self.counts.get_mut(c.stack.as_slice()) {
                n.closed += 1;
            }
        }
        self.closed.insert(
            fd,
            Closed {
                by_tid,
                stack,
                created,
            },
        );
    }

    /// close_range: the handles of the window in [first, last]. Older
    /// numbers in the range are not known to have been open, so they are
    /// not remembered as closed.
    pub(super) fn close_range(&mut self, first: i32, last: i32, by_tid: i32) {
        let fds: Vec<i32> = self
            .open
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in fds {
            self.close(fd, by_tid, None);
        }
        let older: Vec<i32> = self
            .adopted
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in older {
            self.adopted.remove(&fd);
            self.dirty.insert(fd);
        }
    }

    /// After an exec: the O_CLOEXEC handles are gone, the image is new.
    pub(super) fn exec(&mut self, tgid: i32) {
        self.name = comm(tgid, tgid);
        self.maps = None;
        let gone: Vec<i32> = self
            .open
            .keys()
            .copied()
            .filter(|&fd| !fd_exists(tgid, fd))
            .collect();
        for fd in gone {
            self.close(fd, tgid, None);
        }
        self.adopted.retain(|&fd, _| fd_exists(tgid, fd));
        // The new image cannot hold a number it never learned of; a
        // closed number reused by the old one is no longer its bug.
        self.closed.clear();
        // Tombstones and their source are O_CLOEXEC: gone with the image.
        self.quarantine.clear();
        self.tomb_src = None;
        self.syscall_ip = None;
    }
}

/// The fds `tgid` holds right now.
pub(super) fn open_fds(tgid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{tgid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `fd` is open in `tgid` right now.
pub(super) fn fd_exists(tgid: i32, fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{fd}")).is_ok()
}

pub(super) fn comm(tgid: i32, tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(a: u64) -> Stack {
        Rc::new(vec![a, 0x10])
    }

    #[test]
    fn counts_follow_the_creation_stack() {
        let mut p = Proc::new(0, None);
        p.create(5, "openat", 257, stack(1));
        p.create(6, "openat", 257, stack(1));
        p.create(7, "socket", 41, stack(2));
        p.close(5, 1, None);
        p.close(9, 1, None);
        assert_eq!(p.counts[&vec![1, 0x10]].created, 2);
        assert_eq!(p.counts[&vec![1, 0x10]].closed, 1);
        assert_eq!(p.counts[&vec![2, 0x10]].closed, 0);
        assert!(p.closed.contains_key(&9) && p.closed.contains_key(&5));
        assert_eq!(p.open.len(), 2);
        // Reusing a number forgets it was closed.
        p.create(5, "dup", 32, stack(3));
        assert!(!p.closed.contains_key(&5));
    }

    #[test]
    fn close_range_forgets_only_window_handles() {
        let mut p = Proc::new(0, None);
        p.create(10, "openat", 257, stack(1));
        p.create(20, "openat", 257, stack(1));
        p.close_range(3, 15, 1);
        assert!(p.closed.contains_key(&10));
        assert!(!p.closed.contains_key(&4));
        assert!(p.open.contains_key(&20));
    }
}
