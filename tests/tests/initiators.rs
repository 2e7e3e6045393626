//! Four initiators (four MACs) on one export at once: mixed reads and writes to disjoint
//! regions for a minute, every byte verified; then a reservation: one holds the export, the
//! others are refused with AoE error 6 until it releases.

use aoe_common::wire::reserve::RCMD_SET;
use aoe_common::wire::Frame;
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames;
use aoe_integration::Lab;

mod common;

use common::bench_json as json;

/// Sectors of each initiator's region.
const REGION: u64 = 16384;
const SECONDS: &str = "60";

/// The region, seed and bench arguments of initiator `k`.
fn region_args(k: usize) -> Vec<String> {
    [
        "--offset".to_string(),
        (k as u64 * REGION).to_string(),
        "--span".into(),
        REGION.to_string(),
        "--seed".into(),
        (1000 + k).to_string(),
        "--verify".into(),
        "--json".into(),
    ]
    .to_vec()
}

/// Reserve/release from `iface`: the reply's (AoE error flag, error code).
fn reserve(lab: &Lab, iface: &str, macs: Vec<[u8; 6]>) -> (bool, u8) {
    let ifname = iface.to_string();
    Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        let t = c.find(1, 2).unwrap();
        let rep = c
            .request(&|b, tag| frames::reserve(b, &t.addr, tag, RCMD_SET, &macs))
            .unwrap();
        let f = Frame::new_checked(&rep[..]).unwrap();
        (f.is_error(), f.error())
    })
    .unwrap()
}

fn mac_of(lab: &Lab, iface: &str) -> [u8; 6] {
    let ifname = iface.to_string();
    Lab::in_ns(&lab.initiator_ns, move || {
        aoe_ctl::net::Interface::lookup(&ifname).unwrap().mac
    })
    .unwrap()
}

#[test]
fn four_initiators_for_a_minute_then_a_reservation() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 64 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--buffers", "64"]).unwrap();
    let ifs = lab.macvlans(4).unwrap();
    let macs: Vec<[u8; 6]> = ifs.iter().map(|i| mac_of(&lab, i)).collect();
    for (i, a) in macs.iter().enumerate() {
        assert!(
            macs[i + 1..].iter().all(|b| a != b),
            "MACs not distinct: {macs:?}"
        );
    }

    // Each fills its own region with its own pattern...
    for (k, iface) in ifs.iter().enumerate() {
        // One pass over the region (two sectors a request), however slow durable
        // (fdatasync'd) writes are on a loaded machine.
        let ios = (REGION / 2).to_string();
        let mut args = vec![
            "--pattern",
            "seqwrite",
            "--depth",
            "16",
            "--duration",
            "120",
            "--ios",
            &ios,
        ];
        let extra = region_args(k);
        args.extend(extra.iter().map(String::as_str));
        let out = lab.bench_via(iface, &args).unwrap();
        let j = json(&out.stdout);
        assert!(out.status.success(), "fill {k}: {j}");
        assert!(
            j["verified_sectors"].as_u64().unwrap() >= REGION,
            "fill {k}: {j}"
        );
    }
    // ... then all four mix reads (checked against the pattern) and writes at once.
    let running: Vec<_> = ifs
        .iter()
        .enumerate()
        .map(|(k, iface)| {
            let mut args: Vec<String> = ["--pattern", "randrw", "--depth", "16", "--duration"]
                .iter()
                .map(|a| a.to_string())
                .collect();
            args.push(SECONDS.into());
            args.extend(region_args(k));
            lab.spawn_bench(iface, &args).unwrap()
        })
        .collect();
    let mut total = 0.0;
    for (k, p) in running.into_iter().enumerate() {
        let out = p.wait_with_output().unwrap();
        let j = json(&out.stdout);
        eprintln!("initiator {k} ({}): {j}", ifs[k]);
        assert!(out.status.success(), "initiator {k}: {j}");
        assert_eq!(j["errors"], 0, "{j}");
        assert_eq!(j["verify_errors"], 0, "{j}");
        assert!(j["ios"].as_u64().unwrap() > 0, "{j}");
        total += j["verified_sectors"].as_f64().unwrap();
    }
    eprintln!("{total} sectors verified over the four regions");
    // Every byte of every region, in the file: each holds its own initiator's pattern.
    let raw = std::fs::read(&img).unwrap();
    let mut want = vec![0u8; (REGION * 512) as usize];
    for k in 0..4u64 {
        aoe_ctl::initiator::verify::pattern(1000 + k, k * REGION, &mut want);
        let at = (k * REGION * 512) as usize;
        assert!(raw[at..at + want.len()] == want[..], "region {k} differs");
    }

    // A reservation: initiator 0 holds the export.
    assert_eq!(reserve(&lab, &ifs[0], vec![macs[0]]), (false, 0));
    let read = [
        "--pattern",
        "randread",
        "--depth",
        "4",
        "--duration",
        "0.3",
        "--json",
    ];
    // Not even IDENTIFY is answered to another initiator: AoE error 6.
    let other = lab.bench_via(&ifs[1], &read).unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "not the holder, yet served");
    assert!(err.contains("AoE error 6"), "{err}");
    assert_eq!(
        reserve(&lab, &ifs[2], vec![macs[2]]),
        (true, 6),
        "set by a non-holder"
    );
    let holder = lab.bench_via(&ifs[0], &read).unwrap();
    assert!(holder.status.success(), "{}", json(&holder.stdout));
    // Released (an empty list from the holder): the others are served again.
    assert_eq!(reserve(&lab, &ifs[0], vec![]), (false, 0));
    let again = lab.bench_via(&ifs[1], &read).unwrap();
    assert!(again.status.success(), "{}", json(&again.stdout));
    target.stop().unwrap();
}
