//! One served interface: its kernel classifier (or none, on the AF_PACKET path), its queue
//! workers, the engine they share, and its pins. Exports come and go with `set_exports`
//! while the workers keep their sockets; the data path changes with `begin`, then `commit`
//! or `rollback`, so that a reload of several interfaces can be undone as a whole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use aoe_common::maps::counter;
use aoe_common::wire::{sectors_per_frame, SECTOR_SIZE};

use super::config::DataPath;
use super::queue_spread::Spread;
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

/// How long replaced workers keep running after a data path switch, to answer the frames
/// that reached them before it.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Takes a state-changing request that arrived on the named interface to the control plane
/// (false when it cannot; the frame is then dropped). Never blocks a worker.
pub type Handoff = Arc<dyn Fn(ControlWork, &str) -> bool + Send + Sync>;

/// How to serve an interface.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    pub path: DataPath,
    pub xdp_mode: ModeChoice,
    pub queues: Option<u32>,
}

/// One AF_XDP worker with a stop flag of its own, so that a queue can retire alone.
struct Queue {
    worker: Worker,
    stop: Arc<AtomicBool>,
}

/// The AF_PACKET worker and its stop flag.
struct Packet {
    worker: PacketWorker,
    stop: Arc<AtomicBool>,
}

enum Workers {
    Xdp(Vec<Queue>),
    Packet(Packet),
}

impl Workers {
    fn stats(&self) -> Vec<Arc<WorkerStats>> {
        match self {
            Workers::Xdp(w) => w.iter().map(|q| q.worker.stats.clone()).collect(),
            Workers::Packet(p) => vec![p.worker.stats.clone()],
        }
    }

    fn stop(self) -> Result<()> {
        match self {
            Workers::Xdp(qs) => stop_queues(qs),
            Workers::Packet(p) => {
                p.stop.store(true, Ordering::Relaxed);
                p.worker.join()
            }
        }
    }
}

/// Stop the workers of `qs` (all flags first, so they wind down together) and join them.
fn stop_queues(qs: Vec<Queue>) -> Result<()> {
    for q in &qs {
        q.stop.store(true, Ordering::Relaxed);
    }
    qs.into_iter()
        .map(|q| q.worker.join())
        .collect::<Result<Vec<_>>>()
        .map(|_| ())
}

pub struct Host {
    pub iface: Interface,
    /// The classifier's maps (attached on the XDP path; on the AF_PACKET path loaded but not
    /// attached, when the kernel allows, for the pins of `status` and `stats` and for a
    /// later switch to XDP). The same one for the host's life: a
    /// data path change attaches, detaches or re-attaches it, so its export table, access
    /// lists, counters and pins carry over.
    pub kernel: Option<Arc<Mutex<Classifier>>>,
    live: Arc<LiveEngine>,
    workers: Workers,
    max_sectors: usize,
    handoff: Handoff,
    exports: Vec<Arc<Export>>,
    pins: Option<Pins>,
    started: u64,
    /// Times this interface was removed while served (`daemon::links`), for the pins.
    pub removed: u32,
    /// Whether the AoE frames reach every receive queue (said once when they do not).
    spread: Spread,
}

/// A data path change under way (`Host::begin`): the new part is up and serving, the old
/// one still runs where it can. `Host::commit` retires the old part, `Host::rollback` the
/// new, leaving the interface exactly as it served before.
#[must_use]
pub struct Change {
    /// The workers that served before, running until the commit.
    replaced: Option<Workers>,
    /// Queues beyond the new count, running until the commit.
    retired: Vec<Queue>,
    /// Queues started for the change: the last ones of the list.
    added: usize,
    /// The attach mode before, when the change switched it (native <-> skb).
    reattach: Option<ModeChoice>,
    /// The program comes off at the commit (to AF_PACKET: XDP serves until then).
    detach: bool,
    /// The data path before, for the log line.
    was: String,
}

impl Change {
    fn none(was: String) -> Change {
        Change {
            replaced: None,
            retired: vec![],
            added: 0,
            reattach: None,
            detach: false,
            was,
        }
    }

    fn is_none(&self) -> bool {
        self.replaced.is_none()
            && self.retired.is_empty()
            && self.added == 0
            && self.reattach.is_none()
            && !self.detach
    }
}

fn engine(exports: &[Arc<Export>], iface: &Interface, max_sectors: usize, o: &Handoff) -> Engine {
    let (o, name) = (o.clone(), iface.name.clone());
    Engine::new(exports.to_vec(), iface.mac, max_sectors)
        .with_control(Arc::new(move |work| o(work, &name)))
}

/// The data path `opts` ask for: asking for a particular XDP attach mode is asking for XDP.
fn wanted(opts: &HostOptions) -> DataPath {
    match (opts.path, opts.xdp_mode) {
        (DataPath::Auto, ModeChoice::Native | ModeChoice::Skb) => DataPath::Xdp,
        (p, _) => p,
    }
}

impl Host {
    pub fn start(
        name: &str,
        exports: Vec<Arc<Export>>,
        opts: &HostOptions,
        handoff: Handoff,
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
            &handoff,
        )));
        let queues = opts.queues.unwrap_or(iface.rx_queues).max(1);
        let path = wanted(opts);
        let xdp = match path {
            DataPath::Afpacket => None,
            _ => match start_xdp(&iface, &exports, opts.xdp_mode, queues, max_sectors, &live) {
                Ok(x) => Some(x),
                Err(e) if path == DataPath::Auto => {
                    eprintln!("{name}: XDP unavailable ({e:#}); serving through AF_PACKET");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let (kernel, workers) = match xdp {
            Some((kernel, queues)) => {
                if let Some(why) = &kernel.lock().unwrap().fallback_reason {
                    eprintln!("native XDP unavailable on {name} ({why}); using generic (skb) mode");
                }
                (Some(kernel), Workers::Xdp(queues))
            }
            None => {
                // Loaded, not attached: its maps give `status` and `stats` their pins, and a
                // later switch to XDP a filled export table. The engine enforces the lists.
                let kernel = match Classifier::load(iface.mac, max_sectors)
                    .and_then(|mut c| c.set_exports(&exports).map(|_| c))
                {
                    Ok(c) => Some(Arc::new(Mutex::new(c))),
                    Err(e) => {
                        log::warn!("{name}: no BPF maps ({e:#}); status, stats and acl cannot reach this interface");
                        None
                    }
                };
                (kernel, Workers::Packet(spawn_packet(name, &live)?))
            }
        };
        let mut host = Host {
            iface,
            kernel,
            live,
            workers,
            max_sectors,
            handoff,
            exports,
            pins: None,
            started: pinned::unix_now(),
            removed: 0,
            spread: Spread::default(),
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
        announce(&host.iface, &host.exports, host.max_sectors);
        Ok(host)
    }

    /// "xdp native", "xdp skb" or "afpacket".
    pub fn mode(&self) -> String {
        match (&self.workers, &self.kernel) {
            (Workers::Xdp(_), Some(k)) => format!("xdp {}", k.lock().unwrap().mode),
            (Workers::Xdp(_), None) => "xdp".to_string(),
            (Workers::Packet(_), _) => "afpacket".to_string(),
        }
    }

    pub fn queues(&self) -> u32 {
        match &self.workers {
            Workers::Xdp(qs) => qs.len() as u32,
            Workers::Packet(_) => 1,
        }
    }

    /// "xdp native, 2 queues".
    pub fn describe(&self) -> String {
        let q = self.queues();
        format!(
            "{}, {q} queue{}",
            self.mode(),
            if q == 1 { "" } else { "s" }
        )
    }

    /// Bring up the data path `opts` ask for next to the running one, as far as the kernel
    /// allows: more queues start beside the old ones (fewer keep running until the commit);
    /// to AF_PACKET, the packet socket opens while XDP still serves (it sees nothing the
    /// program redirects); to XDP, the program attaches and the sockets bind while the
    /// AF_PACKET worker still serves (it gets what they do not take). Only native <-> skb
    /// has a gap (one program per interface): detach, attach in the other mode, and on a
    /// failure attach in the old mode again. An error leaves the host as it was.
    pub fn begin(&mut self, opts: &HostOptions) -> Result<Change> {
        let mut change = Change::none(self.describe());
        let name = self.iface.name.clone();
        let path = wanted(opts);
        let queues = opts.queues.unwrap_or(self.iface.rx_queues).max(1);
        match (&self.workers, path) {
            (Workers::Packet(_), DataPath::Afpacket) => {}
            (Workers::Xdp(_), DataPath::Afpacket) => {
                let p = spawn_packet(&name, &self.live)?;
                change.replaced = Some(std::mem::replace(&mut self.workers, Workers::Packet(p)));
                change.detach = true;
            }
            (Workers::Packet(_), _) => match self.attach_and_bind(opts.xdp_mode, queues) {
                Ok(qs) => {
                    change.replaced = Some(std::mem::replace(&mut self.workers, Workers::Xdp(qs)));
                }
                Err(e) if path == DataPath::Auto => {
                    eprintln!("{name}: XDP unavailable ({e:#}); staying on AF_PACKET");
                }
                Err(e) => return Err(e),
            },
            (Workers::Xdp(_), _) => self.reshape(opts.xdp_mode, queues, &mut change)?,
        }
        Ok(change)
    }

    /// From AF_PACKET: attach the classifier and bind the queues' sockets.
    fn attach_and_bind(&mut self, choice: ModeChoice, queues: u32) -> Result<Vec<Queue>> {
        let Some(k) = self.kernel.clone() else {
            bail!(
                "no BPF maps on {} (the classifier could not be loaded)",
                self.iface.name
            );
        };
        k.lock().unwrap().attach_to(&self.iface.name, choice)?;
        match spawn_queues(&self.iface, 0..queues, &self.live, &k) {
            Ok(qs) => Ok(qs),
            Err(e) => {
                if let Err(d) = k.lock().unwrap().detach() {
                    log::error!("{}: {d:#}", self.iface.name);
                }
                Err(e)
            }
        }
    }

    /// On XDP: switch the attach mode if asked, then add or retire queues.
    fn reshape(&mut self, choice: ModeChoice, queues: u32, change: &mut Change) -> Result<()> {
        let Some(k) = self.kernel.clone() else {
            bail!("{}: the XDP path has no classifier", self.iface.name);
        };
        let name = self.iface.name.clone();
        let now = k.lock().unwrap().attached();
        // `auto` takes the program as it is attached.
        if choice != ModeChoice::Auto && now != Some(choice) {
            switch(&k, &name, choice, now)?;
            change.reattach = now;
        }
        let Workers::Xdp(qs) = &mut self.workers else {
            unreachable!("reshape is for the XDP path")
        };
        let n = qs.len() as u32;
        if queues > n {
            match spawn_queues(&self.iface, n..queues, &self.live, &k) {
                Ok(more) => {
                    change.added = more.len();
                    qs.extend(more);
                }
                Err(e) => {
                    if let Some(m) = change.reattach.take() {
                        if let Err(r) = switch(&k, &name, m, None) {
                            log::error!("{name}: {r:#}");
                        }
                    }
                    return Err(e);
                }
            }
        } else {
            change.retired = qs.split_off(queues as usize);
        }
        Ok(())
    }

    /// Retire what `begin` replaced: the old workers stop, and on the way to AF_PACKET the
    /// program comes off.
    pub fn commit(&mut self, c: Change) {
        if c.is_none() {
            return;
        }
        let name = self.iface.name.clone();
        if c.detach {
            if let Some(k) = &self.kernel {
                if let Err(e) = k.lock().unwrap().detach() {
                    log::error!("{name}: {e:#}");
                }
            }
        }
        if let Some(old) = c.replaced {
            // Let the old workers answer what reached them before the switch.
            std::thread::sleep(SETTLE);
            if let Err(e) = old.stop() {
                log::error!("{name}: {e:#}");
            }
        }
        if let Err(e) = stop_queues(c.retired) {
            log::error!("{name}: {e:#}");
        }
        eprintln!("{name}: {} -> {}", c.was, self.describe());
        self.publish();
    }

    /// Undo what `begin` did: the new part stops and the old serves alone again.
    pub fn rollback(&mut self, c: Change) {
        let name = self.iface.name.clone();
        let report = |r: Result<()>| {
            if let Err(e) = r {
                log::error!("{name}: {e:#}");
            }
        };
        if let Workers::Xdp(qs) = &mut self.workers {
            let keep = qs.len() - c.added;
            report(stop_queues(qs.split_off(keep)));
        }
        if let Some(old) = c.replaced {
            let new = std::mem::replace(&mut self.workers, old);
            if matches!(new, Workers::Xdp(_)) {
                // Back to AF_PACKET: what the program took goes to the packet socket again.
                if let Some(k) = &self.kernel {
                    report(k.lock().unwrap().detach());
                }
            }
            report(new.stop());
        }
        if let (Some(m), Some(k)) = (c.reattach, &self.kernel) {
            report(switch(k, &name, m, None));
        }
        if let Workers::Xdp(qs) = &mut self.workers {
            qs.extend(c.retired);
        }
    }

    fn ready(&self, ex: &Export) {
        println!(
            "{} {} {} sectors on {}, {}, {} queue{}",
            ex.name(),
            ex.path.display(),
            ex.backend.sectors(),
            self.iface.name,
            self.mode(),
            self.queues(),
            if self.queues() == 1 { "" } else { "s" }
        );
    }

    /// Announce every export again (the link's carrier came back).
    pub fn announce_all(&self) {
        announce(&self.iface, &self.exports, self.max_sectors);
    }

    /// Announce those of `exports` served here again (their size changed), so initiators
    /// that do not have the device open identify it anew.
    pub fn announce_some(&self, exports: &[Arc<Export>]) {
        let here: Vec<Arc<Export>> = exports
            .iter()
            .filter(|e| self.exports.iter().any(|o| Arc::ptr_eq(o, e)))
            .cloned()
            .collect();
        announce(&self.iface, &here, self.max_sectors);
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
            &self.handoff,
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
        announce(&self.iface, &new, self.max_sectors);
        self.publish();
        Ok(())
    }

    /// Refresh `info` and `exports` in the pins.
    pub fn publish(&mut self) {
        let frames = self.queue_frames();
        if let Some(line) = self.spread.observe(&self.iface.name, &frames) {
            log::warn!("{line}");
        }
        if self.pins.is_none() {
            return;
        }
        let (handled, replied, dropped) = totals(&self.workers.stats());
        let (mode, queues) = (self.mode(), self.queues());
        let Some(pins) = &mut self.pins else { return };
        let mut info = IfaceInfo {
            pid: std::process::id(),
            queues,
            mtu: self.iface.mtu as u32,
            removed: self.removed,
            started: self.started,
            handled,
            replied,
            socket_dropped: dropped,
            mode: [0; 16],
        };
        pinned::fill(&mut info.mode, mode.as_bytes());
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
                    sectors: ex.sectors(),
                    store_sectors: ex.store_sectors(),
                    started: ex.started,
                    stats: ex.stats.snapshot(),
                    cache_bytes: ex.cache.own.as_ref().map_or(0, |c| c.bytes()),
                    cache: ex.cache.own.as_ref().map_or([0; 3], |c| c.stats.snapshot()),
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

    /// Frames each queue's worker has taken from its socket (one for the AF_PACKET path).
    pub fn queue_frames(&self) -> Vec<u64> {
        self.workers
            .stats()
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .collect()
    }

    /// Frames the workers handled, replies they sent, frames dropped at their sockets.
    pub fn worker_totals(&self) -> (u64, u64, u64) {
        totals(&self.workers.stats())
    }

    /// Stop the workers, detach, unpin; the exit line says what was served.
    pub fn stop(self) -> String {
        let stats = self.workers.stats();
        let xdp = matches!(self.workers, Workers::Xdp(_));
        if let Err(e) = self.workers.stop() {
            log::error!("{}: {e:#}", self.iface.name);
        }
        let (received, replied, dropped) = totals(&stats);
        let kernel = if xdp {
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
    choice: ModeChoice,
    queues: u32,
    max_sectors: usize,
    live: &Arc<LiveEngine>,
) -> Result<(Arc<Mutex<Classifier>>, Vec<Queue>)> {
    let mut classifier = Classifier::attach(&iface.name, choice, iface.mac, max_sectors)?;
    classifier.set_exports(exports)?;
    let kernel = Arc::new(Mutex::new(classifier));
    let queues = spawn_queues(iface, 0..queues, live, &kernel)?;
    Ok((kernel, queues))
}

/// One AF_XDP worker for each queue of `range`, its socket registered with the classifier;
/// on an error the ones started stop again.
fn spawn_queues(
    iface: &Interface,
    range: std::ops::Range<u32>,
    live: &Arc<LiveEngine>,
    kernel: &Arc<Mutex<Classifier>>,
) -> Result<Vec<Queue>> {
    let mut started = Vec::new();
    for q in range {
        let cfg = XskConfig {
            ifname: iface.name.clone(),
            queue: q,
            ring: RING,
            layout: Layout::for_frames(RING, iface.mtu + 18, MAX_FRAME),
        };
        let stop = Arc::new(AtomicBool::new(false));
        match Worker::spawn(cfg, live.clone(), kernel.clone(), stop.clone()) {
            Ok(worker) => started.push(Queue { worker, stop }),
            Err(e) => {
                let _ = stop_queues(started);
                return Err(e).context(format!("starting the AF_XDP worker of queue {q}"));
            }
        }
    }
    Ok(started)
}

fn spawn_packet(name: &str, live: &Arc<LiveEngine>) -> Result<Packet> {
    let stop = Arc::new(AtomicBool::new(false));
    let worker = PacketWorker::spawn(name, live.clone(), stop.clone())
        .with_context(|| format!("serving {name} through AF_PACKET"))?;
    Ok(Packet { worker, stop })
}

/// Detach and attach in mode `to`; when that fails, attach in mode `back` again (if any),
/// so the interface keeps its classifier.
fn switch(
    k: &Mutex<Classifier>,
    name: &str,
    to: ModeChoice,
    back: Option<ModeChoice>,
) -> Result<()> {
    let mut c = k.lock().unwrap();
    c.detach()?;
    let Err(e) = c.attach_to(name, to) else {
        return Ok(());
    };
    match back.map(|b| c.attach_to(name, b)) {
        Some(Err(again)) => Err(e.context(format!("and attaching it again failed: {again:#}"))),
        _ => Err(e),
    }
}

/// The unsolicited config reply (tag 0) a target broadcasts for each export when it comes
/// up. One socket for all of them: a socket per export cost 25 ms each in close
/// (synchronize_rcu), 100 s for 4,096 exports.
fn announce(iface: &Interface, exports: &[Arc<Export>], max_sectors: usize) {
    if exports.is_empty() {
        return;
    }
    let sock = match RawSocket::open_sender(&iface.name) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("announcements not sent on {}: {e:#}", iface.name);
            return;
        }
    };
    for ex in exports {
        let entry = entry_for(ex, iface.mac, max_sectors, 0);
        let mut frame = entry.reply[..entry.reply_len as usize].to_vec();
        frame[..6].copy_from_slice(&[0xff; 6]);
        if let Err(e) = sock.send(&frame) {
            log::warn!("{}: announcement not sent: {e:#}", ex.name());
        }
    }
}
