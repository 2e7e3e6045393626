//! `aoe-ctl acl` and `aoe-ctl reservation`: read and edit an export's access lists in the
//! kernel entries of every interface serving it. The classifier enforces a mask-list edit
//! from the next frame on; the daemon takes the edit over within 100 ms (its user-space
//! check, and the lists an initiator reads back with AoE commands 2 and 3).

use anyhow::{anyhow, bail, Result};
use aoe_common::maps::{ExportEntry, ExportKey, MAP_EXPORTS, MAX_MASKS};
use aoe_common::wire::Mac;
use aya::maps::HashMap;

use super::serving;
use crate::net::format_mac;
use crate::serve::xdp::{lists_of, set_lists};

#[derive(Debug, Clone, Copy)]
pub enum Edit {
    AclAdd(Mac),
    AclDel(Mac),
    ReservationClear,
}

fn entries(target: (u16, u8)) -> Result<Vec<(String, ExportEntry)>> {
    let key = ExportKey::new(target.0, target.1);
    serving(target)?
        .iter()
        .map(|i| {
            let m: HashMap<_, ExportKey, ExportEntry> =
                HashMap::try_from(aya::maps::Map::HashMap(i.map(MAP_EXPORTS)?))?;
            let e = m
                .get(&key, 0)
                .map_err(|e| anyhow!("{}: no kernel entry for the export ({e})", i.name))?;
            Ok((i.name.clone(), e))
        })
        .collect()
}

/// The mask list (`acl list`) or the reservation (`reservation show`), one MAC a line.
pub fn show(target: (u16, u8), reservation: bool) -> Result<()> {
    let (_, e) = entries(target)?.swap_remove(0);
    let l = lists_of(&e);
    let list = if reservation { l.reserve } else { l.masks };
    let name = format!("e{}.{}", target.0, target.1);
    if list.is_empty() {
        eprintln!(
            "{name}: {}",
            if reservation {
                "not reserved"
            } else {
                "mask list empty: every MAC may use it"
            }
        );
    }
    for m in list {
        println!("{}", format_mac(&m));
    }
    Ok(())
}

/// Apply `edit` to the export's entry on every interface serving it.
pub fn edit(target: (u16, u8), edit: Edit) -> Result<()> {
    let key = ExportKey::new(target.0, target.1);
    for i in serving(target)? {
        let mut m: HashMap<_, ExportKey, ExportEntry> =
            HashMap::try_from(aya::maps::Map::HashMap(i.map(MAP_EXPORTS)?))?;
        let mut e = m
            .get(&key, 0)
            .map_err(|e| anyhow!("{}: no kernel entry for the export ({e})", i.name))?;
        let mut l = lists_of(&e);
        match edit {
            Edit::AclAdd(mac) => {
                if !l.masks.contains(&mac) {
                    if l.masks.len() >= MAX_MASKS {
                        bail!(
                            "the mask list of e{}.{} is full ({MAX_MASKS} MACs)",
                            target.0,
                            target.1
                        );
                    }
                    l.masks.push(mac);
                }
            }
            Edit::AclDel(mac) => l.masks.retain(|m| *m != mac),
            Edit::ReservationClear => l.reserve.clear(),
        }
        set_lists(&mut e, &l);
        m.insert(key, e, 0)?;
    }
    Ok(())
}
