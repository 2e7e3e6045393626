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
        peer: u8::from(driver(&o.iface).as_deref() == Some("veth")),
        _pad: 0,
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

/// The name of `iface`'s driver (ETHTOOL_GDRVINFO), if it says.
fn driver(iface: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` of linux/ethtool.h.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 4 * 5],
    };
    // SAFETY: ifreq is plain old data.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= r.ifr_name.len() {
        return None;
    }
    for (d, s) in r.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    r.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with a valid ethtool_drvinfo buffer; the descriptor is ours.
    let ok = unsafe {
        let ok = libc::ioctl(fd, libc::SIOCETHTOOL, &mut r) >= 0;
        libc::close(fd);
        ok
    };
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    ok.then(|| String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
