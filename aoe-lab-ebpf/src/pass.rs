//! `aoe_pass`: lets XDP_TX frames from a veth peer in; see `aoe_lab_ebpf::PROG_PASS`.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp(frags)]
pub fn aoe_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
