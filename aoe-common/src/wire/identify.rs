//! IDENTIFY DEVICE data: 256 little-endian words (512 bytes) as the Linux initiator and
//! iPXE read them.

use super::SECTOR_SIZE;

/// Word numbers that matter.
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

/// What an IDENTIFY reply describes.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub sectors: u64,
    pub serial: &'a [u8],
    pub firmware: &'a [u8],
    pub model: &'a [u8],
}

fn put_word(out: &mut [u8; SECTOR_SIZE], w: usize, v: u16) {
    out[2 * w..2 * w + 2].copy_from_slice(&v.to_le_bytes());
}

/// ATA strings are space-padded with the two bytes of each word swapped.
fn put_string(out: &mut [u8; SECTOR_SIZE], first_word: usize, words: usize, s: &[u8]) {
    for i in 0..words * 2 {
        let c = s.get(i).copied().unwrap_or(b' ');
        out[2 * first_word + (i ^ 1)] = c;
    }
}

fn get_string(data: &[u8; SECTOR_SIZE], first_word: usize, words: usize, out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate().take(words * 2) {
        *o = data[2 * first_word + (i ^ 1)];
    }
}

impl Identity<'_> {
    /// The 512 bytes of the IDENTIFY reply.
    pub fn emit(&self, out: &mut [u8; SECTOR_SIZE]) {
        out.fill(0);
        put_word(out, word::CONFIG, 0x0040); // fixed device
                                             // Legacy CHS geometry for old BIOS-style initiators: 16 heads, 63 sectors.
        let cyl = (self.sectors / (16 * 63)).min(16383) as u16;
        put_word(out, 1, cyl);
        put_word(out, 3, 16);
        put_word(out, 6, 63);
        put_string(out, word::SERIAL, 10, self.serial);
        put_string(out, word::FIRMWARE, 4, self.firmware);
        put_string(out, word::MODEL, 20, self.model);
        put_word(out, 47, 0x8000);
        put_word(out, word::CAPABILITIES, 0x0200); // LBA supported
        put_word(out, 50, 0x4000);
        put_word(out, 53, 0x0006);
        let lba28 = self.sectors.min(LBA28_MAX_SECTORS) as u32;
        put_word(out, word::LBA28_CAPACITY, lba28 as u16);
        put_word(out, word::LBA28_CAPACITY + 1, (lba28 >> 16) as u16);
        put_word(out, 80, 0x00F0); // ATA/ATAPI-4..7
        put_word(out, 82, 0x4000);
        let sets = WORD_VALID | LBA48_SUPPORTED | FLUSH_EXT_SUPPORTED | (1 << 12);
        put_word(out, word::COMMAND_SET_2, sets);
        put_word(out, word::COMMAND_SET_EXT, WORD_VALID);
        put_word(out, 85, 0x4000);
        put_word(out, word::COMMAND_SET_2_ENABLED, sets & !WORD_VALID);
        put_word(out, 87, WORD_VALID);
        put_word(out, 93, 0x400b);
        for i in 0..4 {
            put_word(
                out,
                word::LBA48_CAPACITY + i,
                (self.sectors >> (16 * i)) as u16,
            );
        }
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
}

/// Read IDENTIFY data the way the Linux initiator does (words 83/86, 100-103, 60-61).
pub fn parse(data: &[u8; SECTOR_SIZE]) -> Parsed {
    let w = |n: usize| u16::from_le_bytes([data[2 * n], data[2 * n + 1]]);
    let lba48 = w(word::COMMAND_SET_2) & LBA48_SUPPORTED != 0
        && w(word::COMMAND_SET_2_ENABLED) & LBA48_SUPPORTED != 0;
    let sectors = if lba48 {
        (0..4).fold(0u64, |acc, i| {
            acc | u64::from(w(word::LBA48_CAPACITY + i)) << (16 * i)
        })
    } else {
        u64::from(w(word::LBA28_CAPACITY)) | u64::from(w(word::LBA28_CAPACITY + 1)) << 16
    };
    let mut p = Parsed {
        lba48,
        sectors,
        serial: [0; 20],
        firmware: [0; 8],
        model: [0; 40],
    };
    get_string(data, word::SERIAL, 10, &mut p.serial);
    get_string(data, word::FIRMWARE, 4, &mut p.firmware);
    get_string(data, word::MODEL, 20, &mut p.model);
    p
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
    }

    #[test]
    fn small_disk_lba28() {
        let mut d = [0u8; 512];
        Identity {
            sectors: 131072,
            serial: b"",
            firmware: b"",
            model: b"",
        }
        .emit(&mut d);
        assert_eq!(&d[120..124], &[0x00, 0x00, 0x02, 0x00]);
        assert_eq!(parse(&d).sectors, 131072);
    }
}
