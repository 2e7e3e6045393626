//! The kernel cache (`--kernel-cache`): reads answered by the XDP program from a cache the
//! target fills, kept coherent with writes.
//!
//! - On crafted frames through BPF_PROG_TEST_RUN (a page of tailroom, as NIC drivers give):
//!   what is answered, with which bytes, and what goes on to user space (a miss, a stale
//!   block, a slot being written, a reserved export, anything but a 1 KiB block read).
//! - Over a real veth: a hot read answered by XDP, counted, and a writer racing readers on
//!   the same few blocks, where no read may return a value older than the last write
//!   acknowledged before it was sent.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_common::maps::{cache::BLOCK_BYTES, export_counter as col};
use aoe_common::wire::ata::{AtaCommand, AtaRepr, AFLAG_WRITE};
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_ctl::serve::backend::MemBackend;
use aoe_ctl::serve::export::{Export, ExportOptions};
use aoe_ctl::serve::kernel_cache::{CacheLink, NO_TICKET};
use aoe_ctl::serve::xdp::Classifier;
use aoe_integration::Lab;
use common::{ata, bench_json, num};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const TARGET: [u8; 6] = [2, 0, 0, 0, 0, 1];
const HOST: [u8; 6] = [2, 0, 0, 0, 0, 0xa];

fn to_export() -> Addr {
    Addr {
        src: HOST,
        dst: TARGET,
        shelf: 1,
        slot: 2,
    }
}

fn export_with_cache() -> Arc<Export> {
    let mut ex = Export::new(ExportOptions::new(1, 2), Box::new(MemBackend::new(1024)));
    ex.cache = CacheLink::private(64 << 10).expect("a kernel cache (root needed)");
    Arc::new(ex)
}

fn block(v: u8) -> Vec<u8> {
    (0..BLOCK_BYTES).map(|i| v ^ (i as u8)).collect()
}

/// A request of 60 bytes (the shortest frame, as initiators send it).
fn request(build: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut b = vec![0u8; 2048];
    let n = build(&mut b).max(60);
    b.truncate(n);
    b
}

fn read(lba: u64, count: u8) -> Vec<u8> {
    request(|b| frames::read(b, &to_export(), 0x8000_0007, lba, count))
}

struct Kernel {
    c: Classifier,
    row: u32,
}

impl Kernel {
    fn load(ex: &Arc<Export>) -> Kernel {
        let mut c = Classifier::load(TARGET, 2).expect("load the classifier (root needed)");
        c.set_exports(std::slice::from_ref(ex)).unwrap();
        let row = c.rows()[&ex.key()];
        Kernel { c, row }
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        use aya::programs::{TestRun as _, TestRunOptions};
        let mut out = vec![0u8; 4096];
        let r = self
            .c
            .program()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn count(&mut self, column: u32) -> u64 {
        self.c.export_counters(self.row).unwrap()[column as usize]
    }
}

/// Fill block `lba` the way a worker does: a first miss is only noted, the second fills.
fn fill(ex: &Export, lba: u64, data: &[u8]) {
    let c = ex.cache.own.as_ref().unwrap();
    assert_eq!(c.ticket(lba, 2), NO_TICKET, "a first miss does not fill");
    let t = c.ticket(lba, 2);
    assert_ne!(t, NO_TICKET, "a second miss does");
    c.fill(lba, t, data);
}

#[test]
fn the_program_answers_a_cached_block_and_nothing_else() {
    let ex = export_with_cache();
    let mut k = Kernel::load(&ex);
    let data = block(0x5a);

    // Not cached yet: to user space (no socket here, so XDP_PASS), counted as a miss. An
    // empty slot holds no block, not even block 0 (its header is zeros but for `lba`).
    assert_eq!(k.run(&read(100, 2)).0, XDP_PASS);
    assert_eq!(k.run(&read(0, 2)).0, XDP_PASS);
    assert_eq!(k.count(col::CACHE_MISS), 2);

    fill(&ex, 100, &data);
    let (action, reply) = k.run(&read(100, 2));
    assert_eq!(action, XDP_TX, "a cached block is answered in the kernel");
    assert_eq!(reply.len(), 36 + BLOCK_BYTES);
    assert_eq!(&reply[0..6], &HOST, "to the initiator");
    assert_eq!(&reply[6..12], &TARGET, "from the target's MAC");
    assert_eq!(reply[14], 0x18, "version 1, response");
    assert_eq!(
        &reply[20..24],
        &0x8000_0007u32.to_be_bytes(),
        "the tag echoed"
    );
    assert_eq!(ata(&reply), (0x40, 0), "DRDY, no error");
    assert_eq!(&reply[36..], &data[..], "the cached bytes");
    assert_eq!(k.count(col::CACHE_HIT), 1);

    // The LBA28 form of the same block is the same block.
    let lba28 = request(|b| {
        let a = AtaRepr::new(0, 2, AtaCommand::ReadSectors, [100, 0, 0, 0xE0, 0, 0]);
        frames::ata(b, &to_export(), 9, a, &[])
    });
    let (action, reply) = k.run(&lba28);
    assert_eq!((action, &reply[36..]), (XDP_TX, &data[..]));

    // Only 2-sector reads of an even LBA are cached, and no write is ever answered here.
    for other in [
        read(101, 2),
        read(100, 1),
        read(100, 4),
        request(|b| frames::write(b, &to_export(), 3, 100, &data)),
        request(|b| {
            let a = AtaRepr::new(
                AFLAG_WRITE,
                2,
                AtaCommand::ReadSectors,
                [100, 0, 0, 0, 0, 0],
            );
            frames::ata(b, &to_export(), 4, a, &[])
        }),
    ] {
        assert_eq!(k.run(&other).0, XDP_PASS);
    }
    assert_eq!(k.count(col::CACHE_HIT), 2);

    // A slot being written is passed on, and so is everything once a write completed.
    {
        let _held = ex.cache.own.as_ref().unwrap().hold(100).unwrap();
        assert_eq!(k.run(&read(100, 2)).0, XDP_PASS);
        assert_eq!(k.count(col::CACHE_TORN), 1);
    }
    assert_eq!(k.run(&read(100, 2)).0, XDP_TX, "and answered again after");
    ex.cache.written(0, 101, 1);
    assert_eq!(
        k.run(&read(100, 2)).0,
        XDP_PASS,
        "one sector of the block written"
    );
    assert_eq!(k.count(col::CACHE_STALE), 1);

    // A fill whose read raced a write (its ticket predates the write) is never served.
    let c = ex.cache.own.as_ref().unwrap();
    let t = c.ticket(100, 2);
    ex.cache.written(0, 100, 2);
    c.fill(100, t, &block(0x11));
    assert_eq!(k.run(&read(100, 2)).0, XDP_PASS);
    assert_eq!(c.stats.snapshot()[1], 1, "counted as a fill given up");
    let t = c.ticket(100, 2);
    c.fill(100, t, &block(0x22));
    let (action, reply) = k.run(&read(100, 2));
    assert_eq!((action, &reply[36..]), (XDP_TX, &block(0x22)[..]));

    // While the export is reserved, every ATA request goes to user space for the check.
    ex.access.set_lists(aoe_ctl::serve::access::Lists {
        masks: vec![],
        reserve: vec![HOST],
    });
    k.c.sync_export(&ex).unwrap();
    assert_eq!(k.run(&read(100, 2)).0, XDP_PASS);
}

/// A daemon serving e1.2 with a kernel cache (exports.toml's `kernel_cache`) on two links
/// of the lab, the peer program on both initiator ends, its bpffs for `stats`.
struct Served {
    lab: Lab,
    target: Option<aoe_integration::Proc>,
    _peers: [aoe_integration::Proc; 2],
    /// The initiator ends of the two links, and the target's MAC on each.
    links: [String; 2],
    macs: [[u8; 6]; 2],
    /// exports.toml, and its export table without `kernel_cache` (for reloads).
    cfg: std::path::PathBuf,
    export: String,
}

impl Served {
    fn start(options: &str) -> Served {
        let lab = Lab::new().expect("lab (root needed)");
        let image = lab.image("disk.img", 8 << 20).unwrap();
        let (second, second_i) = lab.add_link("b").unwrap();
        let peers = [
            lab.start_peer(&lab.initiator_if).expect("lab peer"),
            lab.start_peer(&second_i).expect("lab peer"),
        ];
        let cfg = lab.dir.join("exports.toml");
        let export = format!(
            "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{}\", \"{second}\"]\n\
             path = \"{}\"\n{options}\n",
            lab.target_if,
            image.display()
        );
        std::fs::write(&cfg, format!("{export}kernel_cache = \"1M\"\n")).unwrap();
        let target = lab
            .spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
            .expect("daemon starts");
        assert!(lab.target_has_xdp().unwrap(), "served over XDP");
        // The device-bound native program, which NIC drivers run (not the generic one).
        assert!(
            target.first_line.contains("xdp native"),
            "{}",
            target.first_line
        );
        let links = [lab.initiator_if.clone(), second_i];
        let macs = [0, 1].map(|n| {
            client(&lab, &links[n])
                .find(1, 2)
                .expect("the target answers on both links")
                .addr
                .dst
        });
        Served {
            target: Some(target),
            _peers: peers,
            links,
            macs,
            cfg,
            export,
            lab,
        }
    }

    /// Serve the export with `cache` (None: none) instead, by SIGHUP; returns once the
    /// daemon says it restarted it (the `n`th time).
    fn reload(&self, cache: Option<&str>, n: usize) {
        let line = cache.map_or(String::new(), |c| format!("kernel_cache = \"{c}\"\n"));
        std::fs::write(&self.cfg, format!("{}{line}", self.export)).unwrap();
        let t = self.target.as_ref().unwrap();
        // SAFETY: signalling our own child (ip netns exec and env exec into aoe-ctl).
        unsafe { libc::kill(t.pid() as i32, libc::SIGHUP) };
        common::wait_for("the export restarted by the reload", || {
            t.log.lock().unwrap().matches("restarted [e1.2]").count() >= n
        });
    }

    /// A raw socket on link `n` (0 or 1) and the export's address from it.
    fn client(&self, n: usize) -> (Client, Addr) {
        let c = client(&self.lab, &self.links[n]);
        let a = Addr {
            src: c.mac(),
            dst: self.macs[n],
            shelf: 1,
            slot: 2,
        };
        (c, a)
    }

    /// The export's `key` in `aoe-ctl stats --json`, once at least `at_least` (the
    /// daemon refreshes its pins twice a second).
    fn stat(&self, key: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.lab.run_live(&["stats", "--json"]).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let got = v["exports"][0][key].as_u64().unwrap_or(0);
            if got >= at_least || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn client(lab: &Lab, ifname: &str) -> Client {
    let ifname = ifname.to_string();
    let mut c = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
        .unwrap()
        .expect("raw socket in the initiator namespace");
    // A durable write waits for an fdatasync, which a disk busy with other work stretches.
    c.timeout = Duration::from_millis(1000);
    c
}

/// A read of `lba` padded to its reply's length: on a veth the XDP program cannot grow a
/// short frame (the kernel copies it into a buffer its own size).
fn padded_read(b: &mut [u8], a: &Addr, tag: u32, lba: u64) -> usize {
    frames::read(b, a, tag, lba, 2).max(36 + BLOCK_BYTES)
}

#[test]
fn a_hot_block_is_answered_by_xdp_over_a_veth() {
    let s = Served::start("");
    let (mut c, a) = s.client(0);
    let data = block(0x3c);
    let rep = c
        .request(&|b, t| frames::write(b, &a, t, 200, &data))
        .unwrap();
    assert_eq!(ata(&rep), (0x40, 0));
    // A first read notes the block, a second fills it, the third is a hit.
    for _ in 0..3 {
        let rep = c.request(&|b, t| padded_read(b, &a, t, 200)).unwrap();
        assert_eq!(
            (ata(&rep), &rep[36..36 + BLOCK_BYTES]),
            ((0x40, 0), &data[..])
        );
    }
    assert_eq!(s.stat("cache_fills", 1), 1);
    assert_eq!(
        s.stat("cache_hits_kernel", 1),
        1,
        "the third read never left the kernel"
    );
    // A 60-byte request cannot grow into its reply on a veth: user space answers it.
    let rep = c.request(&|b, t| frames::read(b, &a, t, 200, 2)).unwrap();
    assert_eq!(&rep[36..36 + BLOCK_BYTES], &data[..]);
    assert_eq!(s.stat("cache_no_room_kernel", 1), 1);
    // A write to the block, acknowledged: the next read has the new bytes.
    let new = block(0xc3);
    let rep = c
        .request(&|b, t| frames::write(b, &a, t, 200, &new))
        .unwrap();
    assert_eq!(ata(&rep), (0x40, 0));
    let rep = c.request(&|b, t| padded_read(b, &a, t, 200)).unwrap();
    assert_eq!(&rep[36..36 + BLOCK_BYTES], &new[..]);
    assert!(s.stat("cache_invalidations", 1) >= 1);
}

/// A reload that changes the cache's size gives the export a new, empty one, and one that
/// takes the option away leaves none: the kernel never answers from the cache it replaced
/// (which no write reaches any more).
#[test]
fn a_reload_replaces_or_removes_the_cache() {
    let s = Served::start("");
    let (mut c, a) = s.client(0);
    let old = block(0x11);
    let rep = c
        .request(&|b, t| frames::write(b, &a, t, 300, &old))
        .unwrap();
    assert_eq!(ata(&rep), (0x40, 0));
    for _ in 0..3 {
        c.request(&|b, t| padded_read(b, &a, t, 300)).unwrap();
    }
    assert_eq!(s.stat("cache_hits_kernel", 1), 1);

    s.reload(Some("2M"), 1);
    let new = block(0x22);
    let rep = c
        .request(&|b, t| frames::write(b, &a, t, 300, &new))
        .unwrap();
    assert_eq!(ata(&rep), (0x40, 0));
    for _ in 0..3 {
        let rep = c.request(&|b, t| padded_read(b, &a, t, 300)).unwrap();
        assert_eq!(
            &rep[36..36 + BLOCK_BYTES],
            &new[..],
            "not the replaced cache's copy"
        );
    }
    let hits = s.stat("cache_hits_kernel", 2);
    assert_eq!(hits, 2, "the new cache answers once filled");
    let status = s.lab.run_live(&["status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let bytes = v["interfaces"][0]["exports"][0]["kernel_cache_bytes"].as_u64();
    assert_eq!(bytes, Some((2 << 20) / 1088 * 1088));

    s.reload(None, 2);
    for _ in 0..3 {
        let rep = c.request(&|b, t| padded_read(b, &a, t, 300)).unwrap();
        assert_eq!(&rep[36..36 + BLOCK_BYTES], &new[..]);
    }
    // The pins are refreshed twice a second: wait for the export's record to say no cache,
    // then the hits counted still.
    common::wait_for("status without a kernel cache", || {
        let o = s.lab.run_live(&["status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["interfaces"][0]["exports"][0]["kernel_cache_bytes"].as_u64() == Some(0)
    });
    assert_eq!(s.stat("cache_hits_kernel", 0), hits, "no cache, no hit");
}

/// Blocks the race runs on, and how long.
const RACE_BLOCKS: u64 = 4;
const RACE_SECS: u64 = 4;
const READERS: u32 = 3;

/// The value a block holds: `v` in each of its 128 words (so a torn copy shows).
fn value_block(v: u64) -> Vec<u8> {
    (0..BLOCK_BYTES / 8).flat_map(|_| v.to_le_bytes()).collect()
}

/// Check a read of a block against the writes: every word holds a value from `floor` (the
/// last write acknowledged before the read was sent) to `ceiling` (the last one sent by
/// the time its reply came), and one value only when `quiet` (no write to the block was in
/// flight meanwhile: a read racing a write-back copy may see part of each, as a read of
/// the page cache does without any kernel cache).
fn check_read(data: &[u8], floor: u64, ceiling: u64, quiet: bool) -> Result<(), String> {
    let words: Vec<u64> = data
        .chunks(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .collect();
    if let Some(w) = words.iter().find(|&&w| w < floor || w > ceiling) {
        return Err(format!(
            "read {w}; the last write acknowledged before the read was {floor}, the last \
             sent by its reply {ceiling}"
        ));
    }
    if quiet && words.iter().any(|&w| w != words[0]) {
        return Err(format!(
            "a torn copy ({} and {}) with no write in flight",
            words[0],
            words.iter().find(|&&w| w != words[0]).unwrap()
        ));
    }
    Ok(())
}

/// One writer on one link and three readers on the other, on the same 4 blocks for a few
/// seconds (two queue workers, two classifiers, one cache). The writer writes increasing
/// values, one at a time, and records each once acknowledged; a reader notes the last
/// acknowledged value of its block before it sends, and the reply must hold that value or
/// a later one the writer had sent (`check_read`). Without the invalidation in `ata.rs`, or with
/// fills that ignore their ticket, this fails within a second (a read answered from the
/// kernel with the value from before an acknowledged write).
fn race(options: &str) {
    let mut s = Served::start(options);
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..RACE_BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..RACE_BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    {
        // Every block starts at value 0, acknowledged.
        let (mut c, a) = s.client(0);
        for b in 0..RACE_BLOCKS {
            let v = value_block(0);
            let rep = c
                .request(&|f, t| frames::write(f, &a, t, b * 2, &v))
                .unwrap();
            assert_eq!(ata(&rep), (0x40, 0));
        }
    }
    let writer = {
        let (sent, acked, stop) = (sent.clone(), acked.clone(), stop.clone());
        let (mut c, a) = s.client(0);
        std::thread::spawn(move || {
            let mut v = 0u64;
            let mut tag = 0u32;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let b = v % RACE_BLOCKS;
                sent[b as usize].store(v, Ordering::SeqCst);
                let data = value_block(v);
                // Retransmits under new tags until acknowledged: the value is in flight
                // until then, and recorded only after.
                loop {
                    tag = tag.wrapping_add(1);
                    let mut f = vec![0u8; 2048];
                    let n = frames::write(&mut f, &a, 0x8000_0000 | tag, b * 2, &data);
                    if let Some(rep) = c.exchange(&f[..n], Duration::from_millis(300)).unwrap() {
                        assert_eq!(ata(&rep), (0x40, 0), "write of {v} failed");
                        break;
                    }
                }
                acked[b as usize].store(v, Ordering::SeqCst);
            }
            v
        })
    };
    let readers: Vec<_> = (1..=READERS)
        .map(|r| {
            let (sent, acked, stop) = (sent.clone(), acked.clone(), stop.clone());
            let (mut c, a) = s.client(1);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut reads = 0u64;
                let mut seq = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let b = (reads + u64::from(r)) % RACE_BLOCKS;
                    let floor = acked[b as usize].load(Ordering::SeqCst);
                    let sent_before = sent[b as usize].load(Ordering::SeqCst);
                    seq = seq.wrapping_add(1);
                    let tag = 0x8000_0000 | r << 24 | (seq & 0xff_ffff);
                    let mut f = vec![0u8; 2048];
                    let n = padded_read(&mut f, &a, tag, b * 2);
                    let Some(rep) = c.exchange(&f[..n], Duration::from_millis(300)).unwrap() else {
                        continue;
                    };
                    let ceiling = sent[b as usize].load(Ordering::SeqCst);
                    let quiet = floor == sent_before && sent_before == ceiling;
                    check_read(&rep[36..36 + BLOCK_BYTES], floor, ceiling, quiet)
                        .map_err(|e| format!("block {b}: {e}"))?;
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(RACE_SECS));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let mut reads = 0;
    for r in readers {
        reads += r.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    let hits = s.stat("cache_hits_kernel", 1);
    eprintln!(
        "race {options:?}: {writes} writes, {reads} reads; kernel: {hits} hits, {} stale, {} \
         torn; {} fills, {} given up, {} invalidations",
        s.stat("cache_stale_kernel", 0),
        s.stat("cache_torn_kernel", 0),
        s.stat("cache_fills", 0),
        s.stat("cache_fills_raced", 0),
        s.stat("cache_invalidations", 0),
    );
    let log = s
        .target
        .take()
        .map(|t| t.stop().unwrap())
        .unwrap_or_default();
    assert!(
        writes > 100 && reads > 1000,
        "the race ran ({writes} writes, {reads} reads)\n{log}"
    );
    assert!(hits > 100, "reads were answered by XDP meanwhile ({hits})");
}

#[test]
fn racing_writes_never_leave_a_stale_block_in_the_kernel() {
    race("");
}

#[test]
fn racing_write_back_writes_never_leave_a_stale_block_in_the_kernel() {
    race("write_back = true");
}

/// `bench` against a cached export: every read in a small span hot, answered by XDP, and
/// the same bytes as without the cache (`--verify` compares them with the pattern).
#[test]
fn bench_reads_from_the_cache_verify() {
    // Write-back: the pattern goes in without an fdatasync per write, which a disk busy with
    // other work can stretch past the client's retries.
    let s = Served::start("write_back = true");
    let span = "256";
    let out = s
        .lab
        .bench(&[
            "--pattern",
            "seqwrite",
            "--depth",
            "8",
            "--duration",
            "0.5",
            "--span",
            span,
            "--verify",
            "--timeout-ms",
            "1000",
            "--json",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s
        .lab
        .bench(&[
            "--pattern",
            "randread",
            "--depth",
            "8",
            "--duration",
            "1",
            "--span",
            span,
            "--pad-to",
            "1060",
            "--verify",
            "--timeout-ms",
            "1000",
            "--json",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = bench_json(&out.stdout);
    assert_eq!(num(&r, "verify_errors"), 0.0);
    assert!(num(&r, "verified_sectors") > 0.0);
    assert!(s.stat("cache_hits_kernel", 1) > 0);
}
