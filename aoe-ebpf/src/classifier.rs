//! The entry points: `aoe_classifier` (generic, for skb mode) and `aoe_classifier_native`
//! (the same, and the VLAN metadata check that only a device-bound program can make).

use aoe_common::{
    maps::{counter, export_counter, ExportEntry, ExportKey, MAX_MASKS},
    wire::{
        header::{field, CMD_ATA, CMD_QUERY_CONFIG, FLAG_RESPONSE, HEADER_LEN, VERSION_SHIFT},
        AOE_VERSION, ETHERTYPE_AOE, SHELF_BROADCAST, SLOT_BROADCAST,
    },
};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::{
    broadcast, config_reply,
    maps::{count, count_export, EXPORTS, SETTINGS, XSKS},
    packet, vlan,
};

// `frags`: jumbo frames arrive as several buffers; the AoE headers are always in the first.
#[xdp(frags)]
pub fn aoe_classifier(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

#[xdp(frags)]
pub fn aoe_classifier_native(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

#[inline(always)]
fn run<const VLAN_METADATA: bool>(ctx: &XdpContext) -> u32 {
    count(counter::SEEN);
    let action = classify::<VLAN_METADATA>(ctx);
    if action == xdp_action::XDP_PASS {
        count(counter::PASSED);
    }
    action
}

#[inline(always)]
fn classify<const VLAN_METADATA: bool>(ctx: &XdpContext) -> u32 {
    let Some(hdr) = packet::bytes_at::<HEADER_LEN>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by bytes_at.
    let hdr = unsafe { &*hdr };
    if u16::from_be_bytes([hdr[field::ETHERTYPE], hdr[field::ETHERTYPE + 1]]) != ETHERTYPE_AOE {
        return xdp_action::XDP_PASS;
    }
    let ver_flags = hdr[field::VER_FLAGS];
    if ver_flags & FLAG_RESPONSE != 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(settings) = SETTINGS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // For another host (its MAC, or another VLAN's frame): the stack has it, and marks it so.
    let d = field::DST;
    let m = &settings.mac;
    let to_us = hdr[d] & 1 != 0 // a group address: broadcast or multicast
        || (hdr[d] == m[0]
            && hdr[d + 1] == m[1]
            && hdr[d + 2] == m[2]
            && hdr[d + 3] == m[3]
            && hdr[d + 4] == m[4]
            && hdr[d + 5] == m[5]);
    if !to_us || (VLAN_METADATA && vlan::metadata_vid(ctx) != 0) {
        count(counter::PASS_OTHER_HOST);
        return xdp_action::XDP_PASS;
    }
    // A reply to a group address would go to every host of the group (a 60-byte read from
    // ff:ff:ff:ff:ff:ff would broadcast its sectors): no source may be one.
    if hdr[field::SRC] & 1 != 0 {
        count(counter::DROP_GROUP_SOURCE);
        return xdp_action::XDP_DROP;
    }
    let shelf = u16::from_be_bytes([hdr[field::MAJOR], hdr[field::MAJOR + 1]]);
    let slot = hdr[field::MINOR];
    let command = hdr[field::COMMAND];
    let src = [
        hdr[field::SRC],
        hdr[field::SRC + 1],
        hdr[field::SRC + 2],
        hdr[field::SRC + 3],
        hdr[field::SRC + 4],
        hdr[field::SRC + 5],
    ];

    let key = if shelf == SHELF_BROADCAST || slot == SLOT_BROADCAST {
        if settings.export_count == 0 {
            return xdp_action::XDP_PASS;
        }
        if command == CMD_ATA {
            // A broadcast write would hit every target on the segment: never execute it.
            count(counter::DROP_BROADCAST_ATA);
            return xdp_action::XDP_DROP;
        }
        if settings.export_count > 1 {
            // Several exports may match: user space answers for each, if any of them would
            // (the union of their mask lists), and as far as the budget goes.
            if !broadcast::granted(&src, shelf) {
                count(counter::DROP_ACL);
                return xdp_action::XDP_DROP;
            }
            if !broadcast::affordable(settings.export_count) {
                count(counter::DROP_BROADCAST_BUDGET);
                return xdp_action::XDP_DROP;
            }
            let action = redirect(ctx);
            if action == xdp_action::XDP_REDIRECT {
                broadcast::spend(settings.export_count);
            }
            return action;
        }
        let single = settings.single;
        if (shelf != SHELF_BROADCAST && shelf != single.shelf)
            || (slot != SLOT_BROADCAST && slot != single.slot)
        {
            return xdp_action::XDP_PASS;
        }
        single
    } else {
        ExportKey::new(shelf, slot)
    };

    let Some(entry) = EXPORTS.get_ptr(&key) else {
        // Another target on the segment may serve it.
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a map value pointer returned by the kernel, valid for this program run.
    let entry = unsafe { &*entry };

    if entry.mask_count != 0 && !mask_allows(entry, &src) {
        count(counter::DROP_ACL);
        count_export(entry, export_counter::DROP_ACL);
        return xdp_action::XDP_DROP;
    }

    if ver_flags >> VERSION_SHIFT == AOE_VERSION && command == CMD_QUERY_CONFIG {
        if let Some(action) = config_reply::answer(ctx, entry, src) {
            return action;
        }
    }
    let action = redirect(ctx);
    if action == xdp_action::XDP_REDIRECT {
        count_export(entry, export_counter::REDIRECTED);
    }
    action
}

#[inline(always)]
fn mask_allows(entry: &ExportEntry, src: &[u8; 6]) -> bool {
    let n = entry.mask_count as usize;
    for i in 0..MAX_MASKS {
        if i >= n {
            break;
        }
        let m = &entry.masks[i];
        if m[0] == src[0]
            && m[1] == src[1]
            && m[2] == src[2]
            && m[3] == src[3]
            && m[4] == src[4]
            && m[5] == src[5]
        {
            return true;
        }
    }
    false
}

#[inline(always)]
fn redirect(ctx: &XdpContext) -> u32 {
    match XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(counter::REDIRECTED);
            action
        }
        Err(action) => {
            count(counter::NO_SOCKET);
            action
        }
    }
}
