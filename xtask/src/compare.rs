//! `cargo xtask compare`: the same lab and the same client (`aoe-ctl verify`, AF_PACKET,
//! window 64, 2 sectors per frame) against Debian's vblade and against `aoe-ctl export`,
//! alternating, so both are measured in one run. Information, not a test.

use anyhow::Result;
use aoe_integration::{Lab, LabOptions};

const RUNS: usize = 3;

/// (write, read) MB/s of one target in one run.
type Rates = (f64, f64);
const BYTES: &str = "128M";

fn rates(out: &str) -> Rates {
    let rate = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split('(').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (rate("write:"), rate("read:"))
}

pub fn run(mtu: u32) -> Result<()> {
    let lab = Lab::with(LabOptions { mtu, queues: 1 })?;
    let image = lab.image("disk.img", 256 << 20)?;
    // The lab peer program stays attached for both targets, so the client pays the same.
    let _peer = lab.start_peer(&lab.initiator_if)?;
    let verify = || -> Result<Rates> {
        let v = lab.verify(BYTES, &[])?;
        anyhow::ensure!(
            v.status.success(),
            "verify failed: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        Ok(rates(&String::from_utf8_lossy(&v.stdout)))
    };
    let mut rows = Vec::new();
    for run in 1..=RUNS {
        let vblade = lab.start_vblade(&image, &["-b", "64"])?;
        let v = verify();
        drop(vblade);
        let v = v?;
        let ours = lab.start_export(&image, &["--buffers", "64"])?;
        let a = verify()?;
        drop(ours);
        println!(
            "run {run}: vblade write {:.0} read {:.0} MB/s | aoe-ctl write {:.0} read {:.0} MB/s",
            v.0, v.1, a.0, a.1
        );
        rows.push((v, a));
    }
    let n = rows.len() as f64;
    let mean = |pick: fn(&(Rates, Rates)) -> f64| rows.iter().map(pick).sum::<f64>() / n;
    let (vw, vr) = (mean(|r| r.0 .0), mean(|r| r.0 .1));
    let (aw, ar) = (mean(|r| r.1 .0), mean(|r| r.1 .1));
    println!(
        "mean:  write vblade {vw:.0} / aoe-ctl {aw:.0} MB/s ({:.2}x)",
        aw / vw
    );
    println!(
        "mean:  read  vblade {vr:.0} / aoe-ctl {ar:.0} MB/s ({:.2}x)",
        ar / vr
    );
    println!("(veth, MTU {mtu}, {BYTES} per run, one AF_PACKET client; client and targets share the CPUs)");
    Ok(())
}
