//! Command 0: ATA. Arguments at bytes 24..36, sector data from byte 36.

use super::header::HEADER_LEN;
use super::Truncated;

/// Byte offsets of the ATA arguments, counted from the start of the frame.
pub mod field {
    use crate::wire::Field;

    pub const AFLAGS: usize = 24;
    /// Error register in replies, feature register in requests.
    pub const ERR_FEATURE: usize = 25;
    pub const SECTOR_COUNT: usize = 26;
    /// Command register in requests, status register in replies.
    pub const CMD_STATUS: usize = 27;
    /// lba0 (least significant) .. lba5.
    pub const LBA_BYTES: Field = 28..34;
    pub const LBA: usize = LBA_BYTES.start;
    /// Two reserved bytes, zero in requests.
    pub const RESERVED_BYTES: Field = 34..36;
    /// Sector data, to the end of the frame.
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

/// ATA opcodes this target implements.
pub const OP_READ_SECTORS: u8 = 0x20;
pub const OP_READ_SECTORS_EXT: u8 = 0x24;
pub const OP_WRITE_SECTORS: u8 = 0x30;
pub const OP_WRITE_SECTORS_EXT: u8 = 0x34;
pub const OP_IDENTIFY_DEVICE: u8 = 0xEC;
pub const OP_FLUSH_CACHE: u8 = 0xE7;
pub const OP_FLUSH_CACHE_EXT: u8 = 0xEA;
pub const OP_CHECK_POWER_MODE: u8 = 0xE5;

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
            OP_READ_SECTORS => AtaCommand::ReadSectors,
            OP_READ_SECTORS_EXT => AtaCommand::ReadSectorsExt,
            OP_WRITE_SECTORS => AtaCommand::WriteSectors,
            OP_WRITE_SECTORS_EXT => AtaCommand::WriteSectorsExt,
            OP_IDENTIFY_DEVICE => AtaCommand::IdentifyDevice,
            OP_FLUSH_CACHE => AtaCommand::FlushCache,
            OP_FLUSH_CACHE_EXT => AtaCommand::FlushCacheExt,
            OP_CHECK_POWER_MODE => AtaCommand::CheckPowerMode,
            other => AtaCommand::Unknown(other),
        }
    }
}

impl From<AtaCommand> for u8 {
    fn from(c: AtaCommand) -> u8 {
        match c {
            AtaCommand::ReadSectors => OP_READ_SECTORS,
            AtaCommand::ReadSectorsExt => OP_READ_SECTORS_EXT,
            AtaCommand::WriteSectors => OP_WRITE_SECTORS,
            AtaCommand::WriteSectorsExt => OP_WRITE_SECTORS_EXT,
            AtaCommand::IdentifyDevice => OP_IDENTIFY_DEVICE,
            AtaCommand::FlushCache => OP_FLUSH_CACHE,
            AtaCommand::FlushCacheExt => OP_FLUSH_CACHE_EXT,
            AtaCommand::CheckPowerMode => OP_CHECK_POWER_MODE,
            AtaCommand::Unknown(v) => v,
        }
    }
}

super::checked_view!(
    /// A view of an ATA request or reply (the whole frame, header included).
    Packet,
    "Wrap a buffer that holds the ATA arguments."
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The arguments must be there. The sector count says nothing about the data here:
    /// reads carry none, and a write's data may continue in further buffers (jumbo
    /// fragments), so the engine checks it against what arrived.
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.b().len() < ATA_HEADER_LEN {
            return Err(Truncated);
        }
        Ok(())
    }

    pub fn aflags(&self) -> u8 {
        self.b()[field::AFLAGS]
    }
    pub fn is_lba48(&self) -> bool {
        self.aflags() & AFLAG_LBA48 != 0
    }
    pub fn is_write(&self) -> bool {
        self.aflags() & AFLAG_WRITE != 0
    }
    pub fn is_async(&self) -> bool {
        self.aflags() & AFLAG_ASYNC != 0
    }
    /// The feature register (requests).
    pub fn feature(&self) -> u8 {
        self.b()[field::ERR_FEATURE]
    }
    /// The error register (replies); the same byte as `feature`.
    pub fn error(&self) -> u8 {
        self.b()[field::ERR_FEATURE]
    }
    pub fn sector_count(&self) -> u8 {
        self.b()[field::SECTOR_COUNT]
    }
    /// The command register (requests).
    pub fn command(&self) -> AtaCommand {
        AtaCommand::from(self.b()[field::CMD_STATUS])
    }
    /// The status register (replies); the same byte as `command`.
    pub fn status(&self) -> u8 {
        self.b()[field::CMD_STATUS]
    }
    /// The six LBA registers, lba0 first.
    pub fn lba_regs(&self) -> [u8; 6] {
        let mut r = [0u8; 6];
        r.copy_from_slice(&self.b()[field::LBA_BYTES]);
        r
    }
    /// Sector data (writes, read replies); possibly empty.
    pub fn data(&self) -> &[u8] {
        &self.b()[field::DATA..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_aflags(&mut self, v: u8) {
        self.bm()[field::AFLAGS] = v;
    }
    pub fn set_feature(&mut self, v: u8) {
        self.bm()[field::ERR_FEATURE] = v;
    }
    pub fn set_error(&mut self, v: u8) {
        self.bm()[field::ERR_FEATURE] = v;
    }
    pub fn set_sector_count(&mut self, v: u8) {
        self.bm()[field::SECTOR_COUNT] = v;
    }
    pub fn set_command(&mut self, c: AtaCommand) {
        self.bm()[field::CMD_STATUS] = c.into();
    }
    pub fn set_status(&mut self, v: u8) {
        self.bm()[field::CMD_STATUS] = v;
    }
    pub fn set_lba_regs(&mut self, regs: [u8; 6]) {
        self.bm()[field::LBA_BYTES].copy_from_slice(&regs);
    }
    pub fn clear_reserved(&mut self) {
        self.bm()[field::RESERVED_BYTES].fill(0);
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bm()[field::DATA..]
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
        Ok(AtaRepr::from_packet(&Packet::new_checked(frame)?))
    }

    /// The arguments of a checked view.
    pub fn from_packet<T: AsRef<[u8]>>(p: &Packet<T>) -> AtaRepr {
        AtaRepr {
            aflags: p.aflags(),
            feature: p.feature(),
            sector_count: p.sector_count(),
            command: p.command(),
            lba_regs: p.lba_regs(),
        }
    }

    /// Bytes the arguments occupy from the start of the frame (the data is not ours).
    pub const fn buffer_len(&self) -> usize {
        ATA_HEADER_LEN
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

    /// Write these arguments into a request frame of at least `buffer_len()` bytes.
    pub fn emit(&self, frame: &mut [u8]) {
        self.emit_packet(&mut Packet::new_unchecked(frame));
    }

    /// Write these arguments through a view.
    pub fn emit_packet<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_aflags(self.aflags);
        p.set_feature(self.feature);
        p.set_sector_count(self.sector_count);
        p.set_command(self.command);
        p.set_lba_regs(self.lba_regs);
        p.clear_reserved();
    }

    /// Registers for an LBA48 request.
    pub fn lba48_regs(lba: u64) -> [u8; 6] {
        let b = lba.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }
}

/// Write the status and error registers of a reply (the other arguments stay as the request
/// had them, as real targets do); `frame` holds at least `ATA_HEADER_LEN` bytes.
pub fn set_status(frame: &mut [u8], status: u8, error: u8) {
    let mut p = Packet::new_unchecked(frame);
    p.set_status(status);
    p.set_error(error);
}

/// The ATA reply registers of a reply frame: (status, error).
pub fn status(frame: &[u8]) -> Result<(u8, u8), Truncated> {
    let p = Packet::new_checked(frame)?;
    Ok((p.status(), p.error()))
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
    fn view_reads_the_registers() {
        // A reply to READ SECTORS: status DRDY|ERR, error ABRT, then one data byte.
        let mut f = [0u8; 37];
        f[..36].copy_from_slice(&frame_with([
            0x00, 0x04, 0x01, 0x41, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x00, 0x00,
        ]));
        f[36] = 0xee;
        let p = Packet::new_checked(&f[..]).unwrap();
        assert_eq!(p.status(), STATUS_DRDY | STATUS_ERR);
        assert_eq!(p.error(), ERROR_ABRT);
        assert_eq!(p.sector_count(), 1);
        assert_eq!(p.lba_regs(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(p.data(), &[0xee]);
        assert!(!p.is_lba48() && !p.is_write() && !p.is_async());
    }

    #[test]
    fn every_prefix_of_a_valid_frame() {
        let f = frame_with([0x41, 0, 2, 0x34, 1, 2, 3, 4, 5, 6, 0, 0]);
        for n in 0..ATA_HEADER_LEN {
            assert_eq!(Packet::new_checked(&f[..n]).unwrap_err(), Truncated, "{n}");
            assert_eq!(AtaRepr::parse(&f[..n]).unwrap_err(), Truncated, "{n}");
            assert_eq!(status(&f[..n]).unwrap_err(), Truncated, "{n}");
        }
        let a = AtaRepr::parse(&f).unwrap();
        assert_eq!(a.buffer_len(), f.len());
        let mut out = [0xa5u8; 36];
        a.emit(&mut out);
        assert_eq!(out[24..], f[24..]);
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
