//! Bundles the coder guest (`guests/coder`, a `wasm32-wasip2` component)
//! into the binary, so `cairn init` can give every repository with a model
//! a working coding agent without a registry.
//!
//! The guest is built by a second cargo, in `<target>/guests` (where the
//! tests build guests too), and only when its sources change. Without the
//! `wasm32-wasip2` target (`rustup target add wasm32-wasip2`), or when that
//! build fails, cairn is built without the coder, with a warning saying
//! why: `cairn init` then writes the echo agent only and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let guest = manifest.join("guests/coder");
    // The coder, and the wasi:http client it shares with the other guests.
    for (dir, watched) in [
        ("guests/coder", "src"),
        ("guests/coder", "Cargo.toml"),
        ("guests/coder", "Cargo.lock"),
        ("guests/wasi-post", "src"),
        ("guests/wasi-post", "Cargo.toml"),
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest.join(dir).join(watched).display()
        );
    }
    println!("cargo::rustc-check-cfg=cfg(cairn_coder)");
    let out = PathBuf::from(env("OUT_DIR"));
    match build(&guest, &out) {
        Ok(wasm) => {
            let bundled = out.join("coder.wasm");
            if let Err(e) = std::fs::copy(&wasm, &bundled) {
                println!(
                    "cargo:warning=the coder guest is not bundled: copying {}: {e}",
                    wasm.display()
                );
                return;
            }
            println!("cargo:rustc-cfg=cairn_coder");
        }
        Err(why) => println!("cargo:warning=the coder guest is not bundled: {why}"),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// Builds the guest; the path of its `.wasm`.
fn build(guest: &Path, out: &Path) -> Result<PathBuf, String> {
    if !guest.join("Cargo.toml").is_file() {
        return Err(format!("{} is not there", guest.display()));
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if !has_target(&rustc) {
        return Err(format!(
            "the {TARGET} target is not installed (rustup target add {TARGET})"
        ));
    }
    let target_dir = target_root(out).join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The host build's flags and wrappers are not the guest's.
    for name in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(name);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("running cargo for {TARGET}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("error"))
            .unwrap_or("(no error line)");
        return Err(format!("building guests/coder failed: {last}"));
    }
    let wasm = target_dir.join(format!("{TARGET}/release/coder.wasm"));
    if !wasm.is_file() {
        return Err(format!("the build left no {}", wasm.display()));
    }
    Ok(wasm)
}

/// Whether `rustc`'s sysroot has the standard library for [`TARGET`].
fn has_target(rustc: &str) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

/// The cargo target directory `out` (this build script's `OUT_DIR`) is in:
/// the nearest ancestor with cargo's `CACHEDIR.TAG`, else `out` itself.
fn target_root(out: &Path) -> PathBuf {
    out.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out)
        .to_path_buf()
}
