//! Every decoder of aoe-common on arbitrary bytes: no panic, and what parses re-emits to
//! the same value.
#![no_main]

use aoe_common::wire::ata::{self, AtaRepr};
use aoe_common::wire::config::ConfigRepr;
use aoe_common::wire::header::HeaderRepr;
use aoe_common::wire::{identify, mask, reserve, Frame, SECTOR_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::new_checked(data) {
        let _ = (
            f.dst(),
            f.src(),
            f.ethertype(),
            f.version(),
            f.flags(),
            f.error(),
        );
        let _ = (f.shelf(), f.slot(), f.command(), f.tag(), f.payload().len());
        if let Some(h) = HeaderRepr::parse(&f) {
            let mut out = data.to_vec();
            h.emit(&mut Frame::new_unchecked(&mut out[..]));
            assert_eq!(HeaderRepr::parse(&Frame::new_unchecked(&out[..])), Some(h));
        }
    }
    if let Ok(a) = AtaRepr::parse(data) {
        let _ = (a.lba(), a.sectors(), a.is_lba48(), a.is_write());
        let mut out = data.to_vec();
        a.emit(&mut out);
        assert_eq!(AtaRepr::parse(&out), Ok(a));
    }
    let _ = ata::status(data);
    if let Ok(c) = ConfigRepr::parse(data) {
        assert!(c.string.len() <= 1024);
        let mut out = vec![0u8; c.frame_len()];
        c.emit(&mut out);
        assert_eq!(ConfigRepr::parse(&out), Ok(c));
    }
    if let Ok(m) = mask::MaskRepr::parse(data) {
        assert_eq!(m.directives().count(), usize::from(m.count));
    }
    if let Ok(r) = reserve::ReserveRepr::parse(data) {
        assert_eq!(r.macs().count(), r.count());
    }
    if let Some(sector) = data.get(..SECTOR_SIZE) {
        let _ = identify::parse(sector.try_into().unwrap());
    }
});
