//! `aoe-ctl bench` (the load generator) and `aoe-lab ceiling` (the in-kernel benchmark
//! ceiling), end to end in a lab. Figures are only checked for being there and non-zero:
//! no test asserts a timing.

use aoe_integration::{Lab, LabOptions};
use serde_json::Value;

mod common;

use common::{bench_json, num};

/// Run `aoe-ctl bench ARGS --json`; (success, the JSON object, stderr).
fn bench(lab: &Lab, args: &[&str]) -> (bool, Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = lab.bench(&all).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.success(), bench_json(&out.stdout), stderr)
}

#[test]
fn bench_reports_figures_and_verifies_what_it_wrote() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 16 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--buffers", "64"]).unwrap();

    // Writes with a pattern, then read back by bench itself.
    let (ok, w, err) = bench(
        &lab,
        &[
            "--pattern",
            "seqwrite",
            "--depth",
            "16",
            "--duration",
            "1",
            "--span",
            "8192",
            "--verify",
        ],
    );
    assert!(ok, "{w} {err}");
    for key in [
        "iops",
        "mbps",
        "p50_us",
        "p99_us",
        "p999_us",
        "cpu_us_per_io",
    ] {
        assert!(num(&w, key) > 0.0, "{key} in {w}");
    }
    assert_eq!(num(&w, "timeouts"), 0.0, "{w}");
    assert_eq!(num(&w, "verify_errors"), 0.0, "{w}");
    assert!(
        num(&w, "verified_sectors") >= 8192.0,
        "whole span read back: {w}"
    );
    assert_eq!(num(&w, "sectors_per_io"), 2.0, "{w}");
    // The pattern really is in the image, at the right place.
    let raw = std::fs::read(&img).unwrap();
    let mut want = vec![0u8; 1024];
    aoe_ctl::initiator::verify::pattern(0x5eed, 4000, &mut want);
    assert_eq!(&raw[4000 * 512..4002 * 512], &want[..]);

    // --ios: one pass of exactly that many requests, long before the duration (in a region
    // of its own: the checks below read the first one).
    let (ok, p, err) = bench(
        &lab,
        &[
            "--pattern",
            "seqwrite",
            "--depth",
            "16",
            "--duration",
            "60",
            "--ios",
            "300",
            "--offset",
            "16384",
            "--span",
            "8192",
            "--seed",
            "9",
            "--verify",
        ],
    );
    assert!(ok, "{p} {err}");
    assert_eq!(num(&p, "ios"), 300.0, "{p}");
    assert_eq!(
        num(&p, "verified_sectors"),
        600.0,
        "every block of the pass: {p}"
    );
    assert!(num(&p, "seconds") < 60.0, "{p}");

    // Random reads of that span match the pattern...
    let (ok, r, err) = bench(
        &lab,
        &[
            "--pattern",
            "randread",
            "--depth",
            "64",
            "--duration",
            "1",
            "--span",
            "8192",
            "--verify",
        ],
    );
    assert!(ok, "{r} {err}");
    assert!(num(&r, "verified_sectors") > 0.0, "{r}");
    assert_eq!(num(&r, "errors"), 0.0, "{r}");

    // ... and the check can fail: another seed's pattern is not there.
    let (ok, r, _) = bench(
        &lab,
        &[
            "--pattern",
            "randread",
            "--depth",
            "4",
            "--duration",
            "0.3",
            "--span",
            "8192",
            "--verify",
            "--seed",
            "7",
        ],
    );
    assert!(!ok, "a wrong pattern must fail: {r}");
    assert!(num(&r, "verify_errors") > 0.0, "{r}");
    target.stop().unwrap();
}

#[test]
fn bench_bad_input_gets_one_line_errors() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let (_target, _peer) = lab.start_target(&img, &[]).unwrap();
    for (args, says) in [
        (vec!["--pattern", "randread", "--depth", "0"], "--depth"),
        (vec!["--pattern", "randread", "--duration", "0"], "duration"),
        (
            vec!["--pattern", "randread", "--sectors", "3"],
            "does not fit",
        ),
        (vec!["--pattern", "sideways"], "invalid value"),
        (vec!["--pattern", "randread", "--ios", "0"], "--ios"),
    ] {
        let out = lab.bench(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Deeper than the target advertises: done, with a warning.
    let out = lab
        .bench(&[
            "--pattern",
            "randread",
            "--depth",
            "32",
            "--duration",
            "0.2",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("exceeds the 16 buffers"), "{err}");
}

#[test]
fn bench_at_mtu_9000_moves_17_sector_frames_both_ways() {
    let lab = Lab::with(LabOptions {
        mtu: 9000,
        queues: 1,
    })
    .unwrap();
    let img = lab.image("disk.img", 32 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--buffers", "64"]).unwrap();
    let (ok, w, err) = bench(
        &lab,
        &[
            "--pattern",
            "seqwrite",
            "--depth",
            "16",
            "--duration",
            "1",
            "--verify",
            "--span",
            "65535",
        ],
    );
    assert!(ok, "{w} {err}");
    assert_eq!(num(&w, "sectors_per_io"), 17.0, "{w}");
    assert_eq!(num(&w, "verify_errors"), 0.0, "{w}");
    assert!(num(&w, "verified_sectors") > 0.0, "{w}");
    target.stop().unwrap();
}

#[test]
fn ceiling_answers_every_request_in_the_kernel_with_no_storage() {
    let lab = Lab::new().unwrap();
    let sectors = 1u64 << 20;
    let ceiling = lab.start_ceiling(sectors).unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    assert!(
        ceiling.first_line.contains("answered in the kernel"),
        "{}",
        ceiling.first_line
    );
    let d = lab.discover(&[]).unwrap();
    let out = String::from_utf8_lossy(&d.stdout);
    // IDENTIFY from the template: the pretended size.
    assert!(out.contains("e1.2  0.537GB"), "{out}");
    assert!(out.contains("bufcnt 64"), "{out}");
    for pattern in ["randread", "randwrite", "seqread"] {
        let (ok, r, err) = bench(
            &lab,
            &["--pattern", pattern, "--depth", "16", "--duration", "0.5"],
        );
        assert!(ok, "{pattern}: {r} {err}");
        assert!(num(&r, "ios") > 0.0, "{r}");
        assert_eq!(num(&r, "errors"), 0.0, "{r}");
    }
    // Writes are discarded: a written pattern does not read back (reads are zeros).
    let (ok, r, _) = bench(
        &lab,
        &[
            "--pattern",
            "seqwrite",
            "--depth",
            "4",
            "--duration",
            "0.3",
            "--span",
            "64",
            "--verify",
        ],
    );
    assert!(!ok, "the ceiling kept data? {r}");
    assert_eq!(num(&r, "verify_errors"), num(&r, "verified_sectors"), "{r}");
    drop(ceiling);
    // Gone with its process: nothing answers any more.
    let d = lab.discover(&["--wait-ms", "300"]).unwrap();
    assert!(!String::from_utf8_lossy(&d.stdout).contains("e1.2"));
}

#[test]
fn echo_answers_through_the_af_xdp_path_with_no_storage() {
    for mtu in [1500, 9000] {
        let lab = Lab::with(LabOptions { mtu, queues: 1 }).unwrap();
        let echo = lab.start_echo(1 << 20).unwrap();
        let _peer = lab.start_peer(&lab.initiator_if).unwrap();
        assert!(
            echo.first_line.contains("AF_XDP") && echo.first_line.contains("no storage"),
            "{}",
            echo.first_line
        );
        // Query Config from the product's classifier (in the kernel), IDENTIFY from the echo.
        let d = lab.discover(&[]).unwrap();
        let out = String::from_utf8_lossy(&d.stdout);
        assert!(out.contains("e1.2  0.537GB"), "{out}");
        assert!(out.contains("bufcnt 64"), "{out}");
        // Reads come back whole (a full frame: 17 sectors at MTU 9000, a chain of
        // descriptors), writes are acknowledged.
        for pattern in ["randread", "randwrite", "seqread", "seqwrite"] {
            let (ok, r, err) = bench(
                &lab,
                &["--pattern", pattern, "--depth", "16", "--duration", "0.5"],
            );
            assert!(ok, "MTU {mtu} {pattern}: {r} {err}");
            assert!(num(&r, "ios") > 0.0, "{r}");
            assert_eq!(num(&r, "errors"), 0.0, "{r}");
            let per = if mtu == 9000 { 17.0 } else { 2.0 };
            assert_eq!(num(&r, "sectors_per_io"), per, "{r}");
        }
        // Nothing is kept: a written pattern does not read back.
        let (ok, r, _) = bench(
            &lab,
            &[
                "--pattern",
                "seqwrite",
                "--depth",
                "4",
                "--duration",
                "0.3",
                "--span",
                "64",
                "--verify",
            ],
        );
        assert!(!ok, "the echo kept data? {r}");
        assert!(num(&r, "verify_errors") > 0.0, "{r}");
        // It went through user space: the echo counted the frames it answered.
        let log = echo.stop().unwrap();
        let replies: u64 = log
            .split("frames, ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(replies > 1000, "{log}");
    }
}
