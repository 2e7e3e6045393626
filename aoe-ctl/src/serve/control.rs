//! Execute commands 2 and 3: the MAC mask list and Reserve/Release, against the export's
//! access lists.

use aoe_common::wire::mask::{MaskRepr, MCMD_EDIT, MCMD_READ};
use aoe_common::wire::reserve::ReserveRepr;
use aoe_common::wire::{AoeError, Mac};

use super::export::Export;
use super::reply::Completion;

pub fn mask_list(ex: &Export, req: &MaskRepr) -> Completion {
    let result = match req.mcmd {
        MCMD_READ => Ok(()),
        MCMD_EDIT => ex.access.edit_masks(req.directives()),
        _ => return Completion::Error(AoeError::BadArgument),
    };
    Completion::Mask {
        mcmd: req.mcmd,
        result: result.map(|()| ex.access.snapshot().masks),
    }
}

pub fn reserve_release(ex: &Export, src: &Mac, req: &ReserveRepr) -> Completion {
    let before = ex.access.snapshot().reserve;
    match ex.access.reserve(req.rcmd, src, req.macs()) {
        Ok(list) => Completion::Reserve {
            rcmd: req.rcmd,
            list,
            error: None,
        },
        Err(e) => Completion::Reserve {
            rcmd: req.rcmd,
            list: before,
            error: Some(e),
        },
    }
}
