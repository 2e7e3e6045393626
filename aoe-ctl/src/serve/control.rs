//! Commands 2 and 3: the MAC mask list and Reserve/Release.

use aoe_common::wire::mask::{self, MaskRepr, MASK_HEADER_LEN, MCMD_EDIT, MCMD_READ};
use aoe_common::wire::reserve::{self, ReserveRepr};
use aoe_common::wire::{AoeError, Mac};

use super::engine::{Engine, Ignore, Outcome};
use super::export::Export;

pub fn mask_list(
    engine: &Engine,
    ex: &Export,
    buf: &mut [u8],
    len: usize,
) -> Result<usize, Outcome> {
    let Ok(req) = MaskRepr::parse(&buf[..len]) else {
        return Err(Outcome::Ignore(Ignore::Malformed));
    };
    let mcmd = req.mcmd;
    match mcmd {
        MCMD_READ => {}
        MCMD_EDIT => {
            let before = ex.access.snapshot().masks;
            let result = ex.access.edit_masks(req.directives());
            if ex.access.snapshot().masks != before {
                engine.changed(ex);
            }
            if let Err(e) = result {
                // The request's directives stay; the count names the failing one.
                buf[mask::field::MERROR] = e.merror;
                buf[mask::field::DIR_COUNT] = e.index;
                return Ok(MASK_HEADER_LEN + usize::from(e.index) * mask::DIRECTIVE_LEN);
            }
        }
        _ => return Err(Outcome::Error(AoeError::BadArgument)),
    }
    let list = ex.access.snapshot().masks;
    Ok(mask::emit(buf, mcmd, 0, list.len() as u8, &list))
}

pub fn reserve_release(
    engine: &Engine,
    ex: &Export,
    src: &Mac,
    buf: &mut [u8],
    len: usize,
) -> Result<usize, Outcome> {
    let Ok(req) = ReserveRepr::parse(&buf[..len]) else {
        return Err(Outcome::Ignore(Ignore::Malformed));
    };
    let rcmd = req.rcmd;
    let before = ex.access.snapshot().reserve;
    match ex.access.reserve(rcmd, src, req.macs()) {
        Ok(list) => {
            if list != before {
                engine.changed(ex);
            }
            Ok(reserve::emit(buf, rcmd, &list))
        }
        Err(e) => {
            let n = reserve::emit(buf, rcmd, &before);
            Err(Outcome::ErrorWithBody(e, n))
        }
    }
}
