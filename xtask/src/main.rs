//! `cargo xtask`: setup, build, demo, test.

mod compare;
mod demo;
mod interop;
mod setup;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages and bpf-linker (idempotent).
    Setup,
    /// Build target/release/aoe-ctl with the eBPF object embedded.
    Build,
    /// A lab of two namespaces, an image, an export and an initiator talking to it.
    Demo,
    /// Everything: fmt, clippy, unit and integration tests, then interop.
    Test,
    /// vblade and aoe-ctl side by side in one lab, with the same client (figures, no test).
    /// Real initiators against aoe-ctl: Linux aoe.ko in QEMU (MTU 1500 and 9000, vblade as
    /// the control), iPXE sanboot, tshark on the captures.
    Interop(interop::Options),
    Compare {
        /// MTU of the lab's veth pair (9000: 17 sectors per frame).
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build => build(),
        Cmd::Demo => build().and_then(|()| demo::run()),
        Cmd::Test => build().and_then(|()| test()),
        Cmd::Interop(o) => build().and_then(|()| interop::run(&o).map(|_| ())),
        Cmd::Compare { mtu } => build().and_then(|()| compare::run(mtu)),
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let root = aoe_integration::workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(&root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn build() -> Result<()> {
    setup::ensure()?;
    cargo(&["build", "--release", "-p", "aoe-ctl"])?;
    println!("xtask: built {}", aoe_integration::aoe_ctl().display());
    Ok(())
}

fn test() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--release"])?;
    // Real initiators in QEMU: says clearly when (and why) it cannot run here.
    interop::run(&interop::Options::default()).map(|_| ())
}
