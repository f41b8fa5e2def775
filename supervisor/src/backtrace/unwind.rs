//! Remote unwinding with framehop: unwind tables come from each module's
//! file (or, for the vdso, its in-memory image), stack words from the
//! stopped thread.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder as _};
use object::{Object, ObjectSection, ReadCache, ReadRef};

use super::elf::{check_build_id, open_module_file, vdso_image, FileKey};
use super::maps::{Mapping, ModuleMap};
use super::memory::StackReader;

type Bytes = Arc<[u8]>;

/// Registers needed to start unwinding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

impl From<&libc::user_regs_struct> for StartRegs {
    fn from(r: &libc::user_regs_struct) -> StartRegs {
        StartRegs {
            ip: r.rip,
            sp: r.rsp,
            bp: r.rbp,
        }
    }
}

/// An unwound stack and why the walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwound {
    /// As returned by [`Unwinder::unwind`].
    pub frames: Vec<u64>,
    pub stop: StopReason,
}

/// Why an unwind ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The outermost frame was reached: unwind info said so (`_start`,
    /// `clone`'s child), or the return address or frame pointer was null.
    EndOfStack,
    /// `max_frames` frames were collected.
    MaxFrames,
    /// A return address (given) outside every executable mapping.
    OutsideMappings(u64),
    /// The unwinder could not go on: stack memory unreadable, no progress,
    /// a frame-pointer chain going backwards.
    Failed(String),
}

/// What framehop needs from one module file. Only the unwind sections are
/// kept, not the whole file: a few hundred KiB for libc.
struct UnwindSections {
    text_svma: Option<Range<u64>>,
    got_svma: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, Bytes)>,
    eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    debug_frame: Option<Bytes>,
}

impl UnwindSections {
    fn is_empty(&self) -> bool {
        self.eh_frame.is_none() && self.debug_frame.is_none()
    }

    fn section_info(&self) -> ExplicitModuleSectionInfo<Bytes> {
        ExplicitModuleSectionInfo {
            // ELF tables use addresses relative to a zero image base.
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, b)| b.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, b)| b.clone()),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        }
    }
}

/// A framehop unwinder set up for one address-space layout, with its rule
/// cache. The cache is only ever used with this unwinder, whose module list
/// never changes, so a cached rule can never belong to another layout.
struct Layout {
    fingerprint: u64,
    unwinder: UnwinderX86_64<Bytes>,
    cache: CacheX86_64,
    last_used: u64,
}

struct CachedFile {
    /// `None` when the file had no usable unwind info or could not be read:
    /// remembered so that each unwind does not retry it.
    sections: Option<Arc<UnwindSections>>,
    last_used: u64,
}

/// How many module files keep their unwind sections; the least recently
/// used beyond this are dropped.
const MAX_FILES: usize = 64;
/// How many address-space layouts keep a ready framehop unwinder: one per
/// distinct executable in the job, in practice.
const MAX_LAYOUTS: usize = 8;

/// Caches parsed unwind info per module file across calls (keyed by path,
/// device and inode, so a rebuilt binary is read again) and a ready unwinder
/// per address-space layout.
pub struct Unwinder {
    files: HashMap<FileKey, CachedFile>,
    layouts: Vec<Layout>,
    tick: u64,
}

impl Default for Unwinder {
    fn default() -> Self {
        Unwinder::new()
    }
}

impl Unwinder {
    pub fn new() -> Unwinder {
        Unwinder {
            files: HashMap::new(),
            layouts: Vec::new(),
            tick: 0,
        }
    }

    /// Unwinds the stopped thread `tid` from `regs`, up to `max_frames`.
    ///
    /// Returns frame addresses: the first is `regs.ip` (an instruction
    /// pointer), the rest are return addresses. Unwinding uses each module's
    /// DWARF CFI (.eh_frame, or .debug_frame when there is none) and falls
    /// back to the frame-pointer chain where a module has no unwind info for
    /// an address. It never fails as a whole: it stops at the first frame it
    /// cannot unwind. See [`Unwinder::unwind_detailed`] for why it stopped.
    pub fn unwind(
        &mut self,
        tid: i32,
        maps: &ModuleMap,
        regs: StartRegs,
        max_frames: usize,
    ) -> Vec<u64> {
        self.unwind_detailed(tid, maps, regs, max_frames).frames
    }

    /// [`Unwinder::unwind`], also saying why the walk ended. A return
    /// address outside every executable mapping ends it
    /// ([`StopReason::OutsideMappings`]): that is what a broken frame-pointer
    /// chain produces, or code mapped after `maps` was read (a dlopen). A
    /// caller that keeps one `ModuleMap` per process, because reading
    /// /proc/PID/maps costs about 100 µs, can re-read it on that reason and
    /// unwind again.
    pub fn unwind_detailed(
        &mut self,
        tid: i32,
        maps: &ModuleMap,
        regs: StartRegs,
        max_frames: usize,
    ) -> Unwound {
        let mut frames = Vec::new();
        if max_frames == 0 {
            return Unwound {
                frames,
                stop: StopReason::MaxFrames,
            };
        }
        let layout = self.layout_for(maps);
        let mut reader = StackReader::new(tid);
        let mut read_stack = |addr: u64| reader.read_u64(addr);
        let layout = &mut self.layouts[layout];
        let start = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut iter =
            layout
                .unwinder
                .iter_frames(regs.ip, start, &mut layout.cache, &mut read_stack);
        let stop = loop {
            if frames.len() >= max_frames {
                break StopReason::MaxFrames;
            }
            match iter.next() {
                Ok(Some(addr)) => {
                    let addr = addr.address();
                    // The instruction pointer is reported whatever it is; a
                    // return address must point just after a call.
                    if !frames.is_empty() && !maps.is_executable(addr.wrapping_sub(1)) {
                        break StopReason::OutsideMappings(addr);
                    }
                    frames.push(addr);
                }
                Ok(None) => break StopReason::EndOfStack,
                Err(e) => break StopReason::Failed(e.to_string()),
            }
        };
        Unwound { frames, stop }
    }

    fn layout_for(&mut self, maps: &ModuleMap) -> usize {
        self.tick += 1;
        let tick = self.tick;
        if let Some(i) = self
            .layouts
            .iter()
            .position(|l| l.fingerprint == maps.fingerprint())
        {
            self.layouts[i].last_used = tick;
            return i;
        }
        let mut unwinder = UnwinderX86_64::new();
        for m in maps.mappings() {
            let (Some(bias), true) = (m.bias, m.is_module()) else {
                continue;
            };
            if let Some(sections) = self.sections_for(maps.pid(), m) {
                unwinder.add_module(Module::new(
                    m.path.clone(),
                    m.start..m.end,
                    bias,
                    sections.section_info(),
                ));
            }
        }
        let layout = Layout {
            fingerprint: maps.fingerprint(),
            unwinder,
            cache: CacheX86_64::new(),
            last_used: tick,
        };
        if self.layouts.len() < MAX_LAYOUTS {
            self.layouts.push(layout);
            self.layouts.len() - 1
        } else {
            let oldest = self
                .layouts
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| l.last_used)
                .map_or(0, |(i, _)| i);
            self.layouts[oldest] = layout;
            oldest
        }
    }

    fn sections_for(&mut self, pid: i32, m: &Mapping) -> Option<Arc<UnwindSections>> {
        let key = m.file_key();
        let tick = self.tick;
        if let Some(c) = self.files.get_mut(&key) {
            c.last_used = tick;
            return c.sections.clone();
        }
        let sections = load_sections(pid, m, &key)
            .ok()
            .filter(|s| !s.is_empty())
            .map(Arc::new);
        if self.files.len() >= MAX_FILES {
            if let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            {
                self.files.remove(&oldest);
            }
        }
        self.files.insert(
            key,
            CachedFile {
                sections: sections.clone(),
                last_used: tick,
            },
        );
        sections
    }
}

fn load_sections(pid: i32, m: &Mapping, key: &FileKey) -> io::Result<UnwindSections> {
    if key.is_vdso() {
        let image = vdso_image(pid, m.start, m.end)?;
        let obj = object::File::parse(&*image).map_err(|e| parse_error(key, e))?;
        return Ok(extract_sections(&obj));
    }
    let file = open_module_file(pid, key, m.deleted, Some((m.start, m.end)))?;
    // Reads only the headers and the sections asked for, not the file.
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| parse_error(key, e))?;
    check_build_id(&obj, m.build_id.as_deref(), &key.path)?;
    Ok(extract_sections(&obj))
}

fn parse_error(key: &FileKey, e: object::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("parsing {} as ELF: {e}", key.path),
    )
}

fn extract_sections<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> UnwindSections {
    let range = |name: &str| {
        obj.section_by_name(name)
            .map(|s| s.address()..s.address().saturating_add(s.size()))
    };
    let with_data = |name: &str| {
        let s = obj.section_by_name(name)?;
        let data = s.data().ok()?;
        let range = s.address()..s.address().saturating_add(s.size());
        (!data.is_empty()).then(|| (range, Bytes::from(data)))
    };
    let eh_frame = with_data(".eh_frame");
    // framehop reads .debug_frame only when there is no .eh_frame.
    let debug_frame = if eh_frame.is_none() {
        obj.section_by_name(".debug_frame")
            .and_then(|s| s.uncompressed_data().ok())
            .filter(|d| !d.is_empty())
            .map(|d| Bytes::from(&*d))
    } else {
        None
    };
    UnwindSections {
        text_svma: range(".text"),
        got_svma: range(".got"),
        eh_frame_hdr: with_data(".eh_frame_hdr"),
        eh_frame,
        debug_frame,
    }
}
