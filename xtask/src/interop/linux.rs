//! One run of the Linux kernel's aoe driver (in a QEMU guest) against a target: the guest's
//! checks (guest-init.sh), then the host's look at the image and at the capture.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use aoe_integration::TapLab;

use super::assets::Assets;
use super::capture::{self, Capture};
use super::guest::{self, Boot, Step};
use super::target::{self, Kind};

const IMAGE_MB: u64 = 64;
const FS_KB: u64 = 16 * 1024;
const PATTERN_AT_MB: u64 = 24;
const PATTERN_MB: u64 = 32;
const FILE_MB: u64 = 3;
const SECTOR: u64 = 512;

pub struct Outcome {
    /// Everything that went wrong; empty means the run passed.
    pub failures: Vec<String>,
    pub write_mbs: Option<f64>,
    pub read_mbs: Option<f64>,
    pub payload: Option<u64>,
    pub capture: Option<Capture>,
    pub seconds: f64,
}

pub fn run(assets: &Assets, kind: Kind, mtu: u32, export_args: &str) -> Result<Outcome> {
    let lab = TapLab::new(mtu)?;
    let image = lab.dir.join("disk.img");
    std::fs::File::create(&image)?.set_len(IMAGE_MB << 20)?;
    let pcap = lab.dir.join("link.pcap");
    let running = target::start(kind, &lab, &image, export_args)?;
    let append = format!(
        "console=ttyS0 quiet panic=-1 stall_after=40 mtu={mtu} target=e1.2 pattern_mb={PATTERN_MB} \
         pattern_at_mb={PATTERN_AT_MB} fs_kb={FS_KB} file_mb={FILE_MB}"
    );
    let serial = guest::run(
        &lab,
        &Boot {
            kernel: &assets.kernel,
            initrd: Some(&assets.initramfs),
            append,
            memory: "512M",
            capture: Some(&pcap),
            extra_taps: &[],
        },
        Duration::from_secs(90),
        |l| {
            if l.starts_with("AOE-GUEST DONE") || l.starts_with("AOE-GUEST FAIL") {
                Step::Done
            } else {
                Step::Go
            }
        },
    )?;
    let log = running.stop();

    let said: HashMap<&str, &str> = serial
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("AOE-GUEST "))
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    let mut failures = Vec::new();
    if let Some(why) = said.get("FAIL") {
        failures.push(format!("guest: {why}"));
    } else if !said.contains_key("DONE") {
        let tail: Vec<&str> = serial
            .lines
            .iter()
            .rev()
            .take(5)
            .map(|s| s.as_str())
            .collect();
        failures.push(format!(
            "guest did not finish{} (last lines: {:?})",
            if serial.timed_out { " in time" } else { "" },
            tail
        ));
    }
    let num = |k: &str| said.get(k).and_then(|v| v.trim().parse::<f64>().ok());
    let size = num("size").map(|v| v as u64);
    let expected_sectors = (IMAGE_MB << 20) / SECTOR;
    if let Some(size) = size {
        if size != expected_sectors {
            failures.push(format!(
                "guest sees {size} sectors, the export has {expected_sectors}"
            ));
        }
    }
    let payload = num("payload").map(|v| v as u64);
    let want_payload = ((mtu as u64 - 36) / SECTOR).min(255) * SECTOR;
    if said.contains_key("DONE") && payload != Some(want_payload) {
        failures.push(format!(
            "driver payload {payload:?} bytes per frame, expected {want_payload}"
        ));
    }

    if said.contains_key("DONE") {
        host_checks(&image, &said, &mut failures)?;
    }
    let capture = match capture::analyze(&pcap) {
        Ok(c) => Some(c),
        Err(e) => {
            failures.push(format!("capture: {e:#}"));
            None
        }
    };
    if !failures.is_empty() && !log.trim().is_empty() {
        failures.push(format!("{} said: {}", kind.name(), log.trim()));
    }
    Ok(Outcome {
        failures,
        write_mbs: num("write_mbs"),
        read_mbs: num("read_mbs"),
        payload,
        capture,
        seconds: serial.elapsed.as_secs_f64(),
    })
}

/// On the host, after the guest is gone: the pattern is at its offset in the image, the
/// filesystem is clean, and debugfs reads the guest's file.
fn host_checks(image: &Path, said: &HashMap<&str, &str>, failures: &mut Vec<String>) -> Result<()> {
    let region = sha256_of(&format!(
        "dd if='{}' bs=1M skip={PATTERN_AT_MB} count={PATTERN_MB} 2>/dev/null",
        image.display()
    ))?;
    if Some(region.as_str()) != said.get("pattern").map(|s| s.trim()) {
        failures.push(format!(
            "image at {PATTERN_AT_MB} MiB holds sha256 {region}, the guest wrote {:?}",
            said.get("pattern")
        ));
    }
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .context("running e2fsck")?;
    if !fsck.status.success() {
        failures.push(format!(
            "e2fsck -fn: {}",
            String::from_utf8_lossy(&fsck.stdout).trim()
        ));
    }
    let file = sha256_of(&format!(
        "debugfs -R 'cat /file' '{}' 2>/dev/null",
        image.display()
    ))?;
    let wrote = said.get("file").map(|s| s.trim());
    if Some(file.as_str()) != wrote || said.get("file_again").map(|s| s.trim()) != wrote {
        failures.push(format!(
            "file: guest wrote {wrote:?}, read back {:?} after remount, debugfs reads {file}",
            said.get("file_again")
        ));
    }
    Ok(())
}

fn sha256_of(pipeline: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("{pipeline} | sha256sum")])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}
