//! Command 1: Query Config, all five subcommands.

use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::{AoeError, AOE_VERSION};

use super::engine::{Engine, Ignore, Outcome};
use super::export::{Export, ExportStats, FIRMWARE_VERSION};

pub fn handle(engine: &Engine, ex: &Export, buf: &mut [u8], len: usize) -> Result<usize, Outcome> {
    let Ok(req) = ConfigRepr::parse(&buf[..len]) else {
        return Err(Outcome::Ignore(Ignore::Malformed));
    };
    let mut error = None;
    match req.command {
        ConfigCommand::Read => {}
        ConfigCommand::Test => {
            if req.string != ex.config().as_slice() {
                return Err(Outcome::Ignore(Ignore::ConfigMismatch));
            }
        }
        ConfigCommand::TestPrefix => {
            if !ex.config().starts_with(req.string) {
                return Err(Outcome::Ignore(Ignore::ConfigMismatch));
            }
        }
        ConfigCommand::SetIfEmpty | ConfigCommand::ForceSet => {
            let mut cur = ex.config_mut();
            let allowed = req.command == ConfigCommand::ForceSet
                || cur.is_empty()
                || cur.as_slice() == req.string;
            if allowed {
                if cur.as_slice() != req.string {
                    *cur = req.string.to_vec();
                    drop(cur);
                    engine.changed(ex);
                }
            } else {
                error = Some(AoeError::ConfigStringPresent);
            }
        }
        ConfigCommand::Unknown(_) => return Err(Outcome::Error(AoeError::BadArgument)),
    }
    // Replies, errors included, carry the current string.
    let n = write_reply(ex, engine.max_sectors(), buf);
    ExportStats::add(&ex.stats.config_replies, 1);
    match error {
        Some(e) => Err(Outcome::ErrorWithBody(e, n)),
        None => Ok(n),
    }
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
