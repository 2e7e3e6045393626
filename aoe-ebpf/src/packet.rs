//! Bounds-checked access to packet bytes, in the form the verifier accepts.

use aya_ebpf::programs::XdpContext;

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

/// Length of the frame's first buffer.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
