//! `aoe-ctl discover`: every target on the segment, one line each, like aoe-stat.

use std::time::Duration;

use anyhow::Result;

use super::client::Client;
use crate::net::format_mac;

pub fn run(iface: &str, wait: Duration) -> Result<usize> {
    let mut c = Client::open(iface)?;
    let mut targets = c.query_config(0xFFFF, 0xFF, wait)?;
    targets.sort_by_key(|t| (t.addr.shelf, t.addr.slot));
    for t in &targets {
        let size = match c.identify(t) {
            Ok(id) => format!("{:.3}GB", id.sectors as f64 * 512.0 / 1e9),
            Err(_) => "?GB".to_string(),
        };
        println!(
            "e{}.{}  {}  {}  {}  bufcnt {}  {} sectors/frame  \"{}\"",
            t.addr.shelf,
            t.addr.slot,
            size,
            iface,
            format_mac(&t.addr.dst),
            t.buffers,
            t.max_sectors,
            String::from_utf8_lossy(&t.config).escape_default()
        );
    }
    if targets.is_empty() {
        eprintln!("no AoE targets answered on {iface}");
    }
    Ok(targets.len())
}
