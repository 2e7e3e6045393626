//! AoE addresses as people write them: shelf, slot, and eSHELF.SLOT.

use anyhow::{anyhow, bail, Result};

pub fn parse_shelf(s: &str) -> Result<u16> {
    let v: u32 = s
        .parse()
        .map_err(|_| anyhow!("shelf {s:?} is not a number"))?;
    if v >= 0xFFFF {
        bail!("shelf {v} is out of range (0-65534; 65535 is the broadcast shelf)");
    }
    Ok(v as u16)
}

pub fn parse_slot(s: &str) -> Result<u8> {
    let v: u32 = s
        .parse()
        .map_err(|_| anyhow!("slot {s:?} is not a number"))?;
    if v >= 0xFF {
        bail!("slot {v} is out of range (0-254; 255 is the broadcast slot)");
    }
    Ok(v as u8)
}

pub fn parse_target(s: &str) -> Result<(u16, u8)> {
    let rest = s
        .strip_prefix('e')
        .ok_or_else(|| anyhow!("target {s:?} is not of the form eSHELF.SLOT (e.g. e1.2)"))?;
    let (shelf, slot) = rest
        .split_once('.')
        .ok_or_else(|| anyhow!("target {s:?} is not of the form eSHELF.SLOT (e.g. e1.2)"))?;
    Ok((parse_shelf(shelf)?, parse_slot(slot)?))
}
