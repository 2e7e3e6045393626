//! `aoe-ctl stats`: counters per export (kernel and user space) and per interface.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use aoe_common::maps::{counter, export_counter};
use aya::maps::PerCpuArray;
use serde_json::{json, Map, Value};

use crate::pinned::{Served, CACHE_STAT_NAMES, STAT_NAMES};

/// Kernel columns per export, named as in `export_counter`.
const KERNEL_NAMES: [&str; export_counter::COUNT as usize] = [
    "config_answered_kernel",
    "redirected_kernel",
    "dropped_acl_kernel",
    "dropped_config_mismatch_kernel",
    "cache_hits_kernel",
    "cache_misses_kernel",
    "cache_stale_kernel",
    "cache_torn_kernel",
    "cache_no_room_kernel",
];

fn per_cpu_sums(i: &Served, map: &str) -> Result<Vec<u64>> {
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(i.map(map)?))?;
    let n = m.len();
    (0..n).map(|k| Ok(m.get(&k, 0)?.iter().sum())).collect()
}

/// One snapshot: `{"exports": [...], "interfaces": [...]}`.
pub fn snapshot() -> Result<Value> {
    let mut exports: BTreeMap<(u16, u8), Map<String, Value>> = BTreeMap::new();
    let mut ifaces = vec![];
    for i in Served::all()? {
        let kernel_export = per_cpu_sums(&i, aoe_common::maps::MAP_EXPORT_COUNTERS)?;
        let kernel = per_cpu_sums(&i, aoe_common::maps::MAP_COUNTERS)?;
        let mut iv = Map::new();
        iv.insert("interface".into(), json!(i.name));
        iv.insert("mode".into(), json!(i.mode()));
        for (k, name) in counter::NAMES.iter().enumerate() {
            iv.insert((*name).into(), json!(kernel.get(k).copied().unwrap_or(0)));
        }
        iv.insert("handled_user".into(), json!(i.info.handled));
        iv.insert("replied_user".into(), json!(i.info.replied));
        iv.insert("dropped_socket_full".into(), json!(i.info.socket_dropped));
        iv.insert("interface_removed".into(), json!(i.info.removed));
        ifaces.push(Value::Object(iv));

        for r in &i.records {
            let e = exports.entry((r.shelf, r.slot)).or_insert_with(|| {
                // User-space counters belong to the export, whichever interface shows them.
                let mut m = Map::new();
                m.insert("target".into(), json!(format!("e{}.{}", r.shelf, r.slot)));
                m.insert("interfaces".into(), json!([]));
                for (name, v) in STAT_NAMES.iter().zip(r.stats) {
                    m.insert((*name).into(), json!(v));
                }
                for (name, v) in CACHE_STAT_NAMES.iter().zip(r.cache) {
                    m.insert((*name).into(), json!(v));
                }
                for name in KERNEL_NAMES {
                    m.insert(name.into(), json!(0u64));
                }
                m
            });
            if let Some(Value::Array(a)) = e.get_mut("interfaces") {
                a.push(json!(i.name));
            }
            let base = r.row as usize * export_counter::COUNT as usize;
            for (c, name) in KERNEL_NAMES.iter().enumerate() {
                let add = kernel_export.get(base + c).copied().unwrap_or(0);
                let v = e.get(*name).and_then(Value::as_u64).unwrap_or(0) + add;
                e.insert((*name).into(), json!(v));
            }
        }
    }
    let exports: Vec<Value> = exports
        .into_values()
        .map(|mut e| {
            let g = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
            // Every frame that reached the export: answered (config, kernel cache) or
            // dropped in the kernel, or handled in user space.
            let frames = g("frames")
                + g("config_answered_kernel")
                + g("cache_hits_kernel")
                + g("dropped_acl_kernel")
                + g("dropped_config_mismatch_kernel");
            let errors = g("errors_ata") + g("errors_aoe");
            e.insert("frames_total".into(), json!(frames));
            e.insert("errors".into(), json!(errors));
            Value::Object(e)
        })
        .collect();
    Ok(json!({ "exports": exports, "interfaces": ifaces }))
}

fn print_table(v: &Value) {
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>10} {:>14} {:>14} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "target",
        "frames",
        "reads",
        "cache_hit",
        "writes",
        "bytes_read",
        "bytes_written",
        "cfg_kern",
        "cfg_user",
        "errors",
        "drop_acl",
        "drop_cfg"
    );
    for e in v["exports"].as_array().into_iter().flatten() {
        let g = |k: &str| e[k].as_u64().unwrap_or(0);
        println!(
            "{:<8} {:>12} {:>10} {:>10} {:>10} {:>14} {:>14} {:>9} {:>9} {:>7} {:>9} {:>9}",
            e["target"].as_str().unwrap_or("?"),
            g("frames_total"),
            g("reads"),
            g("cache_hits_kernel"),
            g("writes"),
            g("bytes_read"),
            g("bytes_written"),
            g("config_answered_kernel"),
            g("config_answered_user"),
            g("errors"),
            g("dropped_acl_kernel") + g("dropped_acl_user"),
            g("dropped_config_mismatch_kernel") + g("dropped_config_mismatch_user"),
        );
    }
    for i in v["interfaces"].as_array().into_iter().flatten() {
        let g = |k: &str| i[k].as_u64().unwrap_or(0);
        println!(
            "{} ({}): seen {}, passed {}, redirected {}, dropped: broadcast ATA {}, acl {}, \
             socket full {}, no socket {}",
            i["interface"].as_str().unwrap_or("?"),
            i["mode"].as_str().unwrap_or("?"),
            g("seen"),
            g("passed"),
            g("redirected"),
            g("dropped_broadcast_ata"),
            g("dropped_acl"),
            g("dropped_socket_full"),
            g("no_socket"),
        );
    }
}

/// Print once, or every `interval` with `watch` (JSON: one object per line).
pub fn run(as_json: bool, watch: Option<Duration>) -> Result<()> {
    loop {
        let v = snapshot()?;
        if as_json {
            println!("{}", serde_json::to_string(&v)?);
        } else {
            if watch.is_some() {
                println!("--- {}", crate::pinned::unix_now());
            }
            print_table(&v);
        }
        match watch {
            Some(d) => std::thread::sleep(d),
            None => return Ok(()),
        }
    }
}

/// `--prometheus`: every running daemon's metrics, merged, in the text format.
pub fn prometheus() -> Result<()> {
    let all = crate::daemon::control::metrics_of_all()?;
    if all.is_empty() {
        anyhow::bail!(
            "no running aoe-ctl answered in {}",
            crate::daemon::control::run_dir().display()
        );
    }
    print!(
        "{}",
        crate::prometheus::render(&crate::prometheus::merge(all))
    );
    Ok(())
}
