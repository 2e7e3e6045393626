//! Growing an export under a mounted filesystem, with the Linux initiator: ext4 on e1.2 in
//! the guest (resize-init.sh), the image grown on the host twice while `aoe-ctl export`
//! serves it, the guest revalidating and growing the filesystem online each time, then a
//! file that needs the new space written and read back after a remount. vblade cannot grow
//! an export, so there is no control run: the guest's own checks judge.

use std::cell::RefCell;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_integration::{aoe_ctl, spawn_in_env, TapLab};

use super::assets::Assets;
use super::guest::{self, Boot, Step};

pub const START_MB: u64 = 16;
pub const GROW1_MB: u64 = 24;
pub const GROW2_MB: u64 = 48;
const SECTOR: u64 = 512;

pub struct Outcome {
    pub failures: Vec<String>,
    /// What the host did at the guest's requests (the guest's lines are printed as they come).
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// The host side of `AOE-GUEST HOST <n> grow|grow-resize <MiB>`.
fn grow(lab: &TapLab, env: &[String], image: &Path, verb: &str, mib: u64) -> Result<String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)?
        .set_len(mib << 20)?;
    if verb == "grow" {
        // Nothing more: the guest's revalidate (an IDENTIFY) makes the target look.
        return Ok(format!(
            "image grown to {mib} MiB, nothing else done on the host"
        ));
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns, "env"])
        .args(env)
        .arg(aoe_ctl())
        .args(["resize", "--target", "e1.2"])
        .output()
        .context("running aoe-ctl resize")?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "N -> M sectors", or "M sectors, unchanged" when the daemon's own look (every second)
    // was first: either way M is served when the command returns.
    let want = format!(" {} sectors", (mib << 20) / SECTOR);
    if !out.status.success() || !said.contains(&want) {
        bail!(
            "aoe-ctl resize said {said:?} {:?}, not {want:?}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format!("aoe-ctl resize: {said}"))
}

pub fn run(assets: &Assets) -> Result<Outcome> {
    let lab = TapLab::new(1500)?;
    let image = lab.dir.join("disk.img");
    std::fs::File::create(&image)?.set_len(START_MB << 20)?;
    let run = lab.dir.join("run");
    std::fs::create_dir_all(&run)?;
    let env = vec![format!("AOE_RUN_DIR={}", run.display())];
    let target = spawn_in_env(
        &lab.ns,
        &env,
        &[
            "export",
            "--shelf",
            "1",
            "--slot",
            "2",
            "--iface",
            &lab.tap,
            image.to_str().unwrap(),
        ],
    )?;
    let append = format!(
        "console=ttyS0 quiet panic=-1 target=e1.2 start_mb={START_MB} grow1_mb={GROW1_MB} \
         grow2_mb={GROW2_MB}"
    );
    let started = std::time::Instant::now();
    let errors = RefCell::new(Vec::new());
    let notes = RefCell::new(Vec::new());
    let serial = guest::run(
        &lab,
        &Boot {
            kernel: &assets.kernel,
            initrd: Some(&assets.resize_initramfs),
            append,
            memory: "512M",
            capture: None,
            extra_taps: &[],
        },
        Duration::from_secs(300),
        |l| {
            // As it happens: a stall shows where it stopped.
            if l.starts_with("AOE-GUEST") {
                println!("interop:   [{:6.1} s] {l}", started.elapsed().as_secs_f64());
            }
            if let Some(req) = l.strip_prefix("AOE-GUEST HOST ") {
                let mut w = req.split_whitespace();
                let (n, verb, arg) = (
                    w.next().unwrap_or(""),
                    w.next().unwrap_or(""),
                    w.next().unwrap_or(""),
                );
                let how =
                    match arg
                        .parse()
                        .map_err(anyhow::Error::from)
                        .and_then(|mib| match verb {
                            "grow" | "grow-resize" => grow(&lab, &env, &image, verb, mib),
                            _ => bail!("no such host step"),
                        }) {
                        Ok(note) => {
                            notes.borrow_mut().push(note);
                            "ok"
                        }
                        Err(e) => {
                            errors
                                .borrow_mut()
                                .push(format!("host {verb} {arg}: {e:#}"));
                            "error"
                        }
                    };
                return Step::Answer(format!("ACK {n} {how}"));
            }
            if l.starts_with("AOE-GUEST DONE") || l.starts_with("AOE-GUEST FAIL") {
                Step::Done
            } else {
                Step::Go
            }
        },
    )?;
    let log = target.stop().unwrap_or_default();
    let mut failures = errors.into_inner();
    let notes = notes.into_inner();
    let mut big = None;
    let mut done = false;
    for l in &serial.lines {
        let Some(l) = l.strip_prefix("AOE-GUEST ") else {
            continue;
        };
        if let Some(why) = l.strip_prefix("FAIL ") {
            failures.push(format!("guest: {why}"));
        } else if let Some(b) = l.strip_prefix("big ") {
            big = b.split_whitespace().nth(1).map(str::to_string);
        } else if l == "DONE" {
            done = true;
        }
    }
    if !done && !failures.iter().any(|f| f.starts_with("guest:")) {
        let tail: Vec<&str> = serial
            .lines
            .iter()
            .rev()
            .take(5)
            .map(|s| s.as_str())
            .collect();
        failures.push(format!(
            "guest did not finish{} (last lines: {tail:?})",
            if serial.timed_out { " in time" } else { "" }
        ));
    }
    if done {
        host_checks(&image, big.as_deref(), &mut failures)?;
    }
    if !failures.is_empty() && !log.trim().is_empty() {
        failures.push(format!("aoe-ctl said: {}", log.trim()));
    }
    Ok(Outcome {
        failures,
        notes,
        seconds: serial.elapsed.as_secs_f64(),
    })
}

/// On the host, after the guest is gone: the image has its last size, its filesystem is
/// clean, and debugfs reads the guest's big file as the guest wrote it.
fn host_checks(image: &Path, big: Option<&str>, failures: &mut Vec<String>) -> Result<()> {
    let len = std::fs::metadata(image)?.len();
    if len != GROW2_MB << 20 {
        failures.push(format!("the image is {len} bytes, not {} MiB", GROW2_MB));
    }
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .context("running e2fsck")?;
    if !fsck.status.success() {
        failures.push(format!(
            "e2fsck -fn on the host: {}",
            String::from_utf8_lossy(&fsck.stdout).trim()
        ));
    }
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "debugfs -R 'cat /big' '{}' 2>/dev/null | sha256sum",
                image.display()
            ),
        ])
        .output()?;
    let read = String::from_utf8_lossy(&out.stdout);
    let read = read.split_whitespace().next().unwrap_or("");
    if Some(read) != big {
        failures.push(format!(
            "debugfs reads /big as sha256 {read}, the guest wrote {big:?}"
        ));
    }
    Ok(())
}
