//! Command 1: Query Config. Arguments at bytes 24..32, config string from byte 32.

use super::{be16, put_be16, Truncated, CONFIG_STRING_MAX};

/// Byte offsets counted from the start of the frame.
pub mod field {
    use crate::wire::Field;

    pub const BUFFER_COUNT_BYTES: Field = 24..26;
    pub const FIRMWARE_BYTES: Field = 26..28;
    pub const STRING_LEN_BYTES: Field = 30..32;

    pub const BUFFER_COUNT: usize = BUFFER_COUNT_BYTES.start;
    pub const FIRMWARE: usize = FIRMWARE_BYTES.start;
    pub const SECTOR_COUNT: usize = 28;
    /// AoE version in the high nibble, ccmd in the low one.
    pub const VER_CCMD: usize = 29;
    pub const STRING_LEN: usize = STRING_LEN_BYTES.start;
    /// The string, `STRING_LEN` bytes.
    pub const STRING: usize = 32;
}

/// Length of a config frame with an empty string.
pub const CONFIG_HEADER_LEN: usize = field::STRING;

/// Byte 29 holds the AoE version above this shift and the ccmd below it.
pub const VERSION_SHIFT: u32 = 4;
/// The ccmd bits of byte 29.
pub const CCMD_MASK: u8 = 0x0F;

/// ccmd values, as the kernel side compares them.
pub const CCMD_READ: u8 = 0;
pub const CCMD_TEST: u8 = 1;
pub const CCMD_TEST_PREFIX: u8 = 2;
pub const CCMD_SET_IF_EMPTY: u8 = 3;
pub const CCMD_FORCE_SET: u8 = 4;

/// Query Config subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigCommand {
    /// Reply with the current string.
    Read,
    /// Reply only if the request string equals the current one.
    Test,
    /// Reply only if the request string is a prefix of the current one.
    TestPrefix,
    /// Set the string if it is empty, else error 4.
    SetIfEmpty,
    /// Set the string unconditionally.
    ForceSet,
    Unknown(u8),
}

impl From<u8> for ConfigCommand {
    fn from(v: u8) -> Self {
        match v {
            CCMD_READ => ConfigCommand::Read,
            CCMD_TEST => ConfigCommand::Test,
            CCMD_TEST_PREFIX => ConfigCommand::TestPrefix,
            CCMD_SET_IF_EMPTY => ConfigCommand::SetIfEmpty,
            CCMD_FORCE_SET => ConfigCommand::ForceSet,
            other => ConfigCommand::Unknown(other),
        }
    }
}

impl From<ConfigCommand> for u8 {
    fn from(c: ConfigCommand) -> u8 {
        match c {
            ConfigCommand::Read => CCMD_READ,
            ConfigCommand::Test => CCMD_TEST,
            ConfigCommand::TestPrefix => CCMD_TEST_PREFIX,
            ConfigCommand::SetIfEmpty => CCMD_SET_IF_EMPTY,
            ConfigCommand::ForceSet => CCMD_FORCE_SET,
            ConfigCommand::Unknown(v) => v & CCMD_MASK,
        }
    }
}

super::checked_view!(
    /// A view of a Query Config request or reply (the whole frame, header included).
    Packet,
    "Wrap a buffer whose string length fits the spec and the buffer."
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The arguments are there, and the string length is at most 1024 and lies within the
    /// buffer. Bytes after the string (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<(), Truncated> {
        let len = self.b().len();
        if len < CONFIG_HEADER_LEN {
            return Err(Truncated);
        }
        let string = usize::from(self.string_len());
        if string > CONFIG_STRING_MAX || len - CONFIG_HEADER_LEN < string {
            return Err(Truncated);
        }
        Ok(())
    }

    pub fn buffer_count(&self) -> u16 {
        be16(self.b(), field::BUFFER_COUNT)
    }
    pub fn firmware(&self) -> u16 {
        be16(self.b(), field::FIRMWARE)
    }
    /// Sectors per frame the target accepts (0 means 2).
    pub fn sector_count(&self) -> u8 {
        self.b()[field::SECTOR_COUNT]
    }
    pub fn aoe_version(&self) -> u8 {
        self.b()[field::VER_CCMD] >> VERSION_SHIFT
    }
    pub fn command(&self) -> ConfigCommand {
        ConfigCommand::from(self.b()[field::VER_CCMD] & CCMD_MASK)
    }
    /// The claimed string length (within the buffer and at most 1024 once checked).
    pub fn string_len(&self) -> u16 {
        be16(self.b(), field::STRING_LEN)
    }
    pub fn string(&self) -> &[u8] {
        &self.b()[field::STRING..field::STRING + usize::from(self.string_len())]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The string, borrowed for as long as the buffer.
    pub fn string_ref(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let len = usize::from(be16(b, field::STRING_LEN));
        &b[field::STRING..field::STRING + len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_buffer_count(&mut self, v: u16) {
        put_be16(self.bm(), field::BUFFER_COUNT, v);
    }
    pub fn set_firmware(&mut self, v: u16) {
        put_be16(self.bm(), field::FIRMWARE, v);
    }
    pub fn set_sector_count(&mut self, v: u8) {
        self.bm()[field::SECTOR_COUNT] = v;
    }
    pub fn set_ver_ccmd(&mut self, version: u8, c: ConfigCommand) {
        self.bm()[field::VER_CCMD] = (version << VERSION_SHIFT) | u8::from(c);
    }
    /// Set the length and copy the string; the buffer must hold it.
    pub fn set_string(&mut self, s: &[u8]) {
        put_be16(self.bm(), field::STRING_LEN, s.len() as u16);
        self.bm()[field::STRING..field::STRING + s.len()].copy_from_slice(s);
    }
}

/// The Query Config arguments, as a plain value borrowing its string from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigRepr<'a> {
    pub buffer_count: u16,
    pub firmware: u16,
    /// Sectors per frame the target accepts (0 means 2).
    pub sector_count: u8,
    pub aoe_version: u8,
    pub command: ConfigCommand,
    /// At most `CONFIG_STRING_MAX` bytes.
    pub string: &'a [u8],
}

impl<'a> ConfigRepr<'a> {
    /// Parse a whole frame. The string length must be at most 1024 and lie within the frame.
    pub fn parse(frame: &'a [u8]) -> Result<ConfigRepr<'a>, Truncated> {
        Ok(ConfigRepr::from_packet(&Packet::new_checked(frame)?))
    }

    /// The arguments of a checked view.
    pub fn from_packet<T: AsRef<[u8]> + ?Sized>(p: &Packet<&'a T>) -> ConfigRepr<'a> {
        ConfigRepr {
            buffer_count: p.buffer_count(),
            firmware: p.firmware(),
            sector_count: p.sector_count(),
            aoe_version: p.aoe_version(),
            command: p.command(),
            string: p.string_ref(),
        }
    }

    /// Bytes this value occupies from the start of the frame.
    pub fn buffer_len(&self) -> usize {
        CONFIG_HEADER_LEN + self.string.len()
    }

    /// The same as `buffer_len`.
    pub fn frame_len(&self) -> usize {
        self.buffer_len()
    }

    /// Write the arguments and string; `frame` must hold `buffer_len()` bytes.
    pub fn emit(&self, frame: &mut [u8]) {
        self.emit_packet(&mut Packet::new_unchecked(frame));
    }

    /// Write the arguments and string through a view.
    pub fn emit_packet<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_buffer_count(self.buffer_count);
        p.set_firmware(self.firmware);
        p.set_sector_count(self.sector_count);
        p.set_ver_ccmd(self.aoe_version, self.command);
        p.set_string(self.string);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A config reply from shelf 1 slot 2 as vblade sends it: bufcnt 16, firmware 0x4019,
    // 2 sectors per frame, version 1, string "abc".
    static REPLY: [u8; 35] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0xa2, 0x18,
        0x00, 0x00, 0x01, 0x02, 0x01, 0, 0, 0, 7, //
        0x00, 0x10, // buffer count 16
        0x40, 0x19, // firmware
        0x02, // sectors per frame
        0x10, // version 1, ccmd read
        0x00, 0x03, // string length
        b'a', b'b', b'c',
    ];

    #[test]
    fn parse_reply() {
        let c = ConfigRepr::parse(&REPLY).unwrap();
        assert_eq!(c.buffer_count, 16);
        assert_eq!(c.firmware, 0x4019);
        assert_eq!(c.sector_count, 2);
        assert_eq!(c.aoe_version, 1);
        assert_eq!(c.command, ConfigCommand::Read);
        assert_eq!(c.string, b"abc");
        assert_eq!(c.frame_len(), 35);
    }

    #[test]
    fn emit_roundtrip_bytes() {
        let mut out = [0xa5u8; 35];
        out[..24].copy_from_slice(&REPLY[..24]);
        ConfigRepr::parse(&REPLY).unwrap().emit(&mut out);
        assert_eq!(out, REPLY);
    }

    #[test]
    fn lying_length_rejected() {
        let mut f = REPLY;
        f[31] = 4; // claims 4 bytes, frame has 3
        assert_eq!(ConfigRepr::parse(&f).unwrap_err(), Truncated);
        let mut big = [0u8; 32 + 1100];
        big[30] = 0x04;
        big[31] = 0x01; // 1025 > 1024
        assert_eq!(ConfigRepr::parse(&big).unwrap_err(), Truncated);
        assert_eq!(ConfigRepr::parse(&REPLY[..31]).unwrap_err(), Truncated);
    }

    #[test]
    fn every_prefix_of_a_valid_frame() {
        for n in 0..REPLY.len() {
            assert_eq!(
                Packet::new_checked(&REPLY[..n]).unwrap_err(),
                Truncated,
                "{n}"
            );
            assert_eq!(
                ConfigRepr::parse(&REPLY[..n]).unwrap_err(),
                Truncated,
                "{n}"
            );
        }
        // Ethernet padding after the string is not part of it.
        let mut padded = [0u8; 60];
        padded[..35].copy_from_slice(&REPLY);
        assert_eq!(ConfigRepr::parse(&padded).unwrap().string, b"abc");
    }

    #[test]
    fn every_claimed_length_in_every_buffer() {
        // Whatever the length field says, the view is either refused or readable.
        let mut f = [b'x'; CONFIG_HEADER_LEN + CONFIG_STRING_MAX + 8];
        for claim in (0..=60u16).chain([1023, 1024, 1025, 1032, 0xffff]) {
            f[30..32].copy_from_slice(&claim.to_be_bytes());
            for n in 0..=f.len() {
                let ok = usize::from(claim) <= CONFIG_STRING_MAX
                    && n >= CONFIG_HEADER_LEN + usize::from(claim);
                match Packet::new_checked(&f[..n]) {
                    Ok(p) => {
                        assert!(ok, "claim {claim} in {n} bytes");
                        assert_eq!(p.string().len(), usize::from(claim));
                        assert_eq!(
                            ConfigRepr::from_packet(&p).buffer_len(),
                            32 + p.string().len()
                        );
                    }
                    Err(Truncated) => assert!(!ok, "claim {claim} in {n} bytes"),
                }
            }
        }
    }

    #[test]
    fn view_setters_write_the_spec_bytes() {
        let mut out = [0u8; 35];
        out[..24].copy_from_slice(&REPLY[..24]);
        let mut p = Packet::new_unchecked(&mut out[..]);
        p.set_buffer_count(16);
        p.set_firmware(0x4019);
        p.set_sector_count(2);
        p.set_ver_ccmd(1, ConfigCommand::Read);
        p.set_string(b"abc");
        assert_eq!(out, REPLY);
    }

    #[test]
    fn subcommands() {
        for (v, c) in [
            (0, ConfigCommand::Read),
            (1, ConfigCommand::Test),
            (2, ConfigCommand::TestPrefix),
            (3, ConfigCommand::SetIfEmpty),
            (4, ConfigCommand::ForceSet),
            (9, ConfigCommand::Unknown(9)),
        ] {
            assert_eq!(ConfigCommand::from(v), c);
            assert_eq!(u8::from(c), v);
        }
    }
}
