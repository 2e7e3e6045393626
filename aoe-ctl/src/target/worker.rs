//! One worker thread per rx queue: AF_XDP rx -> engine -> AF_XDP tx, replies built in place
//! in the UMEM chunk the request arrived in. Batched ring operations, no allocation and no
//! syscall per frame (a poll only when idle, a sendto kick only when the kernel asks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aoe_common::wire::Frame;
use xdpilone::xdp::XdpDesc;

use super::engine::{Engine, Route, Verdict};
use super::xdp::Classifier;
use super::xsk::{chunk_base, XskConfig, XskSocket, FRAME_SIZE};

const BATCH: u32 = 64;
/// Empty loops before the worker sleeps in poll(): a request usually follows the last reply
/// within microseconds, and a poll wake-up costs more than a few spins.
const SPINS_BEFORE_SLEEP: u32 = 256;

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub received: AtomicU64,
    pub replied: AtomicU64,
    pub ignored: AtomicU64,
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
        engine: Arc<Engine>,
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
                serve(sock, &engine, &stop, &s)
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
    engine: &Engine,
    stop: &AtomicBool,
    stats: &WorkerStats,
) -> Result<()> {
    let frames = sock.frames as usize;
    let mut free: Vec<u64> = (0..sock.frames as u64)
        .map(|i| i * u64::from(FRAME_SIZE))
        .collect();
    let mut tx_queue: VecDeque<XdpDesc> = VecDeque::with_capacity(frames);
    refill(&mut sock, &mut free);
    let mut idle = 0u32;

    while !stop.load(Ordering::Relaxed) {
        // Chunks the kernel finished sending come back to us.
        {
            let mut done = sock.device.complete(BATCH * 4);
            while let Some(addr) = done.read() {
                free.push(chunk_base(addr));
            }
            done.release();
        }

        let mut received = 0u64;
        let mut replied = 0u64;
        {
            let mut rx = sock.rx.receive(BATCH);
            let mut descs = [XdpDesc {
                addr: 0,
                len: 0,
                options: 0,
            }; BATCH as usize];
            let mut n = 0;
            while let Some(d) = rx.read() {
                descs[n] = d;
                n += 1;
            }
            rx.release();
            drop(rx);
            for d in &descs[..n] {
                received += 1;
                replied += handle(&mut sock, engine, d, &mut free, &mut tx_queue);
            }
        }

        if !tx_queue.is_empty() {
            let mut w = sock.tx.transmit(tx_queue.len().min(frames) as u32);
            let room = w.capacity() as usize;
            let sent = w.insert(tx_queue.iter().take(room).copied()) as usize;
            w.commit();
            drop(w);
            tx_queue.drain(..sent);
        }
        if sock.tx.needs_wakeup() && (sock.tx.pending() > 0 || !tx_queue.is_empty()) {
            sock.tx.wake();
        }
        refill(&mut sock, &mut free);

        stats.received.fetch_add(received, Ordering::Relaxed);
        stats.replied.fetch_add(replied, Ordering::Relaxed);
        stats
            .ignored
            .fetch_add(received - replied.min(received), Ordering::Relaxed);

        if received == 0 && tx_queue.is_empty() && sock.tx.pending() == 0 {
            idle += 1;
            if idle >= SPINS_BEFORE_SLEEP {
                idle_wait(&sock, Duration::from_millis(100));
                idle = 0;
            } else {
                std::hint::spin_loop();
            }
        } else {
            idle = 0;
        }
    }
    Ok(())
}

/// Answer one received frame; returns the number of replies queued.
fn handle(
    sock: &mut XskSocket,
    engine: &Engine,
    d: &XdpDesc,
    free: &mut Vec<u64>,
    tx_queue: &mut VecDeque<XdpDesc>,
) -> u64 {
    let base = chunk_base(d.addr);
    // SAFETY: the kernel handed this chunk to us through the rx ring; it is ours until we
    // put it in the tx or fill ring, and no other slice of it exists.
    let buf = unsafe { sock.chunk_from(d.addr) };
    let len = (d.len as usize).min(buf.len());
    match engine.route(&buf[..len]) {
        Route::One(i) => match engine.handle(i, buf, len) {
            Verdict::Reply(n) => {
                tx_queue.push_back(XdpDesc {
                    addr: d.addr,
                    len: n as u32,
                    options: 0,
                });
                1
            }
            Verdict::Ignore(_) => {
                free.push(base);
                0
            }
        },
        Route::Each => {
            // A broadcast: each matching export answers from a spare chunk of its own.
            let mut request = [0u8; 64];
            let n = len.min(request.len());
            request[..n].copy_from_slice(&buf[..n]);
            free.push(base);
            let Ok(f) = Frame::new_checked(&request[..n]) else {
                return 0;
            };
            let (shelf, slot) = (f.shelf(), f.slot());
            let mut replies = 0;
            for (i, ex) in engine.exports().iter().enumerate() {
                if !ex.matches(shelf, slot) {
                    continue;
                }
                let Some(spare) = free.pop() else { break };
                // SAFETY: a free chunk is owned by us and not referenced elsewhere.
                let out = unsafe { sock.chunk_from(spare) };
                out[..n].copy_from_slice(&request[..n]);
                match engine.handle(i, out, n) {
                    Verdict::Reply(m) => {
                        tx_queue.push_back(XdpDesc {
                            addr: spare,
                            len: m as u32,
                            options: 0,
                        });
                        replies += 1;
                    }
                    Verdict::Ignore(_) => free.push(spare),
                }
            }
            replies
        }
        Route::Ignore(_) => {
            free.push(base);
            0
        }
    }
}

fn refill(sock: &mut XskSocket, free: &mut Vec<u64>) {
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
