//! The Ethernet + AoE header every frame carries (bytes 0..24).

use super::{be16, put_be16, Truncated, AOE_VERSION, ETHERTYPE_AOE};

/// Bytes in a MAC address.
pub const MAC_LEN: usize = 6;

/// A MAC address.
pub type Mac = [u8; MAC_LEN];

/// Byte offsets of the common header.
pub mod field {
    use crate::wire::Field;

    pub const DST_BYTES: Field = 0..6;
    pub const SRC_BYTES: Field = 6..12;
    pub const ETHERTYPE_BYTES: Field = 12..14;
    /// Shelf, big-endian.
    pub const MAJOR_BYTES: Field = 16..18;
    /// Tag, echoed unchanged.
    pub const TAG_BYTES: Field = 20..24;

    pub const DST: usize = DST_BYTES.start;
    pub const SRC: usize = SRC_BYTES.start;
    pub const ETHERTYPE: usize = ETHERTYPE_BYTES.start;
    /// Version in the high nibble, flags in the low one.
    pub const VER_FLAGS: usize = 14;
    pub const ERROR: usize = 15;
    pub const MAJOR: usize = MAJOR_BYTES.start;
    /// Slot.
    pub const MINOR: usize = 18;
    pub const COMMAND: usize = 19;
    pub const TAG: usize = TAG_BYTES.start;
    /// First byte of the command's arguments.
    pub const ARG: usize = 24;
}

/// Length of Ethernet + AoE header.
pub const HEADER_LEN: usize = field::ARG;

/// Byte 14 holds the version above this shift and the flags below it.
pub const VERSION_SHIFT: u32 = 4;
/// The flag bits of byte 14.
pub const FLAGS_MASK: u8 = 0x0F;
/// Flag bits in the low nibble of byte 14.
pub const FLAG_RESPONSE: u8 = 0x08;
pub const FLAG_ERROR: u8 = 0x04;

/// Command codes (byte 19), as the kernel side compares them.
pub const CMD_ATA: u8 = 0;
pub const CMD_QUERY_CONFIG: u8 = 1;
pub const CMD_MAC_MASK_LIST: u8 = 2;
pub const CMD_RESERVE_RELEASE: u8 = 3;

/// AoE commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Ata,
    QueryConfig,
    MacMaskList,
    ReserveRelease,
    Unknown(u8),
}

impl From<u8> for Command {
    fn from(v: u8) -> Self {
        match v {
            CMD_ATA => Command::Ata,
            CMD_QUERY_CONFIG => Command::QueryConfig,
            CMD_MAC_MASK_LIST => Command::MacMaskList,
            CMD_RESERVE_RELEASE => Command::ReserveRelease,
            other => Command::Unknown(other),
        }
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::Ata => CMD_ATA,
            Command::QueryConfig => CMD_QUERY_CONFIG,
            Command::MacMaskList => CMD_MAC_MASK_LIST,
            Command::ReserveRelease => CMD_RESERVE_RELEASE,
            Command::Unknown(v) => v,
        }
    }
}

/// AoE error codes (valid with the E flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AoeError {
    UnrecognizedCommand = 1,
    BadArgument = 2,
    DeviceUnavailable = 3,
    ConfigStringPresent = 4,
    UnsupportedVersion = 5,
    TargetReserved = 6,
}

super::checked_view!(
    /// A view of a frame's Ethernet + AoE header.
    Frame,
    "Wrap a buffer holding at least the common header."
);

impl<T: AsRef<[u8]>> Frame<T> {
    /// The header has no length field: it only has to be there.
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.b().len() < HEADER_LEN {
            return Err(Truncated);
        }
        Ok(())
    }

    pub fn dst(&self) -> Mac {
        mac_at(self.b(), field::DST)
    }
    pub fn src(&self) -> Mac {
        mac_at(self.b(), field::SRC)
    }
    pub fn ethertype(&self) -> u16 {
        be16(self.b(), field::ETHERTYPE)
    }
    pub fn version(&self) -> u8 {
        self.b()[field::VER_FLAGS] >> VERSION_SHIFT
    }
    pub fn flags(&self) -> u8 {
        self.b()[field::VER_FLAGS] & FLAGS_MASK
    }
    pub fn is_response(&self) -> bool {
        self.flags() & FLAG_RESPONSE != 0
    }
    pub fn is_error(&self) -> bool {
        self.flags() & FLAG_ERROR != 0
    }
    pub fn error(&self) -> u8 {
        self.b()[field::ERROR]
    }
    pub fn shelf(&self) -> u16 {
        be16(self.b(), field::MAJOR)
    }
    pub fn slot(&self) -> u8 {
        self.b()[field::MINOR]
    }
    pub fn command(&self) -> Command {
        Command::from(self.b()[field::COMMAND])
    }
    pub fn tag(&self) -> u32 {
        let b = &self.b()[field::TAG_BYTES];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    /// The command arguments and data.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_dst(&mut self, mac: Mac) {
        self.bm()[field::DST_BYTES].copy_from_slice(&mac);
    }
    pub fn set_src(&mut self, mac: Mac) {
        self.bm()[field::SRC_BYTES].copy_from_slice(&mac);
    }
    pub fn set_ethertype(&mut self, v: u16) {
        put_be16(self.bm(), field::ETHERTYPE, v);
    }
    pub fn set_ver_flags(&mut self, version: u8, flags: u8) {
        self.bm()[field::VER_FLAGS] = (version << VERSION_SHIFT) | (flags & FLAGS_MASK);
    }
    pub fn set_error(&mut self, e: u8) {
        self.bm()[field::ERROR] = e;
    }
    pub fn set_shelf(&mut self, v: u16) {
        put_be16(self.bm(), field::MAJOR, v);
    }
    pub fn set_slot(&mut self, v: u8) {
        self.bm()[field::MINOR] = v;
    }
    pub fn set_command(&mut self, c: Command) {
        self.bm()[field::COMMAND] = c.into();
    }
    pub fn set_tag(&mut self, tag: u32) {
        self.bm()[field::TAG_BYTES].copy_from_slice(&tag.to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.bm()[HEADER_LEN..]
    }
}

pub(crate) fn mac_at(b: &[u8], at: usize) -> Mac {
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(&b[at..at + MAC_LEN]);
    m
}

/// The header fields of a frame, as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub dst: Mac,
    pub src: Mac,
    pub flags: u8,
    pub error: u8,
    pub shelf: u16,
    pub slot: u8,
    pub command: Command,
    pub tag: u32,
}

impl HeaderRepr {
    /// Parse the header of an AoE frame (any version; the caller decides what to do with it).
    pub fn parse<T: AsRef<[u8]>>(f: &Frame<T>) -> Option<HeaderRepr> {
        if f.ethertype() != ETHERTYPE_AOE {
            return None;
        }
        Some(HeaderRepr {
            dst: f.dst(),
            src: f.src(),
            flags: f.flags(),
            error: f.error(),
            shelf: f.shelf(),
            slot: f.slot(),
            command: f.command(),
            tag: f.tag(),
        })
    }

    /// Bytes the header occupies.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the header (always version 1).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, f: &mut Frame<T>) {
        f.set_dst(self.dst);
        f.set_src(self.src);
        f.set_ethertype(ETHERTYPE_AOE);
        f.set_ver_flags(AOE_VERSION, self.flags);
        f.set_error(self.error);
        f.set_shelf(self.shelf);
        f.set_slot(self.slot);
        f.set_command(self.command);
        f.set_tag(self.tag);
    }

    /// The header of the reply to this request: addressed back to the sender, from `ours`,
    /// with the R flag, the real shelf/slot, the tag echoed.
    pub fn reply(&self, ours: Mac, shelf: u16, slot: u8) -> HeaderRepr {
        HeaderRepr {
            dst: self.src,
            src: ours,
            flags: FLAG_RESPONSE,
            error: 0,
            shelf,
            slot,
            command: self.command,
            tag: self.tag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A Query Config broadcast as the Linux initiator sends it, written out from the spec.
    static QUERY: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst: broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
        0x88, 0xa2, // ethertype AoE
        0x10, // version 1, no flags
        0x00, // error
        0xff, 0xff, // major: all shelves
        0xff, // minor: all slots
        0x01, // command: query config
        0x12, 0x34, 0x56, 0x78, // tag
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // config arg (read, empty)
    ];

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&QUERY[..]).unwrap();
        assert_eq!(f.dst(), [0xff; 6]);
        assert_eq!(f.src(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(f.ethertype(), 0x88a2);
        assert_eq!(f.version(), 1);
        assert!(!f.is_response());
        assert_eq!(f.shelf(), 0xffff);
        assert_eq!(f.slot(), 0xff);
        assert_eq!(f.command(), Command::QueryConfig);
        assert_eq!(f.tag(), 0x1234_5678);
        assert_eq!(f.payload().len(), 8);
    }

    #[test]
    fn construct_reply() {
        let req = HeaderRepr::parse(&Frame::new_checked(&QUERY[..]).unwrap()).unwrap();
        let rep = req.reply([2, 0, 0, 0, 0, 1], 1, 2);
        let mut buf = [0xa5u8; 24];
        rep.emit(&mut Frame::new_unchecked(&mut buf[..]));
        let want: [u8; 24] = [
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // dst: the requester
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src: us
            0x88, 0xa2, 0x18, // version 1, R flag
            0x00, 0x00, 0x01, // shelf 1
            0x02, // slot 2
            0x01, 0x12, 0x34, 0x56, 0x78, // cmd, tag echoed
        ];
        assert_eq!(buf, want);
    }

    #[test]
    fn truncated() {
        assert_eq!(Frame::new_checked(&QUERY[..23]).unwrap_err(), Truncated);
    }

    #[test]
    fn every_short_prefix_is_err() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&QUERY[..n]).unwrap_err(),
                Truncated,
                "{n}"
            );
        }
        for n in HEADER_LEN..=QUERY.len() {
            let f = Frame::new_checked(&QUERY[..n]).unwrap();
            assert_eq!(f.payload().len(), n - HEADER_LEN);
        }
    }

    #[test]
    fn unknown_command_survives() {
        let mut b = QUERY;
        b[19] = 0xf3;
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.command(), Command::Unknown(0xf3));
        assert_eq!(u8::from(f.command()), 0xf3);
    }

    #[test]
    fn not_aoe() {
        let mut b = QUERY;
        b[12] = 0x08;
        b[13] = 0x00;
        assert!(HeaderRepr::parse(&Frame::new_checked(&b[..]).unwrap()).is_none());
    }
}
