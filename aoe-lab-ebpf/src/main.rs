//! The lab's eBPF programs, embedded in aoe-lab: `aoe_ceiling` (tc, the benchmark ceiling)
//! and `aoe_pass` (XDP_PASS for a veth peer). None of them is part of the product.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod ceiling;
#[cfg(target_arch = "bpf")]
mod pass;

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
    eprintln!("aoe-lab-ebpf builds for bpfel-unknown-none only; it is embedded in aoe-lab");
}
