//! IDENTIFY DEVICE data: 256 little-endian words (512 bytes) as the Linux initiator and
//! iPXE read them.

use super::{Field, Truncated, SECTOR_SIZE};

/// Word numbers that matter (byte offset `2 * word` in the data).
pub mod word {
    pub const CONFIG: usize = 0;
    pub const SERIAL: usize = 10; // 10..20
    pub const FIRMWARE: usize = 23; // 23..27
    pub const MODEL: usize = 27; // 27..47
    pub const CAPABILITIES: usize = 49;
    pub const LBA28_CAPACITY: usize = 60; // 60..62
    pub const COMMAND_SET_2: usize = 83;
    pub const COMMAND_SET_EXT: usize = 84;
    pub const COMMAND_SET_2_ENABLED: usize = 86;
    pub const LBA48_CAPACITY: usize = 100; // 100..104
}

/// Word 83/86 bit 10: the 48-bit address feature set.
pub const LBA48_SUPPORTED: u16 = 1 << 10;
/// Word 83/86 bit 13: FLUSH CACHE EXT.
pub const FLUSH_EXT_SUPPORTED: u16 = 1 << 13;
/// Word 83/84 bits 15:14 = 01: the word is valid.
const WORD_VALID: u16 = 1 << 14;
/// Largest LBA28 capacity.
pub const LBA28_MAX_SECTORS: u64 = 0x0FFF_FFFF;
/// Words in the data.
pub const WORDS: usize = SECTOR_SIZE / 2;

/// Byte ranges of the fields, counted from the start of the IDENTIFY data (the first byte
/// of the ATA data area of the reply, not of the frame).
pub mod field {
    use super::word;
    use crate::wire::Field;

    const fn words(first: usize, n: usize) -> Field {
        2 * first..2 * (first + n)
    }
    pub const SERIAL: Field = words(word::SERIAL, 10);
    pub const FIRMWARE: Field = words(word::FIRMWARE, 4);
    pub const MODEL: Field = words(word::MODEL, 20);
    pub const LBA28_CAPACITY: Field = words(word::LBA28_CAPACITY, 2);
    pub const LBA48_CAPACITY: Field = words(word::LBA48_CAPACITY, 4);
}

super::checked_view!(
    /// A view of the 512 bytes of IDENTIFY data.
    Packet,
    "Wrap a buffer holding the whole data block."
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// No length field: all 256 words must be there.
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.b().len() < SECTOR_SIZE {
            return Err(Truncated);
        }
        Ok(())
    }

    /// Word `n`, `None` past the 256th.
    pub fn word(&self, n: usize) -> Option<u16> {
        if n >= WORDS {
            return None;
        }
        let b = self.b().get(2 * n..2 * n + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn w(&self, n: usize) -> u16 {
        let b = self.b();
        u16::from_le_bytes([b[2 * n], b[2 * n + 1]])
    }

    /// The 48-bit feature set is both supported and enabled (words 83 and 86).
    pub fn lba48(&self) -> bool {
        self.w(word::COMMAND_SET_2) & LBA48_SUPPORTED != 0
            && self.w(word::COMMAND_SET_2_ENABLED) & LBA48_SUPPORTED != 0
    }

    /// Capacity in sectors: words 100..104 with LBA48, else 60..62, as Linux reads it.
    pub fn sectors(&self) -> u64 {
        if self.lba48() {
            (0..4).fold(0u64, |acc, i| {
                acc | u64::from(self.w(word::LBA48_CAPACITY + i)) << (16 * i)
            })
        } else {
            u64::from(self.w(word::LBA28_CAPACITY))
                | u64::from(self.w(word::LBA28_CAPACITY + 1)) << 16
        }
    }

    pub fn serial(&self) -> [u8; 20] {
        self.string(field::SERIAL.start)
    }
    pub fn firmware(&self) -> [u8; 8] {
        self.string(field::FIRMWARE.start)
    }
    pub fn model(&self) -> [u8; 40] {
        self.string(field::MODEL.start)
    }

    /// ATA strings are space-padded with the two bytes of each word swapped.
    fn string<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.b()[at + (i ^ 1)];
        }
        out
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put_word(&mut self, n: usize, v: u16) {
        self.buffer.as_mut()[2 * n..2 * n + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_string(&mut self, at: Field, s: &[u8]) {
        let b = &mut self.buffer.as_mut()[at];
        for i in 0..b.len() {
            b[i ^ 1] = s.get(i).copied().unwrap_or(b' ');
        }
    }

    /// Both capacities: LBA28 saturated at 0x0FFFFFFF, LBA48 in full.
    pub fn set_sectors(&mut self, sectors: u64) {
        let lba28 = sectors.min(LBA28_MAX_SECTORS) as u32;
        self.put_word(word::LBA28_CAPACITY, lba28 as u16);
        self.put_word(word::LBA28_CAPACITY + 1, (lba28 >> 16) as u16);
        for i in 0..4 {
            self.put_word(word::LBA48_CAPACITY + i, (sectors >> (16 * i)) as u16);
        }
    }
    /// Space-padded, cut at 20 bytes.
    pub fn set_serial(&mut self, s: &[u8]) {
        self.put_string(field::SERIAL, s);
    }
    /// Space-padded, cut at 8 bytes.
    pub fn set_firmware(&mut self, s: &[u8]) {
        self.put_string(field::FIRMWARE, s);
    }
    /// Space-padded, cut at 40 bytes.
    pub fn set_model(&mut self, s: &[u8]) {
        self.put_string(field::MODEL, s);
    }
}

/// What an IDENTIFY reply describes.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub sectors: u64,
    pub serial: &'a [u8],
    pub firmware: &'a [u8],
    pub model: &'a [u8],
    /// Writes are acknowledged before they are on stable storage: a volatile write cache
    /// (words 82 and 85, bit 5), which FLUSH CACHE empties.
    pub write_cache: bool,
}

/// Words 82 and 85 bit 5: a volatile write cache, supported / enabled.
const WRITE_CACHE: u16 = 1 << 5;

impl Identity<'_> {
    /// Bytes of IDENTIFY data.
    pub const fn buffer_len(&self) -> usize {
        SECTOR_SIZE
    }

    /// The 512 bytes of the IDENTIFY reply.
    pub fn emit(&self, out: &mut [u8; SECTOR_SIZE]) {
        self.emit_packet(&mut Packet::new_unchecked(&mut out[..]));
    }

    /// The IDENTIFY data through a view of at least `buffer_len()` bytes.
    pub fn emit_packet<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.buffer.as_mut()[..SECTOR_SIZE].fill(0);
        p.put_word(word::CONFIG, 0x0040); // fixed device
                                          // Legacy CHS geometry for old BIOS-style initiators: 16 heads, 63 sectors.
        let cyl = (self.sectors / (16 * 63)).min(16383) as u16;
        p.put_word(1, cyl);
        p.put_word(3, 16);
        p.put_word(6, 63);
        p.set_serial(self.serial);
        p.set_firmware(self.firmware);
        p.set_model(self.model);
        p.put_word(47, 0x8000);
        p.put_word(word::CAPABILITIES, 0x0200); // LBA supported
        p.put_word(50, 0x4000);
        p.put_word(53, 0x0006);
        p.put_word(80, 0x00F0); // ATA/ATAPI-4..7
        let cache = if self.write_cache { WRITE_CACHE } else { 0 };
        p.put_word(82, 0x4000 | cache);
        let sets = WORD_VALID | LBA48_SUPPORTED | FLUSH_EXT_SUPPORTED | (1 << 12);
        p.put_word(word::COMMAND_SET_2, sets);
        p.put_word(word::COMMAND_SET_EXT, WORD_VALID);
        p.put_word(85, 0x4000 | cache);
        p.put_word(word::COMMAND_SET_2_ENABLED, sets & !WORD_VALID);
        p.put_word(87, WORD_VALID);
        p.put_word(93, 0x400b);
        p.set_sectors(self.sectors);
    }
}

/// What an initiator reads back from IDENTIFY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub lba48: bool,
    pub sectors: u64,
    pub serial: [u8; 20],
    pub firmware: [u8; 8],
    pub model: [u8; 40],
    /// A volatile write cache is enabled (word 85 bit 5).
    pub write_cache: bool,
}

impl Parsed {
    /// Read IDENTIFY data from a buffer; it must hold all 512 bytes.
    pub fn parse(data: &[u8]) -> Result<Parsed, Truncated> {
        Ok(Parsed::from_packet(&Packet::new_checked(data)?))
    }

    /// What a checked view says, the way the Linux initiator reads it.
    pub fn from_packet<T: AsRef<[u8]>>(p: &Packet<T>) -> Parsed {
        Parsed {
            lba48: p.lba48(),
            sectors: p.sectors(),
            serial: p.serial(),
            firmware: p.firmware(),
            model: p.model(),
            write_cache: p.word(85).is_some_and(|w| w & WRITE_CACHE != 0),
        }
    }

    /// Bytes of IDENTIFY data.
    pub const fn buffer_len(&self) -> usize {
        SECTOR_SIZE
    }
}

/// Read IDENTIFY data the way the Linux initiator does (words 83/86, 100-103, 60-61).
pub fn parse(data: &[u8; SECTOR_SIZE]) -> Parsed {
    Parsed::from_packet(&Packet::new_unchecked(&data[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_as_linux_reads_them() {
        let mut d = [0u8; 512];
        Identity {
            sectors: 0x1_2345_6789,
            serial: b"AOE1.2",
            firmware: b"0.1",
            model: b"ab",
            write_cache: false,
        }
        .emit(&mut d);
        // Word 83 bit 10 (LBA48) lives in byte 167 bit 2; word 86 likewise in byte 173.
        assert_eq!(d[167] & 0x04, 0x04);
        assert_eq!(d[173] & 0x04, 0x04);
        // Words 100..103: 0x0000_0001_2345_6789 little-endian words.
        assert_eq!(
            &d[200..208],
            &[0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00]
        );
        // LBA28 capacity saturates at 0x0FFFFFFF.
        assert_eq!(&d[120..124], &[0xff, 0xff, 0xff, 0x0f]);
        // Model "ab" is stored byte-swapped: 'b','a', then spaces.
        assert_eq!(&d[54..58], b"ba  ");
        let p = parse(&d);
        assert!(p.lba48);
        assert_eq!(p.sectors, 0x1_2345_6789);
        assert_eq!(&p.serial[..6], b"AOE1.2");
        assert_eq!(&p.model[..3], b"ab ");
        assert!(!p.write_cache);
        // Word 85 bit 5 is byte 170 bit 5; word 82 likewise byte 164.
        assert_eq!(d[170] & 0x20, 0);
    }

    #[test]
    fn every_prefix_is_err() {
        let mut d = [0u8; 512];
        Identity {
            sectors: 1 << 40,
            serial: b"S",
            firmware: b"F",
            model: b"M",
            write_cache: true,
        }
        .emit(&mut d);
        for n in 0..SECTOR_SIZE {
            assert_eq!(Parsed::parse(&d[..n]).unwrap_err(), Truncated, "{n}");
        }
        let p = Packet::new_checked(&d[..]).unwrap();
        assert_eq!(p.word(word::COMMAND_SET_EXT), Some(WORD_VALID));
        assert_eq!(p.word(WORDS), None);
        assert_eq!(Parsed::parse(&d).unwrap(), parse(&d));
        assert_eq!(parse(&d).sectors, 1 << 40);
        assert!(parse(&d).write_cache);
        assert_eq!((d[164] & 0x20, d[170] & 0x20), (0x20, 0x20));
    }

    #[test]
    fn lba28_only_data() {
        // An old drive: no 48-bit feature set, 0x0012_3456 sectors in words 60-61.
        let mut d = [0u8; 512];
        d[120..124].copy_from_slice(&[0x56, 0x34, 0x12, 0x00]);
        d[200..208].copy_from_slice(&[0xff; 8]); // ignored without word 83/86 bit 10
        d[167] = 0x04; // supported but not enabled
        let p = parse(&d);
        assert!(!p.lba48);
        assert_eq!(p.sectors, 0x12_3456);
    }

    #[test]
    fn small_disk_lba28() {
        let mut d = [0u8; 512];
        Identity {
            sectors: 131072,
            serial: b"",
            firmware: b"",
            model: b"",
            write_cache: false,
        }
        .emit(&mut d);
        assert_eq!(&d[120..124], &[0x00, 0x00, 0x02, 0x00]);
        assert_eq!(parse(&d).sectors, 131072);
    }
}
