//! `cargo xtask fuzz`: the cargo-fuzz targets of fuzz/ (`wire`: every aoe-common decoder;
//! `engine`: the protocol engine over an in-memory backend), each for its share of the time,
//! growing its corpus in fuzz/corpus/. A crash fails the run and leaves its input in
//! fuzz/artifacts/.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup;

pub const TARGETS: &[&str] = &["wire", "engine"];

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Minutes in all, shared between the targets.
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// Run only this target.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

pub fn run(o: &Options) -> Result<()> {
    if o.minutes.is_nan() || o.minutes <= 0.0 {
        bail!("--minutes must be more than 0");
    }
    let root = aoe_integration::workspace_root();
    let targets: Vec<&str> = match &o.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    let seconds = ((o.minutes * 60.0) / targets.len() as f64).ceil().max(1.0) as u64;
    let tools = setup::cargo_fuzz();
    let path = format!(
        "{}:{}",
        tools.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for t in targets {
        println!("fuzz: {t} for {seconds} s (corpus fuzz/corpus/{t})");
        // Nightly for the sanitizers; none of the stable toolchain's settings that xtask
        // itself runs under.
        let status = Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", t])
            .arg(root.join("fuzz/corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=4096", "-print_final_stats=1"])
            .env("PATH", &path)
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTFLAGS")
            .current_dir(&root)
            .status()
            .context("running cargo fuzz (rustup's nightly toolchain)")?;
        if !status.success() {
            bail!("fuzz target {t} failed: the input is in fuzz/artifacts/{t}/");
        }
    }
    Ok(())
}
