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
        // The size first: a stale copy rarely has the same, and the
        // compare reads the whole file.
        let same_size = std::fs::metadata(&p).is_ok_and(|m| m.len() == EMBEDDED.len() as u64);
        if EMBEDDED.is_empty() || (same_size && std::fs::read(&p).is_ok_and(|b| b == EMBEDDED)) {
            return Ok(Some(p));
        }
    }
    extract_embedded()
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
