//! Execute commands 2 and 3: the MAC mask list and Reserve/Release, against the export's
//! access lists (edits against a copy, which the caller publishes once kept).

use aoe_common::wire::mask::{MaskRepr, MCMD_EDIT, MCMD_READ};
use aoe_common::wire::reserve::ReserveRepr;
use aoe_common::wire::{AoeError, Mac};

use super::access::Lists;
use super::reply::Completion;

pub fn mask_list(lists: &mut Lists, req: &MaskRepr) -> Completion {
    let result = match req.mcmd {
        MCMD_READ => Ok(()),
        MCMD_EDIT => lists.edit_masks(req.directives()),
        _ => return Completion::Error(AoeError::BadArgument),
    };
    Completion::Mask {
        mcmd: req.mcmd,
        result: result.map(|()| lists.masks.clone()),
    }
}

pub fn reserve_release(lists: &mut Lists, src: &Mac, req: &ReserveRepr) -> Completion {
    let before = lists.reserve.clone();
    match lists.reserve(req.rcmd, src, req.macs()) {
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
