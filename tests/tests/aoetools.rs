//! aoetools (Debian's `aoeping` and `aoecfg`), an initiator we did not write, against the
//! target. They drop replies shorter than 60 bytes, so they also check our padding.

use std::process::{Command, Output};

use aoe_integration::Lab;

fn in_initiator(lab: &Lab, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.initiator_ns, "timeout", "10"])
        .args(args)
        .output()
        .expect("running aoetools (apt-get install aoetools)")
}

/// `aoecfg -c CMD -s STRING` for e1.2, waiting 2 s for replies.
fn aoecfg(lab: &Lab, cmd: &str, string: &str) -> Output {
    let ifc = lab.initiator_if.as_str();
    in_initiator(
        lab,
        &["aoecfg", "-c", cmd, "-s", string, "-t", "2", "1", "2", ifc],
    )
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn aoeping_and_aoecfg_against_the_target() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 16 << 20).unwrap();
    let (_target, _peer) = lab.start_target(&img, &["--config", "hello"]).unwrap();
    let ifc = lab.initiator_if.as_str();

    // Config query, then ATA IDENTIFY, pretty-printed.
    let id = ok(&in_initiator(
        &lab,
        &["aoeping", "-s", "5", "-I", "1", "2", ifc],
    ));
    assert!(id.contains("model: aoe-ctl"), "{id}");
    assert!(id.contains("serial_number: AOE1.2"), "{id}");
    let v = ok(&in_initiator(
        &lab,
        &["aoeping", "-v", "-s", "5", "1", "2", ifc],
    ));
    assert!(v.contains("found e1.2 with mac"), "{v}");

    // Read, force set, test (match and mismatch), prefix.
    let read = ok(&in_initiator(&lab, &["aoecfg", "-t", "2", "1", "2", ifc]));
    assert_eq!(read.trim(), "hello");
    let set = ok(&aoecfg(&lab, "fset", "storage-a"));
    assert_eq!(set.trim(), "storage-a");
    let test = ok(&aoecfg(&lab, "test", "storage-a"));
    assert_eq!(test.trim(), "storage-a");
    let prefix = ok(&aoecfg(&lab, "prefix", "stor"));
    assert_eq!(prefix.trim(), "storage-a");
    // A test that does not match gets no answer at all.
    let miss = aoecfg(&lab, "test", "other");
    assert_eq!(String::from_utf8_lossy(&miss.stdout).trim(), "");
    // And the set string is what Linux-style discovery now sees.
    let d = lab.discover(&[]).unwrap();
    assert!(String::from_utf8_lossy(&d.stdout).contains("\"storage-a\""));
}
