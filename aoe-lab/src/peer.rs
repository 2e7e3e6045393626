//! `aoe-lab peer`: the XDP_PASS program on the peer of a veth, so that native-mode XDP_TX
//! replies from the other end are delivered (real NICs need no such thing).

use anyhow::{anyhow, Context, Result};
use aoe_lab_ebpf::PROG_PASS;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

use crate::OBJECT;

/// Attach the pass program to `iface`; it stays attached until the returned object is
/// dropped.
pub fn attach(iface: &str) -> Result<Ebpf> {
    let mut bpf = Ebpf::load(OBJECT).context("loading the lab's eBPF object")?;
    let prog: &mut Xdp = bpf
        .program_mut(PROG_PASS)
        .ok_or_else(|| anyhow!("program {PROG_PASS} missing"))?
        .try_into()?;
    prog.load()?;
    prog.attach(iface, XdpMode::Driver)
        .or_else(|_| prog.attach(iface, XdpMode::Skb))
        .with_context(|| format!("attaching the pass program to {iface}"))?;
    Ok(bpf)
}
