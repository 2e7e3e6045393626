//! AF_PACKET sockets: a plain raw socket and one with PACKET_MMAP rings, and batches of
//! frames sent with `sendmmsg`. The initiator uses all three; the target uses the first two
//! for its announcement and its fallback data path.

pub mod batch;
pub mod ring;
pub mod socket;
