//! The protocol engine: parse a frame into a typed request (`request`), execute it against
//! the export (`ata`, `config`, `control`), write the reply in one place (`reply`). No
//! sockets here, so every command is tested without a network.
//!
//! Frames are answered in place: the worker hands the whole buffer (`buf`) with the request
//! in its first `len` bytes, and the reply is written over it. A request that changes an
//! export's config string or access lists is handed to the control plane instead
//! (`Verdict::Pending`): it applies such edits one at a time, keeps them, and sends the
//! reply itself, so a slow state write never holds up a queue worker.

use std::collections::HashMap;
use std::sync::Arc;

use aoe_common::wire::ata::ATA_HEADER_LEN;
use aoe_common::wire::header::HeaderRepr;
use aoe_common::wire::{AoeError, Command, Frame, Mac, MIN_FRAME_LEN, SECTOR_SIZE};

use super::export::{ControlState, Export, ExportStats};
use super::reply::{Completion, Responder};
use super::request::{self, AtaOp, AtaRequest, Body, Request};
use super::{ata, config, control};

pub use super::reply::{Verdict, CONTROL_REPLY_MAX};
pub use super::request::Ignore;

/// Which exports a frame is for, with what routing it already read of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    One(usize, Parsed),
    /// A broadcast: every export in `Engine::each` answers on its own.
    Each,
    Ignore(Ignore),
}

/// What `route` parsed: an ATA request whole, so the hot path parses each frame once; any
/// other command is parsed again when answered (none of them is on the hot path, and their
/// bodies borrow the frame the reply is written over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Ata(HeaderRepr, AtaRequest),
    Other,
}

impl Parsed {
    /// The longest reply the request of `len` bytes can get: the room it must be answered in.
    pub fn reply_room(&self, len: usize, max_sectors: usize) -> usize {
        let Parsed::Ata(_, a) = self else {
            return len.max(CONTROL_REPLY_MAX);
        };
        let data = match a.op {
            AtaOp::Read => (a.count).min(max_sectors) * SECTOR_SIZE,
            AtaOp::Identify => SECTOR_SIZE,
            _ => 0,
        };
        len.max(ATA_HEADER_LEN + data).max(MIN_FRAME_LEN)
    }

    /// An ATA write: its reply (headers only) fits where it arrived, whatever its length.
    pub fn is_write(&self) -> bool {
        matches!(self, Parsed::Ata(_, a) if a.op == AtaOp::Write)
    }

    /// An ATA request (which may need storage I/O).
    pub fn is_ata(&self) -> bool {
        matches!(self, Parsed::Ata(..))
    }
}

/// A state-changing request on its way to the control plane, with room for its reply.
pub struct ControlWork {
    pub export: Arc<Export>,
    /// The request in its first `len` bytes; at least `CONTROL_REPLY_MAX` long.
    pub frame: Vec<u8>,
    pub len: usize,
    pub responder: Responder,
}

/// Takes a request for the control plane; false when it cannot (the frame is dropped and
/// the initiator retransmits). Must not block: it runs on a queue worker.
pub type ControlSink = Arc<dyn Fn(ControlWork) -> bool + Send + Sync>;

/// Keeps a changed config string and access lists before they are published and
/// acknowledged; false when it could not (nothing changes, no reply).
pub type Keep<'a> = &'a dyn Fn(&ControlState) -> bool;

/// Up to this many exports, `route` scans the list instead of the map.
const FEW_EXPORTS: usize = 8;

pub struct Engine {
    exports: Vec<Arc<Export>>,
    /// shelf.slot to its index in `exports` (the first, if two share it): a frame to one
    /// export is routed without scanning thousands.
    by_addr: HashMap<(u16, u8), usize>,
    responder: Responder,
    control: Option<ControlSink>,
}

impl Engine {
    /// `max_sectors`: the most sectors one frame carries on this interface (MTU and buffers).
    /// Without a control sink, state-changing requests are applied inline.
    pub fn new(exports: Vec<Arc<Export>>, mac: Mac, max_sectors: usize) -> Self {
        let mut by_addr = HashMap::with_capacity(exports.len());
        for (i, e) in exports.iter().enumerate() {
            by_addr.entry((e.shelf, e.slot)).or_insert(i);
        }
        Engine {
            exports,
            by_addr,
            responder: Responder {
                mac,
                max_sectors: max_sectors.clamp(1, 255),
            },
            control: None,
        }
    }

    pub fn with_control(mut self, sink: ControlSink) -> Self {
        self.control = Some(sink);
        self
    }

    pub fn exports(&self) -> &[Arc<Export>] {
        &self.exports
    }

    pub fn mac(&self) -> Mac {
        self.responder.mac
    }

    pub fn max_sectors(&self) -> usize {
        self.responder.max_sectors
    }

    /// Decide which exports a frame is for. The frame is parsed here, once.
    pub fn route(&self, frame: &[u8]) -> Route {
        let req = match request::parse(frame) {
            Ok(r) => r,
            Err(why) => return Route::Ignore(why),
        };
        let (shelf, slot) = (req.header.shelf, req.header.slot);
        if shelf == aoe_common::wire::SHELF_BROADCAST || slot == aoe_common::wire::SLOT_BROADCAST {
            if req.header.command == Command::Ata {
                return Route::Ignore(Ignore::BroadcastAta);
            }
            return Route::Each;
        }
        // A few exports: a scan beats hashing (SipHash costs ~2% of a hot read).
        let found = if self.exports.len() <= FEW_EXPORTS {
            self.exports
                .iter()
                .position(|e| e.shelf == shelf && e.slot == slot)
        } else {
            self.by_addr.get(&(shelf, slot)).copied()
        };
        let parsed = match req.body {
            Body::Ata(a) => Parsed::Ata(req.header, a),
            _ => Parsed::Other,
        };
        match found {
            Some(i) => Route::One(i, parsed),
            None => Route::Ignore(Ignore::NotOurs),
        }
    }

    /// The exports a broadcast frame reaches (each answers from a buffer of its own holding
    /// the whole request: both workers use this).
    pub fn each<'a>(&'a self, frame: &[u8]) -> impl Iterator<Item = usize> + 'a {
        let to = Frame::new_checked(frame)
            .ok()
            .map(|f| (f.shelf(), f.slot()));
        self.exports
            .iter()
            .enumerate()
            .filter(move |(_, e)| to.is_some_and(|(shelf, slot)| e.matches(shelf, slot)))
            .map(|(i, _)| i)
    }

    /// The longest reply the request in `frame` can get (for a frame not routed: a
    /// broadcast answered per export).
    pub fn reply_room(&self, frame: &[u8]) -> usize {
        let parsed = match request::parse(frame) {
            Ok(Request {
                header,
                body: Body::Ata(a),
            }) => Parsed::Ata(header, a),
            _ => Parsed::Other,
        };
        parsed.reply_room(frame.len(), self.max_sectors())
    }

    /// Answer the request in `buf[..len]` for export `idx`, writing the reply into `buf`.
    pub fn handle(&self, idx: usize, buf: &mut [u8], len: usize) -> Verdict {
        self.handle_parts(idx, buf, len, &[])
    }

    /// `handle` for a request whose bytes continue in `tail` (a frame that arrived as a chain
    /// of buffers). Only an ATA write reads its tail, writing it to the backend where it
    /// lies; callers gather any other chained request into one buffer first.
    pub fn handle_parts(&self, idx: usize, buf: &mut [u8], len: usize, tail: &[&[u8]]) -> Verdict {
        self.dispatch(idx, Parsed::Other, buf, len, tail, false)
    }

    /// Answer a frame `route` sent to export `idx`, with what it parsed (`buf[..len]` holds
    /// the frame, its payload possibly continuing in `tail`). With `defer` (a worker with a
    /// ring) a checked read, write or flush comes back as `Verdict::Io` for the ring to do,
    /// and `ata::complete` answers it afterwards.
    pub fn handle_routed(
        &self,
        idx: usize,
        parsed: Parsed,
        buf: &mut [u8],
        len: usize,
        tail: &[&[u8]],
        defer: bool,
    ) -> Verdict {
        self.dispatch(idx, parsed, buf, len, tail, defer)
    }

    pub fn responder(&self) -> Responder {
        self.responder
    }

    fn dispatch(
        &self,
        idx: usize,
        parsed: Parsed,
        buf: &mut [u8],
        len: usize,
        tail: &[&[u8]],
        defer: bool,
    ) -> Verdict {
        let Some(ex) = self.exports.get(idx) else {
            return Verdict::Ignore(Ignore::NotOurs);
        };
        ExportStats::add(&ex.stats.frames, 1);
        if let Parsed::Ata(header, a) = parsed {
            if len > buf.len() || buf.len() < MIN_FRAME_LEN {
                return Verdict::Ignore(Ignore::Malformed);
            }
            return answer_ata(ex, self.responder, &header, &a, buf, len, tail, defer);
        }
        let route = match &self.control {
            Some(sink) => Changes::HandOff(sink),
            // Without a control plane (tests, fuzzing) a change is applied at once.
            None => Changes::Apply(&|_| true),
        };
        answer(ex, self.responder, buf, len, tail, route, defer)
    }
}

/// Answer a request inline, state-changing commands included: the control plane's path.
/// A change is made on a copy, kept by `keep`, and only then published and answered.
pub fn answer_now(
    ex: &Arc<Export>,
    responder: Responder,
    buf: &mut [u8],
    len: usize,
    keep: Keep,
) -> Verdict {
    answer(ex, responder, buf, len, &[], Changes::Apply(keep), false)
}

/// Check, execute and respond to an ATA request already parsed (`buf[..len]` is its frame).
#[allow(clippy::too_many_arguments)]
fn answer_ata(
    ex: &Arc<Export>,
    responder: Responder,
    header: &HeaderRepr,
    a: &AtaRequest,
    buf: &mut [u8],
    len: usize,
    tail: &[&[u8]],
    defer: bool,
) -> Verdict {
    if !ex.matches(header.shelf, header.slot) {
        return Verdict::Ignore(Ignore::NotOurs);
    }
    if !ex.access.mask_allows(&header.src) {
        ExportStats::add(&ex.stats.dropped_acl, 1);
        return Verdict::Ignore(Ignore::Acl);
    }
    if header.shelf == aoe_common::wire::SHELF_BROADCAST
        || header.slot == aoe_common::wire::SLOT_BROADCAST
    {
        return Verdict::Ignore(Ignore::BroadcastAta);
    }
    let done = if ex.access.reservation_allows(&header.src) {
        ata::execute(ex, responder.max_sectors, a, buf, len, tail, defer)
    } else {
        Completion::Error(AoeError::TargetReserved)
    };
    responder.respond(ex, header, done, buf, len)
}

/// What happens to a state-changing request.
enum Changes<'a> {
    HandOff(&'a ControlSink),
    Apply(Keep<'a>),
}

/// Parse, execute, respond.
fn answer(
    ex: &Arc<Export>,
    responder: Responder,
    buf: &mut [u8],
    len: usize,
    tail: &[&[u8]],
    changes: Changes,
    defer: bool,
) -> Verdict {
    if len > buf.len() || buf.len() < MIN_FRAME_LEN {
        return Verdict::Ignore(Ignore::Malformed);
    }
    let req = match request::parse(&buf[..len]) {
        Ok(r) => r,
        Err(why) => return Verdict::Ignore(why),
    };
    let header = req.header;
    let done = match req.body {
        Body::Ata(a) => return answer_ata(ex, responder, &header, &a, buf, len, tail, defer),
        _ if !ex.matches(header.shelf, header.slot) => return Verdict::Ignore(Ignore::NotOurs),
        _ if !ex.access.mask_allows(&header.src) => {
            ExportStats::add(&ex.stats.dropped_acl, 1);
            return Verdict::Ignore(Ignore::Acl);
        }
        Body::UnsupportedVersion(_) => Completion::Error(AoeError::UnsupportedVersion),
        body if body.changes_state() => match changes {
            Changes::HandOff(sink) => {
                let mut frame = vec![0u8; len.max(CONTROL_REPLY_MAX)];
                frame[..len].copy_from_slice(&buf[..len]);
                let work = ControlWork {
                    export: ex.clone(),
                    frame,
                    len,
                    responder,
                };
                return match sink(work) {
                    true => Verdict::Pending,
                    false => Verdict::Ignore(Ignore::ControlBusy),
                };
            }
            Changes::Apply(keep) => {
                let before = ex.control_state();
                let mut after = before.clone();
                let done = match body {
                    Body::Config(c) => config::set(&mut after.config, &c),
                    Body::Mask(m) => control::mask_list(&mut after.lists, &m),
                    Body::Reserve(r) => control::reserve_release(&mut after.lists, &header.src, &r),
                    _ => Completion::Error(AoeError::BadArgument),
                };
                if after != before {
                    if !keep(&after) {
                        return Verdict::Ignore(Ignore::NotKept);
                    }
                    ex.restore_control_state(after);
                }
                done
            }
        },
        Body::Config(c) => config::execute(ex, &c),
        Body::Mask(m) => control::mask_list(&mut ex.access.snapshot(), &m),
        Body::Reserve(r) => control::reserve_release(&mut ex.access.snapshot(), &header.src, &r),
        Body::Unknown(_) => Completion::Error(AoeError::UnrecognizedCommand),
    };
    responder.respond(ex, &header, done, buf, len)
}
