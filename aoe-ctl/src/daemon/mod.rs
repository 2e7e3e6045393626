//! The target as a service: every export of a config, each on its interfaces (one classifier
//! and one set of queue workers per interface, shared by the exports there). SIGHUP applies
//! the file again: added exports start, removed ones stop, changed ones restart, and the
//! others keep serving without missing a request. `aoe-ctl export` is the same thing with a
//! config of one export and nothing to reload.

pub mod config;
pub mod control;
pub mod host;
pub mod links;
pub mod metrics;
pub mod metrics_http;
pub mod netlink;
pub mod notify;
pub mod owner;
pub mod queue_spread;
pub mod resize;
pub mod snapshot;
pub mod spec;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use aoe_common::maps::ExportKey;

use crate::serve::access::Lists;
use crate::serve::backend::{self, OpenOptions};
use crate::serve::export::{ControlState, Export, ExportOptions};
use crate::serve::kernel_cache::CacheLink;
use crate::serve::xdp::Classifier;
use config::{ExportSpec, NodeConfig};
use control::ControlSocket;
use host::{Handoff, Host, HostOptions};
use metrics_http::MetricsServer;
use owner::{Owner, Work};
use state::StateFile;

/// The classifiers of the interfaces an export is served on.
type Kernels = Vec<Arc<std::sync::Mutex<Classifier>>>;

/// Where each export is served, for the owner thread.
#[derive(Default)]
pub struct Placements {
    by_key: HashMap<ExportKey, (Arc<Export>, Kernels)>,
}

/// What the owner thread needs: where each export is (written by the owner alone, in
/// order with the edits), and the state file.
pub(crate) struct Shared {
    placements: RwLock<Placements>,
    state: Option<StateFile>,
}

/// What a reload has brought up and not yet committed.
#[derive(Default)]
struct Pending {
    started: BTreeMap<String, Host>,
    changes: Vec<(String, host::Change)>,
    /// Running interfaces whose export list changed, with the list before.
    lists: Vec<(String, Vec<Arc<Export>>)>,
}

pub struct Node {
    config: NodeConfig,
    hosts: BTreeMap<String, Host>,
    exports: BTreeMap<ExportKey, (ExportSpec, Arc<Export>)>,
    shared: Arc<Shared>,
    handoff: Handoff,
    owner: Owner,
    links: links::Links,
}

impl Node {
    pub fn new(state: Option<StateFile>) -> Result<Node> {
        let shared = Arc::new(Shared {
            placements: RwLock::new(Placements::default()),
            state,
        });
        let owner = Owner::spawn(shared.clone())?;
        let initiators = owner.initiators();
        Ok(Node {
            config: NodeConfig {
                mode: config::DataPath::Auto,
                xdp_mode: crate::serve::xdp::ModeChoice::Auto,
                queues: None,
                metrics: None,
                exports: vec![],
            },
            hosts: BTreeMap::new(),
            exports: BTreeMap::new(),
            shared,
            handoff: Arc::new(move |work, iface| initiators.offer(work, iface)),
            owner,
            links: links::Links::default(),
        })
    }

    /// Where the control socket hands operators' requests.
    pub fn owner(&self) -> std::sync::mpsc::SyncSender<Work> {
        self.owner.sender()
    }

    fn open_export(&self, spec: &ExportSpec) -> Result<Arc<Export>> {
        // A snapshot's overlay a crash left holds acknowledged writes: into the image first.
        if let Some(n) = crate::serve::backend::recover(&spec.path, spec.offset, spec.length)
            .with_context(|| spec.name())?
        {
            log::warn!(
                "{}: replayed {n} writes from the overlay of a snapshot that did not finish",
                spec.name()
            );
        }
        let backend = backend::open(
            &spec.path,
            &OpenOptions {
                read_only: spec.read_only,
                offset: spec.offset,
                length: spec.length,
                direct: spec.direct,
                write_back: spec.write_back,
            },
        )
        .with_context(|| spec.name())?;
        if spec.write_back && !spec.read_only {
            log::warn!(
                "{}: write-back: writes are acknowledged from the page cache, and a power loss \
                 of this node loses writes the initiator already treats as stable",
                spec.name()
            );
        }
        let configured = ControlState {
            config: spec.config.clone(),
            lists: Lists {
                masks: spec.allow.clone(),
                reserve: vec![],
            },
        };
        let state = match &self.shared.state {
            Some(s) => s.kept(&spec.name()).over(configured),
            None => configured,
        };
        let cache = CacheLink::open(&spec.path, spec.offset, spec.kernel_cache)
            .with_context(|| spec.name())?;
        let mut ex = Export::new(
            ExportOptions {
                shelf: spec.shelf,
                slot: spec.slot,
                path: spec.path.clone(),
                offset: spec.offset,
                direct: spec.direct,
                read_only: spec.read_only,
                write_back: spec.write_back,
                buffers: spec.buffers,
                allow: state.lists.masks.clone(),
                config: state.config.clone(),
            },
            backend,
        );
        ex.cache = cache;
        let ex = Arc::new(ex);
        // The kept reservation too, before the export serves a frame.
        ex.restore_control_state(state);
        Ok(ex)
    }

    /// Serve exactly what `new` says. On an error everything serves exactly as before: the
    /// new part of each interface comes up next to the old one, and only when every
    /// interface has its new part do the old parts retire.
    pub fn apply(&mut self, new: NodeConfig) -> Result<()> {
        let host_opts_changed = new.mode != self.config.mode
            || new.xdp_mode != self.config.xdp_mode
            || new.queues != self.config.queues;
        // Open what is new or changed first: a bad path must not stop anything.
        let mut next: BTreeMap<ExportKey, (ExportSpec, Arc<Export>)> = BTreeMap::new();
        let (mut added, mut restarted) = (vec![], vec![]);
        for spec in &new.exports {
            let key = spec.key();
            match self.exports.get(&key) {
                Some((old, ex)) if old == spec => {
                    next.insert(key, (spec.clone(), ex.clone()));
                }
                Some(_) => {
                    next.insert(key, (spec.clone(), self.open_export(spec)?));
                    restarted.push(spec.name());
                }
                None => {
                    next.insert(key, (spec.clone(), self.open_export(spec)?));
                    added.push(spec.name());
                }
            }
        }
        let removed: Vec<String> = self
            .exports
            .values()
            .filter(|(s, _)| !next.contains_key(&s.key()))
            .map(|(s, _)| s.name())
            .collect();

        let mut per_iface: BTreeMap<String, Vec<Arc<Export>>> = BTreeMap::new();
        for (spec, ex) in next.values() {
            for i in &spec.interfaces {
                per_iface.entry(i.clone()).or_default().push(ex.clone());
            }
        }
        if let Some((name, list)) = per_iface
            .iter()
            .find(|(_, l)| l.len() > aoe_common::maps::MAX_EXPORTS as usize)
        {
            anyhow::bail!(
                "{name}: {} exports, one interface holds at most {}",
                list.len(),
                aoe_common::maps::MAX_EXPORTS
            );
        }
        let opts = HostOptions {
            path: new.mode,
            xdp_mode: new.xdp_mode,
            queues: new.queues,
        };
        let mut pending = Pending::default();
        if let Err(e) = self.prepare(&per_iface, &opts, host_opts_changed, &mut pending) {
            self.undo(pending);
            return Err(e);
        }
        // Every interface has its new part: retire the old ones.
        for (name, change) in pending.changes {
            if let Some(h) = self.hosts.get_mut(&name) {
                h.commit(change);
            }
        }
        let gone: Vec<String> = self
            .hosts
            .keys()
            .filter(|n| !per_iface.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(h) = self.hosts.remove(&name) {
                eprintln!("{}", h.stop());
            }
        }
        self.hosts.extend(pending.started);
        self.exports = next;
        self.config = new;
        self.place();
        if !(added.is_empty() && removed.is_empty() && restarted.is_empty()) {
            log::info!(
                "exports: added [{}], removed [{}], restarted [{}]",
                added.join(" "),
                removed.join(" "),
                restarted.join(" ")
            );
        }
        Ok(())
    }

    /// Bring up the new part of every interface, recording in `p` what `undo` must take
    /// back: new interfaces start, changed data paths begin, export lists switch.
    fn prepare(
        &mut self,
        per_iface: &BTreeMap<String, Vec<Arc<Export>>>,
        opts: &HostOptions,
        host_opts_changed: bool,
        p: &mut Pending,
    ) -> Result<()> {
        for (name, list) in per_iface {
            match self.hosts.get_mut(name) {
                // Removed for now: served again when it returns (`links`).
                None if self.links.is_lost(name) => {}
                None => {
                    let h = Host::start(name, list.clone(), opts, self.handoff.clone())
                        .with_context(|| format!("starting {name}"))?;
                    p.started.insert(name.clone(), h);
                }
                Some(h) if host_opts_changed => {
                    let c = h
                        .begin(opts)
                        .with_context(|| format!("changing the data path of {name}"))?;
                    p.changes.push((name.clone(), c));
                }
                Some(_) => {}
            }
        }
        for (name, host) in self.hosts.iter_mut() {
            let Some(list) = per_iface.get(name) else {
                continue;
            };
            let same = list.len() == host.exports().len()
                && list
                    .iter()
                    .zip(host.exports())
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            if !same {
                let before = host.exports().to_vec();
                host.set_exports(list.clone())
                    .with_context(|| format!("updating {name}"))?;
                p.lists.push((name.clone(), before));
            }
        }
        Ok(())
    }

    /// Take back what `prepare` did, newest first.
    fn undo(&mut self, p: Pending) {
        for (name, before) in p.lists.into_iter().rev() {
            if let Some(h) = self.hosts.get_mut(&name) {
                if let Err(e) = h.set_exports(before) {
                    log::error!("{name}: exports not restored: {e:#}");
                }
            }
        }
        for (name, change) in p.changes.into_iter().rev() {
            if let Some(h) = self.hosts.get_mut(&name) {
                h.rollback(change);
            }
        }
        for (_, h) in p.started {
            eprintln!("{}", h.stop());
        }
    }

    /// Tell the owner thread where each export now is, and which classifiers serve it.
    fn place(&self) {
        let mut p = Placements::default();
        for (key, (_, ex)) in &self.exports {
            let kernels = self
                .hosts
                .values()
                .filter(|h| h.exports().iter().any(|e| Arc::ptr_eq(e, ex)))
                .filter_map(|h| h.kernel.clone())
                .collect();
            p.by_key.insert(*key, (ex.clone(), kernels));
        }
        // Through the owner's queue, so no edit lands half before and half after the switch.
        self.owner.place(p);
    }

    /// Refresh the pins (counters for `status` and `stats`).
    fn publish(&mut self) {
        for h in self.hosts.values_mut() {
            h.publish();
        }
    }

    /// Stop every interface; each says what it served.
    pub fn stop(mut self) {
        self.owner.place(Placements::default());
        for (_, h) in std::mem::take(&mut self.hosts) {
            eprintln!("{}", h.stop());
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "serving {} export{} on {} interface{}",
            self.exports.len(),
            if self.exports.len() == 1 { "" } else { "s" },
            self.hosts.len(),
            if self.hosts.len() == 1 { "" } else { "s" }
        )
    }
}

/// Apply a reloaded config, listening for metrics where it says: a new address is bound
/// first, so a reload that cannot bind it changes nothing.
fn reload(node: &mut Node, c: NodeConfig, metrics: &mut Option<MetricsServer>) -> Result<()> {
    let addr = c.metrics;
    let moved = addr != metrics.as_ref().map(|m| m.addr);
    let new = match addr {
        Some(a) if moved => Some(MetricsServer::bind(a)?),
        _ => None,
    };
    node.apply(c)?;
    if moved {
        *metrics = new;
    }
    Ok(())
}

/// The next scrape, or never without an endpoint.
async fn serve_metrics(m: &Option<MetricsServer>, asker: &metrics_http::Asker) {
    match m {
        Some(m) => m.serve_next(asker).await,
        None => std::future::pending().await,
    }
}

/// Serve `initial` until SIGINT/SIGTERM; with a config path, SIGHUP reloads it.
pub fn run(
    initial: NodeConfig,
    config_path: Option<PathBuf>,
    state: Option<StateFile>,
) -> Result<()> {
    // Signal handlers go in before anything is served, so a SIGTERM right after the ready
    // line still detaches cleanly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut node = Node::new(state)?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        // Bound before anything is served: a taken port is refused with nothing started.
        let mut metrics = match initial.metrics.map(MetricsServer::bind).transpose() {
            Ok(m) => m,
            Err(e) => {
                node.stop();
                return Err(e);
            }
        };
        let (asker, mut asks) = tokio::sync::mpsc::channel(16);
        if let Err(e) = node.apply(initial) {
            node.stop();
            return Err(e);
        }
        let (resizer, mut resizes) = tokio::sync::mpsc::channel(16);
        let control = match ControlSocket::bind() {
            Ok(c) => c.with_metrics(asker.clone()).with_resizer(resizer),
            Err(e) => {
                node.stop();
                return Err(e);
            }
        };
        let owner = node.owner();
        let links = netlink::LinkWatcher::open()
            .map_err(|e| log::warn!("interfaces that come and go are not followed: {e:#}"))
            .ok();
        println!("ready: {}", node.summary());
        let mut notifier = notify::Notifier::from_env();
        notifier.ready(&node);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // How soon a store that grew or shrank is noticed without anyone saying so.
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let mut watchdog = tokio::time::interval(notifier.period());
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match &config_path {
                    Some(p) => {
                        notifier.reloading();
                        match config::load(p).and_then(|c| reload(&mut node, c, &mut metrics)) {
                            Ok(()) => {
                                println!("reloaded: {}", node.summary());
                                notifier.ready(&node);
                            }
                            Err(e) => {
                                eprintln!("reload refused, still {}: {e:#}", node.summary());
                                notifier.refused(&node, &format!("{e:#}"));
                            }
                        }
                        node.follow_sizes();
                    }
                    None => {
                        eprintln!("SIGHUP: no config file to reload (aoe-ctl export); the export's size is looked at");
                        node.follow_sizes();
                    }
                },
                _ = control.serve_next(&owner) => {},
                _ = serve_metrics(&metrics, &asker) => {},
                Some(reply) = asks.recv() => {
                    let _ = reply.send(node.metrics());
                }
                Some((target, reply)) = resizes.recv() => {
                    let _ = reply.send(node.resize(&target));
                }
                events = links::next(&links) => events.into_iter().for_each(|e| node.link_event(e)),
                _ = tick.tick() => node.publish(),
                _ = watch.tick() => node.follow_sizes(),
                _ = watchdog.tick() => notifier.watchdog(&node),
            }
        }
        notifier.stopping();
        node.stop();
        Ok(())
    })
}
