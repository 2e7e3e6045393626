//! Failing disks under load at depth: faultfs under one export of a daemon fails writes
//! (EIO, ENOSPC), a sync (once, on another initiator's page), a read of one sector, or
//! stalls for seconds, while three initiators keep writes in flight and a fourth writes to
//! the daemon's other export, on a healthy disk. What failed gets an ATA error, nothing is
//! acknowledged that the disk does not hold (checked after a power cut), the export fails
//! closed after a sync error, and the other export serves on. docs/fault-lab.md.

#[path = "common/ledger.rs"]
#[allow(dead_code)]
mod ledger;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aoe_common::wire::ata::{ERROR_ABRT, ERROR_UNC, STATUS_ERR};
use aoe_ctl::initiator::client::{Client, Target};
use aoe_ctl::initiator::frames;
use aoe_integration::{FaultFs, Lab, LabOptions, Proc};
use ledger::{Ledger, Outcome, Rng, Running, Writer, BLOCK, SECTOR};

const IMAGE: u64 = 8 << 20;
/// Sectors of each writer's region on e1.2: writers 0, 1, 2 side by side; the rest of the
/// image (from 3 * SPAN) is left to reads.
const SPAN: u64 = 2048;
const DEPTH: usize = 16;
/// Where reads look: a known pattern, written before the mount.
const READ_AREA: u64 = 3 * SPAN;
/// Where the probe writes (no writer's region, no read's sector).
const PROBE: u64 = READ_AREA + 1024;

fn pattern(lba: u64) -> Vec<u8> {
    (0..SECTOR).map(|i| (lba as usize * 13 + i) as u8).collect()
}

/// A daemon serving e1.2 from faultfs and e1.3 from a plain file, with writers on both.
struct Rig {
    fs: FaultFs,
    daemon: Option<Proc>,
    writers: Vec<Running>,
    /// The e1.3 writer (last of `writers`).
    probe: Client,
    e12: Target,
    e13: Target,
    backing: PathBuf,
    _peer: Proc,
    lab: Lab,
    name: String,
}

impl Rig {
    /// `arm` runs after the mount and before the daemon starts (faults present from the
    /// first write). With `queues` 2 the writers take turns on the two CPUs, and XPS sends
    /// each CPU's frames on its own queue: two queue workers write and sync the one file.
    fn start(mode: &str, direct: bool, queues: u32, arm: &str) -> Rig {
        let seed = ledger::seed();
        let name = format!("{mode}{}", if direct { " --direct" } else { "" });
        println!("failing disk {name}: seed {seed}");
        let mut rng = Rng::new(seed);
        let lab = Lab::with(LabOptions { mtu: 1500, queues }).expect("lab (root needed)");
        let spread = queues > 1 && cpus() > 1;
        if spread {
            for q in 0..queues {
                let xps = format!("/sys/class/net/{}/queues/tx-{q}/xps_cpus", lab.initiator_if);
                let ok = std::process::Command::new("ip")
                    .args(["netns", "exec", &lab.initiator_ns, "sh", "-c"])
                    .arg(format!("echo {:x} > {xps}", 1u32 << (q as usize % cpus())))
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "setting {xps}");
            }
        }
        let peer = lab.start_peer(&lab.initiator_if).expect("lab peer");
        let ifaces = lab.macvlans(4).expect("initiator interfaces");
        let backing = lab.dir.join("e1.2.img");
        let mut img = vec![0u8; IMAGE as usize];
        for lba in READ_AREA..IMAGE / 512 {
            img[lba as usize * SECTOR..][..SECTOR].copy_from_slice(&pattern(lba));
        }
        std::fs::write(&backing, &img).unwrap();
        let other = lab.image("e1.3.img", IMAGE).unwrap();
        let fs = FaultFs::mount(&backing, &lab.dir.join("mnt")).expect("faultfs mounts");
        if !arm.is_empty() {
            fs.fail(arm).unwrap();
        }
        let mut body = format!("mode = \"{mode}\"\n");
        for (slot, path) in [(2, &fs.file), (3, &other)] {
            body += &format!(
                "[[export]]\nshelf = 1\nslot = {slot}\ninterfaces = [\"{}\"]\npath = \"{}\"\n\
                 buffers = 64\ndirect = {direct}\n",
                lab.target_if,
                path.display()
            );
        }
        let cfg = lab.dir.join("exports.toml");
        std::fs::write(&cfg, body).unwrap();
        let daemon = lab
            .spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
            .expect("daemon starts");
        let ifname = lab.initiator_if.clone();
        let mut probe = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
            .unwrap()
            .expect("probe socket");
        probe.timeout = Duration::from_millis(1000);
        let e12 = probe.find(1, 2).expect("e1.2 answers");
        let e13 = probe.find(1, 3).expect("e1.3 answers");
        let writers = ifaces
            .iter()
            .enumerate()
            .map(|(k, iface)| {
                let other = k == 3;
                ledger::start(
                    &lab.initiator_ns,
                    Writer {
                        iface: iface.clone(),
                        shelf: 1,
                        slot: if other { 3 } else { 2 },
                        base: if other { 0 } else { k as u64 * SPAN },
                        span: SPAN,
                        depth: DEPTH,
                        first_gen: 0,
                        seed: rng.next(),
                        timeout: Duration::from_millis(1000),
                        run: 1,
                        cpu: spread.then_some(k % 2),
                    },
                )
            })
            .collect();
        Rig {
            fs,
            daemon: Some(daemon),
            writers,
            probe,
            e12,
            e13,
            backing,
            _peer: peer,
            lab,
            name,
        }
    }

    /// Wait until every writer has `n` more answers (acks or errors) than now.
    fn load(&self, n: u64, answered: impl Fn(&Running) -> u64) {
        let from: Vec<u64> = self.writers.iter().map(&answered).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .writers
            .iter()
            .zip(&from)
            .any(|(w, f)| answered(w) < f + n)
        {
            assert!(
                Instant::now() < deadline,
                "{}: no load after 60 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One write of a block by the probe: its ATA (status, error).
    fn write(&mut self, t: &Target, lba: u64) -> (u8, u8) {
        let data = vec![0xa5u8; BLOCK as usize * SECTOR];
        let a = t.addr;
        let rep = self
            .probe
            .request(&|b, tag| frames::write(b, &a, tag, lba, &data))
            .expect("a reply to the probe write");
        (rep[27], rep[25])
    }

    /// One read of a sector by the probe: ATA (status, error) and the data.
    fn read(&mut self, t: &Target, lba: u64) -> ((u8, u8), Vec<u8>) {
        let a = t.addr;
        let rep = self
            .probe
            .request(&|b, tag| frames::read(b, &a, tag, lba, 1))
            .expect("a reply to the probe read");
        (
            (rep[27], rep[25]),
            rep.get(36..36 + SECTOR).unwrap_or(&[]).to_vec(),
        )
    }

    /// A counter of e1.2 once it is above 0 (the daemon publishes every half second), or 0
    /// after 20 s.
    fn counted(&self, key: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.stat(key);
            if n > 0 || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stat(&self, key: &str) -> u64 {
        let o = self.lab.run_live(&["stats", "--json"]).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["exports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["target"] == "e1.2")
            .and_then(|e| e[key].as_u64())
            .unwrap_or_else(|| panic!("{key} of e1.2 in {v}"))
    }

    /// Cut the power, kill the daemon (SIGKILL), stop the writers; the ledgers (e1.2's
    /// three, then e1.3's), the acknowledged e1.2 writes the disk lost, the daemon's log,
    /// and when the cut was (error replies after it come from a dead disk).
    fn finish(mut self) -> (Vec<Ledger>, Vec<ledger::Lost>, String, Instant) {
        let cut_at = Instant::now();
        self.fs.cut_power().expect("power cut");
        let mut d = self.daemon.take().unwrap();
        let _ = d.child.kill();
        let _ = d.child.wait();
        let log = d.log.lock().unwrap().clone();
        let ledgers: Vec<Ledger> = self.writers.drain(..).map(|w| w.stop()).collect();
        self.fs.unmount().expect("unmounted");
        let disk = std::fs::read(&self.backing).unwrap();
        let (lost, checked) = ledger::check(&disk, &ledgers[..3]);
        let acked: u64 = ledgers[..3].iter().map(|l| l.acks).sum();
        let errors: u64 = ledgers[..3].iter().map(|l| l.errors_before(cut_at)).sum();
        println!(
            "failing disk {}: e1.2 {acked} writes acknowledged ({checked} blocks checked after \
             the cut), {errors} error replies before it, {} lost; e1.3 {} acknowledged, {} errors",
            self.name,
            lost.len(),
            ledgers[3].acks,
            ledgers[3].errors
        );
        for l in lost.iter().take(5) {
            println!(
                "  lost: block {} acknowledged as write {}, disk holds {:?} (sector headers {:?})",
                l.lba, l.acked, l.found, l.headers
            );
        }
        (ledgers, lost, log, cut_at)
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Frames the XDP program saw on each receive queue of the target's link.
fn xdp_packets_per_queue(lab: &Lab) -> Vec<u64> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.target_ns,
            "ethtool",
            "-S",
            &lab.target_if,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            (k.starts_with("rx_queue_") && k.ends_with("_xdp_packets")).then(|| v.parse().ok())?
        })
        .collect()
}

fn is_error(status: u8) -> bool {
    status & STATUS_ERR != 0
}

/// Writes into a failing range are answered with ERR/ABRT and never acknowledged; the
/// rest of the export and the other export serve on; nothing acknowledged is lost.
fn failing_writes(mode: &str, errno: &str, counter: &str) {
    // Writer 0's first quarter fails.
    let bytes = SPAN / 4 * 512;
    let mut r = Rig::start(
        mode,
        false,
        1,
        &format!("write at=0 len={bytes} errno={errno}"),
    );
    r.load(50, |w| w.answered());
    let counted = r.counted(counter);
    let outside = r.write(&r.e12.clone(), PROBE);
    let other = r.write(&r.e13.clone(), PROBE);
    let injected = r.fs.stats().unwrap().get("injected");
    let (ledgers, lost, log, cut_at) = r.finish();
    println!("failing disk {mode} {errno}: {injected} faults injected");
    let failed: Vec<&ledger::Event> = ledgers[0]
        .events
        .iter()
        .filter(|e| e.at < cut_at && matches!(e.outcome, Outcome::Failed(..)))
        .collect();
    assert!(
        !failed.is_empty(),
        "no write failed ({injected} injected)\n{log}"
    );
    for e in &failed {
        let Outcome::Failed(status, error) = e.outcome else {
            unreachable!()
        };
        assert!(
            is_error(status) && error == ERROR_ABRT,
            "a failed write answered status {status:#x} error {error:#x}, want ERR + ABRT"
        );
    }
    let in_range = |lba: u64| lba * 512 < bytes;
    let acked_in_range: Vec<u64> = ledgers[0]
        .events
        .iter()
        .filter(|e| e.outcome == Outcome::Acked && in_range(e.lba))
        .map(|e| e.lba)
        .collect();
    assert!(
        acked_in_range.is_empty(),
        "writes into the failing range acknowledged: blocks {acked_in_range:?}"
    );
    assert!(
        ledgers[1].acks > 0 && ledgers[2].acks > 0,
        "the rest of e1.2 stopped serving"
    );
    assert!(counted > 0, "{counter} stayed 0");
    assert_eq!(
        outside.0 & STATUS_ERR,
        0,
        "a write outside the range failed: {outside:?}"
    );
    assert_eq!(
        other.0 & STATUS_ERR,
        0,
        "the other export failed a write: {other:?}"
    );
    assert!(
        ledgers[3].acks > 0 && ledgers[3].errors == 0,
        "the other export: {} acks, {} errors",
        ledgers[3].acks,
        ledgers[3].errors
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[test]
fn xdp_write_eio() {
    failing_writes("xdp", "eio", "errors_storage_io");
}

#[test]
fn afpacket_write_eio() {
    failing_writes("afpacket", "eio", "errors_storage_io");
}

#[test]
fn xdp_write_enospc() {
    failing_writes("xdp", "enospc", "errors_storage_no_space");
}

#[test]
fn afpacket_write_enospc() {
    failing_writes("afpacket", "enospc", "errors_storage_no_space");
}

/// One fdatasync fails, on a page another initiator wrote (and the kernel-like disk loses
/// that page and reports the error once per open file). Every write that waited on it fails,
/// the export fails closed until reopened (a write after it is refused), nothing
/// acknowledged is lost, and the other export serves on.
fn failing_sync(mode: &str, direct: bool) {
    let mut r = Rig::start(mode, direct, 2, "");
    r.load(50, |w| w.acks());
    let per_queue = xdp_packets_per_queue(&r.lab);
    // Writer 1's region: its pages are in the cache of whichever queue's sync comes next.
    let at = SPAN * 512;
    r.fs.fail(&format!("sync at={at} len={}", SPAN * 512))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.fs.stats().unwrap().get("injected") == 0 {
        assert!(
            Instant::now() < deadline,
            "no sync tripped the fault in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let tripped = Instant::now();
    let lost_pages = r.fs.stats().unwrap().get("lost_pages");
    // The load goes on against the failed export; the other export's writer keeps going.
    let other_before = r.writers[3].acks();
    r.load(20, |w| w.answered());
    let closed = r.write(&r.e12.clone(), PROBE);
    let other = r.write(&r.e13.clone(), PROBE);
    let other_after = r.writers[3].acks();
    let (ledgers, lost, log, _) = r.finish();
    let acked_after: usize = ledgers[..3]
        .iter()
        .flat_map(|l| &l.events)
        .filter(|e| e.outcome == Outcome::Acked && e.at > tripped + Duration::from_secs(1))
        .count();
    println!(
        "failing disk {mode} sync: 1 fault injected, {lost_pages} cached pages lost with it, \
         {acked_after} e1.2 writes acknowledged from 1 s after it; XDP frames per queue {per_queue:?}"
    );
    if mode == "xdp" && cpus() > 1 {
        assert!(
            per_queue.len() == 2 && per_queue.iter().all(|&n| n > 0),
            "the writers' frames did not reach both queues: {per_queue:?}"
        );
    }
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after a failed sync: {:?}\n{log}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        is_error(closed.0),
        "e1.2 acknowledged a write after a failed sync: it must fail closed until reopened"
    );
    assert_eq!(
        other.0 & STATUS_ERR,
        0,
        "the other export failed a write: {other:?}"
    );
    assert!(
        other_after > other_before && ledgers[3].errors == 0,
        "the other export stopped serving"
    );
}

#[test]
fn xdp_sync_eio_fails_the_export_closed() {
    failing_sync("xdp", false);
}

#[test]
fn afpacket_sync_eio_fails_the_export_closed() {
    failing_sync("afpacket", false);
}

#[test]
fn xdp_direct_sync_eio_fails_the_export_closed() {
    failing_sync("xdp", true);
}

/// A bad sector: its reads fail with ERR/UNC, reads elsewhere (with `--direct`, even in its
/// page) return the data, and writes go on.
fn bad_sector(mode: &str, direct: bool) {
    let bad = READ_AREA + 64 + 3;
    let mut r = Rig::start(mode, direct, 1, &format!("read at={} len=512", bad * 512));
    r.load(50, |w| w.acks());
    let e12 = r.e12.clone();
    let (st, _) = r.read(&e12, bad);
    assert_eq!(
        (is_error(st.0), st.1),
        (true, ERROR_UNC),
        "a read of the bad sector answered {st:?}, want ERR + UNC"
    );
    // Another page; and with O_DIRECT, the sector next to it.
    let mut good = vec![bad + 16, bad - 16];
    if direct {
        good.extend([bad + 1, bad - 1]);
    }
    for lba in good {
        let (st, data) = r.read(&e12, lba);
        assert_eq!(
            st.0 & STATUS_ERR,
            0,
            "a read of sector {lba} failed: {st:?}"
        );
        assert_eq!(data, pattern(lba), "sector {lba} read back wrong");
    }
    let (st, _) = r.read(&e12, bad);
    assert!(is_error(st.0), "the bad sector read once, then fine?");
    r.load(20, |w| w.acks());
    let injected = r.fs.stats().unwrap().get("injected");
    let counted = r.counted("errors_storage_io");
    let (ledgers, lost, _, cut_at) = r.finish();
    println!("failing disk {mode} bad sector: {injected} faults injected");
    assert!(counted > 0, "errors_storage_io stayed 0");
    assert!(
        ledgers.iter().all(|l| l.errors_before(cut_at) == 0),
        "a write failed beside a bad sector"
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[test]
fn xdp_bad_sector() {
    bad_sector("xdp", false);
}

#[test]
fn afpacket_bad_sector() {
    bad_sector("afpacket", false);
}

#[test]
fn xdp_direct_bad_sector() {
    bad_sector("xdp", true);
}

/// The disk hangs for seconds: nothing is acknowledged that is not on it, the export serves
/// again when it comes back, and the other export serves on meanwhile.
fn stall(mode: &str) {
    const STALL: Duration = Duration::from_secs(4);
    let r = Rig::start(mode, false, 1, "");
    r.load(50, |w| w.acks());
    let t0 = Instant::now();
    r.fs.stall(STALL.as_millis() as u64).unwrap();
    let deadline = t0 + STALL + Duration::from_secs(60);
    std::thread::sleep(STALL);
    // Back: every e1.2 writer is answered again.
    r.load(20, |w| w.acks());
    assert!(Instant::now() < deadline);
    let (ledgers, lost, log, cut_at) = r.finish();
    let during = |l: &Ledger| {
        l.events
            .iter()
            .filter(|e| {
                e.outcome == Outcome::Acked
                    && e.at > t0 + Duration::from_secs(1)
                    && e.at < t0 + STALL - Duration::from_secs(1)
            })
            .count()
    };
    let retransmits: u64 = ledgers[..3].iter().map(|l| l.retransmits).sum();
    println!(
        "failing disk {mode} stall {} s: {retransmits} retransmits on e1.2, e1.3 acknowledged \
         {} writes during it",
        STALL.as_secs(),
        during(&ledgers[3])
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}\n{log}");
    assert!(
        ledgers[..3].iter().all(|l| l.errors_before(cut_at) == 0),
        "a stall is no error: writes failed"
    );
    assert!(
        during(&ledgers[3]) > 0,
        "the other export (another disk) was not served while e1.2's disk stalled"
    );
}

#[test]
fn xdp_stall() {
    stall("xdp");
}

#[test]
fn afpacket_stall() {
    stall("afpacket");
}
