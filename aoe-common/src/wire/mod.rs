//! The AoE r11 wire format.
//!
//! One contract for the whole module, as in smoltcp. Each file is one command (or the common
//! header, or the IDENTIFY data) and holds:
//!
//! - `mod field`: where each field lives, counted from the start of the frame: a `usize`
//!   offset per field (what the kernel side indexes with) and a [`Field`] range for every
//!   multi-byte one;
//! - `Packet<T: AsRef<[u8]>>` (`Frame` for the header): a zero-copy view with
//!   `new_unchecked` and `new_checked`. `check_len` validates the length fields against each
//!   other and against the buffer (a config string length, a directive or MAC count), so
//!   once `new_checked` returned `Ok`, no getter panics, whatever the bytes;
//! - setters where `T: AsMut<[u8]>` too, for building frames in a buffer the caller sized;
//! - a `Repr`, the command as a plain value: `parse` (a whole frame, checked), `from_packet`
//!   (a checked view), `buffer_len` (bytes it occupies from the start of the frame) and
//!   `emit` (into a buffer of at least `buffer_len()` bytes; a shorter one panics, as a
//!   slice index does: it is our own buffer, never hostile input).
//!
//! Multi-byte AoE fields are big-endian; the ATA LBA and IDENTIFY words are little-endian.
//!
//! The kernel side reads frames through the `field` offsets and the constants here directly
//! (bounds checked against `data_end`), never through these slice views.

/// What every view shares, in smoltcp's shape: the struct over a buffer, `new_unchecked`,
/// `new_checked` (through the file's own `check_len`, the one part that differs) and
/// `into_inner`. `$checked` documents what `new_checked` guarantees.
macro_rules! checked_view {
    ($(#[$doc:meta])* $name:ident, $checked:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wrap a buffer without checking it.
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            #[doc = $checked]
            pub fn new_checked(buffer: T) -> Result<Self, $crate::wire::Truncated> {
                let p = $name { buffer };
                p.check_len()?;
                Ok(p)
            }

            pub fn into_inner(self) -> T {
                self.buffer
            }

            fn b(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}
pub(crate) use checked_view;

pub mod ata;
pub mod config;
pub mod header;
pub mod identify;
pub mod mask;
pub mod reserve;

pub use header::{AoeError, Command, Frame, Mac, MAC_LEN};

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

/// A byte range of a field, counted from the start of the frame (smoltcp's `Field`).
pub type Field = core::ops::Range<usize>;

/// A frame too short for what its own fields claim, or a length field beyond what the format
/// allows (a config string over 1024 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl core::fmt::Display for Truncated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("frame shorter than its fields claim")
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

/// `n` items of `size` bytes after `start` fit in a buffer of `len` bytes (no overflow).
#[inline]
pub(crate) fn fits(len: usize, start: usize, n: usize, size: usize) -> bool {
    n.checked_mul(size)
        .and_then(|b| b.checked_add(start))
        .is_some_and(|end| end <= len)
}

/// Sectors that fit in one frame of this MTU: `(MTU - 36) / 512`, the rule the Linux
/// initiator applies (it counts the Ethernet header against the MTU, so it is conservative).
pub const fn sectors_per_frame(mtu: usize) -> usize {
    if mtu < ata::ATA_HEADER_LEN {
        0
    } else {
        (mtu - ata::ATA_HEADER_LEN) / SECTOR_SIZE
    }
}
