//! An x86_64 call-frame-information unwinder for use inside libc wrappers.
//!
//! The creation and close stacks the shim records must be whole in
//! optimized code that keeps no frame pointer (how Debian builds its
//! packages and CPython), and cheap enough to record on every open and
//! close. libgcc's `_Unwind_Backtrace` gives whole stacks but costs about
//! 2 µs each: it interprets every frame's CFI again on every call. This
//! unwinder interprets a return address's CFI once, keeps the outcome as
//! one word (a [`Rule`]: CFA = rsp or rbp + offset, the return address at
//! CFA - 8, rbp unchanged or saved at CFA + offset) in a process-wide
//! lock-free cache, and from then on a frame costs a hash probe and two
//! loads.
//!
//! Why it is safe inside a wrapper:
//!
//! - **No allocation, no lock that can be held.** The cache is a static
//!   array; an entry is a small seqlock that a writer takes with one
//!   compare-and-swap and never waits for: a reader that finds it taken
//!   (another thread, or a signal handler that interrupted this one
//!   mid-write, or a forked child that inherited a half-written entry)
//!   treats it as a miss and computes the rule itself.
//! - **Finding a module's unwind tables** on a miss uses glibc's
//!   `_dl_find_object` (2.35+, already required by the shim: the static
//!   libgcc unwinder uses it too), which is lock-free and
//!   async-signal-safe, so a call from inside the dynamic loader (dlopen
//!   opening a library), from a signal handler or in a fork child cannot
//!   deadlock. `dl_iterate_phdr` (the loader's lock) is never called.
//! - **Bad data never faults.** Every read of unwind data is bounds
//!   checked against the module's readable PT_LOAD segment that holds it
//!   (from the module's own program headers), and every read of the stack
//!   against the calling thread's stack (the live frame to the stack's
//!   top); each frame's CFA must lie above the previous one, so a walk
//!   ends. A table the unwinder does not understand, an FDE that does not
//!   cover the address, or a rule it does not model (a CFA expression, a
//!   signal frame) gives [`Rule::NO_CFI`] or [`Rule::STOP`] instead.
//!
//! A dlclose (the shim wraps it) makes every cached rule stale: another
//! library may be mapped where the closed one was. libc's own unloading
//! of its modules (NSS, iconv: internal calls the wrapper does not see)
//! does not; a stale rule can give a wrong stack, never a fault (every
//! stack read is still checked).

use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// DWARF register numbers (x86_64 psABI).
const RBP: u64 = 6;
const RSP: u64 = 7;
const RA: u64 = 16;

/// One return address's unwind rule, packed in a word so that the cache
/// entry can be read as one snapshot.
///
/// Bits 0-2: kind; bit 3: the CFA is rbp-based (else rsp); bit 4: the
/// caller's rbp is saved at CFA + `rbp_off`; bit 5: the caller's rbp is
/// not known after this frame; bits 6-15: free in a rule, the epoch in a
/// cache entry (see [`forget_rules`]); bits 16-47: CFA offset (i32);
/// bits 48-63: rbp offset (i16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule(u64);

const KIND_MASK: u64 = 7;
const KIND_OK: u64 = 1;
const KIND_END: u64 = 2;
const KIND_NO_CFI: u64 = 3;
const KIND_STOP: u64 = 4;
const CFA_RBP: u64 = 1 << 3;
const RBP_SAVED: u64 = 1 << 4;
const RBP_LOST: u64 = 1 << 5;

impl Rule {
    /// The return address is undefined: the outermost frame (`_start`,
    /// a thread's start). The walk ends after this frame.
    pub const END: Rule = Rule(KIND_END);
    /// No unwind information covers the address: fall back to the frame
    /// pointer for this frame.
    pub const NO_CFI: Rule = Rule(KIND_NO_CFI);
    /// Unwind information the unwinder does not model: the walk stops.
    pub const STOP: Rule = Rule(KIND_STOP);

    fn ok(cfa_rbp: bool, cfa_off: i32, rbp: RbpRule) -> Rule {
        let mut w = KIND_OK | (u64::from(cfa_off as u32) << 16);
        if cfa_rbp {
            w |= CFA_RBP;
        }
        match rbp {
            RbpRule::Same => {}
            RbpRule::Saved(off) => w |= RBP_SAVED | (u64::from(off as u16) << 48),
            RbpRule::Lost => w |= RBP_LOST,
        }
        Rule(w)
    }

    fn kind(self) -> u64 {
        self.0 & KIND_MASK
    }

    fn cfa_off(self) -> i64 {
        i64::from((self.0 >> 16) as u32 as i32)
    }

    fn rbp_off(self) -> i64 {
        i64::from((self.0 >> 48) as u16 as i16)
    }
}

#[derive(Clone, Copy)]
enum RbpRule {
    Same,
    Saved(i16),
    Lost,
}

// ---------------------------------------------------------------------
// The rule cache.

/// 1024 entries at most: more return addresses than the hot stacks of a
/// Python loop hold. A process starts with the first [`NARROW_LEN`]
/// only, all on the cache's first page, and widens to the whole cache
/// after [`WIDEN_AFTER`] misses: a short-lived process (a configure
/// script's `sed`, a shell's `$(...)` child) unwinds a few dozen return
/// addresses and so pays one page fault for the cache, not six (each
/// ~3 µs on a virtual machine, where a page fault costs more than the
/// unwinding itself), and a shell's forked child copies one page of it,
/// not every page the shell ever hashed an address onto.
const CACHE_BITS: u32 = 10;
const CACHE_LEN: usize = 1 << CACHE_BITS;
const NARROW_BITS: u32 = 7;
const NARROW_LEN: usize = 1 << NARROW_BITS;
const WIDEN_AFTER: u32 = 512;

/// A seqlocked (address, rule) pair: `seq` odd while being written.
struct Entry {
    seq: AtomicU64,
    pc: AtomicU64,
    rule: AtomicU64,
}

/// Page-aligned, so that the narrow part is one page.
#[repr(C, align(4096))]
struct Cache([Entry; CACHE_LEN]);

const _: () = assert!(NARROW_LEN * core::mem::size_of::<Entry>() <= 4096);

/// 1024 entries, 24 KiB of .bss (pages never touched cost nothing).
static CACHE: Cache = Cache(
    [const {
        Entry {
            seq: AtomicU64::new(0),
            pc: AtomicU64::new(0),
            rule: AtomicU64::new(0),
        }
    }; CACHE_LEN],
);

/// Set once this process (or the parent it was forked from) missed
/// [`WIDEN_AFTER`] times: every probe then uses the whole cache. Rules
/// cached while narrow stay valid (an entry is checked against its
/// address); they are merely found where the wide hash no longer looks.
static WIDE: AtomicBool = AtomicBool::new(false);
static MISSES: AtomicU32 = AtomicU32::new(0);

fn slot(pc: u64) -> &'static Entry {
    // Fibonacci hashing: return addresses of one module differ in their
    // low bits, which the multiplication spreads over the top ones.
    let bits = if WIDE.load(Ordering::Relaxed) {
        CACHE_BITS
    } else {
        NARROW_BITS
    };
    let i = (pc.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
    &CACHE.0[i & (CACHE_LEN - 1)]
}

#[cold]
fn count_miss() {
    if !WIDE.load(Ordering::Relaxed) && MISSES.fetch_add(1, Ordering::Relaxed) + 1 >= WIDEN_AFTER {
        WIDE.store(true, Ordering::Relaxed);
    }
}

/// Bumped after each dlclose (the shim wraps it): a rule cached before
/// belongs to code that may be gone, and another library may now be
/// mapped at its address. Entries carry the low bits of the epoch they
/// were computed in (bits 6-15 of the stored word).
static EPOCH: AtomicU64 = AtomicU64::new(0);
const EPOCH_SHIFT: u32 = 6;
const EPOCH_MASK: u64 = 0x3ff << EPOCH_SHIFT;

/// Forgets every cached rule (after a dlclose).
pub fn forget_rules() {
    EPOCH.fetch_add(1, Ordering::Release);
}

fn epoch_bits(epoch: u64) -> u64 {
    (epoch << EPOCH_SHIFT) & EPOCH_MASK
}

fn cache_get(pc: u64, epoch: u64) -> Option<Rule> {
    let e = slot(pc);
    let s1 = e.seq.load(Ordering::Acquire);
    if s1 & 1 != 0 {
        return None;
    }
    let p = e.pc.load(Ordering::Relaxed);
    let r = e.rule.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    if e.seq.load(Ordering::Relaxed) != s1
        || p != pc
        || r == 0
        || r & EPOCH_MASK != epoch_bits(epoch)
    {
        return None;
    }
    Some(Rule(r & !EPOCH_MASK))
}

/// Caches `rule`, computed in `epoch` (read before the computation, so
/// that a dlclose during it makes the entry stale at once).
fn cache_put(pc: u64, rule: Rule, epoch: u64) {
    let e = slot(pc);
    let s = e.seq.load(Ordering::Relaxed);
    // Never wait: a held entry (another writer, or this thread
    // interrupted mid-write by a signal handler) is simply not updated.
    if s & 1 != 0
        || e.seq
            .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    fence(Ordering::Release);
    e.pc.store(pc, Ordering::Relaxed);
    e.rule.store(rule.0 | epoch_bits(epoch), Ordering::Relaxed);
    e.seq.store(s.wrapping_add(2), Ordering::Release);
}

/// The rule for return address `ra` (the caller's code: looked up at
/// `ra - 1`, inside the call instruction), from the cache or, on a miss,
/// from the module's unwind tables.
pub fn rule_for(ra: u64) -> Rule {
    let epoch = EPOCH.load(Ordering::Acquire);
    if let Some(r) = cache_get(ra, epoch) {
        return r;
    }
    count_miss();
    let (r, keep) = find_rule(ra.wrapping_sub(1));
    if keep {
        cache_put(ra, r, epoch);
    }
    r
}

// ---------------------------------------------------------------------
// Bounded memory reads of a module's mapped unwind data.

/// A readable range `[lo, hi)` of this process's memory.
#[derive(Clone, Copy)]
struct Span {
    lo: u64,
    hi: u64,
}

impl Span {
    fn holds(&self, addr: u64, len: u64) -> bool {
        addr >= self.lo && addr.checked_add(len).is_some_and(|end| end <= self.hi)
    }

    fn read<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        if !self.holds(addr, N as u64) {
            return None;
        }
        // SAFETY: [addr, addr + N) lies inside a readable PT_LOAD segment
        // of a loaded module (checked above); an unaligned byte copy.
        Some(unsafe { core::ptr::read_unaligned(addr as *const [u8; N]) })
    }
}

/// A cursor over a span.
struct Cur {
    span: Span,
    at: u64,
}

impl Cur {
    fn u8(&mut self) -> Option<u8> {
        let b = self.span.read::<1>(self.at)?;
        self.at += 1;
        Some(b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.span.read::<2>(self.at)?;
        self.at += 2;
        Some(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.span.read::<4>(self.at)?;
        self.at += 4;
        Some(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.span.read::<8>(self.at)?;
        self.at += 8;
        Some(u64::from_le_bytes(b))
    }
    fn uleb(&mut self) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
            if shift > 70 {
                return None;
            }
        }
    }
    fn sleb(&mut self) -> Option<i64> {
        let mut v = 0i64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
            if shift > 70 {
                return None;
            }
        }
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        let at = self.at.checked_add(n)?;
        if at > self.span.hi {
            return None;
        }
        self.at = at;
        Some(())
    }

    /// A pointer in DW_EH_PE encoding `enc`; `data` is the base of
    /// datarel pointers (the eh_frame_hdr).
    fn encoded(&mut self, enc: u8, data: u64) -> Option<u64> {
        let field = self.at;
        let v = match enc & 0x0f {
            0x00 | 0x04 => self.u64()?,
            0x01 => self.uleb()?,
            0x02 => u64::from(self.u16()?),
            0x03 => u64::from(self.u32()?),
            0x09 => self.sleb()? as u64,
            0x0a => self.u16()? as i16 as i64 as u64,
            0x0b => self.u32()? as i32 as i64 as u64,
            0x0c => self.u64()?,
            _ => return None,
        };
        let base = match enc & 0x70 {
            0x00 => 0,
            0x10 => field,
            0x30 => data,
            _ => return None,
        };
        // Indirect pointers (0x80) are used for personalities, never for
        // the fields the unwinder needs.
        if enc & 0x80 != 0 {
            return None;
        }
        Some(base.wrapping_add(v))
    }
}

// ---------------------------------------------------------------------
// Finding the module and its unwind tables.

#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut libc::c_void,
    map_end: *mut libc::c_void,
    link_map: *mut libc::c_void,
    eh_frame: *mut libc::c_void,
    reserved: [u64; 7],
}

extern "C" {
    /// glibc 2.35: the object containing an address, lock-free and
    /// async-signal-safe.
    fn _dl_find_object(address: *mut libc::c_void, result: *mut DlFindObject) -> libc::c_int;
}

/// Where a module's eh_frame_hdr and eh_frame lie, with the readable
/// segments that hold them.
struct Module {
    hdr: u64,
    hdr_span: Span,
    frame_span: Span,
}

const PT_LOAD: u32 = 1;
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
const PF_R: u32 = 4;
const PAGE: u64 = 4096;

fn module_of(pc: u64) -> Option<Module> {
    let mut r = DlFindObject {
        flags: 0,
        map_start: core::ptr::null_mut(),
        map_end: core::ptr::null_mut(),
        link_map: core::ptr::null_mut(),
        eh_frame: core::ptr::null_mut(),
        reserved: [0; 7],
    };
    // SAFETY: r is a writable dl_find_object of glibc's layout (x86_64:
    // no eh_dbase, no eh_count); the address is only looked up.
    if unsafe { _dl_find_object(pc as *mut libc::c_void, &mut r) } != 0 || r.eh_frame.is_null() {
        return None;
    }
    let start = r.map_start as u64;
    let end = r.map_end as u64;
    let hdr = r.eh_frame as u64;
    if !start.is_multiple_of(PAGE) || end <= start {
        return None;
    }
    // The module's ELF header and program headers sit at the start of its
    // first PT_LOAD (file offset 0), which the loader mapped at map_start:
    // only the first page is read before that is confirmed.
    let first = Span {
        lo: start,
        hi: start + PAGE.min(end - start),
    };
    let ident = first.read::<8>(start)?;
    if ident[..4] != *b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(first.read::<8>(start + 32)?);
    let phentsize = u16::from_le_bytes(first.read::<2>(start + 54)?);
    let phnum = u16::from_le_bytes(first.read::<2>(start + 56)?);
    if phentsize != 56 || phnum == 0 || phnum > 64 {
        return None;
    }
    let ph = |i: u16, off: u64, len: usize| -> Option<u64> {
        let at = start
            .checked_add(phoff)?
            .checked_add(u64::from(i) * 56 + off)?;
        match len {
            4 => first
                .read::<4>(at)
                .map(|b| u64::from(u32::from_le_bytes(b))),
            _ => first.read::<8>(at).map(u64::from_le_bytes),
        }
    };
    // Load bias: map_start is the first PT_LOAD's page, which must map
    // file offset 0 for the headers read above to be this module's.
    let mut bias = None;
    for i in 0..phnum {
        if ph(i, 0, 4)? == u64::from(PT_LOAD) {
            if ph(i, 8, 8)? / PAGE != 0 {
                return None;
            }
            bias = Some(start.wrapping_sub(ph(i, 16, 8)? & !(PAGE - 1)));
            break;
        }
    }
    let bias = bias?;
    let mut hdr_ok = false;
    for i in 0..phnum {
        if ph(i, 0, 4)? == u64::from(PT_GNU_EH_FRAME) {
            hdr_ok = bias.wrapping_add(ph(i, 16, 8)?) == hdr;
        }
    }
    if !hdr_ok {
        return None;
    }
    let segment = |addr: u64| -> Option<Span> {
        for i in 0..phnum {
            if ph(i, 0, 4)? != u64::from(PT_LOAD) || ph(i, 4, 4)? & u64::from(PF_R) == 0 {
                continue;
            }
            let lo = bias.wrapping_add(ph(i, 16, 8)?);
            let hi = lo.checked_add(ph(i, 32, 8)?)?;
            if lo >= start && hi <= end && addr >= lo && addr < hi {
                return Some(Span { lo, hi });
            }
        }
        None
    };
    let hdr_span = segment(hdr)?;
    let mut c = Cur {
        span: hdr_span,
        at: hdr,
    };
    let [version, frame_enc] = [c.u8()?, c.u8()?];
    if version != 1 {
        return None;
    }
    c.skip(2)?;
    let frame = c.encoded(frame_enc, hdr)?;
    let frame_span = segment(frame)?;
    Some(Module {
        hdr,
        hdr_span,
        frame_span,
    })
}

/// The rule at code address `pc` (not a return address: already inside
/// the instruction), and whether it may be cached.
fn find_rule(pc: u64) -> (Rule, bool) {
    // No module, no eh_frame_hdr, no FDE covering pc: code without
    // unwind information (the frame pointer is tried). Unwind data that
    // is there but not understood stops the walk instead: guessing with
    // the frame pointer there would invent frames.
    //
    // An address in no module known to the loader is not cached: it may
    // be a library that dlopen is still loading (registered with
    // _dl_find_object only once relocated), or JIT code.
    let Some(m) = module_of(pc) else {
        return (Rule::NO_CFI, false);
    };
    let Some(fde) = fde_for(&m, pc) else {
        return (Rule::NO_CFI, true);
    };
    (eval(&m, fde, pc).unwrap_or(Rule::STOP), true)
}

/// The FDE covering `pc`, by binary search of the eh_frame_hdr table.
fn fde_for(m: &Module, pc: u64) -> Option<u64> {
    let mut c = Cur {
        span: m.hdr_span,
        at: m.hdr,
    };
    let [_, frame_enc, count_enc, table_enc] = [c.u8()?, c.u8()?, c.u8()?, c.u8()?];
    c.encoded(frame_enc, m.hdr)?;
    let count = c.encoded(count_enc, m.hdr)?;
    // The linkers write (datarel sdata4 initial location, datarel sdata4
    // FDE address) pairs; anything else is not searched.
    if table_enc != 0x3b || count == 0 {
        return None;
    }
    let table = c.at;
    if !m.hdr_span.holds(table, count.checked_mul(8)?) {
        return None;
    }
    let entry = |i: u64, field: u64| -> Option<u64> {
        let b = m.hdr_span.read::<4>(table + i * 8 + field)?;
        Some(m.hdr.wrapping_add(i32::from_le_bytes(b) as i64 as u64))
    };
    // The last entry whose initial location is at or below pc.
    let (mut lo, mut hi) = (0u64, count);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if entry(mid, 0)? <= pc {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if entry(lo, 0)? > pc {
        return None;
    }
    entry(lo, 4)
}

/// The parts of a CIE an FDE needs.
struct Cie {
    code_align: u64,
    data_align: i64,
    fde_enc: u8,
    has_aug_data: bool,
    insns: u64,
    end: u64,
    signal: bool,
}

/// Reads a length-prefixed record at `at`: (body start, end, 64-bit).
fn record(c: &mut Cur) -> Option<(u64, u64, bool)> {
    let len = c.u32()?;
    let (len, wide) = if len == 0xffff_ffff {
        (c.u64()?, true)
    } else {
        (u64::from(len), false)
    };
    if len == 0 {
        return None;
    }
    let end = c.at.checked_add(len)?;
    if end > c.span.hi {
        return None;
    }
    Some((c.at, end, wide))
}

fn cie_at(m: &Module, at: u64) -> Option<Cie> {
    let mut c = Cur {
        span: m.frame_span,
        at,
    };
    let (_, end, wide) = record(&mut c)?;
    let id = if wide { c.u64()? } else { u64::from(c.u32()?) };
    if id != 0 {
        return None;
    }
    let version = c.u8()?;
    if version != 1 && version != 3 {
        return None;
    }
    let mut aug = [0u8; 8];
    let mut n = 0;
    loop {
        let b = c.u8()?;
        if b == 0 {
            break;
        }
        if n == aug.len() {
            return None;
        }
        aug[n] = b;
        n += 1;
    }
    let aug = &aug[..n];
    let code_align = c.uleb()?;
    let data_align = c.sleb()?;
    let ra = if version == 1 {
        u64::from(c.u8()?)
    } else {
        c.uleb()?
    };
    if ra != RA {
        return None;
    }
    let mut cie = Cie {
        code_align,
        data_align,
        fde_enc: 0,
        has_aug_data: false,
        insns: 0,
        end,
        signal: false,
    };
    if aug.first() == Some(&b'z') {
        cie.has_aug_data = true;
        let len = c.uleb()?;
        let data_end = c.at.checked_add(len)?;
        for &a in &aug[1..] {
            match a {
                b'R' => cie.fde_enc = c.u8()?,
                b'P' => {
                    let enc = c.u8()?;
                    // Only skipped: its value does not matter here.
                    let mut skip = Cur {
                        span: c.span,
                        at: c.at,
                    };
                    skip.encoded(enc & 0x7f, 0)?;
                    c.at = skip.at;
                }
                b'L' => {
                    c.u8()?;
                }
                b'S' => cie.signal = true,
                _ => break,
            }
        }
        if data_end > end {
            return None;
        }
        c.at = data_end;
    } else if !aug.is_empty() {
        return None;
    }
    cie.insns = c.at;
    Some(cie)
}

/// A register's rule as the CFI program leaves it.
#[derive(Clone, Copy, PartialEq)]
enum Reg {
    Same,
    Undefined,
    Offset(i64),
    Other,
}

#[derive(Clone, Copy)]
struct Row {
    /// DWARF register of the CFA, or u64::MAX for an expression.
    cfa_reg: u64,
    cfa_off: i64,
    rbp: Reg,
    ra: Reg,
}

const MAX_REMEMBER: usize = 8;
/// A bound on the instructions run for one address (a corrupt program
/// that loops is cut).
const MAX_INSNS: u32 = 20_000;

fn set(row: &mut Row, reg: u64, rule: Reg) {
    match reg {
        RBP => row.rbp = rule,
        RA => row.ra = rule,
        _ => {}
    }
}

/// DW_CFA_restore: back to the CIE's rule.
fn restore(row: &mut Row, init: &Row, reg: u64) {
    match reg {
        RBP => row.rbp = init.rbp,
        RA => row.ra = init.ra,
        _ => {}
    }
}

/// Runs CFI instructions from `c.at` to `end` until the location passes
/// `pc` (for the CIE's initial instructions, `pc` is u64::MAX).
fn run(
    c: &mut Cur,
    end: u64,
    cie: &Cie,
    row: &mut Row,
    init: &Row,
    mut loc: u64,
    pc: u64,
) -> Option<()> {
    let mut stack = [*row; MAX_REMEMBER];
    let mut depth = 0;
    let daf = cie.data_align;
    let caf = cie.code_align;
    let mut n = 0;
    while c.at < end {
        n += 1;
        if n > MAX_INSNS {
            return None;
        }
        let op = c.u8()?;
        let advance = match op >> 6 {
            1 => Some(u64::from(op & 0x3f)),
            2 => {
                let off = (c.uleb()? as i64).wrapping_mul(daf);
                set(row, u64::from(op & 0x3f), Reg::Offset(off));
                None
            }
            3 => {
                restore(row, init, u64::from(op & 0x3f));
                None
            }
            _ => match op {
                0x00 => None,
                0x01 => {
                    let new = c.encoded(cie.fde_enc, 0)?;
                    if new > pc {
                        return Some(());
                    }
                    loc = new;
                    None
                }
                0x02 => Some(u64::from(c.u8()?)),
                0x03 => Some(u64::from(c.u16()?)),
                0x04 => Some(u64::from(c.u32()?)),
                0x05 => {
                    let reg = c.uleb()?;
                    let off = (c.uleb()? as i64).wrapping_mul(daf);
                    set(row, reg, Reg::Offset(off));
                    None
                }
                0x06 => {
                    restore(row, init, c.uleb()?);
                    None
                }
                0x07 => {
                    set(row, c.uleb()?, Reg::Undefined);
                    None
                }
                0x08 => {
                    set(row, c.uleb()?, Reg::Same);
                    None
                }
                0x09 => {
                    let reg = c.uleb()?;
                    c.uleb()?;
                    set(row, reg, Reg::Other);
                    None
                }
                0x0a => {
                    if depth == MAX_REMEMBER {
                        return None;
                    }
                    stack[depth] = *row;
                    depth += 1;
                    None
                }
                0x0b => {
                    depth = depth.checked_sub(1)?;
                    *row = stack[depth];
                    None
                }
                0x0c => {
                    row.cfa_reg = c.uleb()?;
                    row.cfa_off = c.uleb()? as i64;
                    None
                }
                0x0d => {
                    row.cfa_reg = c.uleb()?;
                    None
                }
                0x0e => {
                    row.cfa_off = c.uleb()? as i64;
                    None
                }
                0x0f => {
                    let len = c.uleb()?;
                    c.skip(len)?;
                    row.cfa_reg = u64::MAX;
                    None
                }
                0x10 | 0x16 => {
                    let reg = c.uleb()?;
                    let len = c.uleb()?;
                    c.skip(len)?;
                    set(row, reg, Reg::Other);
                    None
                }
                0x11 => {
                    let reg = c.uleb()?;
                    let off = c.sleb()?.wrapping_mul(daf);
                    set(row, reg, Reg::Offset(off));
                    None
                }
                0x12 => {
                    row.cfa_reg = c.uleb()?;
                    row.cfa_off = c.sleb()?.wrapping_mul(daf);
                    None
                }
                0x13 => {
                    row.cfa_off = c.sleb()?.wrapping_mul(daf);
                    None
                }
                0x14 => {
                    let reg = c.uleb()?;
                    c.uleb()?;
                    set(row, reg, Reg::Other);
                    None
                }
                0x15 => {
                    let reg = c.uleb()?;
                    c.sleb()?;
                    set(row, reg, Reg::Other);
                    None
                }
                0x2e => {
                    c.uleb()?;
                    None
                }
                0x2f => {
                    let reg = c.uleb()?;
                    let off = (c.uleb()? as i64).wrapping_mul(daf).wrapping_neg();
                    set(row, reg, Reg::Offset(off));
                    None
                }
                _ => return None,
            },
        };
        if let Some(delta) = advance {
            loc = loc.wrapping_add(delta.wrapping_mul(caf));
            if loc > pc {
                return Some(());
            }
        }
    }
    Some(())
}

/// Evaluates the FDE at `fde` for `pc`.
fn eval(m: &Module, fde: u64, pc: u64) -> Option<Rule> {
    let mut c = Cur {
        span: m.frame_span,
        at: fde,
    };
    let (body, end, wide) = record(&mut c)?;
    let cie_ptr = if wide { c.u64()? } else { u64::from(c.u32()?) };
    if cie_ptr == 0 {
        return None;
    }
    let cie = cie_at(m, body.checked_sub(cie_ptr)?)?;
    let begin = c.encoded(cie.fde_enc, 0)?;
    let range = c.encoded(cie.fde_enc & 0x0f, 0)?;
    if pc < begin || pc - begin >= range {
        // The nearest FDE ends before pc: code without CFI.
        return Some(Rule::NO_CFI);
    }
    if cie.has_aug_data {
        let len = c.uleb()?;
        c.skip(len)?;
    }
    let mut row = Row {
        cfa_reg: RSP,
        cfa_off: 8,
        rbp: Reg::Same,
        ra: Reg::Undefined,
    };
    let mut ci = Cur {
        span: m.frame_span,
        at: cie.insns,
    };
    let blank = row;
    run(&mut ci, cie.end, &cie, &mut row, &blank, 0, u64::MAX)?;
    let init = row;
    run(&mut c, end, &cie, &mut row, &init, begin, pc)?;
    if cie.signal {
        return Some(Rule::STOP);
    }
    Some(to_rule(&row))
}

fn to_rule(row: &Row) -> Rule {
    match row.ra {
        Reg::Undefined => return Rule::END,
        Reg::Offset(-8) => {}
        _ => return Rule::STOP,
    }
    let cfa_rbp = match row.cfa_reg {
        RSP => false,
        RBP => true,
        _ => return Rule::STOP,
    };
    let Ok(off) = i32::try_from(row.cfa_off) else {
        return Rule::STOP;
    };
    let rbp = match row.rbp {
        Reg::Same => RbpRule::Same,
        Reg::Offset(o) => match i16::try_from(o) {
            Ok(o) => RbpRule::Saved(o),
            Err(_) => RbpRule::Lost,
        },
        Reg::Undefined | Reg::Other => RbpRule::Lost,
    };
    Rule::ok(cfa_rbp, off, rbp)
}

// ---------------------------------------------------------------------
// The walk.

/// A frame's registers: its return address (or code address), stack
/// pointer and frame pointer.
#[derive(Clone, Copy, Debug)]
pub struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
}

/// Reads a word of the stack, inside `[lo, hi)`.
fn stack_word(addr: u64, lo: u64, hi: u64) -> Option<u64> {
    if addr < lo || !addr.is_multiple_of(8) || addr.checked_add(8)? > hi {
        return None;
    }
    // SAFETY: [addr, addr + 8) lies between a live frame of the calling
    // thread and the top of its stack, which is mapped.
    Some(unsafe { *(addr as *const u64) })
}

/// One step from frame `r` (its `pc` a return address) to its caller,
/// reading the stack only inside `[lo, hi)`. None ends the walk.
pub fn step(r: &Regs, lo: u64, hi: u64) -> Option<Regs> {
    let rule = rule_for(r.pc);
    let (cfa, fp) = match rule.kind() {
        KIND_OK => {
            let base = if rule.0 & CFA_RBP != 0 { r.fp } else { r.sp };
            let cfa = base.checked_add_signed(rule.cfa_off())?;
            let fp = if rule.0 & RBP_SAVED != 0 {
                stack_word(cfa.checked_add_signed(rule.rbp_off())?, lo, hi)?
            } else if rule.0 & RBP_LOST != 0 {
                0
            } else {
                r.fp
            };
            (cfa, fp)
        }
        KIND_NO_CFI => {
            // Code without unwind information: trust a frame pointer if
            // it points into the stack above this frame.
            if r.fp < r.sp {
                return None;
            }
            (r.fp.checked_add(16)?, stack_word(r.fp, lo, hi)?)
        }
        _ => return None,
    };
    // Each caller's frame lies above its callee's: the walk ends.
    if cfa <= r.sp {
        return None;
    }
    let ra = stack_word(cfa.checked_sub(8)?, lo, hi)?;
    if ra < PAGE {
        return None;
    }
    Some(Regs {
        pc: ra,
        sp: cfa,
        fp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128() {
        let bytes: [u8; 6] = [0xe5, 0x8e, 0x26, 0x7f, 0x80, 0x7f];
        let span = Span {
            lo: bytes.as_ptr() as u64,
            hi: bytes.as_ptr() as u64 + bytes.len() as u64,
        };
        let mut c = Cur { span, at: span.lo };
        assert_eq!(c.uleb(), Some(624_485));
        assert_eq!(c.sleb(), Some(-1));
        assert_eq!(c.sleb(), Some(-128));
        assert_eq!(c.u8(), None, "reads stop at the span's end");
    }

    #[test]
    fn rules_pack_and_unpack() {
        let r = Rule::ok(true, -24, RbpRule::Saved(-16));
        assert_eq!(r.kind(), KIND_OK);
        assert_eq!(r.cfa_off(), -24);
        assert_eq!(r.rbp_off(), -16);
        assert!(r.0 & CFA_RBP != 0 && r.0 & RBP_SAVED != 0);
        let r = Rule::ok(false, 0x7fff_fff0, RbpRule::Same);
        assert_eq!(r.cfa_off(), 0x7fff_fff0);
        assert_eq!(r.0 & (CFA_RBP | RBP_SAVED | RBP_LOST), 0);
    }

    #[test]
    fn the_cache_returns_what_was_put() {
        let pc = 0x5555_0000_1234;
        let rule = Rule::ok(false, 24, RbpRule::Saved(-16));
        cache_put(pc, rule, 7);
        assert_eq!(cache_get(pc, 7), Some(rule));
        assert_eq!(cache_get(pc + 1, 7), None);
        assert_eq!(cache_get(pc, 8), None, "a dlclose since: stale");
    }

    #[test]
    fn addresses_outside_any_module_have_no_cfi() {
        assert_eq!(find_rule(16), (Rule::NO_CFI, false));
    }

    /// Random bytes as eh_frame_hdr and eh_frame: every outcome is a rule
    /// or None, never a read outside the span nor an arithmetic panic (the
    /// unit tests build with overflow checks).
    #[test]
    fn random_unwind_data_never_faults() {
        let mut buf = [0u8; 512];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let lo = buf.as_ptr() as u64;
        for round in 0..20_000 {
            for b in buf.iter_mut() {
                *b = next() as u8;
            }
            // Plausible headers half of the time, so the search and the
            // CFI programs get exercised, not only the first checks.
            if round % 2 == 0 {
                buf[..4].copy_from_slice(&[1, 0x1b, 0x03, 0x3b]);
                buf[8..12].copy_from_slice(&((next() % 40) as u32).to_le_bytes());
                buf[100..104].copy_from_slice(&((next() % 200) as u32).to_le_bytes());
                buf[104..108].copy_from_slice(&[0; 4]);
                buf[108] = 1;
                buf[109..112].copy_from_slice(b"zR\0");
            }
            let span = Span {
                lo,
                hi: lo + buf.len() as u64,
            };
            let m = Module {
                hdr: lo,
                hdr_span: span,
                frame_span: span,
            };
            let pc = lo.wrapping_add(next() % 1024);
            let _ = fde_for(&m, pc);
            let _ = eval(&m, lo + next() % 512, pc);
            let _ = eval(&m, lo + 100, pc);
            let mut c = Cur { span, at: lo };
            let _ = cie_at(&m, lo + next() % 600);
            let _ = c.encoded(next() as u8, lo);
        }
    }

    #[test]
    fn hostile_unwind_data_is_rejected_without_faulting() {
        // An eh_frame_hdr-shaped buffer pointing far outside itself.
        let mut buf = [0u8; 64];
        buf[..4].copy_from_slice(&[1, 0x1b, 0x03, 0x3b]);
        buf[4..8].copy_from_slice(&0x7fff_0000i32.to_le_bytes());
        buf[8..12].copy_from_slice(&1000u32.to_le_bytes());
        let lo = buf.as_ptr() as u64;
        let span = Span {
            lo,
            hi: lo + buf.len() as u64,
        };
        let m = Module {
            hdr: lo,
            hdr_span: span,
            frame_span: span,
        };
        assert_eq!(fde_for(&m, lo + 10), None, "a table beyond the span");
        buf[8..12].copy_from_slice(&2u32.to_le_bytes());
        // Entries: one FDE "at" a garbage offset.
        buf[12..16].copy_from_slice(&0i32.to_le_bytes());
        buf[16..20].copy_from_slice(&(-4096i32).to_le_bytes());
        buf[20..24].copy_from_slice(&8i32.to_le_bytes());
        buf[24..28].copy_from_slice(&40i32.to_le_bytes());
        let m = Module {
            hdr: lo,
            hdr_span: span,
            frame_span: span,
        };
        let fde = fde_for(&m, lo + 1);
        assert_eq!(fde, Some(lo.wrapping_sub(4096)));
        assert_eq!(fde.and_then(|f| eval(&m, f, lo + 1)), None);
        assert_eq!(eval(&m, lo + 40, lo + 9), None, "zeroed record");
    }
}
