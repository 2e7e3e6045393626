//! The daemon under systemd's notify protocol, without systemd: the test binds the
//! NOTIFY_SOCKET datagram socket itself and reads what the daemon says. READY=1 comes once
//! the export answers (and never when it cannot serve), WATCHDOG=1 keeps coming at half of
//! WATCHDOG_USEC, a SIGHUP reload is RELOADING=1 then READY=1, and SIGTERM says STOPPING=1.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use aoe_integration::{Lab, Proc};

/// The datagrams that arrive within `within`, stopping early once one contains `until`.
fn messages(sock: &UnixDatagram, within: Duration, until: Option<&str>) -> Vec<String> {
    let end = Instant::now() + within;
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = until.is_some_and(|u| m.lines().any(|l| l == u));
                got.push(m);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

fn has(msgs: &[String], line: &str) -> bool {
    msgs.iter().any(|m| m.lines().any(|l| l == line))
}

fn notify_socket(lab: &Lab) -> (UnixDatagram, String) {
    let path = lab.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    (sock, format!("NOTIFY_SOCKET={}", path.display()))
}

fn hup(p: &Proc) {
    // SAFETY: signalling our own child (ip netns exec and env exec into aoe-ctl).
    unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
}

#[test]
fn ready_once_serving_then_watchdog_reload_and_stopping() {
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let image = lab.image("disk.img", 8 << 20).unwrap();
    let cfg = lab.dir.join("exports.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{}\"]\npath = \"{}\"\n",
            lab.target_if,
            image.display()
        ),
    )
    .unwrap();
    let (sock, notify) = notify_socket(&lab);
    let mut env = lab.live_env().unwrap();
    env.push(notify);
    // 300 ms: a ping every 150 ms.
    env.push("WATCHDOG_USEC=300000".into());
    let daemon = aoe_integration::spawn_in_env(
        &lab.target_ns,
        &env,
        &["daemon", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();

    let first = messages(&sock, Duration::from_secs(10), Some("READY=1"));
    assert!(has(&first, "READY=1"), "no READY=1: {first:?}");
    assert!(
        first[0].lines().any(|l| l == "READY=1"),
        "something before READY=1: {first:?}"
    );
    assert!(
        has(&first, "STATUS=serving 1 export on 1 interface"),
        "{first:?}"
    );
    // Ready means serving: one discovery, no retries.
    let d = lab
        .run(
            &lab.initiator_ns,
            &["discover", "--iface", &lab.initiator_if, "--wait-ms", "300"],
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&d.stdout).contains("e1.2"),
        "READY=1 sent, but e1.2 does not answer: {d:?}"
    );

    let later = messages(&sock, Duration::from_millis(1500), None);
    let pings = later
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 5, "{pings} watchdog pings in 1.5 s: {later:?}");

    hup(&daemon);
    let reload = messages(&sock, Duration::from_secs(10), Some("READY=1"));
    let at = |line: &str| reload.iter().position(|m| m.lines().any(|l| l == line));
    match (at("RELOADING=1"), at("READY=1")) {
        (Some(r), Some(d)) => assert!(r < d, "READY=1 before RELOADING=1: {reload:?}"),
        _ => panic!("reload not announced: {reload:?}"),
    }
    assert!(
        reload
            .iter()
            .any(|m| m.lines().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "{reload:?}"
    );

    let log = daemon.stop().unwrap();
    let end = messages(&sock, Duration::from_secs(5), Some("STOPPING=1"));
    assert!(has(&end, "STOPPING=1"), "{end:?} {log}");
}

#[test]
fn no_ready_when_an_export_cannot_serve() {
    let lab = Lab::new().unwrap();
    let (sock, notify) = notify_socket(&lab);
    let mut env = lab.live_env().unwrap();
    env.push(notify);
    let missing = lab.dir.join("missing.img");
    let r = aoe_integration::spawn_in_env(&lab.target_ns, &env, &lab.export_args(&missing, &[]));
    assert!(r.is_err(), "serving a missing image");
    let msgs = messages(&sock, Duration::from_millis(500), None);
    assert!(
        !has(&msgs, "READY=1"),
        "READY=1 for a target that failed: {msgs:?}"
    );
}
