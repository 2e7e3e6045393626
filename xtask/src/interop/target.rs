//! The two targets every interop run can face: ours, and Debian's vblade as the control.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use aoe_integration::{spawn_in, Proc, TapLab};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AoeCtl,
    Vblade,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::AoeCtl => "aoe-ctl",
            Kind::Vblade => "vblade",
        }
    }
}

pub enum Running {
    Ours(Proc),
    Vblade(Child),
}

/// Export `image` as e1.2 on the lab's tap.
/// `extra`: more options for aoe-ctl export.
pub fn start(kind: Kind, lab: &TapLab, image: &Path, extra: &str) -> Result<Running> {
    let img = image.to_str().unwrap();
    match kind {
        Kind::AoeCtl => {
            let mut args = vec!["export", "--shelf", "1", "--slot", "2", "--iface", &lab.tap];
            args.extend(extra.split_whitespace());
            args.push(img);
            Ok(Running::Ours(spawn_in(&lab.ns, &args)?))
        }
        Kind::Vblade => {
            let child = lab
                .command("vblade")
                .args(["1", "2", &lab.tap, img])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting vblade")?;
            // vblade prints nothing when ready; its socket is open within milliseconds.
            std::thread::sleep(Duration::from_millis(300));
            Ok(Running::Vblade(child))
        }
    }
}

impl Running {
    /// Stop it; returns what it printed on stderr.
    pub fn stop(self) -> String {
        match self {
            Running::Ours(p) => p.stop().unwrap_or_default(),
            Running::Vblade(mut c) => {
                let _ = c.kill();
                c.wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            }
        }
    }
}
