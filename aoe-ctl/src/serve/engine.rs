//! The protocol engine: a pure function from a request frame to a reply frame, over the
//! exports' backends. No sockets here, so every command is tested without a network.
//!
//! Frames are answered in place: the worker hands the whole UMEM chunk (`buf`) with the
//! request in its first `len` bytes, and the reply is written over it.

use std::sync::Arc;

use aoe_common::wire::header::{HeaderRepr, FLAG_ERROR};
use aoe_common::wire::{
    AoeError, Command, Frame, Mac, AOE_VERSION, ETHERTYPE_AOE, MIN_FRAME_LEN, SHELF_BROADCAST,
    SLOT_BROADCAST,
};

use super::export::{Export, ExportStats};
use super::{ata, config, control};

/// The longest reply to anything but an ATA read: a mask list of 255 entries (a config
/// reply is at most 1056 bytes).
pub const CONTROL_REPLY_MAX: usize = aoe_common::wire::header::HEADER_LEN + 4 + 255 * 8;

/// Why a frame got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignore {
    /// Shorter than its own fields claim, or not AoE at all.
    Malformed,
    /// An AoE response (R flag): not for a target.
    Response,
    /// Addressed to a shelf/slot we do not export.
    NotOurs,
    /// Source MAC not on the mask list.
    Acl,
    /// ATA to a broadcast address: never executed.
    BroadcastAta,
    /// Query Config test / test-prefix that did not match: silence is the answer.
    ConfigMismatch,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the first `n` bytes of the buffer.
    Reply(usize),
    Ignore(Ignore),
}

/// Which exports a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    One(usize),
    /// A broadcast: every export that `Export::matches` answers on its own.
    Each,
    Ignore(Ignore),
}

/// Called after an initiator changed an export's config string, mask list or reservation,
/// before the reply leaves: the loader mirrors the change into the kernel maps.
pub type Observer = Box<dyn Fn(&Export) + Send + Sync>;

pub struct Engine {
    exports: Vec<Arc<Export>>,
    mac: Mac,
    max_sectors: usize,
    observer: Option<Observer>,
}

impl Engine {
    /// `max_sectors`: the most sectors one frame carries on this interface (MTU and buffers).
    pub fn new(exports: Vec<Arc<Export>>, mac: Mac, max_sectors: usize) -> Self {
        Engine {
            exports,
            mac,
            max_sectors: max_sectors.clamp(1, 255),
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn exports(&self) -> &[Arc<Export>] {
        &self.exports
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    pub fn max_sectors(&self) -> usize {
        self.max_sectors
    }

    pub(super) fn changed(&self, ex: &Export) {
        if let Some(o) = &self.observer {
            o(ex);
        }
    }

    /// Decide which exports a frame is for.
    pub fn route(&self, frame: &[u8]) -> Route {
        let Ok(f) = Frame::new_checked(frame) else {
            return Route::Ignore(Ignore::Malformed);
        };
        if f.ethertype() != ETHERTYPE_AOE {
            return Route::Ignore(Ignore::Malformed);
        }
        if f.is_response() {
            return Route::Ignore(Ignore::Response);
        }
        let (shelf, slot) = (f.shelf(), f.slot());
        if shelf == SHELF_BROADCAST || slot == SLOT_BROADCAST {
            if f.command() == Command::Ata {
                return Route::Ignore(Ignore::BroadcastAta);
            }
            return Route::Each;
        }
        match self
            .exports
            .iter()
            .position(|e| e.shelf == shelf && e.slot == slot)
        {
            Some(i) => Route::One(i),
            None => Route::Ignore(Ignore::NotOurs),
        }
    }

    /// The longest reply the request in `frame` can get: the room it must be answered in.
    pub fn reply_room(&self, frame: &[u8]) -> usize {
        use aoe_common::wire::ata::{AtaCommand, AtaRepr, ATA_HEADER_LEN};
        use aoe_common::wire::SECTOR_SIZE;
        let small = frame.len().max(CONTROL_REPLY_MAX);
        let is_ata = Frame::new_checked(frame).is_ok_and(|f| f.command() == Command::Ata);
        let Some(a) = is_ata.then(|| AtaRepr::parse(frame).ok()).flatten() else {
            return small;
        };
        let data = match a.command {
            AtaCommand::ReadSectors | AtaCommand::ReadSectorsExt => {
                (a.sectors() as usize).min(self.max_sectors) * SECTOR_SIZE
            }
            AtaCommand::IdentifyDevice => SECTOR_SIZE,
            _ => 0,
        };
        frame.len().max(ATA_HEADER_LEN + data).max(MIN_FRAME_LEN)
    }

    /// Answer the request in `buf[..len]` for export `idx`, writing the reply into `buf`.
    pub fn handle(&self, idx: usize, buf: &mut [u8], len: usize) -> Verdict {
        self.handle_parts(idx, buf, len, &[])
    }

    /// `handle` for a request whose bytes continue in `tail` (a frame that arrived as a chain
    /// of buffers). Only an ATA write reads its tail, writing it to the backend where it
    /// lies; callers gather any other chained request into one buffer first.
    pub fn handle_parts(&self, idx: usize, buf: &mut [u8], len: usize, tail: &[&[u8]]) -> Verdict {
        let Some(ex) = self.exports.get(idx) else {
            return Verdict::Ignore(Ignore::NotOurs);
        };
        ExportStats::add(&ex.stats.frames, 1);
        if len > buf.len() || buf.len() < MIN_FRAME_LEN {
            return Verdict::Ignore(Ignore::Malformed);
        }
        let Ok(frame) = Frame::new_checked(&buf[..len]) else {
            return Verdict::Ignore(Ignore::Malformed);
        };
        let Some(req) = HeaderRepr::parse(&frame) else {
            return Verdict::Ignore(Ignore::Malformed);
        };
        let version = frame.version();
        if req.flags & aoe_common::wire::header::FLAG_RESPONSE != 0 {
            return Verdict::Ignore(Ignore::Response);
        }
        if !ex.matches(req.shelf, req.slot) {
            return Verdict::Ignore(Ignore::NotOurs);
        }
        if !ex.access.mask_allows(&req.src) {
            ExportStats::add(&ex.stats.dropped_acl, 1);
            return Verdict::Ignore(Ignore::Acl);
        }
        let reply = req.reply(self.mac, ex.shelf, ex.slot);
        if version != AOE_VERSION {
            return self.error(ex, buf, len, reply, AoeError::UnsupportedVersion);
        }
        let outcome = match req.command {
            Command::Ata => {
                if req.shelf == SHELF_BROADCAST || req.slot == SLOT_BROADCAST {
                    return Verdict::Ignore(Ignore::BroadcastAta);
                }
                if !ex.access.reservation_allows(&req.src) {
                    return self.error(ex, buf, len, reply, AoeError::TargetReserved);
                }
                ata::execute(ex, self.max_sectors, buf, len, tail)
            }
            Command::QueryConfig => config::handle(self, ex, buf, len),
            Command::MacMaskList => control::mask_list(self, ex, buf, len),
            Command::ReserveRelease => control::reserve_release(self, ex, &req.src, buf, len),
            Command::Unknown(_) => Err(Outcome::Error(AoeError::UnrecognizedCommand)),
        };
        match outcome {
            Ok(n) => self.finish(buf, n, reply),
            Err(Outcome::Ignore(why)) => {
                if why == Ignore::ConfigMismatch {
                    ExportStats::add(&ex.stats.dropped_config_mismatch, 1);
                }
                Verdict::Ignore(why)
            }
            Err(Outcome::Error(e)) => self.error(ex, buf, len, reply, e),
            Err(Outcome::ErrorWithBody(e, n)) => {
                ExportStats::add(&ex.stats.aoe_errors, 1);
                let mut r = reply;
                r.flags |= FLAG_ERROR;
                r.error = e as u8;
                self.finish(buf, n, r)
            }
        }
    }

    /// An AoE error reply: the request's header and arguments (up to the ATA header) with
    /// the E flag and the error code.
    fn error(
        &self,
        ex: &Export,
        buf: &mut [u8],
        len: usize,
        mut reply: HeaderRepr,
        e: AoeError,
    ) -> Verdict {
        ExportStats::add(&ex.stats.aoe_errors, 1);
        reply.flags |= FLAG_ERROR;
        reply.error = e as u8;
        let keep = len.min(aoe_common::wire::ata::ATA_HEADER_LEN);
        self.finish(buf, keep, reply)
    }

    /// Write the reply header and pad to the shortest Ethernet frame.
    fn finish(&self, buf: &mut [u8], n: usize, reply: HeaderRepr) -> Verdict {
        reply.emit(&mut Frame::new_unchecked(&mut buf[..]));
        let n = n.max(aoe_common::wire::header::HEADER_LEN);
        if n < MIN_FRAME_LEN {
            buf[n..MIN_FRAME_LEN].fill(0);
            return Verdict::Reply(MIN_FRAME_LEN);
        }
        Verdict::Reply(n)
    }
}

/// How a command handler ends when it does not produce a plain reply of `n` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ignore(Ignore),
    /// AoE error reply carrying the request's arguments.
    Error(AoeError),
    /// AoE error reply whose body (`n` bytes) the handler already wrote.
    ErrorWithBody(AoeError, usize),
}
