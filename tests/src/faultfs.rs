//! faultfs in a test: `aoe-lab faultfs` mounted over a backing file, spoken to over its
//! control socket (the protocol is in aoe-lab/src/faultfs/control.rs), and a loop device on
//! its file where a test needs a block device (O_DIRECT alignment is known there, so a
//! target takes its write-around path; the FUSE file reports none).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::{sh, spawn_program, Proc};

/// A mounted faultfs: `file` is the image to serve; `backing` holds what a power cut
/// leaves. Unmounted, and its process stopped, on drop.
pub struct FaultFs {
    pub file: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    pub backing: PathBuf,
    proc: Option<Proc>,
}

/// What a power cut dropped: writes since the last sync, and their pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub dropped_writes: u64,
    pub dropped_pages: u64,
}

impl FaultFs {
    /// Mount faultfs over `backing` at `mountpoint` (made if missing); the file is
    /// `mountpoint/<backing's file name>`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<FaultFs> {
        std::fs::create_dir_all(mountpoint)?;
        let mut control = mountpoint.as_os_str().to_owned();
        control.push(".ctl");
        let control = PathBuf::from(control);
        let args = [
            "faultfs",
            "--backing",
            backing.to_str().context("backing path is not UTF-8")?,
            "--control",
            control.to_str().context("control path is not UTF-8")?,
            mountpoint.to_str().context("mountpoint is not UTF-8")?,
        ];
        // In the root network namespace: mounts are not per network namespace, and a
        // process started later in a lab namespace sees it.
        let proc = spawn_program(&crate::aoe_lab(), "", &[], &args)?;
        let name = backing.file_name().context("backing names no file")?;
        Ok(FaultFs {
            file: mountpoint.join(name),
            mountpoint: mountpoint.to_owned(),
            control,
            backing: backing.to_owned(),
            proc: Some(proc),
        })
    }

    /// Send one control command; its answer without `ok` (an `err` answer is an error).
    pub fn ask(&self, command: &str) -> Result<String> {
        let mut s = UnixStream::connect(&self.control)
            .with_context(|| format!("faultfs control socket {}", self.control.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(s, "{command}")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        let line = line.trim_end();
        match (line.strip_prefix("ok"), line.strip_prefix("err ")) {
            (Some(rest), _) => Ok(rest.trim_start().to_string()),
            (_, Some(why)) => bail!("faultfs {command:?}: {why}"),
            _ => bail!("faultfs {command:?}: answered {line:?}"),
        }
    }

    /// Arm a fault: `fail OP [at=BYTES] [len=BYTES] [errno=NAME|N] [times=N]` with OP read,
    /// write or sync, e.g. `fs.fail("write at=4096 len=512 errno=enospc")`.
    pub fn fail(&self, spec: &str) -> Result<()> {
        self.ask(&format!("fail {spec}")).map(drop)
    }

    /// Every request from now on waits until `ms` have passed.
    pub fn stall(&self, ms: u64) -> Result<()> {
        self.ask(&format!("stall ms={ms}")).map(drop)
    }

    /// Disarm every fault and end a stall.
    pub fn clear(&self) -> Result<()> {
        self.ask("clear").map(drop)
    }

    /// The counters (`reads`, `writes`, `syncs`, `injected`, `lost_pages`, `dirty_pages`,
    /// `unsynced_writes`, ...).
    pub fn stats(&self) -> Result<Stats> {
        Ok(Stats(pairs(&self.ask("stats")?)?))
    }

    /// Cut the power: what was not synced is dropped and every later request fails; then
    /// unmount. `backing` holds what survived; mount again to serve it.
    pub fn cut(&mut self) -> Result<Cut> {
        let cut = self.cut_power()?;
        self.unmount()?;
        Ok(cut)
    }

    /// Cut the power and leave the dead mount in place: a loop device on the file holds it
    /// open, so the cut comes first, then the detach, then `unmount`.
    pub fn cut_power(&mut self) -> Result<Cut> {
        let a = pairs(&self.ask("cut")?)?;
        let get = |k: &str| {
            a.iter()
                .find(|(n, _)| n == k)
                .map(|p| p.1)
                .ok_or_else(|| anyhow!("cut answered no {k}"))
        };
        Ok(Cut {
            dropped_writes: get("dropped_writes")?,
            dropped_pages: get("dropped_pages")?,
        })
    }

    /// Unmount and stop the process (what a drop does, with errors said).
    pub fn unmount(&mut self) -> Result<()> {
        let Some(proc) = self.proc.take() else {
            return Ok(());
        };
        // Busy for a moment after a process using it died (its last close): retry, then
        // detach it; the process's exit ends the connection for whoever still holds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut r = sh(Command::new("umount").arg(&self.mountpoint));
        while r.is_err() && Instant::now() < deadline && self.mounted() {
            std::thread::sleep(Duration::from_millis(50));
            r = sh(Command::new("umount").arg(&self.mountpoint));
        }
        if self.mounted() {
            let _ = sh(Command::new("umount").arg("-l").arg(&self.mountpoint));
        }
        proc.stop()?;
        if self.mounted() {
            bail!("{} is still mounted", self.mountpoint.display());
        }
        Ok(())
    }

    fn mounted(&self) -> bool {
        let Ok(m) = std::fs::read_to_string("/proc/self/mounts") else {
            return false;
        };
        let me = self.mountpoint.to_string_lossy();
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(me.as_ref()))
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// faultfs counters by name.
#[derive(Debug, Clone)]
pub struct Stats(pub Vec<(String, u64)>);

impl Stats {
    /// A counter (0 when faultfs has no such name).
    pub fn get(&self, name: &str) -> u64 {
        self.0.iter().find(|(n, _)| n == name).map_or(0, |p| p.1)
    }
}

fn pairs(s: &str) -> Result<Vec<(String, u64)>> {
    s.split_whitespace()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .with_context(|| format!("{w:?} is not key=value"))?;
            Ok((k.to_string(), v.parse().with_context(|| format!("{w:?}"))?))
        })
        .collect()
}

/// A loop device over a file, detached on drop.
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    /// `losetup --find --show [--sector-size N] FILE`.
    pub fn attach(file: &Path, sector_size: u32) -> Result<LoopDev> {
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(file)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!(
                "losetup {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDev { path })
    }

    pub fn detach(&mut self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        // Busy for a moment after its last user died: retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match sh(Command::new("losetup").arg("-d").arg(&self.path)) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}
