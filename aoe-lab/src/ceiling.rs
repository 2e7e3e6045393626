//! `aoe-lab ceiling`: a benchmark instrument, not a target. It attaches `aoe_ceiling` (tc
//! ingress), which answers every request for one shelf/slot in the kernel with no storage,
//! so `cargo xtask bench` can show how far a target is from the fastest possible answer on
//! the same path.

use anyhow::{anyhow, Context, Result};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::header::{HeaderRepr, FLAG_RESPONSE};
use aoe_common::wire::identify::Identity;
use aoe_common::wire::{sectors_per_frame, Command, Frame, AOE_VERSION, SECTOR_SIZE};
use aoe_ctl::net::Interface;
use aoe_lab_ebpf::{CeilingEntry, MAP_CEILING, PROG_CEILING};
use aya::maps::Array;
use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::Ebpf;

use crate::OBJECT;

pub struct Options {
    pub iface: String,
    pub shelf: u16,
    pub slot: u8,
    /// The size the ceiling pretends to have.
    pub sectors: u64,
    pub buffers: u16,
}

/// Attach the ceiling to `o.iface`; it answers until the returned object is dropped.
pub fn attach(o: &Options) -> Result<Ebpf> {
    let iface = Interface::lookup(&o.iface)?;
    let max_sectors = sectors_per_frame(iface.mtu).min(17);
    let mut entry = CeilingEntry {
        shelf: o.shelf,
        slot: o.slot,
        max_sectors: max_sectors as u8,
        mac: iface.mac,
        _pad: [0; 2],
        config_reply: [0; 60],
        identify: [0; SECTOR_SIZE],
        zeros: [0; SECTOR_SIZE],
    };
    HeaderRepr {
        dst: [0; 6],
        src: iface.mac,
        flags: FLAG_RESPONSE,
        error: 0,
        shelf: o.shelf,
        slot: o.slot,
        command: Command::QueryConfig,
        tag: 0,
    }
    .emit(&mut Frame::new_unchecked(&mut entry.config_reply[..]));
    ConfigRepr {
        buffer_count: o.buffers,
        firmware: 0,
        sector_count: max_sectors as u8,
        aoe_version: AOE_VERSION,
        command: ConfigCommand::Read,
        string: b"",
    }
    .emit(&mut entry.config_reply);
    Identity {
        sectors: o.sectors,
        serial: b"aoe-ceiling",
        firmware: b"0",
        model: b"AoE benchmark ceiling (no storage)",
        write_cache: false,
    }
    .emit(&mut entry.identify);

    let mut bpf = Ebpf::load(OBJECT).context("loading the lab's eBPF object")?;
    let mut map: Array<_, CeilingEntry> = Array::try_from(
        bpf.map_mut(MAP_CEILING)
            .ok_or_else(|| anyhow!("map {MAP_CEILING} missing"))?,
    )?;
    map.set(0, entry, 0)?;
    // A clsact qdisc may be there already (tcx needs none on newer kernels).
    let _ = tc::qdisc_add_clsact(&o.iface);
    let prog: &mut SchedClassifier = bpf
        .program_mut(PROG_CEILING)
        .ok_or_else(|| anyhow!("program {PROG_CEILING} missing"))?
        .try_into()?;
    prog.load()
        .context("the kernel refused the ceiling program")?;
    prog.attach(&o.iface, TcAttachType::Ingress)
        .with_context(|| format!("attaching the ceiling to {}", o.iface))?;
    Ok(bpf)
}
