//! Install what the build and tests need, only what is missing, saying what it does.
//!
//! The eBPF crate is built by Debian's rustc-web, whose sysroot has a prebuilt BPF `core`
//! (rustup here has no rust-src), and linked by bpf-linker built against Debian's LLVM 22
//! into `.tools/` (docs/toolchain.md says why).

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
    // tests/snapshot.rs: the reflink path on an XFS loop image
    "xfsprogs",
    // the fault lab: losetup and umount (faultfs itself needs only the kernel's FUSE: as
    // root it mounts /dev/fuse with mount(2), no fusermount); ethtool reads the per-queue
    // XDP counters of tests/failing_disk.rs
    "mount",
    "ethtool",
    // the storage section of `cargo xtask bench`: the disk's limit, and the peers an admin
    // would run instead (NBD: qemu-nbd, nbdkit; iSCSI: tgt, and libiscsi for the client
    // xtask builds with gcc)
    "fio",
    "qemu-utils",
    "nbdkit",
    "tgt",
    "libiscsi-dev",
    "gcc",
    // interop: initiators we did not write, and the tools that judge them
    "aoetools",
    "busybox-static",
    "tshark",
    "e2fsprogs",
    "binutils",
    "qemu-system-x86",
    // tests/metrics.rs: a Prometheus server scrapes the daemon, promtool judges the text
    "prometheus",
    // the .deb: cargo-deb's $auto depends, its lint, and what its test uses
    "dpkg-dev",
    "lintian",
    "man-db",
    "systemd",
];

/// From bookworm-backports: bookworm's qemu-system-x86 7.2 would remove the machine's
/// preinstalled qemu-utils 10.0 (qemu-nbd), which must come from there too.
const FROM_BACKPORTS: &[&str] = &["qemu-system-x86", "qemu-utils"];
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/aoe-bookworm-backports.sources";

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn bpf_linker() -> PathBuf {
    aoe_integration::workspace_root().join(".tools/bin/bpf-linker")
}

/// cargo-fuzz, for `cargo xtask fuzz` (runs on rustup's nightly toolchain).
pub fn cargo_fuzz() -> PathBuf {
    aoe_integration::workspace_root().join(".tools/bin/cargo-fuzz")
}

/// cargo-deb, for `cargo xtask package`.
pub fn cargo_deb() -> PathBuf {
    aoe_integration::workspace_root().join(".tools/bin/cargo-deb")
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
    if missing_packages().is_empty()
        && bpf_linker().exists()
        && cargo_fuzz().exists()
        && cargo_deb().exists()
    {
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
        if missing.iter().any(|p| FROM_BACKPORTS.contains(p)) {
            add_backports()?;
        }
        let ok = Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get update")?
            .success();
        if !ok {
            bail!("apt-get update failed");
        }
        let (backports, plain): (Vec<&str>, Vec<&str>) =
            missing.iter().partition(|p| FROM_BACKPORTS.contains(p));
        for (release, set) in [(None, plain), (Some("bookworm-backports"), backports)] {
            if set.is_empty() {
                continue;
            }
            let mut cmd = Command::new("apt-get");
            cmd.args(["install", "-y", "-q", "--no-install-recommends"]);
            if let Some(r) = release {
                cmd.args(["-t", r]);
            }
            let ok = cmd
                .args(&set)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("apt-get install")?
                .success();
            if !ok {
                bail!("apt-get install {} failed", set.join(" "));
            }
        }
    }
    // bpf-linker against Debian's LLVM 22, the LLVM rustc-web emits bitcode for.
    cargo_install(
        &bpf_linker(),
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        &["--no-default-features", "--features", "llvm-22"],
        &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
    )?;
    cargo_install(
        &cargo_fuzz(),
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        &[],
        &[],
    )?;
    cargo_install(
        &cargo_deb(),
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        &[],
        &[],
    )
}

/// `cargo install` of `krate` (name@version) into .tools/, unless `binary` is there.
fn cargo_install(
    binary: &std::path::Path,
    krate: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    if binary.exists() {
        println!("setup: {krate} present at {}", binary.display());
        return Ok(());
    }
    let root = binary.parent().unwrap().parent().unwrap();
    println!(
        "setup: building {krate} into {} (a minute or two)",
        root.display()
    );
    let ok = Command::new("cargo")
        .args(["install", "--locked", krate, "--root"])
        .arg(root)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cargo install {krate}"))?
        .success();
    if !ok {
        bail!("building {krate} failed");
    }
    Ok(())
}

/// Add bookworm-backports to apt's sources unless some source already names it.
fn add_backports() -> Result<()> {
    let listed = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .chain(std::fs::read_to_string("/etc/apt/sources.list").ok())
        .any(|text| {
            text.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports"))
        });
    if listed {
        return Ok(());
    }
    println!("setup: adding bookworm-backports to apt's sources ({BACKPORTS_SOURCE})");
    std::fs::write(
        BACKPORTS_SOURCE,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
    Ok(())
}
