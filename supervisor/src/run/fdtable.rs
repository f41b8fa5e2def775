//! The supervisor's model of one fd table (threads and CLONE_FILES
//! processes share one; fork copies it): which numbers are open, which are
//! quarantined tombstones, generations, and the stacks that created and
//! closed each handle.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use handles_model::{Fd, HandleValue};

/// Raw frame addresses of a stack (frame 0 an instruction pointer, the rest
/// return addresses); symbolized only when a report needs them.
pub type Stack = Arc<Vec<u64>>;

/// How a handle came to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Open when the job started, or across exec.
    Inherited,
    /// Created by this syscall.
    Syscall(&'static str),
    /// Received through SCM_RIGHTS.
    Received,
    /// Found in /proc without our having seen its creation (io_uring direct
    /// opens, a syscall we do not trace).
    Discovered,
    /// Created through the LD_PRELOAD shim, which did not stop here.
    Shim,
}

impl Origin {
    /// The shared table's `how` code for a handle of this origin.
    pub fn how_code(&self) -> u32 {
        use handles_model::table::how;
        match self {
            Origin::Syscall(name) => handles_model::syscalls::TABLE
                .iter()
                .find(|d| d.name == *name)
                .and_then(|d| u32::try_from(d.nr).ok())
                .map_or(how::UNKNOWN, how::syscall),
            Origin::Inherited => how::INHERITED,
            Origin::Received => how::RECEIVED,
            Origin::Discovered => how::ADOPTED,
            Origin::Shim => how::UNKNOWN,
        }
    }
}

/// What a handle was, remembered after it is closed for the report of a
/// later stale use.
#[derive(Clone, Debug, Default)]
pub struct ObjectFacts {
    pub ty: &'static str,
    pub koid: u64,
    pub target: String,
}

#[derive(Clone, Debug)]
pub struct OpenHandle {
    pub generation: u32,
    pub origin: Origin,
    pub created: Option<Stack>,
    /// The process that created it (for reports: stacks symbolize against
    /// that process's modules).
    pub creator: i32,
    /// The closed handle the number held before this one.
    pub earlier: Option<Box<ClosedHandle>>,
}

#[derive(Clone, Debug)]
pub struct ClosedHandle {
    pub generation: u32,
    pub origin: Origin,
    pub created: Option<Stack>,
    pub closed: Option<Stack>,
    pub creator: i32,
    pub closer: i32,
    pub facts: ObjectFacts,
    /// How it was closed: `close`, `dup2 onto it`, `close_range`, `exec (O_CLOEXEC)`.
    pub how: &'static str,
    /// The closed handle the number held before this one: a stale copy
    /// of the number may be of either (reports name both).
    pub earlier: Option<Box<ClosedHandle>>,
}

#[derive(Clone, Debug)]
pub enum Slot {
    Open(OpenHandle),
    /// Closed and held by a tombstone so the number is not reused.
    Tombstone(ClosedHandle),
}

/// One fd table.
#[derive(Clone, Debug)]
pub struct FdTable {
    pub mixer: u32,
    slots: BTreeMap<i32, Slot>,
    /// Generation to give the next handle at each fd number.
    next_generation: HashMap<i32, u32>,
    /// The last closed handle at each number that is no longer quarantined,
    /// so a late stale use can still say what it was.
    history: HashMap<i32, ClosedHandle>,
    /// Tombstoned numbers, oldest first.
    quarantine: VecDeque<i32>,
    /// The fd, in the tracee, of the O_PATH file tombstones are dup'ed from.
    pub tomb_src: Option<i32>,
    /// Numbers changed since the last publish, or None for "everything".
    dirty: Option<Vec<i32>>,
}

/// Bound on how many closed handles `history` remembers.
const HISTORY_LIMIT: usize = 4096;

impl FdTable {
    pub fn new(mixer: u32) -> FdTable {
        // `dirty: None` below: a new table publishes everything once.
        FdTable {
            mixer,
            slots: BTreeMap::new(),
            next_generation: HashMap::new(),
            history: HashMap::new(),
            quarantine: VecDeque::new(),
            tomb_src: None,
            dirty: None,
        }
    }

    /// A copy for the same process with its own identity (exec unshares
    /// the table): everything needs publishing again.
    pub fn unshared_copy(&self) -> FdTable {
        let mut t = self.clone();
        t.dirty = None;
        t
    }

    fn touch(&mut self, fd: i32) {
        if let Some(d) = &mut self.dirty {
            d.push(fd);
        }
    }

    /// Everything needs publishing again (a shim's table was found).
    pub fn touch_all(&mut self) {
        self.dirty = None;
    }

    /// The handle at `fd` takes generation `g` (the one a shim's table
    /// gave it), and the number's next handle `g + 1`.
    pub fn set_generation(&mut self, fd: i32, g: u32) {
        match self.slots.get_mut(&fd) {
            Some(Slot::Open(h)) => h.generation = g,
            Some(Slot::Tombstone(c)) => c.generation = g,
            None => return,
        }
        self.next_generation.insert(fd, g.wrapping_add(1));
    }

    /// Sets the tombstone source (hidden in published tables).
    pub fn set_tomb_src(&mut self, fd: Option<i32>) {
        if let Some(old) = self.tomb_src {
            self.touch(old);
        }
        if let Some(new) = fd {
            self.touch(new);
        }
        self.tomb_src = fd;
    }

    /// The numbers to publish since the last call (every tracked one the
    /// first time).
    pub fn take_dirty(&mut self) -> Vec<i32> {
        match self.dirty.replace(Vec::new()) {
            Some(d) => d,
            None => {
                let mut all = self.numbers();
                all.extend(self.tomb_src);
                all
            }
        }
    }

    /// What the published table says of `fd`.
    pub fn slot_value(&self, fd: i32) -> handles_model::table::SlotValue {
        use handles_model::table::{state, SlotValue};
        if self.tomb_src == Some(fd) {
            return SlotValue {
                state: state::INTERNAL,
                ..SlotValue::default()
            };
        }
        match self.slots.get(&fd) {
            Some(Slot::Open(h)) => SlotValue {
                state: state::OPEN,
                generation: h.generation,
                ..SlotValue::default()
            },
            Some(Slot::Tombstone(c)) => SlotValue {
                state: state::TOMBSTONE,
                generation: c.generation,
                ..SlotValue::default()
            },
            None => SlotValue::default(),
        }
    }

    /// A copy for a forked child: same handles, its own mixer.
    pub fn fork_copy(&self, mixer: u32) -> FdTable {
        let mut t = self.clone();
        t.mixer = mixer;
        t.dirty = None;
        t
    }

    pub fn get(&self, fd: i32) -> Option<&Slot> {
        self.slots.get(&fd)
    }

    pub fn is_open(&self, fd: i32) -> bool {
        matches!(self.slots.get(&fd), Some(Slot::Open(_)))
    }

    pub fn open_fds(&self) -> impl Iterator<Item = (i32, &OpenHandle)> {
        self.slots.iter().filter_map(|(fd, s)| match s {
            Slot::Open(h) => Some((*fd, h)),
            Slot::Tombstone(_) => None,
        })
    }

    /// True for fds the tracee does not know about: tombstones and the
    /// tombstone source. Reports and tables hide them.
    pub fn is_hidden(&self, fd: i32) -> bool {
        self.tomb_src == Some(fd) || matches!(self.slots.get(&fd), Some(Slot::Tombstone(_)))
    }

    pub fn value_of(&self, fd: i32, generation: u32) -> HandleValue {
        HandleValue::encode(Fd(fd), generation, self.mixer)
    }

    /// Registers a new handle at `fd`, bumping the number's generation.
    pub fn open(&mut self, fd: i32, origin: Origin, created: Option<Stack>, creator: i32) -> u32 {
        if let Some(Slot::Tombstone(_)) = self.slots.get(&fd) {
            self.quarantine.retain(|&q| q != fd);
        }
        self.touch(fd);
        let g = self.next_generation.entry(fd).or_insert(0);
        let generation = *g;
        *g = g.wrapping_add(1);
        // One level deep: the handle before this one, not its own earlier.
        let earlier = self.closed_info(fd).map(|c| {
            Box::new(ClosedHandle {
                earlier: None,
                ..c.clone()
            })
        });
        self.slots.insert(
            fd,
            Slot::Open(OpenHandle {
                generation,
                origin,
                created,
                creator,
                earlier,
            }),
        );
        generation
    }

    /// Marks `fd` closed. With `tombstone` the number stays taken by a
    /// tombstone in the tracee (and joins the quarantine FIFO).
    pub fn close(
        &mut self,
        fd: i32,
        closed: Option<Stack>,
        closer: i32,
        facts: ObjectFacts,
        how: &'static str,
        tombstone: bool,
    ) {
        let Some(Slot::Open(h)) = self.slots.remove(&fd) else {
            return;
        };
        self.touch(fd);
        let c = ClosedHandle {
            generation: h.generation,
            origin: h.origin,
            created: h.created,
            closed,
            creator: h.creator,
            closer,
            facts,
            how,
            earlier: h.earlier,
        };
        if tombstone {
            self.slots.insert(fd, Slot::Tombstone(c));
            self.quarantine.push_back(fd);
        } else {
            self.remember(fd, c);
        }
    }

    /// Records a handle closed where the supervisor did not see it (by the
    /// shim), for the report of a later use.
    pub fn remember_closed(&mut self, fd: i32, c: ClosedHandle) {
        self.remember(fd, c);
    }

    /// Drops an open slot whose close happened elsewhere (the shim). Not
    /// a change to publish: the shim's table already says it.
    pub fn forget_open(&mut self, fd: i32) {
        if let Some(Slot::Open(_)) = self.slots.get(&fd) {
            self.slots.remove(&fd);
        }
    }

    fn remember(&mut self, fd: i32, c: ClosedHandle) {
        if self.history.len() >= HISTORY_LIMIT && !self.history.contains_key(&fd) {
            // Forget an arbitrary old entry: the history is a courtesy for
            // reports, not state anything depends on.
            if let Some(&k) = self.history.keys().next() {
                self.history.remove(&k);
            }
        }
        self.history.insert(fd, c);
    }

    /// The tombstone at `fd` is gone from the tracee (closed by the
    /// supervisor, by close_range or by exec): forget it, keep its history.
    pub fn drop_tombstone(&mut self, fd: i32) {
        if let Some(Slot::Tombstone(c)) = self.slots.remove(&fd) {
            self.quarantine.retain(|&q| q != fd);
            self.remember(fd, c);
            self.touch(fd);
        }
    }

    /// What was last closed at `fd`, quarantined or not.
    pub fn closed_info(&self, fd: i32) -> Option<&ClosedHandle> {
        match self.slots.get(&fd) {
            Some(Slot::Tombstone(c)) => Some(c),
            _ => self.history.get(&fd),
        }
    }

    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// The oldest tombstones to release so that at most `keep` remain,
    /// removed from the table and returned sorted (so the caller can close
    /// runs of them with one close_range each).
    pub fn evict(&mut self, keep: usize) -> Vec<i32> {
        let mut out = Vec::new();
        while self.quarantine.len() > keep {
            if let Some(fd) = self.quarantine.pop_front() {
                if let Some(Slot::Tombstone(c)) = self.slots.remove(&fd) {
                    self.remember(fd, c);
                }
                self.touch(fd);
                out.push(fd);
            }
        }
        out.sort_unstable();
        out
    }

    /// After exec: every handle still open was inherited by the new image.
    pub fn mark_all_inherited(&mut self) {
        for s in self.slots.values_mut() {
            if let Slot::Open(h) = s {
                h.origin = Origin::Inherited;
                // Its stack points into the old image, which is gone.
                h.created = None;
            }
        }
    }

    /// The number the kernel gives the next fd at or above `min`: the lowest
    /// one neither open, quarantined nor the tombstone source.
    pub fn lowest_free(&self, min: i32) -> i32 {
        let mut n = min.max(0);
        while self.tomb_src == Some(n) || self.slots.contains_key(&n) {
            n += 1;
        }
        n
    }

    /// Handles open (tombstones and the tombstone source excluded).
    pub fn open_count(&self) -> usize {
        self.slots.len() - self.quarantine.len()
    }

    /// Number of fd numbers the tracee has in use, tombstones included.
    pub fn used(&self) -> usize {
        self.slots.len() + usize::from(self.tomb_src.is_some())
    }

    /// Every tracked fd number (open or tombstone).
    pub fn numbers(&self) -> Vec<i32> {
        self.slots.keys().copied().collect()
    }
}

/// Groups sorted fd numbers into inclusive runs `(first, last)`.
pub fn runs(sorted: &[i32]) -> Vec<(i32, i32)> {
    let mut out: Vec<(i32, i32)> = Vec::new();
    for &fd in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == fd => *last = fd,
            _ => out.push((fd, fd)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_bump_on_reuse() {
        let mut t = FdTable::new(0);
        assert_eq!(t.open(5, Origin::Syscall("open"), None, 1), 0);
        t.close(5, None, 1, ObjectFacts::default(), "close", false);
        assert_eq!(t.open(5, Origin::Syscall("open"), None, 1), 1);
        assert_ne!(t.value_of(5, 0), t.value_of(5, 1));
    }

    #[test]
    fn quarantine_fifo_and_eviction() {
        let mut t = FdTable::new(0);
        for fd in 3..10 {
            t.open(fd, Origin::Syscall("open"), None, 1);
            t.close(fd, None, 1, ObjectFacts::default(), "close", true);
        }
        assert_eq!(t.quarantined(), 7);
        assert!(t.is_hidden(3));
        let ev = t.evict(3);
        assert_eq!(ev, vec![3, 4, 5, 6]);
        assert_eq!(t.quarantined(), 3);
        assert!(!t.is_hidden(3));
        assert!(t.closed_info(3).is_some(), "history keeps evicted handles");
        assert_eq!(runs(&ev), vec![(3, 6)]);
        assert_eq!(runs(&[1, 2, 4, 6, 7]), vec![(1, 2), (4, 4), (6, 7)]);
    }

    #[test]
    fn lowest_free_skips_open_tombstoned_and_internal_numbers() {
        let mut t = FdTable::new(0);
        for fd in [0, 1, 2, 4] {
            t.open(fd, Origin::Inherited, None, 1);
        }
        assert_eq!(t.lowest_free(0), 3);
        t.open(3, Origin::Inherited, None, 1);
        t.close(3, None, 1, ObjectFacts::default(), "close", true);
        t.set_tomb_src(Some(5));
        assert_eq!(t.lowest_free(0), 6);
        assert_eq!(t.lowest_free(10), 10);
    }

    #[test]
    fn reopening_a_tombstoned_number_leaves_the_quarantine() {
        let mut t = FdTable::new(0);
        t.open(4, Origin::Inherited, None, 1);
        t.close(4, None, 1, ObjectFacts::default(), "close", true);
        t.open(4, Origin::Syscall("dup2"), None, 1);
        assert_eq!(t.quarantined(), 0);
        assert!(t.is_open(4));
    }
}
