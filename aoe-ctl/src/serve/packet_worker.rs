//! The fallback data path, where XDP or AF_XDP cannot be used (no driver support, an old
//! kernel, no CAP_BPF): one thread reads AoE frames from an AF_PACKET socket's PACKET_MMAP rx
//! ring, and the same protocol engine writes each reply straight into a tx ring slot. Without
//! the kernel classifier the engine does all the filtering (broadcast ATA, mask list, config
//! tests); it already does that for every frame it sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::engine::{Engine, Route, Verdict, CONTROL_REPLY_MAX};
use super::live_engine::LiveEngine;
use super::worker::WorkerStats;
use crate::packet::ring::RingSocket;

/// Ring sizes in frames (rounded up to whole 64 KiB blocks by the socket).
const RX_SLOTS: usize = 4096;
const TX_SLOTS: usize = 4096;
/// Frames answered before the tx ring is kicked.
const BATCH: usize = 64;

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

fn serve(
    mut sock: RingSocket,
    live: &LiveEngine,
    stop: &AtomicBool,
    stats: &WorkerStats,
) -> Result<()> {
    let (mut engine, mut generation) = live.load();
    while !stop.load(Ordering::Relaxed) {
        if live.changed_since(generation) {
            (engine, generation) = live.load();
        }
        let mut received = 0u64;
        let mut replied = 0u64;
        while received < BATCH as u64 {
            let mut reply_room = true;
            let got = sock.receive_with(|frame, ring| {
                let n = answer(&engine, frame, ring);
                reply_room = n.is_some();
                replied += n.unwrap_or(0);
            });
            if !got {
                break;
            }
            received += 1;
            if !reply_room {
                // The tx ring is full: send what it holds before reading more.
                sock.flush()?;
            }
        }
        sock.flush()?;
        if received > 0 {
            stats.add(received, replied);
        } else {
            stats
                .socket_dropped
                .fetch_add(sock.drops(), Ordering::Relaxed);
            sock.wait(Duration::from_millis(100))?;
        }
    }
    stats
        .socket_dropped
        .fetch_add(sock.drops(), Ordering::Relaxed);
    Ok(())
}

/// Answer one frame into the tx ring; the replies queued, or None when the ring was full
/// (the frame is then lost, as a full NIC queue would lose it; the initiator retransmits).
fn answer(engine: &Engine, frame: &[u8], ring: &mut crate::packet::ring::TxRing) -> Option<u64> {
    match engine.route(frame) {
        Route::One(i) => reply(engine, i, frame, ring),
        Route::Each => {
            let mut n = 0;
            for i in engine.each(frame) {
                n += reply(engine, i, frame, ring)?;
            }
            Some(n)
        }
        Route::Ignore(_) => Some(0),
    }
}

fn reply(
    engine: &Engine,
    export: usize,
    frame: &[u8],
    ring: &mut crate::packet::ring::TxRing,
) -> Option<u64> {
    let mut sent = 0;
    let queued = ring.queue(|out| {
        if frame.len() > out.len() || engine.reply_room(frame) > out.len() {
            return 0;
        }
        out[..frame.len()].copy_from_slice(frame);
        match engine.handle(export, out, frame.len()) {
            Verdict::Reply(n) => {
                sent = 1;
                n
            }
            // Pending: the control plane answers it.
            Verdict::Ignore(_) | Verdict::Pending => 0,
        }
    });
    queued.then_some(sent)
}
