//! Serving: protocol engine, queue workers and block backend, in the order a frame
//! travels (kernel classifier -> `xsk` sockets -> `worker` -> `engine` -> `backend`).

pub mod access;
pub mod ata;
pub mod backend;
pub mod chunks;
pub mod config;
pub mod control;
pub mod engine;
pub mod export;
pub mod live_engine;
pub mod packet_worker;
pub mod worker;
pub mod xdp;
pub mod xsk;

#[cfg(test)]
mod engine_tests;
