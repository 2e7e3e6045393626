//! Command 0: ATA. Arguments at bytes 24..36, sector data from byte 36.

use super::header::HEADER_LEN;
use super::Truncated;

/// Byte offsets of the ATA arguments, counted from the start of the frame.
pub mod field {
    pub const AFLAGS: usize = 24;
    /// Error register in replies, feature register in requests.
    pub const ERR_FEATURE: usize = 25;
    pub const SECTOR_COUNT: usize = 26;
    /// Command register in requests, status register in replies.
    pub const CMD_STATUS: usize = 27;
    /// lba0 (least significant) .. lba5.
    pub const LBA: usize = 28;
    pub const DATA: usize = 36;
}

/// Length of Ethernet + AoE + ATA arguments.
pub const ATA_HEADER_LEN: usize = field::DATA;

/// aflags bits.
pub const AFLAG_LBA48: u8 = 0x40;
pub const AFLAG_DEVICE: u8 = 0x10;
pub const AFLAG_ASYNC: u8 = 0x02;
pub const AFLAG_WRITE: u8 = 0x01;

/// ATA status register bits.
pub const STATUS_BSY: u8 = 0x80;
pub const STATUS_DRDY: u8 = 0x40;
pub const STATUS_DF: u8 = 0x20;
pub const STATUS_DRQ: u8 = 0x08;
pub const STATUS_ERR: u8 = 0x01;

/// ATA error register bits.
pub const ERROR_UNC: u8 = 0x40;
pub const ERROR_IDNF: u8 = 0x10;
pub const ERROR_ABRT: u8 = 0x04;

/// The ATA opcodes an AoE target meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaCommand {
    ReadSectors,
    ReadSectorsExt,
    WriteSectors,
    WriteSectorsExt,
    IdentifyDevice,
    FlushCache,
    FlushCacheExt,
    CheckPowerMode,
    Unknown(u8),
}

impl From<u8> for AtaCommand {
    fn from(v: u8) -> Self {
        match v {
            0x20 => AtaCommand::ReadSectors,
            0x24 => AtaCommand::ReadSectorsExt,
            0x30 => AtaCommand::WriteSectors,
            0x34 => AtaCommand::WriteSectorsExt,
            0xEC => AtaCommand::IdentifyDevice,
            0xE7 => AtaCommand::FlushCache,
            0xEA => AtaCommand::FlushCacheExt,
            0xE5 => AtaCommand::CheckPowerMode,
            other => AtaCommand::Unknown(other),
        }
    }
}

impl From<AtaCommand> for u8 {
    fn from(c: AtaCommand) -> u8 {
        match c {
            AtaCommand::ReadSectors => 0x20,
            AtaCommand::ReadSectorsExt => 0x24,
            AtaCommand::WriteSectors => 0x30,
            AtaCommand::WriteSectorsExt => 0x34,
            AtaCommand::IdentifyDevice => 0xEC,
            AtaCommand::FlushCache => 0xE7,
            AtaCommand::FlushCacheExt => 0xEA,
            AtaCommand::CheckPowerMode => 0xE5,
            AtaCommand::Unknown(v) => v,
        }
    }
}

/// The ATA arguments of a request, as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtaRepr {
    pub aflags: u8,
    pub feature: u8,
    pub sector_count: u8,
    pub command: AtaCommand,
    /// The six LBA registers as sent (lba0 first).
    pub lba_regs: [u8; 6],
}

impl AtaRepr {
    /// A request's arguments (feature register 0).
    pub fn new(aflags: u8, sector_count: u8, command: AtaCommand, lba_regs: [u8; 6]) -> AtaRepr {
        AtaRepr {
            aflags,
            feature: 0,
            sector_count,
            command,
            lba_regs,
        }
    }

    /// Parse the ATA arguments of a whole frame.
    pub fn parse(frame: &[u8]) -> Result<AtaRepr, Truncated> {
        if frame.len() < ATA_HEADER_LEN {
            return Err(Truncated);
        }
        let mut lba_regs = [0u8; 6];
        lba_regs.copy_from_slice(&frame[field::LBA..field::LBA + 6]);
        Ok(AtaRepr {
            aflags: frame[field::AFLAGS],
            feature: frame[field::ERR_FEATURE],
            sector_count: frame[field::SECTOR_COUNT],
            command: AtaCommand::from(frame[field::CMD_STATUS]),
            lba_regs,
        })
    }

    pub fn is_lba48(&self) -> bool {
        self.aflags & AFLAG_LBA48 != 0
    }

    pub fn is_write(&self) -> bool {
        self.aflags & AFLAG_WRITE != 0
    }

    /// The addressed LBA: 48 bits with the E flag, else 28 (lba3's high nibble is the
    /// device/head register, not address).
    pub fn lba(&self) -> u64 {
        let r = &self.lba_regs;
        if self.is_lba48() {
            u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], 0, 0])
        } else {
            u64::from_le_bytes([r[0], r[1], r[2], r[3] & 0x0F, 0, 0, 0, 0])
        }
    }

    /// The sector count as ATA defines it: 0 means 256 (LBA28) or 65536 (LBA48).
    /// AoE carries only the low byte, so LBA48 counts above 255 cannot be expressed.
    pub fn sectors(&self) -> u32 {
        match (self.sector_count, self.is_lba48()) {
            (0, false) => 256,
            (0, true) => 65536,
            (n, _) => u32::from(n),
        }
    }

    /// Write these arguments into a request frame.
    pub fn emit(&self, frame: &mut [u8]) {
        frame[field::AFLAGS] = self.aflags;
        frame[field::ERR_FEATURE] = self.feature;
        frame[field::SECTOR_COUNT] = self.sector_count;
        frame[field::CMD_STATUS] = self.command.into();
        frame[field::LBA..field::LBA + 6].copy_from_slice(&self.lba_regs);
        frame[field::LBA + 6] = 0;
        frame[field::LBA + 7] = 0;
    }

    /// Registers for an LBA48 request.
    pub fn lba48_regs(lba: u64) -> [u8; 6] {
        let b = lba.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }
}

/// Write the status and error registers of a reply (the other arguments stay as the request
/// had them, as real targets do).
pub fn set_status(frame: &mut [u8], status: u8, error: u8) {
    frame[field::CMD_STATUS] = status;
    frame[field::ERR_FEATURE] = error;
}

/// The ATA reply registers of a reply frame: (status, error).
pub fn status(frame: &[u8]) -> Result<(u8, u8), Truncated> {
    if frame.len() < ATA_HEADER_LEN {
        return Err(Truncated);
    }
    Ok((frame[field::CMD_STATUS], frame[field::ERR_FEATURE]))
}

const _: () = assert!(HEADER_LEN == field::AFLAGS);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_with(arg: [u8; 12]) -> [u8; 36] {
        let mut f = [0u8; 36];
        f[12] = 0x88;
        f[13] = 0xa2;
        f[14] = 0x10;
        f[24..36].copy_from_slice(&arg);
        f
    }

    #[test]
    fn read_ext_lba48() {
        // READ SECTORS EXT of 2 sectors at LBA 0x0000_0102_0304 as Linux sends it.
        let f = frame_with([
            0x40, // aflags: E (LBA48)
            0x00, // feature
            0x02, // sector count
            0x24, // READ SECTORS EXT
            0x04, 0x03, 0x02, 0x01, 0x00, 0x00, // lba0..lba5
            0x00, 0x00, // reserved
        ]);
        let a = AtaRepr::parse(&f).unwrap();
        assert_eq!(a.command, AtaCommand::ReadSectorsExt);
        assert!(a.is_lba48());
        assert!(!a.is_write());
        assert_eq!(a.lba(), 0x0102_0304);
        assert_eq!(a.sectors(), 2);
    }

    #[test]
    fn lba28_ignores_device_nibble() {
        // IDENTIFY-style device register in lba3 (0xE0 | lba[27:24]).
        let f = frame_with([
            0x00, 0x00, 0x01, 0x20, // aflags none, READ SECTORS, 1 sector
            0x78, 0x56, 0x34, 0xE2, // lba 0x0234_5678 with device bits 0xE0
            0xAA, 0xBB, // lba4/5 must be ignored without E
            0x00, 0x00,
        ]);
        let a = AtaRepr::parse(&f).unwrap();
        assert_eq!(a.command, AtaCommand::ReadSectors);
        assert_eq!(a.lba(), 0x0234_5678);
    }

    #[test]
    fn write_flag_and_zero_count() {
        let f = frame_with([0x41, 0, 0, 0x34, 0, 0, 0, 0, 0, 0, 0, 0]);
        let a = AtaRepr::parse(&f).unwrap();
        assert!(a.is_write());
        assert_eq!(a.command, AtaCommand::WriteSectorsExt);
        assert_eq!(a.sectors(), 65536);
        let f = frame_with([0x01, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(AtaRepr::parse(&f).unwrap().sectors(), 256);
    }

    #[test]
    fn emit_matches_spec_bytes() {
        let mut f = [0xa5u8; 36];
        AtaRepr::new(
            AFLAG_LBA48 | AFLAG_WRITE,
            17,
            AtaCommand::WriteSectorsExt,
            AtaRepr::lba48_regs(0x0000_1122_3344_5566),
        )
        .emit(&mut f);
        assert_eq!(
            &f[24..36],
            &[0x41, 0x00, 0x11, 0x34, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0x00]
        );
    }

    #[test]
    fn truncated() {
        assert_eq!(AtaRepr::parse(&[0u8; 35]).unwrap_err(), Truncated);
        assert_eq!(status(&[0u8; 30]).unwrap_err(), Truncated);
    }

    #[test]
    fn unknown_opcode_survives() {
        let f = frame_with([0, 0, 1, 0xC8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            AtaRepr::parse(&f).unwrap().command,
            AtaCommand::Unknown(0xC8)
        );
    }
}
