//! The seccomp prefilter: a classic-BPF program, installed in the tracee
//! right before `execve`, that makes only the syscalls the supervisor cares
//! about stop the tracee (`SECCOMP_RET_TRACE`), so the job does not pay a
//! ptrace stop (about 14 µs) on every syscall the way `PTRACE_SYSCALL` would.
//!
//! # Why not seccompiler
//!
//! The project prefers well-kept crates over hand-built BPF, but
//! seccompiler's rule model can only compare syscall *arguments*
//! (`seccomp_data.args[i]`). The supervisor also needs to exempt syscalls
//! issued from a stub at a known address, which means comparing
//! `seccomp_data.instruction_pointer` (rr's and reverie's technique for
//! syscalls that use all six argument registers and so have no room for a
//! cookie). seccompiler cannot express that, so this module is a small,
//! purpose-built compiler whose output is checked instruction by instruction
//! by golden tests and against a reference model by an interpreter in the
//! tests.
//!
//! # The program
//!
//! ```text
//!   ld  arch ; jeq AUDIT_ARCH_X86_64 ? next : TRACE   never KILL a foreign arch
//!   ld  nr   ; jset 0x40000000       ? TRACE : next   x32 ABI: trace, never kill
//!   binary search on nr over runs of equal outcome:
//!       untraced run                          -> ret ALLOW
//!       traced, nothing can exempt it          -> ret TRACE
//!       traced, exemptable                     -> ja block(key)
//!   block(key), one per distinct key (cookie argument i, argument masks m,
//!   IP-exempt or not):
//!       high32(args[i]) == high32(cookie):
//!           low32(args[i]) == low32(cookie)    -> ret ALLOW   (the cookie)
//!           otherwise                          -> ret TRACE   (a marker)
//!       low32(args[j]) & m[j] != 0, each j     -> ret ALLOW   (jset)
//!       allow_ip.start <= ip < allow_ip.end    -> ret ALLOW   (64-bit compare)
//!       otherwise                              -> ret TRACE
//! ```
//!
//! The argument tests ([`TracedSyscall::allow_if`]) let through the calls
//! of a traced syscall whose arguments alone show them to be of no
//! interest to the supervisor, such as an `mmap` that takes no fd. A
//! syscall's tests are folded into one mask per argument register, so a
//! block tests each register at most once; two syscalls share a block only
//! when both their cookie argument and their masks agree.
//!
//! # Jump layout: a binary search with trampolines
//!
//! The syscall number space is cut into maximal runs of consecutive numbers
//! with the same outcome, and a balanced tree of `jge` instructions picks the
//! run, so a traced syscall passes about log2(runs) comparisons (8 for the
//! ~100 fd syscalls) instead of up to 100 in a linear chain. That matters
//! because the cookie path, taken by every syscall the shim issues, runs the
//! whole filter each time. Untraced syscalls cost nothing either way: their
//! path reads only `arch` and `nr` and ends in `ret ALLOW`, which is exactly
//! what the kernel's seccomp action cache (Linux 5.11+) recognises, so it
//! skips the filter for them altogether. The exemption checks are
//! deliberately kept *behind* the dispatch for the same reason: checking the
//! instruction pointer up front would make every syscall depend on it and
//! defeat the cache.
//!
//! Classic-BPF conditional jumps have 8-bit offsets. In the tree, a node's
//! "true" edge skips its left subtree; when that subtree is longer than 255
//! instructions the node is emitted as `jge k, 0, 1 ; ja +left`, `ja` having
//! a 32-bit offset. The leaves that lead to a block are `ja` too, and the
//! blocks are a few instructions long with only local jumps, so no offset
//! can overflow whatever the size of the traced set; only the kernel's
//! 4096-instruction limit ([`MAX_INSNS`]) bounds it, and [`compile`] reports
//! that as [`FilterError::TooLong`].
//!
//! # Not a security boundary
//!
//! The cookie and the instruction-pointer exemption exist so that the shim's
//! own syscalls cost no ptrace stop. Any code in the process can forge
//! either, so the filter finds bugs; it does not confine hostile code.
//! The argument tests are of another kind: they read the very registers
//! the kernel acts on (never memory, which could change after the check),
//! so what they let through is exactly the calls they describe.

use std::ops::Range;

/// `AUDIT_ARCH_X86_64` from `<linux/audit.h>` (`EM_X86_64 | __AUDIT_ARCH_64BIT
/// | __AUDIT_ARCH_LE`); the libc crate does not export it.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// `__X32_SYSCALL_BIT`: set in `nr` for syscalls made through the x32 ABI.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The kernel's limit on the length of one filter (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// A syscall that should stop the tracee unless it is exempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TracedSyscall {
    /// The native x86_64 syscall number.
    pub nr: i64,
    /// argument index (0..=5) that carries the cookie for this syscall, None
    /// when all six are used
    pub cookie_arg: Option<u8>,
    /// A call that passes any of these tests is allowed (none: no call is
    /// exempted this way).
    pub allow_if: &'static [ArgTest],
    /// Calls made from [`FilterSpec::allow_ip`] are allowed.
    pub ip_exempt: bool,
}

/// "Allow the call if `(args[arg] as u32) & mask != 0`": a test on the low
/// 32 bits of one argument register, which is all the kernel reads of an
/// `int` argument (and where the flag bits of a flags argument live).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgTest {
    /// The argument index, 0 to 5.
    pub arg: u8,
    /// The bits, at least one, of which any one set allows the call.
    pub mask: u32,
}

/// What [`compile`] builds a filter from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    /// These return `SECCOMP_RET_TRACE` (with data 0) unless exempted below;
    /// every other native syscall is allowed.
    pub traced: Vec<TracedSyscall>,
    /// A traced syscall whose `cookie_arg` register equals all 64 bits of
    /// this value is allowed; one whose register has the same high 32 bits
    /// but differs in the low ones carries a marker
    /// (`handles_model::table::marker`) and always stops, whatever the
    /// other exemptions say.
    pub cookie: Option<u64>,
    /// An `ip_exempt` traced syscall whose
    /// `seccomp_data.instruction_pointer` (the address *after* the
    /// `syscall` instruction) lies in this range is allowed.
    pub allow_ip: Option<Range<u64>>,
}

/// Why a [`FilterSpec`] cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error(
        "the seccomp filter would be {len} instructions long; the kernel accepts at most {max}"
    )]
    TooLong { len: usize, max: usize },
    #[error("syscall {nr}: cookie argument {arg} does not exist (syscalls have arguments 0 to 5)")]
    BadCookieArg { nr: i64, arg: u8 },
    #[error("syscall {nr}: the test of argument {arg} against mask {mask:#x} can never pass (syscalls have arguments 0 to 5; the mask needs a bit)")]
    BadArgTest { nr: i64, arg: u8, mask: u32 },
    #[error("{nr} is not a native x86_64 syscall number (expected 0 to {max})", max = X32_SYSCALL_BIT - 1)]
    BadSyscallNr { nr: i64 },
    #[error(
        "syscall {nr} is listed twice with different cookie arguments ({first:?} and {second:?})"
    )]
    ConflictingCookieArg {
        nr: i64,
        first: Option<u8>,
        second: Option<u8>,
    },
    #[error("syscall {nr} is listed twice with different argument tests")]
    ConflictingArgTests { nr: i64 },
    #[error("the allowed instruction-pointer range {start:#x}..{end:#x} is empty")]
    EmptyIpRange { start: u64, end: u64 },
    // Unused argument registers are often 0, so a zero cookie would silently
    // exempt ordinary libc syscalls from tracing.
    #[error("the syscall cookie must not be 0: unused argument registers are often 0")]
    ZeroCookie,
}

// Offsets into `struct seccomp_data` (little endian: low half first).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_IP_LO: u32 = 8;
const OFF_IP_HI: u32 = 12;

fn off_arg_lo(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_TRACE: u32 = libc::SECCOMP_RET_TRACE;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A jump target inside an exemption block.
#[derive(Clone, Copy)]
enum To {
    /// The instruction after the jump.
    Next,
    /// An absolute index into the block.
    At(usize),
}

/// Appends a conditional jump whose targets are block positions, so that
/// block layouts can be written with named positions instead of offsets.
fn jump_to(code: &mut Vec<libc::sock_filter>, op: u16, k: u32, jt: To, jf: To) {
    let at = code.len();
    let rel = |target: To| -> u8 {
        match target {
            To::Next => 0,
            To::At(t) => {
                debug_assert!(t > at && t - at - 1 <= 255, "local jump out of range");
                (t - at - 1) as u8
            }
        }
    };
    code.push(jump(op, k, rel(jt), rel(jf)));
}

/// What a run of syscall numbers leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Allow,
    Trace,
    /// The exemption block with this index.
    Block(usize),
}

/// An instruction of the dispatch tree before the blocks are placed.
#[derive(Clone, Copy)]
enum TreeInsn {
    Done(libc::sock_filter),
    JumpToBlock(usize),
}

/// Builds the filter described in the module documentation.
pub fn compile(spec: &FilterSpec) -> Result<Vec<libc::sock_filter>, FilterError> {
    if spec.cookie == Some(0) {
        return Err(FilterError::ZeroCookie);
    }
    if let Some(ip) = &spec.allow_ip {
        if ip.start >= ip.end {
            return Err(FilterError::EmptyIpRange {
                start: ip.start,
                end: ip.end,
            });
        }
    }
    let traced = normalize(&spec.traced)?;

    // Without a cookie no register carries one, so syscalls that differ
    // only in their cookie argument share a block.
    let key = |t: &Normalized| BlockKey {
        cookie_arg: spec.cookie.and(t.cookie_arg),
        masks: t.masks,
        ip: t.ip_exempt && spec.allow_ip.is_some(),
    };
    let mut block_keys: Vec<BlockKey> = Vec::new();
    let mut outcome_of = |t: &Normalized| -> Outcome {
        let k = key(t);
        if k.cookie_arg.is_none() && k.masks == NO_MASKS && !k.ip {
            return Outcome::Trace;
        }
        let idx = match block_keys.iter().position(|b| *b == k) {
            Some(i) => i,
            None => {
                block_keys.push(k);
                block_keys.len() - 1
            }
        };
        Outcome::Block(idx)
    };

    // Maximal runs [start, next start) of equal outcome covering 0..X32 bit.
    let mut runs: Vec<(u32, Outcome)> = vec![(0, Outcome::Allow)];
    let mut push_run = |start: u32, outcome: Outcome| {
        if let Some(last) = runs.last_mut() {
            if last.1 == outcome {
                return;
            }
            if last.0 == start {
                *last = (start, outcome);
                // Replacing may have made it equal to the run before it.
                if runs.len() >= 2 && runs[runs.len() - 2].1 == outcome {
                    runs.pop();
                }
                return;
            }
        }
        runs.push((start, outcome));
    };
    for t in &traced {
        // normalize() guarantees nr < X32_SYSCALL_BIT.
        push_run(t.nr, outcome_of(t));
        push_run(t.nr + 1, Outcome::Allow);
    }

    let mut prog = vec![
        stmt(LD_ABS, OFF_ARCH),
        jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET, RET_TRACE),
        stmt(LD_ABS, OFF_NR),
        jump(JSET, X32_SYSCALL_BIT, 0, 1),
        stmt(RET, RET_TRACE),
    ];
    let tree = dispatch_tree(&runs);

    let blocks: Vec<Vec<libc::sock_filter>> = block_keys
        .iter()
        .map(|k| {
            exemption_block(
                k.cookie_arg.zip(spec.cookie),
                &k.masks,
                spec.allow_ip.as_ref().filter(|_| k.ip),
            )
        })
        .collect();
    let tree_start = prog.len();
    let mut block_start = Vec::with_capacity(blocks.len());
    let mut next = tree_start + tree.len();
    for b in &blocks {
        block_start.push(next);
        next += b.len();
    }
    let len = next;
    if len > MAX_INSNS {
        return Err(FilterError::TooLong {
            len,
            max: MAX_INSNS,
        });
    }

    for (i, insn) in tree.iter().enumerate() {
        prog.push(match *insn {
            TreeInsn::Done(f) => f,
            TreeInsn::JumpToBlock(b) => {
                // Both bounded by MAX_INSNS, so the offset fits in a u32.
                stmt(JA, (block_start[b] - (tree_start + i + 1)) as u32)
            }
        });
    }
    for b in blocks {
        prog.extend(b);
    }
    debug_assert_eq!(prog.len(), len);
    Ok(prog)
}

/// Per argument register, the bits of its low half of which any one set
/// allows the call; 0 tests nothing.
type ArgMasks = [u32; 6];

const NO_MASKS: ArgMasks = [0; 6];

/// A traced syscall once validated, its tests folded into [`ArgMasks`]
/// (two tests of one register allow exactly when their union does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Normalized {
    nr: u32,
    cookie_arg: Option<u8>,
    masks: ArgMasks,
    ip_exempt: bool,
}

/// What makes exemption blocks differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockKey {
    /// The register to compare with the cookie (None without a cookie).
    cookie_arg: Option<u8>,
    masks: ArgMasks,
    /// Tests the instruction pointer against `allow_ip`.
    ip: bool,
}

/// Validates the traced set and returns it sorted by number, without
/// duplicates.
fn normalize(traced: &[TracedSyscall]) -> Result<Vec<Normalized>, FilterError> {
    let mut out: Vec<Normalized> = Vec::with_capacity(traced.len());
    for t in traced {
        if !(0..i64::from(X32_SYSCALL_BIT)).contains(&t.nr) {
            return Err(FilterError::BadSyscallNr { nr: t.nr });
        }
        if let Some(arg) = t.cookie_arg {
            if arg > 5 {
                return Err(FilterError::BadCookieArg { nr: t.nr, arg });
            }
        }
        let mut masks = NO_MASKS;
        for test in t.allow_if {
            if test.arg > 5 || test.mask == 0 {
                return Err(FilterError::BadArgTest {
                    nr: t.nr,
                    arg: test.arg,
                    mask: test.mask,
                });
            }
            masks[usize::from(test.arg)] |= test.mask;
        }
        out.push(Normalized {
            nr: t.nr as u32,
            cookie_arg: t.cookie_arg,
            masks,
            ip_exempt: t.ip_exempt,
        });
    }
    out.sort_by_key(|t| t.nr);
    let mut deduped: Vec<Normalized> = Vec::with_capacity(out.len());
    for t in out {
        match deduped.last() {
            Some(prev) if prev.nr == t.nr => {
                let nr = i64::from(t.nr);
                if prev.cookie_arg != t.cookie_arg {
                    return Err(FilterError::ConflictingCookieArg {
                        nr,
                        first: prev.cookie_arg,
                        second: t.cookie_arg,
                    });
                }
                if prev.masks != t.masks || prev.ip_exempt != t.ip_exempt {
                    return Err(FilterError::ConflictingArgTests { nr });
                }
            }
            _ => deduped.push(t),
        }
    }
    Ok(deduped)
}

/// A balanced tree of `jge` over the run starts; the accumulator holds `nr`
/// throughout because jumps do not change it.
fn dispatch_tree(runs: &[(u32, Outcome)]) -> Vec<TreeInsn> {
    match runs {
        [] => Vec::new(),
        [(_, outcome)] => vec![match *outcome {
            Outcome::Allow => TreeInsn::Done(stmt(RET, RET_ALLOW)),
            Outcome::Trace => TreeInsn::Done(stmt(RET, RET_TRACE)),
            Outcome::Block(b) => TreeInsn::JumpToBlock(b),
        }],
        _ => {
            let mid = runs.len() / 2;
            let left = dispatch_tree(&runs[..mid]);
            let right = dispatch_tree(&runs[mid..]);
            let pivot = runs[mid].0;
            let mut out = Vec::with_capacity(left.len() + right.len() + 2);
            match u8::try_from(left.len()) {
                Ok(skip) => out.push(TreeInsn::Done(jump(JGE, pivot, skip, 0))),
                Err(_) => {
                    // Trampoline: the true edge lands on a `ja`, whose offset
                    // is 32 bits wide.
                    out.push(TreeInsn::Done(jump(JGE, pivot, 0, 1)));
                    out.push(TreeInsn::Done(stmt(JA, left.len() as u32)));
                }
            }
            out.extend(left);
            out.extend(right);
            out
        }
    }
}

/// The checks that can exempt a traced syscall, ending in its own
/// `ret TRACE ; ret ALLOW` pair so that every jump stays local (a block is
/// at most 4 + 12 + 10 + 2 instructions).
fn exemption_block(
    cookie: Option<(u8, u64)>,
    masks: &ArgMasks,
    ip: Option<&Range<u64>>,
) -> Vec<libc::sock_filter> {
    let cookie_len = if cookie.is_some() { 4 } else { 0 };
    let tests_len = 2 * masks.iter().filter(|&&m| m != 0).count();
    let ip_len = match ip {
        None => 0,
        Some(r) if same_high_half(r) => 5,
        Some(_) => 10,
    };
    let trace = cookie_len + tests_len + ip_len;
    let allow = trace + 1;
    let mut b = Vec::with_capacity(allow + 1);

    // The cookie first: it is the hot path (every shim syscall). The high
    // half decides whether the register holds the cookie or a marker; a
    // marker must stop even where the IP would exempt the call.
    if let Some((arg, value)) = cookie {
        let lo = arg_lo(value);
        let hi = arg_hi(value);
        let after = cookie_len;
        b.push(stmt(LD_ABS, off_arg_lo(arg) + 4));
        jump_to(&mut b, JEQ, hi, To::Next, To::At(after));
        b.push(stmt(LD_ABS, off_arg_lo(arg)));
        jump_to(&mut b, JEQ, lo, To::At(allow), To::At(trace));
    }

    // Then the argument tests: one load and one jset each.
    for (arg, &mask) in (0u8..).zip(masks) {
        if mask != 0 {
            b.push(stmt(LD_ABS, off_arg_lo(arg)));
            jump_to(&mut b, JSET, mask, To::At(allow), To::Next);
        }
    }
    debug_assert_eq!(b.len(), cookie_len + tests_len);

    if let Some(r) = ip {
        let (start_hi, start_lo) = (arg_hi(r.start), arg_lo(r.start));
        // `end` is exclusive; compile() rejected empty ranges, so end > 0.
        let (end_hi, end_lo) = (arg_hi(r.end), arg_lo(r.end));
        if same_high_half(r) {
            b.push(stmt(LD_ABS, OFF_IP_HI));
            jump_to(&mut b, JEQ, start_hi, To::Next, To::At(trace));
            b.push(stmt(LD_ABS, OFF_IP_LO));
            jump_to(&mut b, JGE, start_lo, To::Next, To::At(trace));
            jump_to(&mut b, JGE, end_lo, To::At(trace), To::At(allow));
        } else {
            let upper = b.len() + 6;
            // ip >= start
            b.push(stmt(LD_ABS, OFF_IP_HI));
            jump_to(&mut b, JGT, start_hi, To::At(upper), To::Next);
            jump_to(&mut b, JEQ, start_hi, To::Next, To::At(trace));
            b.push(stmt(LD_ABS, OFF_IP_LO));
            jump_to(&mut b, JGE, start_lo, To::Next, To::At(trace));
            b.push(stmt(LD_ABS, OFF_IP_HI));
            debug_assert_eq!(b.len(), upper);
            // ip < end (the accumulator holds the high half on both paths)
            jump_to(&mut b, JGT, end_hi, To::At(trace), To::Next);
            jump_to(&mut b, JEQ, end_hi, To::Next, To::At(allow));
            b.push(stmt(LD_ABS, OFF_IP_LO));
            jump_to(&mut b, JGE, end_lo, To::At(trace), To::At(allow));
        }
    }

    debug_assert_eq!(b.len(), trace);
    b.push(stmt(RET, RET_TRACE));
    b.push(stmt(RET, RET_ALLOW));
    b
}

/// Whether `start` and the exclusive `end` share their high 32 bits, so
/// that the range check can compare only the low halves. (A range that ends
/// exactly at a 4 GiB boundary does not qualify: its `end` has a different
/// high half.)
fn same_high_half(r: &Range<u64>) -> bool {
    arg_hi(r.start) == arg_hi(r.end)
}

fn arg_lo(v: u64) -> u32 {
    v as u32
}

fn arg_hi(v: u64) -> u32 {
    (v >> 32) as u32
}

/// The flags every filter is installed with: SPEC_ALLOW where the kernel
/// knows it (4.17 and later). On kernels whose speculative-store-bypass
/// mitigation is "seccomp" (the default before 5.16, still chosen by some
/// distributions), a filter without it also switches every process of the
/// job to SSBD, slowing the program's own loads and stores by up to tens
/// of percent. The filter is a prefilter for the supervisor, not a
/// sandbox: it has no reason to ask for that. Probed once, in the
/// supervisor (`spawn` asks before it forks, so that `install` in the
/// child only reads the answer).
pub fn filter_flags() -> libc::c_ulong {
    static FLAGS: std::sync::OnceLock<libc::c_ulong> = std::sync::OnceLock::new();
    *FLAGS.get_or_init(|| {
        let spec = libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as libc::c_ulong;
        // The kernel checks the flags before it reads the program: a null
        // program fails with EFAULT when it knows them, EINVAL when not.
        // SAFETY: no memory is read or written (the program pointer is
        // null and the call fails before installing anything).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                spec,
                std::ptr::null::<libc::sock_fprog>(),
            )
        };
        if rc != 0 && nix::errno::Errno::last_raw() == libc::EFAULT {
            spec
        } else {
            0
        }
    })
}

/// Installs `prog` as a seccomp filter on the calling thread.
///
/// To be called in a forked child right before execve: it is
/// async-signal-safe (no allocation, no locks). It sets
/// `PR_SET_NO_NEW_PRIVS` first, which an unprivileged process needs before
/// it may install a filter; as a consequence set-user-ID programs run under
/// the filter do not gain privileges. Install only once the tracer is
/// attached: with no tracer a `SECCOMP_RET_TRACE` syscall fails with ENOSYS.
/// Returns the errno on failure.
pub fn install(prog: &[libc::sock_filter]) -> Result<(), i32> {
    let len = match u16::try_from(prog.len()) {
        Ok(len) if len > 0 => len,
        _ => return Err(libc::EINVAL),
    };
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer.
        filter: prog.as_ptr().cast_mut(),
    };
    let fprog_addr = std::ptr::addr_of!(fprog) as libc::c_ulong;

    // SAFETY: prctl with integer arguments only; PR_SET_NO_NEW_PRIVS reads
    // no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last_raw());
    }

    // SAFETY: `fprog` lives on this stack frame for the whole call and points
    // at `prog`, which is borrowed for the duration; the kernel copies the
    // program before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            filter_flags(),
            fprog_addr,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = nix::errno::Errno::last_raw();
    if err != libc::ENOSYS {
        return Err(err);
    }

    // seccomp(2) appeared in Linux 3.17; older kernels only have prctl.
    // SAFETY: as above, `fprog` and `prog` outlive the call, which copies
    // the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            fprog_addr,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COOKIE: u64 = 0x5eed_c0de_1234_5678;

    #[test]
    fn filters_do_not_ask_for_the_store_bypass_mitigation() {
        // Every kernel CI runs on knows SPEC_ALLOW (4.17+); the probe must
        // find it, or every job would run with SSBD where seccomp turns
        // it on.
        let spec = libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as libc::c_ulong;
        assert_eq!(filter_flags(), spec);
    }

    /// The instruction as a comparable tuple (libc's struct has no PartialEq).
    type Raw = (u16, u8, u8, u32);

    fn raw(prog: &[libc::sock_filter]) -> Vec<Raw> {
        prog.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect()
    }

    fn ld(k: u32) -> Raw {
        (LD_ABS, 0, 0, k)
    }
    fn ret(k: u32) -> Raw {
        (RET, 0, 0, k)
    }
    fn ja(k: u32) -> Raw {
        (JA, 0, 0, k)
    }
    fn jeq(k: u32, jt: u8, jf: u8) -> Raw {
        (JEQ, jt, jf, k)
    }
    fn jge(k: u32, jt: u8, jf: u8) -> Raw {
        (JGE, jt, jf, k)
    }
    fn jgt(k: u32, jt: u8, jf: u8) -> Raw {
        (JGT, jt, jf, k)
    }

    fn prelude() -> Vec<Raw> {
        vec![
            ld(4),
            jeq(0xc000_003e, 1, 0),
            ret(RET_TRACE),
            ld(0),
            (JSET, 0, 1, 0x4000_0000),
            ret(RET_TRACE),
        ]
    }

    fn traced(nr: i64, cookie_arg: Option<u8>) -> TracedSyscall {
        TracedSyscall {
            nr,
            cookie_arg,
            allow_if: &[],
            ip_exempt: true,
        }
    }

    fn traced_if(nr: i64, cookie_arg: Option<u8>, allow_if: &'static [ArgTest]) -> TracedSyscall {
        TracedSyscall {
            nr,
            cookie_arg,
            allow_if,
            ip_exempt: true,
        }
    }

    /// An [`ArgTest`] literal (a struct expression, so that `&[...]` of
    /// them is promoted to a `'static` slice).
    macro_rules! arg_test {
        ($arg:expr, $mask:expr) => {
            ArgTest {
                arg: $arg,
                mask: $mask,
            }
        };
    }

    /// mmap's: MAP_ANONYMOUS in the flags, or a negative (32-bit) fd.
    const MMAP_NO_FD: &[ArgTest] = &[
        arg_test!(3, libc::MAP_ANONYMOUS as u32),
        arg_test!(4, 1 << 31),
    ];

    fn jset(k: u32, jt: u8, jf: u8) -> Raw {
        (JSET, jt, jf, k)
    }

    // ---- a classic-BPF interpreter and the kernel's checks, for the tests ----

    #[derive(Clone, Copy, Debug)]
    struct Data {
        nr: i32,
        arch: u32,
        ip: u64,
        args: [u64; 6],
    }

    impl Data {
        fn native(nr: i32) -> Data {
            Data {
                nr,
                arch: AUDIT_ARCH_X86_64,
                ip: 0x7f00_0000_1000,
                args: [0; 6],
            }
        }

        fn bytes(&self) -> [u8; 64] {
            let mut b = [0u8; 64];
            b[0..4].copy_from_slice(&self.nr.to_le_bytes());
            b[4..8].copy_from_slice(&self.arch.to_le_bytes());
            b[8..16].copy_from_slice(&self.ip.to_le_bytes());
            for (i, a) in self.args.iter().enumerate() {
                b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
            }
            b
        }
    }

    /// What the kernel's classic-BPF checker (plus seccomp's) insists on.
    fn check_like_kernel(prog: &[libc::sock_filter]) -> Result<(), String> {
        if prog.is_empty() || prog.len() > MAX_INSNS {
            return Err(format!("bad length {}", prog.len()));
        }
        for (pc, f) in prog.iter().enumerate() {
            match f.code {
                LD_ABS => {
                    if f.k % 4 != 0 || f.k >= 64 {
                        return Err(format!("{pc}: bad load offset {}", f.k));
                    }
                }
                JA => {
                    if pc + 1 + f.k as usize >= prog.len() {
                        return Err(format!("{pc}: ja out of range"));
                    }
                }
                JEQ | JGT | JGE | JSET => {
                    let far = pc + 1 + usize::from(f.jt.max(f.jf));
                    if far >= prog.len() {
                        return Err(format!("{pc}: jump out of range"));
                    }
                }
                RET => {}
                other => return Err(format!("{pc}: unexpected opcode {other:#x}")),
            }
        }
        match prog.last().map(|f| f.code) {
            Some(RET) => Ok(()),
            _ => Err("program does not end with ret".into()),
        }
    }

    /// Runs `prog` on `data`; returns the action and the number of
    /// instructions executed.
    fn interpret(prog: &[libc::sock_filter], data: &Data) -> (u32, usize) {
        let bytes = data.bytes();
        let mut a: u32 = 0;
        let mut pc = 0usize;
        let mut steps = 0usize;
        loop {
            let f = prog[pc];
            steps += 1;
            pc += 1;
            match f.code {
                LD_ABS => {
                    let k = f.k as usize;
                    a = u32::from_le_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
                }
                JA => pc += f.k as usize,
                JEQ | JGT | JGE | JSET => {
                    let taken = match f.code {
                        JEQ => a == f.k,
                        JGT => a > f.k,
                        JGE => a >= f.k,
                        _ => a & f.k != 0,
                    };
                    pc += usize::from(if taken { f.jt } else { f.jf });
                }
                RET => return (f.k, steps),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// The kernel's `seccomp_is_const_allow()` (kernel/seccomp.c): whether
    /// the action cache may skip the filter for this arch and nr.
    fn kernel_cache_allows(prog: &[libc::sock_filter], arch: u32, nr: u32) -> bool {
        let mut a = 0u32;
        let mut pc = 0usize;
        while pc < prog.len() {
            let f = prog[pc];
            match f.code {
                LD_ABS => match f.k {
                    0 => a = nr,
                    4 => a = arch,
                    _ => return false,
                },
                RET => return f.k == RET_ALLOW,
                JA => pc += f.k as usize,
                JEQ | JGT | JGE | JSET => {
                    let taken = match f.code {
                        JEQ => a == f.k,
                        JGT => a > f.k,
                        JGE => a >= f.k,
                        _ => a & f.k != 0,
                    };
                    pc += usize::from(if taken { f.jt } else { f.jf });
                }
                _ => return false,
            }
            pc += 1;
        }
        false
    }

    /// The specification, written as plainly as possible.
    fn reference(spec: &FilterSpec, d: &Data) -> u32 {
        if d.arch != AUDIT_ARCH_X86_64 || (d.nr as u32) & X32_SYSCALL_BIT != 0 {
            return RET_TRACE;
        }
        let Some(t) = spec.traced.iter().find(|t| t.nr == i64::from(d.nr)) else {
            return RET_ALLOW;
        };
        if let (Some(c), Some(i)) = (spec.cookie, t.cookie_arg) {
            let reg = d.args[usize::from(i)];
            if reg == c {
                return RET_ALLOW;
            }
            if reg >> 32 == c >> 32 {
                // A marker.
                return RET_TRACE;
            }
        }
        if t.allow_if
            .iter()
            .any(|a| (d.args[usize::from(a.arg)] as u32) & a.mask != 0)
        {
            return RET_ALLOW;
        }
        if t.ip_exempt && spec.allow_ip.as_ref().is_some_and(|r| r.contains(&d.ip)) {
            return RET_ALLOW;
        }
        RET_TRACE
    }

    /// Interesting inputs for `spec`: every traced nr and its neighbours,
    /// with the cookie in each register (exact, and off in either half), IPs
    /// at the edges of the range, each argument test's register with one of
    /// its bits, or all bits but its own, or its bits in the high half only,
    /// foreign arch, x32.
    fn probes(spec: &FilterSpec) -> Vec<Data> {
        let mut nrs: Vec<i32> = vec![0, 1, 2, 500, 0x3fff_ffff, -1, i32::MIN];
        for t in &spec.traced {
            let nr = t.nr as i32;
            nrs.extend([nr - 1, nr, nr + 1, nr | X32_SYSCALL_BIT as i32]);
        }
        let mut ips = vec![0u64, u64::MAX, 0x7f00_0000_1000];
        if let Some(r) = &spec.allow_ip {
            for base in [r.start, r.end] {
                ips.extend([
                    base.wrapping_sub(1),
                    base,
                    base.wrapping_add(1),
                    base ^ (1 << 32),
                    base ^ 1,
                ]);
            }
        }
        let c = spec.cookie.unwrap_or(COOKIE);
        let cookies = [
            c,
            c ^ (1 << 32),
            c ^ (1 << 63),
            c ^ 1,
            c ^ (1 << 31),
            c ^ 0x4b45_4843,
            0,
        ];
        let mut tests: Vec<(usize, u64)> = Vec::new();
        for a in spec.traced.iter().flat_map(|t| t.allow_if) {
            let m = u64::from(a.mask);
            let low_bit = m & m.wrapping_neg();
            let high_bit = 1u64 << (63 - m.leading_zeros());
            for v in [low_bit, high_bit, m, m << 32, u64::MAX ^ m] {
                tests.push((usize::from(a.arg), v));
            }
        }
        tests.sort_unstable();
        tests.dedup();
        let mut out = Vec::new();
        // The IP, the cookie and the argument tests exempt independently, so
        // vary one at a time (with the others at an arbitrary value) rather
        // than their product.
        for &nr in &nrs {
            for &ip in &ips {
                for args in [[c ^ 0x10; 6], [0; 6]] {
                    let mut d = Data::native(nr);
                    d.ip = ip;
                    d.args = args;
                    out.push(d);
                }
            }
            for &(arg, v) in &tests {
                for ip in [ips[2], ips[ips.len() - 1]] {
                    let mut d = Data::native(nr);
                    d.ip = ip;
                    d.args[arg] = v;
                    out.push(d);
                }
            }
            for arg in 0..6 {
                for &cv in &cookies {
                    for ip in [ips[2], ips[ips.len() - 1]] {
                        let mut d = Data::native(nr);
                        d.ip = ip;
                        d.args[arg] = cv;
                        out.push(d);
                    }
                }
            }
            let mut d = Data::native(nr);
            d.arch = 0x4000_0003; // AUDIT_ARCH_I386
            d.args = [c; 6];
            out.push(d);
        }
        out
    }

    fn assert_matches_reference(spec: &FilterSpec, prog: &[libc::sock_filter]) {
        check_like_kernel(prog).unwrap();
        for d in probes(spec) {
            let (got, _) = interpret(prog, &d);
            assert_eq!(got, reference(spec, &d), "spec {spec:?}, input {d:?}");
        }
    }

    /// The x86_64 syscalls that take, create or release an fd, roughly what
    /// the supervisor traces; the cookie slots here are made up.
    fn fd_syscalls() -> Vec<TracedSyscall> {
        use libc::*;
        let six = [
            SYS_mmap,
            SYS_sendto,
            SYS_recvfrom,
            SYS_splice,
            SYS_copy_file_range,
            SYS_pselect6,
            SYS_epoll_pwait,
            SYS_preadv2,
            SYS_pwritev2,
            SYS_io_uring_enter,
            SYS_epoll_pwait2,
        ];
        let others = [
            SYS_read,
            SYS_write,
            SYS_open,
            SYS_close,
            SYS_fstat,
            SYS_poll,
            SYS_lseek,
            SYS_ioctl,
            SYS_pread64,
            SYS_pwrite64,
            SYS_readv,
            SYS_writev,
            SYS_pipe,
            SYS_select,
            SYS_dup,
            SYS_dup2,
            SYS_sendfile,
            SYS_socket,
            SYS_connect,
            SYS_accept,
            SYS_sendmsg,
            SYS_recvmsg,
            SYS_shutdown,
            SYS_bind,
            SYS_listen,
            SYS_getsockname,
            SYS_getpeername,
            SYS_socketpair,
            SYS_setsockopt,
            SYS_getsockopt,
            SYS_clone,
            SYS_execve,
            SYS_fcntl,
            SYS_flock,
            SYS_fsync,
            SYS_fdatasync,
            SYS_ftruncate,
            SYS_getdents,
            SYS_fchdir,
            SYS_creat,
            SYS_fchmod,
            SYS_fchown,
            SYS_fstatfs,
            SYS_readahead,
            SYS_fsetxattr,
            SYS_fgetxattr,
            SYS_flistxattr,
            SYS_fremovexattr,
            SYS_epoll_create,
            SYS_getdents64,
            SYS_fadvise64,
            SYS_epoll_wait,
            SYS_epoll_ctl,
            SYS_inotify_init,
            SYS_inotify_add_watch,
            SYS_inotify_rm_watch,
            SYS_openat,
            SYS_mkdirat,
            SYS_mknodat,
            SYS_fchownat,
            SYS_futimesat,
            SYS_newfstatat,
            SYS_unlinkat,
            SYS_renameat,
            SYS_linkat,
            SYS_symlinkat,
            SYS_readlinkat,
            SYS_fchmodat,
            SYS_faccessat,
            SYS_ppoll,
            SYS_tee,
            SYS_sync_file_range,
            SYS_vmsplice,
            SYS_utimensat,
            SYS_signalfd,
            SYS_timerfd_create,
            SYS_eventfd,
            SYS_fallocate,
            SYS_timerfd_settime,
            SYS_timerfd_gettime,
            SYS_accept4,
            SYS_signalfd4,
            SYS_eventfd2,
            SYS_epoll_create1,
            SYS_dup3,
            SYS_pipe2,
            SYS_inotify_init1,
            SYS_preadv,
            SYS_pwritev,
            SYS_perf_event_open,
            SYS_recvmmsg,
            SYS_fanotify_init,
            SYS_fanotify_mark,
            SYS_name_to_handle_at,
            SYS_open_by_handle_at,
            SYS_syncfs,
            SYS_sendmmsg,
            SYS_setns,
            SYS_renameat2,
            SYS_memfd_create,
            SYS_bpf,
            SYS_execveat,
            SYS_userfaultfd,
            SYS_statx,
            SYS_io_uring_setup,
            SYS_io_uring_register,
            SYS_open_tree,
            SYS_move_mount,
            SYS_fsopen,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fspick,
            SYS_pidfd_open,
            SYS_clone3,
            SYS_close_range,
            SYS_openat2,
            SYS_pidfd_getfd,
            SYS_faccessat2,
            SYS_process_madvise,
            SYS_mount_setattr,
            SYS_memfd_secret,
        ];
        let mut v: Vec<TracedSyscall> = six
            .iter()
            .map(|&nr| {
                if nr == SYS_mmap {
                    traced_if(nr, None, MMAP_NO_FD)
                } else {
                    traced(nr, None)
                }
            })
            .collect();
        v.extend(
            others
                .iter()
                .enumerate()
                .map(|(i, &nr)| traced(nr, Some([5, 4, 3][i % 3]))),
        );
        v
    }

    // ---- golden tests ----

    #[test]
    fn golden_empty_spec_allows_all_native_syscalls() {
        let prog = compile(&FilterSpec::default()).unwrap();
        let mut want = prelude();
        want.push(ret(RET_ALLOW));
        assert_eq!(raw(&prog), want);
    }

    #[test]
    fn golden_one_traced_syscall_without_exemptions() {
        let spec = FilterSpec {
            traced: vec![traced(110, Some(3))],
            ..FilterSpec::default()
        };
        let mut want = prelude();
        want.extend([
            jge(110, 1, 0),
            ret(RET_ALLOW), // 0..110
            jge(111, 1, 0),
            ret(RET_TRACE), // 110
            ret(RET_ALLOW), // 111..
        ]);
        assert_eq!(raw(&compile(&spec).unwrap()), want);
    }

    #[test]
    fn golden_traced_syscall_zero_and_adjacent_numbers_share_runs() {
        // 0, 1, 2 traced alike form one run; 3 differs.
        let spec = FilterSpec {
            traced: vec![traced(2, None), traced(0, None), traced(1, None)],
            ..FilterSpec::default()
        };
        let mut want = prelude();
        want.extend([jge(3, 1, 0), ret(RET_TRACE), ret(RET_ALLOW)]);
        assert_eq!(raw(&compile(&spec).unwrap()), want);
    }

    #[test]
    fn golden_cookie_block() {
        let spec = FilterSpec {
            traced: vec![traced(32, Some(1))],
            cookie: Some(0x1122_3344_5566_7788),
            allow_ip: None,
        };
        let mut want = prelude();
        want.extend([
            jge(32, 1, 0), // 6
            ret(RET_ALLOW),
            jge(33, 1, 0),
            ja(1), // 9 -> 11
            ret(RET_ALLOW),
            ld(28), // 11: args[1] high half
            jeq(0x1122_3344, 0, 2),
            ld(24),
            jeq(0x5566_7788, 1, 0),
            ret(RET_TRACE),
            ret(RET_ALLOW),
        ]);
        assert_eq!(raw(&compile(&spec).unwrap()), want);
    }

    #[test]
    fn golden_ip_range_within_one_4gib_region() {
        let spec = FilterSpec {
            traced: vec![traced(9, None)],
            cookie: Some(COOKIE),
            allow_ip: Some(0x7000_0000..0x7000_1000),
        };
        let mut want = prelude();
        want.extend([
            jge(9, 1, 0),
            ret(RET_ALLOW),
            jge(10, 1, 0),
            ja(1),
            ret(RET_ALLOW),
            ld(12),
            jeq(0, 0, 3),
            ld(8),
            jge(0x7000_0000, 0, 1),
            jge(0x7000_1000, 0, 1),
            ret(RET_TRACE),
            ret(RET_ALLOW),
        ]);
        assert_eq!(raw(&compile(&spec).unwrap()), want);
    }

    #[test]
    fn golden_cookie_and_ip_range_across_4gib_boundary() {
        let spec = FilterSpec {
            traced: vec![traced(3, Some(0))],
            cookie: Some(0xdead_beef_0bad_f00d),
            allow_ip: Some(0xffff_f000..0x1_0000_1000),
        };
        let mut want = prelude();
        want.extend([
            jge(3, 1, 0),
            ret(RET_ALLOW),
            jge(4, 1, 0),
            ja(1),
            ret(RET_ALLOW),
            // cookie in args[0]
            ld(20),
            jeq(0xdead_beef, 0, 2),
            ld(16),
            jeq(0x0bad_f00d, 11, 10),
            // ip >= start
            ld(12),
            jgt(0, 4, 0),
            jeq(0, 0, 7),
            ld(8),
            jge(0xffff_f000, 0, 5),
            ld(12),
            // ip < end
            jgt(1, 3, 0),
            jeq(1, 0, 3),
            ld(8),
            jge(0x1000, 0, 1),
            ret(RET_TRACE),
            ret(RET_ALLOW),
        ]);
        assert_eq!(raw(&compile(&spec).unwrap()), want);
    }

    #[test]
    fn golden_one_block_per_cookie_register() {
        let spec = FilterSpec {
            traced: vec![traced(1, Some(3)), traced(3, Some(1)), traced(5, None)],
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        // runs: 0 A | 1 B0 | 2 A | 3 B1 | 4 A | 5 T | 6.. A, split 3 | 4
        let mut want = prelude();
        want.extend([
            jge(3, 5, 0), // 6
            jge(1, 1, 0), // 7
            ret(RET_ALLOW),
            jge(2, 1, 0),
            ja(8), // 10 -> block 0 at 19
            ret(RET_ALLOW),
            jge(5, 3, 0), // 12
            jge(4, 1, 0),
            ja(10), // 14 -> block 1 at 25
            ret(RET_ALLOW),
            jge(6, 1, 0), // 16
            ret(RET_TRACE),
            ret(RET_ALLOW),
            // block 0: cookie in args[3]
            ld(44), // 19
            jeq(0x5eed_c0de, 0, 2),
            ld(40),
            jeq(0x1234_5678, 1, 0),
            ret(RET_TRACE),
            ret(RET_ALLOW),
            // block 1: cookie in args[1]
            ld(28), // 25
            jeq(0x5eed_c0de, 0, 2),
            ld(24),
            jeq(0x1234_5678, 1, 0),
            ret(RET_TRACE),
            ret(RET_ALLOW),
        ]);
        let prog = compile(&spec).unwrap();
        assert_eq!(raw(&prog), want);
        assert_matches_reference(&spec, &prog);
    }

    #[test]
    fn golden_arg_tests_block() {
        // mmap as the supervisor traces it: no cookie slot, two tests.
        let spec = FilterSpec {
            traced: vec![traced_if(9, None, MMAP_NO_FD)],
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        let mut want = prelude();
        want.extend([
            jge(9, 1, 0), // 6
            ret(RET_ALLOW),
            jge(10, 1, 0),
            ja(1), // 9 -> 11
            ret(RET_ALLOW),
            ld(40), // 11: args[3] (flags) low half
            jset(0x20, 3, 0),
            ld(48), // args[4] (fd) low half
            jset(0x8000_0000, 1, 0),
            ret(RET_TRACE),
            ret(RET_ALLOW),
        ]);
        let prog = compile(&spec).unwrap();
        assert_eq!(raw(&prog), want);
        assert_matches_reference(&spec, &prog);
    }

    #[test]
    fn golden_cookie_then_arg_tests_then_ip_range() {
        // Tests of one register are merged; registers are tested in order.
        let spec = FilterSpec {
            traced: vec![traced_if(
                3,
                Some(1),
                &[
                    arg_test!(5, 0x100),
                    arg_test!(0, 0x3),
                    arg_test!(5, 0x8000_0000),
                ],
            )],
            cookie: Some(0xdead_beef_0bad_f00d),
            allow_ip: Some(0x7000_0000..0x7000_1000),
        };
        let mut want = prelude();
        want.extend([
            jge(3, 1, 0),
            ret(RET_ALLOW),
            jge(4, 1, 0),
            ja(1),
            ret(RET_ALLOW),
            // 0: cookie in args[1]
            ld(28),
            jeq(0xdead_beef, 0, 2),
            ld(24),
            jeq(0x0bad_f00d, 10, 9),
            // 4: args[0] & 0x3, args[5] & 0x8000_0100
            ld(16),
            jset(0x3, 8, 0),
            ld(56),
            jset(0x8000_0100, 6, 0),
            // 8: the IP range
            ld(12),
            jeq(0, 0, 3),
            ld(8),
            jge(0x7000_0000, 0, 1),
            jge(0x7000_1000, 0, 1),
            ret(RET_TRACE), // 13
            ret(RET_ALLOW),
        ]);
        let prog = compile(&spec).unwrap();
        assert_eq!(raw(&prog), want);
        assert_matches_reference(&spec, &prog);
    }

    #[test]
    fn blocks_are_shared_only_by_equal_cookie_argument_and_tests() {
        let spec = FilterSpec {
            traced: vec![
                traced_if(1, Some(3), MMAP_NO_FD),
                traced(3, Some(3)),
                traced_if(5, Some(3), MMAP_NO_FD),
                // The same tests written in another order: the same block.
                traced_if(7, Some(3), &[arg_test!(4, 1 << 31), arg_test!(3, 0x20)]),
                traced_if(9, Some(2), MMAP_NO_FD),
            ],
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        // Each block with the tests has two jsets (the prelude one more).
        let jsets = |p: &[libc::sock_filter]| p.iter().filter(|f| f.code == JSET).count() - 1;
        let prog = compile(&spec).unwrap();
        assert_matches_reference(&spec, &prog);
        // Blocks (3, tests) for 1, 5 and 7, (2, tests) for 9; 3 has a
        // cookie-only block.
        assert_eq!(jsets(&prog), 2 * 2, "{:?}", raw(&prog));

        // Without a cookie the cookie argument no longer tells blocks
        // apart: one block for 1, 5, 7 and 9, and 3 is plain TRACE.
        let no_cookie = FilterSpec {
            cookie: None,
            ..spec.clone()
        };
        let prog = compile(&no_cookie).unwrap();
        assert_matches_reference(&no_cookie, &prog);
        assert_eq!(jsets(&prog), 2, "{:?}", raw(&prog));
    }

    // ---- structure and errors ----

    #[test]
    fn rejects_bad_specs() {
        let with = |traced: Vec<TracedSyscall>| FilterSpec {
            traced,
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        assert_eq!(
            compile(&with(vec![traced(1, Some(6))])).unwrap_err(),
            FilterError::BadCookieArg { nr: 1, arg: 6 }
        );
        assert_eq!(
            compile(&with(vec![traced(-1, None)])).unwrap_err(),
            FilterError::BadSyscallNr { nr: -1 }
        );
        assert_eq!(
            compile(&with(vec![traced(0x4000_0000 + 39, None)])).unwrap_err(),
            FilterError::BadSyscallNr {
                nr: 0x4000_0000 + 39
            }
        );
        assert_eq!(
            compile(&with(vec![traced(3, Some(1)), traced(3, Some(2))])).unwrap_err(),
            FilterError::ConflictingCookieArg {
                nr: 3,
                first: Some(1),
                second: Some(2)
            }
        );
        assert_eq!(
            compile(&with(vec![traced_if(9, None, MMAP_NO_FD), traced(9, None)])).unwrap_err(),
            FilterError::ConflictingArgTests { nr: 9 }
        );
        assert_eq!(
            compile(&with(vec![traced_if(9, None, &[arg_test!(6, 1)])])).unwrap_err(),
            FilterError::BadArgTest {
                nr: 9,
                arg: 6,
                mask: 1
            }
        );
        assert_eq!(
            compile(&with(vec![traced_if(9, None, &[arg_test!(3, 0)])])).unwrap_err(),
            FilterError::BadArgTest {
                nr: 9,
                arg: 3,
                mask: 0
            }
        );
        // The same entry twice is harmless, as are the same tests written
        // in another order.
        assert!(compile(&with(vec![traced(3, Some(1)), traced(3, Some(1))])).is_ok());
        assert!(compile(&with(vec![
            traced_if(9, None, MMAP_NO_FD),
            traced_if(9, None, &[arg_test!(4, 1 << 31), arg_test!(3, 0x20)]),
        ]))
        .is_ok());
        let mut zero = with(vec![]);
        zero.cookie = Some(0);
        assert_eq!(compile(&zero).unwrap_err(), FilterError::ZeroCookie);
        let mut empty_ip = with(vec![]);
        empty_ip.allow_ip = Some(5..5);
        assert_eq!(
            compile(&empty_ip).unwrap_err(),
            FilterError::EmptyIpRange { start: 5, end: 5 }
        );
    }

    #[test]
    fn error_messages_are_one_line() {
        let errs = [
            FilterError::TooLong {
                len: 5000,
                max: 4096,
            },
            FilterError::BadCookieArg { nr: 1, arg: 9 },
            FilterError::BadSyscallNr { nr: -3 },
            FilterError::ConflictingCookieArg {
                nr: 3,
                first: None,
                second: Some(2),
            },
            FilterError::EmptyIpRange { start: 9, end: 1 },
            FilterError::ZeroCookie,
            FilterError::BadArgTest {
                nr: 9,
                arg: 7,
                mask: 0,
            },
            FilterError::ConflictingArgTests { nr: 9 },
        ];
        for e in errs {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.is_empty(), "{msg}");
        }
        assert_eq!(
            FilterError::BadSyscallNr { nr: -3 }.to_string(),
            "-3 is not a native x86_64 syscall number (expected 0 to 1073741823)"
        );
    }

    #[test]
    fn full_fd_syscall_set_compiles_matches_reference_and_is_shallow() {
        let traced = fd_syscalls();
        assert!(traced.len() >= 100, "{}", traced.len());
        let mut spec = FilterSpec {
            traced,
            cookie: Some(COOKIE),
            allow_ip: Some(0x7000_0000..0x7000_1000),
        };
        for allow_ip in [
            Some(0x7000_0000..0x7000_1000),
            None,
            Some(u64::MAX - 4..u64::MAX),
        ] {
            spec.allow_ip = allow_ip;
            let prog = compile(&spec).unwrap();
            assert!(prog.len() < 600, "{}", prog.len());
            assert_matches_reference(&spec, &prog);

            let mut worst = 0;
            for nr in 0..600 {
                let mut d = Data::native(nr);
                d.args = [COOKIE; 6];
                let (action, steps) = interpret(&prog, &d);
                assert_eq!(action, reference(&spec, &d));
                worst = worst.max(steps);
                // Untraced syscalls must stay eligible for the kernel's
                // action cache; traced ones must not be (they depend on
                // arguments).
                let is_traced = spec.traced.iter().any(|t| t.nr == i64::from(nr));
                assert_eq!(
                    kernel_cache_allows(&prog, AUDIT_ARCH_X86_64, nr as u32),
                    !is_traced,
                    "nr {nr}"
                );
            }
            // 6 prelude + ~log2(runs) tree + a cookie block: far from a
            // linear chain over 100+ syscalls.
            assert!(worst <= 30, "worst path {worst} instructions");
        }
    }

    #[test]
    fn foreign_arch_and_x32_are_traced_not_killed_or_cached() {
        let prog = compile(&FilterSpec {
            traced: fd_syscalls(),
            cookie: Some(COOKIE),
            allow_ip: None,
        })
        .unwrap();
        let mut d = Data::native(39);
        d.arch = 0x4000_0003;
        assert_eq!(interpret(&prog, &d).0, RET_TRACE);
        assert!(!kernel_cache_allows(&prog, 0x4000_0003, 39));
        let d = Data::native((X32_SYSCALL_BIT + 39) as i32);
        assert_eq!(interpret(&prog, &d).0, RET_TRACE);
        assert!(!kernel_cache_allows(
            &prog,
            AUDIT_ARCH_X86_64,
            X32_SYSCALL_BIT + 39
        ));
        // No path of the program returns anything but ALLOW or TRACE.
        assert!(prog
            .iter()
            .filter(|f| f.code == RET)
            .all(|f| f.k == RET_ALLOW || f.k == RET_TRACE));
    }

    #[test]
    fn large_sets_use_trampolines_and_stay_correct() {
        // Every other syscall number, alternating cookie registers, gives a
        // tree whose top left subtrees exceed a u8 jump.
        let traced: Vec<TracedSyscall> = (0..700)
            .map(|i| traced(2 * i, Some((i % 6) as u8)))
            .collect();
        let spec = FilterSpec {
            traced,
            cookie: Some(COOKIE),
            allow_ip: Some(0x1_0000_0000 - 8..0x1_0000_0000 + 8),
        };
        let prog = compile(&spec).unwrap();
        let r = raw(&prog);
        let trampolines = r
            .windows(2)
            .filter(|w| w[0].0 == JGE && (w[0].1, w[0].2) == (0, 1) && w[1].0 == JA)
            .count();
        assert!(
            trampolines > 0,
            "expected trampolines in a {}-insn program",
            r.len()
        );
        assert_matches_reference(&spec, &prog);
    }

    #[test]
    fn too_long_is_an_error_not_a_broken_program() {
        let traced: Vec<TracedSyscall> = (0..3000).map(|i| traced(2 * i, Some(0))).collect();
        let spec = FilterSpec {
            traced,
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        match compile(&spec) {
            Err(FilterError::TooLong { len, max }) => {
                assert!(len > max);
                assert_eq!(max, 4096);
            }
            other => panic!("expected TooLong, got {:?}", other.map(|p| p.len())),
        }
    }

    /// Argument tests for the random specs: none to three, on one register
    /// or several, single bits (the lowest, the sign bit), several bits, all
    /// bits, the same register twice.
    const ARG_TESTS: &[&[ArgTest]] = &[
        MMAP_NO_FD,
        &[arg_test!(0, 1)],
        &[arg_test!(5, 0xffff_ffff)],
        &[arg_test!(2, 0x8000_0000)],
        &[arg_test!(3, 0x0000_0f00), arg_test!(1, 0x20)],
        &[arg_test!(4, 0x10), arg_test!(4, 0x8000_0000)],
        &[
            arg_test!(1, 0x4000_0001),
            arg_test!(0, 2),
            arg_test!(5, 0x0001_0000),
        ],
    ];

    fn arb_spec() -> impl Strategy<Value = FilterSpec> {
        let allow_if = prop_oneof![
            2 => Just(&[][..]),
            1 => prop::sample::select(ARG_TESTS),
        ];
        let traced = prop::collection::btree_map(
            0i64..520,
            (prop::option::of(0u8..6), allow_if, any::<bool>()),
            0..160,
        );
        let cookie = prop::option::of(1u64..);
        let boundary = prop_oneof![
            any::<u64>(),
            (0u64..4, 0u64..0x2000)
                .prop_map(|(hi, lo)| (hi << 32).wrapping_sub(0x1000).wrapping_add(lo)),
            Just(0u64),
            Just(u64::MAX - 1),
        ];
        let ip = prop::option::of((boundary, 1u64..0x3_0000_0000));
        (traced, cookie, ip).prop_map(|(traced, cookie, ip)| FilterSpec {
            traced: traced
                .into_iter()
                .map(|(nr, (cookie_arg, allow_if, ip_exempt))| TracedSyscall {
                    nr,
                    cookie_arg,
                    allow_if,
                    ip_exempt,
                })
                .collect(),
            cookie,
            allow_ip: ip.map(|(start, len)| {
                let start = start.min(u64::MAX - 1);
                start..start.saturating_add(len)
            }),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn compiled_filter_matches_reference(spec in arb_spec()) {
            let prog = compile(&spec).unwrap();
            assert_matches_reference(&spec, &prog);
        }

        #[test]
        fn random_inputs_match_reference(
            spec in arb_spec(),
            inputs in prop::collection::vec(
                (any::<i32>(), 0usize..6, any::<u64>(), any::<bool>(), 0usize..6, any::<u64>()),
                64,
            ),
        ) {
            let prog = compile(&spec).unwrap();
            for (nr, arg, ip, use_cookie, other, value) in inputs {
                let mut d = Data::native(if use_cookie { nr.rem_euclid(520) } else { nr });
                d.ip = ip;
                // A random register value: random bits for the argument
                // tests (the cookie, if any, overwrites it).
                d.args[other] = value;
                if use_cookie {
                    d.args[arg] = spec.cookie.unwrap_or(COOKIE);
                }
                prop_assert_eq!(interpret(&prog, &d).0, reference(&spec, &d), "{:?}", d);
            }
        }
    }

    // ---- behaviour: install the filter in a forked child ----

    std::arch::global_asm!(
        ".pushsection .text.handles_seccomp_test_stub,\"ax\",@progbits",
        ".globl handles_seccomp_test_stub",
        ".type handles_seccomp_test_stub,@function",
        "handles_seccomp_test_stub:",
        "mov rax, rdi",
        "mov rdi, rsi",
        "syscall",
        ".globl handles_seccomp_test_stub_after_syscall",
        "handles_seccomp_test_stub_after_syscall:",
        "ret",
        ".size handles_seccomp_test_stub, . - handles_seccomp_test_stub",
        ".popsection",
    );

    extern "C" {
        /// `syscall(nr, arg0)` from a fixed place, returning -errno on error.
        fn handles_seccomp_test_stub(nr: i64, arg0: u64) -> i64;
        /// The instruction after the stub's `syscall`: what seccomp reports.
        static handles_seccomp_test_stub_after_syscall: u8;
    }

    fn stub_ip() -> u64 {
        std::ptr::addr_of!(handles_seccomp_test_stub_after_syscall) as u64
    }

    #[derive(Clone, Copy, Debug)]
    enum Via {
        Libc,
        Stub,
        /// The i386 entry point, from 64-bit code (no arguments: rbx is
        /// reserved by LLVM).
        Int80,
    }

    #[derive(Clone, Copy, Debug)]
    struct Call {
        via: Via,
        nr: i64,
        args: [u64; 6],
    }

    fn call(nr: i64) -> Call {
        Call {
            via: Via::Libc,
            nr,
            args: [0; 6],
        }
    }

    fn call_with(nr: i64, arg: usize, value: u64) -> Call {
        let mut c = call(nr);
        c.args[arg] = value;
        c
    }

    const MAX_CALLS: usize = 16;

    /// Issues one syscall; async-signal-safe. Returns (ret, errno).
    fn issue(c: &Call) -> [i64; 2] {
        let raw = match c.via {
            Via::Libc => {
                let a = c.args;
                // SAFETY: the tests only issue syscalls whose arguments are
                // plain integers (no pointers).
                let r = unsafe { libc::syscall(c.nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
                return if r == -1 {
                    [-1, i64::from(nix::errno::Errno::last_raw())]
                } else {
                    [r, 0]
                };
            }
            // SAFETY: as above; the stub touches no memory.
            Via::Stub => unsafe { handles_seccomp_test_stub(c.nr, c.args[0]) },
            Via::Int80 => {
                let r: i64;
                // SAFETY: an i386 syscall with integer arguments; the
                // registers the compat entry may clobber are declared.
                unsafe {
                    std::arch::asm!(
                        "int 0x80",
                        inlateout("rax") c.nr => r,
                        lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                        options(nostack),
                    );
                }
                r as i32 as i64
            }
        };
        if (-4095..0).contains(&raw) {
            [-1, -raw]
        } else {
            [raw, 0]
        }
    }

    /// Forks; the child installs `prog` (if any) and issues `calls`, sending
    /// back the install result and each call's (ret, errno). The child runs
    /// only async-signal-safe code: the test process has other threads.
    fn run_in_child(prog: Option<&[libc::sock_filter]>, calls: &[Call]) -> (i64, Vec<[i64; 2]>) {
        assert!(calls.len() <= MAX_CALLS);
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (rfd, wfd) = (fds[0], fds[1]);
        let mut buf = [[0i64; 2]; MAX_CALLS + 1];
        let size = std::mem::size_of_val(&buf);

        // SAFETY: the child below only makes raw syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = match prog {
                None => true,
                Some(p) => match install(p) {
                    Ok(()) => true,
                    Err(e) => {
                        buf[0] = [-1, i64::from(e)];
                        false
                    }
                },
            };
            if ok {
                for (slot, c) in buf[1..].iter_mut().zip(calls) {
                    *slot = issue(c);
                }
            }
            // SAFETY: writes from a live stack buffer; _exit skips atexit
            // handlers and destructors that would be unsafe after fork.
            unsafe {
                libc::write(wfd, buf.as_ptr().cast(), size);
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork failed");
        // SAFETY: closing our copy of the write end, which we own.
        unsafe { libc::close(wfd) };
        let mut got = 0usize;
        while got < size {
            // SAFETY: reads into the unread tail of `buf`.
            let n = unsafe {
                libc::read(
                    rfd,
                    buf.as_mut_ptr().cast::<u8>().add(got).cast(),
                    size - got,
                )
            };
            if n > 0 {
                got += n as usize;
            } else if n == 0 || nix::errno::Errno::last_raw() != libc::EINTR {
                break;
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked; `status` is a valid out
        // pointer.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(rfd);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child died: status {status:#x}"
        );
        assert_eq!(got, size, "short report from the child");
        (buf[0][1], buf[1..=calls.len()].to_vec())
    }

    const ENOSYS: [i64; 2] = [-1, libc::ENOSYS as i64];

    #[test]
    fn installed_filter_traces_and_cookie_exempts() {
        let spec = FilterSpec {
            traced: vec![
                traced(libc::SYS_getppid, Some(3)),
                traced(libc::SYS_dup, Some(5)),
            ],
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        let prog = compile(&spec).unwrap();
        let ppid = i64::from(std::process::id());
        let fd = 1u64; // any open fd works for dup; the child only dups it
        let getppid = libc::SYS_getppid;
        let calls = [
            call(libc::SYS_getpid),
            call(getppid),
            call_with(getppid, 3, COOKIE),
            call_with(getppid, 3, COOKIE ^ (1 << 32)),
            call_with(getppid, 3, COOKIE ^ (1 << 63)),
            call_with(getppid, 3, COOKIE ^ 1),
            call_with(getppid, 2, COOKIE),
            call_with(libc::SYS_dup, 0, fd),
            Call {
                args: [fd, 0, 0, 0, 0, COOKIE],
                ..call(libc::SYS_dup)
            },
            Call {
                args: [fd, 0, 0, 0, 0, COOKIE ^ (0xffff << 40)],
                ..call(libc::SYS_dup)
            },
            // x32 getpid: traced (so ENOSYS here), and the child survives.
            call(i64::from(X32_SYSCALL_BIT) + 39),
        ];
        let (install_errno, r) = run_in_child(Some(&prog), &calls);
        assert_eq!(install_errno, 0);
        assert!(r[0][0] > 0, "untraced getpid: {:?}", r[0]);
        assert_eq!(r[1], ENOSYS, "traced getppid without cookie");
        assert_eq!(r[2], [ppid, 0], "getppid with the cookie");
        assert_eq!(r[3], ENOSYS, "cookie off in the high half");
        assert_eq!(r[4], ENOSYS, "cookie off in the top bit");
        assert_eq!(r[5], ENOSYS, "cookie off in the low half");
        assert_eq!(r[6], ENOSYS, "cookie in the wrong register");
        assert_eq!(r[7], ENOSYS, "traced dup without cookie");
        assert!(
            r[8][0] >= 0 && r[8][1] == 0,
            "dup with the cookie: {:?}",
            r[8]
        );
        assert_eq!(r[9], ENOSYS, "dup with a high-half-forged cookie");
        assert_eq!(r[10], ENOSYS, "x32 syscall");
    }

    #[test]
    fn installed_filter_exempts_the_stub_address() {
        let ip = stub_ip();
        let ppid = i64::from(std::process::id());
        let stub = Call {
            via: Via::Stub,
            ..call(libc::SYS_getppid)
        };
        let calls = [stub, call(libc::SYS_getppid)];
        let ranges = [
            (ip..ip + 1, true),
            (ip - 2..ip + 30, true),
            (ip + 1..ip + 30, false),
            (ip - 30..ip, false),
            // Across a 4 GiB boundary (the general 64-bit comparison).
            ((ip & !0xffff_ffff) - 1..ip + 1, true),
            (ip + 1..ip + (1 << 33), false),
            (ip ^ (1 << 40)..(ip ^ (1 << 40)) + 1, false),
        ];
        for (range, allowed) in ranges {
            let spec = FilterSpec {
                traced: vec![traced(libc::SYS_getppid, None)],
                cookie: Some(COOKIE),
                allow_ip: Some(range.clone()),
            };
            let prog = compile(&spec).unwrap();
            let (install_errno, r) = run_in_child(Some(&prog), &calls);
            assert_eq!(install_errno, 0);
            let want = if allowed { [ppid, 0] } else { ENOSYS };
            assert_eq!(r[0], want, "stub at {ip:#x}, range {range:#x?}");
            assert_eq!(r[1], ENOSYS, "libc's syscall() is outside {range:#x?}");
        }
    }

    #[test]
    fn installed_filter_lets_mmap_without_an_fd_through() {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let fd = file.as_raw_fd() as u64;
        let not_open = 0x7ff0_0000u64; // a non-negative int beyond any fd table
        let mmap = |flags: u64, fd: u64| Call {
            args: [0, 4096, libc::PROT_READ as u64, flags, fd, 0],
            ..call(libc::SYS_mmap)
        };
        let private = libc::MAP_PRIVATE as u64;
        let anon = private | libc::MAP_ANONYMOUS as u64;
        let calls = [
            mmap(anon, u64::MAX),                 // 0: anonymous
            mmap(anon, fd),                       // 1: anonymous, fd ignored
            mmap(private, fd),                    // 2: a file
            mmap(private, u64::MAX),              // 3: fd -1
            mmap(private, 0xffff_ffff),           // 4: -1 in the low half only
            mmap(private, 0x8000_0000),           // 5: INT_MIN
            mmap(private, (1 << 32) | fd),        // 6: fd, junk in the high half
            mmap(private, (1 << 63) | fd),        // 7: fd, junk in the top bit
            mmap(anon << 32 | private, not_open), // 8: MAP_ANONYMOUS in the high half
        ];
        let mapped = |r: [i64; 2]| r[0] > 0 && r[1] == 0;
        let ebadf = [-1, libc::EBADF as i64];

        // What the kernel makes of these: it reads the fd as a 32-bit int
        // and MAP_ANONYMOUS from the low half of the flags.
        let (_, native) = run_in_child(None, &calls);
        for i in [0, 1, 2, 6, 7] {
            assert!(mapped(native[i]), "native call {i}: {:?}", native[i]);
        }
        for i in [3, 4, 5, 8] {
            assert_eq!(native[i], ebadf, "native call {i}");
        }

        let spec = FilterSpec {
            traced: vec![traced_if(libc::SYS_mmap, None, MMAP_NO_FD)],
            cookie: Some(COOKIE),
            allow_ip: None,
        };
        let prog = compile(&spec).unwrap();
        let (install_errno, r) = run_in_child(Some(&prog), &calls);
        drop(file);
        assert_eq!(install_errno, 0);
        assert!(mapped(r[0]), "anonymous mmap does not stop: {:?}", r[0]);
        assert!(mapped(r[1]), "anonymous mmap with an fd: {:?}", r[1]);
        assert_eq!(r[2], ENOSYS, "a file mmap stops");
        for i in [3, 4, 5] {
            assert_eq!(r[i], ebadf, "call {i}: a negative fd does not stop");
        }
        for i in [6, 7] {
            assert_eq!(r[i], ENOSYS, "call {i}: high bits do not hide the fd");
        }
        assert_eq!(r[8], ENOSYS, "MAP_ANONYMOUS must be in the low half");
    }

    #[test]
    fn installed_filter_traces_foreign_arch_syscalls() {
        // i386 getpid through int 0x80; some kernels are built or booted
        // without the i386 ABI, in which case there is nothing to check.
        let getpid32 = Call {
            via: Via::Int80,
            ..call(20)
        };
        let (_, native) = run_in_child(None, &[getpid32]);
        if native[0][0] <= 0 {
            eprintln!("skipping: no i386 syscall ABI here ({:?})", native[0]);
            return;
        }
        let prog = compile(&FilterSpec::default()).unwrap();
        let (install_errno, r) = run_in_child(Some(&prog), &[getpid32, call(libc::SYS_getpid)]);
        assert_eq!(install_errno, 0);
        assert_eq!(r[0], ENOSYS, "i386 syscall must be traced");
        assert!(r[1][0] > 0);
    }

    #[test]
    fn install_rejects_empty_program() {
        assert_eq!(install(&[]), Err(libc::EINVAL));
    }
}
