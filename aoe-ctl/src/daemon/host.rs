//! One served interface: its kernel classifier (or none, on the AF_PACKET path), its queue
//! workers, the engine they share, and its pins. Exports come and go with `set_exports`
//! while the workers keep their sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use aoe_common::maps::counter;
use aoe_common::wire::{sectors_per_frame, SECTOR_SIZE};

use super::config::DataPath;
use crate::net::Interface;
use crate::packet::socket::RawSocket;
use crate::pinned::{self, ExportRecord, IfaceInfo, Pins};
use crate::serve::chunks::Layout;
use crate::serve::engine::{ControlWork, Engine};
use crate::serve::export::Export;
use crate::serve::live_engine::LiveEngine;
use crate::serve::packet_worker::PacketWorker;
use crate::serve::worker::{Worker, WorkerStats};
use crate::serve::xdp::{entry_for, Classifier, ModeChoice};
use crate::serve::xsk::{XskConfig, FRAME_SIZE, MAX_FRAME, MAX_TX_CHAIN};

/// Entries per AF_XDP ring.
pub const RING: u32 = 2048;

/// Takes a state-changing request that arrived on the named interface to the control plane
/// (false when it cannot; the frame is then dropped). Never blocks a worker.
pub type Observer = Arc<dyn Fn(ControlWork, &str) -> bool + Send + Sync>;

/// How to serve an interface.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    pub path: DataPath,
    pub xdp_mode: ModeChoice,
    pub queues: Option<u32>,
}

enum Workers {
    Xdp(Vec<Worker>),
    Packet(PacketWorker),
}

pub struct Host {
    pub iface: Interface,
    /// "xdp native", "xdp skb" or "afpacket".
    pub mode: String,
    pub queues: u32,
    /// The classifier's maps (attached on the XDP path; on the AF_PACKET path loaded for
    /// live control only, when the kernel allows).
    pub kernel: Option<Arc<Mutex<Classifier>>>,
    live: Arc<LiveEngine>,
    workers: Workers,
    stop: Arc<AtomicBool>,
    max_sectors: usize,
    observer: Observer,
    exports: Vec<Arc<Export>>,
    pins: Option<Pins>,
    started: u64,
}

fn engine(exports: &[Arc<Export>], iface: &Interface, max_sectors: usize, o: &Observer) -> Engine {
    let (o, name) = (o.clone(), iface.name.clone());
    Engine::new(exports.to_vec(), iface.mac, max_sectors)
        .with_control(Arc::new(move |work| o(work, &name)))
}

impl Host {
    pub fn start(
        name: &str,
        exports: Vec<Arc<Export>>,
        opts: &HostOptions,
        observer: Observer,
    ) -> Result<Host> {
        let iface = Interface::lookup(name)?;
        let max_sectors = sectors_per_frame(iface.mtu)
            .min((MAX_TX_CHAIN * FRAME_SIZE as usize - 36) / SECTOR_SIZE);
        if max_sectors == 0 {
            bail!(
                "MTU {} of {} cannot carry one 512-byte sector",
                iface.mtu,
                iface.name
            );
        }
        let live = Arc::new(LiveEngine::new(engine(
            &exports,
            &iface,
            max_sectors,
            &observer,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let queues = opts.queues.unwrap_or(iface.rx_queues).max(1);

        // Asking for a particular XDP attach mode is asking for XDP.
        let path = match (opts.path, opts.xdp_mode) {
            (DataPath::Auto, ModeChoice::Native | ModeChoice::Skb) => DataPath::Xdp,
            (p, _) => p,
        };
        let xdp = match path {
            DataPath::Afpacket => None,
            _ => match start_xdp(&iface, &exports, opts, queues, max_sectors, &live, &stop) {
                Ok(x) => Some(x),
                Err(e) if path == DataPath::Auto => {
                    eprintln!("{name}: XDP unavailable ({e:#}); serving through AF_PACKET");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let (kernel, workers, mode, queues) = match xdp {
            Some((classifier, workers)) => {
                let mode = format!("xdp {}", classifier.mode);
                if let Some(why) = &classifier.fallback_reason {
                    eprintln!("native XDP unavailable on {name} ({why}); using generic (skb) mode");
                }
                (
                    Some(Arc::new(Mutex::new(classifier))),
                    Workers::Xdp(workers),
                    mode,
                    queues,
                )
            }
            None => {
                stop.store(false, Ordering::Relaxed);
                // Loaded, not attached: its maps carry the access lists for live control.
                let kernel = match Classifier::load(iface.mac, max_sectors)
                    .and_then(|mut c| c.set_exports(&exports).map(|_| c))
                {
                    Ok(c) => Some(Arc::new(Mutex::new(c))),
                    Err(e) => {
                        log::warn!("{name}: no BPF maps ({e:#}); status, stats and acl cannot reach this interface");
                        None
                    }
                };
                let w = PacketWorker::spawn(name, live.clone(), stop.clone())
                    .with_context(|| format!("serving {name} through AF_PACKET"))?;
                (kernel, Workers::Packet(w), "afpacket".to_string(), 1)
            }
        };
        let mut host = Host {
            iface,
            mode,
            queues,
            kernel,
            live,
            workers,
            stop,
            max_sectors,
            observer,
            exports,
            pins: None,
            started: pinned::unix_now(),
        };
        if let Some(k) = &host.kernel {
            match Pins::create(name, |dir| k.lock().unwrap().pin(dir)) {
                Ok(p) => host.pins = Some(p),
                Err(e) => {
                    host.stop();
                    return Err(e);
                }
            }
        }
        host.publish();
        for ex in &host.exports {
            host.ready(ex);
        }
        Ok(host)
    }

    fn ready(&self, ex: &Export) {
        println!(
            "{} {} {} sectors on {}, {}, {} queue{}",
            ex.name(),
            ex.path.display(),
            ex.backend.sectors(),
            self.iface.name,
            self.mode,
            self.queues,
            if self.queues == 1 { "" } else { "s" }
        );
        announce(&self.iface, ex, self.max_sectors);
    }

    pub fn exports(&self) -> &[Arc<Export>] {
        &self.exports
    }

    /// Serve exactly `exports` from now on: the kernel learns them first, then the workers
    /// switch engines between two batches.
    pub fn set_exports(&mut self, exports: Vec<Arc<Export>>) -> Result<()> {
        if let Some(k) = &self.kernel {
            k.lock().unwrap().set_exports(&exports)?;
        }
        self.live.replace(engine(
            &exports,
            &self.iface,
            self.max_sectors,
            &self.observer,
        ));
        for gone in self
            .exports
            .iter()
            .filter(|o| !exports.iter().any(|e| Arc::ptr_eq(o, e)))
        {
            eprintln!("{}: stopped on {}", gone.name(), self.iface.name);
        }
        let new: Vec<Arc<Export>> = exports
            .iter()
            .filter(|e| !self.exports.iter().any(|o| Arc::ptr_eq(o, e)))
            .cloned()
            .collect();
        self.exports = exports;
        for ex in &new {
            self.ready(ex);
        }
        self.publish();
        Ok(())
    }

    fn worker_stats(&self) -> Vec<Arc<WorkerStats>> {
        match &self.workers {
            Workers::Xdp(w) => w.iter().map(|w| w.stats.clone()).collect(),
            Workers::Packet(p) => vec![p.stats.clone()],
        }
    }

    /// Refresh `info` and `exports` in the pins.
    pub fn publish(&mut self) {
        if self.pins.is_none() {
            return;
        }
        let (handled, replied, dropped) = totals(&self.worker_stats());
        let Some(pins) = &mut self.pins else { return };
        let mut info = IfaceInfo {
            pid: std::process::id(),
            queues: self.queues,
            mtu: self.iface.mtu as u32,
            _pad: 0,
            started: self.started,
            handled,
            replied,
            socket_dropped: dropped,
            mode: [0; 16],
        };
        pinned::fill(&mut info.mode, self.mode.as_bytes());
        let rows = self
            .kernel
            .as_ref()
            .map(|k| k.lock().unwrap().rows())
            .unwrap_or_default();
        let records: Vec<ExportRecord> = self
            .exports
            .iter()
            .map(|ex| {
                let mut r = ExportRecord {
                    shelf: ex.shelf,
                    slot: ex.slot,
                    _pad: 0,
                    flags: ex.flags(),
                    buffers: u32::from(ex.buffers),
                    row: rows.get(&ex.key()).copied().unwrap_or(u32::MAX),
                    offset: ex.offset,
                    sectors: ex.backend.sectors(),
                    started: ex.started,
                    stats: ex.stats.snapshot(),
                    path: [0; 256],
                };
                pinned::fill(&mut r.path, ex.path.as_os_str().as_encoded_bytes());
                r
            })
            .collect();
        if let Err(e) = pins.publish(info, &records) {
            log::warn!("{}: pinned state not refreshed: {e:#}", self.iface.name);
        }
    }

    /// Stop the workers, detach, unpin; the exit line says what was served.
    pub fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let stats = self.worker_stats();
        let joined = match self.workers {
            Workers::Xdp(ws) => ws
                .into_iter()
                .map(|w| w.join())
                .collect::<Result<Vec<_>>>()
                .map(|_| ()),
            Workers::Packet(p) => p.join(),
        };
        if let Err(e) = joined {
            log::error!("{}: {e:#}", self.iface.name);
        }
        let (received, replied, dropped) = totals(&stats);
        let kernel = if self.mode.starts_with("xdp") {
            let counters = self
                .kernel
                .as_ref()
                .and_then(|k| k.lock().unwrap().counters().ok())
                .unwrap_or_default();
            counter::NAMES
                .iter()
                .zip(counters)
                .map(|(n, v)| format!("{n} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "not used (afpacket)".to_string()
        };
        let names: Vec<String> = self.exports.iter().map(|e| e.name()).collect();
        // Pins go first, then the classifier (its drop detaches the program).
        drop(self.pins);
        drop(self.live);
        drop(self.kernel);
        format!(
            "{}: stopped; user space handled {received} frames ({replied} replies), \
             dropped {dropped} in full sockets; kernel: {kernel}",
            names.join(",")
        )
    }
}

/// Frames handled, replies sent and frames dropped at the sockets, over all workers.
fn totals(stats: &[Arc<WorkerStats>]) -> (u64, u64, u64) {
    stats.iter().fold((0, 0, 0), |(h, r, d), s| {
        (
            h + s.received.load(Ordering::Relaxed),
            r + s.replied.load(Ordering::Relaxed),
            d + s.socket_dropped.load(Ordering::Relaxed),
        )
    })
}

/// Attach the classifier and start one AF_XDP worker per queue.
fn start_xdp(
    iface: &Interface,
    exports: &[Arc<Export>],
    opts: &HostOptions,
    queues: u32,
    max_sectors: usize,
    live: &Arc<LiveEngine>,
    stop: &Arc<AtomicBool>,
) -> Result<(Classifier, Vec<Worker>)> {
    let mut classifier = Classifier::attach(&iface.name, opts.xdp_mode, iface.mac, max_sectors)?;
    classifier.set_exports(exports)?;
    let shared = Arc::new(Mutex::new(classifier));
    let mut workers = Vec::new();
    for q in 0..queues {
        let cfg = XskConfig {
            ifname: iface.name.clone(),
            queue: q,
            ring: RING,
            layout: Layout::for_frames(RING, iface.mtu + 18, MAX_FRAME),
        };
        match Worker::spawn(cfg, live.clone(), shared.clone(), stop.clone()) {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for w in workers {
                    let _ = w.join();
                }
                return Err(e).context(format!("starting the AF_XDP worker of queue {q}"));
            }
        }
    }
    // The workers registered their sockets; they keep no reference to the classifier.
    let classifier = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("classifier still shared"))?
        .into_inner()
        .unwrap();
    Ok((classifier, workers))
}

/// The unsolicited config reply (tag 0) a target broadcasts when it comes up.
fn announce(iface: &Interface, ex: &Export, max_sectors: usize) {
    let entry = entry_for(ex, iface.mac, max_sectors, 0);
    let mut frame = entry.reply[..entry.reply_len as usize].to_vec();
    frame[..6].copy_from_slice(&[0xff; 6]);
    if let Err(e) = RawSocket::open(&iface.name).and_then(|s| s.send(&frame)) {
        log::warn!("announcement not sent: {e:#}");
    }
}
