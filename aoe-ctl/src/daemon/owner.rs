//! The one writer of export state: a control-plane thread that applies every change to an
//! export's config string and access lists, in the order they arrive, whether an initiator
//! asked (AoE commands 1, 2 and 3, handed over by the queue workers) or an operator did
//! (`aoe-ctl acl`, `aoe-ctl reservation`, over the control socket). Each change is kept
//! (in the state file, when there is one: config string, mask and reservation lists) and
//! written into the kernel entry of every interface serving the export before it
//! is acknowledged; a change that cannot be kept is undone and not acknowledged. No other
//! thread or process writes export state, and where each export is served changes through
//! the same queue (`Work::Place`), so no edit is lost or lands on a replaced export.
//!
//! Operators come first: their edits (and the daemon's own work) have a queue of their own,
//! taken before any initiator's request, so `aoe-ctl acl add` gets through however hard a
//! host on the segment floods config sets (each of which costs a state-file write). An
//! initiator's requests wait in a bounded queue of their own, at most `PER_SOURCE` from one
//! source MAC (the rest are dropped: the initiator retransmits), and a config force set
//! replaces the one the same source has waiting for the same export (the last one wins
//! anyway), so one host cannot fill the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Result};
use aoe_common::maps::{ExportKey, MAX_MASKS};
use aoe_common::wire::config::{self as config_wire, CCMD_FORCE_SET, CCMD_MASK};
use aoe_common::wire::header::{field, CMD_QUERY_CONFIG};
use aoe_common::wire::mask::{Directive, DCMD_ADD, DCMD_DELETE, MERROR_LIST_FULL};
use aoe_common::wire::Mac;

use super::control::{AdminReply, AdminRequest};
use super::{Placements, Shared};
use crate::net::format_mac;
use crate::packet::socket::RawSocket;
use crate::serve::access::Lists;
use crate::serve::engine::{self, ControlWork, Verdict};
use crate::serve::export::{ControlState, Export};

/// The daemon's and operators' work waiting for the owner.
const QUEUE: usize = 1024;
/// Initiators' requests waiting for the owner: beyond this, workers drop them (the initiator
/// retries).
const WIRE_QUEUE: usize = 1024;
/// Of those, at most this many from one source MAC.
const PER_SOURCE: usize = 4;

pub enum Work {
    /// Initiators' requests are waiting (`Initiators`).
    Wake,
    Admin(AdminRequest, tokio::sync::oneshot::Sender<AdminReply>),
    /// The export served as this target now, if any (`aoe-ctl snapshot` works on it).
    Export(String, tokio::sync::oneshot::Sender<Option<Arc<Export>>>),
    /// Where each export is served from now on (after a start or reload); acknowledged.
    Place(Placements, std::sync::mpsc::Sender<()>),
    Stop,
}

/// Requests dropped because the queue was full, and the second that was last logged.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static DROP_LOGGED: AtomicU64 = AtomicU64::new(0);

/// State-changing requests dropped so far because the owner's queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

pub struct Owner {
    tx: SyncSender<Work>,
    wire: Initiators,
    thread: Option<JoinHandle<()>>,
}

/// Where queue workers hand initiators' state-changing requests (a queue apart from the
/// operators', see the module's comment).
#[derive(Clone)]
pub struct Initiators {
    waiting: Arc<Mutex<Waiting>>,
    wake: SyncSender<Work>,
}

#[derive(Default)]
struct Waiting {
    queue: VecDeque<(ControlWork, String)>,
    /// Requests waiting, by source MAC.
    by_source: HashMap<Mac, usize>,
}

impl Initiators {
    /// Queue a request that arrived on `iface`, without blocking; false when it is dropped
    /// (the queue is full, or its source has `PER_SOURCE` waiting).
    pub fn offer(&self, work: ControlWork, iface: &str) -> bool {
        let src = source(&work);
        let mut w = self.waiting.lock().unwrap();
        if let Some(at) = force_set(&work)
            .then(|| {
                w.queue.iter().position(|(old, _)| {
                    force_set(old) && source(old) == src && Arc::ptr_eq(&old.export, &work.export)
                })
            })
            .flatten()
        {
            // The same source's force set for the same export: the newer one is applied
            // alone, as applying both would leave.
            w.queue[at] = (work, iface.to_string());
            return true;
        }
        let mine = w.by_source.get(&src).copied().unwrap_or(0);
        if w.queue.len() >= WIRE_QUEUE || mine >= PER_SOURCE {
            drop(w);
            count_dropped();
            return false;
        }
        let was_empty = w.queue.is_empty();
        w.queue.push_back((work, iface.to_string()));
        *w.by_source.entry(src).or_insert(0) += 1;
        drop(w);
        if was_empty {
            // The owner may be waiting for work: it looks at this queue when woken (a full
            // channel means it is busy, and looks anyway).
            let _ = self.wake.try_send(Work::Wake);
        }
        true
    }

    fn pop(&self) -> Option<(ControlWork, String)> {
        let mut w = self.waiting.lock().unwrap();
        let (work, iface) = w.queue.pop_front()?;
        let src = source(&work);
        if let Some(n) = w.by_source.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                w.by_source.remove(&src);
            }
        }
        Some((work, iface))
    }
}

/// The source MAC of a handed-over request.
fn source(w: &ControlWork) -> Mac {
    let mut m = [0u8; 6];
    if let Some(b) = w.frame.get(field::SRC_BYTES) {
        m.copy_from_slice(b);
    }
    m
}

/// Is it a Query Config force set (whose effect the last one decides)?
fn force_set(w: &ControlWork) -> bool {
    w.frame.get(field::COMMAND) == Some(&CMD_QUERY_CONFIG)
        && w.frame
            .get(config_wire::field::VER_CCMD)
            .is_some_and(|b| b & CCMD_MASK == CCMD_FORCE_SET)
}

/// A flood of sets must not flood the log: one line a second at most.
fn count_dropped() {
    let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::pinned::unix_now();
    if DROP_LOGGED.swap(now, Ordering::Relaxed) != now {
        log::warn!(
            "control plane busy: {dropped} state-changing requests dropped so far \
             (initiators retransmit)"
        );
    }
}

impl Owner {
    pub(crate) fn spawn(shared: Arc<Shared>) -> Result<Owner> {
        let (tx, rx) = sync_channel(QUEUE);
        let wire = Initiators {
            waiting: Arc::default(),
            wake: tx.clone(),
        };
        let w = wire.clone();
        let thread = std::thread::Builder::new()
            .name("aoe-owner".into())
            .spawn(move || run(&shared, rx, &w))?;
        Ok(Owner {
            tx,
            wire,
            thread: Some(thread),
        })
    }

    /// A handle for the control socket (operators) and the daemon.
    pub fn sender(&self) -> SyncSender<Work> {
        self.tx.clone()
    }

    /// A handle for queue workers (initiators' requests).
    pub fn initiators(&self) -> Initiators {
        self.wire.clone()
    }

    /// Hand over without blocking; false when the queue is full or the owner gone.
    pub fn offer(tx: &SyncSender<Work>, work: Work) -> bool {
        match tx.try_send(work) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
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

fn run(shared: &Shared, rx: Receiver<Work>, wire: &Initiators) {
    // One send-only socket per interface, for the replies the owner sends itself.
    let mut senders: HashMap<String, RawSocket> = HashMap::new();
    loop {
        // The daemon's and operators' work first, then one initiator's request at a time.
        let work = match rx.try_recv() {
            Ok(w) => w,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if let Some((w, iface)) = wire.pop() {
                    initiator(shared, w, &iface, &mut senders);
                    continue;
                }
                match rx.recv() {
                    Ok(w) => w,
                    Err(_) => break,
                }
            }
        };
        match work {
            Work::Stop => break,
            Work::Wake => {}
            Work::Admin(req, reply) => {
                let _ = reply.send(admin(shared, &req));
            }
            Work::Export(target, reply) => {
                let key =
                    crate::address::parse_target(&target).map(|(sh, sl)| ExportKey::new(sh, sl));
                let p = shared.placements.read().unwrap();
                let ex = key
                    .ok()
                    .and_then(|k| p.by_key.get(&k).map(|(ex, _)| ex.clone()));
                let _ = reply.send(ex);
            }
            Work::Place(p, done) => {
                install(shared, p);
                let _ = done.send(());
            }
        }
    }
}

/// Take the new placements. An export opened anew (a restart on reload) takes the state
/// kept since it was opened, and every export's kernel entries are written again, so
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
            if let Some(s) = &shared.state {
                ex.restore_control_state(s.kept(&ex.name()).over(ex.control_state()));
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
    let before = ex.control_state();
    let keep = |new: &ControlState| match record(shared, &ex, &before, new) {
        Ok(()) => true,
        Err(e) => {
            log::error!(
                "{}: an initiator's change was not kept, and not acknowledged: {e:#}",
                ex.name()
            );
            false
        }
    };
    let verdict = engine::answer_now(&ex, w.responder, &mut w.frame, w.len, &keep);
    if ex.control_state() != before {
        if let Err(e) = publish_kernels(shared, &ex, before) {
            log::error!(
                "{}: an initiator's change was undone, and not acknowledged: {e:#}",
                ex.name()
            );
            return;
        }
    }
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

/// Keep a changed state before anyone sees it (without a state file it lives as long as
/// the export).
fn record(shared: &Shared, ex: &Export, before: &ControlState, new: &ControlState) -> Result<()> {
    match &shared.state {
        Some(s) => s.record(&ex.name(), before, new),
        None => Ok(()),
    }
}

/// The export's published state into the kernel entries; when that fails, `before` is put
/// back everywhere (user space, state file, kernel) and the change is refused.
fn publish_kernels(shared: &Shared, ex: &Export, before: ControlState) -> Result<()> {
    let Err(e) = sync_kernels(shared, ex) else {
        return Ok(());
    };
    if let Err(again) = record(shared, ex, &ex.control_state(), &before) {
        log::error!("{}: state file not restored: {again:#}", ex.name());
    }
    ex.restore_control_state(before);
    if let Err(again) = sync_kernels(shared, ex) {
        log::error!("{}: kernel entry not restored: {again:#}", ex.name());
    }
    Err(e)
}

/// Apply an operator's edit to a copy of the state; keep, publish and write it into the
/// kernel entries when it changed anything.
fn change(shared: &Shared, ex: &Export, edit: impl FnOnce(&mut Lists) -> Result<()>) -> Result<()> {
    let before = ex.control_state();
    let mut after = before.clone();
    edit(&mut after.lists)?;
    if after == before {
        return Ok(());
    }
    record(shared, ex, &before, &after)?;
    ex.restore_control_state(after);
    publish_kernels(shared, ex, before)
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
    let result = change(shared, &ex, |lists| edit(&ex.name(), lists, req));
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
        Ok(()) if shows_reservation(req) => AdminReply::list(macs(ex.access.snapshot().reserve)),
        Ok(()) => AdminReply::list(macs(ex.access.snapshot().masks)),
        Err(e) => AdminReply::error(format!("{e:#}")),
    }
}

/// Is the answer to `req` the reservation list (else the mask list)?
fn shows_reservation(req: &AdminRequest) -> bool {
    matches!(
        req,
        AdminRequest::ReservationShow { .. } | AdminRequest::ReservationClear { .. }
    )
}

/// Apply an operator's request to `lists` (a copy of export `name`'s).
fn edit(name: &str, lists: &mut Lists, req: &AdminRequest) -> Result<()> {
    let mac = |s: &str| crate::net::parse_mac(s);
    let mut directive = |dcmd, s: &str| -> Result<()> {
        let d = Directive { dcmd, mac: mac(s)? };
        match lists.edit_masks(std::iter::once(d)) {
            Err(e) if e.merror == MERROR_LIST_FULL => {
                bail!("the mask list of {name} is full ({MAX_MASKS} MACs)")
            }
            Err(e) => Err(anyhow!("mask list edit refused (merror {})", e.merror)),
            Ok(()) => Ok(()),
        }
    };
    match req {
        AdminRequest::AclList { .. } | AdminRequest::ReservationShow { .. } => Ok(()),
        // Answered by the daemon's thread (`control::answer`), never here.
        AdminRequest::Metrics => bail!("metrics are not an edit"),
        AdminRequest::AclAdd { mac, .. } => directive(DCMD_ADD, mac),
        AdminRequest::AclDel { mac, .. } => directive(DCMD_DELETE, mac),
        AdminRequest::ReservationClear { .. } => {
            lists.reserve.clear();
            Ok(())
        }
        AdminRequest::Snapshot { .. } => bail!("a snapshot is not an edit of the lists"),
        // Answered by the daemon's thread (`control::answer`), never here.
        AdminRequest::Resize { .. } => bail!("a resize is not an edit of the lists"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initiator::frames::{self, Addr};
    use crate::serve::backend::MemBackend;
    use crate::serve::export::ExportOptions;
    use crate::serve::reply::{Responder, CONTROL_REPLY_MAX};
    use aoe_common::wire::config::ConfigCommand;

    fn set(ex: &Arc<Export>, src: Mac, command: ConfigCommand, s: &[u8]) -> ControlWork {
        let mut frame = vec![0u8; CONTROL_REPLY_MAX];
        let to = Addr {
            src,
            dst: [2, 0, 0, 0, 0, 1],
            shelf: ex.shelf,
            slot: ex.slot,
        };
        let len = frames::config(&mut frame, &to, 7, command, s);
        ControlWork {
            export: ex.clone(),
            frame,
            len,
            responder: Responder {
                mac: [2, 0, 0, 0, 0, 1],
                max_sectors: 2,
            },
        }
    }

    #[test]
    fn one_source_waits_at_most_per_source_and_its_force_sets_coalesce() {
        let (tx, rx) = sync_channel(4);
        let wire = Initiators {
            waiting: Arc::default(),
            wake: tx,
        };
        let ex = |slot| {
            Arc::new(Export::new(
                ExportOptions::new(1, slot),
                Box::new(MemBackend::new(8)),
            ))
        };
        let (e2, e3) = (ex(2), ex(3));
        let (a, b) = ([2, 0xa, 0, 0, 0, 1], [2, 0xb, 0, 0, 0, 1]);
        // Force sets from one source to one export: one waits, the last one.
        for s in [&b"one"[..], b"two", b"three"] {
            assert!(wire.offer(set(&e2, a, ConfigCommand::ForceSet, s), "eth0"));
        }
        assert!(
            matches!(rx.try_recv(), Ok(Work::Wake)),
            "the owner was woken"
        );
        assert_eq!(wire.waiting.lock().unwrap().queue.len(), 1);
        // Other requests of that source count against its share; another source has its own.
        for _ in 0..PER_SOURCE - 1 {
            assert!(wire.offer(set(&e3, a, ConfigCommand::SetIfEmpty, b"x"), "eth0"));
        }
        assert!(!wire.offer(set(&e3, a, ConfigCommand::SetIfEmpty, b"x"), "eth0"));
        assert!(wire.offer(set(&e3, b, ConfigCommand::SetIfEmpty, b"y"), "eth0"));
        // In arrival order; the coalesced set kept its place and carries the last string.
        let (first, _) = wire.pop().unwrap();
        assert_eq!(&first.frame[32..first.len], b"three");
        // Once its requests are taken, the source may queue again.
        while wire.pop().is_some() {}
        assert!(wire.waiting.lock().unwrap().by_source.is_empty());
        assert!(wire.offer(set(&e3, a, ConfigCommand::SetIfEmpty, b"x"), "eth0"));
    }
}
