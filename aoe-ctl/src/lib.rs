//! aoe-ctl: an ATA over Ethernet target whose data path runs in XDP and AF_XDP, and a
//! userspace initiator that needs no kernel module.

pub mod address;
pub mod admin;
pub mod daemon;
pub mod initiator;
pub mod net;
pub mod packet;
pub mod pinned;
pub mod prometheus;
pub mod serve;
