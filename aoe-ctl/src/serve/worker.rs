//! One worker thread per rx queue: AF_XDP rx -> engine -> storage ring -> AF_XDP tx, replies
//! built in place in the UMEM chunk the request arrived in (or, for jumbo frames, in a run
//! of adjacent chunks sent as a descriptor chain). A request waiting for the disk keeps its
//! chunk and the worker goes on; its reply leaves when its I/O completes. Batched ring
//! operations, no allocation and no syscall per frame (one io_uring submit per batch, a poll
//! only when idle, a sendto kick only when the kernel asks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aoe_common::wire::ata::ATA_HEADER_LEN;
use xdpilone::xdp::XdpDesc;

use super::ata::{self, payload, StorageIo, MAX_WRITE_PARTS};
use super::backend::{BackendError, Kind};
use super::chunks::{Chunks, Layout, RUN_OFFSET};
use super::engine::{Engine, Parsed, Route, Verdict};
use super::idle::Idle;
use super::in_flight::{InFlight, Pending};
use super::latency;
use super::live_engine::LiveEngine;
use super::xdp::Classifier;
use super::xsk::{chunk_base, XskConfig, XskSocket, FRAME_SIZE, MAX_TX_CHAIN, XDP_PKT_CONTD};

const BATCH: u32 = 64;
/// More descriptors than any frame the kernel delivers (a 64 KiB frame is 17).
const MAX_RX_CHAIN: usize = super::ata::MAX_WRITE_PARTS;
/// Loops between two reads of the socket's drop counters under load (a getsockopt each).
const STATS_EVERY: u32 = 1 << 16;

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub received: AtomicU64,
    pub replied: AtomicU64,
    pub ignored: AtomicU64,
    /// Frames the kernel redirected to this socket but dropped there (XDP_STATISTICS, read
    /// when idle, every `STATS_EVERY` loops and at the end): the rx ring was full, or the
    /// fill ring had no buffer.
    pub socket_dropped: AtomicU64,
}

impl WorkerStats {
    /// Count a batch: frames received and replies sent.
    pub fn add(&self, received: u64, replied: u64) {
        self.received.fetch_add(received, Ordering::Relaxed);
        self.replied.fetch_add(replied, Ordering::Relaxed);
        self.ignored
            .fetch_add(received - replied.min(received), Ordering::Relaxed);
    }
}

pub struct Worker {
    pub queue: u32,
    pub stats: Arc<WorkerStats>,
    handle: JoinHandle<Result<()>>,
}

impl Worker {
    /// Open the socket of `cfg.queue` in a new thread, register it, and serve until `stop`.
    pub fn spawn(
        cfg: XskConfig,
        engine: Arc<LiveEngine>,
        classifier: Arc<Mutex<Classifier>>,
        stop: Arc<AtomicBool>,
    ) -> Result<Worker> {
        let stats = Arc::new(WorkerStats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let s = stats.clone();
        let queue = cfg.queue;
        let handle = std::thread::Builder::new()
            .name(format!("aoe-q{queue}"))
            .spawn(move || {
                let opened = XskSocket::open(&cfg).and_then(|sock| {
                    classifier
                        .lock()
                        .unwrap()
                        .bind_socket(cfg.queue, sock.fd())?;
                    Ok(sock)
                });
                // The socket is registered: the worker has no further use for the classifier.
                drop(classifier);
                let sock = match opened {
                    Ok(sock) => {
                        let _ = ready_tx.send(Ok(()));
                        sock
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                serve(sock, cfg.layout, &engine, &stop, &s)
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("worker for queue {queue} died while starting"))??;
        Ok(Worker {
            queue,
            stats,
            handle,
        })
    }

    pub fn join(self) -> Result<()> {
        self.handle
            .join()
            .map_err(|_| anyhow!("worker for queue {} panicked", self.queue))?
    }
}

/// Where a request waiting for storage lives in the UMEM.
enum Held {
    /// Its own chunk, the reply written in place at `addr`.
    Chunk(u64),
    /// A write that arrived as a chain: the reply goes in `first`, the payload is in it and
    /// in `rest`, all kept until the write is done.
    Chain { first: u64, rest: Vec<u64> },
    /// A run holding the request at `RUN_OFFSET`; the reply leaves from there as a chain.
    Run(u64),
}

/// Everything one queue worker owns.
struct Queue {
    sock: XskSocket,
    chunks: Chunks,
    tx_queue: VecDeque<XdpDesc>,
    /// A broadcast request, whole (it may have arrived as a chain).
    scratch: Vec<u8>,
    /// The export the broadcast in `scratch` is answered for next, while it is being
    /// answered: more exports than free chunks answer over several loops, each loop sending
    /// what fits and getting chunks back from tx completions.
    each_next: Option<usize>,
    /// Requests waiting for storage; None where no ring could be set up (the engine then
    /// does the I/O synchronously).
    storage: Option<InFlight<Held>>,
}

fn serve(
    sock: XskSocket,
    layout: Layout,
    live: &LiveEngine,
    stop: &AtomicBool,
    stats: &WorkerStats,
) -> Result<()> {
    let (mut engine, mut generation) = live.load();
    let storage = match InFlight::new() {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!(
                "queue worker: no io_uring ({e}); storage I/O is synchronous on this queue, one \
                 request at a time"
            );
            None
        }
    };
    let mut q = Queue {
        sock,
        chunks: Chunks::new(layout),
        tx_queue: VecDeque::with_capacity(layout.total() as usize),
        scratch: Vec::with_capacity(4 * FRAME_SIZE as usize),
        each_next: None,
        storage,
    };
    // Received descriptors not answered yet: the tail of a chain still arriving, or frames
    // waiting for a free run.
    let mut held: Vec<XdpDesc> = Vec::with_capacity(2 * BATCH as usize + MAX_RX_CHAIN);
    let mut waiting_for_run = false;
    q.refill();
    let mut idle = Idle::default();
    let mut loops = 0u32;

    while !stop.load(Ordering::Relaxed) {
        if live.changed_since(generation) {
            (engine, generation) = live.load();
        }
        loops = loops.wrapping_add(1);
        if loops.is_multiple_of(STATS_EVERY) {
            read_socket_drops(&q.sock, stats);
        }
        // Chunks the kernel finished sending come back to us.
        {
            let mut done = q.sock.device.complete(BATCH * 4);
            while let Some(addr) = done.read() {
                q.chunks.put(addr);
            }
            done.release();
        }
        let mut replied = q.continue_each(&engine);

        let mut arrived = 0;
        // A broadcast still being answered goes first: frames wait in the rx ring.
        if q.each_next.is_none() && (!waiting_for_run || q.chunks.has_run()) {
            let mut rx = q.sock.rx.receive(BATCH);
            while let Some(d) = rx.read() {
                held.push(d);
                arrived += 1;
            }
            rx.release();
        }
        if arrived > 0 {
            latency::tick();
        }

        let mut received = 0u64;
        let mut at = 0;
        waiting_for_run = false;
        while at < held.len() {
            let Some(last) = held[at..]
                .iter()
                .position(|d| d.options & XDP_PKT_CONTD == 0)
            else {
                if held.len() - at > MAX_RX_CHAIN {
                    // Longer than any MTU allows: the kernel would never send it; let it go.
                    held[at..].iter().for_each(|d| q.chunks.put(d.addr));
                    at = held.len();
                }
                break;
            };
            let chain = &held[at..=at + last];
            match q.handle(&engine, chain) {
                Some(n) => {
                    received += 1;
                    replied += n;
                    at += last + 1;
                }
                None => {
                    waiting_for_run = true;
                    break;
                }
            }
        }
        held.drain(..at);

        // Storage: submit this batch's I/O (merged), answer what completed.
        replied += q.pump();

        if !q.tx_queue.is_empty() {
            let mut w = q.sock.tx.transmit(q.tx_queue.len() as u32);
            let room = w.capacity() as usize;
            // Partial chains are committed too: the kernel holds a half-built frame until its
            // last descriptor arrives, and waiting for room for a whole chain can stall.
            let sent = w.insert(q.tx_queue.iter().take(room).copied()) as usize;
            w.commit();
            drop(w);
            q.tx_queue.drain(..sent);
        }
        if q.sock.tx.needs_wakeup() && (q.sock.tx.pending() > 0 || !q.tx_queue.is_empty()) {
            q.sock.tx.wake();
        }
        q.refill();

        // Locked adds only when there is something to add: an idle spin should not pay three.
        if received > 0 || replied > 0 {
            stats.add(received, replied);
        }

        if arrived == 0
            && replied == 0
            && q.tx_queue.is_empty()
            && q.sock.tx.pending() == 0
            && q.each_next.is_none()
        {
            if !idle.spin() {
                read_socket_drops(&q.sock, stats);
                idle.sleep(q.storage.as_mut(), q.sock.fd());
            }
        } else {
            idle.busy();
        }
    }
    // The kernel may still be reading into chunks held by requests in flight: answer them
    // (or give up on a hung disk) before the UMEM goes away.
    if let Some(mut storage) = q.storage.take() {
        let mut replies = 0;
        let drained = storage.drain(Duration::from_secs(30), |p, result| {
            replies += q.complete(p, result);
        });
        q.flush_tx();
        if !drained {
            log::error!(
                "queue worker: storage I/O still in flight after 30 s at exit; its buffers \
                 are left mapped"
            );
            std::mem::forget(storage);
            std::mem::forget(q.sock);
            return Ok(());
        }
        stats.add(0, replies);
    }
    read_socket_drops(&q.sock, stats);
    Ok(())
}

/// Frames the kernel dropped at this socket (XDP_STATISTICS), for `stats` and the exit line.
fn read_socket_drops(sock: &XskSocket, stats: &WorkerStats) {
    if let Ok(st) = sock.device.statistics_v2() {
        stats
            .socket_dropped
            .store(st.rx_dropped + st.rx_ring_full, Ordering::Relaxed);
    }
}

impl Queue {
    /// Answer one received frame (a chain of one or more descriptors); returns the number
    /// of replies queued, or None when it needs a run and none is free (try again later).
    fn handle(&mut self, engine: &Engine, chain: &[XdpDesc]) -> Option<u64> {
        let first = chain[0];
        // SAFETY: the kernel handed this chunk to us through the rx ring; it is ours until
        // we put it in the tx or fill ring, and no other slice of it exists.
        let buf = unsafe { self.sock.chunk_from(first.addr) };
        let len = (first.len as usize).min(buf.len());
        let route = engine.route(&buf[..len]);
        match route {
            // Without runs (the MTU fits one chunk) every reply fits where it arrived.
            Route::One(i, parsed)
                if chain.len() == 1
                    && (self.chunks.run_len() == 0
                        || parsed.reply_room(len, engine.max_sectors()) <= buf.len()) =>
            {
                let defer = self.storage.is_some();
                let verdict = engine.handle_routed(i, parsed, buf, len, &[], defer);
                if let Verdict::Io(io) = verdict {
                    let data = buf[ATA_HEADER_LEN..].as_mut_ptr();
                    let bytes = io.bytes;
                    return Some(self.start(
                        engine,
                        i,
                        io,
                        Held::Chunk(first.addr),
                        len,
                        &[(data, bytes)],
                    ));
                }
                Some(self.settle(verdict, first.addr))
            }
            Route::One(i, parsed) if parsed.is_write() => {
                Some(self.answer_write(engine, i, parsed, chain))
            }
            Route::One(i, parsed) => self.answer_in_run(engine, i, parsed, chain),
            // One broadcast at a time: the next waits until every export answered this one.
            Route::Each if self.each_next.is_some() => None,
            Route::Each => Some(self.answer_each(engine, chain)),
            Route::Ignore(_) => {
                chain.iter().for_each(|d| self.chunks.put(d.addr));
                Some(0)
            }
        }
    }

    /// Hand a checked request to the ring; replies queued at once (only when it turns out
    /// to need none: its export has no file).
    fn start(
        &mut self,
        engine: &Engine,
        export: usize,
        io: StorageIo,
        held: Held,
        len: usize,
        data: &[(*mut u8, usize)],
    ) -> u64 {
        let (Some(storage), Some(ex)) = (self.storage.as_mut(), engine.exports().get(export))
        else {
            self.release(held);
            return 0;
        };
        let p = Pending {
            export: ex.clone(),
            responder: engine.responder(),
            io,
            held,
            len,
        };
        let data = if io.kind == Kind::Flush {
            &[][..]
        } else {
            data
        };
        // SAFETY: `data` lies in the chunks `held` names, which this worker keeps out of
        // every ring until the request comes back from `pump`.
        match unsafe { storage.start(p, data) } {
            Ok(()) => 0,
            Err(p) => self.complete(p, Err(BackendError::FailedClosed { why: "no file" })),
        }
    }

    /// Submit queued storage I/O and answer every request whose I/O is done.
    fn pump(&mut self) -> u64 {
        let Some(mut storage) = self.storage.take() else {
            return 0;
        };
        let mut replies = 0;
        if !storage.is_empty() {
            storage.pump(|p, result| replies += self.complete(p, result));
        }
        self.storage = Some(storage);
        replies
    }

    /// Write the reply of a request whose I/O is done and queue it; replies queued.
    fn complete(&mut self, p: Pending<Held>, result: Result<(), BackendError>) -> u64 {
        let Pending {
            export,
            responder,
            io,
            held,
            len,
        } = p;
        match held {
            Held::Chunk(addr) => {
                // SAFETY: the chunk was kept for this request, and its I/O is done.
                let buf = unsafe { self.sock.chunk_from(addr) };
                let verdict = ata::complete(&export, &responder, &io, result, buf, len);
                self.settle(verdict, addr)
            }
            Held::Chain { first, rest } => {
                rest.iter().for_each(|&a| self.chunks.put(a));
                // SAFETY: as above.
                let buf = unsafe { self.sock.chunk_from(first) };
                let verdict = ata::complete(&export, &responder, &io, result, buf, len);
                self.settle(verdict, first)
            }
            Held::Run(run) => {
                let room = self.chunks.run_len() - RUN_OFFSET;
                // SAFETY: the run was kept for this request, and its I/O is done.
                let buf = unsafe { self.sock.region(run + RUN_OFFSET as u64, room) };
                let verdict = ata::complete(&export, &responder, &io, result, buf, len);
                self.send_run(verdict, run)
            }
        }
    }

    /// Give back what a request held, unanswered.
    fn release(&mut self, held: Held) {
        match held {
            Held::Chunk(a) => self.chunks.put(a),
            Held::Chain { first, rest } => {
                self.chunks.put(first);
                rest.iter().for_each(|&a| self.chunks.put(a));
            }
            Held::Run(run) => self.chunks.put_run(run),
        }
    }

    /// A broadcast: the whole request, gathered from its descriptors, then each export it
    /// reaches answers from a spare chunk of its own (broadcasts carry no storage I/O).
    fn answer_each(&mut self, engine: &Engine, chain: &[XdpDesc]) -> u64 {
        self.scratch.clear();
        for d in chain {
            // SAFETY: every chunk of the chain is ours until put back.
            let piece = unsafe { self.sock.chunk_from(d.addr) };
            self.scratch
                .extend_from_slice(&piece[..(d.len as usize).min(piece.len())]);
        }
        chain.iter().for_each(|d| self.chunks.put(d.addr));
        self.each_next = Some(0);
        self.continue_each(engine)
    }

    /// Answer the broadcast in `scratch` for as many of the exports left as there are spare
    /// chunks; the rest wait for the chunks the kernel sends back (`each_next` says where to
    /// go on). Returns the replies queued.
    fn continue_each(&mut self, engine: &Engine) -> u64 {
        let Some(from) = self.each_next else {
            return 0;
        };
        let mut replies = 0;
        // The engine may have been reloaded meanwhile: `each` is over its exports now.
        for i in engine.each(&self.scratch).skip_while(|&i| i < from) {
            let Some(spare) = self.chunks.take() else {
                self.each_next = Some(i);
                return replies;
            };
            // SAFETY: a free chunk is owned by us and not referenced elsewhere.
            let out = unsafe { self.sock.chunk_from(spare) };
            if self.scratch.len() > out.len() || engine.reply_room(&self.scratch) > out.len() {
                // Longer than a chunk: no export can answer it.
                self.chunks.put(spare);
                break;
            }
            out[..self.scratch.len()].copy_from_slice(&self.scratch);
            let verdict = engine.handle(i, out, self.scratch.len());
            replies += self.settle(verdict, spare);
        }
        self.each_next = None;
        replies
    }

    /// Answer a write that arrived as a chain: its pieces go from the descriptors to the
    /// backend (no gathering copy, no run), and the reply is built in the first chunk.
    fn answer_write(
        &mut self,
        engine: &Engine,
        export: usize,
        parsed: Parsed,
        chain: &[XdpDesc],
    ) -> u64 {
        let first = chain[0];
        let mut tail: [&[u8]; MAX_RX_CHAIN] = [&[]; MAX_RX_CHAIN];
        let pieces = (chain.len() - 1).min(MAX_RX_CHAIN);
        // SAFETY: the kernel handed these chunks to us through the rx ring, each descriptor
        // in its own chunk; they are ours until put back.
        let head = unsafe { self.sock.chain(chain, &mut tail[..pieces]) };
        let len = (first.len as usize).min(head.len());
        let defer = self.storage.is_some();
        let verdict = engine.handle_routed(export, parsed, head, len, &tail[..pieces], defer);
        if let Verdict::Io(io) = verdict {
            let mut parts: [&[u8]; MAX_WRITE_PARTS] = [&[]; MAX_WRITE_PARTS];
            let h = ATA_HEADER_LEN;
            let n =
                payload(&head[h..len.max(h)], &tail[..pieces], io.bytes, &mut parts).unwrap_or(0);
            let mut data = [(std::ptr::null_mut(), 0usize); MAX_WRITE_PARTS];
            for (d, p) in data.iter_mut().zip(&parts[..n]) {
                // The ring only reads a write's buffers.
                *d = (p.as_ptr().cast_mut(), p.len());
            }
            let held = Held::Chain {
                first: first.addr,
                rest: chain[1..].iter().map(|d| d.addr).collect(),
            };
            return self.start(engine, export, io, held, len, &data[..n]);
        }
        chain[1..].iter().for_each(|d| self.chunks.put(d.addr));
        self.settle(verdict, first.addr)
    }

    /// Queue the reply the engine wrote into the chunk at `addr`, or give the chunk back;
    /// returns the replies queued.
    fn settle(&mut self, verdict: Verdict, addr: u64) -> u64 {
        match verdict {
            Verdict::Reply(n) => {
                self.tx_queue.push_back(XdpDesc {
                    addr,
                    len: n as u32,
                    options: 0,
                });
                1
            }
            // Pending: the control plane answers it; the chunk is free.
            Verdict::Ignore(_) | Verdict::Pending | Verdict::Io(_) => {
                self.chunks.put(addr);
                0
            }
        }
    }

    /// Answer a frame in a run: its descriptors gathered into one contiguous buffer, and the
    /// reply sent from there as a chain (jumbo writes in, jumbo reads out).
    fn answer_in_run(
        &mut self,
        engine: &Engine,
        export: usize,
        parsed: Parsed,
        chain: &[XdpDesc],
    ) -> Option<u64> {
        let room = self.chunks.run_len().saturating_sub(RUN_OFFSET);
        let total: usize = chain.iter().map(|d| d.len as usize).sum();
        if total > room {
            // Longer than the MTU the runs were sized for.
            chain.iter().for_each(|d| self.chunks.put(d.addr));
            return Some(0);
        }
        let run = self.chunks.take_run()?;
        let base = run + RUN_OFFSET as u64;
        let mut at = 0;
        for d in chain {
            let fits = (FRAME_SIZE as usize).saturating_sub((d.addr - chunk_base(d.addr)) as usize);
            // SAFETY: the descriptor's chunk is ours (received) and the run was taken above.
            at += unsafe {
                self.sock
                    .copy(d.addr, (d.len as usize).min(fits), base + at as u64)
            };
            self.chunks.put(d.addr);
        }
        // SAFETY: the run was taken from the free list above; nothing else refers to it.
        let buf = unsafe { self.sock.region(base, room) };
        let defer = self.storage.is_some();
        let verdict = engine.handle_routed(export, parsed, buf, at, &[], defer);
        if let Verdict::Io(io) = verdict {
            let data = buf[ATA_HEADER_LEN..].as_mut_ptr();
            return Some(self.start(engine, export, io, Held::Run(run), at, &[(data, io.bytes)]));
        }
        Some(self.send_run(verdict, run))
    }

    /// Send the reply the engine wrote at `RUN_OFFSET` of `run` as a chain of descriptors,
    /// one per chunk it touches, or give the run back.
    fn send_run(&mut self, verdict: Verdict, run: u64) -> u64 {
        let Verdict::Reply(n) = verdict else {
            self.chunks.put_run(run);
            return 0;
        };
        let chunk = FRAME_SIZE as usize;
        let (start, end) = (RUN_OFFSET, RUN_OFFSET + n);
        let mut pieces = 0;
        let mut at = start;
        while at < end && pieces < MAX_TX_CHAIN {
            let stop = ((at / chunk + 1) * chunk).min(end);
            pieces += 1;
            self.tx_queue.push_back(XdpDesc {
                addr: run + at as u64,
                len: (stop - at) as u32,
                options: if stop < end { XDP_PKT_CONTD } else { 0 },
            });
            at = stop;
        }
        self.chunks.run_sent(run, pieces);
        1
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

    /// Hand every queued reply to the kernel (at exit).
    fn flush_tx(&mut self) {
        for _ in 0..100 {
            if self.tx_queue.is_empty() {
                break;
            }
            let mut w = self.sock.tx.transmit(self.tx_queue.len() as u32);
            let room = w.capacity() as usize;
            let sent = w.insert(self.tx_queue.iter().take(room).copied()) as usize;
            w.commit();
            drop(w);
            self.tx_queue.drain(..sent);
            self.sock.tx.wake();
            let mut done = self.sock.device.complete(BATCH * 4);
            while let Some(addr) = done.read() {
                self.chunks.put(addr);
            }
            done.release();
        }
    }
}
