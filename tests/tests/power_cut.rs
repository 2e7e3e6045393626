//! Power cuts under load: several initiators keep many durable writes in flight, the power
//! of the target's storage is cut at a random moment (faultfs drops every write not synced
//! and fails everything after), the target is killed, and the disk must hold every write
//! that was acknowledged. The cut comes first: a sync the target had in flight then fails,
//! so a target that acknowledges before its sync completes loses the write, as it would in
//! a real power loss (killed first, its submitted sync would still complete). On both data paths, through both durable write paths (buffered +
//! fdatasync on the FUSE file; O_DIRECT write-around on a loop device over it), and with
//! `--direct`. The control: `--write-back` acknowledges from the page cache and must lose
//! acknowledged writes, or the test could not fail. docs/fault-lab.md has the figures.
//!
//! AOE_FAULT_SEED=N repeats a run's random moments and blocks (each test prints its seed).

#[path = "common/ledger.rs"]
#[allow(dead_code)]
mod ledger;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aoe_integration::{FaultFs, Lab, LoopDev, Proc};
use ledger::{Ledger, Rng, Writer};

/// Initiators at once, and the writes each keeps in flight.
const WRITERS: usize = 3;
const DEPTH: usize = 16;
/// Each writer's region, in sectors (1 MiB): blocks are rewritten often enough that a
/// lost write shows as an older generation.
const SPAN: u64 = 2048;
const IMAGE: u64 = 8 << 20;
/// Half the writes are runs of this many blocks, sent back to back: the target merges them.
const RUN: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// The faultfs file itself: no STATX_DIOALIGN, so buffered writes + fdatasync.
    File,
    /// A loop device on it with this logical sector size: 512 reports O_DIRECT alignment
    /// (write-around); on 4096, 1 KiB writes cannot go O_DIRECT (buffered on a block device).
    Loop(u32),
}

struct Case {
    mode: &'static str,
    store: Store,
    extra: &'static [&'static str],
    cuts: usize,
}

#[derive(Debug, Default)]
struct Figures {
    cuts: usize,
    acked: u64,
    lost: usize,
    unanswered: u64,
    dropped: u64,
    retransmits: u64,
    errors: u64,
}

/// The target, killed with SIGKILL right after the cut: no exit path runs.
fn kill(mut target: Proc) {
    let _ = target.child.kill();
    let _ = target.child.wait();
}

fn run(case: &Case) -> Figures {
    let seed = ledger::seed();
    let name = format!("{} {:?} {:?}", case.mode, case.store, case.extra);
    println!("power cut {name}: seed {seed}");
    let mut rng = Rng::new(seed);
    let lab = Lab::new().expect("lab (root needed)");
    let _peer = lab.start_peer(&lab.initiator_if).expect("lab peer");
    let ifaces = lab.macvlans(WRITERS).expect("one interface per initiator");
    let backing = lab.dir.join("disk.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(IMAGE)
        .unwrap();
    let mnt = lab.dir.join("mnt");
    let mut fig = Figures::default();
    let mut first_gen = 0;
    for cut in 0..case.cuts {
        let mut fs = FaultFs::mount(&backing, &mnt).expect("faultfs mounts");
        let mut lo = match case.store {
            Store::File => None,
            Store::Loop(size) => Some(LoopDev::attach(&fs.file, size).expect("loop device")),
        };
        let image: PathBuf = lo.as_ref().map_or(fs.file.clone(), |l| l.path.clone());
        let mut extra = vec!["--mode", case.mode, "--buffers", "64"];
        extra.extend_from_slice(case.extra);
        let args = lab.export_args(&image, &extra);
        let target = lab.spawn(&lab.target_ns, &args).expect("target starts");
        if cut == 0 {
            // Reads too, merged ones among them, on this storage: a pattern written, read
            // back and compared, past the writers' regions.
            let o = lab
                .verify("1M", &["--offset", &(WRITERS as u64 * SPAN).to_string()])
                .unwrap();
            assert!(
                o.status.success(),
                "{name}: aoe-ctl verify failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let writers: Vec<ledger::Running> = ifaces
            .iter()
            .enumerate()
            .map(|(k, iface)| {
                ledger::start(
                    &lab.initiator_ns,
                    Writer {
                        iface: iface.clone(),
                        shelf: 1,
                        slot: 2,
                        base: k as u64 * SPAN,
                        span: SPAN,
                        depth: DEPTH,
                        first_gen,
                        seed: rng.next(),
                        timeout: Duration::from_millis(1000),
                        run: RUN,
                        cpu: None,
                    },
                )
            })
            .collect();
        // Load for a while, until each initiator has been answered a few times, then a
        // random moment more.
        let deadline = Instant::now() + Duration::from_secs(60);
        while writers.iter().any(|w| w.acks() < 20) {
            assert!(
                Instant::now() < deadline,
                "{name}: cut {cut}: no load after 60 s ({:?} acks)",
                writers.iter().map(|w| w.acks()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1000)));
        let cut_at = Instant::now();
        let dropped = fs.cut_power().expect("cut");
        kill(target);
        let ledgers: Vec<Ledger> = writers.into_iter().map(|w| w.stop()).collect();
        if let Some(l) = lo.as_mut() {
            l.detach().expect("loop device detached");
        }
        fs.unmount().expect("unmounted");
        let disk = std::fs::read(&backing).unwrap();
        let (lost, checked) = ledger::check(&disk, &ledgers);
        let acked: u64 = ledgers.iter().map(|l| l.acks).sum();
        let unanswered: u64 = ledgers.iter().map(|l| l.unanswered).sum();
        println!(
            "power cut {name}: cut {cut}: {acked} writes acknowledged ({checked} blocks), \
             {unanswered} in flight, {} unsynced writes dropped, {} lost",
            dropped.dropped_writes,
            lost.len()
        );
        for l in lost.iter().take(if case.extra.contains(&"--write-back") {
            0
        } else {
            5
        }) {
            println!(
                "  lost: block {} acknowledged as write {}, disk holds {:?} (sector headers {:?})",
                l.lba, l.acked, l.found, l.headers
            );
        }
        fig.cuts += 1;
        fig.acked += acked;
        fig.lost += lost.len();
        fig.unanswered += unanswered;
        fig.dropped += dropped.dropped_writes;
        fig.retransmits += ledgers.iter().map(|l| l.retransmits).sum::<u64>();
        fig.errors += ledgers.iter().map(|l| l.errors_before(cut_at)).sum::<u64>();
        first_gen = ledgers
            .iter()
            .flat_map(|l| l.events.iter().map(|e| e.gen))
            .max()
            .unwrap_or(first_gen)
            .max(first_gen)
            + 1_000_000;
    }
    println!(
        "power cut {name}: {} cuts, {} writes acknowledged, {} lost, {} in flight at the cuts, \
         {} unsynced writes dropped, {} retransmits, {} error replies before the cuts",
        fig.cuts, fig.acked, fig.lost, fig.unanswered, fig.dropped, fig.retransmits, fig.errors
    );
    fig
}

fn durable(case: Case) {
    let f = run(&case);
    assert!(f.acked > 0, "no write was acknowledged");
    assert_eq!(f.errors, 0, "error replies under a healthy disk");
    assert_eq!(
        f.lost, 0,
        "acknowledged writes lost in a power cut (see the lines above; seed printed first)"
    );
}

#[test]
fn xdp_buffered_and_fdatasync() {
    durable(Case {
        mode: "xdp",
        store: Store::File,
        extra: &[],
        cuts: 4,
    });
}

#[test]
fn afpacket_buffered_and_fdatasync() {
    durable(Case {
        mode: "afpacket",
        store: Store::File,
        extra: &[],
        cuts: 4,
    });
}

#[test]
fn xdp_write_around() {
    durable(Case {
        mode: "xdp",
        store: Store::Loop(512),
        extra: &[],
        cuts: 4,
    });
}

#[test]
fn afpacket_write_around() {
    durable(Case {
        mode: "afpacket",
        store: Store::Loop(512),
        extra: &[],
        cuts: 4,
    });
}

#[test]
fn xdp_direct() {
    durable(Case {
        mode: "xdp",
        store: Store::File,
        extra: &["--direct"],
        cuts: 4,
    });
}

#[test]
fn afpacket_direct() {
    durable(Case {
        mode: "afpacket",
        store: Store::File,
        extra: &["--direct"],
        cuts: 4,
    });
}

#[test]
fn xdp_misaligned_on_a_4kn_device() {
    durable(Case {
        mode: "xdp",
        store: Store::Loop(4096),
        extra: &[],
        cuts: 2,
    });
}

#[test]
fn write_back_loses_acknowledged_writes() {
    // The control: the same load and cuts against a target that acknowledges from the page
    // cache. If nothing is lost here, the test cannot tell a durable target from another.
    let f = run(&Case {
        mode: "xdp",
        store: Store::File,
        extra: &["--write-back"],
        cuts: 2,
    });
    assert!(f.acked > 0, "no write was acknowledged");
    assert!(
        f.lost > 0,
        "--write-back lost nothing in {} power cuts: the test cannot see a lost write",
        f.cuts
    );
}
