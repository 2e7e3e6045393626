//! The fallback data path, where XDP or AF_XDP cannot be used (no driver support, an old
//! kernel, no CAP_BPF): one thread reads AoE frames from an AF_PACKET socket's PACKET_MMAP rx
//! ring, and the same protocol engine writes each reply straight into a tx ring slot. Without
//! the kernel classifier the engine does all the filtering (broadcast ATA, mask list, config
//! tests); it already does that for every frame it sees. An ATA request that needs the disk
//! is copied out of the rx ring into a buffer of its own and waits there for its I/O on the
//! worker's io_uring, so the rx ring keeps moving; its reply is copied into the tx ring when
//! the I/O completes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aoe_common::wire::ata::ATA_HEADER_LEN;

use super::ata;
use super::backend::{BackendError, Kind};
use super::engine::{Engine, Parsed, Route, Verdict, CONTROL_REPLY_MAX};
use super::idle::Idle;
use super::in_flight::{InFlight, Pending};
use super::latency;
use super::live_engine::LiveEngine;
use super::worker::WorkerStats;
use crate::packet::ring::{RingSocket, TxRing};

/// Ring sizes in frames (rounded up to whole 64 KiB blocks by the socket).
const RX_SLOTS: usize = 4096;
const TX_SLOTS: usize = 4096;
/// Frames answered before the tx ring is kicked.
const BATCH: usize = 64;
/// Requests that may wait for storage at once (each holds one buffer).
const MAX_WAITING: usize = 1024;
/// How long an exit waits for the storage I/O in flight before leaking its buffers.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

pub struct PacketWorker {
    pub stats: Arc<WorkerStats>,
    handle: JoinHandle<Result<()>>,
}

impl PacketWorker {
    /// Open the rings on `ifname` and serve until `stop`.
    pub fn spawn(ifname: &str, live: Arc<LiveEngine>, stop: Arc<AtomicBool>) -> Result<Self> {
        let sock = RingSocket::open_with_room(ifname, RX_SLOTS, TX_SLOTS, CONTROL_REPLY_MAX)?;
        let stats = Arc::new(WorkerStats::default());
        let s = stats.clone();
        let handle = std::thread::Builder::new()
            .name("aoe-packet".into())
            .spawn(move || serve(sock, &live, &stop, &s))?;
        Ok(PacketWorker { stats, handle })
    }

    pub fn join(self) -> Result<()> {
        self.handle
            .join()
            .map_err(|_| anyhow!("the AF_PACKET worker panicked"))?
    }
}

/// Buffers for requests waiting for storage, each placed so a request's sectors (after its
/// ATA header) start on a 512-byte boundary, as O_DIRECT wants them.
struct Pool {
    bufs: Vec<Vec<u8>>,
    free: Vec<usize>,
    room: usize,
}

impl Pool {
    fn new(room: usize) -> Pool {
        Pool {
            bufs: Vec::new(),
            free: Vec::new(),
            room,
        }
    }

    fn take(&mut self) -> Option<usize> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.bufs.len() >= MAX_WAITING {
            return None;
        }
        self.bufs.push(vec![0u8; self.room + 512]);
        Some(self.bufs.len() - 1)
    }

    /// The request area of buffer `i`.
    fn get(&mut self, i: usize) -> &mut [u8] {
        let (room, b) = (self.room, &mut self.bufs[i]);
        let skew = (b.as_ptr() as usize + ATA_HEADER_LEN) % 512;
        let at = (512 - skew) % 512;
        &mut b[at..at + room]
    }
}

struct Packet {
    storage: Option<InFlight<usize>>,
    pool: Pool,
    /// A broadcast answered by more exports than the tx ring had room for: the request and
    /// the export to answer it for next, once the ring has room again.
    each: Option<(Vec<u8>, usize)>,
}

fn serve(
    mut sock: RingSocket,
    live: &LiveEngine,
    stop: &AtomicBool,
    stats: &WorkerStats,
) -> Result<()> {
    let storage = InFlight::new()
        .inspect_err(|e| {
            log::warn!(
                "AF_PACKET worker: no io_uring ({e}); storage I/O is synchronous, one request \
                 at a time"
            )
        })
        .ok();
    let mut w = Packet {
        storage,
        pool: Pool::new(sock.max_frame()),
        each: None,
    };
    let served = serve_until(&mut sock, &mut w, live, stop, stats);
    if let Err(e) = &served {
        log::error!("AF_PACKET worker: {e:#}; stopping");
    }
    // Every exit, clean or not: the kernel may still write into the buffers of requests
    // in flight (late O_DIRECT reads), which must not become someone else's heap.
    w.drain(&mut sock, stats);
    stats
        .socket_dropped
        .fetch_add(sock.drops(), Ordering::Relaxed);
    served
}

fn serve_until(
    sock: &mut RingSocket,
    w: &mut Packet,
    live: &LiveEngine,
    stop: &AtomicBool,
    stats: &WorkerStats,
) -> Result<()> {
    let (mut engine, mut generation) = live.load();
    let mut idle = Idle::default();
    while !stop.load(Ordering::Relaxed) {
        if live.changed_since(generation) {
            (engine, generation) = live.load();
        }
        let mut received = 0u64;
        let mut replied = w.continue_each(&engine, sock.tx());
        // A broadcast still being answered goes first: frames wait in the rx ring.
        while received < BATCH as u64 && w.each.is_none() {
            let mut reply_room = true;
            let got = sock.receive_with(|frame, ring| {
                if received == 0 {
                    latency::tick();
                }
                let n = w.answer(&engine, frame, ring);
                reply_room = n.is_some();
                replied += n.unwrap_or(0);
            });
            if !got {
                break;
            }
            received += 1;
            if !reply_room || w.each.is_some() {
                // The tx ring is full: send what it holds before reading more.
                sock.flush()?;
            }
        }
        replied += w.pump(sock);
        sock.flush()?;
        if received > 0 || replied > 0 {
            stats.add(received, replied);
            idle.busy();
        } else if w.each.is_some() {
            // The tx ring is still full: the device is sending it, no frame to wait for.
            std::thread::yield_now();
        } else if !idle.spin() {
            stats
                .socket_dropped
                .fetch_add(sock.drops(), Ordering::Relaxed);
            idle.sleep(w.storage.as_mut(), sock.raw_fd());
        }
    }
    Ok(())
}

impl Packet {
    /// Answer the requests waiting for storage (or give up on a hung disk and leak their
    /// buffers, as the XDP worker leaves its UMEM mapped).
    fn drain(&mut self, sock: &mut RingSocket, stats: &WorkerStats) {
        let Some(mut storage) = self.storage.take() else {
            return;
        };
        let waiting = storage.len();
        let mut replies = 0;
        let drained = storage.drain(DRAIN_WITHIN, |p, result| {
            replies += self.complete(sock, p, result);
        });
        // The link may be gone: the replies are best effort, the wait was not.
        let _ = sock.flush();
        stats.add(0, replies);
        if !drained {
            log::error!(
                "AF_PACKET worker: {} storage requests still in flight after {DRAIN_WITHIN:?} \
                 at exit; their buffers are left allocated",
                storage.len()
            );
            std::mem::forget(storage);
            std::mem::forget(std::mem::take(&mut self.pool.bufs));
        } else if waiting > 0 {
            log::info!("AF_PACKET worker: waited for {waiting} storage requests in flight at exit");
        }
    }

    /// Answer one frame into the tx ring, or start its storage I/O; the replies queued, or
    /// None when the ring was full (the frame is then lost, as a full NIC queue would lose
    /// it; the initiator retransmits).
    fn answer(&mut self, engine: &Engine, frame: &[u8], ring: &mut TxRing) -> Option<u64> {
        match engine.route(frame) {
            Route::One(i, parsed) if self.storage.is_some() && parsed.is_ata() => {
                self.defer(engine, i, parsed, frame, ring)
            }
            Route::One(i, parsed) => reply(engine, i, parsed, frame, ring),
            Route::Each => {
                self.each = Some((frame.to_vec(), 0));
                // The ring may fill up: the rest is answered once it has room.
                Some(self.continue_each(engine, ring))
            }
            Route::Ignore(_) => Some(0),
        }
    }

    /// Answer the pending broadcast for the exports left, as far as the tx ring has room;
    /// the replies queued.
    fn continue_each(&mut self, engine: &Engine, ring: &mut TxRing) -> u64 {
        let Some((frame, from)) = self.each.take() else {
            return 0;
        };
        let mut n = 0;
        for i in engine.each(&frame).skip_while(|&i| i < from) {
            match reply(engine, i, Parsed::Other, &frame, ring) {
                Some(sent) => n += sent,
                None => {
                    self.each = Some((frame, i));
                    return n;
                }
            }
        }
        n
    }

    /// An ATA request: into a buffer of its own, where it waits for its I/O.
    fn defer(
        &mut self,
        engine: &Engine,
        export: usize,
        parsed: Parsed,
        frame: &[u8],
        ring: &mut TxRing,
    ) -> Option<u64> {
        let Some(b) = self.pool.take() else {
            // Every buffer waits for the disk: drop it, the initiator retransmits.
            return Some(0);
        };
        let buf = self.pool.get(b);
        let room = parsed.reply_room(frame.len(), engine.max_sectors());
        if frame.len() > buf.len() || room > buf.len() {
            self.pool.free.push(b);
            return Some(0);
        }
        buf[..frame.len()].copy_from_slice(frame);
        let verdict = engine.handle_routed(export, parsed, buf, frame.len(), &[], true);
        let Verdict::Io(io) = verdict else {
            let sent = send(buf, verdict, ring);
            self.pool.free.push(b);
            return sent;
        };
        let data = match io.kind {
            Kind::Flush => None,
            _ => Some((buf[ATA_HEADER_LEN..].as_mut_ptr(), io.bytes)),
        };
        let (Some(storage), Some(ex)) = (self.storage.as_mut(), engine.exports().get(export))
        else {
            self.pool.free.push(b);
            return Some(0);
        };
        let p = Pending {
            export: ex.clone(),
            responder: engine.responder(),
            io,
            held: b,
            len: frame.len(),
        };
        let data: &[(*mut u8, usize)] = match &data {
            Some(d) => std::slice::from_ref(d),
            None => &[],
        };
        // SAFETY: `data` lies in pool buffer `b`, which is not used for anything else
        // until the request comes back from `pump`.
        if let Err(p) = unsafe { storage.start(p, data) } {
            self.pool.free.push(p.held);
        }
        Some(0)
    }

    /// Submit queued storage I/O and answer every request whose I/O is done.
    fn pump(&mut self, sock: &mut RingSocket) -> u64 {
        let Some(mut storage) = self.storage.take() else {
            return 0;
        };
        let mut replies = 0;
        if !storage.is_empty() {
            storage.pump(|p, result| replies += self.complete(sock, p, result));
        }
        self.storage = Some(storage);
        replies
    }

    fn complete(
        &mut self,
        sock: &mut RingSocket,
        p: Pending<usize>,
        result: Result<(), BackendError>,
    ) -> u64 {
        let buf = self.pool.get(p.held);
        let verdict = ata::complete(&p.export, &p.responder, &p.io, result, buf, p.len);
        let mut sent = 0;
        if let Verdict::Reply(n) = verdict {
            if !sock.queue(|out| copy_reply(buf, n, out, &mut sent)) {
                // Full: kick it and try once more; else the initiator retransmits.
                let _ = sock.flush();
                sock.queue(|out| copy_reply(buf, n, out, &mut sent));
            }
        }
        self.pool.free.push(p.held);
        sent
    }
}

fn copy_reply(buf: &[u8], n: usize, out: &mut [u8], sent: &mut u64) -> usize {
    if n > out.len() || n > buf.len() {
        return 0;
    }
    out[..n].copy_from_slice(&buf[..n]);
    *sent = 1;
    n
}

/// Queue the reply in `buf` (if the verdict is one) into the tx ring.
fn send(buf: &[u8], verdict: Verdict, ring: &mut TxRing) -> Option<u64> {
    let Verdict::Reply(n) = verdict else {
        return Some(0);
    };
    let mut sent = 0;
    ring.queue(|out| copy_reply(buf, n, out, &mut sent))
        .then_some(sent)
}

/// Answer `frame` for `export` straight into a tx ring slot (`parsed` as `route` gave it,
/// or `Parsed::Other` for a broadcast answered per export).
fn reply(
    engine: &Engine,
    export: usize,
    parsed: Parsed,
    frame: &[u8],
    ring: &mut TxRing,
) -> Option<u64> {
    let mut sent = 0;
    let room = match parsed {
        Parsed::Other => engine.reply_room(frame),
        Parsed::Ata(..) => parsed.reply_room(frame.len(), engine.max_sectors()),
    };
    let queued = ring.queue(|out| {
        if frame.len() > out.len() || room > out.len() {
            return 0;
        }
        out[..frame.len()].copy_from_slice(frame);
        match engine.handle_routed(export, parsed, out, frame.len(), &[], false) {
            Verdict::Reply(n) => {
                sent = 1;
                n
            }
            // Pending: the control plane answers it.
            Verdict::Ignore(_) | Verdict::Pending | Verdict::Io(_) => 0,
        }
    });
    queued.then_some(sent)
}
