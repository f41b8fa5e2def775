//! The pytest plugin and the `handles_checkpoint` Python wrapper, shipped
//! inside the binary (cli/python/) and written to a private directory
//! that `handles run --leak-check` puts on the job's PYTHONPATH, with the
//! plugin named in PYTEST_PLUGINS: `python3 -m pytest` under `handles run`
//! reports leaks per test with no install step (docs/per-test.md).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const FILES: [(&str, &str); 2] = [
    (
        "handles_checkpoint.py",
        include_str!("../python/handles_checkpoint.py"),
    ),
    (
        "handles_pytest.py",
        include_str!("../python/handles_pytest.py"),
    ),
];

/// The plugin's module name, as PYTEST_PLUGINS lists it.
const PLUGIN: &str = "handles_pytest";

/// A short digest of the files, so that two versions of `handles` never
/// share a directory (FNV-1a: identity, not security; the directory's
/// owner and mode are what is checked).
fn digest() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in FILES {
        for b in name.bytes().chain(text.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Ours alone: a directory (not a link) owned by this user that nobody
/// else may write into. Anything else in a shared /tmp could be another
/// user's plugin waiting to run inside our tests.
fn check_private(dir: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if !m.is_dir() || m.uid() != uid || m.permissions().mode() & 0o022 != 0 {
        bail!("{} is not a private directory of this user", dir.display());
    }
    Ok(())
}

/// Writes the files (once per version and user) and returns their
/// directory.
pub fn install() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = base.join(format!("handles-python-{uid}-{:016x}", digest()));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    check_private(&dir)?;
    for (name, text) in FILES {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            continue;
        }
        // Written aside and renamed: a concurrent run never imports half
        // a file.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// The job's PYTHONPATH and PYTEST_PLUGINS with the plugin added to what
/// the environment already says.
pub fn environment(dir: &Path) -> Vec<(OsString, OsString)> {
    let mut path = OsString::from(dir);
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(old);
    }
    let plugins = match std::env::var("PYTEST_PLUGINS") {
        Ok(old) if old.split(',').any(|p| p.trim() == PLUGIN) => old,
        Ok(old) if !old.trim().is_empty() => format!("{old},{PLUGIN}"),
        _ => PLUGIN.to_string(),
    };
    vec![
        ("PYTHONPATH".into(), path),
        ("PYTEST_PLUGINS".into(), plugins.into()),
    ]
}
