//! Files a local user plants where root keeps its own: a link at the state file's temporary
//! name, which a config set from the segment would make root write through; and an overlay
//! log beside an image (a crashed snapshot's), which root replays into the image at start.
//! Root writes neither through the link nor the foreign log's records.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames;
use aoe_integration::Lab;

/// A config set from the segment, with `--state` in a directory anyone can write (here the
/// lab's) and a link planted at the temporary name the state file was once written through.
#[test]
fn a_config_set_never_writes_through_a_planted_link() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 4 << 20).unwrap();
    let dir = lab.dir.join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let state = dir.join("e12.state");
    let victim = lab.dir.join("victim");
    std::fs::write(&victim, "root's file\n").unwrap();
    std::os::unix::fs::symlink(&victim, state.with_extension("state.tmp")).unwrap();
    let (target, peer) = lab
        .start_target(&img, &["--state", state.to_str().unwrap()])
        .unwrap();
    let ifname = lab.initiator_if.clone();
    let rep = Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        c.timeout = Duration::from_secs(2);
        let t = c.find(1, 2).unwrap();
        c.request(&|b, tag| frames::config(b, &t.addr, tag, ConfigCommand::ForceSet, b"owned"))
            .unwrap()
    })
    .unwrap();
    assert_eq!(ConfigRepr::parse(&rep).unwrap().string, b"owned");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file\n");
    let m = std::fs::symlink_metadata(&state).unwrap();
    assert!(m.is_file(), "the state file is a file of its own");
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("6f776e6564"));
    drop((target, peer));

    // A link in place of the state file itself is refused at start: it must be a regular
    // file (root would read anything it points at, a FIFO that never ends included).
    std::fs::remove_file(&state).unwrap();
    std::os::unix::fs::symlink(&victim, &state).unwrap();
    let refused = lab
        .start_export(&img, &["--state", state.to_str().unwrap()])
        .map(|_| ())
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("regular file"),
        "{refused:#}"
    );
}

/// An overlay log at `<image>.aoe-overlay`: base `base` (bytes), one record of `byte` at `lba`.
fn plant_overlay(image: &Path, base: u64, lba: u64, byte: u8, owner: u32) {
    // The layout of serve/backend/overlay.rs: a header sector (magic, base), then records of a
    // header sector (magic, lba, count, FNV-1a of both and the data) and the data.
    let data = vec![byte; 512];
    let mut h = vec![0u8; 512];
    h[..8].copy_from_slice(b"AOEREC01");
    h[8..16].copy_from_slice(&lba.to_le_bytes());
    h[16..24].copy_from_slice(&1u64.to_le_bytes());
    let mut sum: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in h[..24].iter().chain(&data) {
        sum ^= u64::from(b);
        sum = sum.wrapping_mul(0x0100_0000_01b3);
    }
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    let mut log = vec![0u8; 512];
    log[..8].copy_from_slice(b"AOEOVL01");
    log[8..16].copy_from_slice(&base.to_le_bytes());
    log.extend_from_slice(&h);
    log.extend_from_slice(&data);
    let path = aoe_ctl::serve::backend::log_path(image);
    std::fs::write(&path, log).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(owner), None).unwrap();
}

/// A planted overlay log makes the export refuse to start, and nothing of it reaches the
/// image: one a user owns (its records anywhere), and root's own whose record lies outside
/// the export's window of the image (sectors 8..72: the record would land at sector 108).
#[test]
fn a_foreign_or_out_of_range_overlay_log_is_refused() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    for (owner, lba, why) in [
        (65534, 1, "owned by uid 65534"),
        (0, 100, "outside the export"),
    ] {
        plant_overlay(&img, 8 * 512, lba, 0xee, owner);
        let started = lab.start_export(&img, &["--offset", "8", "--length", "64"]);
        let e = match started {
            Ok(p) => panic!("served with a {why} overlay: {}", p.stop().unwrap()),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(why) && e.contains("aoe-overlay"), "{e}");
        let f = std::fs::File::open(&img).unwrap();
        let mut all = vec![0u8; 1 << 20];
        f.read_exact_at(&mut all, 0).unwrap();
        assert!(all.iter().all(|&b| b == 0), "{why}: nothing replayed");
        std::fs::remove_file(aoe_ctl::serve::backend::log_path(&img)).unwrap();
    }
    // Root's own log, inside the window: replayed at start, as before.
    plant_overlay(&img, 8 * 512, 63, 0x77, 0);
    let target = lab
        .start_export(&img, &["--offset", "8", "--length", "64"])
        .unwrap();
    let log = target.stop().unwrap();
    assert!(log.contains("replayed 1 writes"), "{log}");
    let mut s = [0u8; 512];
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut s, (8 + 63) * 512)
        .unwrap();
    assert_eq!(s, [0x77; 512]);
}
