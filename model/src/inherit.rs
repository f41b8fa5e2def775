//! Implicit crossings: which handles a new image gets without anyone
//! having given them to it (`handles run --inherit-check`).
//!
//! Zircon never passes a handle implicitly: a new process gets exactly the
//! handles it is handed. On Linux every fd without O_CLOEXEC crosses
//! `execve`. Most crossings are deliberate (a shell's redirections, a
//! pipeline's ends dup'ed onto 0 and 1, `posix_spawn` file actions,
//! CPython's `pass_fds`, make's jobserver), and the rest are the bug: a
//! listening socket inherited by a spawned logger keeps the port bound.
//!
//! [`judge`] decides, for one fd that survived an exec, from facts both
//! layers can establish in every mode that has a supervisor (the kernel's
//! view at the exec event, and the creation records of the shim's table or
//! the supervisor's model). The rule (docs/inherit.md):
//!
//! - stdio (0, 1, 2) always crosses on purpose;
//! - an fd a shell holds crosses on purpose: shells keep their own fds
//!   close-on-exec, so any other is one the script put there (`exec
//!   3>file`, `cmd 3<&0`) or one the shell itself inherited;
//! - an fd *placed* on purpose crosses on purpose. Placed: the target of
//!   `dup2`/`dup3`/`fcntl(F_DUPFD*)` (the caller chose the number), or
//!   one whose close-on-exec was cleared explicitly (`fcntl(F_SETFD)`,
//!   `ioctl(FIONCLEX)`, CPython's `os.set_inheritable`);
//! - in a process forked since its last exec, a number that no longer
//!   holds the parent's object was placed after the fork (the child's
//!   `dup2`, a `posix_spawn` file action, which the kernel shows even
//!   where no layer saw the call), and one the parent still holds with
//!   close-on-exec set had its flag cleared after the fork (`pass_fds`);
//! - an fd open when the image started (inherited across an earlier exec)
//!   is not this exec's crossing: it was judged where it first crossed;
//! - everything else crosses implicitly and is reported, blamed on the
//!   record that created it (the process's own, or its parent's).

/// What a layer's records say of an fd number's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// No record: created by a call no layer saw.
    Unknown,
    /// Open when the process image started (inherited across exec).
    AtImageStart,
    /// Created in this image (before a fork counts).
    Created {
        /// By `dup2`, `dup3` or `fcntl(F_DUPFD*)`: the number was chosen.
        placing: bool,
        /// Its close-on-exec flag was cleared explicitly since.
        inheritable: bool,
    },
}

impl Record {
    fn on_purpose(self) -> bool {
        matches!(
            self,
            Record::Created { placing: true, .. }
                | Record::Created {
                    inheritable: true,
                    ..
                }
        )
    }
}

/// What the parent shows of the same number, for a process forked since
/// its last exec whose parent is still alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The parent holds the same open file at the same number (kcmp).
    pub same_object: bool,
    /// The parent's copy has close-on-exec set.
    pub cloexec: bool,
    /// The parent's image is a shell.
    pub shell: bool,
    /// The parent's records of that number.
    pub record: Record,
}

/// Everything [`judge`] needs about one fd that survived an exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub fd: i32,
    /// The image that exec'd is a shell (`judge::is_shell`).
    pub shell: bool,
    /// The exec'ing process's own records of that number.
    pub own: Record,
    /// Set when the process was forked since its last exec and its parent
    /// is alive.
    pub parent: Option<Parent>,
}

/// Why a crossing is deliberate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Stdio,
    Shell,
    /// Placed by `dup2`/`dup3`/`F_DUPFD*` or made inheritable explicitly.
    Placed,
    /// The number holds another object than the parent's: put there after
    /// the fork.
    PlacedAfterFork,
    /// The parent's copy is close-on-exec: cleared after the fork.
    ClearedAfterFork,
}

/// Whose record created an implicitly crossing handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Own,
    Parent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    OnPurpose(Purpose),
    /// Open when the image started: judged at the exec that brought it.
    Earlier,
    /// Crosses without having been given: reported.
    Implicit(Blame),
}

/// The verdict on one fd that survived an exec (rules in the module doc).
pub fn judge(c: &Crossing) -> Verdict {
    if (0..=2).contains(&c.fd) {
        return Verdict::OnPurpose(Purpose::Stdio);
    }
    if c.shell {
        return Verdict::OnPurpose(Purpose::Shell);
    }
    if c.own.on_purpose() {
        return Verdict::OnPurpose(Purpose::Placed);
    }
    if let Some(p) = c.parent {
        if !p.same_object {
            // Not the parent's object: made in the child since the fork.
            // Only a creation the child's records saw, by a call that
            // does not choose its number, is its own implicit crossing;
            // an unseen one is a placement only the kernel shows
            // (posix_spawn's dup2 inside libc).
            return match c.own {
                Record::Created { .. } => Verdict::Implicit(Blame::Own),
                _ => Verdict::OnPurpose(Purpose::PlacedAfterFork),
            };
        }
        if p.cloexec {
            return Verdict::OnPurpose(Purpose::ClearedAfterFork);
        }
        if p.shell {
            return Verdict::OnPurpose(Purpose::Shell);
        }
        return match p.record {
            r if r.on_purpose() => Verdict::OnPurpose(Purpose::Placed),
            Record::AtImageStart => Verdict::Earlier,
            _ => Verdict::Implicit(Blame::Parent),
        };
    }
    match c.own {
        Record::AtImageStart => Verdict::Earlier,
        _ => Verdict::Implicit(Blame::Own),
    }
}

/// Whether a handle made by syscall `name` sits at a number its caller
/// chose (the target of `dup2`, `dup3`, `fcntl(F_DUPFD*)`).
pub fn is_placing_call(name: &str) -> bool {
    matches!(name, "dup2" | "dup3" | "fcntl")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENED: Record = Record::Created {
        placing: false,
        inheritable: false,
    };
    const DUP2: Record = Record::Created {
        placing: true,
        inheritable: false,
    };
    const SETFD: Record = Record::Created {
        placing: false,
        inheritable: true,
    };

    fn alone(fd: i32, own: Record) -> Crossing {
        Crossing {
            fd,
            shell: false,
            own,
            parent: None,
        }
    }

    fn forked(own: Record, parent: Parent) -> Crossing {
        Crossing {
            fd: 5,
            shell: false,
            own,
            parent: Some(parent),
        }
    }

    fn parent(same_object: bool, cloexec: bool, record: Record) -> Parent {
        Parent {
            same_object,
            cloexec,
            shell: false,
            record,
        }
    }

    #[test]
    fn stdio_always_crosses_on_purpose() {
        for fd in 0..=2 {
            assert_eq!(
                judge(&alone(fd, OPENED)),
                Verdict::OnPurpose(Purpose::Stdio)
            );
        }
    }

    #[test]
    fn a_file_opened_without_cloexec_and_execed_into_is_implicit() {
        assert_eq!(judge(&alone(3, OPENED)), Verdict::Implicit(Blame::Own));
        assert_eq!(
            judge(&alone(3, Record::Unknown)),
            Verdict::Implicit(Blame::Own)
        );
    }

    #[test]
    fn what_the_image_inherited_was_judged_where_it_first_crossed() {
        assert_eq!(judge(&alone(7, Record::AtImageStart)), Verdict::Earlier);
        let p = parent(true, false, Record::AtImageStart);
        assert_eq!(judge(&forked(Record::AtImageStart, p)), Verdict::Earlier);
    }

    #[test]
    fn placed_numbers_and_cleared_flags_are_deliberate() {
        assert_eq!(judge(&alone(3, DUP2)), Verdict::OnPurpose(Purpose::Placed));
        assert_eq!(judge(&alone(3, SETFD)), Verdict::OnPurpose(Purpose::Placed));
        // make's jobserver: the parent clears the flag before the fork.
        let p = parent(true, false, SETFD);
        assert_eq!(
            judge(&forked(SETFD, p)),
            Verdict::OnPurpose(Purpose::Placed)
        );
    }

    #[test]
    fn a_shell_passes_what_it_holds() {
        let mut c = alone(3, OPENED);
        c.shell = true;
        assert_eq!(judge(&c), Verdict::OnPurpose(Purpose::Shell));
        let mut p = parent(true, false, OPENED);
        p.shell = true;
        assert_eq!(
            judge(&forked(OPENED, p)),
            Verdict::OnPurpose(Purpose::Shell)
        );
    }

    #[test]
    fn the_parents_leak_is_blamed_on_the_parent() {
        let p = parent(true, false, OPENED);
        assert_eq!(judge(&forked(OPENED, p)), Verdict::Implicit(Blame::Parent));
        let p = parent(true, false, Record::Unknown);
        assert_eq!(
            judge(&forked(Record::Unknown, p)),
            Verdict::Implicit(Blame::Parent)
        );
    }

    #[test]
    fn pass_fds_clears_the_flag_after_the_fork() {
        // Created O_CLOEXEC in the parent, made inheritable in the child
        // where no layer saw it (vfork child, ioctl FIONCLEX).
        let p = parent(true, true, OPENED);
        assert_eq!(
            judge(&forked(OPENED, p)),
            Verdict::OnPurpose(Purpose::ClearedAfterFork)
        );
    }

    #[test]
    fn another_object_than_the_parents_was_placed_after_the_fork() {
        // posix_spawn's dup2 inside libc: no record in the child.
        let p = parent(false, false, OPENED);
        assert_eq!(
            judge(&forked(Record::Unknown, p)),
            Verdict::OnPurpose(Purpose::PlacedAfterFork)
        );
        // ...but a file the child opened itself without O_CLOEXEC is its
        // own implicit crossing.
        assert_eq!(judge(&forked(OPENED, p)), Verdict::Implicit(Blame::Own));
        assert_eq!(judge(&forked(DUP2, p)), Verdict::OnPurpose(Purpose::Placed));
    }

    #[test]
    fn placing_calls() {
        for n in ["dup2", "dup3", "fcntl"] {
            assert!(is_placing_call(n));
        }
        for n in ["dup", "openat", "socket", "pipe2", "accept4"] {
            assert!(!is_placing_call(n));
        }
    }
}
