//! `aoe-ctl bench`: a load generator. It keeps `depth` requests in flight against one
//! target for a fixed time. Requests leave in batches, one `sendmmsg` each (`batch.rs`);
//! replies are read in place from a PACKET_MMAP rx ring (`ring.rs`); timed-out requests are
//! retransmitted with new tags, as the Linux driver does. It reports IOPS, MB/s, latency
//! percentiles (hdrhistogram) and the machine's CPU time per I/O. The clock is read twice
//! per round (before its sends, before its replies), never per request.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aoe_common::wire::ata::{ATA_HEADER_LEN, STATUS_BSY, STATUS_DF, STATUS_DRQ, STATUS_ERR};
use aoe_common::wire::{sectors_per_frame, Frame, SECTOR_SIZE};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::Client;
use super::frames::{self, Addr};
use super::verify::pattern;
use crate::packet::batch::TxBatch;
use crate::packet::ring::RingSocket;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Randread,
    Randwrite,
    /// Random reads and writes, half each.
    Randrw,
    Seqread,
    Seqwrite,
}

impl Pattern {
    fn writes(self) -> bool {
        matches!(
            self,
            Pattern::Randwrite | Pattern::Randrw | Pattern::Seqwrite
        )
    }
    fn random(self) -> bool {
        matches!(
            self,
            Pattern::Randread | Pattern::Randwrite | Pattern::Randrw
        )
    }
}

pub struct Options {
    pub iface: String,
    pub shelf: u16,
    pub slot: u8,
    pub pattern: Pattern,
    pub depth: usize,
    pub duration: Duration,
    /// Stop issuing after this many requests (the duration still bounds the run).
    pub ios: Option<u64>,
    /// Sectors per request (default: as many as one frame carries).
    pub sectors: Option<u8>,
    /// First sector the requests address.
    pub offset: u64,
    /// Sectors from `offset` the requests address (default: to the end of the device).
    pub span: Option<u64>,
    pub verify: bool,
    /// Send every request twice, under two tags (the second's reply is ignored).
    pub duplicate: bool,
    /// Send each batch of new requests in reverse order.
    pub reorder: bool,
    pub seed: u64,
    pub timeout: Duration,
    pub retries: u32,
    pub json: bool,
}

/// Slots of the rx ring for `depth` requests in flight: room for every reply twice over
/// (`--duplicate` doubles them) and then some, and no more. Each frame lands in the next
/// slot, so the ring's whole size is the working set the kernel and we walk through: 4,096
/// slots of 2 KiB (8 MiB) cost ~15% more CPU per request than 128 (256 KiB) here, in cache
/// misses in `tpacket_rcv`.
fn rx_slots(depth: usize) -> usize {
    (4 * depth).clamp(128, 4096)
}

/// Most requests in flight: the slot index lives in a tag's low bits.
pub const MAX_DEPTH: usize = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 10;
/// Most replies taken from the ring before the next round of sends.
const RX_BATCH: usize = 256;
/// Most new requests sent in one round.
const TX_BATCH: usize = 64;
/// Frames one `sendmmsg` may carry: a round's new requests, their duplicates
/// (`--duplicate`) and retransmits.
const TX_FRAMES: usize = 4 * TX_BATCH;

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub pattern: Pattern,
    pub depth: usize,
    pub sectors_per_io: u8,
    pub seconds: f64,
    /// Requests completed within the timed window.
    pub ios: u64,
    pub iops: f64,
    pub mbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Requests that hit the timeout (each was retransmitted with a new tag).
    pub timeouts: u64,
    /// Replies with an AoE error or an ATA error status.
    pub errors: u64,
    /// Sectors whose data differed from what was written (with --verify).
    pub verify_errors: u64,
    /// Sectors compared (with --verify).
    pub verified_sectors: u64,
    /// Replies the kernel dropped because our rx ring was full.
    pub rx_drops: u64,
    /// Busy CPU time of the whole machine (all cores, /proc/stat) in the window.
    pub cpu_busy_s: f64,
    pub cpu_us_per_io: f64,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u32,
    lba: u64,
    write: bool,
    first_sent: Option<Instant>,
    sent: Option<Instant>,
    tries: u32,
}

/// Counts of one phase.
#[derive(Default, Clone, Copy)]
struct Tally {
    ios: u64,
    timeouts: u64,
    errors: u64,
    verify_errors: u64,
    verified: u64,
}

struct Engine {
    ring: RingSocket,
    tx: TxBatch,
    books: Books,
    seq: u32,
    duplicate: bool,
    reorder: bool,
    timeout: Duration,
    retries: u32,
}

/// What is in flight and what came back: everything a reply is checked against.
struct Books {
    addr: Addr,
    /// First sector of the addressed range.
    offset: u64,
    per: u8,
    slots: Vec<Slot>,
    free: Vec<usize>,
    seed: u64,
    verify: bool,
    hist: Histogram<u64>,
    expect: Vec<u8>,
    /// With --verify, a bit per request-sized block whose write was acknowledged: what the
    /// read-back pass checks.
    acked: Vec<u64>,
}

pub fn run(o: &Options) -> Result<()> {
    ensure!(
        (1..=MAX_DEPTH).contains(&o.depth),
        "--depth must be 1 to {MAX_DEPTH}"
    );
    ensure!(!o.duration.is_zero(), "--duration must be more than 0");
    ensure!(o.ios != Some(0), "--ios must be more than 0");
    let (target, sectors) = {
        let mut c = Client::open(&o.iface)?;
        let t = c.find(o.shelf, o.slot)?;
        let id = c.identify(&t)?;
        (t, id.sectors)
    };
    if o.depth > usize::from(target.buffers) {
        // The Linux driver never exceeds this; a target may drop what goes beyond it.
        eprintln!(
            "warning: depth {} exceeds the {} buffers e{}.{} advertises",
            o.depth, target.buffers, o.shelf, o.slot
        );
    }
    // Receive only: requests leave through `TxBatch` on the same socket.
    let ring = RingSocket::open(&o.iface, rx_slots(o.depth), 0)?;
    let fits = sectors_per_frame(ring.iface.mtu).min(255) as u8;
    let most = target.max_sectors.min(fits).max(1);
    let per = o.sectors.unwrap_or(most);
    ensure!(
        (1..=most).contains(&per),
        "--sectors {per} does not fit: e{}.{} takes at most {} per request here (MTU {} of {})",
        o.shelf,
        o.slot,
        most,
        ring.iface.mtu,
        o.iface
    );
    ensure!(
        o.offset < sectors,
        "--offset {} is beyond the device ({sectors} sectors)",
        o.offset
    );
    let span = o.span.unwrap_or(sectors).min(sectors - o.offset);
    let blocks = span / u64::from(per);
    ensure!(
        blocks > 0,
        "the device ({sectors} sectors) is smaller than one request"
    );
    ensure!(
        !o.verify || blocks <= 1 << 28,
        "--verify keeps a bit per request-sized block: use --span to cover at most 2^28 blocks"
    );

    let tx = TxBatch::new(TX_FRAMES, ring.iface.mtu + 14);
    let mut e = Engine {
        ring,
        tx,
        books: Books {
            addr: target.addr,
            offset: o.offset,
            per,
            slots: vec![Slot::default(); o.depth],
            free: (0..o.depth).rev().collect(),
            seed: o.seed,
            verify: o.verify,
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
            expect: vec![0u8; usize::from(per) * SECTOR_SIZE],
            acked: if o.verify && o.pattern.writes() {
                vec![0u64; blocks.div_ceil(64) as usize]
            } else {
                Vec::new()
            },
        },
        seq: 0,
        duplicate: o.duplicate,
        reorder: o.reorder,
        timeout: o.timeout,
        retries: o.retries,
    };

    let mut rng = o.seed | 1;
    let mut cursor = 0u64;
    let random = o.pattern.random();
    let mut left = o.ios.unwrap_or(u64::MAX);
    let mut next = || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let b = if random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % blocks
        } else {
            let b = cursor;
            cursor = (cursor + 1) % blocks;
            b
        };
        let write = match o.pattern {
            Pattern::Randrw => rng & (1 << 40) != 0,
            p => p.writes(),
        };
        Some((o.offset + b * u64::from(per), write))
    };

    let cpu0 = cpu_times()?;
    let start = Instant::now();
    let deadline = start + o.duration;
    let timed = e.phase(&mut next, Some(deadline))?;
    let cpu1 = cpu_times()?;
    let seconds = start.elapsed().min(o.duration).as_secs_f64();

    let mut tally = timed;
    if o.verify && o.pattern.writes() {
        // Read back every block whose write was acknowledged (not timed, not in the figures).
        let acked = std::mem::take(&mut e.books.acked);
        let mut blocks_written = acked.iter().enumerate().flat_map(|(i, w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| (o.offset + (i as u64 * 64 + b) * u64::from(per), false))
        });
        e.books.verify = true;
        let back = e.phase(&mut || blocks_written.next(), None)?;
        tally.verify_errors += back.verify_errors;
        tally.verified += back.verified;
        tally.errors += back.errors;
        tally.timeouts += back.timeouts;
    }

    let busy = (cpu1.0 - cpu0.0) as f64 / cpu1.1 as f64;
    let q = |p: f64| e.books.hist.value_at_quantile(p) as f64 / 1000.0;
    let r = Report {
        target: format!("e{}.{}", o.shelf, o.slot),
        pattern: o.pattern,
        depth: o.depth,
        sectors_per_io: per,
        seconds,
        ios: timed.ios,
        iops: timed.ios as f64 / seconds,
        mbps: (timed.ios * u64::from(per) * SECTOR_SIZE as u64) as f64 / 1e6 / seconds,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: e.books.hist.max() as f64 / 1000.0,
        timeouts: tally.timeouts,
        errors: tally.errors,
        verify_errors: tally.verify_errors,
        verified_sectors: tally.verified,
        rx_drops: e.ring.drops(),
        cpu_busy_s: busy,
        cpu_us_per_io: if timed.ios > 0 {
            busy * 1e6 / timed.ios as f64
        } else {
            0.0
        },
    };
    if o.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_report(&r, o.verify);
    }
    if r.errors > 0 || r.verify_errors > 0 {
        bail!(
            "{} error replies, {} sectors read back differently",
            r.errors,
            r.verify_errors
        );
    }
    Ok(())
}

fn print_report(r: &Report, verify: bool) {
    println!(
        "{} {:?} depth {}, {} sectors/io, {:.1} s: {:.0} IOPS, {:.1} MB/s",
        r.target, r.pattern, r.depth, r.sectors_per_io, r.seconds, r.iops, r.mbps
    );
    println!(
        "latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        r.p50_us, r.p99_us, r.p999_us, r.max_us
    );
    println!(
        "{} timeouts, {} errors, {} rx drops; CPU {:.2} us per I/O (whole machine)",
        r.timeouts, r.errors, r.rx_drops, r.cpu_us_per_io
    );
    if verify {
        println!(
            "verify: {} sectors compared, {} differed",
            r.verified_sectors, r.verify_errors
        );
    }
}

impl Engine {
    fn tag(&mut self, slot: usize) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        0x8000_0000 | ((self.seq << SLOT_BITS) & 0x7FFF_FFFF) | slot as u32
    }

    /// Issue requests for the LBAs `next` yields until it ends or `deadline` passes, and
    /// wait for every one of them. Only completions before the deadline are counted.
    fn phase(
        &mut self,
        next: &mut dyn FnMut() -> Option<(u64, bool)>,
        deadline: Option<Instant>,
    ) -> Result<Tally> {
        let mut t = Tally::default();
        let mut exhausted = false;
        let mut last_scan = Instant::now();
        // Requests the kernel did not take, sent again first in the next round: a pass of
        // `--ios` requests still covers every block it names.
        let mut unsent: Vec<(u64, bool)> = Vec::new();
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                exhausted = true;
            }
            // Take a batch of new requests, then send it (in reverse with --reorder).
            let mut batch = [0usize; TX_BATCH];
            let mut n = 0;
            while !exhausted && n < TX_BATCH {
                let Some(i) = self.books.free.pop() else {
                    break;
                };
                let Some((lba, write)) = unsent.pop().or_else(&mut *next) else {
                    self.books.free.push(i);
                    exhausted = true;
                    break;
                };
                self.books.slots[i] = Slot {
                    tag: self.tag(i),
                    lba,
                    write,
                    first_sent: Some(now),
                    sent: Some(now),
                    tries: 0,
                };
                batch[n] = i;
                n += 1;
            }
            if self.reorder {
                batch[..n].reverse();
            }
            for &i in &batch[..n] {
                let slot = self.books.slots[i];
                if !self.send(&slot)? {
                    // The kernel takes nothing more now: the request waits for a round.
                    self.books.slots[i].sent = None;
                    self.books.free.push(i);
                    unsent.push((slot.lba, slot.write));
                    continue;
                }
                if self.duplicate {
                    // The same request again under a tag no slot holds, as an initiator's
                    // retransmit would be: its reply is ignored as late.
                    let copy = Slot {
                        tag: self.tag(i),
                        ..slot
                    };
                    self.send(&copy)?;
                }
            }
            self.tx.flush(self.ring.raw_fd())?;
            let in_flight = self.books.slots.len() - self.books.free.len();
            if exhausted && in_flight == 0 {
                return Ok(t);
            }

            // One clock read for the replies of this round: each reply's latency ends here
            // (taking a batch of them costs well under a microsecond each).
            let now = Instant::now();
            let counted = deadline.is_none_or(|d| now < d);
            let mut got = 0;
            while got < RX_BATCH {
                let Engine { ring, books, .. } = self;
                let received = ring.receive(|frame| books.complete(frame, counted, now, &mut t));
                if !received {
                    break;
                }
                got += 1;
            }

            if now.duration_since(last_scan) >= Duration::from_millis(1) {
                last_scan = now;
                self.retransmit(now, &mut t)?;
            }
            if got == 0 {
                let until_deadline = deadline
                    .filter(|_| !exhausted)
                    .map(|d| d.saturating_duration_since(now))
                    .unwrap_or(Duration::MAX);
                let wait = self
                    .timeout
                    .min(Duration::from_millis(5))
                    .min(until_deadline);
                self.ring.wait(wait)?;
            }
        }
    }

    /// Queue the request of `slot` for the next flush; false when the kernel takes nothing
    /// more.
    fn send(&mut self, slot: &Slot) -> Result<bool> {
        if self.tx.pending() == TX_FRAMES {
            self.tx.flush(self.ring.raw_fd())?;
        }
        let (addr, per, seed, verify) = (
            self.books.addr,
            self.books.per,
            self.books.seed,
            self.books.verify,
        );
        Ok(self.tx.queue(|buf| {
            if slot.write {
                let n = usize::from(per) * SECTOR_SIZE;
                let data = &mut buf[ATA_HEADER_LEN..ATA_HEADER_LEN + n];
                if verify {
                    pattern(seed, slot.lba, data);
                }
                // Without --verify the data is whatever the buffer held: no cost per
                // request in the generator.
                frames::write_in_place(buf, &addr, slot.tag, slot.lba, per)
            } else {
                frames::read(buf, &addr, slot.tag, slot.lba, per)
            }
        }))
    }

    /// Resend what timed out, with a new tag; fail after `retries` tries.
    fn retransmit(&mut self, now: Instant, t: &mut Tally) -> Result<()> {
        for i in 0..self.books.slots.len() {
            let s = self.books.slots[i];
            let Some(sent) = s.sent else { continue };
            if now.duration_since(sent) < self.timeout {
                continue;
            }
            if s.tries >= self.retries {
                bail!(
                    "lba {}: no reply after {} tries of {:?}",
                    s.lba,
                    s.tries + 1,
                    self.timeout
                );
            }
            let again = Slot {
                tag: self.tag(i),
                sent: Some(now),
                tries: s.tries + 1,
                ..s
            };
            if self.send(&again)? {
                self.books.slots[i] = again;
                t.timeouts += 1;
            }
        }
        self.tx.flush(self.ring.raw_fd())
    }
}

impl Books {
    /// Match one reply to its request, check it, and free the slot.
    /// `now`: when the round's replies were taken, the end of their latency.
    fn complete(&mut self, frame: &[u8], counted: bool, now: Instant, t: &mut Tally) {
        let per = self.per;
        let verify_seed = self.verify.then_some(self.seed);
        let Ok(f) = Frame::new_checked(frame) else {
            return;
        };
        if !frames::answers(&f, &self.addr) {
            return; // another initiator's reply, seen on the shared segment
        }
        let tag = f.tag();
        let i = (tag & (MAX_DEPTH as u32 - 1)) as usize;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.sent.is_none() || slot.tag != tag {
            return; // a late reply to a tag we retransmitted under another
        }
        let s = *slot;
        slot.sent = None;
        self.free.push(i);
        let ok = !f.is_error()
            && aoe_common::wire::ata::status(frame).is_ok_and(|(status, _)| {
                status & (STATUS_BSY | STATUS_DF | STATUS_DRQ | STATUS_ERR) == 0
            });
        let bytes = usize::from(per) * SECTOR_SIZE;
        if !ok || (!s.write && frame.len() < ATA_HEADER_LEN + bytes) {
            t.errors += 1;
            return;
        }
        if s.write {
            let b = (s.lba - self.offset) / u64::from(per);
            if let Some(w) = self.acked.get_mut((b / 64) as usize) {
                *w |= 1 << (b % 64);
            }
        }
        if let (Some(seed), false) = (verify_seed, s.write) {
            pattern(seed, s.lba, &mut self.expect);
            let data = &frame[ATA_HEADER_LEN..ATA_HEADER_LEN + bytes];
            t.verify_errors += data
                .chunks(SECTOR_SIZE)
                .zip(self.expect.chunks(SECTOR_SIZE))
                .filter(|(a, b)| a != b)
                .count() as u64;
            t.verified += u64::from(per);
        }
        if counted {
            t.ios += 1;
            if let Some(first) = s.first_sent {
                let ns = now.saturating_duration_since(first).as_nanos();
                let _ = self.hist.record(ns.max(1) as u64);
            }
        }
    }
}

/// (busy, total) jiffies of all CPUs from /proc/stat's first line; total is per second of
/// one CPU, so busy / USER_HZ is busy seconds.
fn cpu_times() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 8, "/proc/stat's cpu line is short: {line}");
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((busy, hz))
}
