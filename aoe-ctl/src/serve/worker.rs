//! One worker thread per rx queue: AF_XDP rx -> engine -> AF_XDP tx, replies built in place
//! in the UMEM chunk the request arrived in (or, for jumbo frames, in a run of adjacent
//! chunks sent as a descriptor chain). Batched ring operations, no allocation and no
//! syscall per frame (a poll only when idle, a sendto kick only when the kernel asks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aoe_common::wire::ata::{self, ATA_HEADER_LEN};
use aoe_common::wire::header;
use xdpilone::xdp::XdpDesc;

use super::chunks::{Chunks, Layout};
use super::engine::{Engine, Route, Verdict};
use super::live_engine::LiveEngine;
use super::xdp::Classifier;
use super::xsk::{chunk_base, XskConfig, XskSocket, FRAME_SIZE, MAX_TX_CHAIN, XDP_PKT_CONTD};

const BATCH: u32 = 64;
/// More descriptors than any frame the kernel delivers (a 64 KiB frame is 17).
const MAX_RX_CHAIN: usize = super::ata::MAX_WRITE_PARTS;
/// Empty loops before the worker sleeps in poll(): a request usually follows the last reply
/// within microseconds, and a poll wake-up costs more than a few spins.
const SPINS_BEFORE_SLEEP: u32 = 256;
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

fn serve(
    mut sock: XskSocket,
    layout: Layout,
    live: &LiveEngine,
    stop: &AtomicBool,
    stats: &WorkerStats,
) -> Result<()> {
    let (mut engine, mut generation) = live.load();
    let mut chunks = Chunks::new(layout);
    let mut tx_queue: VecDeque<XdpDesc> = VecDeque::with_capacity(layout.total() as usize);
    // Received descriptors not answered yet: the tail of a chain still arriving, or frames
    // waiting for a free run.
    let mut held: Vec<XdpDesc> = Vec::with_capacity(2 * BATCH as usize + MAX_RX_CHAIN);
    let mut waiting_for_run = false;
    // A broadcast request, whole (it may have arrived as a chain).
    let mut scratch: Vec<u8> = Vec::with_capacity(4 * FRAME_SIZE as usize);
    refill(&mut sock, &mut chunks);
    let mut idle = 0u32;
    let mut loops = 0u32;

    while !stop.load(Ordering::Relaxed) {
        if live.changed_since(generation) {
            (engine, generation) = live.load();
        }
        loops = loops.wrapping_add(1);
        if loops.is_multiple_of(STATS_EVERY) {
            read_socket_drops(&sock, stats);
        }
        // Chunks the kernel finished sending come back to us.
        {
            let mut done = sock.device.complete(BATCH * 4);
            while let Some(addr) = done.read() {
                chunks.put(addr);
            }
            done.release();
        }

        let mut arrived = 0;
        if !waiting_for_run || chunks.has_run() {
            let mut rx = sock.rx.receive(BATCH);
            while let Some(d) = rx.read() {
                held.push(d);
                arrived += 1;
            }
            rx.release();
        }

        let mut received = 0u64;
        let mut replied = 0u64;
        let mut at = 0;
        waiting_for_run = false;
        while at < held.len() {
            let Some(last) = held[at..]
                .iter()
                .position(|d| d.options & XDP_PKT_CONTD == 0)
            else {
                if held.len() - at > MAX_RX_CHAIN {
                    // Longer than any MTU allows: the kernel would never send it; let it go.
                    held[at..].iter().for_each(|d| chunks.put(d.addr));
                    at = held.len();
                }
                break;
            };
            let chain = &held[at..=at + last];
            match handle(
                &mut sock,
                &engine,
                chain,
                &mut chunks,
                &mut tx_queue,
                &mut scratch,
            ) {
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

        if !tx_queue.is_empty() {
            let mut w = sock.tx.transmit(tx_queue.len() as u32);
            let room = w.capacity() as usize;
            // Partial chains are committed too: the kernel holds a half-built frame until its
            // last descriptor arrives, and waiting for room for a whole chain can stall.
            let sent = w.insert(tx_queue.iter().take(room).copied()) as usize;
            w.commit();
            drop(w);
            tx_queue.drain(..sent);
        }
        if sock.tx.needs_wakeup() && (sock.tx.pending() > 0 || !tx_queue.is_empty()) {
            sock.tx.wake();
        }
        refill(&mut sock, &mut chunks);

        // Locked adds only when there is something to add: an idle spin should not pay three.
        if received > 0 {
            stats.add(received, replied);
        }

        if arrived == 0 && received == 0 && tx_queue.is_empty() && sock.tx.pending() == 0 {
            idle += 1;
            if idle >= SPINS_BEFORE_SLEEP {
                read_socket_drops(&sock, stats);
                idle_wait(&sock, Duration::from_millis(100));
                idle = 0;
            } else {
                std::hint::spin_loop();
            }
        } else {
            idle = 0;
        }
    }
    read_socket_drops(&sock, stats);
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

/// Answer one received frame (a chain of one or more descriptors); returns the number of
/// replies queued, or None when it needs a run and none is free (try again later).
fn handle(
    sock: &mut XskSocket,
    engine: &Engine,
    chain: &[XdpDesc],
    chunks: &mut Chunks,
    tx_queue: &mut VecDeque<XdpDesc>,
    scratch: &mut Vec<u8>,
) -> Option<u64> {
    let first = chain[0];
    // SAFETY: the kernel handed this chunk to us through the rx ring; it is ours until we
    // put it in the tx or fill ring, and no other slice of it exists.
    let buf = unsafe { sock.chunk_from(first.addr) };
    let len = (first.len as usize).min(buf.len());
    let route = engine.route(&buf[..len]);
    // Without runs (the MTU fits one chunk) every reply fits: skip parsing the request again.
    let in_place =
        chain.len() == 1 && (chunks.run_len() == 0 || engine.reply_room(&buf[..len]) <= buf.len());
    match route {
        Route::One(i) if in_place => {
            let verdict = engine.handle(i, buf, len);
            Some(settle(verdict, first.addr, chunks, tx_queue))
        }
        Route::One(i) if is_write(&buf[..len]) => {
            Some(answer_write(sock, engine, i, chain, chunks, tx_queue))
        }
        Route::One(i) => answer_in_run(sock, engine, i, chain, chunks, tx_queue),
        Route::Each => {
            // A broadcast: the whole request, gathered from its descriptors, then each
            // export it reaches answers from a spare chunk of its own.
            scratch.clear();
            for d in chain {
                // SAFETY: as above, every chunk of the chain is ours until put back.
                let piece = unsafe { sock.chunk_from(d.addr) };
                scratch.extend_from_slice(&piece[..(d.len as usize).min(piece.len())]);
            }
            chain.iter().for_each(|d| chunks.put(d.addr));
            let mut replies = 0;
            for i in engine.each(scratch) {
                let Some(spare) = chunks.take() else { break };
                // SAFETY: a free chunk is owned by us and not referenced elsewhere.
                let out = unsafe { sock.chunk_from(spare) };
                if scratch.len() > out.len() || engine.reply_room(scratch) > out.len() {
                    chunks.put(spare);
                    break;
                }
                out[..scratch.len()].copy_from_slice(scratch);
                let verdict = engine.handle(i, out, scratch.len());
                replies += settle(verdict, spare, chunks, tx_queue);
            }
            Some(replies)
        }
        Route::Ignore(_) => {
            chain.iter().for_each(|d| chunks.put(d.addr));
            Some(0)
        }
    }
}

/// An ATA write: its reply (headers only) fits where it arrived, whatever its length.
fn is_write(frame: &[u8]) -> bool {
    frame.len() >= ATA_HEADER_LEN
        && frame[header::field::COMMAND] == header::CMD_ATA
        && frame[ata::field::AFLAGS] & ata::AFLAG_WRITE != 0
}

/// Answer a write that arrived as a chain: its pieces go from the descriptors to the
/// backend (one copy, no run), and the reply is built in the first chunk.
fn answer_write(
    sock: &mut XskSocket,
    engine: &Engine,
    export: usize,
    chain: &[XdpDesc],
    chunks: &mut Chunks,
    tx_queue: &mut VecDeque<XdpDesc>,
) -> u64 {
    let first = chain[0];
    let mut tail: [&[u8]; MAX_RX_CHAIN] = [&[]; MAX_RX_CHAIN];
    let pieces = (chain.len() - 1).min(MAX_RX_CHAIN);
    // SAFETY: the kernel handed these chunks to us through the rx ring, each descriptor in
    // its own chunk; they are ours until put back below.
    let head = unsafe { sock.chain(chain, &mut tail[..pieces]) };
    let len = (first.len as usize).min(head.len());
    let verdict = engine.handle_parts(export, head, len, &tail[..pieces]);
    chain[1..].iter().for_each(|d| chunks.put(d.addr));
    settle(verdict, first.addr, chunks, tx_queue)
}

/// Queue the reply the engine wrote into the chunk at `addr`, or give the chunk back;
/// returns the replies queued.
fn settle(
    verdict: Verdict,
    addr: u64,
    chunks: &mut Chunks,
    tx_queue: &mut VecDeque<XdpDesc>,
) -> u64 {
    match verdict {
        Verdict::Reply(n) => {
            tx_queue.push_back(XdpDesc {
                addr,
                len: n as u32,
                options: 0,
            });
            1
        }
        // Pending: the control plane answers it; the chunk is free.
        Verdict::Ignore(_) | Verdict::Pending => {
            chunks.put(addr);
            0
        }
    }
}

/// Answer a frame in a run: its descriptors gathered into one contiguous buffer, and the
/// reply sent from there as a chain (jumbo writes in, jumbo reads out).
fn answer_in_run(
    sock: &mut XskSocket,
    engine: &Engine,
    export: usize,
    chain: &[XdpDesc],
    chunks: &mut Chunks,
    tx_queue: &mut VecDeque<XdpDesc>,
) -> Option<u64> {
    let run_len = chunks.run_len();
    let total: usize = chain.iter().map(|d| d.len as usize).sum();
    if total > run_len {
        // Longer than the MTU the runs were sized for.
        chain.iter().for_each(|d| chunks.put(d.addr));
        return Some(0);
    }
    let run = chunks.take_run()?;
    let mut at = 0;
    for d in chain {
        let room = (FRAME_SIZE as usize).saturating_sub((d.addr - chunk_base(d.addr)) as usize);
        // SAFETY: the descriptor's chunk is ours (received) and the run was taken above.
        at += unsafe { sock.copy(d.addr, (d.len as usize).min(room), run + at as u64) };
        chunks.put(d.addr);
    }
    // SAFETY: the run was taken from the free list above; nothing else refers to it.
    let buf = unsafe { sock.region(run, run_len) };
    match engine.handle(export, buf, at) {
        Verdict::Reply(n) => {
            let pieces = n.div_ceil(FRAME_SIZE as usize).min(MAX_TX_CHAIN);
            for k in 0..pieces {
                let offset = k * FRAME_SIZE as usize;
                tx_queue.push_back(XdpDesc {
                    addr: run + offset as u64,
                    len: (n - offset).min(FRAME_SIZE as usize) as u32,
                    options: if k + 1 < pieces { XDP_PKT_CONTD } else { 0 },
                });
            }
            chunks.run_sent(run, pieces);
            Some(1)
        }
        Verdict::Ignore(_) | Verdict::Pending => {
            chunks.put_run(run);
            Some(0)
        }
    }
}

fn refill(sock: &mut XskSocket, chunks: &mut Chunks) {
    let free = chunks.singles_mut();
    if free.is_empty() {
        return;
    }
    let mut w = sock.device.fill(free.len() as u32);
    let room = (w.capacity() as usize).min(free.len());
    let from = free.len() - room;
    let n = w.insert(free[from..].iter().copied()) as usize;
    w.commit();
    drop(w);
    free.drain(from..from + n);
    if sock.device.needs_wakeup() {
        sock.device.wake();
    }
}

fn idle_wait(sock: &XskSocket, timeout: Duration) {
    let mut p = libc::pollfd {
        fd: sock.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
}
