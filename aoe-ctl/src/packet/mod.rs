//! AF_PACKET sockets: a plain raw socket and one with PACKET_MMAP rings. The initiator uses
//! both; the target uses them for its announcement and its fallback data path.

pub mod ring;
pub mod socket;
