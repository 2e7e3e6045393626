//! The one writer of export state: a control-plane thread that applies every change to an
//! export's config string and access lists, in the order they arrive, whether an initiator
//! asked (AoE commands 1, 2 and 3, handed over by the queue workers) or an operator did
//! (`aoe-ctl acl`, `aoe-ctl reservation`, over the control socket). Each change is kept
//! (a config string in the state file; mask and reservation lists live as long as the
//! export) and written into the kernel entry of every interface serving the export before it
//! is acknowledged; a change that cannot be kept is undone and not acknowledged. No other
//! thread or process writes export state, and where each export is served changes through
//! the same queue (`Work::Place`), so no edit is lost or lands on a replaced export.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Result};
use aoe_common::maps::{ExportKey, MAX_MASKS};
use aoe_common::wire::mask::{Directive, DCMD_ADD, DCMD_DELETE, MERROR_LIST_FULL};

use super::control::{AdminReply, AdminRequest};
use super::{Placements, Shared};
use crate::net::format_mac;
use crate::packet::socket::RawSocket;
use crate::serve::engine::{self, ControlWork, Verdict};
use crate::serve::export::Export;

/// Requests waiting for the owner: beyond this, workers drop them (the initiator retries).
const QUEUE: usize = 1024;

pub enum Work {
    /// A state-changing AoE request that arrived on an interface.
    Initiator(ControlWork, String),
    Admin(AdminRequest, tokio::sync::oneshot::Sender<AdminReply>),
    /// Where each export is served from now on (after a start or reload); acknowledged.
    Place(Placements, std::sync::mpsc::Sender<()>),
    Stop,
}

/// Requests dropped because the queue was full, and the second that was last logged.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static DROP_LOGGED: AtomicU64 = AtomicU64::new(0);

pub struct Owner {
    tx: SyncSender<Work>,
    thread: Option<JoinHandle<()>>,
}

impl Owner {
    pub(crate) fn spawn(shared: Arc<Shared>) -> Result<Owner> {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("aoe-owner".into())
            .spawn(move || run(&shared, rx))?;
        Ok(Owner {
            tx,
            thread: Some(thread),
        })
    }

    /// A handle for queue workers and the control socket.
    pub fn sender(&self) -> SyncSender<Work> {
        self.tx.clone()
    }

    /// Hand over without blocking; false when the queue is full or the owner gone.
    pub fn offer(tx: &SyncSender<Work>, work: Work) -> bool {
        match tx.try_send(work) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                // A flood of sets must not flood the log: one line a second at most.
                let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
                let now = crate::pinned::unix_now();
                if DROP_LOGGED.swap(now, Ordering::Relaxed) != now {
                    log::warn!(
                        "control plane busy: {dropped} state-changing requests dropped so far \
                         (initiators retransmit)"
                    );
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Install where each export is served, and wait until the owner has.
    pub(crate) fn place(&self, p: Placements) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Work::Place(p, done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.tx.send(Work::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, rx: Receiver<Work>) {
    // One send-only socket per interface, for the replies the owner sends itself.
    let mut senders: HashMap<String, RawSocket> = HashMap::new();
    while let Ok(work) = rx.recv() {
        match work {
            Work::Stop => break,
            Work::Initiator(w, iface) => initiator(shared, w, &iface, &mut senders),
            Work::Admin(req, reply) => {
                let _ = reply.send(admin(shared, &req));
            }
            Work::Place(p, done) => {
                install(shared, p);
                let _ = done.send(());
            }
        }
    }
}

/// Take the new placements. An export opened anew (a restart on reload) takes the config
/// string kept since it was opened, and every export's kernel entries are written again, so
/// edits applied while the reload ran are in force wherever it is served now.
fn install(shared: &Shared, new: Placements) {
    let old = std::mem::replace(&mut *shared.placements.write().unwrap(), new);
    let p = shared.placements.read().unwrap();
    for (key, (ex, kernels)) in &p.by_key {
        let reopened = old
            .by_key
            .get(key)
            .is_some_and(|(before, _)| !Arc::ptr_eq(before, ex));
        if reopened {
            if let Some(kept) = shared.state.as_ref().and_then(|s| s.config(&ex.name())) {
                *ex.config_mut() = kept;
            }
        }
        for k in kernels {
            if let Err(e) = k.lock().unwrap().sync_export(ex) {
                log::error!("{}: kernel entry not written: {e:#}", ex.name());
            }
        }
    }
}

/// Is `ex` the export served under its key now (not one a reload replaced)?
fn placed(shared: &Shared, ex: &Arc<Export>) -> bool {
    let p = shared.placements.read().unwrap();
    p.by_key
        .get(&ex.key())
        .is_some_and(|(now, _)| Arc::ptr_eq(now, ex))
}

/// Apply an initiator's request, keep its effect, then send the reply it earned.
fn initiator(
    shared: &Shared,
    mut w: ControlWork,
    iface: &str,
    senders: &mut HashMap<String, RawSocket>,
) {
    let ex = w.export.clone();
    if !placed(shared, &ex) {
        // Handed over by a worker of a set that is being replaced: the initiator retries
        // and reaches the export that serves now.
        return;
    }
    let verdict = match change(shared, &ex, || {
        Ok(engine::answer_now(&ex, w.responder, &mut w.frame, w.len))
    }) {
        Ok(v) => v,
        Err(e) => {
            log::error!(
                "{}: an initiator's change was not kept, and not acknowledged: {e:#}",
                ex.name()
            );
            return;
        }
    };
    let Verdict::Reply(n) = verdict else { return };
    if !senders.contains_key(iface) {
        match RawSocket::open_sender(iface) {
            Ok(s) => {
                senders.insert(iface.to_string(), s);
            }
            Err(e) => {
                log::error!("{}: reply not sent on {iface}: {e:#}", ex.name());
                return;
            }
        }
    }
    if let Err(e) = senders[iface].send(&w.frame[..n]) {
        log::warn!("{}: reply not sent on {iface}: {e:#}", ex.name());
        senders.remove(iface);
    }
}

/// Run `apply` (which edits the export's state); when the state changed, keep it in the state
/// file and the kernel entries, or put it back and fail.
fn change<T>(shared: &Shared, ex: &Arc<Export>, apply: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = ex.control_state();
    let out = apply()?;
    if ex.control_state() == before {
        return Ok(out);
    }
    match keep(shared, ex) {
        Ok(()) => Ok(out),
        Err(e) => {
            ex.restore_control_state(before);
            // The state file may hold the new string when the kernel write failed after it.
            if let Some(s) = &shared.state {
                if let Err(again) = s.record(&ex.name(), &ex.config()) {
                    log::error!("{}: state file not restored: {again:#}", ex.name());
                }
            }
            if let Err(again) = sync_kernels(shared, ex) {
                log::error!("{}: kernel entry not restored: {again:#}", ex.name());
            }
            Err(e)
        }
    }
}

fn keep(shared: &Shared, ex: &Export) -> Result<()> {
    if let Some(s) = &shared.state {
        s.record(&ex.name(), &ex.config())?;
    }
    sync_kernels(shared, ex)
}

/// Write the export's entry into the classifier of every interface serving it.
fn sync_kernels(shared: &Shared, ex: &Export) -> Result<()> {
    let p = shared.placements.read().unwrap();
    if let Some((_, kernels)) = p.by_key.get(&ex.key()) {
        for k in kernels {
            k.lock().unwrap().sync_export(ex)?;
        }
    }
    Ok(())
}

fn admin(shared: &Shared, req: &AdminRequest) -> AdminReply {
    let (shelf, slot) = match crate::address::parse_target(req.target()) {
        Ok(t) => t,
        Err(e) => return AdminReply::error(format!("{e:#}")),
    };
    let ex = {
        let p = shared.placements.read().unwrap();
        p.by_key
            .get(&ExportKey::new(shelf, slot))
            .map(|(ex, _)| ex.clone())
    };
    let Some(ex) = ex else {
        return AdminReply::not_served();
    };
    let macs = |list: Vec<[u8; 6]>| list.iter().map(format_mac).collect();
    let result = change(shared, &ex, || edit(&ex, req));
    if !matches!(
        req,
        AdminRequest::AclList { .. } | AdminRequest::ReservationShow { .. }
    ) {
        match &result {
            Ok(_) => log::info!("{}: {} (control socket)", ex.name(), req.describe()),
            Err(e) => log::warn!("{}: {} refused: {e:#}", ex.name(), req.describe()),
        }
    }
    match result {
        Ok(true) => AdminReply::list(macs(ex.access.snapshot().reserve)),
        Ok(false) => AdminReply::list(macs(ex.access.snapshot().masks)),
        Err(e) => AdminReply::error(format!("{e:#}")),
    }
}

/// Apply an operator's request; true when its answer is the reservation list.
fn edit(ex: &Export, req: &AdminRequest) -> Result<bool> {
    let mac = |s: &str| crate::net::parse_mac(s);
    let directive = |dcmd, s: &str| -> Result<()> {
        let d = Directive { dcmd, mac: mac(s)? };
        match ex.access.edit_masks(std::iter::once(d)) {
            Err(e) if e.merror == MERROR_LIST_FULL => {
                bail!("the mask list of {} is full ({MAX_MASKS} MACs)", ex.name())
            }
            Err(e) => Err(anyhow!("mask list edit refused (merror {})", e.merror)),
            Ok(()) => Ok(()),
        }
    };
    match req {
        AdminRequest::AclList { .. } => Ok(false),
        AdminRequest::AclAdd { mac, .. } => directive(DCMD_ADD, mac).map(|()| false),
        AdminRequest::AclDel { mac, .. } => directive(DCMD_DELETE, mac).map(|()| false),
        AdminRequest::ReservationShow { .. } => Ok(true),
        AdminRequest::ReservationClear { .. } => {
            ex.access.clear_reservation();
            Ok(true)
        }
    }
}
