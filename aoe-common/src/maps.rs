//! Map types shared by the XDP program and the loader. `#[repr(C)]`, no padding holes, plain
//! old data; with the `user` feature they implement `aya::Pod`.

use crate::wire::{config::CONFIG_HEADER_LEN, CONFIG_STRING_MAX};

/// Map names, as the loader finds them in the object.
pub const MAP_EXPORTS: &str = "EXPORTS";
pub const MAP_SETTINGS: &str = "SETTINGS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_XSKS: &str = "XSKS";
pub const MAP_EXPORT_COUNTERS: &str = "EXPORT_COUNTERS";
pub const MAP_GRANTS: &str = "GRANTS";
/// The program's name: the generic build, for skb mode (and BPF_PROG_TEST_RUN).
pub const PROG_CLASSIFIER: &str = "aoe_classifier";
/// The same classifier with the VLAN check, loaded bound to its device for native mode
/// (the check calls a kfunc that only a device-bound program can use).
pub const PROG_CLASSIFIER_NATIVE: &str = "aoe_classifier_native";

/// What the native program calls where it asks for a frame's VLAN tag: a helper number no
/// kernel has, that the loader replaces with a call of the kfunc
/// `bpf_xdp_metadata_rx_vlan_tag` (aya 0.14 cannot relocate kfunc calls itself).
pub const KFUNC_RX_VLAN_TAG_MARKER: u32 = 0x7A0E_0001;

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

/// A key of `GRANTS`: who may have a broadcast answered. With several exports on an
/// interface the kernel cannot check every export's mask list for a broadcast; it checks
/// this union instead, kept by user space: for each export (shelf S) and each MAC on its
/// list, `(MAC, S)` and `(MAC, ANY_SHELF)`; an export with an empty list grants `OPEN`.
/// The value counts the exports that grant it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GrantKey {
    pub mac: [u8; 6],
    /// Host order; `ANY_SHELF` for a broadcast to every shelf.
    pub shelf: u16,
}

impl GrantKey {
    /// The MAC of a grant made by an export whose mask list is empty (anyone may talk).
    pub const OPEN: [u8; 6] = [0; 6];
    pub const ANY_SHELF: u16 = crate::wire::SHELF_BROADCAST;

    pub const fn new(mac: [u8; 6], shelf: u16) -> Self {
        GrantKey { mac, shelf }
    }
}

/// Most entries of `GRANTS`: two per MAC on a list and export, for a full table.
pub const MAX_GRANTS: u32 = 2 * MAX_EXPORTS * MAX_MASKS as u32;

/// What user space may spend on broadcasts, per CPU: each broadcast let through costs one
/// reply per export on the interface (the most user space may answer), from a budget that
/// refills at `BROADCAST_REPLIES_PER_SEC` up to `BROADCAST_BURST`. The burst answers a
/// discovery of a full table at once; beyond the rate, broadcasts are dropped (counted), so
/// a host repeating them cannot hold the queue workers from the initiators' I/O.
pub const BROADCAST_REPLIES_PER_SEC: u64 = 16_384;
pub const BROADCAST_BURST: u64 = 2 * MAX_EXPORTS as u64;
/// The budget in time: nanoseconds of refill one reply costs.
pub const BROADCAST_NS_PER_REPLY: u64 = 1_000_000_000 / BROADCAST_REPLIES_PER_SEC;

/// Per-CPU state of the broadcast budget.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    /// Refill time banked, in ns (at most `BROADCAST_BURST * BROADCAST_NS_PER_REPLY`).
    pub credit_ns: u64,
    /// When it was last refilled (bpf_ktime_get_ns).
    pub last_ns: u64,
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
    /// The interface's MAC: a request addressed to another host's MAC is not ours.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
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
    /// Dropped: source MAC not on the export's mask list (for a broadcast: on no list of
    /// the exports it addresses).
    pub const DROP_ACL: u32 = 4;
    /// Dropped: an ATA command to a broadcast address (never executed).
    pub const DROP_BROADCAST_ATA: u32 = 5;
    /// Dropped: Query Config test / test-prefix that did not match (no reply is the answer).
    pub const DROP_CONFIG_MISMATCH: u32 = 6;
    /// For us, but no AF_XDP socket on that queue: passed to the stack.
    pub const NO_SOCKET: u32 = 7;
    /// Dropped: the source MAC is a group (multicast or broadcast) address; a reply would
    /// go to every host of the group.
    pub const DROP_GROUP_SOURCE: u32 = 8;
    /// Passed to the stack: addressed to another host's MAC, or tagged for another VLAN in
    /// the driver's metadata (native mode); what the stack marks PACKET_OTHERHOST. (A tag in
    /// the frame makes it not AoE: passed, not counted here.)
    pub const PASS_OTHER_HOST: u32 = 9;
    /// Dropped: a broadcast beyond the budget user space may spend on broadcasts.
    pub const DROP_BROADCAST_BUDGET: u32 = 10;
    pub const COUNT: u32 = 11;

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
        "dropped_group_source",
        "passed_other_host",
        "dropped_broadcast_budget",
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
    // SAFETY: as above (6 + 2 bytes, asserted below).
    unsafe impl aya::Pod for super::GrantKey {}
}

const _: () = assert!(core::mem::size_of::<ExportKey>() == 4);
const _: () = assert!(core::mem::size_of::<ExportEntry>() == 24 + 16 * MAX_MASKS + REPLY_BUF_LEN);
const _: () = assert!(core::mem::size_of::<Settings>() == 16);
const _: () = assert!(core::mem::size_of::<GrantKey>() == 8);
