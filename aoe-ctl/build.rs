//! Builds aoe-ebpf (the classifier) and leaves the object in OUT_DIR, where
//! `src/serve/xdp.rs` embeds it. How: the workspace's ebpf-build crate.

fn main() -> anyhow::Result<()> {
    ebpf_build::build("aoe-ebpf")
}
