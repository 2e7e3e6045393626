//! A userspace AoE initiator over AF_PACKET: needs no kernel module.

pub mod bench;
pub mod client;
pub mod discover;
pub mod frames;
pub mod verify;
