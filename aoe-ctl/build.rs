//! Builds aoe-ebpf for bpfel-unknown-none and leaves the object in OUT_DIR, where
//! `src/ebpf.rs` embeds it.
//!
//! rustup's toolchains here have no rust-src, so the eBPF crate is built by Debian's
//! rustc-web (its prebuilt BPF `core` lives in /usr/lib/rustlib) and linked by the
//! bpf-linker that `cargo xtask setup` puts in `.tools/bin` (shared/notes/toolchain.md).

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("aoe-ctl has no parent directory"))?
        .to_path_buf();
    println!("cargo:rerun-if-env-changed=AOE_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER");
    let linker = root.join(".tools/bin/bpf-linker");
    if std::env::var_os("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER").is_none() {
        if !linker.exists() {
            return Err(anyhow!(
                "{} is missing: run `cargo xtask setup` first",
                linker.display()
            ));
        }
        std::env::set_var("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    }
    // aya-ebpf needs asm_experimental_arch; unlock it for that one crate only (a global
    // RUSTC_BOOTSTRAP=1 would make aya-build ask for -Z build-std, which needs rust-src).
    std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf");

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "aoe-ebpf")
        .ok_or_else(|| anyhow!("aoe-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("aoe-ebpf manifest has no parent"))?;
    let toolchain = std::env::var("AOE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "/usr".into());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
