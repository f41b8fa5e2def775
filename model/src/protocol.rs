//! The contract between the shim (in the program) and the supervisor
//! (`handles run`), in one place, after rr's `preload_interface.h`:
//! everything one side writes and the other reads.
//!
//! - The environment a job's processes start with ([`env`]): which
//!   variables, and the values that mean something.
//! - The job's cookie ([`CookieText`], [`parse_cookie`]): 16 hex digits in
//!   `HANDLES_COOKIE`; the shim puts it in the free argument register of
//!   its own syscalls, which the seccomp prefilter then lets through.
//! - The policy, in `HANDLES_POLICY`: [`Policy::encode_to`] writes it,
//!   [`Policy::decode`] reads it, starting with [`POLICY_VERSION`].
//! - The table the shim keeps: a memfd named [`TableName`]
//!   (`handles-table:<pid>`), laid out as [`crate::table`] says (its
//!   header carries the layout's own version, [`crate::table::VERSION`]).
//! - The calls the shim makes to talk to the supervisor ([`Message`]):
//!   ordinary syscalls whose cookie register holds a marker
//!   ([`crate::table::marker`]) instead of the cookie. Each one's encoding
//!   ([`Message::encode`]) and decoding ([`Message::decode`]) sit side by
//!   side, and a test checks that every message survives the trip.
//!
//! Both sides are built from one tree and the CLI embeds the shim it was
//! built with, so there is no negotiation: [`VERSION`] names this contract
//! and goes up with any change to it, so that a change is a conscious one.
//!
//! [`Policy::encode_to`]: crate::policy::Policy::encode_to
//! [`Policy::decode`]: crate::policy::Policy::decode

use core::ffi::CStr;

use crate::syscalls::{self, Desc, Kind};
use crate::table::marker;

/// This contract's version: raise it with any change to this module.
pub const VERSION: u32 = 1;

/// The tag that starts the policy's encoded form in `HANDLES_POLICY`.
pub use crate::policy::ENCODING_VERSION as POLICY_VERSION;

/// The environment variables of the contract.
pub mod env {
    use core::ffi::CStr;

    /// One variable: its name as the shim reads it (`getenv`, which takes a
    /// C string) and as the supervisor and the CLI set it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Var(&'static CStr);

    impl Var {
        /// The NUL-terminated name, for `getenv`.
        pub const fn c(self) -> &'static CStr {
            self.0
        }

        /// The name.
        pub const fn name(self) -> &'static str {
            match core::str::from_utf8(self.0.to_bytes()) {
                Ok(s) => s,
                // Every name below is ASCII (a test checks it).
                Err(_) => "",
            }
        }
    }

    /// The job's policy, encoded (`Policy::encode_to`). Also what a nested
    /// `handles run` inherits its job's policy from.
    pub const POLICY: Var = Var(c"HANDLES_POLICY");
    /// The supervising `handles run`'s pid: set for every process of a
    /// job, so that a nested `handles run` knows it is one.
    pub const JOB: Var = Var(c"HANDLES_JOB");
    /// The job's cookie ([`super::CookieText`]): set only under a
    /// supervisor, which lets the shim's calls through by it.
    pub const COOKIE: Var = Var(c"HANDLES_COOKIE");
    /// [`OFF`]: the supervisor wants no announcement of the table
    /// ([`super::Message::Announce`]); it finds the table by its name.
    pub const ANNOUNCE: Var = Var(c"HANDLES_ANNOUNCE");
    /// [`ON`]: every forked child makes its table shared at its first
    /// write, not at its first new object (the inherit check reads a
    /// child's table through its fd at its exec, the strict filter at
    /// every call).
    pub const SHARED_TABLES: Var = Var(c"HANDLES_SHARED_TABLES");
    /// [`ON`]: the job stops every creating call, so the shim marks its
    /// own with `marker::OWN`.
    pub const MARK_OWN: Var = Var(c"HANDLES_MARK_OWN");
    /// [`ON`]: `--inherit-check`; the shim marks the calls that make a
    /// handle inheritable on purpose (`marker::INHERIT`).
    pub const INHERIT: Var = Var(c"HANDLES_INHERIT");
    /// How many closed fd numbers the shim quarantines.
    pub const QUARANTINE: Var = Var(c"HANDLES_QUARANTINE");
    /// Frames recorded per creation and close stack.
    pub const STACK_DEPTH: Var = Var(c"HANDLES_STACK_DEPTH");
    /// How the shim records stacks: [`STACKS_FP`] or [`STACKS_UNWIND`]
    /// (unset: its CFI unwinder). Set by hand, for measurements.
    pub const STACKS: Var = Var(c"HANDLES_STACKS");
    /// [`OFF`]: no Python frames with a CPython program's stacks. Set by
    /// hand, for measurements.
    pub const PYTHON_FRAMES: Var = Var(c"HANDLES_PYTHON_FRAMES");

    // Without a supervisor (`handles run --no-ptrace`) the shim writes the
    // reports and ends the job itself: what the CLI tells it for that.

    /// The pid of the job's first process: its exit writes the job's
    /// summary.
    pub const ROOT_PID: Var = Var(c"HANDLES_ROOT_PID");
    /// `--on-exception`: [`ON_EXCEPTION_TRAP`], [`ON_EXCEPTION_STOP`] or
    /// [`ON_EXCEPTION_CONTINUE`].
    pub const ON_EXCEPTION: Var = Var(c"HANDLES_ON_EXCEPTION");
    /// `--error-exitcode`.
    pub const ERROR_EXITCODE: Var = Var(c"HANDLES_ERROR_EXITCODE");
    /// The `handles` binary the shim asks for the functions and lines of
    /// its stacks.
    pub const SYMBOLIZER: Var = Var(c"HANDLES_SYMBOLIZER");
    /// [`SUMMARY_ALWAYS`]: the summary is written even with no exception.
    pub const SUMMARY: Var = Var(c"HANDLES_SUMMARY");

    /// Every variable above.
    pub const ALL: [Var; 16] = [
        POLICY,
        JOB,
        COOKIE,
        ANNOUNCE,
        SHARED_TABLES,
        MARK_OWN,
        INHERIT,
        QUARANTINE,
        STACK_DEPTH,
        STACKS,
        PYTHON_FRAMES,
        ROOT_PID,
        ON_EXCEPTION,
        ERROR_EXITCODE,
        SYMBOLIZER,
        SUMMARY,
    ];

    /// A switch that is on.
    pub const ON: &str = "1";
    /// A switch that is off.
    pub const OFF: &str = "0";
    /// [`STACKS`]: the frame-pointer walk.
    pub const STACKS_FP: &str = "fp";
    /// [`STACKS`]: libgcc's unwinder.
    pub const STACKS_UNWIND: &str = "unwind";
    /// [`SUMMARY`]'s one value.
    pub const SUMMARY_ALWAYS: &str = "always";
    /// [`ON_EXCEPTION`]: stop the job at the first exception (the default).
    pub const ON_EXCEPTION_TRAP: &str = "trap";
    /// [`ON_EXCEPTION`]: stop the thread, for a debugger.
    pub const ON_EXCEPTION_STOP: &str = "stop";
    /// [`ON_EXCEPTION`]: report and go on.
    pub const ON_EXCEPTION_CONTINUE: &str = "continue";
}

/// Hex digits of a cookie.
pub const COOKIE_LEN: usize = 16;

/// A cookie as `HANDLES_COOKIE` carries it: 16 lower-case hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieText([u8; COOKIE_LEN]);

impl CookieText {
    pub fn new(cookie: u64) -> CookieText {
        let mut b = [0u8; COOKIE_LEN];
        for (i, d) in b.iter_mut().enumerate() {
            let nibble = (cookie >> (4 * (COOKIE_LEN - 1 - i))) & 0xf;
            *d = b"0123456789abcdef"[nibble as usize];
        }
        CookieText(b)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only, written above.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Reads [`CookieText`]'s form (either case): exactly 16 hex digits, or
/// nothing (a sign or a short value is not a cookie).
pub fn parse_cookie(s: &str) -> Option<u64> {
    (s.len() == COOKIE_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// The spelling of the table's name prefix, for `concat!`.
macro_rules! table_prefix {
    () => {
        "handles-table:"
    };
}

/// What a table's memfd name starts with; the pid follows.
pub const TABLE_NAME_PREFIX: &str = table_prefix!();

/// What the link of an fd on a table (`/proc/PID/fd/N`) starts with.
pub const TABLE_LINK_PREFIX: &str = concat!("/memfd:", table_prefix!());

/// A table's memfd name, `handles-table:<pid>`, NUL-terminated for
/// `memfd_create`, built without allocating (the shim makes it).
#[derive(Clone, Copy)]
pub struct TableName {
    buf: [u8; TABLE_NAME_PREFIX.len() + 12],
    len: usize,
}

impl TableName {
    pub fn new(pid: i32) -> TableName {
        let mut buf = [0u8; TABLE_NAME_PREFIX.len() + 12];
        buf[..TABLE_NAME_PREFIX.len()].copy_from_slice(TABLE_NAME_PREFIX.as_bytes());
        let mut at = TABLE_NAME_PREFIX.len();
        if pid < 0 {
            buf[at] = b'-';
            at += 1;
        }
        let mut digits = [0u8; 10];
        let mut k = 0;
        let mut v = pid.unsigned_abs();
        loop {
            digits[k] = b'0' + (v % 10) as u8;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in digits[..k].iter().rev() {
            buf[at] = d;
            at += 1;
        }
        TableName { buf, len: at }
    }

    /// The name with its NUL.
    pub fn as_cstr(&self) -> &CStr {
        // The buffer holds the name and zeros after it.
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The process a memfd name (`handles-table:<pid>`, without `/memfd:`)
/// names, if it names a table.
pub fn table_owner(name: &str) -> Option<i32> {
    name.strip_prefix(TABLE_NAME_PREFIX)?.parse().ok()
}

/// Whether an fd's link target (`/proc/PID/fd/N`) is a table's memfd.
pub fn is_table_link(link: &[u8]) -> bool {
    link.starts_with(TABLE_LINK_PREFIX.as_bytes())
}

/// The syscalls the messages ride on (x86_64; a test checks them against
/// [`syscalls::TABLE`]).
mod nr {
    pub const FSTAT: i64 = 5;
    pub const FCNTL: i64 = 72;
}

/// `fcntl`'s `F_GETFD`.
const F_GETFD: u64 = 1;

/// The most return addresses a [`Message::Hold`] says its stack holds,
/// whatever the register says: the supervisor reads that many words of
/// the program's memory.
pub const MAX_HELD_FRAMES: usize = crate::table::STACK_DEPTH * 4;

/// What the shim tells the supervisor. Each message is a syscall that
/// changes nothing (an `fcntl(F_GETFD)` or an `fstat`), with a marker in
/// its cookie register: the prefilter stops on every marker, so the
/// supervisor sees it whatever filter the job runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// `fcntl(fd, F_GETFD)`, `marker::ANNOUNCE`: the shim has made its
    /// table, at `fd`; the supervisor maps it from /proc/PID/fd/<fd>.
    Announce { fd: i32 },
    /// `fstat(fd, buf, marker::PROXY, nr)`: stands for the program's call
    /// `nr` on `fd`, which the shim found bad and which has no register
    /// free for a marker (six arguments, such as mmap). See
    /// [`proxied_call`].
    Proxy { fd: i32, nr: i64 },
    /// `fstat(fd, buf, marker::HOLD, nr, pcs, n)`: the shim's judge held
    /// its call `nr` on `fd` (a close that may begin a sweep); the call's
    /// stack is the `n` return addresses at `pcs` in the program's memory.
    Hold {
        fd: i32,
        nr: i64,
        pcs: u64,
        n: usize,
    },
    /// `fstat(fd, buf, marker::HELD_RAISE)`: no sweep followed the held
    /// close: its report is written and the exception raised now.
    HeldRaise { fd: i32 },
    /// `fstat(fd, buf, marker::HELD_DROP)`: a sweep followed: the held
    /// report goes.
    HeldDrop { fd: i32 },
    /// `fstat(fd, buf, marker::RELEASE)`: the shim gives the quarantined
    /// number `fd` back to the kernel; a tombstone the supervisor put
    /// there is no longer one. Sent before the shim closes it.
    Release { fd: i32 },
}

/// A syscall the shim issues: its number, its arguments (0 in the cookie
/// register, which the sender fills with `marker::make(cookie, tag)`, see
/// [`mark`]) and the marker's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub nr: i64,
    pub args: [u64; 6],
    pub tag: u32,
}

impl Message {
    /// The syscall that carries this message. `stat_buf` is the address of
    /// a `struct stat` the fstat may write (the supervisor never lets it
    /// run, but a call that reaches the kernel must be harmless).
    pub fn encode(self, stat_buf: u64) -> Encoded {
        let fstat = |fd: i32, tag: u32, nr: i64, pcs: u64, n: usize| Encoded {
            nr: nr::FSTAT,
            args: [fd as u64, stat_buf, 0, nr as u64, pcs, n as u64],
            tag,
        };
        match self {
            Message::Announce { fd } => Encoded {
                nr: nr::FCNTL,
                args: [fd as u64, F_GETFD, 0, 0, 0, 0],
                tag: marker::ANNOUNCE,
            },
            Message::Proxy { fd, nr } => fstat(fd, marker::PROXY, nr, 0, 0),
            Message::Hold { fd, nr, pcs, n } => fstat(fd, marker::HOLD, nr, pcs, n),
            Message::HeldRaise { fd } => fstat(fd, marker::HELD_RAISE, 0, 0, 0),
            Message::HeldDrop { fd } => fstat(fd, marker::HELD_DROP, 0, 0, 0),
            Message::Release { fd } => fstat(fd, marker::RELEASE, 0, 0, 0),
        }
    }

    /// The message syscall `nr` with arguments `a` carries, for a job with
    /// `cookie`; None for any other call (the program's own, or a marked
    /// call that is not a message: `marker::CHECK`, `marker::OWN`).
    pub fn decode(nr: i64, a: &[u64; 6], cookie: u64) -> Option<Message> {
        let tag = marker_of(nr, a, cookie)?;
        let fd = a[0] as i32;
        if nr == nr::FCNTL {
            return (a[1] == F_GETFD && tag == marker::ANNOUNCE)
                .then_some(Message::Announce { fd });
        }
        if nr != nr::FSTAT {
            return None;
        }
        Some(match tag {
            marker::PROXY => Message::Proxy {
                fd,
                nr: a[3] as i64,
            },
            marker::HOLD => Message::Hold {
                fd,
                nr: a[3] as i64,
                pcs: a[4],
                n: (a[5] as usize).min(MAX_HELD_FRAMES),
            },
            marker::HELD_RAISE => Message::HeldRaise { fd },
            marker::HELD_DROP => Message::HeldDrop { fd },
            marker::RELEASE => Message::Release { fd },
            _ => return None,
        })
    }
}

/// `a` with the marker for `tag` in syscall `nr`'s cookie register (the
/// first one it does not read); unchanged when it has none free.
pub fn mark(nr: i64, mut a: [u64; 6], cookie: u64, tag: u32) -> [u64; 6] {
    if let Some(i) = syscalls::lookup(nr).and_then(|d| d.cookie_arg()) {
        a[usize::from(i)] = marker::make(cookie, tag);
    }
    a
}

/// The marker tag a call carries in its cookie register, if any: the
/// shim's word that it judged the call itself, or a [`Message`].
pub fn marker_of(nr: i64, a: &[u64; 6], cookie: u64) -> Option<u32> {
    let d = syscalls::lookup(nr)?;
    marker::tag(cookie, a[usize::from(d.cookie_arg()?)])
}

/// The call a [`Message::Proxy`] stands for: `nr`'s description, and
/// arguments that put `fd` where `nr` takes it (the rest 0), for the
/// supervisor's checks and report. None for a call that takes no fd the
/// shim would proxy.
pub fn proxied_call(nr: i64, fd: i32) -> Option<(&'static Desc, [u64; 6])> {
    let real = syscalls::lookup(nr)?;
    let mut args = [0u64; 6];
    match real.kind {
        Kind::Mmap => args[4] = fd as u64,
        Kind::Use if real.fd_args != 0 => args[real.fd_args.trailing_zeros() as usize] = fd as u64,
        _ => return None,
    }
    Some((real, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: u64 = 0x1234_5678_9abc_def0;

    fn every_message() -> [Message; 6] {
        [
            Message::Announce { fd: 1023 },
            Message::Proxy { fd: 7, nr: 9 },
            Message::Hold {
                fd: 3,
                nr: 3,
                pcs: 0x7fff_0000_1000,
                n: 12,
            },
            Message::HeldRaise { fd: 3 },
            Message::HeldDrop { fd: 4 },
            Message::Release { fd: 5 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            let e = m.encode(0x7fff_1234);
            let a = mark(e.nr, e.args, COOKIE, e.tag);
            assert_eq!(Message::decode(e.nr, &a, COOKIE), Some(m), "{m:?}");
            // Another job's cookie, or none, reads nothing.
            assert_eq!(Message::decode(e.nr, &a, COOKIE ^ (1 << 40)), None);
            assert_eq!(Message::decode(e.nr, &e.args, COOKIE), None);
        }
    }

    #[test]
    fn the_message_layout_is_pinned() {
        let e = Message::Hold {
            fd: 3,
            nr: 3,
            pcs: 0xabc,
            n: 5,
        }
        .encode(0x100);
        let a = mark(e.nr, e.args, COOKIE, e.tag);
        assert_eq!(
            a,
            [3, 0x100, marker::make(COOKIE, marker::HOLD), 3, 0xabc, 5]
        );
        let e = Message::Announce { fd: 9 }.encode(0x100);
        let a = mark(e.nr, e.args, COOKIE, e.tag);
        assert_eq!(a, [9, 1, 0, marker::make(COOKIE, marker::ANNOUNCE), 0, 0]);
    }

    #[test]
    fn the_carrier_syscalls_are_the_tables() {
        assert_eq!(syscalls::lookup(nr::FSTAT).map(|d| d.name), Some("fstat"));
        assert_eq!(syscalls::lookup(nr::FCNTL).map(|d| d.name), Some("fcntl"));
    }

    #[test]
    fn calls_that_are_not_messages_decode_to_nothing() {
        // The program's call, marked CHECK by the shim: not a message.
        let check = mark(0, [3, 0, 0, 0, 0, 0], COOKIE, marker::CHECK);
        assert_eq!(marker_of(0, &check, COOKIE), Some(marker::CHECK));
        assert_eq!(Message::decode(0, &check, COOKIE), None);
        // An fstat with the plain cookie: one of the shim's own calls.
        let own = [3, 0x100, COOKIE, 0, 0, 0];
        assert_eq!(marker_of(nr::FSTAT, &own, COOKIE), None);
        assert_eq!(Message::decode(nr::FSTAT, &own, COOKIE), None);
        // ANNOUNCE on an fcntl that is not F_GETFD.
        let a = mark(nr::FCNTL, [3, 2, 0, 0, 0, 0], COOKIE, marker::ANNOUNCE);
        assert_eq!(Message::decode(nr::FCNTL, &a, COOKIE), None);
        // A six-argument call has no register for a marker.
        assert_eq!(mark(9, [1; 6], COOKIE, marker::CHECK), [1; 6]);
        assert_eq!(marker_of(9, &[1; 6], COOKIE), None);
    }

    #[test]
    fn a_hold_never_claims_more_frames_than_the_bound() {
        let e = Message::Hold {
            fd: 3,
            nr: 3,
            pcs: 0,
            n: 0,
        }
        .encode(0);
        let mut a = mark(e.nr, e.args, COOKIE, e.tag);
        a[5] = u64::MAX;
        assert!(matches!(
            Message::decode(e.nr, &a, COOKIE),
            Some(Message::Hold {
                n: MAX_HELD_FRAMES,
                ..
            })
        ));
    }

    #[test]
    fn a_proxy_stands_for_the_call_with_the_fd_in_place() {
        let (d, a) = proxied_call(9, 7).expect("mmap");
        assert_eq!((d.name, a), ("mmap", [0, 0, 0, 0, 7, 0]));
        let (d, a) = proxied_call(44, 5).expect("sendto");
        assert_eq!((d.name, a), ("sendto", [5, 0, 0, 0, 0, 0]));
        // close is not a use; open takes no fd.
        assert!(proxied_call(3, 5).is_none());
        assert!(proxied_call(2, 5).is_none());
        assert!(proxied_call(100_000, 5).is_none());
    }

    #[test]
    fn cookies_round_trip() {
        for c in [0, 1, 0xff, COOKIE, u64::MAX] {
            let t = CookieText::new(c);
            assert_eq!(t.as_str().len(), COOKIE_LEN);
            assert_eq!(parse_cookie(t.as_str()), Some(c));
        }
        assert_eq!(CookieText::new(0xff).as_str(), "00000000000000ff");
        assert_eq!(
            parse_cookie("DEADbeef00112233"),
            Some(0xdead_beef_0011_2233)
        );
        assert_eq!(parse_cookie("ff"), None);
        assert_eq!(parse_cookie("+0000000000000ff"), None);
        assert_eq!(parse_cookie("00000000000000fg"), None);
    }

    #[test]
    fn table_names_round_trip() {
        for pid in [1, 42, 4_194_304, i32::MAX] {
            let n = TableName::new(pid);
            assert_eq!(table_owner(n.as_str()), Some(pid));
            assert_eq!(n.as_cstr().to_bytes(), n.as_str().as_bytes());
        }
        assert_eq!(TableName::new(1234).as_str(), "handles-table:1234");
        assert_eq!(table_owner("handles-table:x"), None);
        assert_eq!(table_owner("other:12"), None);
        assert!(is_table_link(b"/memfd:handles-table:12 (deleted)"));
        assert!(!is_table_link(b"/memfd:handles-tab"));
        assert!(!is_table_link(b"/tmp/handles-table:12"));
    }

    #[test]
    fn env_names_are_the_documented_ones() {
        for v in env::ALL {
            assert!(v.name().starts_with("HANDLES_"), "{v:?}");
            assert_eq!(v.name().as_bytes(), v.c().to_bytes());
        }
        assert_eq!(env::COOKIE.name(), "HANDLES_COOKIE");
        assert_eq!(env::POLICY.name(), "HANDLES_POLICY");
        for (i, a) in env::ALL.iter().enumerate() {
            assert!(env::ALL[i + 1..].iter().all(|b| a != b), "{a:?} twice");
        }
    }
}
