//! aoe-lab: instruments for labs and benchmarks, kept out of the product. aoe-ctl embeds
//! the classifier alone; the programs here come from aoe-lab-ebpf, a separate object.

pub mod ceiling;
pub mod echo;
pub mod faultfs;
pub mod flip;
pub mod peer;

/// The lab's eBPF object built from aoe-lab-ebpf by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/aoe-lab-ebpf"));
