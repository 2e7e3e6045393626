//! The AoE classifier: the first step of the data path.
//!
//! For every frame on the interface it decides, in this order:
//! not AoE (a tagged frame included), or a response -> XDP_PASS untouched;
//! tagged for another VLAN in the driver's metadata (native mode) -> XDP_PASS;
//! a group source MAC -> XDP_DROP;
//! ATA to a broadcast address -> XDP_DROP (never executed);
//! a broadcast no export would answer, or beyond the broadcast budget -> XDP_DROP;
//! not for one of our exports -> XDP_PASS untouched;
//! source MAC not on the export's mask list -> XDP_DROP;
//! Query Config read/test/test-prefix -> answered here with XDP_TX;
//! everything else -> the AF_XDP socket of this rx queue (XDP_PASS when none is bound).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod broadcast;
#[cfg(target_arch = "bpf")]
mod classifier;
#[cfg(target_arch = "bpf")]
mod config_reply;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod vlan;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("aoe-ebpf builds for bpfel-unknown-none only; it is embedded in aoe-ctl");
}
