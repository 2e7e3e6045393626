//! `aoe-ctl snapshot` while an initiator writes: the copy is one point in time, holding every
//! write acknowledged before the snapshot began and none issued after it ended, and the live
//! image afterwards holds every acknowledged write. On the reflink path (an XFS loop image)
//! and on the overlay path (the ext4 the tests run on, or forced with --method overlay).
//!
//! The writer writes one sector at a time (depth 1, so its writes are totally ordered), each
//! tagged with its sequence number and its sector, to sectors spread over the whole image:
//! a copy that read the image while writes landed in it (no snapshot at all) holds late
//! writes to sectors it copied late and misses earlier ones to sectors it copied first,
//! which no single point in time explains.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_ctl::initiator::client::{check_ata, Client};
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_integration::Lab;

/// Sectors of the image: 64 MiB, so that the copy takes a while.
const SECTORS: u64 = 131_072;
/// Sectors the writer touches, spread over the image (a prime stride over all of it).
const BLOCKS: u64 = 4096;
const STRIDE: u64 = 7919;

fn sector_of(block: u64) -> u64 {
    (block * STRIDE * 32 + block) % SECTORS
}

/// A write's sector content: its sequence number, its sector, then a fill made of both.
fn content(seq: u64, lba: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    for (i, x) in b[16..].iter_mut().enumerate() {
        *x = (seq as u8).wrapping_mul(31).wrapping_add(i as u8) ^ lba as u8;
    }
    b
}

/// The sequence number a sector holds (0: never written); panics on a sector that is no
/// write of ours (torn, misplaced).
fn seq_in(sector: &[u8], lba: u64, what: &str) -> u64 {
    if sector.iter().all(|&b| b == 0) {
        return 0;
    }
    let seq = u64::from_le_bytes(sector[..8].try_into().unwrap());
    assert_eq!(
        sector,
        &content(seq, lba)[..],
        "{what}: sector {lba} holds no whole write of ours"
    );
    seq
}

/// One write: its sector, and when it was issued and acknowledged.
#[derive(Debug, Clone, Copy)]
struct Write {
    seq: u64,
    lba: u64,
    issued: Instant,
    acked: Option<Instant>,
}

/// Write until `stop`, one sector at a time; every write with its times.
fn writer(mut c: Client, to: Addr, stop: Arc<AtomicBool>) -> Vec<Write> {
    let mut log = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let lba = sector_of(seq % BLOCKS);
        let data = content(seq, lba);
        let issued = Instant::now();
        let mut acked = None;
        for t in 0..50u32 {
            let n = frames::write(&mut buf, &to, (seq as u32) << 6 | t, lba, &data);
            if let Some(rep) = c.exchange(&buf[..n], Duration::from_millis(500)).unwrap() {
                check_ata(&rep, "write").unwrap();
                acked = Some(Instant::now());
                break;
            }
        }
        assert!(acked.is_some(), "write {seq} never answered");
        log.push(Write {
            seq,
            lba,
            issued,
            acked,
        });
    }
    log
}

fn sectors_of(file: &Path) -> Vec<u8> {
    std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

/// The latest write to each sector among `writes` with seq <= `upto`.
fn state_at(writes: &[Write], upto: u64) -> std::collections::HashMap<u64, u64> {
    let mut m = std::collections::HashMap::new();
    for w in writes.iter().filter(|w| w.seq <= upto) {
        m.insert(w.lba, w.seq);
    }
    m
}

/// Serve `image` from a daemon, write to it, take a snapshot into `dest` meanwhile, and
/// check the copy and the image. Returns the snapshot's stdout and stderr.
fn snapshot_while_writing(
    lab: &Lab,
    image: &Path,
    serve: &[&str],
    dest: &Path,
    extra: &[&str],
) -> (String, String) {
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let target = lab.spawn_live(&lab.export_args(image, serve)).unwrap();
    let ifname = lab.initiator_if.clone();
    let (client, to) = Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        c.timeout = Duration::from_millis(300);
        let t = c.find(1, 2).expect("target answers a config query");
        (c, t.addr)
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let stop = stop.clone();
        std::thread::spawn(move || writer(client, to, stop))
    };
    // Writes before the snapshot, so the copy has something it must hold.
    std::thread::sleep(Duration::from_millis(1500));
    let began = Instant::now();
    let mut args = vec!["snapshot", "--target", "e1.2"];
    args.extend_from_slice(extra);
    args.push(dest.to_str().unwrap());
    let out = lab.run_live(&args).unwrap();
    let ended = Instant::now();
    // Writes after, so the copy has something it must not hold.
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "snapshot failed: {stdout}{stderr}");

    let acked_before = writes
        .iter()
        .filter(|w| w.acked.is_some_and(|a| a < began))
        .map(|w| w.seq)
        .max()
        .expect("writes acknowledged before the snapshot");
    let issued_after = writes
        .iter()
        .find(|w| w.issued > ended)
        .map(|w| w.seq)
        .expect("writes issued after the snapshot");
    let during = issued_after - acked_before;
    eprintln!(
        "{} writes; acknowledged before the snapshot: up to {acked_before}, issued after it: \
         from {issued_after} ({during} in between); {}",
        writes.len(),
        stdout.trim()
    );

    // The copy: one point in time P, at least every write acknowledged before the
    // snapshot began and none issued after it ended.
    let copy = sectors_of(dest);
    assert_eq!(copy.len() as u64, SECTORS * 512, "the copy's size");
    let mut found = std::collections::HashMap::new();
    for lba in (0..BLOCKS).map(sector_of) {
        let s = seq_in(&copy[lba as usize * 512..][..512], lba, "the copy");
        found.insert(lba, s);
    }
    let point = found.values().copied().max().unwrap();
    assert!(
        point >= acked_before,
        "the copy's newest write is {point}, but {acked_before} was acknowledged before the \
         snapshot began"
    );
    assert!(
        point < issued_after,
        "the copy holds write {point}, issued after the snapshot ended (from {issued_after})"
    );
    let expected = state_at(&writes, point);
    let mut wrong = 0;
    for (&lba, &s) in &found {
        let want = expected.get(&lba).copied().unwrap_or(0);
        if s != want {
            if wrong < 5 {
                eprintln!("sector {lba}: the copy holds write {s}, the state at {point} is {want}");
            }
            wrong += 1;
        }
    }
    assert_eq!(
        wrong, 0,
        "{wrong} sectors of the copy are not the image at one point in time (write {point})"
    );

    // The live image: every acknowledged write, nothing lost by a merge back.
    target.stop().unwrap();
    let live = sectors_of(image);
    let last = state_at(&writes, u64::MAX);
    for (&lba, &s) in &last {
        assert_eq!(
            seq_in(&live[lba as usize * 512..][..512], lba, "the image"),
            s,
            "sector {lba} of the image after the snapshot"
        );
    }
    (stdout, stderr)
}

#[test]
fn overlay_snapshot_is_one_point_in_time_and_loses_nothing() {
    let lab = Lab::new().unwrap();
    let image = lab.image("disk.img", SECTORS * 512).unwrap();
    let dest = lab.dir.join("copy.img");
    let (stdout, stderr) =
        snapshot_while_writing(&lab, &image, &[], &dest, &["--method", "overlay"]);
    assert!(stdout.contains("(overlay,"), "{stdout}");
    assert!(
        stderr.contains("e1.2: copy ") && stderr.contains("/64.0 MiB (100%)"),
        "progress on stderr: {stderr}"
    );
    assert!(
        !aoe_ctl::serve::backend::log_path(&image).exists(),
        "the overlay is removed once merged"
    );
}

#[test]
fn overlay_snapshot_on_the_afpacket_path_and_write_back() {
    // The other worker, and writes acknowledged from the page cache (no fdatasync of the
    // overlay): the same point in time, nothing lost.
    let lab = Lab::new().unwrap();
    let image = lab.image("disk.img", SECTORS * 512).unwrap();
    let dest = lab.dir.join("copy.img");
    let serve = ["--mode", "afpacket", "--write-back"];
    let (stdout, _) = snapshot_while_writing(&lab, &image, &serve, &dest, &["--method", "overlay"]);
    assert!(stdout.contains("(overlay,"), "{stdout}");
}

/// An XFS filesystem in a loop image, mounted for the test and removed afterwards.
struct Xfs {
    dir: PathBuf,
    device: String,
    mounted: bool,
}

impl Xfs {
    fn new(lab: &Lab) -> Xfs {
        let file = lab.image("xfs.img", 512 << 20).unwrap();
        let ok = |c: &mut Command| {
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        ok(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&file));
        let device = ok(Command::new("losetup").args(["-f", "--show"]).arg(&file));
        let dir = lab.dir.join("xfs");
        std::fs::create_dir_all(&dir).unwrap();
        let mut x = Xfs {
            dir,
            device,
            mounted: false,
        };
        ok(Command::new("mount").arg(&x.device).arg(&x.dir));
        x.mounted = true;
        x
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn reflink_snapshot_on_xfs_is_one_point_in_time_and_loses_nothing() {
    let lab = Lab::new().unwrap();
    let xfs = Xfs::new(&lab);
    let image = xfs.dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(SECTORS * 512)
        .unwrap();
    let dest = xfs.dir.join("copy.img");
    let (stdout, _) = snapshot_while_writing(&lab, &image, &[], &dest, &[]);
    assert!(stdout.contains("(reflink,"), "{stdout}");
    let _ = std::fs::remove_file(&dest);
    drop(xfs);
}

#[test]
fn reflink_only_is_refused_where_the_filesystem_cannot_and_dest_is_never_overwritten() {
    let lab = Lab::new().unwrap();
    let image = lab.image("disk.img", 1 << 20).unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let _target = lab.spawn_live(&lab.export_args(&image, &[])).unwrap();
    common::wait_for("the control socket", || {
        lab.run_live(&["acl", "list", "--target", "e1.2"])
            .is_ok_and(|o| o.status.success())
    });
    let dest = lab.dir.join("copy.img");
    let o = lab
        .run_live(&[
            "snapshot",
            "--target",
            "e1.2",
            "--method",
            "reflink",
            dest.to_str().unwrap(),
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot reflink"),
        "{err}"
    );
    assert!(!dest.exists(), "a failed snapshot leaves no copy");
    std::fs::write(&dest, b"keep").unwrap();
    let o = lab
        .run_live(&["snapshot", "--target", "e1.2", dest.to_str().unwrap()])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep");
    let o = lab
        .run_live(&[
            "snapshot",
            "--target",
            "e1.9",
            lab.dir.join("x").to_str().unwrap(),
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not served"), "{err}");
}
