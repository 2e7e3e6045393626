//! Respond: the one place a reply is written. Executors say what happened (`Completion`);
//! this writes the header, the command's arguments and status, pads to the shortest
//! Ethernet frame and counts the answer.

use aoe_common::wire::ata::{self, ATA_HEADER_LEN, STATUS_ERR};
use aoe_common::wire::header::{HeaderRepr, FLAG_ERROR, HEADER_LEN};
use aoe_common::wire::mask::{self, MASK_HEADER_LEN};
use aoe_common::wire::{reserve, AoeError, Frame, Mac, MIN_FRAME_LEN};

use super::access::MaskEditError;
use super::ata::StorageIo;
use super::backend::Kind;
use super::config;
use super::export::{Export, ExportStats};
use super::request::Ignore;

/// The longest reply to anything but an ATA read: a mask list of 255 entries (a config
/// reply is at most 1056 bytes).
pub const CONTROL_REPLY_MAX: usize = HEADER_LEN + 4 + 255 * 8;

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the first `n` bytes of the buffer.
    Reply(usize),
    Ignore(Ignore),
    /// Handed to the control plane; its reply leaves from there. The buffer is free again.
    Pending,
    /// Checked, and waiting for storage I/O: the caller's ring does it, and `ata::complete`
    /// writes the reply. The buffer stays the request's until then.
    Io(StorageIo),
}

/// The outcome of executing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// ATA status and error registers; `data` bytes after the ATA header are already in
    /// the buffer (a read's sectors, IDENTIFY's page). `sector_count` overrides that
    /// register (CHECK POWER MODE).
    Ata {
        status: u8,
        error: u8,
        data: usize,
        sector_count: Option<u8>,
    },
    /// A config reply carrying the current string, with an AoE error when a set was refused.
    Config {
        error: Option<AoeError>,
    },
    /// A mask list reply: the list after the command, or the directive that failed (the
    /// request's directives up to it stay in the reply).
    Mask {
        mcmd: u8,
        result: Result<Vec<Mac>, MaskEditError>,
    },
    /// A reserve reply: the list after the command (before it, with an error).
    Reserve {
        rcmd: u8,
        list: Vec<Mac>,
        error: Option<AoeError>,
    },
    /// An AoE error reply carrying the request's arguments.
    Error(AoeError),
    Ignore(Ignore),
    /// Storage I/O to do before the reply (`Verdict::Io`); `ticket` is a read's kernel
    /// cache ticket.
    Storage {
        kind: Kind,
        lba: u64,
        bytes: usize,
        ticket: u64,
    },
}

/// Who answers: our MAC on this interface and the sectors one frame carries there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responder {
    pub mac: Mac,
    pub max_sectors: usize,
}

impl Responder {
    /// Write the reply to `request` (whose frame is `buf[..len]`) into `buf`.
    pub fn respond(
        &self,
        ex: &Export,
        request: &HeaderRepr,
        done: Completion,
        buf: &mut [u8],
        len: usize,
    ) -> Verdict {
        let mut header = request.reply(self.mac, ex.shelf, ex.slot);
        let error = |e: AoeError, header: &mut HeaderRepr| {
            ExportStats::add(&ex.stats.aoe_errors, 1);
            header.flags |= FLAG_ERROR;
            header.error = e as u8;
        };
        let n = match done {
            Completion::Storage {
                kind,
                lba,
                bytes,
                ticket,
            } => {
                return Verdict::Io(StorageIo {
                    kind,
                    lba,
                    bytes,
                    header: *request,
                    started: super::latency::now(),
                    ticket,
                })
            }
            Completion::Ignore(why) => {
                if why == Ignore::ConfigMismatch {
                    ExportStats::add(&ex.stats.dropped_config_mismatch, 1);
                }
                return Verdict::Ignore(why);
            }
            Completion::Ata {
                status,
                error,
                data,
                sector_count,
            } => {
                if status & STATUS_ERR != 0 {
                    ExportStats::add(&ex.stats.ata_errors, 1);
                }
                ata::set_status(buf, status, error);
                if let Some(c) = sector_count {
                    buf[ata::field::SECTOR_COUNT] = c;
                }
                ATA_HEADER_LEN + data
            }
            Completion::Config { error: e } => {
                ExportStats::add(&ex.stats.config_replies, 1);
                if let Some(e) = e {
                    error(e, &mut header);
                }
                config::write_reply(ex, self.max_sectors, buf)
            }
            Completion::Mask { mcmd, result } => match result {
                Ok(list) => mask::emit(buf, mcmd, 0, list.len() as u8, &list),
                Err(e) => {
                    buf[mask::field::MERROR] = e.merror;
                    buf[mask::field::DIR_COUNT] = e.index;
                    MASK_HEADER_LEN + usize::from(e.index) * mask::DIRECTIVE_LEN
                }
            },
            Completion::Reserve {
                rcmd,
                list,
                error: e,
            } => {
                if let Some(e) = e {
                    error(e, &mut header);
                }
                reserve::emit(buf, rcmd, &list)
            }
            Completion::Error(e) => {
                error(e, &mut header);
                len.min(ATA_HEADER_LEN)
            }
        };
        finish(buf, n, header)
    }
}

/// Write the reply header and pad to the shortest Ethernet frame.
fn finish(buf: &mut [u8], n: usize, header: HeaderRepr) -> Verdict {
    header.emit(&mut Frame::new_unchecked(&mut buf[..]));
    let n = n.max(HEADER_LEN);
    if n < MIN_FRAME_LEN {
        buf[n..MIN_FRAME_LEN].fill(0);
        return Verdict::Reply(MIN_FRAME_LEN);
    }
    Verdict::Reply(n)
}
