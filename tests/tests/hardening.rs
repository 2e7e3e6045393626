//! The hardening of packaging/systemd/aoe-ctl.service, checked for real where systemd is
//! not PID 1: aoe-ctl runs under `setpriv` with exactly the unit's CapabilityBoundingSet
//! (as a root service gets it: effective = bounding set), no inheritable capabilities and
//! NoNewPrivileges, under `prlimit` for the memlock limit, and serves XDP + AF_XDP. Taking
//! any one capability away (or, for CAP_IPC_LOCK, also the memlock room) stops it with the
//! kernel's refusal, so the set is what the data path needs.

use std::path::Path;

use aoe_integration::{Lab, Proc};

/// The unit's value of `key` (the last assignment, as systemd reads it).
fn unit_value(key: &str) -> String {
    let unit = aoe_integration::workspace_root().join("packaging/systemd/aoe-ctl.service");
    std::fs::read_to_string(&unit)
        .unwrap()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= not in {}", unit.display()))
        .to_string()
}

/// "CAP_NET_ADMIN CAP_BPF ..." from the unit.
fn unit_caps() -> Vec<String> {
    unit_value("CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_IPC_LOCK" => 14,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("capability {other} not known to this test"),
    }
}

/// The memlock limit a process of ours can get: the unit's when it can (infinity needs
/// CAP_SYS_RESOURCE where the hard limit is lower, as in some sandboxes), else the hard
/// limit.
fn memlock(unit: &str) -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) }, 0);
    if unit == "infinity" && r.rlim_max == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        r.rlim_max.to_string()
    }
}

fn wrapper(caps: &[String], memlock: &str) -> Vec<String> {
    let bounding: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "prlimit".into(),
        format!("--memlock={memlock}"),
        "setpriv".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all,{}", bounding.join(",")),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

fn serve(lab: &Lab, image: &Path, caps: &[String], memlock: &str) -> anyhow::Result<Proc> {
    let args = lab.export_args(image, &["--mode", "xdp"]);
    aoe_integration::spawn_under(
        &lab.target_ns,
        &lab.live_env()?,
        &wrapper(caps, memlock),
        &args,
    )
}

fn status_line(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn the_units_capabilities_serve_xdp_and_af_xdp() {
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let image = lab.image("disk.img", 16 << 20).unwrap();
    assert_eq!(unit_value("NoNewPrivileges"), "yes");
    let caps = unit_caps();
    let target = serve(&lab, &image, &caps, &memlock(&unit_value("LimitMEMLOCK"))).unwrap();

    // The process runs with exactly the unit's set, and can gain no other.
    let want: u64 = caps.iter().map(|c| 1u64 << cap_number(c)).sum();
    let eff = u64::from_str_radix(&status_line(target.pid(), "CapEff"), 16).unwrap();
    assert_eq!(
        eff, want,
        "CapEff {eff:x}, the unit says {want:x} ({caps:?})"
    );
    assert_eq!(status_line(target.pid(), "NoNewPrivs"), "1");

    assert!(lab.target_has_xdp().unwrap(), "no XDP program attached");
    let v = lab.verify("4M", &[]).unwrap();
    assert!(
        v.status.success(),
        "verify through XDP + AF_XDP: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let s = lab.run_live(&["status"]).unwrap();
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("xdp"),
        "status: {s:?}"
    );
    drop(target);
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    let lab = Lab::new().unwrap();
    let image = lab.image("disk.img", 1 << 20).unwrap();
    let caps = unit_caps();
    // With little memlock room, only CAP_IPC_LOCK lets the UMEM be registered.
    let tight = "65536";
    assert!(serve(&lab, &image, &caps, tight).is_ok(), "the unit's set");
    for gone in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != gone).cloned().collect();
        match serve(&lab, &image, &fewer, tight) {
            Ok(_) => panic!("serves without {gone}"),
            Err(e) => eprintln!("without {gone}: {e:#}"),
        }
    }
}
