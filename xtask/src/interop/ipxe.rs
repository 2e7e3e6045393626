//! iPXE boots a machine from an AoE export: `sanboot aoe:e1.2` loads our boot sector
//! (bootsector.S), which prints a marker on the serial port and the string it reads from
//! sector 1 through int 13h.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_integration::TapLab;

use super::assets::Assets;
use super::guest::{self, Boot, Step};
use super::target::{self, Kind};

const BOOT_SOURCE: &str = include_str!("bootsector.S");
/// iPXE guesses xx/255/63 geometry without a partition table: below 16065 sectors the disk
/// has 0 cylinders and every int 13h read fails before a frame is sent.
const IMAGE_BYTES: u64 = 16 << 20;

pub struct Outcome {
    pub failures: Vec<String>,
    pub seconds: f64,
}

/// Assemble the boot sector (GNU as + ld, from binutils).
fn boot_sector(dir: &std::path::Path) -> Result<Vec<u8>> {
    let src = dir.join("bootsector.S");
    std::fs::write(&src, BOOT_SOURCE)?;
    let obj = dir.join("bootsector.o");
    let bin = dir.join("bootsector.bin");
    for (prog, args) in [
        (
            "as",
            vec!["--32", "-o", obj.to_str().unwrap(), src.to_str().unwrap()],
        ),
        (
            "ld",
            vec![
                "-m",
                "elf_i386",
                "-Ttext",
                "0x7c00",
                "--oformat",
                "binary",
                "-o",
                bin.to_str().unwrap(),
                obj.to_str().unwrap(),
            ],
        ),
    ] {
        let out = Command::new(prog)
            .args(&args)
            .output()
            .with_context(|| format!("running {prog} (binutils)"))?;
        if !out.status.success() {
            bail!(
                "assembling the boot sector: {prog}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let code = std::fs::read(&bin)?;
    if code.len() != 512 || code[510..] != [0x55, 0xAA] {
        bail!("the boot sector assembled to {} bytes", code.len());
    }
    Ok(code)
}

pub fn run(assets: &Assets, kind: Kind, export_args: &str) -> Result<Outcome> {
    let lab = TapLab::new(1500)?;
    let image = lab.dir.join("boot.img");
    // A fresh string per run in sector 1, so a stale image cannot pass.
    let nonce = format!("sector-one-{:x}", std::process::id() ^ 0x5eed_1bad);
    {
        let mut f = std::fs::File::create(&image)?;
        f.write_all(&boot_sector(&lab.dir)?)?;
        let mut s1 = nonce.clone().into_bytes();
        s1.resize(512, 0);
        f.write_all(&s1)?;
        f.set_len(IMAGE_BYTES)?;
    }
    let running = target::start(kind, &lab, &image, export_args)?;
    let serial = guest::run(
        &lab,
        &Boot {
            kernel: &assets.ipxe,
            initrd: None,
            append: "ifopen net0 && sanboot aoe:e1.2".into(),
            memory: "256M",
            capture: None,
            extra_taps: &[],
        },
        Duration::from_secs(90),
        |l| {
            if l.contains("AOE-BOOT-SECTOR1") {
                Step::Done
            } else {
                Step::Go
            }
        },
    )?;
    let log = running.stop();
    let mut failures = Vec::new();
    if !serial.lines.iter().any(|l| l.contains("AOE-BOOT-MARKER")) {
        failures.push(format!(
            "no boot marker on the serial console{} ({} said: {})",
            if serial.timed_out { " in 90 s" } else { "" },
            kind.name(),
            log.trim()
        ));
    } else if !serial
        .lines
        .iter()
        .any(|l| l.contains(&format!("AOE-BOOT-SECTOR1 {nonce}")))
    {
        failures.push(format!(
            "booted, but sector 1 read through int 13h was not {nonce:?}: {:?}",
            serial.lines.last()
        ));
    }
    Ok(Outcome {
        failures,
        seconds: serial.elapsed.as_secs_f64(),
    })
}
