//! `cargo xtask package`: the .deb (cargo-deb, from aoe-ctl's [package.metadata.deb]), and
//! its test for `cargo xtask test`: lintian without errors, then installed with dpkg, used
//! (`aoe-ctl --version`, `man -l`, the bash completion, `systemd-analyze verify` and
//! `security` on the units, `daemon --check` on the conffile),
//! purged, and nothing of it left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup;

const PACKAGE: &str = "aoe-ctl";
const UNITS: &[&str] = &["aoe-ctl.service", "aoe-vblade@.service"];

/// Build the binary, its man pages and completions, then the .deb; returns its path.
pub fn build() -> Result<PathBuf> {
    let root = aoe_integration::workspace_root();
    let docs = root.join("target/release/package-docs");
    crate::cargo(&[
        "run",
        "--quiet",
        "--release",
        "-p",
        PACKAGE,
        "--example",
        "package-docs",
        "--",
        docs.to_str().unwrap(),
    ])?;
    // Debian ships man pages gzipped (-n: no name or time in the header, so the same page
    // gives the same bytes); cargo-deb leaves generated ones as they are.
    let pages: Vec<PathBuf> = std::fs::read_dir(docs.join("man"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "8"))
        .collect();
    let ok = Command::new("gzip")
        .args(["-9nf"])
        .args(&pages)
        .status()
        .context("running gzip")?
        .success();
    if !ok {
        bail!("gzip of the man pages failed");
    }
    let out_dir = root.join("target/debian");
    let out = Command::new(setup::cargo_deb())
        .args(["deb", "-p", PACKAGE, "--no-build", "--strip", "-o"])
        .arg(&out_dir)
        .current_dir(&root)
        .output()
        .context("running cargo-deb")?;
    if !out.status.success() {
        bail!(
            "cargo-deb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // cargo-deb prints the path of the package it wrote.
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo-deb named no .deb")?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Run `program ARGS`, failing with its output when it fails; returns stdout.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("running {program}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{program} {} failed:\n{}", args.join(" "), text.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", PACKAGE])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_prefix("install ok installed ").map(str::to_string)
}

/// The package test. Refuses to run where an aoe-ctl package or a /usr/sbin/aoe-ctl is
/// already there: it would replace (and then remove) what a developer installed.
pub fn test(deb: &Path) -> Result<()> {
    if let Some(v) = installed_version() {
        bail!("package test: an aoe-ctl package ({v}) is installed here; remove it first (dpkg -r aoe-ctl)");
    }
    if Path::new("/usr/sbin/aoe-ctl").exists() {
        bail!(
            "package test: /usr/sbin/aoe-ctl exists and belongs to no package; move it away first"
        );
    }
    let deb = deb.to_str().context("package path is not UTF-8")?;
    // Errors fail; warnings are listed (docs/operations.md says which remain and why).
    let lint = run(
        "lintian",
        &["--fail-on", "error", "--no-tag-display-limit", deb],
    )?;
    for l in lint.lines() {
        println!("package: lintian: {l}");
    }
    run("dpkg", &["-i", deb])?;
    let files = run("dpkg", &["-L", PACKAGE]);
    let checked = match &files {
        Ok(f) => check_installed(f),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let purged = run("dpkg", &["--purge", PACKAGE]);
    checked?;
    purged?;
    if let Some(v) = installed_version() {
        bail!("package test: aoe-ctl {v} still installed after dpkg --purge");
    }
    // Every file it installed is gone, and the directories only it had (/etc/aoe).
    let files = files?;
    let left: Vec<&str> = files
        .lines()
        .filter(|f| {
            let p = Path::new(f);
            p.is_file() || p.is_symlink() || (p.is_dir() && f.contains("aoe"))
        })
        .collect();
    if !left.is_empty() {
        bail!("package test: left after dpkg --purge: {}", left.join(" "));
    }
    println!("package: purged, nothing left");
    Ok(())
}

/// With the package installed: what it ships works, from where it is installed.
fn check_installed(files: &str) -> Result<()> {
    let version = run("/usr/sbin/aoe-ctl", &["--version"])?;
    if version.trim() != format!("aoe-ctl {}", env!("CARGO_PKG_VERSION")) {
        bail!(
            "package test: /usr/sbin/aoe-ctl --version says {:?}",
            version.trim()
        );
    }
    let mut pages = 0;
    for page in files.lines().filter(|f| f.starts_with("/usr/share/man/")) {
        if !page.ends_with(".gz") && !Path::new(page).is_file() {
            continue;
        }
        if Path::new(page).is_dir() {
            continue;
        }
        let text = run("man", &["-l", "-P", "cat", page])?;
        if !text.contains("NAME") {
            bail!("package test: man -l {page} shows no NAME section");
        }
        pages += 1;
    }
    if pages < 2 {
        bail!("package test: {pages} man pages installed");
    }
    for unit in UNITS {
        let path = format!("/usr/lib/systemd/system/{unit}");
        if !files.lines().any(|f| f == path) {
            bail!("package test: {path} is not in the package");
        }
        // A template is checked through an instance of it.
        let checked = if unit.ends_with("@.service") {
            unit.replace("@.service", "@example.service")
        } else {
            unit.to_string()
        };
        verify_unit(&path, &checked)?;
    }
    for needed in [
        "/etc/aoe/exports.toml",
        "/usr/share/bash-completion/completions/aoe-ctl",
        "/usr/share/zsh/vendor-completions/_aoe-ctl",
        "/usr/share/fish/vendor_completions.d/aoe-ctl.fish",
        "/usr/share/doc/aoe-ctl/operations.md",
        "/usr/share/doc/aoe-ctl/copyright",
    ] {
        if !files.lines().any(|f| f == needed) {
            bail!("package test: {needed} is not in the package");
        }
    }
    // The bash completion loads and registers itself (zsh and fish are not installed here).
    let complete = run(
        "bash",
        &[
            "-c",
            ". /usr/share/bash-completion/completions/aoe-ctl && complete -p aoe-ctl",
        ],
    )?;
    if !complete.trim_end().ends_with(" aoe-ctl") {
        bail!(
            "package test: the bash completion registers {:?}",
            complete.trim()
        );
    }
    let check = run(
        "/usr/sbin/aoe-ctl",
        &["daemon", "--check", "--config", "/etc/aoe/exports.toml"],
    )?;
    println!(
        "package: installed: {}, {pages} man pages, units verified; {}",
        version.trim(),
        check.trim()
    );
    Ok(())
}

/// `systemd-analyze verify` (offline: systemd need not be PID 1) and the exposure score of
/// `systemd-analyze security --offline`.
fn verify_unit(path: &str, name: &str) -> Result<()> {
    // verify wants the file under the name it is checked as (an instance for a template).
    let dir = std::env::temp_dir().join(format!("aoe-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(name);
    std::fs::copy(path, &copy)?;
    let copy_s = copy.to_str().unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no", copy_s])
        .output();
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", "--no-pager", copy_s],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let out = verified.context("running systemd-analyze verify")?;
    // Unknown keys and bad values are only warnings to systemd ("ignoring"): any word
    // from verify fails the test.
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !text.trim().is_empty() {
        bail!("systemd-analyze verify {name}: {}", text.trim());
    }
    let score = security?
        .lines()
        .rfind(|l| l.contains("Overall exposure level"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    println!("package: {name}: systemd-analyze verify clean; {score}");
    Ok(())
}
