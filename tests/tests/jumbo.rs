//! Jumbo frames (MTU 9000: 17 sectors per frame, multi-buffer XDP and AF_XDP) and
//! multi-queue interfaces, end to end through the XDP path.

use aoe_integration::{Lab, LabOptions};

mod common;

use common::exit_count;

fn verified(lab: &Lab, bytes: &str) -> String {
    let v = lab.verify(bytes, &[]).unwrap();
    let out = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(
        v.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    out
}

#[test]
fn mtu_9000_moves_17_sector_frames() {
    let lab = Lab::with(LabOptions {
        mtu: 9000,
        queues: 1,
    })
    .unwrap();
    let img = lab.image("disk.img", 32 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &[]).unwrap();
    assert!(
        target.first_line.contains("xdp native"),
        "{}",
        target.first_line
    );
    let d = lab.discover(&[]).unwrap();
    let out = String::from_utf8_lossy(&d.stdout);
    assert!(out.contains("17 sectors/frame"), "{out}");
    let out = verified(&lab, "16M");
    assert!(out.contains("17 sectors/frame"), "{out}");
    assert!(out.contains("verify OK: 32768 sectors"), "{out}");
    // Byte-exact in the image too, across frame boundaries.
    let raw = std::fs::read(&img).unwrap();
    let mut want = vec![0u8; 512 * 40];
    aoe_ctl::initiator::verify::pattern(0x5eed, 0, &mut want);
    assert_eq!(&raw[..want.len()], &want[..]);
    let log = target.stop().unwrap();
    // Every write and read was a full frame (or the tail): far fewer than 2 per sector.
    let handled = exit_count(&log, "user space handled");
    assert!(handled < 2 * 32768 / 17 + 100, "{handled} frames: {log}");
}

#[test]
fn four_queues_each_get_a_worker() {
    let lab = Lab::with(LabOptions {
        mtu: 1500,
        queues: 4,
    })
    .unwrap();
    let img = lab.image("disk.img", 16 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &[]).unwrap();
    assert!(
        target.first_line.ends_with("4 queues"),
        "{}",
        target.first_line
    );
    let out = verified(&lab, "8M");
    assert!(out.contains("verify OK: 16384 sectors"), "{out}");
    target.stop().unwrap();
}
