//! `aoe-ctl export`: attach, open the image, start one worker per rx queue, announce, serve
//! until SIGINT/SIGTERM, then detach and leave nothing behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_common::maps::counter;
use aoe_common::wire::{sectors_per_frame, Mac, SECTOR_SIZE};

use super::backend::{Backend, MmapBackend, OpenOptions};
use super::chunks::Layout;
use super::engine::Engine;
use super::export::{Export, ExportOptions};
use super::worker::Worker;
use super::xdp::{entry_for, Classifier, ModeChoice};
use super::xsk::{XskConfig, FRAME_SIZE, MAX_FRAME, MAX_TX_CHAIN};
use crate::initiator::socket::RawSocket;
use crate::net::Interface;

/// Entries per AF_XDP ring.
pub const RING: u32 = 2048;
/// Default buffer count advertised to initiators: 16, as vblade. The Linux aoe driver (6.1)
/// keeps min(bufcnt, 64) frames in flight; with 64 against a fast target in a slow guest it
/// stalled in half of the interop runs (docs/interop.md), with 16 never.
pub const DEFAULT_BUFFERS: u16 = 16;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub iface: String,
    pub path: PathBuf,
    pub shelf: u16,
    pub slot: u8,
    pub read_only: bool,
    pub sync: bool,
    pub buffers: Option<u16>,
    pub allow: Vec<Mac>,
    pub offset: u64,
    pub length: Option<u64>,
    pub config: Vec<u8>,
    pub mode: ModeChoice,
    pub queues: Option<u32>,
}

pub fn export(o: &ServeOptions) -> Result<()> {
    let iface = Interface::lookup(&o.iface)?;
    // The longest frame on the wire (a VLAN tag included) and the longest chain we can send.
    let max_frame = iface.mtu + 18;
    let max_sectors =
        sectors_per_frame(iface.mtu).min((MAX_TX_CHAIN * FRAME_SIZE as usize - 36) / SECTOR_SIZE);
    if max_sectors == 0 {
        bail!(
            "MTU {} of {} cannot carry one 512-byte sector",
            iface.mtu,
            iface.name
        );
    }
    let buffers = o.buffers.unwrap_or(DEFAULT_BUFFERS);
    if buffers < 2 {
        bail!("--buffers must be at least 2 (the Linux initiator's window starts at half of it)");
    }
    let backend = MmapBackend::open(
        &o.path,
        &OpenOptions {
            read_only: o.read_only,
            offset: o.offset,
            length: o.length,
        },
    )?;
    let sectors = backend.sectors();
    let ex = Arc::new(Export::new(
        ExportOptions {
            shelf: o.shelf,
            slot: o.slot,
            read_only: o.read_only,
            sync: o.sync,
            buffers,
            allow: o.allow.clone(),
            config: o.config.clone(),
        },
        Box::new(backend),
    ));

    let classifier = Classifier::attach(&iface.name, o.mode, iface.mac, max_sectors)?;
    if let Some(why) = &classifier.fallback_reason {
        eprintln!(
            "native XDP unavailable on {} ({why}); using generic (skb) mode",
            iface.name
        );
    }
    let classifier = Arc::new(Mutex::new(classifier));
    classifier
        .lock()
        .unwrap()
        .set_exports(std::slice::from_ref(&ex))?;
    let observed = classifier.clone();
    let engine = Arc::new(
        Engine::new(vec![ex.clone()], iface.mac, max_sectors).with_observer(Box::new(move |ex| {
            if let Err(e) = observed.lock().unwrap().sync_export(ex) {
                log::error!("{}: kernel entry not updated: {e:#}", ex.name());
            }
        })),
    );

    // Signal handlers go in before the ready line, so a SIGTERM right after it still
    // detaches cleanly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _guard = rt.enter();
        Signals::new()?
    };

    let queues = o.queues.unwrap_or(iface.rx_queues).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for q in 0..queues {
        let cfg = XskConfig {
            ifname: iface.name.clone(),
            queue: q,
            ring: RING,
            layout: Layout::for_frames(RING, max_frame, MAX_FRAME),
        };
        match Worker::spawn(cfg, engine.clone(), classifier.clone(), stop.clone()) {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for w in workers {
                    let _ = w.join();
                }
                return Err(e).context(format!("starting the worker of queue {q}"));
            }
        }
    }
    let mode = classifier.lock().unwrap().mode;
    println!(
        "{} {} {} sectors on {}, xdp {}, {} queue{}",
        ex.name(),
        o.path.display(),
        sectors,
        iface.name,
        mode,
        queues,
        if queues == 1 { "" } else { "s" }
    );
    announce(&iface, &ex, max_sectors);

    rt.block_on(signals.wait(&classifier));

    stop.store(true, Ordering::Relaxed);
    let mut received = 0;
    let mut replied = 0;
    let mut socket_dropped = 0;
    for w in workers {
        let stats = w.stats.clone();
        w.join()?;
        received += stats.received.load(Ordering::Relaxed);
        replied += stats.replied.load(Ordering::Relaxed);
        socket_dropped += stats.socket_dropped.load(Ordering::Relaxed);
    }
    let counters = classifier.lock().unwrap().counters().unwrap_or_default();
    eprintln!(
        "{}: stopped; user space handled {received} frames ({replied} replies), \
         dropped {socket_dropped} in full sockets; kernel: {}",
        ex.name(),
        counter::NAMES
            .iter()
            .zip(counters)
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Dropping the classifier detaches the program; nothing was pinned.
    drop(engine);
    drop(classifier);
    Ok(())
}

/// SIGINT and SIGTERM, registered up front.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Call inside a tokio runtime context.
    pub fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Wait for either, flushing the XDP program's log meanwhile.
    async fn wait(mut self, classifier: &Mutex<Classifier>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = tick.tick() => classifier.lock().unwrap().flush_log(),
            }
        }
    }

    /// Wait for either.
    pub async fn wait_plain(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// The unsolicited config reply (tag 0) a target broadcasts when it comes up.
fn announce(iface: &Interface, ex: &Export, max_sectors: usize) {
    let entry = entry_for(ex, iface.mac, max_sectors);
    let mut frame = entry.reply[..entry.reply_len as usize].to_vec();
    frame[..6].copy_from_slice(&[0xff; 6]);
    match RawSocket::open(&iface.name).and_then(|s| s.send(&frame)) {
        Ok(()) => {}
        Err(e) => log::warn!("announcement not sent: {e:#}"),
    }
}
