//! Execute command 1, Query Config: all five subcommands against the export's string.

use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::{AoeError, AOE_VERSION};

use super::export::{Export, FIRMWARE_VERSION};
use super::reply::Completion;
use super::request::Ignore;

/// A read, test or test-prefix against the export's string (sets are `set`).
pub fn execute(ex: &Export, req: &ConfigRepr) -> Completion {
    match req.command {
        ConfigCommand::Read => Completion::Config { error: None },
        ConfigCommand::Test if req.string != ex.config().as_slice() => {
            Completion::Ignore(Ignore::ConfigMismatch)
        }
        ConfigCommand::TestPrefix if !ex.config().starts_with(req.string) => {
            Completion::Ignore(Ignore::ConfigMismatch)
        }
        ConfigCommand::Test | ConfigCommand::TestPrefix => Completion::Config { error: None },
        ConfigCommand::SetIfEmpty | ConfigCommand::ForceSet => set(&mut ex.config().clone(), req),
        ConfigCommand::Unknown(_) => Completion::Error(AoeError::BadArgument),
    }
}

/// A set or force set, applied to `cur` (a copy: the caller publishes it once kept).
pub fn set(cur: &mut Vec<u8>, req: &ConfigRepr) -> Completion {
    let allowed =
        req.command == ConfigCommand::ForceSet || cur.is_empty() || cur.as_slice() == req.string;
    if !allowed {
        // Replies, errors included, carry the current string.
        return Completion::Config {
            error: Some(AoeError::ConfigStringPresent),
        };
    }
    if cur.as_slice() != req.string {
        *cur = req.string.to_vec();
    }
    Completion::Config { error: None }
}

/// Write the config arguments and current string at byte 24; returns the frame length.
/// The kernel's reply template is built with this too, so both paths answer alike.
pub fn write_reply(ex: &Export, max_sectors: usize, buf: &mut [u8]) -> usize {
    let cur = ex.config();
    let r = ConfigRepr {
        buffer_count: ex.buffers,
        firmware: FIRMWARE_VERSION,
        sector_count: max_sectors.min(255) as u8,
        aoe_version: AOE_VERSION,
        command: ConfigCommand::Read,
        string: cur.as_slice(),
    };
    r.emit(buf);
    r.frame_len()
}
