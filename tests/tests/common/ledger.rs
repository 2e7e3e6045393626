//! Writers that remember what the target acknowledged, and the check of a disk against
//! them: the fault lab's measure of "nothing acknowledged is ever lost".
//!
//! Each writer is one initiator (its own interface and MAC) writing 2-sector blocks at
//! random in a region of its own, `depth` at a time, never two to the same block at once;
//! a timed-out write is sent again under a new tag, as the Linux driver does. Every sector
//! written says which block and which write (generation) it belongs to, so the disk tells
//! which write of a block it kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_common::wire::ata::ATA_HEADER_LEN;
use aoe_common::wire::Frame;
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};

pub const SECTOR: usize = 512;
/// Sectors per write: what one frame carries at MTU 1500.
pub const BLOCK: u64 = 2;
const MAGIC: &[u8; 8] = b"AOEFAULT";

/// One writer's share of the work.
#[derive(Debug, Clone)]
pub struct Writer {
    /// Its interface in the initiator namespace.
    pub iface: String,
    pub shelf: u16,
    pub slot: u8,
    /// Its region, in sectors (a multiple of BLOCK).
    pub base: u64,
    pub span: u64,
    pub depth: usize,
    /// Generations start here (above any earlier run's on the same disk).
    pub first_gen: u64,
    pub seed: u64,
    /// Wait this long for a reply before sending again.
    pub timeout: Duration,
    /// Run on this CPU: with XPS set on a multi-queue link, its frames then leave (and
    /// arrive at the target) on that CPU's queue.
    pub cpu: Option<usize>,
    /// Blocks in a run (1: single blocks only): half the writes are then runs this long, at
    /// any block, sent back to back (the target merges them).
    pub run: u64,
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// ATA status and error register of an error reply.
    Failed(u8, u8),
}

#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub at: Instant,
    pub lba: u64,
    pub gen: u64,
    pub outcome: Outcome,
}

/// One block's writes as the writer saw them.
#[derive(Debug, Clone, Default)]
pub struct Block {
    /// The last write acknowledged.
    pub acked: Option<u64>,
    /// Writes sent after it and not acknowledged (failed, or unanswered when the writer
    /// stopped): the disk may hold any of them.
    pub later: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub blocks: HashMap<u64, Block>,
    pub events: Vec<Event>,
    pub sent: u64,
    pub acks: u64,
    pub errors: u64,
    pub retransmits: u64,
    /// Writes still unanswered when the writer stopped.
    pub unanswered: u64,
}

impl Ledger {
    /// Error replies received before `at` (after a power cut, a dead disk fails writes).
    pub fn errors_before(&self, at: Instant) -> u64 {
        self.events
            .iter()
            .filter(|e| e.at < at && matches!(e.outcome, Outcome::Failed(..)))
            .count() as u64
    }
}

/// The sector `lba` of write `gen`.
pub fn sector(lba: u64, gen: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&lba.to_le_bytes());
    out[16..24].copy_from_slice(&gen.to_le_bytes());
    for (i, b) in out[24..SECTOR].iter_mut().enumerate() {
        *b = (gen.wrapping_mul(31) ^ lba.wrapping_mul(7)).wrapping_add(i as u64) as u8;
    }
}

/// What a sector on disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Never written (zeros).
    Nothing,
    Gen(u64),
    /// Neither: torn, misplaced or corrupt.
    Garbage,
}

pub fn decode(lba: u64, s: &[u8]) -> Found {
    if s.iter().all(|&b| b == 0) {
        return Found::Nothing;
    }
    if &s[..8] != MAGIC || s[8..16] != lba.to_le_bytes() {
        return Found::Garbage;
    }
    let gen = u64::from_le_bytes(s[16..24].try_into().unwrap());
    let mut want = [0u8; SECTOR];
    sector(lba, gen, &mut want);
    if s[..SECTOR] != want[..] {
        return Found::Garbage;
    }
    Found::Gen(gen)
}

/// An acknowledged write the disk does not hold.
#[derive(Debug, Clone)]
pub struct Lost {
    pub lba: u64,
    pub acked: u64,
    pub found: Found,
    /// What the block's sectors say they are: (lba, generation) from their headers.
    pub headers: Vec<(u64, u64)>,
}

/// Check `disk` (the image's bytes) against the ledgers: every acknowledged block holds
/// its acknowledged write, or a later one that was not acknowledged. Returns what is lost
/// and how many blocks were checked.
pub fn check(disk: &[u8], ledgers: &[Ledger]) -> (Vec<Lost>, u64) {
    let mut lost = Vec::new();
    let mut checked = 0;
    for l in ledgers {
        for (&lba, b) in &l.blocks {
            let Some(acked) = b.acked else { continue };
            checked += 1;
            for s in lba..lba + BLOCK {
                let at = s as usize * SECTOR;
                let found = disk
                    .get(at..at + SECTOR)
                    .map_or(Found::Garbage, |x| decode(s, x));
                let fine = matches!(found, Found::Gen(g) if g == acked || b.later.contains(&g));
                if !fine {
                    let headers = (lba..lba + BLOCK)
                        .filter_map(|s| disk.get(s as usize * SECTOR..(s as usize + 1) * SECTOR))
                        .map(|x| {
                            let n = |r: std::ops::Range<usize>| {
                                u64::from_le_bytes(x[r].try_into().unwrap())
                            };
                            (n(8..16), n(16..24))
                        })
                        .collect();
                    lost.push(Lost {
                        lba,
                        acked,
                        found,
                        headers,
                    });
                    break;
                }
            }
        }
    }
    (lost, checked)
}

/// A tiny PRNG (xorshift64*): reproducible runs from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from the clock, or $AOE_FAULT_SEED to repeat a run.
pub fn seed() -> u64 {
    std::env::var("AOE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

struct Slot {
    lba: u64,
    gen: u64,
    tag: u32,
    sent: Instant,
    frame: Vec<u8>,
    len: usize,
}

/// A running writer: `stop` it, and it hands back its ledger.
pub struct Running {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<Ledger>>>,
}

impl Running {
    /// Writes acknowledged so far.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Writes answered so far, acknowledged or failed.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stop sending; wait `grace` for replies still on their way; the ledger.
    pub fn stop(mut self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("writer thread panicked")
            .expect("writer")
    }
}

impl Drop for Running {
    /// A test that fails midway leaves no writer running.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Start `w` on a thread of its own in network namespace `ns`.
pub fn start(ns: &str, w: Writer) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let (s, a, n) = (stop.clone(), acks.clone(), answered.clone());
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::spawn(move || -> anyhow::Result<Ledger> {
        let file = std::fs::File::open(&path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if let Some(cpu) = w.cpu {
            // SAFETY: a zeroed cpu_set_t filled by CPU_SET, for this thread only.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
        }
        run(&w, &s, &a, &n)
    });
    Running {
        stop,
        acks,
        answered,
        handle: Some(handle),
    }
}

/// How long a stopped writer still listens for replies already on their way.
const GRACE: Duration = Duration::from_millis(300);

fn run(
    w: &Writer,
    stop: &AtomicBool,
    acks: &AtomicU64,
    answered: &AtomicU64,
) -> anyhow::Result<Ledger> {
    let mut client = Client::open(&w.iface)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        match client.find(w.shelf, w.slot) {
            Ok(t) => break t,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) if stop.load(Ordering::SeqCst) => return Ok(Ledger::default()),
            Err(_) => {}
        }
    };
    let addr: Addr = target.addr;
    let mut rng = Rng::new(w.seed);
    let mut ledger = Ledger::default();
    let mut slots: Vec<Slot> = Vec::new();
    let mut busy: HashMap<u64, ()> = HashMap::new();
    let mut gen = w.first_gen;
    let mut tag: u32 = 0x8000_0000 | (rng.next() as u32 & 0x7F00_0000);
    let mut rbuf = vec![0u8; 9216];
    let mut data = vec![0u8; BLOCK as usize * SECTOR];
    let blocks = w.span / BLOCK;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && stop.load(Ordering::SeqCst) {
            stopped_at = Some(Instant::now());
        }
        match stopped_at {
            Some(t) if slots.is_empty() || t.elapsed() > GRACE => break,
            Some(_) => {}
            None => {
                while slots.len() < w.depth && busy.len() < blocks as usize {
                    // A single block, or (with `run` > 1) as often a run of consecutive
                    // blocks sent back to back, which the target may merge into one write.
                    let len = if w.run > 1 && rng.below(2) == 0 {
                        w.run.min(blocks)
                    } else {
                        1
                    };
                    let first = rng.below(blocks - len + 1);
                    let lbas: Vec<u64> = (first..first + len).map(|b| w.base + b * BLOCK).collect();
                    if lbas.iter().any(|l| busy.contains_key(l))
                        || slots.len() + lbas.len() > w.depth
                    {
                        if len == 1 {
                            continue;
                        }
                        break;
                    }
                    for lba in lbas {
                        gen += 1;
                        for (i, s) in data.chunks_mut(SECTOR).enumerate() {
                            sector(lba + i as u64, gen, s);
                        }
                        tag = 0x8000_0000 | (tag.wrapping_add(1) & 0x7FFF_FFFF);
                        let mut frame = vec![0u8; ATA_HEADER_LEN + data.len()];
                        let len = frames::write(&mut frame, &addr, tag, lba, &data);
                        client.sock.send(&frame[..len])?;
                        ledger.sent += 1;
                        busy.insert(lba, ());
                        ledger.blocks.entry(lba).or_default();
                        slots.push(Slot {
                            lba,
                            gen,
                            tag,
                            sent: Instant::now(),
                            frame,
                            len,
                        });
                    }
                }
            }
        }
        if let Some(n) = client.sock.recv(&mut rbuf, Duration::from_millis(5))? {
            let Ok(f) = Frame::new_checked(&rbuf[..n]) else {
                continue;
            };
            if !frames::answers(&f, &addr) {
                continue;
            }
            let Some(i) = slots.iter().position(|s| s.tag == f.tag()) else {
                continue;
            };
            let s = slots.swap_remove(i);
            busy.remove(&s.lba);
            answered.fetch_add(1, Ordering::Relaxed);
            let (status, error) = aoe_common::wire::ata::status(&rbuf[..n]).unwrap_or((0xff, 0));
            let ok = !f.is_error() && status & 0xA9 == 0;
            let b = ledger.blocks.entry(s.lba).or_default();
            let outcome = if ok {
                b.acked = Some(s.gen);
                b.later.clear();
                ledger.acks += 1;
                acks.fetch_add(1, Ordering::Relaxed);
                Outcome::Acked
            } else {
                b.later.push(s.gen);
                ledger.errors += 1;
                Outcome::Failed(status, error)
            };
            ledger.events.push(Event {
                at: Instant::now(),
                lba: s.lba,
                gen: s.gen,
                outcome,
            });
        }
        let now = Instant::now();
        for s in slots.iter_mut() {
            if now.duration_since(s.sent) >= w.timeout {
                tag = 0x8000_0000 | (tag.wrapping_add(1) & 0x7FFF_FFFF);
                s.tag = tag;
                s.frame[20..24].copy_from_slice(&tag.to_be_bytes());
                client.sock.send(&s.frame[..s.len])?;
                s.sent = now;
                ledger.retransmits += 1;
            }
        }
    }
    for s in slots {
        ledger.blocks.entry(s.lba).or_default().later.push(s.gen);
        ledger.unanswered += 1;
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_decode_and_the_check_finds_what_is_missing() {
        let mut disk = vec![0u8; 16 * SECTOR];
        let mut put =
            |lba: u64, gen: u64| sector(lba, gen, &mut disk[lba as usize * SECTOR..][..SECTOR]);
        put(0, 5);
        put(1, 5);
        put(2, 3);
        put(3, 4); // torn: a later write half there
        put(4, 1);
        put(5, 1);
        let mut l = Ledger::default();
        l.blocks.insert(
            0,
            Block {
                acked: Some(5),
                later: vec![],
            },
        );
        l.blocks.insert(
            2,
            Block {
                acked: Some(3),
                later: vec![4],
            },
        );
        l.blocks.insert(
            4,
            Block {
                acked: Some(2),
                later: vec![],
            },
        );
        l.blocks.insert(
            6,
            Block {
                acked: Some(1),
                later: vec![],
            },
        );
        let (lost, checked) = check(&disk, &[l]);
        assert_eq!(checked, 4);
        let mut lbas: Vec<(u64, Found)> = lost.iter().map(|x| (x.lba, x.found)).collect();
        lbas.sort_by_key(|x| x.0);
        assert_eq!(lbas, vec![(4, Found::Gen(1)), (6, Found::Nothing)]);
        disk[0] ^= 1;
        assert_eq!(decode(0, &disk[..SECTOR]), Found::Garbage);
        assert_eq!(decode(1, &disk[..SECTOR]), Found::Garbage, "misplaced");
    }
}
