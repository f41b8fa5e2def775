//! Finding the LD_PRELOAD shim to inject: HANDLES_SHIM, then
//! `libhandles_shim.so` beside the binary (a cargo target dir, an install
//! prefix) if it is the very copy embedded at build time, else that
//! embedded copy, written once to a private cache directory.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The shim built and embedded by build.rs (empty when that build failed).
static EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libhandles_shim.so"));

const NAME: &str = "libhandles_shim.so";

fn beside_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(NAME), dir.join("../lib/handles").join(NAME)]
        .into_iter()
        .find(|p| p.is_file())
}

/// A directory only we can write: XDG_RUNTIME_DIR, else /tmp/handles-UID,
/// refused if someone else owns it or it is a symlink.
fn cache_dir() -> Result<PathBuf, String> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("handles"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/handles-{uid}")));
    match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", base.display())),
    }
    let meta = std::fs::symlink_metadata(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a private directory of this user",
            base.display()
        ));
    }
    Ok(base)
}

fn extract_embedded() -> Result<Option<PathBuf>, String> {
    if EMBEDDED.is_empty() {
        return Ok(None);
    }
    let dir = cache_dir()?;
    // FNV-1a of EMBEDDED, computed by build.rs.
    let path = dir.join(format!("libhandles_shim-{}.so", env!("HANDLES_SHIM_HASH")));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == EMBEDDED.len() as u64) {
        return Ok(Some(path));
    }
    let tmp = dir.join(format!(".{NAME}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(EMBEDDED)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing the embedded shim to {}: {e}", path.display())
    })?;
    Ok(Some(path))
}

/// The shim to preload, or None when there is none to be had (the
/// supervisor then works alone).
pub fn locate() -> Result<Option<PathBuf>, String> {
    if let Some(p) = std::env::var_os("HANDLES_SHIM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(Some(absolute(&p)))
        } else {
            Err(format!("HANDLES_SHIM={}: no such file", p.display()))
        };
    }
    // A copy beside the binary is used only when it is the one built with
    // it: in a cargo target dir it may be left over from an older build,
    // and the table layout and the cookie protocol must match ours.
    if let Some(p) = beside_binary() {
        if EMBEDDED.is_empty() || is_embedded_build(&p) {
            return Ok(Some(p));
        }
    }
    extract_embedded()
}

/// How much of the file's head is read to find its build ID: the note
/// sits just after the program headers, within the first page.
const HEAD: usize = 8192;

/// Whether the file at `p` is the build embedded in this binary: same size
/// and same GNU build ID (the linker's hash of the whole output), read from
/// the file's first page. Reading and comparing all 2.7 MB cost ~6 ms and
/// ~660 page faults at every `handles run`; a shim linked without a build
/// ID is still compared whole.
fn is_embedded_build(p: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(p) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.len() == EMBEDDED.len() as u64) {
        return false;
    }
    let Some(want) = build_id(EMBEDDED) else {
        let mut all = Vec::with_capacity(EMBEDDED.len());
        return f.read_to_end(&mut all).is_ok() && all == EMBEDDED;
    };
    let mut head = vec![0u8; HEAD.min(EMBEDDED.len())];
    f.read_exact(&mut head).is_ok() && build_id(&head).as_deref() == Some(&want[..])
}

/// The GNU build ID among the notes that lie within `elf` (the backtrace
/// code's reader: it maps modules by the same ID).
fn build_id(elf: &[u8]) -> Option<Vec<u8>> {
    handles_supervisor::backtrace::build_id_from_headers(elf)
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("handles-shim-test-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).expect("write scratch file");
        p
    }

    #[test]
    fn build_id_of_the_embedded_shim() {
        if EMBEDDED.is_empty() {
            return;
        }
        let id = build_id(EMBEDDED).expect("the embedded shim has a GNU build ID");
        assert!(id.len() >= 8, "{id:?}");
        // Found from the head alone, as locate reads it.
        assert_eq!(
            build_id(&EMBEDDED[..HEAD.min(EMBEDDED.len())]),
            Some(id.clone())
        );
    }

    #[test]
    fn build_id_refuses_what_is_not_elf64() {
        assert_eq!(build_id(b""), None);
        assert_eq!(build_id(b"\x7fELF\x01\x01"), None);
        assert_eq!(build_id(&[0u8; 64]), None);
        let mut cut = b"\x7fELF\x02\x01".to_vec();
        cut.resize(0x40, 0xff);
        assert_eq!(build_id(&cut), None);
        // Garbage behind a valid magic: offsets and sizes of every width,
        // never a panic (debug builds check the arithmetic).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            let mut b = b"\x7fELF\x02\x01".to_vec();
            while b.len() < 256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.extend_from_slice(&x.to_le_bytes());
            }
            let _ = build_id(&b);
        }
    }

    #[test]
    fn only_the_embedded_build_is_taken_from_beside_the_binary() {
        if EMBEDDED.is_empty() {
            return;
        }
        let same = scratch("same", EMBEDDED);
        assert!(is_embedded_build(&same));
        // Another build of the same size: its build ID differs.
        let id = build_id(EMBEDDED).expect("build ID");
        let at = EMBEDDED
            .windows(id.len())
            .position(|w| w == id.as_slice())
            .expect("the ID's bytes");
        let mut other = EMBEDDED.to_vec();
        other[at] ^= 0xff;
        let other = scratch("other", &other);
        assert!(!is_embedded_build(&other));
        let short = scratch("short", &EMBEDDED[..EMBEDDED.len() - 1]);
        assert!(!is_embedded_build(&short));
        assert!(!is_embedded_build(Path::new(
            "/nonexistent/libhandles_shim.so"
        )));
        for p in [same, other, short] {
            let _ = std::fs::remove_file(p);
        }
    }
}
