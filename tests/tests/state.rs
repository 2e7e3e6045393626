//! State that survives restarts: a mask list and a reservation set over AoE are kept in the
//! daemon's state file, come back after a restart and are enforced again (the kernel's mask
//! check and user space's reservation check); a damaged state file stops the daemon (and
//! `--check`) with one line naming it.

mod common;

use std::time::Duration;

use aoe_common::wire::mask::{Directive, DCMD_ADD};
use aoe_common::wire::reserve::RCMD_SET;
use aoe_common::wire::Mac;
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_integration::Lab;
use common::{wait_for, wait_for_some};

const HOLDER: Mac = [0x02, 0xbb, 0, 0, 0, 0x0b];
const STRANGER: Mac = [0x02, 0, 0, 0, 0, 0x99];

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Send one request built by `build` to e1.2 from `src` (our own MAC when `None`); the
/// reply, if one came.
fn ask(lab: &Lab, src: Option<Mac>, build: fn(&mut [u8], &Addr) -> usize) -> Option<Vec<u8>> {
    let ifname = lab.initiator_if.clone();
    Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        let t = c.find(1, 2).unwrap();
        let a = Addr {
            src: src.unwrap_or(t.addr.src),
            ..t.addr
        };
        let mut b = vec![0u8; 1500];
        let n = build(&mut b, &a);
        c.exchange(&b[..n], Duration::from_millis(300)).unwrap()
    })
    .unwrap()
}

fn query(b: &mut [u8], a: &Addr) -> usize {
    frames::config(
        b,
        a,
        0x51,
        aoe_common::wire::config::ConfigCommand::Read,
        b"",
    )
}

fn our_mac(lab: &Lab) -> Mac {
    let ifname = lab.initiator_if.clone();
    Lab::in_ns(&lab.initiator_ns, move || {
        Client::open(&ifname).unwrap().mac()
    })
    .unwrap()
}

fn verify_ok(lab: &Lab) -> bool {
    lab.verify("64K", &[]).unwrap().status.success()
}

fn dropped_acl_kernel(lab: &Lab) -> u64 {
    let o = lab.run_live(&["stats", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == "e1.2")
        .map(|e| e["dropped_acl_kernel"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn masks_and_reservation_survive_a_restart() {
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
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
    let cfg = cfg.to_str().unwrap().to_string();
    let start = || lab.spawn_live(&["daemon", "--config", &cfg]).unwrap();
    let me = our_mac(&lab);
    let d = start();
    wait_for("e1.2 answers a stranger", || {
        ask(&lab, Some(STRANGER), query).is_some()
    });

    // Over AoE: the mask list becomes {us, the holder}, then the holder reserves e1.2.
    fn masks(b: &mut [u8], a: &Addr) -> usize {
        let d = |mac| Directive {
            dcmd: DCMD_ADD,
            mac,
        };
        frames::mask_edit(b, a, 0x52, &[d(a.src), d(HOLDER)])
    }
    fn reserve(b: &mut [u8], a: &Addr) -> usize {
        frames::reserve(b, a, 0x53, RCMD_SET, &[HOLDER])
    }
    assert!(ask(&lab, None, masks).is_some(), "mask edit answered");
    assert!(
        ask(&lab, Some(HOLDER), reserve).is_some(),
        "reserve answered"
    );
    assert!(ask(&lab, Some(STRANGER), query).is_none(), "masked out");
    assert!(!verify_ok(&lab), "reserved by the holder");
    drop(d);

    let d = start();
    let shown = |args: &[&str]| text(&lab.run_live(args).unwrap());
    let acl = wait_for_some("the mask list after the restart", || {
        Some(shown(&["acl", "list", "--target", "e1.2"])).filter(|s| s.contains("02:bb"))
    });
    assert!(acl.contains(&aoe_ctl::net::format_mac(&me)), "{acl}");
    let res = shown(&["reservation", "show", "--target", "e1.2"]);
    assert!(res.contains("02:bb:00:00:00:0b"), "{res}");
    // Enforced again: the kernel drops the stranger, user space refuses our ATA.
    assert!(
        ask(&lab, Some(STRANGER), query).is_none(),
        "still masked out"
    );
    let xdp = lab.target_has_xdp().unwrap();
    if xdp {
        wait_for("the kernel's mask drop counted", || {
            dropped_acl_kernel(&lab) > 0
        });
    }
    assert!(ask(&lab, None, query).is_some(), "we are in the mask list");
    assert!(!verify_ok(&lab), "still reserved by the holder");
    let clear = lab
        .run_live(&["reservation", "clear", "--target", "e1.2"])
        .unwrap();
    assert!(clear.status.success(), "{}", text(&clear));
    wait_for("ours again after the clear", || verify_ok(&lab));
    drop(d);

    // A damaged state file: the daemon and --check refuse it in one line naming it.
    let state = lab.dir.join("exports.state");
    let kept = std::fs::read_to_string(&state).unwrap();
    assert!(kept.contains("\"version\": 2"), "{kept}");
    std::fs::write(&state, kept.replace("02:bb:00:00:00:0b", "02:bb:00:00:0b")).unwrap();
    for extra in [&[][..], &["--check"][..]] {
        let mut args = vec!["daemon", "--config", &cfg];
        args.extend_from_slice(extra);
        let o = lab.run_live(&args).unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(&state.display().to_string()) && err.contains("masks"),
            "{err}"
        );
        assert!(o.stdout.is_empty(), "nothing served: {}", text(&o));
    }
}
