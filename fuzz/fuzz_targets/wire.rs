//! Every decoder of aoe-common on arbitrary bytes: no panic, every getter of a view that
//! `new_checked` accepted readable, and what parses re-emits to the same value.
#![no_main]

use aoe_common::wire::ata::{self, AtaRepr};
use aoe_common::wire::config::{self, ConfigRepr};
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
    if let Ok(p) = ata::Packet::new_checked(data) {
        let _ = (
            p.aflags(),
            p.feature(),
            p.sector_count(),
            p.command(),
            p.status(),
        );
        let _ = (p.lba_regs(), p.data().len(), p.is_async());
        let a = AtaRepr::from_packet(&p);
        let _ = (a.lba(), a.sectors(), a.is_lba48(), a.is_write());
        let mut out = data.to_vec();
        a.emit(&mut out);
        assert_eq!(AtaRepr::parse(&out), Ok(a));
    } else {
        assert!(AtaRepr::parse(data).is_err());
    }
    let _ = ata::status(data);
    if let Ok(p) = config::Packet::new_checked(data) {
        let _ = (
            p.buffer_count(),
            p.firmware(),
            p.sector_count(),
            p.aoe_version(),
        );
        assert_eq!(p.string().len(), usize::from(p.string_len()));
        let c = ConfigRepr::from_packet(&p);
        assert!(c.string.len() <= 1024);
        let mut out = vec![0u8; c.buffer_len()];
        c.emit(&mut out);
        assert_eq!(ConfigRepr::parse(&out), Ok(c));
    } else {
        assert!(ConfigRepr::parse(data).is_err());
    }
    if let Ok(p) = mask::Packet::new_checked(data) {
        let _ = (p.mcmd(), p.merror(), p.directive_bytes().len());
        let m = mask::MaskRepr::from_packet(&p);
        assert_eq!(m.directives().count(), usize::from(m.count));
        assert!(m
            .directives()
            .eq((0..usize::from(m.count)).map_while(|i| p.directive(i))));
        let mut out = vec![0u8; m.buffer_len()];
        assert_eq!(m.emit(&mut out), out.len());
        assert_eq!(mask::MaskRepr::parse(&out), Ok(m));
    }
    if let Ok(p) = reserve::Packet::new_checked(data) {
        let r = reserve::ReserveRepr::from_packet(&p);
        assert_eq!(r.macs().count(), usize::from(p.nmacs()));
        assert!(r.macs().eq((0..r.count()).map_while(|i| p.mac(i))));
        let mut out = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut out), out.len());
        assert_eq!(reserve::ReserveRepr::parse(&out), Ok(r));
    }
    match identify::Parsed::parse(data) {
        Ok(p) => assert_eq!(
            Some(p),
            data.get(..SECTOR_SIZE)
                .map(|s| identify::parse(s.try_into().unwrap()))
        ),
        Err(_) => assert!(data.len() < SECTOR_SIZE),
    }
});
