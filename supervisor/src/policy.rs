//! The job policy, after Zircon's (`zx_job_set_policy`, basic policy).
//!
//! A job has one [`Entry`] (an [`Action`] and an [`Override`] flag) per
//! concrete [`Condition`]. [`Condition::NewAny`] is not stored: setting it
//! sets every `new-*` condition, as `ZX_POL_NEW_ANY` does. The default job
//! ([`Policy::default_job`]) has `bad-handle=allow-exception` and allows
//! everything else, all entries overridable.
//!
//! # Nested jobs
//!
//! A `handles run` inside a supervised job starts from its parent's policy
//! (passed down encoded in [`ENV_VAR`], see [`Policy::encode`]) and applies
//! its own `--policy` specs with [`Policy::set`], which follows Zircon's
//! `ZX_JOB_POL_ABSOLUTE` rules: an `override-allow` entry may be changed
//! freely; an `override-deny` entry may not be changed to another action
//! (the attempt fails with [`PolicyError::Locked`]), and setting it to the
//! action it already has succeeds without unlocking it. The same rule holds
//! within one job, so `--policy bad-handle=kill:override-deny` followed by
//! `--policy bad-handle=allow` is an error, not a silent override.
//!
//! # Text forms
//!
//! - A *spec* (`--policy`): `CONDITION=ACTION[:override-deny|:override-allow]`,
//!   `override-allow` when omitted. Names are lower case as listed in
//!   [`Condition::ALL`] and [`Action::ALL`]; an unknown name gets an error
//!   listing the valid ones and, when one is close, a suggestion.
//! - A *policy file*: one spec per line; `#` starts a comment; blank lines
//!   are ignored. Applied atomically: on an error nothing changes, and the
//!   error names the file and line.
//! - [`Display`](fmt::Display) of a [`Policy`]: *every* concrete condition,
//!   one `condition=action[:override-deny]` line each, in [`Condition::ALL`]
//!   order, with no trailing newline. All entries rather than only the
//!   non-default ones, so that the output reads as the complete policy
//!   without knowing the defaults, and is itself a valid policy file
//!   ([`Policy`]'s `FromStr` reads it back).
//! - The *encoded* form ([`Policy::encode`]) is the same entries on one line,
//!   comma-separated, after a version tag: `v1,bad-handle=allow-exception,…`.
//!   It lists every entry, so a nested job never depends on its own idea of
//!   the defaults, and [`Policy::decode`] rejects anything incomplete.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable through which a supervised job passes its
/// policy to a nested `handles run`.
pub const ENV_VAR: &str = handles_model::protocol::env::POLICY.name();

pub use handles_model::policy::{Action, Condition, Entry, Locked, Override, Policy};

/// Why a policy could not be parsed, changed or decoded. Messages are one
/// line; any user input they quote is escaped.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown condition '{}' (valid: {}){}", .name.escape_debug(), names(&Condition::ALL), did_you_mean(*.suggestion))]
    UnknownCondition {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("unknown action '{}' (valid: {}){}", .name.escape_debug(), names(&Action::ALL), did_you_mean(*.suggestion))]
    UnknownAction {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("unknown override '{}' (valid: override-allow, override-deny){}", .name.escape_debug(), did_you_mean(*.suggestion))]
    UnknownOverride {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("invalid policy '{}': {reason} (expected CONDITION=ACTION[:override-deny])", .spec.escape_debug())]
    Malformed { spec: String, reason: &'static str },
    #[error("cannot set {condition}={requested}: {condition}={current} is override-deny (set by this job or a parent job)")]
    Locked {
        condition: Condition,
        current: Action,
        requested: Action,
    },
    #[error("line {line}: {error}")]
    AtLine {
        line: usize,
        error: Box<PolicyError>,
    },
    #[error("{}:{line}: {error}", .path.display())]
    InFile {
        path: PathBuf,
        line: usize,
        error: Box<PolicyError>,
    },
    #[error("cannot read policy file {}: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid encoded job policy: {reason}")]
    Decode { reason: String },
}

fn names<T: fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn did_you_mean(suggestion: Option<&'static str>) -> String {
    suggestion.map_or_else(String::new, |s| format!("; did you mean '{s}'?"))
}

/// Names that people coming from Linux may type for a `new-*` condition.
const CONDITION_ALIASES: &[(&str, &str)] = &[
    ("new-memfd", "new-vmo"),
    ("new-epoll", "new-port"),
    ("new-eventfd", "new-event"),
    ("new-timerfd", "new-timer"),
    ("new-pidfd", "new-process"),
    ("new-unix", "new-channel"),
    ("new-unix-socket", "new-channel"),
    ("new-fifo", "new-pipe"),
    ("new-directory", "new-dir"),
];

/// The condition named `s`, or an error that lists the valid names and
/// suggests the closest.
pub fn parse_condition(s: &str) -> Result<Condition, PolicyError> {
    if let Some(c) = Condition::ALL.iter().find(|c| c.name() == s) {
        return Ok(*c);
    }
    let names: Vec<&'static str> = Condition::ALL.iter().map(|c| c.name()).collect();
    let normalized = normalize_for_suggestion(s);
    let suggestion = CONDITION_ALIASES
        .iter()
        .find(|(alias, _)| *alias == normalized)
        .map(|(_, name)| *name)
        .or_else(|| closest(s, &names));
    Err(PolicyError::UnknownCondition {
        name: s.to_owned(),
        suggestion,
    })
}

/// The action named `s`, or an error with a suggestion.
pub fn parse_action(s: &str) -> Result<Action, PolicyError> {
    if let Some(a) = Action::ALL.iter().find(|a| a.name() == s) {
        return Ok(*a);
    }
    let names: Vec<&'static str> = Action::ALL.iter().map(|a| a.name()).collect();
    Err(PolicyError::UnknownAction {
        name: s.to_owned(),
        suggestion: closest(s, &names),
    })
}

/// The override named `s`, or an error with a suggestion.
pub fn parse_override(s: &str) -> Result<Override, PolicyError> {
    if let Some(o) = Override::ALL.iter().find(|o| o.name() == s) {
        return Ok(*o);
    }
    let names: Vec<&'static str> = Override::ALL.iter().map(|o| o.name()).collect();
    Err(PolicyError::UnknownOverride {
        name: s.to_owned(),
        suggestion: closest(s, &names),
    })
}

fn normalize_for_suggestion(s: &str) -> String {
    s.trim().to_lowercase().replace('_', "-")
}

/// The candidate nearest to `input` by edit distance (adjacent
/// transpositions count once, case and `_`/`-` are ignored), if it is near
/// enough to be a plausible typo.
fn closest(input: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let input: Vec<char> = normalize_for_suggestion(input).chars().collect();
    if input.is_empty() {
        return None;
    }
    let limit = (input.len() / 3).max(2);
    candidates
        .iter()
        .filter_map(|c| {
            let c_chars: Vec<char> = c.chars().collect();
            if input.len().abs_diff(c_chars.len()) > limit {
                return None;
            }
            let d = edit_distance(&input, &c_chars);
            (d <= limit).then_some((d, *c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = best;
        }
    }
    d[a.len() * w + b.len()]
}

/// Parses `CONDITION=ACTION[:OVERRIDE]`.
pub fn parse_spec(spec: &str) -> Result<(Condition, Entry), PolicyError> {
    let malformed = |reason| PolicyError::Malformed {
        spec: spec.to_owned(),
        reason,
    };
    let (condition, rest) = spec.split_once('=').ok_or_else(|| malformed("no '='"))?;
    let (action, override_) = match rest.split_once(':') {
        Some((a, o)) => (a, Some(o)),
        None => (rest, None),
    };
    let (condition, action) = (condition.trim(), action.trim());
    if condition.is_empty() {
        return Err(malformed("no condition before '='"));
    }
    if action.is_empty() {
        return Err(malformed("no action after '='"));
    }
    let condition = parse_condition(condition)?;
    let action = parse_action(action)?;
    let override_ = match override_.map(str::trim) {
        None => Override::Allow,
        Some("") => return Err(malformed("no override after ':'")),
        Some(o) => parse_override(o)?,
    };
    Ok((condition, Entry::new(action, override_)))
}

/// The user-facing text forms of a [`Policy`]: specs, policy files and
/// the encoded form as a `String`, with errors that name what is wrong.
pub trait PolicyText: Sized {
    fn apply_spec(&mut self, spec: &str) -> Result<(), PolicyError>;
    fn apply_text(&mut self, text: &str) -> Result<(), PolicyError>;
    fn apply_file(&mut self, path: &Path) -> Result<(), PolicyError>;
    fn encode(&self) -> String;
    fn from_text(s: &str) -> Result<Self, PolicyError>;
}

impl PolicyText for Policy {
    /// Applies one `CONDITION=ACTION[:override-deny|:override-allow]` spec.
    fn apply_spec(&mut self, spec: &str) -> Result<(), PolicyError> {
        let (c, e) = parse_spec(spec)?;
        Ok(self.set(c, e)?)
    }

    /// Applies a policy file's text: one spec per line, `#` comments, blank
    /// lines ignored. All or nothing; errors are [`PolicyError::AtLine`].
    fn apply_text(&mut self, text: &str) -> Result<(), PolicyError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut next = *self;
        for (i, line) in text.lines().enumerate() {
            let spec = line
                .split_once('#')
                .map_or(line, |(before, _)| before)
                .trim();
            if spec.is_empty() {
                continue;
            }
            next.apply_spec(spec).map_err(|error| PolicyError::AtLine {
                line: i + 1,
                error: Box::new(error),
            })?;
        }
        *self = next;
        Ok(())
    }

    /// Applies a policy file (see [`PolicyText::apply_text`]); errors name
    /// the file and line.
    fn apply_file(&mut self, path: &Path) -> Result<(), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Io {
            path: path.to_owned(),
            error,
        })?;
        self.apply_text(&text).map_err(|e| match e {
            PolicyError::AtLine { line, error } => PolicyError::InFile {
                path: path.to_owned(),
                line,
                error,
            },
            other => other,
        })
    }

    /// The single-line form passed to the job in [`ENV_VAR`]
    /// ([`Policy::encode_to`]).
    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.encode_to(&mut out);
        out
    }

    /// A policy file's text on top of [`Policy::default_job`]; reads back
    /// what [`Policy`]'s `Display` writes.
    fn from_text(s: &str) -> Result<Policy, PolicyError> {
        let mut p = Policy::default_job();
        p.apply_text(s)?;
        Ok(p)
    }
}

impl From<Locked> for PolicyError {
    fn from(l: Locked) -> PolicyError {
        PolicyError::Locked {
            condition: l.condition,
            current: l.current,
            requested: l.requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handles_model::ObjType;
    use proptest::prelude::*;

    fn entry(action: Action) -> Entry {
        Entry::allow_override(action)
    }

    fn locked(action: Action) -> Entry {
        Entry::new(action, Override::Deny)
    }

    #[test]
    fn names_are_the_documented_ones_and_round_trip() {
        let conditions: Vec<&str> = Condition::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(
            conditions,
            [
                "bad-handle",
                "wrong-object",
                "new-any",
                "new-file",
                "new-dir",
                "new-pipe",
                "new-channel",
                "new-socket",
                "new-event",
                "new-port",
                "new-timer",
                "new-vmo",
                "new-process",
                "new-other"
            ]
        );
        let actions: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(
            actions,
            ["allow", "deny", "allow-exception", "deny-exception", "kill"]
        );
        for c in Condition::ALL {
            assert_eq!(parse_condition(&c.to_string()).unwrap(), c);
            assert!(!c.help().is_empty());
        }
        for a in Action::ALL {
            assert_eq!(parse_action(&a.to_string()).unwrap(), a);
        }
        for o in Override::ALL {
            assert_eq!(parse_override(&o.to_string()).unwrap(), o);
        }
        assert_eq!(Condition::CONCRETE.len() + 1, Condition::ALL.len());
        assert!(Condition::NEW.iter().all(|c| c.is_new()));
        assert!(!Condition::BadHandle.is_new() && !Condition::NewAny.is_new());
    }

    #[test]
    fn action_properties() {
        assert!(Action::Allow.lets_syscall_run() && Action::AllowException.lets_syscall_run());
        assert!(!Action::Deny.lets_syscall_run() && !Action::DenyException.lets_syscall_run());
        assert!(!Action::Kill.lets_syscall_run());
        assert!(
            Action::AllowException.raises_exception() && Action::DenyException.raises_exception()
        );
        assert!(!Action::Allow.raises_exception() && !Action::Kill.raises_exception());
    }

    #[test]
    fn default_job_traps_bad_handles_and_allows_the_rest() {
        let p = Policy::default_job();
        for c in Condition::ALL {
            let want = if c == Condition::BadHandle {
                Action::AllowException
            } else {
                Action::Allow
            };
            assert_eq!(p.get(c), entry(want), "{c}");
        }
        assert_eq!(Policy::default(), p);
    }

    #[test]
    fn created_objects_map_to_their_new_condition() {
        let mut p = Policy::default_job();
        let distinct = [
            (ObjType::File, Condition::NewFile, Action::Deny),
            (ObjType::Dir, Condition::NewDir, Action::Kill),
            (ObjType::Pipe, Condition::NewPipe, Action::DenyException),
            (
                ObjType::Channel,
                Condition::NewChannel,
                Action::AllowException,
            ),
            (ObjType::Socket, Condition::NewSocket, Action::Deny),
            (ObjType::Event, Condition::NewEvent, Action::Kill),
            (ObjType::Port, Condition::NewPort, Action::DenyException),
            (ObjType::Timer, Condition::NewTimer, Action::AllowException),
            (ObjType::Vmo, Condition::NewVmo, Action::Deny),
            (ObjType::Process, Condition::NewProcess, Action::Kill),
        ];
        for (_, c, a) in distinct {
            p.set(c, entry(a)).unwrap();
        }
        p.set(Condition::NewOther, entry(Action::DenyException))
            .unwrap();
        for ty in ObjType::ALL {
            let (c, a) = distinct
                .iter()
                .find(|(t, _, _)| *t == ty)
                .map_or((Condition::NewOther, Action::DenyException), |(_, c, a)| {
                    (*c, *a)
                });
            assert_eq!(Condition::for_new_object(ty), c, "{ty:?}");
            assert_eq!(p.action_for_new(ty), a, "{ty:?}");
        }
    }

    #[test]
    fn unknown_names_list_the_valid_ones_and_suggest_the_closest() {
        let e = parse_condition("bad-handel").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown condition 'bad-handel' (valid: bad-handle, wrong-object, new-any, \
             new-file, new-dir, new-pipe, new-channel, new-socket, new-event, new-port, \
             new-timer, new-vmo, new-process, new-other); did you mean 'bad-handle'?"
        );
        let suggestion = |s: &str| match parse_condition(s) {
            Err(PolicyError::UnknownCondition { suggestion, .. }) => suggestion,
            other => panic!("{other:?}"),
        };
        assert_eq!(suggestion("BAD_HANDLE"), Some("bad-handle"));
        assert_eq!(suggestion("badhandle"), Some("bad-handle"));
        assert_eq!(suggestion("new-memfd"), Some("new-vmo"));
        assert_eq!(suggestion("new-epoll"), Some("new-port"));
        assert_eq!(suggestion("new-sockt"), Some("new-socket"));
        assert_eq!(suggestion("xyzzy"), None);
        assert_eq!(suggestion(""), None);

        let e = parse_action("allow-exeption").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown action 'allow-exeption' (valid: allow, deny, allow-exception, \
             deny-exception, kill); did you mean 'allow-exception'?"
        );
        assert!(matches!(
            parse_action("kil"),
            Err(PolicyError::UnknownAction {
                suggestion: Some("kill"),
                ..
            })
        ));
        assert!(matches!(
            parse_action("trap"),
            Err(PolicyError::UnknownAction {
                suggestion: None,
                ..
            })
        ));
        assert_eq!(
            parse_override("override-dny").unwrap_err().to_string(),
            "unknown override 'override-dny' (valid: override-allow, override-deny); \
             did you mean 'override-deny'?"
        );
    }

    #[test]
    fn specs_parse_with_and_without_override() {
        assert_eq!(
            parse_spec("bad-handle=kill").unwrap(),
            (Condition::BadHandle, entry(Action::Kill))
        );
        assert_eq!(
            parse_spec("new-any=deny:override-deny").unwrap(),
            (Condition::NewAny, locked(Action::Deny))
        );
        assert_eq!(
            parse_spec(" new-vmo = deny-exception : override-allow ").unwrap(),
            (Condition::NewVmo, entry(Action::DenyException))
        );
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        let reason = |s: &str| match parse_spec(s) {
            Err(PolicyError::Malformed { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(reason("bad-handle"), "no '='");
        assert_eq!(reason("=kill"), "no condition before '='");
        assert_eq!(reason("bad-handle="), "no action after '='");
        assert_eq!(reason("bad-handle=kill:"), "no override after ':'");
        assert_eq!(
            parse_spec("bad-handle").unwrap_err().to_string(),
            "invalid policy 'bad-handle': no '=' (expected CONDITION=ACTION[:override-deny])"
        );
        assert!(matches!(
            parse_spec("bad-handle=kill:forever"),
            Err(PolicyError::UnknownOverride { .. })
        ));
        assert!(matches!(
            parse_spec("bad-handle=kill=deny"),
            Err(PolicyError::UnknownAction { .. })
        ));
    }

    #[test]
    fn override_deny_locks_the_action_but_accepts_the_same_one() {
        let mut p = Policy::default_job();
        p.apply_spec("bad-handle=kill:override-deny").unwrap();
        let err = p.apply_spec("bad-handle=allow").unwrap_err();
        assert!(matches!(
            err,
            PolicyError::Locked {
                condition: Condition::BadHandle,
                current: Action::Kill,
                requested: Action::Allow
            }
        ));
        assert_eq!(
            err.to_string(),
            "cannot set bad-handle=allow: bad-handle=kill is override-deny (set by this job or a parent job)"
        );
        // Same action: fine, and it stays locked (Zircon does not let a
        // child unlock an entry).
        p.apply_spec("bad-handle=kill:override-allow").unwrap();
        assert_eq!(p.get(Condition::BadHandle), locked(Action::Kill));
        p.apply_spec("bad-handle=kill").unwrap();
        assert_eq!(p.get(Condition::BadHandle), locked(Action::Kill));
        // Other entries are unaffected.
        p.apply_spec("wrong-object=deny").unwrap();
        assert_eq!(p.get(Condition::WrongObject), entry(Action::Deny));
    }

    #[test]
    fn override_allow_entries_can_be_changed_and_locked() {
        let mut p = Policy::default_job();
        p.apply_spec("new-file=deny").unwrap();
        p.apply_spec("new-file=kill").unwrap();
        p.apply_spec("new-file=allow:override-deny").unwrap();
        assert_eq!(p.get(Condition::NewFile), locked(Action::Allow));
    }

    #[test]
    fn new_any_sets_every_new_condition() {
        let mut p = Policy::default_job();
        p.apply_spec("new-any=deny").unwrap();
        for c in Condition::NEW {
            assert_eq!(p.get(c), entry(Action::Deny), "{c}");
        }
        assert_eq!(p.get(Condition::BadHandle), entry(Action::AllowException));
        assert_eq!(p.get(Condition::WrongObject), entry(Action::Allow));
        assert_eq!(p.get(Condition::NewAny), entry(Action::Deny));
    }

    #[test]
    fn new_any_is_all_or_nothing_against_locked_entries() {
        let mut p = Policy::default_job();
        p.apply_spec("new-pipe=kill:override-deny").unwrap();
        let before = p;
        assert!(matches!(
            p.apply_spec("new-any=deny"),
            Err(PolicyError::Locked {
                condition: Condition::NewPipe,
                ..
            })
        ));
        assert_eq!(p, before);
        // Setting all new-* to the locked entry's action is fine.
        p.apply_spec("new-any=kill:override-deny").unwrap();
        for c in Condition::NEW {
            assert_eq!(p.get(c), locked(Action::Kill), "{c}");
        }
    }

    #[test]
    fn get_new_any_summarizes_mixed_entries() {
        let mut p = Policy::default_job();
        p.apply_spec("new-file=deny").unwrap();
        p.apply_spec("new-vmo=allow:override-deny").unwrap();
        assert_eq!(p.get(Condition::NewAny), locked(Action::Deny));
    }

    #[test]
    fn policy_text_has_comments_blank_lines_and_is_atomic() {
        let mut p = Policy::default_job();
        p.apply_text(
            "\u{feff}# the CI policy\n\
             \n\
             bad-handle=kill:override-deny   # no second chances\n\
             \t new-socket = deny \n\
             new-any=allow-exception\r\n",
        )
        .unwrap();
        assert_eq!(p.get(Condition::BadHandle), locked(Action::Kill));
        assert_eq!(p.get(Condition::NewSocket), entry(Action::AllowException));
        assert_eq!(p.get(Condition::NewOther), entry(Action::AllowException));

        let before = p;
        let err = p
            .apply_text("wrong-object=deny\n# fine so far\nbad-handel=deny\n")
            .unwrap_err();
        assert!(
            matches!(&err, PolicyError::AtLine { line: 3, error } if matches!(**error, PolicyError::UnknownCondition { .. })),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("line 3: unknown condition 'bad-handel'"));
        assert_eq!(p, before, "a failed file must change nothing");
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("handles-policy-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn policy_files_name_the_file_and_line_in_errors() {
        let good = temp_file("good", "bad-handle=deny-exception\nnew-dir=deny # dirs\n");
        let mut p = Policy::default_job();
        p.apply_file(&good).unwrap();
        assert_eq!(p.get(Condition::BadHandle), entry(Action::DenyException));
        assert_eq!(p.get(Condition::NewDir), entry(Action::Deny));

        let bad = temp_file("bad", "# header\nnew-file=deny\nnew-dir=sometimes\n");
        let err = p.apply_file(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: unknown action 'sometimes' (valid: allow, deny, allow-exception, deny-exception, kill)",
                bad.display()
            )
        );
        assert_eq!(p.get(Condition::NewFile), entry(Action::Allow));

        let missing = std::env::temp_dir().join("handles-policy-test-does-not-exist");
        let err = p.apply_file(&missing).unwrap_err();
        assert!(matches!(err, PolicyError::Io { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read policy file {}: ", missing.display())));
        for f in [good, bad] {
            let _ = std::fs::remove_file(f);
        }
    }

    #[test]
    fn display_lists_every_entry() {
        let mut p = Policy::default_job();
        p.apply_spec("new-vmo=kill:override-deny").unwrap();
        assert_eq!(
            p.to_string(),
            "bad-handle=allow-exception\n\
             wrong-object=allow\n\
             new-file=allow\n\
             new-dir=allow\n\
             new-pipe=allow\n\
             new-channel=allow\n\
             new-socket=allow\n\
             new-event=allow\n\
             new-port=allow\n\
             new-timer=allow\n\
             new-vmo=kill:override-deny\n\
             new-process=allow\n\
             new-other=allow"
        );
        assert_eq!(
            <Policy as PolicyText>::from_text(&p.to_string()).unwrap(),
            p
        );
    }

    #[test]
    fn encoding_is_one_versioned_line() {
        let mut p = Policy::default_job();
        p.apply_spec("bad-handle=kill:override-deny").unwrap();
        let s = p.encode();
        assert_eq!(
            s,
            "v1,bad-handle=kill:override-deny,wrong-object=allow,new-file=allow,new-dir=allow,\
             new-pipe=allow,new-channel=allow,new-socket=allow,new-event=allow,new-port=allow,\
             new-timer=allow,new-vmo=allow,new-process=allow,new-other=allow"
        );
        assert!(!s.contains(char::is_whitespace));
        assert_eq!(Policy::decode(&s).unwrap(), p);
    }

    #[test]
    fn decode_rejects_incomplete_or_foreign_encodings() {
        let good = Policy::default_job().encode();
        let reason = |s: &str| match Policy::decode(s) {
            Err(e) => e.to_string(),
            other => panic!("{s:?}: {other:?}"),
        };
        assert!(reason("").contains("prefix"));
        assert!(reason("bad-handle=kill").contains("prefix"));
        assert!(reason(&good.replacen("v1", "v2", 1)).contains("version 'v2'"));
        assert!(reason(&good.replace(",new-other=allow", "")).contains("'new-other' is missing"));
        assert!(reason(&format!("{good},new-file=deny")).contains("'new-file' appears twice"));
        assert!(reason(&format!("{good},new-any=deny")).contains("new-any"));
        assert!(reason(&good.replace("new-dir=allow", "new-dir=maybe")).contains("new-dir=maybe"));
        assert!(Policy::decode(&format!("{good}\n")).is_ok());
    }

    #[test]
    fn nested_job_inherits_and_may_only_change_overridable_entries() {
        let mut parent = Policy::default_job();
        parent.apply_spec("bad-handle=kill:override-deny").unwrap();
        parent.apply_spec("new-socket=deny").unwrap();

        let mut child = Policy::decode(&parent.encode()).unwrap();
        assert_eq!(child, parent);
        assert!(child.apply_spec("bad-handle=allow-exception").is_err());
        child.apply_spec("new-socket=allow").unwrap();
        child.apply_spec("new-file=deny:override-deny").unwrap();

        // And the grandchild sees both locks.
        let mut grandchild = Policy::decode(&child.encode()).unwrap();
        assert!(grandchild.apply_spec("bad-handle=deny").is_err());
        assert!(grandchild.apply_spec("new-file=allow").is_err());
        grandchild.apply_spec("new-socket=kill").unwrap();
    }

    #[test]
    fn messages_are_one_line_even_for_hostile_input() {
        let inputs = [
            "bad\nhandle=kill",
            "bad-handle=ki\nll",
            "bad-handle=kill:o\r\nverride",
        ];
        for s in inputs {
            let msg = parse_spec(s).unwrap_err().to_string();
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg}");
        }
        let msg = Policy::decode("v1,\nbad").unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
    }

    // ---- properties ----

    fn arb_action() -> impl Strategy<Value = Action> {
        prop::sample::select(Action::ALL.to_vec())
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (arb_action(), prop::sample::select(Override::ALL.to_vec()))
            .prop_map(|(a, o)| Entry::new(a, o))
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        prop::collection::vec(arb_entry(), Condition::CONCRETE.len()).prop_map(|v| {
            let mut p = Policy::default_job();
            for ((c, _), e) in Policy::default_job().entries().zip(v) {
                p.set(c, Entry::allow_override(e.action)).unwrap();
                p.set(c, e).unwrap();
            }
            p
        })
    }

    fn arb_condition() -> impl Strategy<Value = Condition> {
        prop::sample::select(Condition::ALL.to_vec())
    }

    /// Strings made of the grammar's own pieces, which reach deeper than
    /// uniformly random text.
    fn arb_policyish() -> impl Strategy<Value = String> {
        let mut tokens: Vec<String> = Condition::ALL.iter().map(|c| c.to_string()).collect();
        tokens.extend(Action::ALL.iter().map(|a| a.to_string()));
        tokens.extend(Override::ALL.iter().map(|o| o.to_string()));
        tokens.extend(
            [
                "=", ":", ",", "#", "\n", " ", "v1", "v2", "-", "\u{feff}", "é", "",
            ]
            .map(String::from),
        );
        prop::collection::vec(prop_oneof![prop::sample::select(tokens), ".{0,4}"], 0..24)
            .prop_map(|v| v.concat())
    }

    fn one_line(e: &PolicyError) -> bool {
        let s = e.to_string();
        !s.is_empty() && !s.contains('\n') && !s.contains('\r')
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in prop_oneof![any::<String>(), arb_policyish()]) {
            let mut p = Policy::default_job();
            for r in [
                parse_condition(&s).map(drop),
                parse_action(&s).map(drop),
                parse_override(&s).map(drop),
                parse_spec(&s).map(drop),
                p.apply_spec(&s),
                p.apply_text(&s),
                Policy::decode(&s).map(drop).map_err(|e| PolicyError::Decode { reason: e.to_string() }),
                <Policy as PolicyText>::from_text(&s).map(drop),
            ] {
                if let Err(e) = r {
                    prop_assert!(one_line(&e), "{:?}", e.to_string());
                }
            }
        }

        #[test]
        fn encode_decode_round_trips(p in arb_policy()) {
            let s = p.encode();
            prop_assert!(!s.contains(char::is_whitespace));
            prop_assert_eq!(Policy::decode(&s).unwrap(), p);
        }

        #[test]
        fn display_reparses_to_the_same_policy(p in arb_policy()) {
            prop_assert_eq!(<Policy as PolicyText>::from_text(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn set_follows_the_override_rules(p in arb_policy(), c in arb_condition(), e in arb_entry()) {
            let mut after = p;
            let result = after.set(c, e);
            let targets: &[Condition] = if c == Condition::NewAny { &Condition::NEW } else { std::slice::from_ref(&c) };
            let blocked = targets.iter().any(|&t| {
                let cur = p.get(t);
                cur.override_ == Override::Deny && cur.action != e.action
            });
            if blocked {
                let is_locked = result.is_err();
                prop_assert!(is_locked);
                prop_assert_eq!(&after, &p);
            } else {
                prop_assert!(result.is_ok());
                for &t in targets {
                    let want = if p.get(t).override_ == Override::Deny { p.get(t) } else { e };
                    prop_assert_eq!(after.get(t), want);
                }
            }
            for other in Condition::CONCRETE {
                if !targets.contains(&other) {
                    prop_assert_eq!(after.get(other), p.get(other));
                }
            }
        }

        #[test]
        fn locked_entries_never_change(
            p in arb_policy(),
            changes in prop::collection::vec((arb_condition(), arb_entry()), 0..20),
        ) {
            let mut q = p;
            for (c, e) in changes {
                let _ = q.set(c, e);
            }
            for c in Condition::CONCRETE {
                if p.get(c).override_ == Override::Deny {
                    prop_assert_eq!(q.get(c), p.get(c));
                }
            }
        }
    }
}
