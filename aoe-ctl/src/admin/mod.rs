//! Commands for a second process while a target runs: they read and edit the pinned maps
//! (`crate::pinned`), never the daemon's memory.

pub mod access;
pub mod stats;
pub mod status;

use anyhow::{bail, Result};
use aoe_common::maps::ExportKey;

use crate::pinned::{self, Served};

/// The interfaces serving `target`; an error naming where we looked when none does.
pub fn serving(target: (u16, u8)) -> Result<Vec<Served>> {
    let key = ExportKey::new(target.0, target.1);
    let found: Vec<Served> = Served::all()?
        .into_iter()
        .filter(|i| {
            i.records
                .iter()
                .any(|r| ExportKey::new(r.shelf, r.slot) == key)
        })
        .collect();
    if found.is_empty() {
        bail!(
            "e{}.{} is not served by a running aoe-ctl (looked in {}; set AOE_BPFFS if its \
             bpffs is elsewhere)",
            target.0,
            target.1,
            pinned::root().display()
        );
    }
    Ok(found)
}

pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}
