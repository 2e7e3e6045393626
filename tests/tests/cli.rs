//! aoe-ctl as a user runs it: its output, its errors, and what it leaves behind.

mod common;

use aoe_ctl::initiator::frames;
use aoe_integration::Lab;
use common::{ata, Rig};

#[test]
fn discover_and_verify() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 16 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--config", "demo disk"]).unwrap();
    assert_eq!(
        target.first_line,
        format!(
            "e1.2 {} 32768 sectors on {}, xdp native, 1 queue",
            img.display(),
            lab.target_if
        )
    );
    let d = lab.discover(&[]).unwrap();
    let out = String::from_utf8_lossy(&d.stdout);
    assert!(d.status.success());
    assert!(out.starts_with("e1.2  0.017GB  "), "{out}");
    assert!(
        out.contains("bufcnt 16  2 sectors/frame  \"demo disk\""),
        "{out}"
    );
    let v = lab.verify("2M", &["--offset", "1000"]).unwrap();
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        out.contains("verify OK: 4096 sectors read back identical"),
        "{out}"
    );
    // The pattern is in the image at the offset, and nothing before it.
    let raw = std::fs::read(&img).unwrap();
    assert!(raw[..1000 * 512].iter().all(|&b| b == 0));
    let mut want = vec![0u8; 512];
    aoe_ctl::initiator::verify::pattern(0x5eed, 1000, &mut want);
    assert_eq!(&raw[1000 * 512..1001 * 512], &want[..]);
    // Verify against a missing target fails with a clear message.
    let v = lab
        .run(
            &lab.initiator_ns,
            &["verify", "--iface", &lab.initiator_if, "--target", "e9.9"],
        )
        .unwrap();
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("no reply from e9.9"));
}

#[test]
fn sigterm_detaches_and_leaves_nothing() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let target = lab.spawn_live(&lab.export_args(&img, &[])).unwrap();
    assert!(lab.target_has_xdp().unwrap());
    let pins = lab.dir.join("bpf/aoe").join(&lab.target_if);
    assert!(pins.join("EXPORTS").exists(), "maps pinned while it runs");
    let log = target.stop().unwrap();
    assert!(log.contains("e1.2: stopped"), "{log}");
    assert!(!lab.target_has_xdp().unwrap(), "program detached on exit");
    assert!(!pins.exists(), "pins removed on exit");
    // And it starts again at once on the same interface.
    let again = lab.start_export(&img, &[]).unwrap();
    assert!(again.first_line.starts_with("e1.2 "));
}

#[test]
fn bad_input_gets_one_line_errors() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let i = img.to_str().unwrap();
    let tif = lab.target_if.clone();
    let bad_config = lab.dir.join("exports.toml");
    std::fs::write(
        &bad_config,
        format!("[[export]]\nshelf = 1\nslot = 255\ninterfaces = [\"{tif}\"]\npath = \"{i}\"\n"),
    )
    .unwrap();
    let bad_config = bad_config.to_str().unwrap().to_string();
    // One MAC more than the kernel's mask list holds, and one byte more than a config string.
    let macs: Vec<String> = (0..=32)
        .map(|i| format!("02:00:00:00:00:{i:02x}"))
        .collect();
    let macs = macs.join(",");
    let long = "x".repeat(1025);
    let many_macs = lab.dir.join("many-macs.toml");
    let quoted: Vec<String> = macs.split(',').map(|m| format!("\"{m}\"")).collect();
    std::fs::write(
        &many_macs,
        format!(
            "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{tif}\"]\npath = \"{i}\"\nallow = [{}]\n",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let many_macs = many_macs.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "export",
                "--shelf",
                "1",
                "--slot",
                "2",
                "--iface",
                &tif,
                "/nonexistent.img",
            ],
            "cannot open /nonexistent.img",
        ),
        (
            vec![
                "export",
                "--shelf",
                "1",
                "--slot",
                "2",
                "--iface",
                "nosuchif0",
                i,
            ],
            "no interface named nosuchif0",
        ),
        (
            vec![
                "export", "--shelf", "65535", "--slot", "2", "--iface", &tif, i,
            ],
            "broadcast shelf",
        ),
        (
            vec![
                "export",
                "--shelf",
                "1",
                "--slot",
                "2",
                "--iface",
                &tif,
                "--buffers",
                "1",
                i,
            ],
            "--buffers: 1, must be at least 2",
        ),
        (
            vec![
                "export", "--shelf", "1", "--slot", "2", "--iface", &tif, "--allow", &macs, i,
            ],
            "--allow: 33 MACs, the mask list holds at most 32",
        ),
        (
            vec![
                "export", "--shelf", "1", "--slot", "2", "--iface", &tif, "--config", &long, i,
            ],
            "--config: 1025 bytes, a config string holds at most 1024",
        ),
        (
            vec![
                "export", "--shelf", "1", "--slot", "2", "--iface", &tif, "--queues", "0", i,
            ],
            "--queues: 0, must be at least 1",
        ),
        (
            vec![
                "export", "--shelf", "1", "--slot", "2", "--iface", &tif, "--allow", "01:02", i,
            ],
            "not a MAC address",
        ),
        (
            vec![
                "export", "--shelf", "1", "--slot", "2", "--iface", &tif, "--offset", "5000", i,
            ],
            "beyond the end",
        ),
        (
            vec!["verify", "--iface", &tif, "--target", "1.2"],
            "eSHELF.SLOT",
        ),
        (
            vec!["daemon", "--config", "/nonexistent/exports.toml"],
            "cannot read /nonexistent/exports.toml",
        ),
        (
            vec!["daemon", "--config", &bad_config],
            "line 3: slot: 255 is the broadcast slot",
        ),
        (
            vec!["daemon", "--config", &many_macs],
            "line 6: allow: 33 MACs, the mask list holds at most 32",
        ),
        (
            vec!["acl", "add", "--target", "e1.2", "02:00:zz:00:00:01"],
            "not a MAC address",
        ),
        (vec!["vblade", "1", "255", &tif, i], "broadcast slot"),
        (
            vec!["vblade", "-b", "1", "1", "2", &tif, i],
            "-b: 1, must be at least 2",
        ),
        (
            vec!["vblade", "-m", &macs, "1", "2", &tif, i],
            "-m: 33 MACs, the mask list holds at most 32",
        ),
    ];
    for (args, want) in cases {
        let out = lab.run(&lab.target_ns, &args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() <= 3, "{args:?}: a short error, got {err}");
        assert!(
            !lab.target_has_xdp().unwrap(),
            "{args:?} left a program attached"
        );
    }
}

#[test]
fn read_only_offset_length() {
    // Export sectors 100..356 of the file, read-only.
    let mut r = Rig::start(&["--read-only", "--offset", "100", "--length", "256"]);
    let me = r.mine();
    let mut raw = r.image_bytes();
    raw[100 * 512..101 * 512].fill(0x77);
    std::fs::write(&r.image, &raw).unwrap();
    let rep = r.ask(|b, t| frames::read(b, &me, t, 0, 1)).unwrap();
    assert!(
        rep[36..548].iter().all(|&x| x == 0x77),
        "sector 0 of the export is sector 100 of the file"
    );
    let rep = r
        .ask(|b, t| frames::write(b, &me, t, 1, &[1; 512]))
        .unwrap();
    assert_eq!(ata(&rep), (0x41, 0x04), "read-only: ERR + ABRT");
    let rep = r.ask(|b, t| frames::read(b, &me, t, 256, 1)).unwrap();
    assert_eq!(ata(&rep), (0x41, 0x10), "length bounds the export: IDNF");
    let rep = r.ask(|b, t| frames::identify(b, &me, t)).unwrap();
    assert_eq!(
        aoe_common::wire::identify::parse(rep[36..548].try_into().unwrap()).sectors,
        256
    );
    assert_eq!(r.image_bytes(), raw);
}

#[test]
fn falls_back_to_skb_mode_and_says_so() {
    // An ifb interface has no native XDP: auto mode must fall back and say so.
    let lab = Lab::new().unwrap();
    let dev = format!("ad{}", &lab.target_if[2..]);
    let ok = std::process::Command::new("ip")
        .args(["-n", &lab.target_ns, "link", "add", &dev, "type", "ifb"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    std::process::Command::new("ip")
        .args(["-n", &lab.target_ns, "link", "set", &dev, "up"])
        .status()
        .unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let p = lab
        .spawn(
            &lab.target_ns,
            &[
                "export",
                "--shelf",
                "3",
                "--slot",
                "4",
                "--iface",
                &dev,
                img.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(
        p.first_line.ends_with(", xdp skb, 1 queue"),
        "{}",
        p.first_line
    );
    let log = p.stop().unwrap();
    assert!(log.contains("native XDP unavailable"), "{log}");
    // Forcing native mode on it is a clear error.
    let out = lab
        .run(
            &lab.target_ns,
            &[
                "export",
                "--shelf",
                "3",
                "--slot",
                "4",
                "--iface",
                &dev,
                "--xdp-mode",
                "native",
                img.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("native mode"));
}

#[test]
fn allow_list_enforced_in_the_kernel() {
    // Only a MAC that is not ours may talk: our frames are dropped by the classifier.
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let (target, _peer) = lab
        .start_target(&img, &["--allow", "02:00:00:00:00:99"])
        .unwrap();
    let d = lab.discover(&["--wait-ms", "300"]).unwrap();
    assert!(
        String::from_utf8_lossy(&d.stdout).is_empty(),
        "a MAC off the list sees nothing"
    );
    let log = target.stop().unwrap();
    assert!(log.contains("dropped_acl 1"), "{log}");
}
