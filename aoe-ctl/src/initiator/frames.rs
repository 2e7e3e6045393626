//! Building request frames, for the initiator and for tests.

use aoe_common::wire::ata::{AtaCommand, AtaRepr, AFLAG_LBA48, AFLAG_WRITE, ATA_HEADER_LEN};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::header::HeaderRepr;
use aoe_common::wire::mask::{self, Directive};
use aoe_common::wire::{reserve, Command, Frame, Mac, SECTOR_SIZE};

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub src: Mac,
    pub dst: Mac,
    pub shelf: u16,
    pub slot: u8,
}

pub const BROADCAST_MAC: Mac = [0xff; 6];

/// Whether `reply` answers a request sent as `a`: a response addressed to `a.src`, and from
/// `a.dst` unless that was the broadcast address. A tag alone is not enough on a shared
/// segment: other initiators' tags can collide with ours, and a raw socket sees their
/// replies too.
pub fn answers<T: AsRef<[u8]>>(reply: &Frame<T>, a: &Addr) -> bool {
    reply.is_response() && reply.dst() == a.src && (a.dst == BROADCAST_MAC || reply.src() == a.dst)
}

fn header(buf: &mut [u8], a: &Addr, command: Command, tag: u32) {
    HeaderRepr {
        dst: a.dst,
        src: a.src,
        flags: 0,
        error: 0,
        shelf: a.shelf,
        slot: a.slot,
        command,
        tag,
    }
    .emit(&mut Frame::new_unchecked(buf));
}

/// An ATA request with `data` after the arguments; returns the frame length.
pub fn ata(buf: &mut [u8], a: &Addr, tag: u32, args: AtaRepr, data: &[u8]) -> usize {
    header(buf, a, Command::Ata, tag);
    args.emit(buf);
    buf[ATA_HEADER_LEN..ATA_HEADER_LEN + data.len()].copy_from_slice(data);
    ATA_HEADER_LEN + data.len()
}

/// READ SECTORS EXT.
pub fn read(buf: &mut [u8], a: &Addr, tag: u32, lba: u64, count: u8) -> usize {
    let args = AtaRepr::new(
        AFLAG_LBA48,
        count,
        AtaCommand::ReadSectorsExt,
        AtaRepr::lba48_regs(lba),
    );
    ata(buf, a, tag, args, &[])
}

/// WRITE SECTORS EXT of `data` (whole sectors).
pub fn write(buf: &mut [u8], a: &Addr, tag: u32, lba: u64, data: &[u8]) -> usize {
    buf[ATA_HEADER_LEN..ATA_HEADER_LEN + data.len()].copy_from_slice(data);
    write_in_place(buf, a, tag, lba, (data.len() / SECTOR_SIZE) as u8)
}

/// WRITE SECTORS EXT of `count` sectors the caller has already put after the headers.
pub fn write_in_place(buf: &mut [u8], a: &Addr, tag: u32, lba: u64, count: u8) -> usize {
    let args = AtaRepr::new(
        AFLAG_LBA48 | AFLAG_WRITE,
        count,
        AtaCommand::WriteSectorsExt,
        AtaRepr::lba48_regs(lba),
    );
    ata(buf, a, tag, args, &[]) + usize::from(count) * SECTOR_SIZE
}

/// IDENTIFY DEVICE, in the LBA28 form initiators use (device register 0xA0).
pub fn identify(buf: &mut [u8], a: &Addr, tag: u32) -> usize {
    let args = AtaRepr::new(0, 1, AtaCommand::IdentifyDevice, [0, 0, 0, 0xA0, 0, 0]);
    ata(buf, a, tag, args, &[])
}

/// Query Config with a subcommand and string.
pub fn config(buf: &mut [u8], a: &Addr, tag: u32, command: ConfigCommand, string: &[u8]) -> usize {
    header(buf, a, Command::QueryConfig, tag);
    let r = ConfigRepr {
        buffer_count: 0,
        firmware: 0,
        sector_count: 0,
        aoe_version: 1,
        command,
        string,
    };
    r.emit(buf);
    r.frame_len()
}

/// MAC Mask List read.
pub fn mask_read(buf: &mut [u8], a: &Addr, tag: u32) -> usize {
    header(buf, a, Command::MacMaskList, tag);
    mask::emit(buf, mask::MCMD_READ, 0, 0, &[])
}

/// MAC Mask List edit.
pub fn mask_edit(buf: &mut [u8], a: &Addr, tag: u32, directives: &[Directive]) -> usize {
    header(buf, a, Command::MacMaskList, tag);
    mask::emit_edit(buf, directives)
}

/// Reserve/Release.
pub fn reserve(buf: &mut [u8], a: &Addr, tag: u32, rcmd: u8, macs: &[Mac]) -> usize {
    header(buf, a, Command::ReserveRelease, tag);
    reserve::emit(buf, rcmd, macs)
}
