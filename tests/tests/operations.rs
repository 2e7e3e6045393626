//! Operating the target: the daemon with a config (several exports per interface, one export
//! on two interfaces, SIGHUP reload under load, a refused bad file, a data path change under
//! load, a reload that fails half way), live control from a
//! second process through the pinned maps (status, stats, acl, reservation), the config
//! string state file, the AF_PACKET data path, --direct, and the vblade-compatible form.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use aoe_common::wire::reserve::RCMD_SET;
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_integration::{Lab, Proc};
use common::pagecache::{resident_pages, DiskDir};
use common::stderr::StderrLog;
use common::{bench_json, holds_pattern, num, wait_for, wait_for_some};

const STRANGER: &str = "02:00:00:00:00:99";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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

fn verify(lab: &Lab, iface: &str, target: &str, bytes: &str) -> std::process::Output {
    lab.run(
        &lab.initiator_ns,
        &[
            "verify", "--iface", iface, "--target", target, "--bytes", bytes,
        ],
    )
    .unwrap()
}

fn peer(lab: &Lab, iface: &str) -> Proc {
    lab.start_peer(iface).unwrap()
}

fn write_config(lab: &Lab, body: &str) -> PathBuf {
    let p = lab.dir.join("exports.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn hup(p: &Proc) {
    // SAFETY: signalling our own child (ip netns exec and env exec into aoe-ctl).
    unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
}

fn stats(lab: &Lab) -> serde_json::Value {
    let o = lab.run_live(&["stats", "--json"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn export_stat(v: &serde_json::Value, target: &str, key: &str) -> u64 {
    v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == target)
        .unwrap_or_else(|| panic!("{target} in {v}"))[key]
        .as_u64()
        .unwrap()
}

#[test]
fn daemon_serves_many_exports_and_reloads_without_a_miss() {
    let lab = Lab::new().unwrap();
    let (t2, i2) = lab.add_link("x").unwrap();
    let _peers = (peer(&lab, &lab.initiator_if), peer(&lab, &i2));
    let a = lab.image("a.img", 8 << 20).unwrap();
    let b = lab.image("b.img", 4 << 20).unwrap();
    let c = lab.image("c.img", 4 << 20).unwrap();
    let (t1, i1) = (lab.target_if.clone(), lab.initiator_if.clone());
    let e12 = format!(
        "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{t1}\", \"{t2}\"]\npath = \"{}\"\n",
        a.display()
    );
    let e13 = format!(
        "[[export]]\nshelf = 1\nslot = 3\ninterfaces = [\"{t1}\"]\npath = \"{}\"\n",
        b.display()
    );
    let e14 = format!(
        "[[export]]\nshelf = 1\nslot = 4\ninterfaces = [\"{t1}\"]\npath = \"{}\"\nread_only = true\n",
        c.display()
    );
    let cfg = write_config(&lab, &format!("{e12}\n{e13}"));
    let check = lab
        .run_live(&["daemon", "--config", cfg.to_str().unwrap(), "--check"])
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let mut daemon = lab
        .spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
        .unwrap();
    let log = StderrLog::of(&mut daemon);

    // Two exports on one interface, one of them on a second interface too.
    wait_for("both exports on the first link", || {
        let d = discover(&lab, &i1);
        d.contains("e1.2") && d.contains("e1.3")
    });
    // The daemon brings the links up one after the other.
    let d2 = wait_for_some("e1.2 on the second link", || {
        Some(discover(&lab, &i2)).filter(|d| d.contains("e1.2"))
    });
    assert!(!d2.contains("e1.3"), "{d2}");
    for (iface, target) in [(&i1, "e1.3"), (&i2, "e1.2"), (&i1, "e1.2")] {
        let v = verify(&lab, iface, target, "512K");
        assert!(v.status.success(), "{target} via {iface}: {}", text(&v));
    }
    let status = lab.run_live(&["status"]).unwrap();
    let st = text(&status);
    assert!(
        st.contains(&t1) && st.contains(&t2) && st.contains("e1.3"),
        "{st}"
    );

    // Reload under load: e1.3 goes, e1.4 comes, e1.2 keeps serving without an error.
    // The verifies above read 1 MiB of e1.2 that the stats may not show yet.
    let read_before = export_stat(&stats(&lab), "e1.2", "bytes_read");
    let reader = lab
        .spawn_bench(
            &i1,
            &[
                "--pattern",
                "randread",
                "--depth",
                "8",
                "--duration",
                "4",
                "--json",
                "--timeout-ms",
                "1000",
            ],
        )
        .unwrap();
    wait_for("the reader's first reads of e1.2 in the stats", || {
        export_stat(&stats(&lab), "e1.2", "bytes_read") > read_before + (1 << 20)
    });
    write_config(&lab, &format!("{e12}\n{e14}"));
    hup(&daemon);
    wait_for("e1.4 added and e1.3 removed", || {
        let d = discover(&lab, &i1);
        d.contains("e1.4") && !d.contains("e1.3")
    });
    // A bad file is refused and the running set stays.
    write_config(
        &lab,
        &format!("{e12}\n{e14}\n[[export]]\nshelf = 1\nslot = 4\n"),
    );
    hup(&daemon);
    wait_for("the bad file refused", || log.contains("reload refused"));
    let out = reader.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = bench_json(&out.stdout);
    assert!(num(&r, "ios") > 1000.0, "{r:?}");
    assert_eq!(
        (num(&r, "errors"), num(&r, "timeouts")),
        (0.0, 0.0),
        "e1.2 missed nothing during the reload: {r:?}"
    );
    let d = discover(&lab, &i1);
    assert!(d.contains("e1.2") && d.contains("e1.4"), "{d}");
    let ro = verify(&lab, &i1, "e1.4", "64K");
    assert!(!ro.status.success(), "e1.4 is read-only: {}", text(&ro));
    // A changed export restarts with its new options.
    write_config(
        &lab,
        &format!("{e12}\n{}", e14.replace("read_only = true\n", "")),
    );
    hup(&daemon);
    wait_for("e1.4 writable after the reload", || {
        verify(&lab, &i1, "e1.4", "64K").status.success()
    });
    daemon.stop().unwrap();
    let log = log.finish();
    assert!(log.contains("restarted [e1.4]"), "{log}");
    assert!(
        log.contains("reload refused") && log.contains("line 14: missing field `interfaces`"),
        "{log}"
    );
    assert!(
        log.contains("removed [e1.3]")
            && log.lines().any(|l| l == format!("e1.3: stopped on {t1}")),
        "{log}"
    );
    assert!(!lab.target_has_xdp().unwrap(), "detached on exit");
}

/// `aoe-ctl bench` reading e1.2 through `iface` for `seconds`, in the background.
fn reader(lab: &Lab, iface: &str, seconds: &str) -> std::process::Child {
    lab.spawn_bench(
        iface,
        &[
            "--pattern",
            "randread",
            "--depth",
            "8",
            "--duration",
            seconds,
            "--json",
            "--timeout-ms",
            "1000",
        ],
    )
    .unwrap()
}

/// The reader's report, or what it said when it failed.
fn finish(reader: std::process::Child) -> Result<serde_json::Value, String> {
    let out = reader.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(bench_json(&out.stdout))
}

/// The `status` line of interface `iface`, without the uptime.
fn status_of(lab: &Lab, iface: &str) -> String {
    let st = text(&lab.run_live(&["status"]).unwrap());
    let line = st
        .lines()
        .find(|l| l.starts_with(&format!("{iface}: ")))
        .unwrap_or_else(|| panic!("{iface} in {st}"));
    line.split(", up ").next().unwrap().to_string()
}

/// A veth pair between the lab's namespaces whose target side has `rx` receive queues and
/// one transmit queue, and whose initiator side has one of each: everything the initiator
/// sends arrives on queue 0 (and native XDP allows the pair: rx queues >= the peer's tx).
fn link_with_queues(lab: &Lab, suffix: &str, rx: u32) -> (String, String) {
    let (t, i) = (
        format!("{}{suffix}", lab.target_if),
        format!("{}{suffix}", lab.initiator_if),
    );
    let rx = rx.to_string();
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    };
    ip(&[
        "link",
        "add",
        &t,
        "numtxqueues",
        "1",
        "numrxqueues",
        &rx,
        "type",
        "veth",
        "peer",
        "name",
        &i,
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
    ]);
    for (ns, dev) in [(&lab.target_ns, &t), (&lab.initiator_ns, &i)] {
        ip(&["link", "set", dev, "netns", ns]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    (t, i)
}

#[test]
fn a_reload_that_fails_half_way_changes_nothing() {
    // The first link has two rx queues, the second one: `queues = 2` comes up on the first
    // (its queue 1 worker starts next to queue 0) and fails on the second, which has no
    // queue 1 to bind. Both must go on serving exactly as before.
    let lab = Lab::new().unwrap();
    let (t1, i1) = link_with_queues(&lab, "a", 2);
    let (t2, i2) = link_with_queues(&lab, "b", 1);
    let _peers = (peer(&lab, &i1), peer(&lab, &i2));
    let a = lab.image("a.img", 8 << 20).unwrap();
    let body = |queues: u32| {
        format!(
            "queues = {queues}\n[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{t1}\", \"{t2}\"]\npath = \"{}\"\n",
            a.display()
        )
    };
    let cfg = write_config(&lab, &body(1));
    let daemon = lab
        .spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
        .unwrap();
    wait_for("e1.2 on both links", || {
        discover(&lab, &i1).contains("e1.2") && discover(&lab, &i2).contains("e1.2")
    });
    let before = (status_of(&lab, &t1), status_of(&lab, &t2));
    assert!(before.0.contains("xdp native, 1 queue,"), "{before:?}");

    let readers = (reader(&lab, &i1, "3"), reader(&lab, &i2, "3"));
    std::thread::sleep(Duration::from_millis(700));
    write_config(&lab, &body(2));
    hup(&daemon);
    std::thread::sleep(Duration::from_millis(1000));
    let reports = [(finish(readers.0), &i1), (finish(readers.1), &i2)];
    let after = (status_of(&lab, &t1), status_of(&lab, &t2));
    let attached = [&t1, &t2].map(|t| has_xdp(&lab, t));
    // Verify's writes go through the AF_XDP sockets: the program has workers behind it.
    let verified = [&i1, &i2].map(|i| verify(&lab, i, "e1.2", "512K"));
    let log = daemon.stop().unwrap();
    for (r, iface) in reports {
        let r = r.unwrap_or_else(|e| panic!("{iface}: {e}\n{log}"));
        assert!(num(&r, "ios") > 1000.0, "{iface}: {r:?}");
        assert_eq!(
            (num(&r, "errors"), num(&r, "timeouts")),
            (0.0, 0.0),
            "{iface} missed nothing across the refused reload: {r:?}\n{log}"
        );
    }
    assert_eq!(attached, [true, true], "{log}");
    assert_eq!(after, before, "{log}");
    for v in verified {
        assert!(v.status.success(), "{}\n{log}", text(&v));
    }
    assert!(
        log.contains("reload refused, still serving 1 export on 2 interfaces")
            && log.contains(&format!("changing the data path of {t2}"))
            && log.contains("queue 1"),
        "{log}"
    );
    assert!(
        !log.contains(&format!("{t1}: xdp native, 1 queue -> ")),
        "{log}"
    );
}

/// Is an XDP program attached to `dev` in the target namespace?
fn has_xdp(lab: &Lab, dev: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.target_ns, "link", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn data_path_changes_under_a_reading_client() {
    // xdp -> afpacket -> xdp, a reader running across each switch: the new path comes up
    // before the old one goes.
    let lab = Lab::new().unwrap();
    let (t1, i1) = (lab.target_if.clone(), lab.initiator_if.clone());
    let _peer = peer(&lab, &i1);
    let a = lab.image("a.img", 8 << 20).unwrap();
    let body = |mode: &str| {
        format!(
            "mode = \"{mode}\"\n[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{t1}\"]\npath = \"{}\"\n",
            a.display()
        )
    };
    let cfg = write_config(&lab, &body("xdp"));
    let daemon = lab
        .spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
        .unwrap();
    wait_for("e1.2", || discover(&lab, &i1).contains("e1.2"));
    let mut reports = vec![];
    for (mode, now) in [
        ("afpacket", "afpacket, 1 queue"),
        ("xdp", "xdp native, 1 queue"),
    ] {
        let r = reader(&lab, &i1, "2");
        std::thread::sleep(Duration::from_millis(700));
        write_config(&lab, &body(mode));
        hup(&daemon);
        wait_for(now, || status_of(&lab, &t1).contains(now));
        reports.push((mode, finish(r), lab.target_has_xdp().unwrap()));
    }
    let v = verify(&lab, &i1, "e1.2", "512K");
    let log = daemon.stop().unwrap();
    for (mode, r, attached) in reports {
        let r = r.unwrap_or_else(|e| panic!("to {mode}: {e}\n{log}"));
        assert_eq!(attached, mode == "xdp", "to {mode}: {log}");
        assert!(num(&r, "ios") > 1000.0, "{r:?}");
        assert_eq!(
            (num(&r, "errors"), num(&r, "timeouts")),
            (0.0, 0.0),
            "to {mode}: no request lost: {r:?}\n{log}"
        );
    }
    assert!(v.status.success(), "{}", text(&v));
    assert!(
        log.contains(&format!("{t1}: xdp native, 1 queue -> afpacket, 1 queue"))
            && log.contains(&format!("{t1}: afpacket, 1 queue -> xdp native, 1 queue")),
        "{log}"
    );
}

#[test]
fn live_control_through_pinned_maps_xdp() {
    live_control("xdp");
}

#[test]
fn live_control_through_pinned_maps_afpacket() {
    live_control("afpacket");
}

/// The same checks on both data paths. On the AF_PACKET path the kernel only keeps the maps
/// and the engine enforces the lists, which the daemon edits before `acl` returns.
fn live_control(mode: &str) {
    let xdp = mode == "xdp";
    let lab = Lab::new().unwrap();
    let _peer = peer(&lab, &lab.initiator_if);
    let img = lab.image("disk.img", 8 << 20).unwrap();
    let i1 = lab.initiator_if.clone();
    let target = lab
        .spawn_live(&lab.export_args(&img, &["--mode", mode]))
        .unwrap();
    let st = text(&lab.run_live(&["status"]).unwrap());
    assert!(
        st.contains(&lab.target_if) && st.contains("e1.2") && st.contains(mode),
        "{st}"
    );
    let js = lab.run_live(&["status", "--json"]).unwrap();
    let js: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(js["interfaces"][0]["exports"][0]["target"], "e1.2", "{js}");

    // Counters move.
    let before = stats(&lab);
    assert!(verify(&lab, &i1, "e1.2", "1M").status.success());
    let config_answers = if xdp {
        "config_answered_kernel"
    } else {
        "config_answered_user"
    };
    let keys = [
        "reads",
        "writes",
        "bytes_written",
        "frames_total",
        config_answers,
    ];
    // Published periodically: wait for the verify's writes to show, then all moved.
    let after = wait_for_some("the verify's writes in the stats", || {
        let s = stats(&lab);
        (export_stat(&s, "e1.2", "bytes_written") >= 1 << 20).then_some(s)
    });
    for key in keys {
        assert!(
            export_stat(&after, "e1.2", key) > export_stat(&before, "e1.2", key),
            "{key}: {before} -> {after}"
        );
    }
    assert_eq!(export_stat(&after, "e1.2", "bytes_written"), 1 << 20);
    // --watch: one JSON object a second, for a collector.
    let mut watch = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.target_ns,
            "env",
            &lab.bpffs_env().unwrap(),
        ])
        .arg(aoe_integration::aoe_ctl())
        .args(["stats", "--watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let lines: Vec<serde_json::Value> = (0..2)
        .map(|k| {
            let l = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("stats --watch printed {k} lines in 10 s"));
            serde_json::from_str(&l).unwrap()
        })
        .collect();
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert_eq!(export_stat(&lines[1], "e1.2", "bytes_written"), 1 << 20);

    // acl add locks us out at once (no wait), acl del lets us back.
    let add = lab
        .run_live(&["acl", "add", "--target", "e1.2", STRANGER])
        .unwrap();
    assert!(add.status.success(), "{}", text(&add));
    if xdp {
        assert!(!discover(&lab, &i1).contains("e1.2"), "locked out at once");
    } else {
        wait_for("locked out", || !discover(&lab, &i1).contains("e1.2"));
    }
    let list = lab.run_live(&["acl", "list", "--target", "e1.2"]).unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains(STRANGER));
    let dropped = if xdp {
        "dropped_acl_kernel"
    } else {
        "dropped_acl_user"
    };
    wait_for(&format!("{dropped} in the stats"), || {
        export_stat(&stats(&lab), "e1.2", dropped) > 0
    });
    let del = lab
        .run_live(&["acl", "del", "--target", "e1.2", STRANGER])
        .unwrap();
    assert!(del.status.success(), "{}", text(&del));
    if xdp {
        assert!(discover(&lab, &i1).contains("e1.2"), "back at once");
    } else {
        wait_for("back", || discover(&lab, &i1).contains("e1.2"));
    }
    assert!(verify(&lab, &i1, "e1.2", "64K").status.success());

    // A reservation by another initiator locks us out of ATA; clearing it lets us back.
    let holder: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0b];
    let ifname = i1.clone();
    let rep = Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        let t = c.find(1, 2).unwrap();
        let a = Addr {
            src: holder,
            ..t.addr
        };
        let mut b = vec![0u8; 1500];
        let n = frames::reserve(&mut b, &a, 0x1234, RCMD_SET, &[holder]);
        c.exchange(&b[..n], Duration::from_millis(500)).unwrap()
    })
    .unwrap();
    assert!(rep.is_some(), "reservation answered");
    let show = lab
        .run_live(&["reservation", "show", "--target", "e1.2"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("02:bb:00:00:00:0b"),
        "{}",
        text(&show)
    );
    assert!(
        !verify(&lab, &i1, "e1.2", "64K").status.success(),
        "reserved"
    );
    let clear = lab
        .run_live(&["reservation", "clear", "--target", "e1.2"])
        .unwrap();
    assert!(clear.status.success(), "{}", text(&clear));
    wait_for("writes allowed after the clear", || {
        verify(&lab, &i1, "e1.2", "64K").status.success()
    });

    // Unknown targets get a one-line answer.
    let none = lab.run_live(&["acl", "list", "--target", "e9.9"]).unwrap();
    assert!(!none.status.success() && text(&none).contains("e9.9 is not served"));
    let log = target.stop().unwrap();
    assert!(log.contains("e1.2: acl add"), "{log}");
    let gone = text(&lab.run_live(&["status"]).unwrap());
    assert!(
        gone.contains("no aoe-ctl target is running"),
        "pins removed: {gone}"
    );
}

#[test]
fn config_string_survives_a_restart() {
    let lab = Lab::new().unwrap();
    let _peer = peer(&lab, &lab.initiator_if);
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let cfg = write_config(
        &lab,
        &format!(
            "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{}\"]\npath = \"{}\"\nconfig = \"initial\"\n",
            lab.target_if,
            img.display()
        ),
    );
    let start = || {
        lab.spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
            .unwrap()
    };
    let d = start();
    wait_for("initial string", || {
        discover(&lab, &lab.initiator_if).contains("initial")
    });
    let set = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.initiator_ns,
            "aoecfg",
            "-c",
            "fset",
            "-s",
            "kept-here",
        ])
        .args(["-t", "2", "1", "2", &lab.initiator_if])
        .output()
        .expect("aoecfg (apt-get install aoetools)");
    assert!(set.status.success(), "{}", text(&set));
    drop(d);
    let state = std::fs::read_to_string(lab.dir.join("exports.state")).unwrap();
    assert!(state.contains(
        &"kept-here"
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let _again = start();
    wait_for("string kept across the restart", || {
        discover(&lab, &lab.initiator_if).contains("kept-here")
    });
}

#[test]
fn afpacket_mode_and_direct_io() {
    let lab = Lab::new().unwrap();
    let disk = DiskDir::new();
    const MIB: usize = 1 << 20;
    // --direct, then a control without it that shows the page cache in use.
    for (extra, direct) in [(&["--direct"][..], true), (&[][..], false)] {
        let img = disk.0.join(format!("direct-{direct}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let mut args = vec!["--mode", "afpacket"];
        args.extend_from_slice(extra);
        let t = lab.start_export(&img, &args).unwrap();
        assert!(
            t.first_line.contains(", afpacket, 1 queue"),
            "{}",
            t.first_line
        );
        assert!(
            !lab.target_has_xdp().unwrap(),
            "no XDP program on this path"
        );
        let d = discover(&lab, &lab.initiator_if);
        assert!(d.contains("e1.2"), "{d}");
        let v = verify(&lab, &lab.initiator_if, "e1.2", "1M");
        assert!(v.status.success(), "{}", text(&v));
        // Asked before anything here reads the file (which would cache it).
        let resident = resident_pages(&img, MIB);
        if direct {
            assert_eq!(resident, 0, "--direct: written pages in the page cache");
            // Past the page cache: every descriptor on the image is O_DIRECT. (Durability
            // comes from fdatasync, one per group of writes: robustness.rs tests it.)
            let flags = open_flags(t.pid(), &img);
            assert!(
                !flags.is_empty() && flags.iter().all(|f| f & libc::O_DIRECT != 0),
                "the image is open without O_DIRECT: flags {:?}",
                flags.iter().map(|f| format!("{f:o}")).collect::<Vec<_>>()
            );
        } else {
            assert_eq!(resident, MIB / 4096, "control: written pages not cached");
        }
        for lba in [0, 1, 1000, 2047] {
            assert!(holds_pattern(&img, lba), "{extra:?}: sector {lba}");
        }
        let log = t.stop().unwrap();
        assert!(log.contains("kernel: not used (afpacket)"), "{log}");
    }
}

/// The open flags (from /proc/PID/fdinfo) of every descriptor of process `pid` on `path`.
fn open_flags(pid: u32, path: &std::path::Path) -> Vec<i32> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.filter_map(|fd| {
        let fd = fd.ok()?;
        if std::fs::read_link(fd.path()).ok()? != path {
            return None;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?))
                .ok()?;
        let octal = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
        i32::from_str_radix(octal, 8).ok()
    })
    .collect()
}

#[test]
fn vblade_compatible_form() {
    let lab = Lab::new().unwrap();
    let _peer = peer(&lab, &lab.initiator_if);
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let img_path = img.to_str().unwrap();
    // vblade's own command line: flags, then shelf slot netif filename.
    let vblade = |flags: &[&str]| {
        let mut args = vec!["vblade", "-b", "8", "-o", "64", "-l", "1024"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["1", "2", &lab.target_if, img_path]);
        lab.spawn(&lab.target_ns, &args).unwrap()
    };
    let t = vblade(&["-m", "02:00:00:00:00:01,02:00:00:00:00:02"]);
    assert!(
        t.first_line.starts_with("e1.2 ") && t.first_line.contains(" 1024 sectors"),
        "{}",
        t.first_line
    );
    // -m: our MAC is not listed.
    assert!(!discover(&lab, &lab.initiator_if).contains("e1.2"));
    drop(t);
    let t = vblade(&[]);
    let v = verify(&lab, &lab.initiator_if, "e1.2", "256K");
    assert!(v.status.success(), "{}", text(&v));
    let raw = std::fs::read(&img).unwrap();
    assert!(
        raw[..64 * 512].iter().all(|&x| x == 0),
        "-o 64: nothing before sector 64"
    );
    assert!(
        raw[64 * 512..65 * 512].iter().any(|&x| x != 0),
        "data from sector 64 on"
    );
    drop(t);
}

#[test]
fn pins_of_a_killed_target_are_replaced() {
    let lab = Lab::new().unwrap();
    let _peer = peer(&lab, &lab.initiator_if);
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let args = lab.export_args(&img, &[]);
    let mut first = lab.spawn_live(&args).unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        lab.dir.join("bpf/aoe").join(&lab.target_if).exists(),
        "pins left behind"
    );
    // Status skips the dead owner's pins; a new target replaces them.
    let st = text(&lab.run_live(&["status"]).unwrap());
    assert!(st.contains("no aoe-ctl target is running"), "{st}");
    let second = lab.spawn_live(&args).unwrap();
    let st = text(&lab.run_live(&["status"]).unwrap());
    assert!(st.contains(&format!("pid {}", second.pid())), "{st}");
    assert!(verify(&lab, &lab.initiator_if, "e1.2", "64K")
        .status
        .success());
}

#[test]
fn auto_mode_without_cap_bpf_falls_back_to_afpacket() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    // No CAP_BPF, CAP_SYS_ADMIN or CAP_PERFMON: no XDP program and no BPF maps.
    let t = aoe_integration::spawn_in_env(
        &lab.target_ns,
        &[
            "setpriv".into(),
            "--bounding-set=-bpf,-sys_admin,-perfmon".into(),
        ],
        &lab.export_args(&img, &[]),
    )
    .unwrap();
    assert!(
        t.first_line.contains(", afpacket, 1 queue"),
        "{}",
        t.first_line
    );
    let v = verify(&lab, &lab.initiator_if, "e1.2", "256K");
    assert!(v.status.success(), "{}", text(&v));
    let log = t.stop().unwrap();
    assert!(
        log.contains("XDP unavailable") && log.contains("serving through AF_PACKET"),
        "auto says which mode it chose: {log}"
    );
    assert!(log.contains("status, stats and acl cannot reach"), "{log}");
}
