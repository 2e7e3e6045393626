//! Receive queues: AoE frames carry no IP header for RSS to hash, so a NIC may deliver all of
//! them to one queue. One initiator's socket on a four-queue veth sends on one queue, as such
//! a NIC would deliver: the target says so, once, naming what spreads the traffic.
//!
//! The client's socket bypasses the qdisc, so its frames leave on the queue numbered by the
//! CPU it runs on: the test pins itself (and so the clients it starts) to one CPU.

use std::time::{Duration, Instant};

use aoe_integration::{Lab, LabOptions};

#[test]
fn all_frames_on_one_queue_of_four_is_said_once() {
    pin_to_one_cpu();
    let lab = Lab::with(LabOptions {
        mtu: 1500,
        queues: 4,
    })
    .unwrap();
    let img = lab.image("disk.img", 16 << 20).unwrap();
    let (target, _peer) = lab.start_target(&img, &["--write-back"]).unwrap();
    assert!(
        target.first_line.ends_with("4 queues"),
        "{}",
        target.first_line
    );
    // More frames than the target judges by (100,000), from one socket.
    let out = lab
        .bench(&["--pattern", "randread", "--depth", "16", "--ios", "150000"])
        .unwrap();
    assert!(
        out.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon looks at its workers' counts every 500 ms.
    let said = |log: &str| log.matches("AoE frames arrived on queue").count();
    let until = Instant::now() + Duration::from_secs(20);
    while said(&target.log.lock().unwrap()) == 0 {
        assert!(
            Instant::now() < until,
            "nothing said: {}",
            target.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = lab
        .bench(&["--pattern", "randread", "--depth", "16", "--ios", "150000"])
        .unwrap();
    assert!(out.status.success());
    // A tick after the second run, so a second line would be in the log by now.
    std::thread::sleep(Duration::from_millis(1500));
    let log = target.stop().unwrap();
    assert_eq!(said(&log), 1, "said once: {log}");
    assert!(log.contains(" of 4: "), "{log}");
    assert!(log.contains("Receive queues"), "{log}");
}

/// Pin this thread, and the processes it starts, to the first CPU it may run on.
fn pin_to_one_cpu() {
    // SAFETY: cpu_set_t is plain data; the calls only read and write the set given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("a CPU");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}
