//! Suppressions: rules that silence known, accepted reports, in the spirit
//! of valgrind's suppression files.
//!
//! ```text
//! # a vendored library closes a pipe end twice; harmless here
//! [vendor-lib-double-close]
//! report = bad-handle          # bad-handle, leak, new-*, ... (glob)
//! kind = double-close          # double-close, use, close-never-opened, dup, leak (glob)
//! type = pipe                  # object type (glob)
//! path = *                     # link target or description (glob)
//! frame = obj:*/libvendor.so*  # fun:GLOB, obj:GLOB (module path), src:GLOB (file)
//! frame = fun:execute_*        # several frame lines: each must match some frame
//! fd = ??*                     # the fd number (glob over its decimal form)
//! argument = yes               # the file is named by one of the process's arguments
//! ```
//!
//! A rule matches an event when every key it sets matches. Unknown keys are
//! errors (a typo must not silently widen a rule). `fd` and `argument` are
//! facts only some reports carry (leaks, see [`Facts`]): a rule that sets
//! them matches nothing else.

use std::path::Path;

/// What a report is about, as rules see it.
#[derive(Debug, Default, Clone)]
pub struct Event<'a> {
    pub report: &'a str,
    pub kind: &'a str,
    pub ty: &'a str,
    pub path: &'a str,
    /// Every frame of every stack in the report.
    pub frames: Vec<FrameRef<'a>>,
}

/// Facts about the handle that not every report has: the leak check knows
/// them, the exception path does not (its rules cannot use `fd` or
/// `argument`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts<'a> {
    pub fd: Option<i32>,
    /// The files the process's command-line arguments name: for each
    /// argument that is not an option, its resolved absolute path and the
    /// argument as written (see [`names_argument`]).
    pub arguments: &'a [String],
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FrameRef<'a> {
    pub function: Option<&'a str>,
    pub module: Option<&'a str>,
    pub file: Option<&'a str>,
}

impl<'a> FrameRef<'a> {
    /// What a rule sees of each frame of a symbolized stack.
    pub fn all(frames: &'a [crate::backtrace::Frame]) -> Vec<FrameRef<'a>> {
        frames
            .iter()
            .map(|f| FrameRef {
                function: f.function.as_deref(),
                module: f.module.as_deref(),
                file: f.file.as_deref(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FramePattern {
    Fun(String),
    Obj(String),
    Src(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub name: String,
    report: Option<String>,
    kind: Option<String>,
    ty: Option<String>,
    path: Option<String>,
    fd: Option<String>,
    /// `argument = yes`: the handle's path is a file the process's
    /// arguments name (a shell's script).
    argument: bool,
    frames: Vec<FramePattern>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuppressError {
    #[error("{file}:{line}: {msg}")]
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("reading suppressions {file}: {msg}")]
    Io { file: String, msg: String },
}

/// Shell-style glob: `*` any run, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether `path` (a handle's link target) is the file one of `arguments`
/// names. Each argument is given as the caller resolved it (absolute,
/// symlinks followed) and as written: a relative argument written without
/// `..` also matches a path that ends with it, so a script opened before a
/// `cd` is still recognized.
pub fn names_argument(path: &str, arguments: &[String]) -> bool {
    if path.is_empty() {
        return false;
    }
    arguments.iter().any(|a| {
        if a.is_empty() {
            return false;
        }
        if a == path {
            return true;
        }
        if a.starts_with('/') || a.split('/').any(|c| c == "..") {
            return false;
        }
        let mut rel = a.as_str();
        while let Some(r) = rel.strip_prefix("./") {
            rel = r;
        }
        !rel.is_empty()
            && path
                .strip_suffix(rel)
                .is_some_and(|head| head.ends_with('/'))
    })
}

impl Rule {
    pub fn matches(&self, e: &Event<'_>) -> bool {
        self.matches_with(e, &Facts::default())
    }

    /// Matching with the facts only some reports carry.
    pub fn matches_with(&self, e: &Event<'_>, facts: &Facts<'_>) -> bool {
        let field = |pat: &Option<String>, v: &str| pat.as_deref().is_none_or(|p| glob(p, v));
        if !(field(&self.report, e.report)
            && field(&self.kind, e.kind)
            && field(&self.ty, e.ty)
            && field(&self.path, e.path))
        {
            return false;
        }
        if let Some(p) = &self.fd {
            if !facts.fd.is_some_and(|fd| glob(p, &fd.to_string())) {
                return false;
            }
        }
        if self.argument && !names_argument(e.path, facts.arguments) {
            return false;
        }
        self.frames.iter().all(|fp| {
            e.frames.iter().any(|f| match fp {
                FramePattern::Fun(g) => f.function.is_some_and(|v| glob(g, v)),
                FramePattern::Obj(g) => f.module.is_some_and(|v| glob(g, v)),
                FramePattern::Src(g) => f.file.is_some_and(|v| glob(g, v)),
            })
        })
    }

    /// The rule in the file format (for `--gen-suppressions`).
    pub fn render(&self) -> String {
        let mut s = format!("[{}]\n", self.name);
        for (k, v) in [
            ("report", &self.report),
            ("kind", &self.kind),
            ("type", &self.ty),
            ("path", &self.path),
            ("fd", &self.fd),
        ] {
            if let Some(v) = v {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        if self.argument {
            s.push_str("argument = yes\n");
        }
        for f in &self.frames {
            let (tag, g) = match f {
                FramePattern::Fun(g) => ("fun", g),
                FramePattern::Obj(g) => ("obj", g),
                FramePattern::Src(g) => ("src", g),
            };
            s.push_str(&format!("frame = {tag}:{g}\n"));
        }
        s
    }

    /// A rule that matches exactly this event's kind, type and innermost
    /// frames with a function name (or module when there is none).
    pub fn for_event(name: &str, e: &Event<'_>, depth: usize) -> Rule {
        let frames = e
            .frames
            .iter()
            .filter(|f| f.function.is_some() || f.module.is_some())
            .take(depth)
            .map(|f| match (f.function, f.module) {
                (Some(func), _) => FramePattern::Fun(literal(func)),
                (None, Some(m)) => FramePattern::Obj(literal(m)),
                (None, None) => FramePattern::Obj("*".into()),
            })
            .collect();
        Rule {
            name: name.to_string(),
            report: Some(e.report.to_string()),
            kind: Some(e.kind.to_string()),
            ty: (!e.ty.is_empty()).then(|| e.ty.to_string()),
            frames,
            ..Rule::default()
        }
    }
}

/// `text` as a glob that matches it and survives the file format: `#`
/// starts a comment there, so it becomes `?` (globs have no escape; `*`
/// and `?` in a name match themselves among others).
fn literal(text: &str) -> String {
    text.replace('#', "?")
}

/// The rule `--gen-suppressions` prints after an exception report: it
/// matches exactly that report's condition, kind, object type (when
/// known) and the innermost frames of the offending stack (a function
/// name where there is one, else the module). Pure: the caller passes the
/// report's fields.
pub fn exception_rule(condition: &str, kind: &str, ty: &str, frames: &[FrameRef<'_>]) -> String {
    // Named after the innermost function the program knows (frames in libc
    // come first without the shim), for a reader of the file.
    let place = frames
        .iter()
        .filter_map(|f| f.function)
        .find(|f| !f.starts_with("__"))
        .map(|f| {
            f.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        });
    let name = match place {
        Some(p) => format!("{condition}-{kind}-in-{p}"),
        None => format!("{condition}-{kind}"),
    };
    let event = Event {
        report: condition,
        kind,
        ty,
        path: "",
        frames: frames.to_vec(),
    };
    Rule::for_event(&name, &event, GENERATED_FRAMES).render()
}

/// Frame lines in a generated rule: enough to pin the call site, few
/// enough that an unrelated caller further out does not matter.
pub const GENERATED_FRAMES: usize = 4;

/// A set of rules.
#[derive(Debug, Clone, Default)]
pub struct Suppressions {
    pub rules: Vec<Rule>,
}

/// Accepted, known-benign behaviour of widely used programs, applied unless
/// `--no-default-suppressions`.
pub const DEFAULTS: &str = "\
# CPython's selectors unregister a file object from epoll after it may have
# been closed (EpollSelector.unregister ignores the EBADF, and its test suite
# does it on purpose); an epoll_ctl on a closed number changes nothing and
# Python sees the same EBADF.
[cpython-epoll-ctl-after-close]
report = bad-handle
kind = use-closed
frame = fun:*pyepoll_internal_ctl*
frame = obj:*select.cpython*

# bash reads its script through an fd it keeps until it exits:
# open_shell_script opens the script and move_to_high_fd dup2()s it to the
# highest free number below the fd limit, at most 255, and closes the
# original. Only that fd: a file the arguments name, made by
# move_to_high_fd in bash.
[bash-script-fd]
report = leak
kind = leak
type = file
argument = yes
frame = fun:move_to_high_fd
frame = obj:*/bash

# dash (/bin/sh on Debian and Ubuntu) does the same: setinputfile opens the
# script and moves it with fcntl(F_DUPFD, 10) to the lowest free number from
# 10 up, kept until it exits. Only that fd: a file the arguments name, at 10
# or above, made in dash (whose symbols are stripped: no function to name).
[dash-script-fd]
report = leak
kind = leak
type = file
fd = ??*
argument = yes
frame = obj:*/dash

# grep -q (and -m, -l on the last file) exits at its first match with the
# file it was reading still open: the answer is known, exit closes it.
# Only a file the arguments name, made in grep's own image: a file opened
# any other way, or a handle of another type, is still reported.
[grep-early-exit]
report = leak
kind = leak
type = file
argument = yes
frame = obj:*/grep
";

impl Suppressions {
    pub fn defaults() -> Suppressions {
        // The embedded text is ours and parses; an error would be a bug
        // caught by the unit test below, so fall back to no rules.
        Suppressions::parse(DEFAULTS, "<default suppressions>").unwrap_or_default()
    }

    pub fn parse(text: &str, file: &str) -> Result<Suppressions, SuppressError> {
        let err = |line: usize, msg: String| SuppressError::Syntax {
            file: file.to_string(),
            line,
            msg,
        };
        let mut rules = Vec::new();
        let mut cur: Option<Rule> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or_else(|| err(n, "a rule name is written [name]".into()))?;
                if let Some(r) = cur.take() {
                    rules.push(r);
                }
                cur = Some(Rule {
                    name: name.trim().to_string(),
                    ..Rule::default()
                });
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(err(n, format!("expected key = value, found '{line}'")));
            };
            let (k, v) = (k.trim(), v.trim().to_string());
            let rule = cur
                .as_mut()
                .ok_or_else(|| err(n, "a key before the first [rule]".into()))?;
            match k {
                "report" => rule.report = Some(v),
                "kind" => rule.kind = Some(v),
                "type" => rule.ty = Some(v),
                "path" => rule.path = Some(v),
                "fd" => rule.fd = Some(v),
                "argument" => match v.as_str() {
                    "yes" => rule.argument = true,
                    "no" => rule.argument = false,
                    _ => return Err(err(n, format!("argument is yes or no, not '{v}'"))),
                },
                "frame" => {
                    let fp = if let Some(g) = v.strip_prefix("fun:") {
                        FramePattern::Fun(g.to_string())
                    } else if let Some(g) = v.strip_prefix("obj:") {
                        FramePattern::Obj(g.to_string())
                    } else if let Some(g) = v.strip_prefix("src:") {
                        FramePattern::Src(g.to_string())
                    } else {
                        return Err(err(
                            n,
                            format!("a frame is fun:GLOB, obj:GLOB or src:GLOB, not '{v}'"),
                        ));
                    };
                    rule.frames.push(fp);
                }
                other => {
                    return Err(err(
                        n,
                        format!(
                            "unknown key '{other}' (keys: report, kind, type, path, fd, argument, frame)"
                        ),
                    ))
                }
            }
        }
        if let Some(r) = cur.take() {
            rules.push(r);
        }
        Ok(Suppressions { rules })
    }

    pub fn load(path: &Path) -> Result<Suppressions, SuppressError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SuppressError::Io {
            file: file.clone(),
            msg: e.to_string(),
        })?;
        Suppressions::parse(&text, &file)
    }

    /// Whether a rule of this name is in the set.
    pub fn has_rule(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.name == name)
    }

    pub fn extend(&mut self, other: Suppressions) {
        self.rules.extend(other.rules);
    }

    /// The first rule that matches.
    pub fn matching(&self, e: &Event<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(e))
    }

    /// The first rule that matches, with the facts only some reports carry.
    pub fn matching_with(&self, e: &Event<'_>, facts: &Facts<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches_with(e, facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob("*", ""));
        assert!(glob("*/bash", "/usr/bin/bash"));
        assert!(!glob("*/bash", "/usr/bin/bashx"));
        assert!(glob("exec?te_*", "execute_pipeline"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn defaults_parse_and_match_only_what_they_name() {
        let s = Suppressions::defaults();
        assert_eq!(s.rules.len(), 4);
        let select = FrameRef {
            function: Some("pyepoll_internal_ctl"),
            module: Some("/usr/lib/python3.11/lib-dynload/select.cpython-311-x86_64-linux-gnu.so"),
            ..FrameRef::default()
        };
        let mut e = Event {
            report: "bad-handle",
            kind: "use-closed",
            ty: "file",
            path: "/tmp/f",
            frames: vec![select],
        };
        assert!(s.matching(&e).is_some());
        // bash's pipeline double close is the judge's business now.
        e.kind = "double-close";
        e.frames = vec![FrameRef {
            module: Some("/usr/bin/bash"),
            ..FrameRef::default()
        }];
        assert!(s.matching(&e).is_none());
    }

    #[test]
    fn arguments_name_files_resolved_or_as_written() {
        let args = ["/tmp/w/t.bash".to_string(), "t.bash".to_string()];
        assert!(names_argument("/tmp/w/t.bash", &args));
        // Resolved elsewhere (the script ran `cd`): the written form ends it.
        assert!(names_argument("/home/u/t.bash", &args));
        assert!(!names_argument("/home/u/xt.bash", &args));
        assert!(!names_argument("/tmp/w/other", &args));
        let dotted = ["./ci/run.sh".to_string()];
        assert!(names_argument("/src/ci/run.sh", &dotted));
        // `..` and absolute arguments count only resolved.
        assert!(!names_argument("/a/b.sh", &["../b.sh".to_string()]));
        assert!(!names_argument("/x/a/b.sh", &["/a/b.sh".to_string()]));
        assert!(!names_argument("", &args));
        assert!(!names_argument("/tmp/w/t.bash", &[]));
    }

    /// A leak event of a file `path` created with `frames`.
    fn file_leak<'a>(path: &'a str, frames: Vec<FrameRef<'a>>) -> Event<'a> {
        Event {
            report: "leak",
            kind: "leak",
            ty: "file",
            path,
            frames,
        }
    }

    #[test]
    fn shell_script_rules_are_that_fd_only() {
        let s = Suppressions::defaults();
        let bash = vec![
            FrameRef {
                function: Some("move_to_high_fd"),
                module: Some("/usr/bin/bash"),
                file: None,
            },
            FrameRef {
                function: Some("main"),
                module: Some("/usr/bin/bash"),
                file: None,
            },
        ];
        let args = ["/w/t.bash".to_string(), "t.bash".to_string()];
        let facts = |fd| Facts {
            fd: Some(fd),
            arguments: &args,
        };
        let e = file_leak("/w/t.bash", bash.clone());
        assert_eq!(
            s.matching_with(&e, &facts(255)).map(|r| r.name.as_str()),
            Some("bash-script-fd")
        );
        // Another file (`exec 7>/tmp/x` in the script) is a real leak.
        let other = file_leak("/tmp/x", bash.clone());
        assert!(s.matching_with(&other, &facts(7)).is_none());
        // Made elsewhere in bash (a redirection's dup2), or with no facts.
        let redir = file_leak(
            "/w/t.bash",
            vec![FrameRef {
                function: Some("do_redirection_internal"),
                module: Some("/usr/bin/bash"),
                file: None,
            }],
        );
        assert!(s.matching_with(&redir, &facts(7)).is_none());
        assert!(s.matching(&e).is_none());
        // dash: only from fd 10 up.
        let dash = vec![FrameRef {
            module: Some("/usr/bin/dash"),
            ..FrameRef::default()
        }];
        let d = file_leak("/w/t.bash", dash);
        assert_eq!(
            s.matching_with(&d, &facts(10)).map(|r| r.name.as_str()),
            Some("dash-script-fd")
        );
        assert!(s.matching_with(&d, &facts(7)).is_none());
        // Not a shell.
        let c = file_leak(
            "/w/t.bash",
            vec![FrameRef {
                module: Some("/usr/bin/python3"),
                ..FrameRef::default()
            }],
        );
        assert!(s.matching_with(&c, &facts(255)).is_none());
    }

    #[test]
    fn fd_and_argument_keys_parse_render_and_reject_typos() {
        let text = "[r]\nfd = 1?\nargument = yes\n";
        let s = Suppressions::parse(text, "f").unwrap();
        assert_eq!(s.rules[0].render(), text);
        assert!(Suppressions::parse("[r]\nargument = maybe\n", "f").is_err());
    }

    #[test]
    fn exception_rules_match_exactly_their_report() {
        let frames = [
            FrameRef {
                function: Some("__GI___close"),
                module: Some("/usr/lib/libc.so.6"),
                file: Some("close.c"),
            },
            FrameRef {
                function: Some("double_close"),
                module: Some("/t/run_bugs"),
                file: Some("run_bugs.c"),
            },
            FrameRef {
                module: Some("/t/run_bugs"),
                ..FrameRef::default()
            },
            FrameRef {
                function: Some("main"),
                module: Some("/t/run_bugs"),
                file: None,
            },
            FrameRef {
                function: Some("_start"),
                module: Some("/t/run_bugs"),
                file: None,
            },
        ];
        let text = exception_rule("bad-handle", "double-close", "chardev", &frames);
        assert_eq!(
            text,
            "[bad-handle-double-close-in-double_close]\n\
             report = bad-handle\n\
             kind = double-close\n\
             type = chardev\n\
             frame = fun:__GI___close\n\
             frame = fun:double_close\n\
             frame = obj:/t/run_bugs\n\
             frame = fun:main\n"
        );
        let s = Suppressions::parse(&text, "gen").unwrap();
        let e = Event {
            report: "bad-handle",
            kind: "double-close",
            ty: "chardev",
            path: "/dev/null",
            frames: frames.to_vec(),
        };
        assert!(s.matching(&e).is_some());
        // Another kind, type or call site is not matched.
        assert!(s
            .matching(&Event {
                kind: "use-closed",
                ..e.clone()
            })
            .is_none());
        assert!(s
            .matching(&Event {
                ty: "pipe",
                ..e.clone()
            })
            .is_none());
        let elsewhere = Event {
            frames: vec![frames[0], frames[3]],
            ..e.clone()
        };
        assert!(s.matching(&elsewhere).is_none());
        // No type known, no stack: the rule still parses and says so.
        let bare = exception_rule("new-file", "new-file", "", &[]);
        assert_eq!(
            bare,
            "[new-file-new-file]\nreport = new-file\nkind = new-file\n"
        );
        // A `#` in a name would start a comment: it is matched by `?`.
        let odd = [FrameRef {
            function: Some("f#1"),
            ..FrameRef::default()
        }];
        let text = exception_rule("bad-handle", "use-closed", "", &odd);
        let s = Suppressions::parse(&text, "gen").unwrap();
        let e = Event {
            report: "bad-handle",
            kind: "use-closed",
            frames: odd.to_vec(),
            ..Event::default()
        };
        assert!(s.matching(&e).is_some(), "{text}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Suppressions::parse("[a]\nbogus = 1\n", "x.supp").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.supp:2: unknown key 'bogus' (keys: report, kind, type, path, fd, argument, frame)"
        );
        assert!(Suppressions::parse("kind = x\n", "f").is_err());
        assert!(Suppressions::parse("[a]\nframe = zzz\n", "f").is_err());
        assert!(Suppressions::parse("[a\n", "f").is_err());
    }

    #[test]
    fn generated_rules_round_trip() {
        let f = FrameRef {
            function: Some("leak_it"),
            module: Some("/tmp/x"),
            file: Some("x.c"),
        };
        let e = Event {
            report: "leak",
            kind: "leak",
            ty: "file",
            path: "/tmp/a",
            frames: vec![f],
        };
        let r = Rule::for_event("gen", &e, 4);
        let parsed = Suppressions::parse(&r.render(), "gen").unwrap();
        assert_eq!(parsed.rules, vec![r]);
        assert!(parsed.matching(&e).is_some());
    }
}
