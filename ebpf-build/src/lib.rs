//! What a build.rs calls to build one of the workspace's eBPF crates for
//! bpfel-unknown-none and leave its object in OUT_DIR, named after the crate's binary
//! (aoe-ctl embeds aoe-ebpf's, aoe-lab embeds aoe-lab-ebpf's).
//!
//! rustup's toolchains here have no rust-src, so the eBPF crate is built by Debian's
//! rustc-web (its prebuilt BPF `core` lives in /usr/lib/rustlib) and linked by the
//! bpf-linker that `cargo xtask setup` puts in `.tools/bin` (docs/toolchain.md).

use anyhow::{anyhow, Context as _};

/// Build the workspace package `name` (an eBPF crate) into OUT_DIR.
pub fn build(name: &str) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AOE_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let root = metadata.workspace_root.as_std_path();
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
    // aya-build watches the eBPF crate's own directory; the map types and wire format it
    // compiles in live in aoe-common.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("aoe-common/src").display()
    );

    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == name)
        .ok_or_else(|| anyhow!("package {name} not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{name}'s manifest has no parent"))?;
    let toolchain = std::env::var("AOE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "/usr".into());
    aya_build::build_ebpf(
        [aya_build::Package {
            name,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
