//! Interfaces that come and go under the daemon (rtnetlink): a served veth deleted and
//! created again under a reading client (the client completes once it is back, the removal
//! is counted), and MTU 1500 -> 9000 -> 1500 while serving (sectors per frame follow).

mod common;

use std::process::Command;
use std::time::Duration;

use aoe_integration::{Lab, Proc};
use common::{bench_json, num, wait_for};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {}", text(&o));
}

fn discover(lab: &Lab, iface: &str) -> String {
    let o = lab
        .run(
            &lab.initiator_ns,
            &["discover", "--iface", iface, "--wait-ms", "300"],
        )
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn daemon(lab: &Lab) -> Proc {
    let img = lab.image("disk.img", 8 << 20).unwrap();
    let cfg = lab.dir.join("exports.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{}\"]\npath = \"{}\"\n",
            lab.target_if,
            img.display()
        ),
    )
    .unwrap();
    lab.spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
        .unwrap()
}

/// `aoe-ctl bench` reading e1.2 through `iface` for `seconds`, patient enough (1 s per
/// try, 9 tries) to outlast an interface that is away for a moment.
fn reader(lab: &Lab, iface: &str, seconds: &str) -> std::process::Child {
    lab.spawn_bench(
        iface,
        &[
            "--pattern",
            "randread",
            "--depth",
            "4",
            "--duration",
            seconds,
            "--json",
            "--timeout-ms",
            "1000",
        ],
    )
    .unwrap()
}

fn finish(reader: std::process::Child, d: &Proc) -> serde_json::Value {
    let out = reader.wait_with_output().unwrap();
    let log = d.log.lock().unwrap().clone();
    assert!(out.status.success(), "reader: {}\n{log}", text(&out));
    let r = bench_json(&out.stdout);
    assert!(num(&r, "ios") > 100.0, "{r:?}");
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}\n{log}");
    r
}

#[test]
fn a_deleted_interface_is_served_again_when_it_returns() {
    let lab = Lab::new().unwrap();
    // The client sits on a bridge, so that it outlives the veth pair (deleting one end
    // deletes both).
    let br = format!("{}b", lab.initiator_if);
    let ins = lab.initiator_ns.clone();
    // A MAC of its own: a bridge otherwise takes its ports', and the new veth has another.
    ip(&[
        "-n",
        &ins,
        "link",
        "add",
        &br,
        "address",
        "02:00:00:0b:00:01",
        "type",
        "bridge",
    ]);
    ip(&["-n", &ins, "link", "set", &lab.initiator_if, "master", &br]);
    ip(&["-n", &ins, "link", "set", &br, "up"]);
    let peer = lab.start_peer(&lab.initiator_if).unwrap();
    let d = daemon(&lab);
    wait_for("e1.2 through the bridge", || {
        discover(&lab, &br).contains("e1.2")
    });
    // The interface comes back as a replugged NIC would: with its MAC, which the client
    // keeps addressing.
    let o = Command::new("ip")
        .args(["-n", &lab.target_ns, "-o", "link", "show", &lab.target_if])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    let mac = shown
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("a MAC in {shown}"))
        .to_string();
    let r = reader(&lab, &br, "5");
    std::thread::sleep(Duration::from_millis(1000));
    ip(&["-n", &lab.target_ns, "link", "del", &lab.target_if]);
    drop(peer);
    wait_for("the removal in the log", || {
        d.log.lock().unwrap().contains("interface removed")
    });
    std::thread::sleep(Duration::from_millis(500));
    ip(&[
        "link",
        "add",
        &lab.target_if,
        "address",
        &mac,
        "netns",
        &lab.target_ns,
        "type",
        "veth",
        "peer",
        "name",
        &lab.initiator_if,
        "netns",
        &ins,
    ]);
    ip(&["-n", &ins, "link", "set", &lab.initiator_if, "master", &br]);
    ip(&["-n", &ins, "link", "set", &lab.initiator_if, "up"]);
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    ip(&["-n", &lab.target_ns, "link", "set", &lab.target_if, "up"]);
    finish(r, &d);
    let log = || d.log.lock().unwrap().clone();
    let status = text(&lab.run_live(&["status"]).unwrap());
    assert!(
        status.contains("removed 1x and back"),
        "{status}\n{}",
        log()
    );
    let o = lab.run_live(&["stats", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["interfaces"][0]["interface_removed"], 1, "{v}");
    assert!(
        log().contains("returned; served again (xdp native"),
        "{}",
        log()
    );
    assert!(
        lab.target_has_xdp().unwrap(),
        "the program is attached again"
    );
    let v = lab
        .run(
            &ins,
            &[
                "verify", "--iface", &br, "--target", "e1.2", "--bytes", "1M",
            ],
        )
        .unwrap();
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn mtu_changes_while_serving() {
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let d = daemon(&lab);
    let (t, i) = (lab.target_if.clone(), lab.initiator_if.clone());
    wait_for("e1.2", || discover(&lab, &i).contains("2 sectors/frame"));
    // Started at 1500: its 2-sector reads are valid at every MTU of the run.
    let r = reader(&lab, &i, "5");
    let mtu = |ns: &str, dev: &str, m: &str| ip(&["-n", ns, "link", "set", dev, "mtu", m]);
    std::thread::sleep(Duration::from_millis(700));
    mtu(&lab.initiator_ns, &i, "9000");
    mtu(&lab.target_ns, &t, "9000");
    wait_for("17 sectors per frame advertised", || {
        discover(&lab, &i).contains("17 sectors/frame")
    });
    let status = text(&lab.run_live(&["status"]).unwrap());
    assert!(status.contains("mtu 9000"), "{status}");
    mtu(&lab.target_ns, &t, "1500");
    mtu(&lab.initiator_ns, &i, "1500");
    wait_for("2 sectors per frame again", || {
        discover(&lab, &i).contains("2 sectors/frame")
    });
    finish(r, &d);
    let log = d.log.lock().unwrap().clone();
    assert!(
        log.contains("MTU 1500 -> 9000; served again") && log.contains("MTU 9000 -> 1500"),
        "{log}"
    );
    let v = lab.verify("1M", &[]).unwrap();
    assert!(v.status.success(), "{}", text(&v));
}
