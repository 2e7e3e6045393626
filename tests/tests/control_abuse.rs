//! The control plane under a hostile load: an operator's `aoe-ctl acl add` gets through while
//! hosts on the segment flood config force sets (each one a state-file write), and the
//! metrics endpoint serves a scrape while every one of its connections is held by a client
//! that asked and never reads.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_common::wire::config::ConfigCommand;
use aoe_common::wire::Mac;
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_ctl::net::format_mac;
use aoe_integration::{Lab, Proc};
use common::wait_for;

const METRICS: &str = "127.0.0.1:9727";

/// A daemon serving `exports` exports (e1.2, e1.3, ...) on the lab's target link, its state
/// file beside the config, with `extra` top-level settings.
fn daemon(lab: &Lab, exports: u8, extra: &str) -> Proc {
    let mut body = extra.to_string();
    for slot in 2..2 + exports {
        let img = lab.image(&format!("e1.{slot}.img"), 1 << 20).unwrap();
        body += &format!(
            "\n[[export]]\nshelf = 1\nslot = {slot}\ninterfaces = [\"{}\"]\npath = \"{}\"\n",
            lab.target_if,
            img.display()
        );
    }
    let config = lab.dir.join("exports.toml");
    std::fs::write(&config, body).unwrap();
    lab.spawn_live(&["daemon", "--config", config.to_str().unwrap()])
        .unwrap()
}

/// While hosts flood config force sets (one host alternating two strings, and the same from
/// 4,096 spoofed source MACs, so that the initiators' queue is full), `aoe-ctl acl add`
/// succeeds every time, within the client's 5 s; and once a list is in place the flood's
/// sets are refused.
#[test]
fn acl_add_gets_through_a_flood_of_config_sets() {
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let _target = daemon(&lab, 1, "");
    let ifname = lab.initiator_if.clone();
    let (client, target_mac) = Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        let t = c.find(1, 2).unwrap();
        (c, t.addr.dst)
    })
    .unwrap();
    let me = client.mac();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut b = vec![0u8; 128];
            let mut i: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                // Every other frame from the one flooding host, the rest from spoofed ones.
                let src: Mac = if i.is_multiple_of(2) {
                    [0x02, 0xf1, 0, 0, 0, 1]
                } else {
                    [0x02, 0xf2, 0, 0, (i >> 9) as u8 & 0x0f, (i >> 1) as u8]
                };
                let to = Addr {
                    src,
                    dst: target_mac,
                    shelf: 1,
                    slot: 2,
                };
                let s: &[u8] = if i % 4 < 2 { b"flood-a" } else { b"flood-b" };
                let n = frames::config(&mut b, &to, 0x8000_0000 | i, ConfigCommand::ForceSet, s);
                if client.sock.send(&b[..n]).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            client
        })
    };
    wait_for("the flood to start", || {
        sent.load(Ordering::Relaxed) > 20_000
    });
    let mut slowest = Duration::ZERO;
    for k in 0..5u8 {
        let mac = format_mac(&[0x02, 0xac, 0, 0, 0, k]);
        let start = Instant::now();
        let o = lab
            .run_live(&["acl", "add", "--target", "e1.2", &mac])
            .unwrap();
        slowest = slowest.max(start.elapsed());
        assert!(
            o.status.success(),
            "acl add {mac} during the flood: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Our own MAC too: the list now holds it, and none of the flood's sources.
    let o = lab
        .run_live(&["acl", "add", "--target", "e1.2", &format_mac(&me)])
        .unwrap();
    assert!(o.status.success());
    let sent_during = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut client = flood.join().unwrap();
    eprintln!("{sent_during} config sets flooded; slowest acl add {slowest:?}");
    // The flood's last sets, queued before the list, settle; after it nothing changes the
    // string: a set from us now shows, and stays.
    let to = Addr {
        src: me,
        dst: target_mac,
        shelf: 1,
        slot: 2,
    };
    let rep = client
        .request(&|b, tag| frames::config(b, &to, tag, ConfigCommand::ForceSet, b"mine"))
        .unwrap();
    assert_eq!(rep[15], 0);
    let read = |c: &mut Client| {
        let rep = c
            .request(&|b, tag| frames::config(b, &to, tag, ConfigCommand::Read, b""))
            .unwrap();
        aoe_common::wire::config::ConfigRepr::parse(&rep)
            .unwrap()
            .string
            .to_vec()
    };
    wait_for("our string to stay", || read(&mut client) == b"mine");
}

/// `MAX_CONNECTIONS` (32) clients ask for the metrics and never read the answer (with
/// buffers too small to hold it); a 33rd scrape is still answered, once the endpoint's bound
/// on a whole exchange (10 s) has closed theirs.
#[test]
fn metrics_are_served_while_clients_that_never_read_hold_every_connection() {
    let lab = Lab::new().unwrap();
    let sysctl = |kv: &str| {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.target_ns, "sysctl", "-qw", kv])
            .status()
            .unwrap()
            .success();
        assert!(ok, "sysctl {kv}");
    };
    // Socket buffers far smaller than an answer: a client that does not read holds the
    // writer (both ends are on this namespace's loopback).
    sysctl("net.ipv4.tcp_wmem=4096 4096 4096");
    sysctl("net.ipv4.tcp_rmem=4096 4096 4096");
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let _target = daemon(&lab, 8, &format!("metrics = \"{METRICS}\"\n"));
    let stuck = Lab::in_ns(&lab.target_ns, || {
        (0..32)
            .map(|_| {
                let mut s = TcpStream::connect(METRICS).unwrap();
                write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                s
            })
            .collect::<Vec<_>>()
    })
    .unwrap();
    let start = Instant::now();
    let scrape = || {
        Lab::in_ns(&lab.target_ns, || -> Option<usize> {
            let mut s = TcpStream::connect(METRICS).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut body).ok()?;
            String::from_utf8_lossy(&body)
                .starts_with("HTTP/1.1 200")
                .then_some(body.len())
        })
        .unwrap()
    };
    let len = common::wait_for_some("a scrape answered", scrape);
    assert!(
        len > 16 << 10,
        "an answer ({len} bytes) larger than the buffers"
    );
    eprintln!("answered after {:?}", start.elapsed());
    drop(stuck);
}
