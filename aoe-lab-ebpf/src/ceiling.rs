//! `aoe_ceiling`: the benchmark ceiling. A tc ingress program that answers every AoE request
//! for its shelf/slot in the kernel, with no storage behind it: reads get zeros, writes are
//! acknowledged and discarded, IDENTIFY and Query Config come from templates user space put in
//! `CEILING`. The fastest any target could answer on this path; never a product feature.
//!
//! Why tc and not XDP: a read reply is ~1 KiB longer than its request, and on veth the XDP
//! buffer of a short frame has too little tailroom (it sits in a small page-pool fragment)
//! and 256 bytes of headroom, so it cannot grow that much. `bpf_skb_change_tail` grows an
//! skb by any amount.
//!
//! On a veth the reply goes straight to the peer's ingress (`bpf_redirect_peer`), not out
//! through a second veth transmit and the peer's XDP program: the ceiling is there to show
//! what the client can drive, so its own answer should cost as little as it can.

use aoe_common::wire::{
    ata::{self as a, field as ata, ERROR_ABRT, STATUS_DRDY, STATUS_ERR},
    header::{field, CMD_ATA, CMD_QUERY_CONFIG, FLAG_RESPONSE},
    ETHERTYPE_AOE, MIN_FRAME_LEN, SECTOR_SIZE, SHELF_BROADCAST, SLOT_BROADCAST,
};
use aoe_lab_ebpf::CeilingEntry;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{
        bpf_redirect, bpf_redirect_peer, bpf_skb_change_tail, bpf_skb_store_bytes,
    },
    macros::{classifier, map},
    maps::Array,
    programs::TcContext,
};

/// What the ceiling answers with, written by aoe-lab before it attaches the program.
#[map]
static CEILING: Array<CeilingEntry> = Array::with_max_entries(1, 0);

#[classifier]
pub fn aoe_ceiling(ctx: TcContext) -> i32 {
    match answer(&ctx) {
        Some(action) => action,
        None => TC_ACT_OK as i32,
    }
}

#[inline(always)]
fn answer(ctx: &TcContext) -> Option<i32> {
    let entry = CEILING.get(0)?;
    let mut hdr: [u8; ata::DATA] = ctx.load(0).ok()?;
    let ethertype = ETHERTYPE_AOE.to_be_bytes();
    if hdr[field::ETHERTYPE] != ethertype[0]
        || hdr[field::ETHERTYPE + 1] != ethertype[1]
        || hdr[field::VER_FLAGS] & FLAG_RESPONSE != 0
    {
        return None;
    }
    let shelf = u16::from_be_bytes([hdr[field::MAJOR], hdr[field::MAJOR + 1]]);
    let slot = hdr[field::MINOR];
    let broadcast = shelf == SHELF_BROADCAST || slot == SLOT_BROADCAST;
    if (shelf != entry.shelf && shelf != SHELF_BROADCAST)
        || (slot != entry.slot && slot != SLOT_BROADCAST)
    {
        return None;
    }
    let command = hdr[field::COMMAND];
    let mut src = [0u8; 6];
    src.copy_from_slice(&hdr[field::SRC..field::SRC + 6]);
    let tag: [u8; 4] = [
        hdr[field::TAG],
        hdr[field::TAG + 1],
        hdr[field::TAG + 2],
        hdr[field::TAG + 3],
    ];

    if command == CMD_QUERY_CONFIG {
        resize(ctx, MIN_FRAME_LEN)?;
        store(ctx, 0, &entry.config_reply)?;
        store(ctx, field::DST, &src)?;
        store(ctx, field::TAG, &tag)?;
        return Some(reflect(ctx, entry));
    }
    if command != CMD_ATA || broadcast {
        // Never execute an ATA command sent to everyone; anything else is not ours to fake.
        return Some(TC_ACT_SHOT);
    }

    let count = hdr[ata::SECTOR_COUNT] as usize;
    let opcode = hdr[ata::CMD_STATUS];
    let (status, error, payload) = match opcode {
        // READ SECTORS (EXT): `count` sectors of zeros.
        a::OP_READ_SECTORS | a::OP_READ_SECTORS_EXT
            if count >= 1 && count <= entry.max_sectors as usize =>
        {
            (STATUS_DRDY, 0, count)
        }
        // WRITE SECTORS (EXT), FLUSH CACHE (EXT), CHECK POWER MODE: done, nothing to return.
        a::OP_WRITE_SECTORS
        | a::OP_WRITE_SECTORS_EXT
        | a::OP_FLUSH_CACHE
        | a::OP_FLUSH_CACHE_EXT
        | a::OP_CHECK_POWER_MODE => (STATUS_DRDY, 0, 0),
        // IDENTIFY DEVICE: the template.
        a::OP_IDENTIFY_DEVICE => (STATUS_DRDY, 0, 1),
        _ => (STATUS_DRDY | STATUS_ERR, ERROR_ABRT, 0),
    };
    let len = ata::DATA + payload * SECTOR_SIZE;
    resize(
        ctx,
        if len < MIN_FRAME_LEN {
            MIN_FRAME_LEN
        } else {
            len
        },
    )?;

    hdr[field::DST..field::DST + 6].copy_from_slice(&src);
    hdr[field::SRC..field::SRC + 6].copy_from_slice(&entry.mac);
    hdr[field::VER_FLAGS] |= FLAG_RESPONSE;
    hdr[field::ERROR] = 0;
    hdr[ata::ERR_FEATURE] = error;
    hdr[ata::CMD_STATUS] = status;
    store(ctx, 0, &hdr)?;
    // Read payloads need no writing: bpf_skb_change_tail zero-fills what it adds.
    if opcode == a::OP_IDENTIFY_DEVICE {
        store(ctx, ata::DATA, &entry.identify)?;
    }
    if len < MIN_FRAME_LEN {
        // Whatever the request carried after its headers is not part of the reply.
        store(ctx, ata::DATA, &[0u8; MIN_FRAME_LEN - ata::DATA])?;
    }
    Some(reflect(ctx, entry))
}

/// Make the frame exactly `len` bytes long.
#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Option<()> {
    // SAFETY: helper call on our own context.
    let r = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
    (r == 0).then_some(())
}

#[inline(always)]
fn store<const N: usize>(ctx: &TcContext, offset: usize, bytes: &[u8; N]) -> Option<()> {
    // SAFETY: `bytes` is N readable bytes; the helper checks the offset against the frame.
    let r = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb,
            offset as u32,
            bytes.as_ptr() as *const _,
            N as u32,
            0,
        )
    };
    (r == 0).then_some(())
}

/// Send the frame back: into the veth peer's ingress, or out of the interface it came in on.
#[inline(always)]
fn reflect(ctx: &TcContext, entry: &CeilingEntry) -> i32 {
    // SAFETY: reading a field of our own context; helper call with it.
    unsafe {
        let ifindex = (*ctx.skb.skb).ifindex;
        if entry.peer != 0 {
            bpf_redirect_peer(ifindex, 0) as i32
        } else {
            bpf_redirect(ifindex, 0) as i32
        }
    }
}
