//! `aoe-ctl acl` and `aoe-ctl reservation`: ask the daemon serving an export, over its
//! control socket, to show or edit the access lists. The daemon applies the edit, keeps it
//! and writes it into the kernel entry of every interface serving the export before it
//! answers, so the classifier enforces it from the next frame once this command returns.

use anyhow::Result;

use crate::daemon::control::{self, AdminRequest};

#[derive(Debug, Clone, Copy)]
pub enum Edit {
    AclAdd([u8; 6]),
    AclDel([u8; 6]),
    ReservationClear,
}

fn name(target: (u16, u8)) -> String {
    format!("e{}.{}", target.0, target.1)
}

/// The mask list (`acl list`) or the reservation (`reservation show`), one MAC a line.
pub fn show(target: (u16, u8), reservation: bool) -> Result<()> {
    let target = name(target);
    let req = if reservation {
        AdminRequest::ReservationShow {
            target: target.clone(),
        }
    } else {
        AdminRequest::AclList {
            target: target.clone(),
        }
    };
    let list = control::request(&req)?;
    if list.is_empty() {
        eprintln!(
            "{target}: {}",
            if reservation {
                "not reserved"
            } else {
                "mask list empty: every MAC may use it"
            }
        );
    }
    for m in list {
        println!("{m}");
    }
    Ok(())
}

/// Apply `edit` to the export, on every interface serving it.
pub fn edit(target: (u16, u8), edit: Edit) -> Result<()> {
    let target = name(target);
    let mac = |m: &[u8; 6]| crate::net::format_mac(m);
    let req = match &edit {
        Edit::AclAdd(m) => AdminRequest::AclAdd {
            target,
            mac: mac(m),
        },
        Edit::AclDel(m) => AdminRequest::AclDel {
            target,
            mac: mac(m),
        },
        Edit::ReservationClear => AdminRequest::ReservationClear { target },
    };
    control::request(&req).map(|_| ())
}
