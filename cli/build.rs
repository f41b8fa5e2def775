//! Builds the LD_PRELOAD shim and embeds it in the `handles` binary, so that
//! `cargo install --path cli` gives a tool that can inject the shim with
//! nothing else installed. At run time a shim next to the binary (or in
//! HANDLES_SHIM) wins over the embedded copy.
//!
//! The shim is built by a nested cargo in a private target directory, in
//! release mode whatever the outer profile: it runs inside every supervised
//! process, so its speed is the tool's speed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let shim_manifest = manifest_dir.join("../shim/Cargo.toml");
    for p in [
        "../shim/src",
        "../shim/Cargo.toml",
        "../model/src",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=HANDLES_SKIP_SHIM_BUILD");
    let embedded = out.join("libhandles_shim.so");
    let built = if env::var_os("HANDLES_SKIP_SHIM_BUILD").is_some() {
        None
    } else {
        build_shim(&shim_manifest, &out.join("shim-target"))
    };
    match built {
        Some(so) => {
            std::fs::copy(&so, &embedded).expect("copy the built shim into OUT_DIR");
            println!("cargo:rustc-cfg=handles_embedded_shim");
        }
        None => {
            // An empty file keeps include_bytes! valid; the binary then
            // relies on a shim beside it or in HANDLES_SHIM.
            std::fs::write(&embedded, b"").expect("write placeholder");
            println!("cargo:warning=the LD_PRELOAD shim was not embedded; handles run will look for libhandles_shim.so beside the binary");
        }
    }
    println!("cargo:rustc-check-cfg=cfg(handles_embedded_shim)");
    // The extracted copy is named by this hash; computed here rather than
    // at every `handles run` (2.4 MB hashed byte by byte: ~9 ms a start).
    let bytes = std::fs::read(&embedded).expect("read the embedded shim back");
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    println!("cargo:rustc-env=HANDLES_SHIM_HASH={hash:016x}");
}

fn build_shim(manifest: &Path, target_dir: &Path) -> Option<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "handles-shim",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        // The outer build's settings are for the outer build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let so = target_dir.join("release/libhandles_shim.so");
    so.exists().then_some(so)
}
