//! Is a frame of this interface's own VLAN? XDP on a physical port is attached below every
//! VLAN device, so it serves untagged frames only (a priority tag, VLAN 0, is untagged). A tag
//! in the frame shows as ethertype 0x8100 or 0x88a8 and never reaches the AoE checks; a tag
//! the NIC (or a veth's peer) moved into the packet's metadata is only visible through the
//! kfunc `bpf_xdp_metadata_rx_vlan_tag`, which the native program calls here.

use aoe_common::maps::KFUNC_RX_VLAN_TAG_MARKER;
use aya_ebpf::{bindings::xdp_md, programs::XdpContext};

/// The VID of a tag in the metadata; 0 when there is none, or the driver cannot tell (the
/// loader then keeps rx VLAN stripping off, so the tag stays in the frame).
#[inline(always)]
pub fn metadata_vid(ctx: &XdpContext) -> u16 {
    let mut proto: u16 = 0;
    let mut tci: u16 = 0;
    // SAFETY: the marker is never called as a helper: the native loader turns this call into
    // one of the kfunc, whose arguments are the context and two writable u16s on our stack.
    let r = unsafe {
        let kfunc: unsafe extern "C" fn(*mut xdp_md, *mut u16, *mut u16) -> i32 =
            core::mem::transmute(KFUNC_RX_VLAN_TAG_MARKER as usize);
        kfunc(ctx.ctx, &mut proto, &mut tci)
    };
    if r != 0 {
        return 0;
    }
    tci & 0x0fff
}
