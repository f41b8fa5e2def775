//! A process's executable mappings, from /proc/PID/maps, with the load bias
//! of each ELF module so that an address can be turned into the address the
//! module's own tables (unwind info, DWARF, symbols) use.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::ops::Range;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::elf::{open_module_file, FileKey};
use super::memory::{read_partial, with_context};

/// One executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the mapped file of `start`.
    pub offset: u64,
    /// Device number, in the encoding of `stat`'s `st_dev`.
    pub dev: u64,
    pub inode: u64,
    /// The path as the process sees it (without the " (deleted)" suffix), a
    /// pseudo-name such as `[vdso]`, or empty for anonymous memory.
    pub path: String,
    /// The file was unlinked (or replaced) after it was mapped.
    pub deleted: bool,
    /// Load bias of the ELF module: `address - bias` is the address the
    /// module's own tables use. `None` for anonymous memory or a file whose
    /// ELF headers could not be read.
    pub bias: Option<u64>,
    /// The module's GNU build id, from its headers in memory.
    pub build_id: Option<Vec<u8>>,
    /// Tells two files apart that had the same path, device and inode: the
    /// inode of a deleted file is soon reused, by the next build of the same
    /// binary for one. A hash of the build id, or of the ELF and program
    /// headers when there is none.
    pub(crate) identity: u64,
}

impl Mapping {
    /// File-backed (or the vdso), so that unwind info and symbols exist.
    pub fn is_module(&self) -> bool {
        self.path == "[vdso]" || (self.inode != 0 && self.path.starts_with('/'))
    }

    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }

    pub(crate) fn file_key(&self) -> FileKey {
        FileKey {
            path: self.path.clone(),
            dev: self.dev,
            inode: self.inode,
            identity: self.identity,
        }
    }

    /// The offset used for symbolization and shown as `module+0x…`: the
    /// module's own address for `addr` when the bias is known (what
    /// `addr2line -e MODULE` takes), the file offset otherwise.
    pub fn module_offset(&self, addr: u64) -> u64 {
        match self.bias {
            Some(bias) => addr.wrapping_sub(bias),
            None => addr.wrapping_sub(self.start).wrapping_add(self.offset),
        }
    }
}

/// A snapshot of a process's executable mappings (/proc/PID/maps).
#[derive(Debug, Clone)]
pub struct ModuleMap {
    pid: i32,
    /// Executable mappings, sorted by start address.
    mappings: Vec<Mapping>,
    fingerprint: u64,
}

/// A line of /proc/PID/maps, before the executable ones are kept.
#[derive(Debug)]
struct RawLine {
    start: u64,
    end: u64,
    executable: bool,
    offset: u64,
    dev: u64,
    inode: u64,
    path: String,
    deleted: bool,
}

impl ModuleMap {
    /// Reads /proc/PID/maps and the ELF program headers of each executable
    /// module (from the process's memory, or from the file when that fails).
    pub fn read(pid: i32) -> io::Result<ModuleMap> {
        let path = format!("/proc/{pid}/maps");
        let text = std::fs::read_to_string(&path).map_err(|e| with_context(e, path.clone()))?;
        let lines: Vec<RawLine> = text.lines().filter_map(parse_line).collect();
        Ok(Self::from_lines(pid, &lines, |line, all| {
            header_bytes(pid, line, all)
        }))
    }

    fn from_lines(
        pid: i32,
        lines: &[RawLine],
        mut headers_of: impl FnMut(&RawLine, &[RawLine]) -> Option<Vec<u8>>,
    ) -> ModuleMap {
        let mut mappings: Vec<Mapping> = lines
            .iter()
            .filter(|l| l.executable)
            .map(|l| Mapping {
                start: l.start,
                end: l.end,
                offset: l.offset,
                dev: l.dev,
                inode: l.inode,
                path: l.path.clone(),
                deleted: l.deleted,
                bias: None,
                build_id: None,
                identity: 0,
            })
            .collect();
        for (m, l) in mappings
            .iter_mut()
            .zip(lines.iter().filter(|l| l.executable))
        {
            if !m.is_module() {
                continue;
            }
            if let Some(header) = headers_of(l, lines) {
                m.bias = bias_from_headers(&header, m.start, m.offset);
                m.build_id = build_id_from_headers(&header);
                m.identity = identity(m.build_id.as_deref(), &header);
            }
        }
        mappings.sort_by_key(|m| m.start);
        let mut h = DefaultHasher::new();
        for m in &mappings {
            (m.start, m.end, m.offset, m.dev, m.inode, &m.path, m.bias).hash(&mut h);
            m.identity.hash(&mut h);
        }
        ModuleMap {
            pid,
            mappings,
            fingerprint: h.finish(),
        }
    }

    /// The process the snapshot was taken of.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The executable mappings, sorted by address.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Changes whenever the layout of executable code changes (a library
    /// loaded or unloaded, an exec, a rebuilt file at the same address).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The executable mapping containing `addr`.
    pub fn mapping_of(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Whether `addr` lies in executable memory at all (file-backed or not).
    pub fn is_executable(&self, addr: u64) -> bool {
        self.mapping_of(addr).is_some()
    }

    /// The module (path) containing `addr` and the offset used to symbolize
    /// it (see [`Mapping::module_offset`]). `None` outside file-backed code.
    pub fn module_of(&self, addr: u64) -> Option<(&str, u64)> {
        let m = self.mapping_of(addr)?;
        if !m.is_module() {
            return None;
        }
        Some((m.path.as_str(), m.module_offset(addr)))
    }
}

fn parse_line(line: &str) -> Option<RawLine> {
    // "start-end perms offset major:minor inode   path", where the path is
    // the rest of the line and may contain spaces.
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let mut path = rest.trim_start().to_string();
    let mut deleted = false;
    if let Some(p) = path.strip_suffix(" (deleted)") {
        path = p.to_string();
        deleted = true;
    }
    let (start, end) = (
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    );
    if end <= start {
        return None;
    }
    Some(RawLine {
        start,
        end,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: makedev(
            u64::from_str_radix(major, 16).ok()?,
            u64::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path,
        deleted,
    })
}

/// glibc's `makedev`, so that maps' "fe:01" compares with `st_dev`.
fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// How many bytes of the file's start are read to find the program headers;
/// the headers of every linker's output fit well inside one page.
const HEADER_BYTES: usize = 4096;

/// The first page of the module: from memory where the process mapped the
/// file's offset 0 (exactly the bytes it runs, even if the file was since
/// replaced), or from the file.
fn header_bytes(pid: i32, line: &RawLine, all: &[RawLine]) -> Option<Vec<u8>> {
    let base = if line.path == "[vdso]" {
        Some(line.start)
    } else {
        all.iter()
            .find(|l| {
                l.offset == 0 && l.inode == line.inode && l.dev == line.dev && l.path == line.path
            })
            .map(|l| l.start)
    };
    if let Some(base) = base {
        let mut buf = vec![0u8; HEADER_BYTES];
        if let Ok(n) = read_partial(pid, base, &mut buf) {
            if n >= 64 {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    if line.path == "[vdso]" {
        return None;
    }
    let key = FileKey {
        path: line.path.clone(),
        dev: line.dev,
        inode: line.inode,
        identity: 0,
    };
    let file = open_module_file(pid, &key, line.deleted, Some((line.start, line.end))).ok()?;
    let mut buf = vec![0u8; HEADER_BYTES];
    let n = super::elf::read_at_most(&file, 0, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The bias that puts the PT_LOAD segment holding file offset `offset` at
/// `start`. Works for PIE, shared libraries (bias = where offset 0 landed)
/// and fixed-address executables (bias 0) alike.
pub(crate) fn bias_from_headers(header: &[u8], start: u64, offset: u64) -> Option<u64> {
    let ehdr = elf::FileHeader64::<Endianness>::parse(header).ok()?;
    let endian = ehdr.endian().ok()?;
    let phdrs = ehdr.program_headers(endian, header).ok()?;
    let loads = || phdrs.iter().filter(|p| p.p_type(endian) == elf::PT_LOAD);
    let contains = |p: &&elf::ProgramHeader64<Endianness>| {
        let p_off = p.p_offset(endian);
        let first = p_off & !0xfff;
        offset >= first && offset < p_off.saturating_add(p.p_filesz(endian).max(1))
    };
    // An executable mapping belongs to the executable segment; a page shared
    // by two segments is attributed to the one marked executable.
    let seg = loads()
        .filter(contains)
        .find(|p| p.p_flags(endian).contains(elf::PF_X))
        .or_else(|| loads().find(contains))?;
    Some(
        start
            .wrapping_add(seg.p_offset(endian))
            .wrapping_sub(seg.p_vaddr(endian))
            .wrapping_sub(offset),
    )
}

/// The GNU build id from the PT_NOTE segments within `header`.
pub fn build_id_from_headers(header: &[u8]) -> Option<Vec<u8>> {
    let ehdr = elf::FileHeader64::<Endianness>::parse(header).ok()?;
    let endian = ehdr.endian().ok()?;
    for phdr in ehdr.program_headers(endian, header).ok()? {
        // A note segment past the bytes we have is skipped, not an error.
        let Ok(Some(mut notes)) = phdr.notes(endian, header) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(note.desc().to_vec());
            }
        }
    }
    None
}

fn identity(build_id: Option<&[u8]>, header: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    match build_id {
        Some(id) => id.hash(&mut h),
        None => {
            // The ELF header and program headers: the same bytes whether
            // read from memory or from the file.
            let len = elf::FileHeader64::<Endianness>::parse(header)
                .ok()
                .and_then(|e| {
                    let endian = e.endian().ok()?;
                    let table = u64::from(e.e_phnum(endian)) * u64::from(e.e_phentsize(endian));
                    usize::try_from(e.e_phoff(endian).checked_add(table)?).ok()
                })
                .unwrap_or(64)
                .min(header.len());
            header[..len].hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d1c2a4a000-55d1c2a4b000 r--p 00000000 fe:01 1234                       /tmp/my fixture
55d1c2a4b000-55d1c2a4c000 r-xp 00001000 fe:01 1234                       /tmp/my fixture
55d1c2a4c000-55d1c2a4d000 r--p 00002000 fe:01 1234                       /tmp/my fixture
7f00a0000000-7f00a0026000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)
7f00a0026000-7f00a017c000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)
7f00b0000000-7f00b0001000 rwxp 00000000 00:00 0 
7ffd7e5f1000-7ffd7e5f3000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    fn sample() -> ModuleMap {
        let lines: Vec<RawLine> = SAMPLE.lines().filter_map(parse_line).collect();
        assert_eq!(lines.len(), 8);
        let mut m = ModuleMap::from_lines(1, &lines, |_, _| None);
        for m in &mut m.mappings {
            // Pretend every module is PIE: bias = where offset 0 landed.
            m.bias = lines
                .iter()
                .find(|o| o.offset == 0 && o.inode == m.inode && o.path == m.path)
                .map(|o| o.start);
        }
        m
    }

    #[test]
    fn parses_paths_with_spaces_and_deleted_files() {
        let m = sample();
        let fixture = m.mapping_of(0x55d1c2a4b1c9).expect("fixture mapping");
        assert_eq!(fixture.path, "/tmp/my fixture");
        assert_eq!(fixture.dev, makedev(0xfe, 1));
        assert!(!fixture.deleted);
        let libc = m.mapping_of(0x7f00a0027000).expect("libc mapping");
        assert!(libc.deleted);
        assert_eq!(libc.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
    }

    #[test]
    fn module_offsets_are_relative_to_the_load_bias() {
        let m = sample();
        assert_eq!(
            m.module_of(0x55d1c2a4b1c9),
            Some(("/tmp/my fixture", 0x11c9))
        );
        assert_eq!(
            m.module_of(0x7f00a00271ca),
            Some(("/usr/lib/x86_64-linux-gnu/libc.so.6", 0x271ca))
        );
        // Anonymous executable memory is executable but no module.
        assert!(m.is_executable(0x7f00b0000010));
        assert_eq!(m.module_of(0x7f00b0000010), None);
        // Not executable, or outside every mapping.
        assert_eq!(m.module_of(0x55d1c2a4c010), None);
        assert_eq!(m.module_of(0x10), None);
        assert!(m.mapping_of(0x7ffd7e5f1100).is_some_and(Mapping::is_module));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        for bad in [
            "",
            "zzzz",
            "1000-2000",
            "1000-2000 r-xp",
            "1000-2000 r-xp 0 fe:01",
            "x-2000 r-xp 0 fe:01 1 /a",
            "1000-2000 r-xp 0 fe01 1 /a",
            "2000-1000 r-xp 0 fe:01 1 /a",
        ] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_tracks_layout() {
        let a = sample();
        let lines: Vec<RawLine> = SAMPLE
            .replace("1234", "1235")
            .lines()
            .filter_map(parse_line)
            .collect();
        let b = ModuleMap::from_lines(1, &lines, |_, _| None);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), sample().fingerprint());
    }

    #[test]
    fn bias_of_this_test_binary_matches_its_own_symbols() {
        // The test binary itself: the address of a function minus the bias
        // must be that function's address in the ELF file.
        let maps = ModuleMap::read(std::process::id() as i32).expect("read own maps");
        let here = bias_of_this_test_binary_matches_its_own_symbols as fn() as usize as u64;
        let (path, offset) = maps.module_of(here).expect("own code is in a module");
        let bytes = std::fs::read(path).expect("read own binary");
        let file = object::File::parse(&*bytes).expect("parse own binary");
        use object::{Object, ObjectSymbol};
        let found = file
            .symbols()
            .chain(file.dynamic_symbols())
            .any(|s| s.address() == offset);
        assert!(found, "no symbol at {offset:#x} in {path}");
        let mapping = maps.mapping_of(here).expect("own mapping");
        assert_eq!(
            mapping.build_id.as_deref(),
            file.build_id().ok().flatten(),
            "build id from memory vs file"
        );
    }
}
