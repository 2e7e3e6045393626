fn main() -> anyhow::Result<()> {
    let mut bpf = aya::Ebpf::load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/aoe")))?;
    let p: &mut aya::programs::Xdp = bpf.program_mut("aoe_classifier").unwrap().try_into()?;
    p.load()?;
    println!("loaded");
    Ok(())
}
