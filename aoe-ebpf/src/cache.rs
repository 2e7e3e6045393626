//! ATA reads answered from the export's kernel cache with XDP_TX (docs/architecture.md,
//! "The kernel cache"). A read of one block (2 sectors at an even LBA) is answered here when
//! its slot holds the block, filled under the slot's current write generation, and the
//! slot did not change while it was copied. Anything else goes on to user space with the
//! request as it arrived: a miss, a stale or torn copy, a frame that cannot grow.

use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

use aoe_common::{
    maps::{
        cache::{self, Slot, BLOCK_BYTES, BLOCK_SECTORS},
        counter, export_counter, ExportEntry,
    },
    wire::{
        ata::{
            field as ata, AFLAG_LBA48, AFLAG_WRITE, ATA_HEADER_LEN, OP_READ_SECTORS,
            OP_READ_SECTORS_EXT, STATUS_DRDY,
        },
        header::{field, FLAG_RESPONSE, VERSION_SHIFT},
        AOE_VERSION,
    },
};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    programs::XdpContext,
};

use crate::{
    maps::{count, count_export, CACHES},
    packet,
};

const REPLY_LEN: usize = ATA_HEADER_LEN + BLOCK_BYTES;

/// `Some(XDP_TX)` when answered here, `None` to leave the frame to user space.
#[inline(always)]
pub fn answer(ctx: &XdpContext, entry: &ExportEntry) -> Option<u32> {
    let slots = entry.cache_slots;
    // While reserved, user space checks every ATA request's source.
    if slots == 0 || entry.reserved != 0 || packet::has_frags(ctx) {
        return None;
    }
    let req = packet::bytes_at::<ATA_HEADER_LEN>(ctx, 0)?;
    // SAFETY: bounds checked by bytes_at.
    let req = unsafe { &*req };
    let op = req[ata::CMD_STATUS];
    let aflags = req[ata::AFLAGS];
    if req[field::VER_FLAGS] >> VERSION_SHIFT != AOE_VERSION
        || (op != OP_READ_SECTORS && op != OP_READ_SECTORS_EXT)
        || aflags & AFLAG_WRITE != 0
        || u64::from(req[ata::SECTOR_COUNT]) != BLOCK_SECTORS
    {
        return None;
    }
    let lba = lba(req, aflags);
    if lba % BLOCK_SECTORS != 0 {
        return None;
    }
    let slot = CACHES.get_value(entry.index, &cache::slot_of(lba, slots))?;
    let (seq, filled) = match check(slot, lba) {
        Ok(v) => v,
        Err(column) => {
            count_export(entry, column);
            return None;
        }
    };

    // The reply is the request grown to 1060 bytes. On veth (a small frame is copied into
    // a buffer just its size) this fails; NIC drivers give every frame a page or half one.
    let delta = REPLY_LEN as i32 - packet::len(ctx) as i32;
    // SAFETY: helper call on our own context.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        count_export(entry, export_counter::CACHE_NO_ROOM);
        return None;
    }
    // SAFETY: the source is the map value's data array, BLOCK_BYTES long; the helper checks
    // the frame's bounds.
    let copied = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            ATA_HEADER_LEN as u32,
            addr_of!(slot.data) as *mut _,
            BLOCK_BYTES as u32,
        )
    };
    fence();
    // SAFETY: fields of a map value the kernel keeps alive for this run (user space may be
    // writing them: the reads are volatile and their result only decides).
    let same = unsafe { read_volatile(&slot.seq) == seq && read_volatile(&slot.gen) == filled };
    if copied != 0 || !same {
        count_export(entry, export_counter::CACHE_TORN);
        // Back to the request's length for user space (only its first 36 bytes matter).
        // SAFETY: helper call on our own context.
        if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -delta) } != 0 {
            return Some(xdp_action::XDP_DROP);
        }
        return None;
    }

    let Some(out) = packet::bytes_at::<ATA_HEADER_LEN>(ctx, 0) else {
        return Some(xdp_action::XDP_DROP);
    };
    // SAFETY: bounds checked by bytes_at.
    let out = unsafe { &mut *out };
    // The reply user space would send: addresses swapped, R flag, status DRDY, the rest of
    // the request's arguments echoed.
    let mut src = [0u8; 6];
    src.copy_from_slice(&out[field::SRC_BYTES]);
    out[field::DST_BYTES].copy_from_slice(&src);
    out[field::SRC_BYTES].copy_from_slice(&entry.reply[field::SRC_BYTES]);
    out[field::VER_FLAGS] = (AOE_VERSION << VERSION_SHIFT) | FLAG_RESPONSE;
    out[field::ERROR] = 0;
    out[ata::ERR_FEATURE] = 0;
    out[ata::CMD_STATUS] = STATUS_DRDY;
    count(counter::ANSWERED);
    count_export(entry, export_counter::CACHE_HIT);
    Some(xdp_action::XDP_TX)
}

/// The slot's sequence and generation when it holds block `lba` filled under its current
/// generation; otherwise the counter that says why not.
#[inline(always)]
fn check(slot: &Slot, lba: u64) -> Result<(u64, u64), u32> {
    // SAFETY: fields of a live map value (see above).
    let seq = unsafe { read_volatile(&slot.seq) };
    if seq & 1 != 0 {
        return Err(export_counter::CACHE_TORN);
    }
    fence();
    // SAFETY: as above.
    let (held, filled, gen) = unsafe {
        (
            read_volatile(&slot.lba),
            read_volatile(&slot.filled),
            read_volatile(&slot.gen),
        )
    };
    if held != lba {
        return Err(export_counter::CACHE_MISS);
    }
    if filled != gen {
        return Err(export_counter::CACHE_STALE);
    }
    Ok((seq, filled))
}

/// The LBA as user space decodes it (`AtaRepr::lba`): 48 bits with the E flag, else 28.
#[inline(always)]
fn lba(req: &[u8; ATA_HEADER_LEN], aflags: u8) -> u64 {
    let r = |i: usize| u64::from(req[ata::LBA + i]);
    if aflags & AFLAG_LBA48 != 0 {
        r(0) | r(1) << 8 | r(2) << 16 | r(3) << 24 | r(4) << 32 | r(5) << 40
    } else {
        r(0) | r(1) << 8 | r(2) << 16 | (r(3) & 0x0F) << 24
    }
}

/// Keep the slot's reads in program order around the copy. BPF (cpu v1, as this object is
/// built) has no barrier instruction, so this orders the compiler only: the JIT emits the
/// loads in order and x86-64 keeps loads in order (TSO), which is why `--kernel-cache` is
/// refused on other architectures. User space's side uses real atomics.
#[inline(always)]
fn fence() {
    compiler_fence(Ordering::SeqCst);
}
