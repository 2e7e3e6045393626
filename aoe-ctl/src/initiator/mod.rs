//! A userspace AoE initiator over AF_PACKET.

pub mod frames;
