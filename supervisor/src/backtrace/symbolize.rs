//! Addresses to function, file and line: DWARF through addr2line where the
//! module (or its separate debug file) has it, the ELF symbol tables
//! otherwise.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

use addr2line::gimli;
use object::{Object, ObjectSection, ObjectSymbol, ReadCache, ReadRef, SymbolKind};

use super::elf::{check_build_id, open_module_file, open_regular, vdso_image, FileKey};
use super::maps::{Mapping, ModuleMap};
use super::{Frame, InlinedCall};

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// One function symbol, in module (SVMA) addresses.
struct Symbol {
    start: u64,
    /// 0 when the symbol table does not say (hand-written assembly).
    size: u64,
    name: String,
}

/// Everything needed to symbolize addresses in one module file.
struct SymModule {
    dwarf: Option<addr2line::Context<Reader>>,
    /// Sorted by start.
    symbols: Vec<Symbol>,
    /// Roughly what this entry holds in memory, for the cache's budget.
    bytes: usize,
    last_used: u64,
}

impl SymModule {
    fn empty(tick: u64) -> SymModule {
        SymModule {
            dwarf: None,
            symbols: Vec::new(),
            bytes: 0,
            last_used: tick,
        }
    }

    /// The function symbol containing `svma`.
    fn symbol_at(&self, svma: u64) -> Option<&Symbol> {
        let i = self.symbols.partition_point(|s| s.start <= svma);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        // Without a size the nearest symbol below is the best guess; with
        // one, an address past its end belongs to some unnamed function
        // (stripped static functions between two exported ones).
        (s.size == 0 || svma < s.start.saturating_add(s.size)).then_some(s)
    }
}

/// How many modules keep their DWARF and symbols, and how many bytes of
/// DWARF and names they may hold together: DWARF can be tens of MiB for a
/// large binary. A report rarely spans more than a handful of modules.
const MAX_MODULES: usize = 16;
const MAX_BYTES: usize = 256 << 20;

/// Symbolizes addresses; caches per module.
pub struct Symbolizer {
    modules: HashMap<FileKey, SymModule>,
    tick: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer {
            modules: HashMap::new(),
            tick: 0,
        }
    }

    /// Symbolizes `addrs` (as returned by [`super::Unwinder::unwind`]).
    ///
    /// When `first_is_ip` the first address is an instruction pointer and
    /// looked up as is; every other one is a return address and looked up at
    /// `addr - 1`, inside the call instruction, so the line reported is the
    /// call's rather than the next statement's (and a call that ends a
    /// function is not attributed to the next one).
    pub fn symbolize(&mut self, maps: &ModuleMap, addrs: &[u64], first_is_ip: bool) -> Vec<Frame> {
        addrs
            .iter()
            .enumerate()
            .map(|(index, &addr)| {
                self.symbolize_one(maps, index, addr, lookup_addr(index, addr, first_is_ip))
            })
            .collect()
    }

    /// The frames of `addrs` with their modules only: no module file is
    /// read (no symbol table, no DWARF). What a suppression rule of
    /// `obj:` frames needs, at the cost of a lookup in the maps.
    pub fn modules_only(maps: &ModuleMap, addrs: &[u64]) -> Vec<Frame> {
        addrs
            .iter()
            .enumerate()
            .map(|(index, &addr)| module_frame(maps, index, addr, lookup_addr(index, addr, true)).0)
            .collect()
    }

    fn symbolize_one(&mut self, maps: &ModuleMap, index: usize, addr: u64, lookup: u64) -> Frame {
        let (mut frame, m) = module_frame(maps, index, addr, lookup);
        let Some(m) = m.filter(|m| m.bias.is_some()) else {
            return frame;
        };
        let svma = m.module_offset(lookup);
        let module = self.module_for(maps.pid(), m);
        if let Some(sym) = module.symbol_at(svma) {
            frame.function = Some(demangle(&sym.name));
            frame.function_offset = frame.module_offset.wrapping_sub(sym.start);
        }
        if let Some(ctx) = &module.dwarf {
            apply_dwarf(ctx, svma, &mut frame);
        }
        frame
    }

    fn module_for(&mut self, pid: i32, m: &Mapping) -> &SymModule {
        self.tick += 1;
        let tick = self.tick;
        let key = m.file_key();
        if !self.modules.contains_key(&key) {
            // A module that cannot be read is remembered as empty, so a
            // report with many frames in it does not retry each time.
            let loaded = load_module(pid, m, &key, tick).unwrap_or_else(|_| SymModule::empty(tick));
            self.make_room(loaded.bytes);
            self.modules.insert(key.clone(), loaded);
        }
        let entry = self
            .modules
            .entry(key)
            .or_insert_with(|| SymModule::empty(tick));
        entry.last_used = tick;
        entry
    }
}

/// The address to look up for frame `index` at `addr`: a return address
/// (every frame but an instruction pointer) is looked up one byte back,
/// inside the call.
fn lookup_addr(index: usize, addr: u64, first_is_ip: bool) -> u64 {
    if index > 0 || !first_is_ip {
        addr.wrapping_sub(1)
    } else {
        addr
    }
}

/// Frame `index` at `addr` with its module and offset from `maps` (none
/// when `lookup` is in no module), and that module's mapping.
fn module_frame(
    maps: &ModuleMap,
    index: usize,
    addr: u64,
    lookup: u64,
) -> (Frame, Option<&Mapping>) {
    let mut frame = Frame::bare(index, addr);
    let m = maps.mapping_of(lookup).filter(|m| m.is_module());
    if let Some(m) = m {
        frame.module = Some(m.path.clone());
        frame.module_offset = m.module_offset(addr);
    }
    (frame, m)
}

impl Symbolizer {
    /// Evicts least recently used modules until one of `incoming` bytes
    /// fits the budget.
    fn make_room(&mut self, incoming: usize) {
        loop {
            let held: usize = self.modules.values().map(|m| m.bytes).sum();
            if self.modules.is_empty()
                || (self.modules.len() < MAX_MODULES && held + incoming <= MAX_BYTES)
            {
                return;
            }
            let Some(oldest) = self
                .modules
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.modules.remove(&oldest);
        }
    }
}

/// Fills function, file and line from DWARF. addr2line yields the innermost
/// (possibly inlined) function first, then each caller it was inlined into,
/// each with the location of the inlined call.
fn apply_dwarf(ctx: &addr2line::Context<Reader>, svma: u64, frame: &mut Frame) {
    let Ok(mut iter) = ctx.find_frames(svma).skip_all_loads() else {
        return;
    };
    let mut first = true;
    while let Ok(Some(f)) = iter.next() {
        let name = f
            .function
            .as_ref()
            .and_then(|n| n.demangle().ok().map(Cow::into_owned));
        let (file, line) = match &f.location {
            Some(loc) => (loc.file.map(str::to_string), loc.line),
            None => (None, None),
        };
        if first {
            first = false;
            if name.is_some() {
                frame.function = name;
            }
            frame.file = file;
            frame.line = line;
        } else {
            frame.inlined_into.push(InlinedCall {
                function: name,
                file,
                line,
            });
        }
    }
}

/// Demangles a symbol-table name (Rust, then C++); other names unchanged.
pub(crate) fn demangle(name: &str) -> String {
    addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned()
}

fn load_module(pid: i32, m: &Mapping, key: &FileKey, tick: u64) -> io::Result<SymModule> {
    if key.is_vdso() {
        let image = vdso_image(pid, m.start, m.end)?;
        let obj = object::File::parse(&*image).map_err(|e| parse_error(&key.path, e))?;
        let symbols = function_symbols(&obj);
        return Ok(SymModule {
            bytes: symbols_bytes(&symbols),
            dwarf: None,
            symbols,
            last_used: tick,
        });
    }
    let file = open_module_file(pid, key, m.deleted, Some((m.start, m.end)))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| parse_error(&key.path, e))?;
    check_build_id(&obj, m.build_id.as_deref(), &key.path)?;
    let mut symbols = function_symbols(&obj);
    let (mut dwarf, mut dwarf_bytes) = load_dwarf(&obj).unzip();
    if dwarf.is_none() || symbols.is_empty() || obj.symbol_table().is_none() {
        // Distributions ship DWARF and the full symbol table separately
        // (libc6-dbg, *-dbgsym), found by build id or .gnu_debuglink.
        if let Some(debug) = find_debug_file(pid, &obj, &key.path) {
            let dcache = ReadCache::new(debug);
            if let Ok(dobj) = object::File::parse(&dcache) {
                if dwarf.is_none() {
                    (dwarf, dwarf_bytes) = load_dwarf(&dobj).unzip();
                }
                if dobj.symbol_table().is_some() {
                    let dsyms = function_symbols(&dobj);
                    if !dsyms.is_empty() {
                        symbols = dsyms;
                    }
                }
            }
        }
    }
    Ok(SymModule {
        bytes: dwarf_bytes.unwrap_or(0) + symbols_bytes(&symbols),
        dwarf,
        symbols,
        last_used: tick,
    })
}

fn symbols_bytes(symbols: &[Symbol]) -> usize {
    symbols
        .iter()
        .map(|s| std::mem::size_of::<Symbol>() + s.name.len())
        .sum()
}

fn parse_error(path: &str, e: object::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("parsing {path} as ELF: {e}"),
    )
}

/// Function symbols from .symtab, or .dynsym when the file is stripped.
fn function_symbols<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> Vec<Symbol> {
    let collect = |syms: &mut dyn Iterator<Item = object::Symbol<'d, '_, R>>| {
        syms.filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                Some(Symbol {
                    start: s.address(),
                    size: s.size(),
                    name: name.to_string(),
                })
            })
            .collect::<Vec<_>>()
    };
    let mut syms = collect(&mut obj.symbols());
    if syms.is_empty() {
        syms = collect(&mut obj.dynamic_symbols());
    }
    // Aliases share an address (read/__read/__libc_read): keep one, and
    // prefer the one with a size, then the shortest public-looking name.
    syms.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then((b.size != 0).cmp(&(a.size != 0)))
            .then(a.name.starts_with('_').cmp(&b.name.starts_with('_')))
            .then(a.name.len().cmp(&b.name.len()))
    });
    syms.dedup_by_key(|s| s.start);
    syms
}

/// The DWARF sections addr2line reads for functions and lines. Location
/// lists, macros, type units and name indexes are left out: in optimized
/// code the location lists alone can outweigh the rest.
const DWARF_SECTIONS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugAranges,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugRanges,
    gimli::SectionId::DebugRngLists,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
];

/// An addr2line context over `obj`'s DWARF, and the bytes it holds.
fn load_dwarf<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
) -> Option<(addr2line::Context<Reader>, usize)> {
    let info = obj.section_by_name(".debug_info")?;
    if info.size() == 0 {
        return None;
    }
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let mut bytes = 0;
    let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let data: Arc<[u8]> = match obj
            .section_by_name(id.name())
            .filter(|_| DWARF_SECTIONS.contains(&id))
            .and_then(|s| s.uncompressed_data().ok())
        {
            Some(d) => Arc::from(&*d),
            None => Arc::from(&[][..]),
        };
        bytes += data.len();
        Ok(gimli::EndianArcSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    let ctx = addr2line::Context::from_dwarf(dwarf).ok()?;
    Some((ctx, bytes))
}

/// The separate debug file for `obj`, looked for in the process's root and
/// in ours: /usr/lib/debug/.build-id/XX/REST.debug, then the
/// .gnu_debuglink name next to the module, in its .debug/ and under
/// /usr/lib/debug. A candidate whose build id differs is skipped.
fn find_debug_file<'d, R: ReadRef<'d>>(
    pid: i32,
    obj: &object::File<'d, R>,
    path: &str,
) -> Option<File> {
    let build_id = obj.build_id().ok().flatten();
    let mut candidates = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        ));
    }
    if let Ok(Some((name, _crc))) = obj.gnu_debuglink() {
        if let Ok(name) = std::str::from_utf8(name) {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            candidates.push(format!("{dir}/{name}"));
            candidates.push(format!("{dir}/.debug/{name}"));
            candidates.push(format!("/usr/lib/debug{dir}/{name}"));
        }
    }
    for c in candidates {
        for p in [format!("/proc/{pid}/root{c}"), c.clone()] {
            if p == path {
                continue;
            }
            let Ok(f) = open_regular(&p) else { continue };
            if let Some(id) = build_id {
                let cache = ReadCache::new(&f);
                let same = object::File::parse(&cache)
                    .ok()
                    .and_then(|d| d.build_id().ok().flatten().map(|d| d == id))
                    .unwrap_or(false);
                if !same {
                    continue;
                }
            }
            return Some(f);
        }
    }
    None
}
