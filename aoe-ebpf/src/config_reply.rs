//! Query Config read / test / test-prefix answered in the kernel with XDP_TX.
//!
//! The reply is prepared by user space in the export's map entry (our MAC, real shelf/slot,
//! the current string, padded to 60 bytes); here we only check a test string, resize the
//! frame, copy the reply in and set the destination MAC and the tag.

use aoe_common::{
    maps::{counter, export_counter, ExportEntry, REPLY_BUF_LEN},
    wire::{
        config::{self, CCMD_MASK, CCMD_READ, CCMD_TEST, CCMD_TEST_PREFIX},
        header::{field, HEADER_LEN},
        CONFIG_STRING_MAX, MIN_FRAME_LEN,
    },
};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use aya_log_ebpf::debug;

use crate::{
    maps::{count, count_export},
    packet,
};

/// `Some(action)` when handled here, `None` to leave the frame to user space.
#[inline(always)]
pub fn answer(ctx: &XdpContext, entry: &ExportEntry, src: [u8; 6]) -> Option<u32> {
    // A query is short; resizing a fragmented one here would send its fragments along.
    if packet::has_frags(ctx) {
        return None;
    }
    let arg = packet::bytes_at::<{ config::CONFIG_HEADER_LEN }>(ctx, 0)?;
    // SAFETY: bounds checked by bytes_at.
    let arg = unsafe { &*arg };
    let ccmd = arg[config::field::VER_CCMD] & CCMD_MASK;
    if ccmd > CCMD_TEST_PREFIX {
        return None;
    }
    let tag = [
        arg[field::TAG],
        arg[field::TAG + 1],
        arg[field::TAG + 2],
        arg[field::TAG + 3],
    ];
    if ccmd != CCMD_READ {
        let len = usize::from(u16::from_be_bytes([
            arg[config::field::STRING_LEN],
            arg[config::field::STRING_LEN + 1],
        ]));
        // A string longer than the frame or the spec: user space decides (it drops it).
        if len > CONFIG_STRING_MAX || config::CONFIG_HEADER_LEN + len > packet::len(ctx) {
            return None;
        }
        let current = entry.config_len as usize;
        let fits = if ccmd == CCMD_TEST {
            len == current
        } else {
            len <= current
        };
        if !fits || !string_matches(ctx, entry, len)? {
            count(counter::DROP_CONFIG_MISMATCH);
            count_export(entry, export_counter::DROP_CONFIG_MISMATCH);
            return Some(xdp_action::XDP_DROP);
        }
    }

    // The mask (not a range check) is what keeps the verifier sure of the copy's bounds.
    let reply_len = (entry.reply_len & (REPLY_BUF_LEN as u32 - 1)) as usize;
    if reply_len < MIN_FRAME_LEN {
        return None;
    }
    let delta = reply_len as i32 - packet::len(ctx) as i32;
    // Grow at the head: veth in native mode has headroom but little tailroom.
    let resized = if delta > 0 {
        // SAFETY: helper call on our own context.
        unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) }
    } else if delta < 0 {
        // SAFETY: as above.
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) }
    } else {
        0
    };
    if resized != 0 {
        debug!(
            ctx,
            "config reply of {} bytes does not fit; left to user space", reply_len
        );
        return None;
    }
    // SAFETY: the source is the map value, `reply_len` is bounded by its size above.
    let stored = unsafe {
        bpf_xdp_store_bytes(ctx.ctx, 0, entry.reply.as_ptr() as *mut _, reply_len as u32)
    };
    let Some(out) = packet::bytes_at::<HEADER_LEN>(ctx, 0) else {
        return Some(xdp_action::XDP_DROP);
    };
    if stored != 0 {
        return Some(xdp_action::XDP_DROP);
    }
    // SAFETY: bounds checked by bytes_at.
    let out = unsafe { &mut *out };
    out[field::DST_BYTES].copy_from_slice(&src);
    out[field::TAG_BYTES].copy_from_slice(&tag);
    count(counter::ANSWERED);
    count_export(entry, export_counter::ANSWERED);
    Some(xdp_action::XDP_TX)
}

/// Compare the request's `len`-byte string with the start of the current one.
/// `None` when the frame does not carry the bytes it claims (left to user space).
#[inline(always)]
fn string_matches(ctx: &XdpContext, entry: &ExportEntry, len: usize) -> Option<bool> {
    // Volatile reads: otherwise LLVM drops the per-byte check below as implied by the
    // caller's length check, and the verifier (which cannot see that) rejects the program.
    // SAFETY: reading fields of our own context.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    };
    let start = data + config::CONFIG_HEADER_LEN;
    for i in 0..CONFIG_STRING_MAX {
        if i >= len {
            break;
        }
        let p = start + i;
        if p + 1 > end {
            return None;
        }
        // SAFETY: p is inside the packet (checked against data_end just above).
        let byte = unsafe { *(p as *const u8) };
        if byte != entry.reply[config::CONFIG_HEADER_LEN + i] {
            return Some(false);
        }
    }
    Some(true)
}
