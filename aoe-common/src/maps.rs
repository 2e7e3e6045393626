//! Map types shared by the XDP program and the loader. `#[repr(C)]`, no padding holes, plain
//! old data; with the `user` feature they implement `aya::Pod`.

use crate::wire::{config::CONFIG_HEADER_LEN, CONFIG_STRING_MAX};

/// Map names, as the loader finds them in the object.
pub const MAP_EXPORTS: &str = "EXPORTS";
pub const MAP_SETTINGS: &str = "SETTINGS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_XSKS: &str = "XSKS";
pub const MAP_EXPORT_COUNTERS: &str = "EXPORT_COUNTERS";
/// The program's name.
pub const PROG_CLASSIFIER: &str = "aoe_classifier";

/// Shortest reply the kernel sends (the shortest Ethernet frame).
pub const MIN_REPLY: usize = crate::wire::MIN_FRAME_LEN;
/// Most exports one interface's program knows: 4,096, so one daemon can serve a large segment
/// (docs/scale-out.md measures discovery at that size; the table costs ~7 MiB of kernel memory).
pub const MAX_EXPORTS: u32 = 4096;
/// Most receive queues (XSKMAP entries).
pub const MAX_QUEUES: u32 = 64;
/// Most MAC mask list entries per export.
pub const MAX_MASKS: usize = 32;
/// The longest Query Config reply: headers + a 1024-byte string.
pub const CONFIG_REPLY_MAX: usize = CONFIG_HEADER_LEN + CONFIG_STRING_MAX;
/// Size of the reply buffer in the map: a power of two above `CONFIG_REPLY_MAX`, so the
/// kernel can bound the copy length with a mask the compiler cannot fold away (a range
/// check alone was optimised into a form the verifier could not follow).
pub const REPLY_BUF_LEN: usize = 2048;
const _: () = assert!(REPLY_BUF_LEN >= CONFIG_REPLY_MAX && REPLY_BUF_LEN.is_power_of_two());

/// Key of the export table: shelf (host order) and slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ExportKey {
    pub shelf: u16,
    pub slot: u8,
    pub _pad: u8,
}

impl ExportKey {
    pub const fn new(shelf: u16, slot: u8) -> Self {
        ExportKey {
            shelf,
            slot,
            _pad: 0,
        }
    }
}

/// What the kernel needs to filter and answer for one export.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExportEntry {
    /// Length of the Query Config reply in `reply` (already padded to 60 bytes).
    pub reply_len: u32,
    /// Entries in use in `masks`; 0 means every MAC may talk to the export.
    pub mask_count: u32,
    /// Length of the current config string (it sits at `reply[32..]`).
    pub config_len: u32,
    /// Non-zero while reserved: ATA frames then go to user space for the check.
    pub reserved: u32,
    /// This export's row in `EXPORT_COUNTERS` (below `MAX_EXPORTS`).
    pub index: u32,
    /// Entries in use in `reserve` (the reservation list, for `aoe-ctl reservation`).
    pub reserve_count: u32,
    /// The MAC mask list, each MAC in the first 6 bytes of 8.
    pub masks: [[u8; 8]; MAX_MASKS],
    /// The reservation list, each MAC in the first 6 bytes of 8. User space enforces it (a
    /// conflict gets an AoE error reply); it is here so a second process can read and clear it.
    pub reserve: [[u8; 8]; MAX_MASKS],
    /// A complete Query Config reply: our MAC as source, real shelf/slot, the current string.
    /// The kernel fills in the destination MAC and the tag.
    pub reply: [u8; REPLY_BUF_LEN],
}

impl ExportEntry {
    pub const fn zeroed() -> Self {
        ExportEntry {
            reply_len: 0,
            mask_count: 0,
            config_len: 0,
            reserved: 0,
            index: 0,
            reserve_count: 0,
            masks: [[0; 8]; MAX_MASKS],
            reserve: [[0; 8]; MAX_MASKS],
            reply: [0; REPLY_BUF_LEN],
        }
    }
}

/// Per-interface settings (an array of one).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// How many exports `EXPORTS` holds.
    pub export_count: u32,
    /// With exactly one export, its key: broadcast config queries are then answered in the
    /// kernel.
    pub single: ExportKey,
}

/// Indices of the per-CPU counters the classifier keeps.
pub mod counter {
    /// Every frame the program saw.
    pub const SEEN: u32 = 0;
    /// Passed to the stack: not AoE, a response, or not addressed to our exports.
    pub const PASSED: u32 = 1;
    /// Query Config answered in the kernel with XDP_TX.
    pub const ANSWERED: u32 = 2;
    /// Redirected into an AF_XDP socket.
    pub const REDIRECTED: u32 = 3;
    /// Dropped: source MAC not on the export's mask list.
    pub const DROP_ACL: u32 = 4;
    /// Dropped: an ATA command to a broadcast address (never executed).
    pub const DROP_BROADCAST_ATA: u32 = 5;
    /// Dropped: Query Config test / test-prefix that did not match (no reply is the answer).
    pub const DROP_CONFIG_MISMATCH: u32 = 6;
    /// For us, but no AF_XDP socket on that queue: passed to the stack.
    pub const NO_SOCKET: u32 = 7;
    pub const COUNT: u32 = 8;

    /// Names, for `aoe-ctl` output, indexed like the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "passed",
        "answered_in_kernel",
        "redirected",
        "dropped_acl",
        "dropped_broadcast_ata",
        "dropped_config_mismatch",
        "no_socket",
    ];
}

/// Columns of the per-export, per-CPU counters the classifier keeps: row `entry.index`
/// starts at `entry.index * export_counter::COUNT` in `EXPORT_COUNTERS`.
pub mod export_counter {
    /// Query Config answered in the kernel.
    pub const ANSWERED: u32 = 0;
    /// Redirected to user space.
    pub const REDIRECTED: u32 = 1;
    /// Dropped: source MAC not on the mask list.
    pub const DROP_ACL: u32 = 2;
    /// Dropped: Query Config test / test-prefix that did not match.
    pub const DROP_CONFIG_MISMATCH: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers and byte arrays without padding holes.
    unsafe impl aya::Pod for super::ExportKey {}
    // SAFETY: as above (the size asserts below rule out padding).
    unsafe impl aya::Pod for super::ExportEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
}

const _: () = assert!(core::mem::size_of::<ExportKey>() == 4);
const _: () = assert!(core::mem::size_of::<ExportEntry>() == 24 + 16 * MAX_MASKS + REPLY_BUF_LEN);
const _: () = assert!(core::mem::size_of::<Settings>() == 8);
