//! Broadcasts to an interface with several exports, which user space answers once per export:
//! only from a MAC some export it addresses would answer (`GRANTS`), and within a budget of
//! replies per second (`BUDGET`), so that what a host on the segment can make user space
//! spend on broadcasts is bounded whatever it sends.

use aoe_common::{
    maps::{GrantKey, BROADCAST_BURST, BROADCAST_NS_PER_REPLY},
    wire::SHELF_BROADCAST,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{BUDGET, GRANTS};

/// May `src` have a broadcast to `shelf` (`SHELF_BROADCAST`: every shelf) answered by some
/// export: one with an empty mask list, or one whose list holds `src`?
#[inline(always)]
pub fn granted(src: &[u8; 6], shelf: u16) -> bool {
    let shelf = if shelf == SHELF_BROADCAST {
        GrantKey::ANY_SHELF
    } else {
        shelf
    };
    GRANTS
        .get_ptr(&GrantKey::new(GrantKey::OPEN, shelf))
        .is_some()
        || GRANTS.get_ptr(&GrantKey::new(*src, shelf)).is_some()
}

/// Can this CPU's budget pay for a broadcast answered by up to `exports` exports? Refills
/// it first; `spend` then takes the cost, once the frame reached a socket (nothing is spent
/// on a frame user space never sees).
#[inline(always)]
pub fn affordable(exports: u32) -> bool {
    let Some(b) = BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, and nothing else on this CPU runs the program meanwhile.
    let b = unsafe { &mut *b };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let cap = BROADCAST_BURST * BROADCAST_NS_PER_REPLY;
    // The first time, `last_ns` is 0: a full budget.
    let elapsed = now.wrapping_sub(b.last_ns);
    b.last_ns = now;
    b.credit_ns = if elapsed >= cap {
        cap
    } else {
        (b.credit_ns + elapsed).min(cap)
    };
    b.credit_ns >= cost(exports)
}

/// Take the cost `affordable` checked (in the same run of the program, on the same CPU).
#[inline(always)]
pub fn spend(exports: u32) {
    if let Some(b) = BUDGET.get_ptr_mut(0) {
        // SAFETY: as in `affordable`.
        let b = unsafe { &mut *b };
        b.credit_ns = b.credit_ns.saturating_sub(cost(exports));
    }
}

#[inline(always)]
fn cost(exports: u32) -> u64 {
    u64::from(exports) * BROADCAST_NS_PER_REPLY
}
