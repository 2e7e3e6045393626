//! AoE r11 wire format and the map types shared by the XDP program (`aoe-ebpf`) and the
//! user-space target (`aoe-ctl`).
//!
//! Everything here is `no_std` and allocation-free so the kernel side can use the same
//! offsets and constants as user space.
#![no_std]

pub mod maps;
pub mod wire;
