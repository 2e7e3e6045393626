//! Command 1: Query Config. Arguments at bytes 24..32, config string from byte 32.

use super::{be16, put_be16, Truncated, CONFIG_STRING_MAX};

/// Byte offsets counted from the start of the frame.
pub mod field {
    pub const BUFFER_COUNT: usize = 24;
    pub const FIRMWARE: usize = 26;
    pub const SECTOR_COUNT: usize = 28;
    /// AoE version in the high nibble, ccmd in the low one.
    pub const VER_CCMD: usize = 29;
    pub const STRING_LEN: usize = 30;
    pub const STRING: usize = 32;
}

/// Length of a config frame with an empty string.
pub const CONFIG_HEADER_LEN: usize = field::STRING;

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
            0 => ConfigCommand::Read,
            1 => ConfigCommand::Test,
            2 => ConfigCommand::TestPrefix,
            3 => ConfigCommand::SetIfEmpty,
            4 => ConfigCommand::ForceSet,
            other => ConfigCommand::Unknown(other),
        }
    }
}

impl From<ConfigCommand> for u8 {
    fn from(c: ConfigCommand) -> u8 {
        match c {
            ConfigCommand::Read => 0,
            ConfigCommand::Test => 1,
            ConfigCommand::TestPrefix => 2,
            ConfigCommand::SetIfEmpty => 3,
            ConfigCommand::ForceSet => 4,
            ConfigCommand::Unknown(v) => v & 0x0F,
        }
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
    pub string: &'a [u8],
}

impl<'a> ConfigRepr<'a> {
    /// Parse a whole frame. The string length must be at most 1024 and lie within the frame.
    pub fn parse(frame: &'a [u8]) -> Result<ConfigRepr<'a>, Truncated> {
        if frame.len() < CONFIG_HEADER_LEN {
            return Err(Truncated);
        }
        let len = usize::from(be16(frame, field::STRING_LEN));
        if len > CONFIG_STRING_MAX || frame.len() < CONFIG_HEADER_LEN + len {
            return Err(Truncated);
        }
        Ok(ConfigRepr {
            buffer_count: be16(frame, field::BUFFER_COUNT),
            firmware: be16(frame, field::FIRMWARE),
            sector_count: frame[field::SECTOR_COUNT],
            aoe_version: frame[field::VER_CCMD] >> 4,
            command: ConfigCommand::from(frame[field::VER_CCMD] & 0x0F),
            string: &frame[field::STRING..field::STRING + len],
        })
    }

    /// Bytes this value occupies from the start of the frame.
    pub fn frame_len(&self) -> usize {
        CONFIG_HEADER_LEN + self.string.len()
    }

    /// Write the arguments and string; `frame` must hold `frame_len()` bytes.
    pub fn emit(&self, frame: &mut [u8]) {
        put_be16(frame, field::BUFFER_COUNT, self.buffer_count);
        put_be16(frame, field::FIRMWARE, self.firmware);
        frame[field::SECTOR_COUNT] = self.sector_count;
        frame[field::VER_CCMD] = (self.aoe_version << 4) | u8::from(self.command);
        put_be16(frame, field::STRING_LEN, self.string.len() as u16);
        frame[field::STRING..field::STRING + self.string.len()].copy_from_slice(self.string);
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
