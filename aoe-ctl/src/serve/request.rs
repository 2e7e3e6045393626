//! Parse: a frame becomes a typed request, or the reason it gets no reply. A transport error
//! (not AoE, a response, shorter than its own fields claim) is dropped; everything that
//! parses gets an answer, an error reply included. Nothing here touches an export.

use aoe_common::wire::ata::{AtaCommand, AtaRepr};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::header::{HeaderRepr, FLAG_RESPONSE};
use aoe_common::wire::mask::{MaskRepr, MCMD_EDIT};
use aoe_common::wire::reserve::{ReserveRepr, RCMD_FORCE_SET, RCMD_SET};
use aoe_common::wire::{Command, Frame, AOE_VERSION, ETHERTYPE_AOE};

/// Why a frame got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignore {
    /// Shorter than its own fields claim, or not AoE at all.
    Malformed,
    /// An AoE response (R flag): not for a target.
    Response,
    /// The source MAC is a group (multicast or broadcast) address: a reply would go to every
    /// host of the group (a 60-byte read would broadcast its sectors to the segment).
    GroupSource,
    /// Addressed to a shelf/slot we do not export.
    NotOurs,
    /// Source MAC not on the mask list.
    Acl,
    /// ATA to a broadcast address: never executed.
    BroadcastAta,
    /// Query Config test / test-prefix that did not match: silence is the answer.
    ConfigMismatch,
    /// The control plane could not take the request (queue full or gone): the initiator
    /// retransmits.
    ControlBusy,
    /// A change that could not be kept (the state file could not be written): undone, and
    /// not acknowledged.
    NotKept,
}

/// What an ATA request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaOp {
    Read,
    Write,
    Identify,
    Flush,
    CheckPowerMode,
    Unsupported(u8),
}

/// An ATA command (AoE command 0) with its address decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtaRequest {
    pub op: AtaOp,
    pub lba: u64,
    /// Sectors, as ATA counts them (0 means 256 or 65536).
    pub count: usize,
    pub repr: AtaRepr,
}

impl From<AtaRepr> for AtaRequest {
    fn from(repr: AtaRepr) -> Self {
        let op = match repr.command {
            AtaCommand::ReadSectors | AtaCommand::ReadSectorsExt => AtaOp::Read,
            AtaCommand::WriteSectors | AtaCommand::WriteSectorsExt => AtaOp::Write,
            AtaCommand::IdentifyDevice => AtaOp::Identify,
            AtaCommand::FlushCache | AtaCommand::FlushCacheExt => AtaOp::Flush,
            AtaCommand::CheckPowerMode => AtaOp::CheckPowerMode,
            AtaCommand::Unknown(c) => AtaOp::Unsupported(c),
        };
        AtaRequest {
            op,
            lba: repr.lba(),
            count: repr.sectors() as usize,
            repr,
        }
    }
}

impl AtaRequest {
    /// Bytes of sector data the request moves.
    pub fn bytes(&self) -> usize {
        self.count * aoe_common::wire::SECTOR_SIZE
    }
}

/// The command-specific part of a request.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Ata(AtaRequest),
    Config(ConfigRepr<'a>),
    Mask(MaskRepr<'a>),
    Reserve(ReserveRepr<'a>),
    /// A command this target does not know (AoE error 1).
    Unknown(u8),
    /// A protocol version this target does not speak (AoE error 3); the body is not read.
    UnsupportedVersion(u8),
}

impl Body<'_> {
    /// Does it change an export's config string or access lists? Those are applied by the
    /// control plane, in order, and kept before the reply leaves.
    pub fn changes_state(&self) -> bool {
        match self {
            Body::Config(c) => matches!(
                c.command,
                ConfigCommand::SetIfEmpty | ConfigCommand::ForceSet
            ),
            Body::Mask(m) => m.mcmd == MCMD_EDIT,
            Body::Reserve(r) => r.rcmd == RCMD_SET || r.rcmd == RCMD_FORCE_SET,
            _ => false,
        }
    }
}

/// A parsed request: the header (to address the reply) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub header: HeaderRepr,
    pub body: Body<'a>,
}

/// Parse a whole frame (for an ATA write, at least its headers: the payload is the
/// executor's business).
pub fn parse(frame: &[u8]) -> Result<Request<'_>, Ignore> {
    let f = Frame::new_checked(frame).map_err(|_| Ignore::Malformed)?;
    if f.ethertype() != ETHERTYPE_AOE {
        return Err(Ignore::Malformed);
    }
    let header = HeaderRepr::parse(&f).ok_or(Ignore::Malformed)?;
    if header.flags & FLAG_RESPONSE != 0 {
        return Err(Ignore::Response);
    }
    if header.src[0] & 1 != 0 {
        return Err(Ignore::GroupSource);
    }
    let malformed = |_| Ignore::Malformed;
    let body = if f.version() != AOE_VERSION {
        Body::UnsupportedVersion(f.version())
    } else {
        match header.command {
            Command::Ata => Body::Ata(AtaRequest::from(AtaRepr::parse(frame).map_err(malformed)?)),
            Command::QueryConfig => Body::Config(ConfigRepr::parse(frame).map_err(malformed)?),
            Command::MacMaskList => Body::Mask(MaskRepr::parse(frame).map_err(malformed)?),
            Command::ReserveRelease => Body::Reserve(ReserveRepr::parse(frame).map_err(malformed)?),
            Command::Unknown(c) => Body::Unknown(c),
        }
    };
    Ok(Request { header, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ATA read of 2 sectors at LBA 0x0102 (LBA48), shelf 1 slot 2, tag 7, field by field.
    const READ: [u8; 36] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src
        0x88, 0xa2, // ethertype
        0x10, 0x00, // version 1, no flags; error 0
        0x00, 0x01, 0x02, 0x00, // shelf 1, slot 2, command 0 (ATA)
        0x00, 0x00, 0x00, 0x07, // tag
        0x40, 0x00, 0x02, 0x24, // aflags E, feature, count 2, READ SECTORS EXT
        0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // lba 0x0102
    ];

    #[test]
    fn an_ata_read() {
        let r = parse(&READ).unwrap();
        assert_eq!((r.header.shelf, r.header.slot, r.header.tag), (1, 2, 7));
        let Body::Ata(a) = r.body else {
            panic!("not ATA: {:?}", r.body)
        };
        assert_eq!(
            (a.op, a.lba, a.count, a.bytes()),
            (AtaOp::Read, 0x0102, 2, 1024)
        );
        assert!(!r.body.changes_state());
    }

    #[test]
    fn every_prefix_is_dropped_or_parsed_never_a_panic() {
        for n in 0..READ.len() {
            assert_eq!(
                parse(&READ[..n]).unwrap_err(),
                Ignore::Malformed,
                "{n} bytes"
            );
        }
    }

    #[test]
    fn responses_versions_and_unknown_commands() {
        let mut f = READ;
        f[14] = 0x18;
        assert_eq!(parse(&f).unwrap_err(), Ignore::Response);
        f[14] = 0x20;
        assert!(matches!(
            parse(&f).unwrap().body,
            Body::UnsupportedVersion(2)
        ));
        f[14] = 0x10;
        f[19] = 9;
        assert!(matches!(parse(&f).unwrap().body, Body::Unknown(9)));
        f[12] = 0x08;
        assert_eq!(parse(&f).unwrap_err(), Ignore::Malformed);
    }

    #[test]
    fn a_group_source_gets_no_reply() {
        for src in [
            [0xff; 6],
            [0x01, 0x00, 0x5e, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
        ] {
            let mut f = READ;
            f[6..12].copy_from_slice(&src);
            assert_eq!(parse(&f).unwrap_err(), Ignore::GroupSource, "{src:02x?}");
        }
        // A locally administered unicast address is a source like any other.
        let mut f = READ;
        f[6] = 0x02;
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn which_commands_change_state() {
        let mut f = [0u8; 60];
        f[..24].copy_from_slice(&READ[..24]);
        f[19] = 1; // Query Config
        f[29] = 0x10 | 4; // force set
        assert!(parse(&f).unwrap().body.changes_state());
        f[29] = 0x10; // read
        assert!(!parse(&f).unwrap().body.changes_state());
        f[19] = 2; // mask list, mcmd edit with no directives
        f[25] = 1;
        f[29] = 0;
        assert!(parse(&f).unwrap().body.changes_state());
        f[19] = 3; // reserve read
        f[24] = 0;
        f[25] = 0;
        assert!(!parse(&f).unwrap().body.changes_state());
    }
}
