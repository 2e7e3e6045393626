//! One daemon at the kernel table's capacity: 4,096 exports on one interface come up, and one
//! broadcast discovery hears every one of them (more replies than the worker has buffers, so
//! it answers in pieces as the kernel hands its sent buffers back).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aoe_common::maps::MAX_EXPORTS;
use aoe_integration::{aoe_ctl, Lab};

/// Exports one discovery hears: the distinct `eS.L` lines of `aoe-ctl discover`.
fn heard(lab: &Lab, wait_ms: u64) -> BTreeSet<String> {
    let out = lab
        .discover(&["--wait-ms", &wait_ms.to_string()])
        .expect("aoe-ctl discover");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('e'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn a_daemon_with_4096_exports_comes_up_and_one_discovery_hears_them_all() {
    serves_all("xdp");
}

/// The fallback path too. Its tx ring holds 4,096 frames, so this one guards the piecewise
/// answer rather than shows it (the XDP one failed before it: 2,049 of 4,096 heard).
#[test]
fn the_same_over_af_packet() {
    serves_all("afpacket");
}

fn serves_all(mode: &str) {
    let count = MAX_EXPORTS as usize;
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let mut toml = format!("mode = {mode:?}\n");
    let mut want = BTreeSet::new();
    for i in 0..count {
        // 200 slots a shelf, from shelf 100.
        let (shelf, slot) = (100 + i / 200, i % 200);
        let image = lab.image(&format!("e{shelf}.{slot}.img"), 1 << 20).unwrap();
        toml.push_str(&format!(
            "[[export]]\nshelf = {shelf}\nslot = {slot}\ninterfaces = [{:?}]\npath = {:?}\n",
            lab.target_if,
            image.display().to_string()
        ));
        want.insert(format!("e{shelf}.{slot}"));
    }
    let cfg = lab.dir.join("exports.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", &lab.target_ns, "env"])
        .args(lab.live_env().unwrap())
        .arg(aoe_ctl())
        .args(["daemon", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    // Up: the first export answers (the kernel table is filled before the data path starts).
    while heard(&lab, 200).is_empty() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited while starting"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no export answered within 120 s"
        );
    }
    let up = t0.elapsed();
    let got = heard(&lab, 3000);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let missing: Vec<&String> = want.difference(&got).take(5).collect();
    assert_eq!(
        got.len(),
        count,
        "one discovery heard {} of {count} exports (up after {up:.1?}); missing e.g. {missing:?}",
        got.len()
    );
    assert_eq!(got, want);
    eprintln!("{count} exports over {mode}: up after {up:.1?}, all heard by one discovery");
}
