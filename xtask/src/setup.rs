//! Install what the build and tests need, only what is missing, saying what it does.
//!
//! The eBPF crate is built by Debian's rustc-web, whose sysroot has a prebuilt BPF `core`
//! (rustup here has no rust-src), and linked by bpf-linker built against Debian's LLVM 22
//! into `.tools/` (shared/notes/toolchain.md).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

const PACKAGES: &[&str] = &[
    // eBPF toolchain
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // labs and tests
    "iproute2",
    "util-linux",
    "vblade",
    "tcpdump",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn bpf_linker() -> PathBuf {
    aoe_integration::workspace_root().join(".tools/bin/bpf-linker")
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Install only if something is missing.
pub fn ensure() -> Result<()> {
    if missing_packages().is_empty() && bpf_linker().exists() {
        return Ok(());
    }
    run()
}

pub fn run() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        println!("setup: installing {} with apt-get", missing.join(" "));
        let ok = Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get update")?
            .success();
        if !ok {
            bail!("apt-get update failed");
        }
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get install")?
            .success();
        if !ok {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    let linker = bpf_linker();
    if linker.exists() {
        println!("setup: bpf-linker present at {}", linker.display());
    } else {
        let root = linker.parent().unwrap().parent().unwrap().to_path_buf();
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 into {} (about a minute)",
            root.display()
        );
        let ok = Command::new("cargo")
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(&root)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .status()
            .context("cargo install bpf-linker")?
            .success();
        if !ok {
            bail!("building bpf-linker failed");
        }
    }
    Ok(())
}
