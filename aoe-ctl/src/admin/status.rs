//! `aoe-ctl status`: what runs where.

use anyhow::Result;
use serde_json::json;

use super::format_duration;
use crate::pinned::{self, Served, FLAG_DIRECT, FLAG_READ_ONLY, FLAG_WRITE_BACK};

pub fn run(as_json: bool) -> Result<()> {
    let ifaces = Served::all()?;
    let now = pinned::unix_now();
    if as_json {
        let v: Vec<_> = ifaces
            .iter()
            .map(|i| {
                json!({
                    "interface": i.name,
                    "mode": i.mode(),
                    "queues": i.info.queues,
                    "mtu": i.info.mtu,
                    "removed": i.info.removed,
                    "pid": i.info.pid,
                    "uptime_s": now.saturating_sub(i.info.started),
                    "exports": i.records.iter().map(|r| json!({
                        "target": format!("e{}.{}", r.shelf, r.slot),
                        "path": pinned::text(&r.path),
                        "sectors": r.sectors,
                        "store_sectors": r.store_sectors,
                        "offset": r.offset,
                        "buffers": r.buffers,
                        "read_only": r.flags & FLAG_READ_ONLY != 0,
                        "write_back": r.flags & FLAG_WRITE_BACK != 0,
                        "direct": r.flags & FLAG_DIRECT != 0,
                        "uptime_s": now.saturating_sub(r.started),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "interfaces": v }))?
        );
        return Ok(());
    }
    if ifaces.is_empty() {
        println!(
            "no aoe-ctl target is running (looked in {})",
            pinned::root().display()
        );
        return Ok(());
    }
    for i in &ifaces {
        println!(
            "{}: {}, {} queue{}, mtu {}, pid {}, up {}{}",
            i.name,
            i.mode(),
            i.info.queues,
            if i.info.queues == 1 { "" } else { "s" },
            i.info.mtu,
            i.info.pid,
            format_duration(now.saturating_sub(i.info.started)),
            match i.info.removed {
                0 => String::new(),
                n => format!(", removed {n}x and back"),
            }
        );
        for r in &i.records {
            let mut opts = vec![];
            if r.flags & FLAG_READ_ONLY != 0 {
                opts.push("read-only".to_string());
            }
            if r.flags & FLAG_WRITE_BACK != 0 {
                opts.push("write-back".to_string());
            }
            if r.flags & FLAG_DIRECT != 0 {
                opts.push("direct".to_string());
            }
            if r.offset != 0 {
                opts.push(format!("offset {}", r.offset));
            }
            // Both sizes when they differ: the store shrank under the export.
            let store = match r.store_sectors {
                s if s < r.sectors => format!(" (store shrank to {s}: I/O past it fails)"),
                _ => String::new(),
            };
            println!(
                "  e{}.{}  {}  {} sectors{store}, {} buffers{}{}, up {}",
                r.shelf,
                r.slot,
                pinned::text(&r.path),
                r.sectors,
                r.buffers,
                if opts.is_empty() { "" } else { ", " },
                opts.join(", "),
                format_duration(now.saturating_sub(r.started))
            );
        }
    }
    Ok(())
}
