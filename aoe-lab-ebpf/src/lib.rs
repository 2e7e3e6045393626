//! What the lab's eBPF programs share with aoe-lab: their names, and the one map type.
#![no_std]

/// An XDP_PASS program for the peer of a veth in a lab: native XDP_TX on a veth is only
/// delivered when the peer has an XDP program.
pub const PROG_PASS: &str = "aoe_pass";

/// The benchmark ceiling (a tc program answering every request in the kernel, no storage)
/// and its one-entry settings map.
pub const PROG_CEILING: &str = "aoe_ceiling";
pub const MAP_CEILING: &str = "CEILING";

/// What the benchmark ceiling answers with (an array of one). Templates come from the same
/// wire-format code the target uses.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CeilingEntry {
    pub shelf: u16,
    pub slot: u8,
    /// Most sectors one read may ask for; more gets ERR + ABRT.
    pub max_sectors: u8,
    /// Our MAC: the source of every reply.
    pub mac: [u8; 6],
    /// 1 on a veth: replies go straight into the peer's ingress (`bpf_redirect_peer`).
    pub peer: u8,
    pub _pad: u8,
    /// A complete Query Config reply of 60 bytes (destination MAC and tag filled in per frame).
    pub config_reply: [u8; aoe_common::wire::MIN_FRAME_LEN],
    /// IDENTIFY DEVICE data.
    pub identify: [u8; aoe_common::wire::SECTOR_SIZE],
    /// A sector of zeros: the payload of every read.
    pub zeros: [u8; aoe_common::wire::SECTOR_SIZE],
}

// SAFETY: plain #[repr(C)] struct of integers and byte arrays without padding holes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CeilingEntry {}

const _: () = assert!(core::mem::size_of::<CeilingEntry>() == 12 + 60 + 2 * 512);
