//! Builds aoe-lab-ebpf (the lab's programs) and leaves the object in OUT_DIR, where
//! `src/lib.rs` embeds it. How: the workspace's ebpf-build crate.

fn main() -> anyhow::Result<()> {
    ebpf_build::build("aoe-lab-ebpf")
}
