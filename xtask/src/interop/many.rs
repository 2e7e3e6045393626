//! Our own initiator against one daemon serving thousands of exports on one interface: how
//! long the daemon takes to start, what it holds (RSS, the kernel table's memory), how long
//! `aoe-ctl discover` needs to hear every export, and what one discovery costs the segment.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aoe_integration::{aoe_ctl, Lab};

/// Replies to wait for before giving up on hearing them all, in milliseconds.
const WAITS_MS: [u64; 5] = [100, 250, 500, 1000, 2000];

pub fn run(count: usize) -> Result<String> {
    let lab = Lab::new()?;
    let _peer = lab.start_peer(&lab.initiator_if)?;
    let mut toml = String::new();
    for i in 0..count {
        // 200 slots per shelf, from shelf 100: a segment's shelves, each a rack's worth.
        let (shelf, slot) = (100 + i / 200, i % 200);
        let image = lab.image(&format!("e{shelf}.{slot}.img"), 1 << 20)?;
        toml.push_str(&format!(
            "[[export]]\nshelf = {shelf}\nslot = {slot}\ninterfaces = [{:?}]\npath = {:?}\n",
            lab.target_if,
            image.display().to_string()
        ));
    }
    let cfg = lab.dir.join("exports.toml");
    std::fs::write(&cfg, toml)?;
    let t0 = Instant::now();
    // Not spawn_live: it waits 20 s for the first line, and loading thousands of exports
    // takes longer (measured and reported here).
    let log_path = lab.dir.join("daemon.log");
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", &lab.target_ns, "env"])
        .args(lab.live_env()?)
        .arg(aoe_ctl())
        .args(["daemon", "--config", cfg.to_str().unwrap()])
        .stdout(std::fs::File::create(&log_path)?)
        .stderr(std::fs::File::create(lab.dir.join("daemon.err"))?)
        .spawn()
        .context("starting aoe-ctl daemon")?;
    let pid = daemon.id();
    // Up: the last export answers.
    let (shelf, slot) = (100 + (count - 1) / 200, (count - 1) % 200);
    let last = format!("e{shelf}.{slot}");
    let start_s = loop {
        let out = lab.discover(&["--wait-ms", "200"])?;
        if String::from_utf8_lossy(&out.stdout).contains(&last) {
            break t0.elapsed().as_secs_f64();
        }
        if t0.elapsed().as_secs() > 300 || daemon.try_wait()?.is_some() {
            let _ = daemon.kill();
            bail!(
                "the daemon did not serve {last} within {:.0} s: {}",
                t0.elapsed().as_secs_f64(),
                std::fs::read_to_string(lab.dir.join("daemon.err"))
                    .unwrap_or_default()
                    .trim()
            );
        }
    };
    let rss_kb = status_kb(pid, "VmRSS:")?;
    let map_kb = map_memlock(pid)? / 1024;

    let mut found_all = None;
    for wait in WAITS_MS {
        let before = link_counters(&lab)?;
        let t = Instant::now();
        let out = lab.discover(&["--wait-ms", &wait.to_string()])?;
        let secs = t.elapsed().as_secs_f64();
        let after = link_counters(&lab)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let heard = text
            .lines()
            .filter(|l| l.trim_start().starts_with('e'))
            .count();
        if heard >= count {
            let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            found_all = Some((wait, secs, delta));
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let log = std::fs::read_to_string(lab.dir.join("daemon.err")).unwrap_or_default();
    let Some((wait, secs, d)) = found_all else {
        bail!(
            "aoe-ctl discover never heard all {count} exports (waited up to {} ms); daemon said: {}",
            WAITS_MS[WAITS_MS.len() - 1],
            log.trim()
        );
    };
    Ok(format!(
        "discovery of {count} exports on one daemon: PASS  the last export answers {start_s:.1} s after start, RSS {} MiB, \
         kernel maps {} MiB; aoe-ctl discover heard all within --wait-ms {wait} ({secs:.2} s); \
         one discovery: {} frames / {} KiB out, {} frames / {} KiB back",
        rss_kb / 1024,
        map_kb / 1024,
        d[0],
        d[1] / 1024,
        d[2],
        d[3] / 1024
    ))
}

fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} for pid {pid}"))
}

/// Bytes the process's BPF maps lock (fdinfo `memlock` of every map fd).
fn map_memlock(pid: u32) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let s = std::fs::read_to_string(e?.path()).unwrap_or_default();
        if s.contains("map_type:") {
            total += s
                .lines()
                .find_map(|l| l.strip_prefix("memlock:")?.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// [tx packets, tx bytes, rx packets, rx bytes] of the initiator's interface.
fn link_counters(lab: &Lab) -> Result<[u64; 4]> {
    let read = |what: &str| -> Result<u64> {
        let p = format!("/sys/class/net/{}/statistics/{what}", lab.initiator_if);
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.initiator_ns, "cat", &p])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("reading {p}"))
    };
    Ok([
        read("tx_packets")?,
        read("tx_bytes")?,
        read("rx_packets")?,
        read("rx_bytes")?,
    ])
}
