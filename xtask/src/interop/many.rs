//! Our own initiator against one daemon serving thousands of exports on one interface: how
//! long the daemon takes to start, what it holds (RSS, the kernel table's memory), how long
//! `aoe-ctl discover` needs to hear every export, and what one discovery costs the segment.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aoe_integration::{aoe_ctl, Lab};

/// How long one discovery collects replies, in milliseconds: the figures at each.
const WAITS_MS: [u64; 3] = [250, 1000, 3000];

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
    // Up: as many exports answer as a moment ago (the daemon opens them in turn).
    let heard = |wait: u64| -> Result<(usize, f64, [u64; 4])> {
        let before = link_counters(&lab)?;
        let t = Instant::now();
        let out = lab.discover(&["--wait-ms", &wait.to_string()])?;
        let secs = t.elapsed().as_secs_f64();
        let after = link_counters(&lab)?;
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('e'))
            .count();
        let mut d = [0; 4];
        for k in 0..4 {
            d[k] = after[k] - before[k];
        }
        Ok((n, secs, d))
    };
    let mut last = 0;
    let start_s = loop {
        let (n, _, _) = heard(500)?;
        if n > 0 && n == last {
            break t0.elapsed().as_secs_f64();
        }
        last = n;
        if t0.elapsed().as_secs() > 300 || daemon.try_wait()?.is_some() {
            let _ = daemon.kill();
            bail!(
                "the daemon was not up within {:.0} s ({last} exports answered): {}",
                t0.elapsed().as_secs_f64(),
                std::fs::read_to_string(lab.dir.join("daemon.err"))
                    .unwrap_or_default()
                    .trim()
            );
        }
    };
    let rss_kb = status_kb(pid, "VmRSS:")?;
    let map_kb = map_memlock(pid)? / 1024;
    let mut rows = Vec::new();
    for wait in WAITS_MS {
        let (n, secs, d) = heard(wait)?;
        rows.push(format!(
            "--wait-ms {wait}: {n} heard in {secs:.2} s, {} frames / {} KiB out, {} frames / {} KiB back",
            d[0],
            d[1] / 1024,
            d[2],
            d[3] / 1024
        ));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    // Every export answers one discovery (tests/tests/scale.rs holds it to that too).
    if last < count {
        bail!("one discovery heard {last} of {count} exports");
    }
    Ok(format!(
        "discovery of {count} exports on one daemon: all heard {start_s:.1} s after start, \
         daemon RSS {} MiB, kernel maps {} MiB; aoe-ctl discover {}",
        rss_kb / 1024,
        map_kb / 1024,
        rows.join("; ")
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
