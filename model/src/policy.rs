//! The job policy, after Zircon's (`zx_job_set_policy`, basic policy): the
//! conditions, the actions, one entry per condition, nesting rules and the
//! encoded form a job passes to its processes.
//!
//! It lives here, in the `no_std` model, because the shim and the
//! supervisor must read one policy the same way: the shim decodes the
//! job's `HANDLES_POLICY` with [`Policy::decode`], the supervisor writes it
//! with [`Policy::encode_to`], and the judge ([`crate::judge`]) takes a
//! [`Policy`] whichever of them asks. The user-facing text forms (specs
//! with suggestions for typos, policy files) are the supervisor's
//! (`handles_supervisor::policy`).
//!
//! A job has one [`Entry`] (an [`Action`] and an [`Override`] flag) per
//! concrete [`Condition`]. [`Condition::NewAny`] is not stored: setting it
//! sets every `new-*` condition, as `ZX_POL_NEW_ANY` does.
//!
//! Nested jobs follow Zircon's `ZX_JOB_POL_ABSOLUTE` rules ([`Policy::set`]):
//! an `override-allow` entry may be changed freely; an `override-deny`
//! entry may not be changed to another action, and setting it to the
//! action it already has succeeds without unlocking it.

use core::fmt;

use crate::ObjType;

/// The version tag that starts the encoded form.
pub const ENCODING_VERSION: &str = "v1";

/// What a policy entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// Use, close or dup of a closed or never-opened fd (see the judge for
    /// what is a question, a sweep or a shell's redirection instead).
    BadHandle,
    /// An fd of the wrong type for the operation (ENOTSOCK, ENOTTY, ...).
    WrongObject,
    /// Every `new-*` condition at once; not stored on its own.
    NewAny,
    NewFile,
    NewDir,
    NewPipe,
    NewChannel,
    NewSocket,
    NewEvent,
    NewPort,
    NewTimer,
    NewVmo,
    NewProcess,
    /// Creation of any other kind of object (signalfd, inotify, tty, ...).
    NewOther,
}

/// What happens when a condition occurs. The order is Zircon's
/// (`ZX_POL_ACTION_ALLOW` = 0 ... `ZX_POL_ACTION_KILL` = 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The syscall runs.
    Allow,
    /// The syscall fails without running (EBADF for bad-handle, EPERM for
    /// new-*).
    Deny,
    /// The syscall runs, then the thread gets a policy exception.
    AllowException,
    /// The syscall fails without running and the thread gets a policy
    /// exception.
    DenyException,
    /// The process is killed with SIGKILL.
    Kill,
}

/// Whether a nested job may change an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Override {
    /// Nested jobs may change it (`override-allow`, the default).
    Allow,
    /// Nested jobs may not change it (`override-deny`).
    Deny,
}

/// The policy for one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub action: Action,
    pub override_: Override,
}

/// A job's policy: one [`Entry`] per concrete condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Indexed by [`Condition::slot`], in [`Condition::CONCRETE`] order.
    entries: [Entry; Condition::CONCRETE.len()],
}

/// A change refused by an `override-deny` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locked {
    pub condition: Condition,
    pub current: Action,
    pub requested: Action,
}

/// Why an encoded policy could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError<'a> {
    /// Another version of the encoding.
    Version(&'a str),
    /// No version tag at all.
    NoPrefix,
    /// An entry that is not `condition=action[:override]`.
    Entry(&'a str),
    /// `new-any`, which is never stored.
    NotStored(Condition),
    Twice(Condition),
    Missing(Condition),
}

impl Condition {
    /// Every condition, in the order the documentation and errors list them.
    pub const ALL: [Condition; 14] = [
        Condition::BadHandle,
        Condition::WrongObject,
        Condition::NewAny,
        Condition::NewFile,
        Condition::NewDir,
        Condition::NewPipe,
        Condition::NewChannel,
        Condition::NewSocket,
        Condition::NewEvent,
        Condition::NewPort,
        Condition::NewTimer,
        Condition::NewVmo,
        Condition::NewProcess,
        Condition::NewOther,
    ];

    /// The conditions a policy stores: all but `new-any`.
    pub const CONCRETE: [Condition; 13] = [
        Condition::BadHandle,
        Condition::WrongObject,
        Condition::NewFile,
        Condition::NewDir,
        Condition::NewPipe,
        Condition::NewChannel,
        Condition::NewSocket,
        Condition::NewEvent,
        Condition::NewPort,
        Condition::NewTimer,
        Condition::NewVmo,
        Condition::NewProcess,
        Condition::NewOther,
    ];

    /// The conditions `new-any` stands for.
    pub const NEW: [Condition; 11] = [
        Condition::NewFile,
        Condition::NewDir,
        Condition::NewPipe,
        Condition::NewChannel,
        Condition::NewSocket,
        Condition::NewEvent,
        Condition::NewPort,
        Condition::NewTimer,
        Condition::NewVmo,
        Condition::NewProcess,
        Condition::NewOther,
    ];

    /// The name used on the command line and in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Condition::BadHandle => "bad-handle",
            Condition::WrongObject => "wrong-object",
            Condition::NewAny => "new-any",
            Condition::NewFile => "new-file",
            Condition::NewDir => "new-dir",
            Condition::NewPipe => "new-pipe",
            Condition::NewChannel => "new-channel",
            Condition::NewSocket => "new-socket",
            Condition::NewEvent => "new-event",
            Condition::NewPort => "new-port",
            Condition::NewTimer => "new-timer",
            Condition::NewVmo => "new-vmo",
            Condition::NewProcess => "new-process",
            Condition::NewOther => "new-other",
        }
    }

    /// The condition named `s` exactly.
    pub fn from_name(s: &str) -> Option<Condition> {
        Condition::ALL.iter().copied().find(|c| c.name() == s)
    }

    /// A one-line description, for help output.
    pub fn help(self) -> &'static str {
        match self {
            Condition::BadHandle => {
                "use, close or dup of a closed or never-opened fd (not questions, sweeps, shell redirections)"
            }
            Condition::WrongObject => {
                "an fd of the wrong type for the call (ENOTSOCK, ENOTTY, ...)"
            }
            Condition::NewAny => "every new-* condition at once",
            Condition::NewFile => "opening a regular file",
            Condition::NewDir => "opening a directory",
            Condition::NewPipe => "creating a pipe or opening a FIFO",
            Condition::NewChannel => "creating an AF_UNIX socket",
            Condition::NewSocket => "creating any other socket",
            Condition::NewEvent => "creating an eventfd",
            Condition::NewPort => "creating an epoll instance",
            Condition::NewTimer => "creating a timerfd",
            Condition::NewVmo => "creating a memfd",
            Condition::NewProcess => "creating a pidfd",
            Condition::NewOther => "creating any other kind of fd (signalfd, inotify, tty, ...)",
        }
    }

    /// Whether this is one of the conditions `new-any` stands for.
    pub fn is_new(self) -> bool {
        Condition::NEW.contains(&self)
    }

    /// The `new-*` condition that creating an object of type `ty` raises.
    pub fn for_new_object(ty: ObjType) -> Condition {
        // Listed in full, without a wildcard, so that a type added to the
        // model is a compile error here until someone decides its condition.
        match ty {
            ObjType::File => Condition::NewFile,
            ObjType::Dir => Condition::NewDir,
            ObjType::Pipe => Condition::NewPipe,
            ObjType::Channel => Condition::NewChannel,
            ObjType::Socket => Condition::NewSocket,
            ObjType::Event => Condition::NewEvent,
            ObjType::Port => Condition::NewPort,
            ObjType::Timer => Condition::NewTimer,
            ObjType::Vmo => Condition::NewVmo,
            ObjType::Process => Condition::NewProcess,
            ObjType::Signalfd
            | ObjType::Inotify
            | ObjType::Fanotify
            | ObjType::IoUring
            | ObjType::Userfaultfd
            | ObjType::PerfEvent
            | ObjType::Bpf
            | ObjType::Tty
            | ObjType::Chardev
            | ObjType::Blockdev
            | ObjType::Path
            | ObjType::Unknown => Condition::NewOther,
        }
    }

    /// The storage slot of a concrete condition; None for `new-any`.
    fn slot(self) -> Option<usize> {
        Condition::CONCRETE.iter().position(|c| *c == self)
    }

    /// The stored conditions that setting `self` changes.
    fn targets(self) -> &'static [Condition] {
        match self {
            Condition::BadHandle => &[Condition::BadHandle],
            Condition::WrongObject => &[Condition::WrongObject],
            Condition::NewAny => &Condition::NEW,
            Condition::NewFile => &[Condition::NewFile],
            Condition::NewDir => &[Condition::NewDir],
            Condition::NewPipe => &[Condition::NewPipe],
            Condition::NewChannel => &[Condition::NewChannel],
            Condition::NewSocket => &[Condition::NewSocket],
            Condition::NewEvent => &[Condition::NewEvent],
            Condition::NewPort => &[Condition::NewPort],
            Condition::NewTimer => &[Condition::NewTimer],
            Condition::NewVmo => &[Condition::NewVmo],
            Condition::NewProcess => &[Condition::NewProcess],
            Condition::NewOther => &[Condition::NewOther],
        }
    }
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Allow,
        Action::Deny,
        Action::AllowException,
        Action::DenyException,
        Action::Kill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::AllowException => "allow-exception",
            Action::DenyException => "deny-exception",
            Action::Kill => "kill",
        }
    }

    /// The action named `s` exactly.
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == s)
    }

    /// Whether the syscall runs (for `kill`, the process dies before it
    /// does).
    pub fn lets_syscall_run(self) -> bool {
        matches!(self, Action::Allow | Action::AllowException)
    }

    /// Whether the thread gets a policy exception (SIGTRAP and a report).
    pub fn raises_exception(self) -> bool {
        matches!(self, Action::AllowException | Action::DenyException)
    }

    /// Whether a report is written: an exception, or a kill.
    pub fn reports(self) -> bool {
        matches!(
            self,
            Action::AllowException | Action::DenyException | Action::Kill
        )
    }
}

impl Override {
    pub const ALL: [Override; 2] = [Override::Allow, Override::Deny];

    pub fn name(self) -> &'static str {
        match self {
            Override::Allow => "override-allow",
            Override::Deny => "override-deny",
        }
    }

    /// The override named `s` exactly.
    pub fn from_name(s: &str) -> Option<Override> {
        Override::ALL.iter().copied().find(|o| o.name() == s)
    }
}

impl Entry {
    pub const fn new(action: Action, override_: Override) -> Entry {
        Entry { action, override_ }
    }

    /// An entry nested jobs may change.
    pub const fn allow_override(action: Action) -> Entry {
        Entry::new(action, Override::Allow)
    }

    /// `ACTION[:OVERRIDE]`, names exact (the encoded form's right-hand
    /// side).
    pub fn from_text(s: &str) -> Option<Entry> {
        let (a, o) = match s.split_once(':') {
            Some((a, o)) => (a, Some(o)),
            None => (s, None),
        };
        let action = Action::from_name(a.trim())?;
        let override_ = match o {
            None => Override::Allow,
            Some(o) => Override::from_name(o.trim())?,
        };
        Some(Entry::new(action, override_))
    }
}

impl Policy {
    /// `bad-handle=allow-exception`, everything else `allow`, all
    /// `override-allow`: what `handles run` starts from.
    pub const fn default_job() -> Policy {
        let mut entries = [Entry::allow_override(Action::Allow); Condition::CONCRETE.len()];
        // BadHandle is CONCRETE[0].
        entries[0] = Entry::allow_override(Action::AllowException);
        Policy { entries }
    }

    /// The entry for `c`. `new-any` is not stored: for it this returns the
    /// entry all `new-*` conditions share when they agree, and otherwise a
    /// conservative summary: the highest action among them (in Zircon's
    /// order, [`Action::Kill`] highest), `override-deny` if any is.
    pub fn get(&self, c: Condition) -> Entry {
        match c.slot() {
            Some(i) => self.entries[i],
            None => {
                let new = Condition::NEW.map(|n| self.get(n));
                let action = new.iter().map(|e| e.action).max().unwrap_or(Action::Allow);
                let override_ = new
                    .iter()
                    .map(|e| e.override_)
                    .max()
                    .unwrap_or(Override::Allow);
                Entry::new(action, override_)
            }
        }
    }

    /// The action of `c`.
    pub fn action(&self, c: Condition) -> Action {
        self.get(c).action
    }

    /// Every stored condition with its entry, in [`Condition::CONCRETE`]
    /// order.
    pub fn entries(&self) -> impl Iterator<Item = (Condition, Entry)> + '_ {
        Condition::CONCRETE
            .iter()
            .copied()
            .zip(self.entries.iter().copied())
    }

    /// The action for creating an object of type `ty`.
    pub fn action_for_new(&self, ty: ObjType) -> Action {
        self.get(Condition::for_new_object(ty)).action
    }

    /// Does any `new-*` entry act on creations?
    pub fn judges_new(&self) -> bool {
        Condition::NEW
            .iter()
            .any(|&c| self.action(c) != Action::Allow)
    }

    /// Sets `c` (every `new-*` condition for `new-any`) to `e`, under
    /// Zircon's absolute-mode rules: an `override-deny` entry cannot change
    /// action (and for `new-any` nothing changes), and setting the action
    /// it already has keeps it `override-deny`.
    pub fn set(&mut self, c: Condition, e: Entry) -> Result<(), Locked> {
        let targets = c.targets();
        for &t in targets {
            let current = self.get(t);
            if current.override_ == Override::Deny && current.action != e.action {
                return Err(Locked {
                    condition: t,
                    current: current.action,
                    requested: e.action,
                });
            }
        }
        for &t in targets {
            if let Some(i) = t.slot() {
                if self.entries[i].override_ == Override::Allow {
                    self.entries[i] = e;
                }
            }
        }
        Ok(())
    }

    /// The single-line form passed to a job's processes and nested jobs:
    /// `v1,` then every entry as `condition=action[:override-deny]`,
    /// comma-separated. Every entry, so that a reader never depends on its
    /// own idea of the defaults.
    pub fn encode_to(&self, w: &mut impl fmt::Write) -> fmt::Result {
        w.write_str(ENCODING_VERSION)?;
        for (c, e) in self.entries() {
            write!(w, ",{c}={e}")?;
        }
        Ok(())
    }

    /// Reads [`Policy::encode_to`]'s form. Every concrete condition must
    /// appear exactly once: a policy from a different version of `handles`
    /// fails loudly instead of being half-enforced.
    pub fn decode(s: &str) -> Result<Policy, DecodeError<'_>> {
        let mut seen: [Option<Entry>; Condition::CONCRETE.len()] =
            [None; Condition::CONCRETE.len()];
        for entry in encoded_entries(s)? {
            let (c, e) = entry?;
            let i = c.slot().ok_or(DecodeError::NotStored(c))?;
            if seen[i].replace(e).is_some() {
                return Err(DecodeError::Twice(c));
            }
        }
        let mut entries = [Entry::allow_override(Action::Allow); Condition::CONCRETE.len()];
        for (i, slot) in seen.iter().enumerate() {
            entries[i] = slot.ok_or(DecodeError::Missing(Condition::CONCRETE[i]))?;
        }
        Ok(Policy { entries })
    }
}

impl Policy {
    /// [`Policy::decode`]'s grammar, but entries left out keep the default
    /// job's: what the shim accepts in `HANDLES_POLICY` when it is set by
    /// hand (`LD_PRELOAD` without `handles run`, which always writes every
    /// entry). Errors as `decode`'s, but for `Missing`.
    pub fn decode_partial(s: &str) -> Result<Policy, DecodeError<'_>> {
        let mut p = Policy::default_job();
        for entry in encoded_entries(s)? {
            let (c, e) = entry?;
            for &t in c.targets() {
                if let Some(i) = t.slot() {
                    p.entries[i] = e;
                }
            }
        }
        Ok(p)
    }
}

/// The entries of an encoded policy, after its version tag.
fn encoded_entries(
    s: &str,
) -> Result<impl Iterator<Item = Result<(Condition, Entry), DecodeError<'_>>>, DecodeError<'_>> {
    let mut parts = s.trim().split(',');
    match parts.next() {
        Some(ENCODING_VERSION) => {}
        Some(v) if v.starts_with('v') && !v.contains('=') => return Err(DecodeError::Version(v)),
        _ => return Err(DecodeError::NoPrefix),
    }
    Ok(parts.map(|part| {
        part.split_once('=')
            .and_then(|(c, e)| Some((Condition::from_name(c.trim())?, Entry::from_text(e)?)))
            .ok_or(DecodeError::Entry(part))
    }))
}

impl Default for Policy {
    fn default() -> Self {
        Policy::default_job()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `action` or `action:override-deny`: the right-hand side of a spec.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.override_ {
            Override::Allow => write!(f, "{}", self.action),
            Override::Deny => write!(f, "{}:{}", self.action, self.override_),
        }
    }
}

/// Every concrete condition, one `condition=action[:override-deny]` per
/// line, no trailing newline: the complete policy, readable without
/// knowing the defaults, and itself a valid policy file.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (c, e)) in self.entries().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{c}={e}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Locked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot set {c}={r}: {c}={cur} is override-deny (set by this job or a parent job)",
            c = self.condition,
            r = self.requested,
            cur = self.current
        )
    }
}

impl fmt::Display for DecodeError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Version(v) => write!(
                f,
                "version '{}' is not supported (this handles reads {ENCODING_VERSION})",
                v.escape_debug()
            ),
            DecodeError::NoPrefix => write!(f, "missing the '{ENCODING_VERSION},' prefix"),
            DecodeError::Entry(e) => write!(
                f,
                "'{}' is not CONDITION=ACTION[:OVERRIDE] with known names",
                e.escape_debug()
            ),
            DecodeError::NotStored(c) => write!(f, "'{c}' is not stored in an encoded policy"),
            DecodeError::Twice(c) => write!(f, "'{c}' appears twice"),
            DecodeError::Missing(c) => write!(f, "'{c}' is missing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf {
        b: [u8; 1024],
        n: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.n + s.len();
            self.b
                .get_mut(self.n..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }

    fn encoded(p: &Policy) -> Buf {
        let mut b = Buf { b: [0; 1024], n: 0 };
        p.encode_to(&mut b).unwrap();
        b
    }

    #[test]
    fn encoding_round_trips_every_entry() {
        let mut p = Policy::default_job();
        p.set(
            Condition::NewSocket,
            Entry::new(Action::DenyException, Override::Deny),
        )
        .unwrap();
        p.set(Condition::BadHandle, Entry::allow_override(Action::Kill))
            .unwrap();
        let b = encoded(&p);
        let text = core::str::from_utf8(&b.b[..b.n]).unwrap();
        assert!(text.starts_with("v1,bad-handle=kill,"));
        assert!(text.contains(",new-socket=deny-exception:override-deny"));
        assert_eq!(Policy::decode(text), Ok(p));
    }

    #[test]
    fn decode_refuses_what_it_cannot_read_whole() {
        assert_eq!(Policy::decode("v2,x"), Err(DecodeError::Version("v2")));
        assert_eq!(
            Policy::decode("bad-handle=allow"),
            Err(DecodeError::NoPrefix)
        );
        assert_eq!(
            Policy::decode("v1,bad-handle=allow"),
            Err(DecodeError::Missing(Condition::WrongObject))
        );
        assert_eq!(
            Policy::decode("v1,bad-handle=trap"),
            Err(DecodeError::Entry("bad-handle=trap"))
        );
        assert_eq!(
            Policy::decode("v1,new-any=allow"),
            Err(DecodeError::NotStored(Condition::NewAny))
        );
    }

    #[test]
    fn a_partial_encoding_keeps_the_defaults_for_what_it_leaves_out() {
        let p = Policy::decode_partial("v1,bad-handle=deny").unwrap();
        assert_eq!(p.action(Condition::BadHandle), Action::Deny);
        assert_eq!(p.action(Condition::NewFile), Action::Allow);
        let p = Policy::decode_partial("v1,new-any=allow,bad-handle=kill").unwrap();
        assert_eq!(p.action(Condition::BadHandle), Action::Kill);
        assert!(Policy::decode_partial("v1,bad-handle=nope").is_err());
    }

    #[test]
    fn override_deny_locks_the_action() {
        let mut p = Policy::default_job();
        p.set(
            Condition::BadHandle,
            Entry::new(Action::Kill, Override::Deny),
        )
        .unwrap();
        let e = p
            .set(Condition::BadHandle, Entry::allow_override(Action::Allow))
            .unwrap_err();
        assert_eq!(e.current, Action::Kill);
        // Same action: accepted, stays locked.
        p.set(Condition::BadHandle, Entry::allow_override(Action::Kill))
            .unwrap();
        assert_eq!(p.get(Condition::BadHandle).override_, Override::Deny);
    }
}
