//! `aoe-lab echo`: the AF_XDP floor of `cargo xtask bench`. The product's classifier on the
//! interface and one AF_XDP socket per rx queue, with the target's UMEM, rings, batching and
//! wait policy (aoe-ctl's `serve::xdp`, `serve::xsk`, `serve::chunks`), and no engine and no
//! storage behind them: each ATA request gets a reply of the right size, built in place, and
//! leaves. A read's sectors are whatever its chunk held (nothing is copied in), a write is
//! dropped, IDENTIFY comes from a template. Query Config is answered by the classifier in the
//! kernel, as for the target. So the echo costs what the socket path costs on this link;
//! what the target costs beyond it is the product's own work.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use aoe_common::wire::ata::{
    self as a, field as ata, ATA_HEADER_LEN, ERROR_ABRT, STATUS_DRDY, STATUS_ERR,
};
use aoe_common::wire::header::{field, CMD_ATA, FLAG_RESPONSE};
use aoe_common::wire::identify::Identity;
use aoe_common::wire::{sectors_per_frame, Mac, MIN_FRAME_LEN, SECTOR_SIZE};
use aoe_ctl::daemon::host::RING;
use aoe_ctl::net::Interface;
use aoe_ctl::serve::backend::{Backend, BackendError};
use aoe_ctl::serve::chunks::{Chunks, Layout, RUN_OFFSET};
use aoe_ctl::serve::export::{Export, ExportOptions};
use aoe_ctl::serve::idle::Idle;
use aoe_ctl::serve::xdp::{Classifier, ModeChoice};
use aoe_ctl::serve::xsk::{
    XskConfig, XskSocket, FRAME_SIZE, MAX_FRAME, MAX_TX_CHAIN, XDP_PKT_CONTD,
};
use xdpilone::xdp::XdpDesc;

/// Descriptors taken from the rx ring per loop, as the target's worker.
const BATCH: u32 = 64;
/// More descriptors than any frame the kernel delivers.
const MAX_RX_CHAIN: usize = 32;

pub struct Options {
    pub iface: String,
    pub shelf: u16,
    pub slot: u8,
    /// The size the echo pretends to have.
    pub sectors: u64,
    pub buffers: u16,
}

/// Frames and replies of all queues.
#[derive(Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub replied: AtomicU64,
}

/// A running echo: the classifier stays attached and the queues answer until `stop`.
pub struct Echo {
    /// "native" or "skb".
    pub mode: &'static str,
    pub queues: u32,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    // Dropped last: detaching the program once the sockets are gone.
    _classifier: Arc<Mutex<Classifier>>,
}

/// What every reply is made from.
struct Me {
    mac: Mac,
    max_sectors: usize,
    identify: [u8; SECTOR_SIZE],
}

/// The export the classifier is given: its shelf, slot, buffer count and size, for the
/// Query Config reply the kernel sends. Nothing reads or writes it.
struct NoStorage(u64);

impl Backend for NoStorage {
    fn sectors(&self) -> u64 {
        self.0
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> aoe_ctl::serve::backend::Result<()> {
        Err(none())
    }
    fn write_parts_at(&self, _: u64, _: &[&[u8]]) -> aoe_ctl::serve::backend::Result<()> {
        Err(none())
    }
    fn sync_range(&self, _: u64, _: usize) -> aoe_ctl::serve::backend::Result<()> {
        Err(none())
    }
    fn flush(&self) -> aoe_ctl::serve::backend::Result<()> {
        Err(none())
    }
}

fn none() -> BackendError {
    BackendError::FailedClosed {
        why: "the echo has no storage",
    }
}

/// Attach the classifier to `o.iface` and answer on every rx queue until `Echo::stop`.
pub fn start(o: &Options) -> Result<Echo> {
    let iface = Interface::lookup(&o.iface)?;
    // As the target: a frame's sectors, and no more than a reply chain can carry.
    let max_sectors = sectors_per_frame(iface.mtu)
        .min((MAX_TX_CHAIN * FRAME_SIZE as usize - ATA_HEADER_LEN) / SECTOR_SIZE);
    if max_sectors == 0 {
        return Err(anyhow!(
            "MTU {} of {} cannot carry one 512-byte sector",
            iface.mtu,
            iface.name
        ));
    }
    let export = Export::new(
        ExportOptions {
            buffers: o.buffers,
            ..ExportOptions::new(o.shelf, o.slot)
        },
        Box::new(NoStorage(o.sectors)),
    );
    let mut identify = [0u8; SECTOR_SIZE];
    Identity {
        sectors: o.sectors,
        serial: b"aoe-echo",
        firmware: b"0",
        model: b"AoE benchmark AF_XDP echo (no storage)",
        write_cache: false,
    }
    .emit(&mut identify);
    let me = Arc::new(Me {
        mac: iface.mac,
        max_sectors,
        identify,
    });

    let mut classifier = Classifier::attach(&o.iface, ModeChoice::Auto, iface.mac, max_sectors)?;
    classifier.set_exports(&[Arc::new(export)])?;
    let mode = classifier.mode;
    let classifier = Arc::new(Mutex::new(classifier));
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let mut echo = Echo {
        mode,
        queues: iface.rx_queues,
        stats: stats.clone(),
        stop: stop.clone(),
        threads: Vec::new(),
        _classifier: classifier.clone(),
    };
    for queue in 0..iface.rx_queues {
        let cfg = XskConfig {
            ifname: iface.name.clone(),
            queue,
            ring: RING,
            layout: Layout::for_frames(RING, iface.mtu + 18, MAX_FRAME),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (classifier, me, stop, stats) =
            (classifier.clone(), me.clone(), stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("echo-q{queue}"))
            .spawn(move || {
                let opened = XskSocket::open(&cfg).and_then(|sock| {
                    classifier
                        .lock()
                        .unwrap()
                        .bind_socket(cfg.queue, sock.fd())?;
                    Ok(sock)
                });
                drop(classifier);
                match opened {
                    Ok(sock) => {
                        let _ = ready_tx.send(Ok(()));
                        Queue::new(sock, cfg.layout).serve(&me, &stop, &stats);
                        Ok(())
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        Ok(())
                    }
                }
            })?;
        echo.threads.push(thread);
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the echo of queue {queue} died while starting"))??;
    }
    Ok(echo)
}

impl Echo {
    /// Stop every queue; returns what they handled, as one line.
    pub fn stop(mut self) -> Result<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().map_err(|_| anyhow!("an echo queue panicked"))??;
        }
        Ok(format!(
            "echo: stopped; {} frames, {} replies",
            self.stats.received.load(Ordering::Relaxed),
            self.stats.replied.load(Ordering::Relaxed)
        ))
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One queue's socket and the chunks it owns.
struct Queue {
    sock: XskSocket,
    chunks: Chunks,
    tx: VecDeque<XdpDesc>,
}

impl Queue {
    fn new(sock: XskSocket, layout: Layout) -> Queue {
        Queue {
            sock,
            chunks: Chunks::new(layout),
            tx: VecDeque::with_capacity(layout.total() as usize),
        }
    }

    /// The target worker's loop without its engine and storage: completions, a batch of rx,
    /// replies in place, one tx push, refill; spin, then sleep in poll when idle.
    fn serve(mut self, me: &Me, stop: &AtomicBool, stats: &Stats) {
        // Received descriptors not answered yet: a chain's tail still arriving, or a jumbo
        // read waiting for a free run.
        let mut held: Vec<XdpDesc> = Vec::with_capacity(2 * BATCH as usize + MAX_RX_CHAIN);
        self.refill();
        let mut idle = Idle::default();
        while !stop.load(Ordering::Relaxed) {
            {
                let mut done = self.sock.device.complete(BATCH * 4);
                while let Some(addr) = done.read() {
                    self.chunks.put(addr);
                }
                done.release();
            }
            let mut arrived = 0u64;
            {
                let mut rx = self.sock.rx.receive(BATCH);
                while let Some(d) = rx.read() {
                    held.push(d);
                    arrived += 1;
                }
                rx.release();
            }
            let (mut frames, mut replies) = (0u64, 0u64);
            let mut at = 0;
            while at < held.len() {
                let Some(last) = held[at..]
                    .iter()
                    .position(|d| d.options & XDP_PKT_CONTD == 0)
                else {
                    if held.len() - at > MAX_RX_CHAIN {
                        held[at..].iter().for_each(|d| self.chunks.put(d.addr));
                        at = held.len();
                    }
                    break;
                };
                let Some(n) = self.answer(me, &held[at..=at + last]) else {
                    break; // no free run yet: try again next loop
                };
                frames += 1;
                replies += n;
                at += last + 1;
            }
            held.drain(..at);

            if !self.tx.is_empty() {
                let mut w = self.sock.tx.transmit(self.tx.len() as u32);
                let room = w.capacity() as usize;
                let sent = w.insert(self.tx.iter().take(room).copied()) as usize;
                w.commit();
                drop(w);
                self.tx.drain(..sent);
            }
            if self.sock.tx.needs_wakeup() && (self.sock.tx.pending() > 0 || !self.tx.is_empty()) {
                self.sock.tx.wake();
            }
            self.refill();
            if frames > 0 {
                stats.received.fetch_add(frames, Ordering::Relaxed);
                stats.replied.fetch_add(replies, Ordering::Relaxed);
            }

            if arrived == 0 && replies == 0 && self.tx.is_empty() && self.sock.tx.pending() == 0 {
                // The worker's own policy: spin while the gaps are short, else sleep (in
                // poll here: the echo has no storage ring to sleep in).
                if !idle.spin() {
                    idle.sleep::<()>(None, self.sock.fd());
                }
            } else {
                idle.busy();
            }
        }
    }

    /// Answer one received frame (a chain of descriptors); the replies queued, or None when
    /// it needs a run and none is free.
    fn answer(&mut self, me: &Me, chain: &[XdpDesc]) -> Option<u64> {
        let first = chain[0];
        // SAFETY: the kernel handed this chunk to us through the rx ring; it is ours until
        // it goes to the tx or fill ring, and no other slice of it exists.
        let buf = unsafe { self.sock.chunk_from(first.addr) };
        let len = (first.len as usize).min(buf.len());
        let Some(plan) = plan(&buf[..len], me.max_sectors) else {
            chain.iter().for_each(|d| self.chunks.put(d.addr));
            return Some(0);
        };
        // A write's payload (the rest of its chain) is dropped.
        chain[1..].iter().for_each(|d| self.chunks.put(d.addr));
        if plan.len <= buf.len() {
            let n = reply(buf, &plan, me);
            self.tx.push_back(XdpDesc {
                addr: first.addr,
                len: n as u32,
                options: 0,
            });
            return Some(1);
        }
        // A jumbo read: its reply is longer than a chunk, so it leaves from a run as a chain
        // of descriptors, as the target's does.
        let room = self.chunks.run_len().saturating_sub(RUN_OFFSET);
        if plan.len > room {
            self.chunks.put(first.addr);
            return Some(0);
        }
        let run = self.chunks.take_run()?;
        let base = run + RUN_OFFSET as u64;
        // SAFETY: the request's chunk is ours (received) and the run was just taken.
        unsafe { self.sock.copy(first.addr, ATA_HEADER_LEN, base) };
        self.chunks.put(first.addr);
        // SAFETY: the run was taken from the free list above; nothing else refers to it.
        let out = unsafe { self.sock.region(base, room) };
        let n = reply(out, &plan, me);
        let chunk = FRAME_SIZE as usize;
        let (start, end) = (RUN_OFFSET, RUN_OFFSET + n);
        let (mut at, mut pieces) = (start, 0);
        while at < end && pieces < MAX_TX_CHAIN {
            let stop = ((at / chunk + 1) * chunk).min(end);
            self.tx.push_back(XdpDesc {
                addr: run + at as u64,
                len: (stop - at) as u32,
                options: if stop < end { XDP_PKT_CONTD } else { 0 },
            });
            pieces += 1;
            at = stop;
        }
        self.chunks.run_sent(run, pieces);
        Some(1)
    }

    fn refill(&mut self) {
        let free = self.chunks.singles_mut();
        if free.is_empty() {
            return;
        }
        let mut w = self.sock.device.fill(free.len() as u32);
        let room = (w.capacity() as usize).min(free.len());
        let from = free.len() - room;
        let n = w.insert(free[from..].iter().copied()) as usize;
        w.commit();
        drop(w);
        free.drain(from..from + n);
        if self.sock.device.needs_wakeup() {
            self.sock.device.wake();
        }
    }
}

/// What the reply to a request is.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Reply length, padded to the shortest frame.
    len: usize,
    status: u8,
    error: u8,
    identify: bool,
}

/// The reply an ATA request gets, or None for anything else (a response, another
/// command: the classifier answers Query Config, and the echo fakes nothing more).
fn plan(frame: &[u8], max_sectors: usize) -> Option<Plan> {
    if frame.len() < ATA_HEADER_LEN
        || frame[field::COMMAND] != CMD_ATA
        || frame[field::VER_FLAGS] & FLAG_RESPONSE != 0
    {
        return None;
    }
    let count = usize::from(frame[ata::SECTOR_COUNT]);
    let (status, error, sectors) = match frame[ata::CMD_STATUS] {
        a::OP_READ_SECTORS | a::OP_READ_SECTORS_EXT if (1..=max_sectors).contains(&count) => {
            (STATUS_DRDY, 0, count)
        }
        a::OP_WRITE_SECTORS
        | a::OP_WRITE_SECTORS_EXT
        | a::OP_FLUSH_CACHE
        | a::OP_FLUSH_CACHE_EXT
        | a::OP_CHECK_POWER_MODE => (STATUS_DRDY, 0, 0),
        a::OP_IDENTIFY_DEVICE => (STATUS_DRDY, 0, 1),
        _ => (STATUS_DRDY | STATUS_ERR, ERROR_ABRT, 0),
    };
    Some(Plan {
        len: (ATA_HEADER_LEN + sectors * SECTOR_SIZE).max(MIN_FRAME_LEN),
        status,
        error,
        identify: frame[ata::CMD_STATUS] == a::OP_IDENTIFY_DEVICE,
    })
}

/// Turn the request whose headers start `buf` into its reply, in place; its length.
fn reply(buf: &mut [u8], plan: &Plan, me: &Me) -> usize {
    buf.copy_within(field::SRC..field::SRC + 6, field::DST);
    buf[field::SRC..field::SRC + 6].copy_from_slice(&me.mac);
    buf[field::VER_FLAGS] |= FLAG_RESPONSE;
    buf[field::ERROR] = 0;
    buf[ata::ERR_FEATURE] = plan.error;
    buf[ata::CMD_STATUS] = plan.status;
    if plan.identify {
        buf[ATA_HEADER_LEN..ATA_HEADER_LEN + SECTOR_SIZE].copy_from_slice(&me.identify);
    } else if plan.len == MIN_FRAME_LEN {
        // Whatever the request carried after its headers is not part of the reply.
        buf[ATA_HEADER_LEN..MIN_FRAME_LEN].fill(0);
    }
    plan.len
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoe_ctl::initiator::frames::{self, Addr};

    const ME: [u8; 6] = [2, 0, 0, 0, 0, 9];
    const THEM: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn me() -> Me {
        Me {
            mac: ME,
            max_sectors: 2,
            identify: [0x5a; SECTOR_SIZE],
        }
    }

    fn addr() -> Addr {
        Addr {
            src: THEM,
            dst: ME,
            shelf: 1,
            slot: 2,
        }
    }

    #[test]
    fn a_read_gets_its_sectors_and_a_write_its_headers() {
        let mut buf = [0xeeu8; 2048];
        let n = frames::read(&mut buf, &addr(), 0x8000_0007, 100, 2);
        let p = plan(&buf[..n], 2).unwrap();
        assert_eq!(p.len, ATA_HEADER_LEN + 1024);
        assert_eq!(reply(&mut buf, &p, &me()), 1060);
        assert_eq!(&buf[..6], &THEM);
        assert_eq!(&buf[6..12], &ME);
        assert_ne!(buf[field::VER_FLAGS] & FLAG_RESPONSE, 0);
        assert_eq!(
            &buf[20..24],
            &0x8000_0007u32.to_be_bytes(),
            "the tag is echoed"
        );
        assert_eq!(buf[ata::CMD_STATUS], STATUS_DRDY);

        let mut buf = [0xeeu8; 2048];
        let n = frames::write(&mut buf, &addr(), 1, 100, &[0x11; 1024]);
        let p = plan(&buf[..n], 2).unwrap();
        assert_eq!(reply(&mut buf, &p, &me()), MIN_FRAME_LEN);
        assert!(buf[ATA_HEADER_LEN..MIN_FRAME_LEN].iter().all(|&b| b == 0));
    }

    #[test]
    fn identify_comes_from_the_template_and_the_rest_is_refused_or_ignored() {
        let mut buf = [0u8; 2048];
        let n = frames::identify(&mut buf, &addr(), 1);
        let p = plan(&buf[..n], 2).unwrap();
        assert_eq!(reply(&mut buf, &p, &me()), ATA_HEADER_LEN + SECTOR_SIZE);
        assert!(buf[ATA_HEADER_LEN..ATA_HEADER_LEN + SECTOR_SIZE]
            .iter()
            .all(|&b| b == 0x5a));

        // More sectors than a frame carries: ABRT, headers only.
        let n = frames::read(&mut buf, &addr(), 1, 0, 3);
        let p = plan(&buf[..n], 2).unwrap();
        assert_eq!(
            (p.status, p.error, p.len),
            (STATUS_DRDY | STATUS_ERR, ERROR_ABRT, 60)
        );

        // A response, a short frame, a Query Config: not the echo's to answer.
        let n = frames::read(&mut buf, &addr(), 1, 0, 1);
        buf[field::VER_FLAGS] |= FLAG_RESPONSE;
        assert_eq!(plan(&buf[..n], 2), None);
        assert_eq!(plan(&buf[..20], 2), None);
        let n = frames::read(&mut buf, &addr(), 1, 0, 1);
        buf[field::COMMAND] = 1;
        assert_eq!(plan(&buf[..n], 2), None);
    }
}
