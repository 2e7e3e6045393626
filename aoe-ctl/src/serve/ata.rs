//! Command 0: ATA commands against the export's backend.
//!
//! Bad ATA requests get ATA status errors (ERR + ABRT / IDNF), not AoE errors: the Linux
//! initiator retries AoE errors until it declares the device dead.

use aoe_common::wire::ata::{
    self, AtaCommand, AtaRepr, ATA_HEADER_LEN, ERROR_ABRT, ERROR_IDNF, ERROR_UNC, STATUS_DRDY,
    STATUS_ERR,
};
use aoe_common::wire::identify::Identity;
use aoe_common::wire::SECTOR_SIZE;

use super::engine::{Ignore, Outcome};
use super::export::{Export, ExportStats, FIRMWARE_STRING, MODEL};

/// Most pieces a write's payload may arrive in (the worker's longest descriptor chain).
pub const MAX_WRITE_PARTS: usize = 32;

/// Execute the ATA request in `buf[..len]`, whose payload may continue in `tail` (a write
/// that arrived as a chain of buffers); returns the reply length (written into `buf`).
pub fn execute(
    ex: &Export,
    max_sectors: usize,
    buf: &mut [u8],
    len: usize,
    tail: &[&[u8]],
) -> Result<usize, Outcome> {
    let Ok(a) = AtaRepr::parse(&buf[..len]) else {
        return Err(Outcome::Ignore(Ignore::Malformed));
    };
    let (status, error, n) = run(ex, max_sectors, &a, buf, len, tail);
    if status & STATUS_ERR != 0 {
        ExportStats::add(&ex.stats.ata_errors, 1);
    }
    ata::set_status(buf, status, error);
    Ok(n)
}

const OK: u8 = STATUS_DRDY;
const FAIL: u8 = STATUS_DRDY | STATUS_ERR;

fn run(
    ex: &Export,
    max_sectors: usize,
    a: &AtaRepr,
    buf: &mut [u8],
    len: usize,
    tail: &[&[u8]],
) -> (u8, u8, usize) {
    let h = ATA_HEADER_LEN;
    match a.command {
        AtaCommand::ReadSectors | AtaCommand::ReadSectorsExt => {
            let count = a.sectors() as usize;
            let bytes = count * SECTOR_SIZE;
            if count > max_sectors || h + bytes > buf.len() {
                return (FAIL, ERROR_ABRT, h);
            }
            if !in_range(ex, a.lba(), count) {
                return (FAIL, ERROR_IDNF, h);
            }
            if ex.backend.read_at(a.lba(), &mut buf[h..h + bytes]).is_err() {
                return (FAIL, ERROR_UNC, h);
            }
            ExportStats::add(&ex.stats.reads, 1);
            ExportStats::add(&ex.stats.bytes_read, bytes as u64);
            (OK, 0, h + bytes)
        }
        AtaCommand::WriteSectors | AtaCommand::WriteSectorsExt => {
            let count = a.sectors() as usize;
            let bytes = count * SECTOR_SIZE;
            // A short payload or a count the frame cannot carry: nothing is written.
            let mut parts: [&[u8]; MAX_WRITE_PARTS] = [&[]; MAX_WRITE_PARTS];
            let Some(n) = payload(&buf[h..len.max(h)], tail, bytes, &mut parts) else {
                return (FAIL, ERROR_ABRT, h);
            };
            if ex.read_only || count > max_sectors {
                return (FAIL, ERROR_ABRT, h);
            }
            if !in_range(ex, a.lba(), count) {
                return (FAIL, ERROR_IDNF, h);
            }
            if ex.backend.write_parts_at(a.lba(), &parts[..n]).is_err() {
                return (FAIL, ERROR_ABRT, h);
            }
            if ex.sync && ex.backend.sync_range(a.lba(), bytes).is_err() {
                return (FAIL, ERROR_ABRT, h);
            }
            ExportStats::add(&ex.stats.writes, 1);
            ExportStats::add(&ex.stats.bytes_written, bytes as u64);
            (OK, 0, h)
        }
        AtaCommand::IdentifyDevice => {
            if h + SECTOR_SIZE > buf.len() {
                return (FAIL, ERROR_ABRT, h);
            }
            let out: &mut [u8; SECTOR_SIZE] = (&mut buf[h..h + SECTOR_SIZE]).try_into().unwrap();
            Identity {
                sectors: ex.backend.sectors(),
                serial: ex.serial(),
                firmware: FIRMWARE_STRING,
                model: MODEL,
            }
            .emit(out);
            (OK, 0, h + SECTOR_SIZE)
        }
        AtaCommand::FlushCache | AtaCommand::FlushCacheExt => match ex.backend.flush() {
            Ok(()) => (OK, 0, h),
            Err(_) => (FAIL, ERROR_ABRT, h),
        },
        AtaCommand::CheckPowerMode => {
            // Sector count 0xFF: active or idle.
            buf[ata::field::SECTOR_COUNT] = 0xFF;
            (OK, 0, h)
        }
        AtaCommand::Unknown(_) => (FAIL, ERROR_ABRT, h),
    }
}

/// The first `bytes` of `head` followed by `tail`, as slices in `parts`; how many, or None
/// when they carry fewer bytes (or come in more pieces than `parts` holds).
fn payload<'a>(
    head: &'a [u8],
    tail: &[&'a [u8]],
    bytes: usize,
    parts: &mut [&'a [u8]; MAX_WRITE_PARTS],
) -> Option<usize> {
    let mut need = bytes;
    let mut n = 0;
    for piece in std::iter::once(head).chain(tail.iter().copied()) {
        if need == 0 {
            break;
        }
        let take = piece.len().min(need);
        *parts.get_mut(n)? = &piece[..take];
        n += 1;
        need -= take;
    }
    (need == 0).then_some(n)
}

fn in_range(ex: &Export, lba: u64, count: usize) -> bool {
    lba.checked_add(count as u64)
        .is_some_and(|end| end <= ex.backend.sectors())
}
