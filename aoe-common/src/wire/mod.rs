//! The AoE r11 wire format.
//!
//! One contract for the whole module, as in smoltcp: every view has a `new_checked`
//! constructor for untrusted bytes; once it returned `Ok`, no accessor panics. Setters are
//! only available on mutable buffers and never write past `buffer_len()` of the view.
//! Multi-byte AoE fields are big-endian; the ATA LBA and IDENTIFY words are little-endian.
//!
//! The kernel side reads frames through the `field` offsets of each module directly (bounds
//! checked against `data_end`), never through these slice views.

pub mod ata;
pub mod config;
pub mod header;
pub mod identify;
pub mod mask;
pub mod reserve;

pub use header::{AoeError, Command, Frame, Mac};

/// Ethertype of AoE.
pub const ETHERTYPE_AOE: u16 = 0x88A2;
/// The only protocol version there is.
pub const AOE_VERSION: u8 = 1;
/// Shortest Ethernet frame (without FCS); every reply is padded to it.
pub const MIN_FRAME_LEN: usize = 60;
/// Bytes in one ATA sector.
pub const SECTOR_SIZE: usize = 512;
/// Broadcast shelf (major) number.
pub const SHELF_BROADCAST: u16 = 0xFFFF;
/// Broadcast slot (minor) number.
pub const SLOT_BROADCAST: u8 = 0xFF;
/// Longest config string (r11).
pub const CONFIG_STRING_MAX: usize = 1024;

/// A frame too short for what its own fields claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl core::fmt::Display for Truncated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("frame truncated")
    }
}

impl core::error::Error for Truncated {}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Sectors that fit in one frame of this MTU: `(MTU - 36) / 512`, the rule the Linux
/// initiator applies (it counts the Ethernet header against the MTU, so it is conservative).
pub const fn sectors_per_frame(mtu: usize) -> usize {
    if mtu < 36 {
        0
    } else {
        (mtu - 36) / SECTOR_SIZE
    }
}
