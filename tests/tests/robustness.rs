//! Nothing acknowledged is lost, and the target keeps serving: duplicated and reordered
//! requests, a kill -9 under write load, a full filesystem under a sparse image. The client
//! is `aoe-ctl bench --verify`, which reads back every block whose write was acknowledged.

use std::process::Command;

mod common;

use aoe_integration::Lab;
use common::pagecache::{dirty_pages, DiskDir};
use common::{bench_json as json, exit_count, holds_pattern, num, wait_for};

#[test]
fn duplicated_and_reordered_requests_are_harmless() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 16 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--buffers", "64"]).unwrap();
    let chaos = [
        "--duplicate",
        "--reorder",
        "--verify",
        "--span",
        "8192",
        "--json",
    ];
    // One pass over the span (4,096 two-sector requests), however slow durable writes are
    // on a loaded machine.
    let mut args = vec![
        "--pattern",
        "seqwrite",
        "--depth",
        "32",
        "--duration",
        "120",
        "--ios",
        "4096",
    ];
    args.extend_from_slice(&chaos);
    let w = lab.bench(&args).unwrap();
    let wj = json(&w.stdout);
    assert!(
        w.status.success(),
        "{wj} {}",
        String::from_utf8_lossy(&w.stderr)
    );
    assert_eq!(num(&wj, "verify_errors"), 0.0, "{wj}");
    assert!(num(&wj, "verified_sectors") >= 8192.0, "{wj}");

    let mut args = vec!["--pattern", "randread", "--depth", "32", "--duration", "1"];
    args.extend_from_slice(&chaos);
    let r = lab.bench(&args).unwrap();
    let rj = json(&r.stdout);
    assert!(
        r.status.success(),
        "{rj} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(num(&rj, "verify_errors"), 0.0, "{rj}");
    assert_eq!(num(&rj, "errors"), 0.0, "{rj}");

    // The duplicates really reached the target: it handled about two frames per I/O.
    let log = target.stop().unwrap();
    eprintln!("duplicate/reorder runs: {wj}\n{rj}\n{log}");
    let ios = num(&wj, "ios") + num(&wj, "verified_sectors") / 2.0 + num(&rj, "ios");
    assert!(
        exit_count(&log, "user space handled") as f64 >= 1.9 * ios,
        "{ios} I/Os, {log}"
    );
}

#[test]
fn kill_9_under_write_load_loses_nothing_acknowledged() {
    let lab = Lab::new().unwrap();
    // Large enough that 3 s of sequential writes never wrap: each block is written once.
    let img = lab.image("disk.img", 1 << 30).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--buffers", "64"]).unwrap();
    let bench = lab
        .spawn_bench(
            &lab.initiator_if,
            &[
                "--pattern",
                "seqwrite",
                "--depth",
                "16",
                "--duration",
                "3",
                "--verify",
                "--timeout-ms",
                "500",
                "--json",
            ],
        )
        .unwrap();
    // Kill it under load: once a thousand blocks are acknowledged (and bench still runs).
    wait_for("bench to write block 1000", || holds_pattern(&img, 2000));
    let mut target = target;
    target.child.kill().unwrap(); // SIGKILL: no chance to flush or detach
    target.child.wait().unwrap();
    // The kernel detached the XDP program with the process (a bpf link), so a new target
    // attaches at once; the client's retransmits complete against it.
    let restarted = lab.start_export(&img, &["--buffers", "64"]).unwrap();
    let out = bench.wait_with_output().unwrap();
    let j = json(&out.stdout);
    eprintln!("kill -9 run: {j}");
    assert!(
        out.status.success(),
        "{j} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        num(&j, "timeouts") > 0.0,
        "no request crossed the restart: {j}"
    );
    assert_eq!(num(&j, "errors"), 0.0, "{j}");
    assert_eq!(num(&j, "verify_errors"), 0.0, "{j}");
    // Every acknowledged block, before and after the kill, was read back.
    assert!(num(&j, "verified_sectors") >= 2.0 * num(&j, "ios"), "{j}");
    // And it is in the file, not only in the target's answers.
    let mut f = std::fs::File::open(&img).unwrap();
    let mut got = vec![0u8; 1024];
    let mut want = vec![0u8; 1024];
    use std::io::{Read, Seek, SeekFrom};
    for block in [0u64, 1000, (num(&j, "ios") as u64) / 2] {
        f.seek(SeekFrom::Start(block * 1024)).unwrap();
        f.read_exact(&mut got).unwrap();
        aoe_ctl::initiator::verify::pattern(0x5eed, block * 2, &mut want);
        assert_eq!(got, want, "block {block}");
    }
    restarted.stop().unwrap();
}

/// A small tmpfs, unmounted on drop (after the target using it has stopped).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_filesystem_under_a_sparse_image() {
    let lab = Lab::new().unwrap();
    // 16 MiB of sparse image on a 2 MiB filesystem: writes beyond ~2 MiB cannot land.
    let fs = SmallFs::mount(lab.dir.join("small"), "2m");
    let img = fs.0.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let (target, _peer) = lab.start_target(&img, &[]).unwrap();
    let w = lab
        .bench(&[
            "--pattern",
            "seqwrite",
            "--depth",
            "8",
            "--duration",
            "1",
            "--span",
            "16384",
            "--verify",
            "--json",
        ])
        .unwrap();
    let j = json(&w.stdout);
    eprintln!("full filesystem run: {j}");
    // Refused writes make bench fail, with ATA errors, not silence or a dead target...
    assert!(!w.status.success(), "{j}");
    assert!(num(&j, "errors") > 0.0, "{j}");
    // ... and every write it acknowledged reads back (the read-back pass needed a live
    // target after the faults).
    assert!(num(&j, "verified_sectors") >= 2048.0, "{j}");
    assert_eq!(num(&j, "verify_errors"), 0.0, "{j}");
    let log = target.stop().unwrap();
    assert!(log.contains("e1.2: stopped"), "{log}");
    drop(fs);
}

#[test]
fn acknowledged_writes_are_on_stable_storage_by_default() {
    // By default an acknowledged write has been written back (fdatasync) before its reply
    // left, on both data paths and with O_DIRECT; with --write-back it may still be only
    // in the page cache (dirty): the control. No sleeps: the page cache is asked right
    // after the client got its last acknowledgement. The image is on a disk-backed
    // filesystem (tmpfs pages stay dirty whatever the target does).
    for (extra, want_dirty) in [
        (&["--write-back"][..], true),
        (&[][..], false),
        (&["--sync"][..], false),
        (&["--mode", "afpacket"][..], false),
        (&["--mode", "afpacket", "--write-back"][..], true),
    ] {
        let lab = Lab::new().unwrap();
        let disk = DiskDir::new();
        let img = disk.0.join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let (target, _peer) = lab.start_target(&img, extra).unwrap();
        let w = lab
            .bench(&[
                "--pattern",
                "seqwrite",
                "--depth",
                "4",
                "--duration",
                "0.3",
                "--span",
                "256",
                "--verify", // writes the known pattern (and reads it back: reads dirty nothing)
                "--json",
            ])
            .unwrap();
        assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
        let dirty = dirty_pages(&img, 128 << 10);
        eprintln!("{extra:?}: {dirty} of the first 32 pages dirty after the last ack");
        // And what was acknowledged is in the file (seqwrite from sector 0, 2 per I/O).
        let written = (2 * num(&json(&w.stdout), "ios") as u64).min(256);
        for lba in [0, written / 2, written - 1] {
            assert!(
                holds_pattern(&img, lba),
                "{extra:?}: sector {lba} of {written}"
            );
        }
        target.stop().unwrap();
        if want_dirty {
            assert!(dirty > 0, "control: {extra:?} left no dirty page");
        } else {
            assert_eq!(
                dirty, 0,
                "{extra:?}: acknowledged writes still dirty in the page cache"
            );
        }
    }
}
