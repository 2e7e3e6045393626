//! A network namespace holding one tap device: the segment between a QEMU guest (the
//! initiator, on the tap's other end) and a target running in the namespace.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::{ip, quiet_ipv6, unique_id};

pub struct TapLab {
    pub ns: String,
    pub tap: String,
    pub dir: PathBuf,
}

impl TapLab {
    pub fn new(mtu: u32) -> Result<TapLab> {
        let id = unique_id();
        let lab = TapLab {
            ns: format!("aoe-{id}-q"),
            tap: format!("aq{id}"),
            dir: std::env::temp_dir().join(format!("aoe-tap-{id}")),
        };
        std::fs::create_dir_all(&lab.dir)?;
        ip(&["netns", "add", &lab.ns])?;
        ip(&[
            "-n", &lab.ns, "tuntap", "add", "dev", &lab.tap, "mode", "tap",
        ])?;
        quiet_ipv6(&lab.ns, &lab.tap);
        ip(&[
            "-n",
            &lab.ns,
            "link",
            "set",
            &lab.tap,
            "mtu",
            &mtu.to_string(),
            "up",
        ])?;
        Ok(lab)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for TapLab {
    fn drop(&mut self) {
        // The tap goes with the namespace.
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
