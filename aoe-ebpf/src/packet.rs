//! Bounds-checked access to packet bytes, in the form the verifier accepts.

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};

/// A pointer to `N` bytes at `offset`, or None when the frame is shorter.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    Some((start + offset) as *mut [u8; N])
}

/// Whether the frame continues in fragments beyond its first buffer (jumbo, `xdp.frags`).
#[inline(always)]
pub fn has_frags(ctx: &XdpContext) -> bool {
    // SAFETY: helper call on our own context.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    whole > len(ctx)
}

/// Length of the frame's first buffer.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
