//! Serving: the data path in the order a frame travels. The kernel classifier (`xdp`) hands
//! ATA frames to the queue workers (`xsk`, `worker`; `packet_worker` where XDP cannot run);
//! the engine parses each into a typed request (`request`), executes it (`ata`, `config`,
//! `control`, against `export`'s state and its `backend`) and writes the reply (`reply`,
//! with `status` mapping failures to ATA registers).

pub mod access;
pub mod ata;
pub mod backend;
pub mod chunks;
pub mod config;
pub mod control;
pub mod engine;
pub mod export;
pub mod in_flight;
pub mod latency;
pub mod live_engine;
pub mod packet_worker;
pub mod reply;
pub mod request;
pub mod status;
pub mod vlan_tags;
pub mod worker;
pub mod xdp;
pub mod xdp_native;
pub mod xsk;

#[cfg(test)]
mod engine_tests;
