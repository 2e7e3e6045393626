//! `cargo xtask`: setup, build, demo, test.

mod bench;
mod compare;
mod demo;
mod fuzz;
mod interop;
mod package;
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
    /// Build target/release/aoe-ctl (the classifier embedded) and target/release/aoe-lab
    /// (the lab and benchmark instruments, with their own eBPF object).
    Build,
    /// A lab of two namespaces, an image, an export and an initiator talking to it.
    Demo,
    /// Everything: fmt, clippy, unit and integration tests, then interop.
    Test,
    /// The same load generator against aoe-ctl, vblade and the in-kernel ceiling in one run:
    /// prints the table, writes docs/benchmarks.md's table and docs/benchmarks.svg.
    Bench(bench::Options),
    /// Coverage-guided fuzzing of the wire decoders and the protocol engine (cargo-fuzz on
    /// rustup's nightly), growing the corpus in fuzz/corpus/.
    Fuzz(fuzz::Options),
    /// Real initiators against aoe-ctl: Linux aoe.ko in QEMU (MTU 1500 and 9000, vblade as
    /// the control), iPXE sanboot, tshark on the captures.
    Interop(interop::Options),
    /// vblade and aoe-ctl side by side in one lab, with the verify client (figures, no test).
    Compare {
        /// MTU of the lab's veth pair (9000: 17 sectors per frame).
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
    },
    /// Build the .deb (cargo-deb): /usr/sbin/aoe-ctl, the systemd units, an example
    /// /etc/aoe/exports.toml, man pages, bash/zsh/fish completions, the docs.
    Package {
        /// Then test it: lintian, dpkg -i, use it, dpkg --purge, nothing left (the step
        /// `cargo xtask test` runs).
        #[arg(long)]
        test: bool,
    },
    /// Build everything (the eBPF objects included), then run target/release/aoe-ctl with
    /// ARGS, printing the command first: `cargo xtask run -- export --shelf 1 ...`.
    Run {
        /// Arguments for aoe-ctl.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
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
        Cmd::Bench(o) => build().and_then(|()| bench::run(&o)),
        Cmd::Fuzz(o) => setup::ensure().and_then(|()| fuzz::run(&o)),
        Cmd::Compare { mtu } => build().and_then(|()| compare::run(mtu)),
        Cmd::Package { test } => build().and_then(|()| {
            let deb = package::build()?;
            if test {
                package::test(&deb)?;
            }
            Ok(())
        }),
        Cmd::Run { args } => build().and_then(|()| run(&args)),
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// `cargo ARGS` with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let root = aoe_integration::workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
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
    cargo(&["build", "--release", "-p", "aoe-ctl", "-p", "aoe-lab"])?;
    println!(
        "xtask: built {} and {}",
        aoe_integration::aoe_ctl().display(),
        aoe_integration::aoe_lab().display()
    );
    Ok(())
}

/// Replace xtask with aoe-ctl, so that signals and the exit code are aoe-ctl's own.
fn run(args: &[std::ffi::OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = aoe_integration::aoe_ctl();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("xtask: running {} {}", bin.display(), shown.join(" "));
    let e = Command::new(&bin).args(args).exec();
    Err(e).with_context(|| format!("running {}", bin.display()))
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
    // The same protocol tests again, on the AF_PACKET data path.
    cargo_env(
        &[
            "test",
            "--release",
            "-p",
            "aoe-integration",
            "--test",
            "target",
        ],
        &[("AOE_TEST_DATA_PATH", "afpacket")],
    )?;
    // The side-by-side benchmark and its storage section work on this machine (short rows,
    // a 1 GiB image of its own, figures not judged; written to a scratch directory, not over
    // docs/).
    let out = std::env::temp_dir().join(format!("aoe-bench-smoke-{}", std::process::id()));
    let image = bench::storage::default_image().with_file_name("aoe-bench-storage-smoke.img");
    let smoke = bench::run(&bench::Options {
        duration: 0.3,
        runs: 1,
        out: Some(out.clone()),
        data_path: "xdp".into(),
        storage_gib: 1,
        storage_image: Some(image.clone()),
        no_storage: false,
        storage_only: false,
        peers_only: false,
    });
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&image);
    smoke.context("cargo xtask bench (smoke run)")?;
    // The .deb: lintian, installed, used, purged.
    package::build().and_then(|deb| package::test(&deb))?;
    // Every decoder and the engine under the fuzzer for a short while, from the corpus.
    fuzz::run(&fuzz::Options {
        minutes: 1.0,
        target: None,
    })?;
    // Real initiators in QEMU: says clearly when (and why) it cannot run here.
    interop::run(&interop::Options::default()).map(|_| ())
}
