//! aoe-ctl: an ATA over Ethernet target whose data path runs in XDP and AF_XDP, and a
//! userspace initiator that needs no kernel module.

pub mod ceiling;
pub mod initiator;
pub mod net;
pub mod target;
