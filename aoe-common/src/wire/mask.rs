//! Command 2: MAC Mask List. Arguments at bytes 24..28, then 8-byte directives.

use super::header::{mac_at, Mac, MAC_LEN};
use super::{fits, Truncated};

/// Byte offsets counted from the start of the frame.
pub mod field {
    pub const RESERVED: usize = 24;
    pub const MCMD: usize = 25;
    pub const MERROR: usize = 26;
    /// Directives in the frame (in an error reply: the index of the failing one).
    pub const DIR_COUNT: usize = 27;
    /// `DIR_COUNT` directives of `DIRECTIVE_LEN` bytes.
    pub const DIRECTIVES: usize = 28;

    /// Offsets inside one directive.
    pub mod directive {
        use crate::wire::Field;

        pub const RESERVED: usize = 0;
        pub const DCMD: usize = 1;
        pub const MAC_BYTES: Field = 2..8;
        pub const MAC: usize = MAC_BYTES.start;
    }
}

/// Length of a mask frame without directives.
pub const MASK_HEADER_LEN: usize = field::DIRECTIVES;
/// Bytes per directive: reserved, dcmd, MAC.
pub const DIRECTIVE_LEN: usize = field::directive::MAC_BYTES.end;

/// mcmd values.
pub const MCMD_READ: u8 = 0;
pub const MCMD_EDIT: u8 = 1;

/// merror values.
pub const MERROR_UNSPECIFIED: u8 = 1;
pub const MERROR_BAD_DCMD: u8 = 2;
pub const MERROR_LIST_FULL: u8 = 3;

/// dcmd values.
pub const DCMD_NONE: u8 = 0;
pub const DCMD_ADD: u8 = 1;
pub const DCMD_DELETE: u8 = 2;

/// One directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    pub dcmd: u8,
    pub mac: Mac,
}

impl Directive {
    /// Read one from its `DIRECTIVE_LEN` bytes.
    fn read(d: &[u8]) -> Directive {
        Directive {
            dcmd: d[field::directive::DCMD],
            mac: mac_at(d, field::directive::MAC),
        }
    }

    fn write(&self, d: &mut [u8]) {
        d[field::directive::RESERVED] = 0;
        d[field::directive::DCMD] = self.dcmd;
        d[field::directive::MAC_BYTES].copy_from_slice(&self.mac);
    }
}

super::checked_view!(
    /// A view of a mask list request or reply (the whole frame, header included).
    Packet,
    "Wrap a buffer that holds every directive its count claims."
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The arguments are there and `dir_count` directives fit in the buffer.
    pub fn check_len(&self) -> Result<(), Truncated> {
        let len = self.b().len();
        if len < MASK_HEADER_LEN
            || !fits(len, MASK_HEADER_LEN, self.dir_count().into(), DIRECTIVE_LEN)
        {
            return Err(Truncated);
        }
        Ok(())
    }

    pub fn mcmd(&self) -> u8 {
        self.b()[field::MCMD]
    }
    pub fn merror(&self) -> u8 {
        self.b()[field::MERROR]
    }
    pub fn dir_count(&self) -> u8 {
        self.b()[field::DIR_COUNT]
    }
    /// Directive `i`, `None` past `dir_count`.
    pub fn directive(&self, i: usize) -> Option<Directive> {
        if i >= usize::from(self.dir_count()) {
            return None;
        }
        let at = MASK_HEADER_LEN + i * DIRECTIVE_LEN;
        self.b().get(at..at + DIRECTIVE_LEN).map(Directive::read)
    }
    /// The `dir_count * DIRECTIVE_LEN` bytes of the directives.
    pub fn directive_bytes(&self) -> &[u8] {
        let n = usize::from(self.dir_count()) * DIRECTIVE_LEN;
        &self.b()[MASK_HEADER_LEN..MASK_HEADER_LEN + n]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The directive bytes, borrowed for as long as the buffer.
    fn directive_bytes_ref(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let n = usize::from(b[field::DIR_COUNT]) * DIRECTIVE_LEN;
        &b[MASK_HEADER_LEN..MASK_HEADER_LEN + n]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn clear_reserved(&mut self) {
        self.bm()[field::RESERVED] = 0;
    }
    pub fn set_mcmd(&mut self, v: u8) {
        self.bm()[field::MCMD] = v;
    }
    pub fn set_merror(&mut self, v: u8) {
        self.bm()[field::MERROR] = v;
    }
    pub fn set_dir_count(&mut self, v: u8) {
        self.bm()[field::DIR_COUNT] = v;
    }
    /// Write directive `i`; the buffer must hold it.
    pub fn set_directive(&mut self, i: usize, d: Directive) {
        let at = MASK_HEADER_LEN + i * DIRECTIVE_LEN;
        d.write(&mut self.bm()[at..at + DIRECTIVE_LEN]);
    }
}

/// The mask list arguments of a frame.
#[derive(Debug, Clone, Copy)]
pub struct MaskRepr<'a> {
    pub mcmd: u8,
    pub merror: u8,
    pub count: u8,
    /// `count` directives as they were on the wire.
    directives: &'a [u8],
}

impl<'a> MaskRepr<'a> {
    /// Parse a whole frame; the directive count must lie within the frame.
    pub fn parse(frame: &'a [u8]) -> Result<MaskRepr<'a>, Truncated> {
        Ok(MaskRepr::from_packet(&Packet::new_checked(frame)?))
    }

    /// The arguments of a checked view.
    pub fn from_packet<T: AsRef<[u8]> + ?Sized>(p: &Packet<&'a T>) -> MaskRepr<'a> {
        MaskRepr {
            mcmd: p.mcmd(),
            merror: p.merror(),
            count: p.dir_count(),
            directives: p.directive_bytes_ref(),
        }
    }

    /// The directives, in order.
    pub fn directives(&self) -> impl Iterator<Item = Directive> + 'a {
        self.directives
            .chunks_exact(DIRECTIVE_LEN)
            .map(Directive::read)
    }

    /// Bytes this value occupies from the start of the frame.
    pub fn buffer_len(&self) -> usize {
        MASK_HEADER_LEN + self.directives.len()
    }

    /// Write the arguments and directives into a frame of at least `buffer_len()` bytes;
    /// returns the frame length.
    pub fn emit(&self, frame: &mut [u8]) -> usize {
        let mut p = Packet::new_unchecked(frame);
        p.clear_reserved();
        p.set_mcmd(self.mcmd);
        p.set_merror(self.merror);
        p.set_dir_count(self.count);
        for (i, d) in self.directives().enumerate() {
            p.set_directive(i, d);
        }
        self.buffer_len()
    }
}

/// Equal when the directives are: their reserved bytes are not part of the value.
impl PartialEq for MaskRepr<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.mcmd, self.merror, self.count) == (other.mcmd, other.merror, other.count)
            && self.directives().eq(other.directives())
    }
}

impl Eq for MaskRepr<'_> {}

/// Write the mask arguments and `list` as (dcmd none) directives; returns the frame length.
/// `frame` must hold `MASK_HEADER_LEN + list.len() * 8` bytes.
pub fn emit(frame: &mut [u8], mcmd: u8, merror: u8, count: u8, list: &[Mac]) -> usize {
    let mut p = Packet::new_unchecked(frame);
    p.clear_reserved();
    p.set_mcmd(mcmd);
    p.set_merror(merror);
    p.set_dir_count(count);
    for (i, mac) in list.iter().enumerate() {
        p.set_directive(
            i,
            Directive {
                dcmd: DCMD_NONE,
                mac: *mac,
            },
        );
    }
    MASK_HEADER_LEN + list.len() * DIRECTIVE_LEN
}

/// Write an edit request's directives; returns the frame length.
pub fn emit_edit(frame: &mut [u8], directives: &[Directive]) -> usize {
    let mut p = Packet::new_unchecked(frame);
    p.clear_reserved();
    p.set_mcmd(MCMD_EDIT);
    p.set_merror(0);
    p.set_dir_count(directives.len() as u8);
    for (i, d) in directives.iter().enumerate() {
        p.set_directive(i, *d);
    }
    MASK_HEADER_LEN + directives.len() * DIRECTIVE_LEN
}

const _: () = assert!(DIRECTIVE_LEN == 2 + MAC_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_edit() {
        let mut f = [0u8; 44];
        f[25] = 1; // edit
        f[27] = 2; // two directives
        f[28..36].copy_from_slice(&[0, 1, 0x02, 0, 0, 0, 0, 0xaa]); // add 02:..:aa
        f[36..44].copy_from_slice(&[0, 2, 0x02, 0, 0, 0, 0, 0xbb]); // delete 02:..:bb
        let m = MaskRepr::parse(&f).unwrap();
        assert_eq!(m.mcmd, MCMD_EDIT);
        let d: [Directive; 2] = {
            let mut it = m.directives();
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(
            d[0],
            Directive {
                dcmd: DCMD_ADD,
                mac: [2, 0, 0, 0, 0, 0xaa]
            }
        );
        assert_eq!(
            d[1],
            Directive {
                dcmd: DCMD_DELETE,
                mac: [2, 0, 0, 0, 0, 0xbb]
            }
        );
    }

    #[test]
    fn lying_count() {
        let mut f = [0u8; 36];
        f[27] = 2; // claims two, carries one
        assert!(MaskRepr::parse(&f).is_err());
        assert!(MaskRepr::parse(&f[..27]).is_err());
    }

    // An edit request as the Linux initiator's aoe-masks would send it: add 02:..:aa.
    static EDIT: [u8; 36] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x88, 0xa2, 0x10,
        0x00, 0x00, 0x01, 0x02, 0x02, 0, 0, 0, 9,    //
        0x00, // reserved
        0x01, // mcmd edit
        0x00, // merror
        0x01, // one directive
        0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0xaa, // add 02:00:00:00:00:aa
    ];

    #[test]
    fn every_prefix_of_a_valid_frame() {
        for n in 0..EDIT.len() {
            assert_eq!(
                Packet::new_checked(&EDIT[..n]).unwrap_err(),
                Truncated,
                "{n}"
            );
            assert_eq!(MaskRepr::parse(&EDIT[..n]).unwrap_err(), Truncated, "{n}");
        }
        let p = Packet::new_checked(&EDIT[..]).unwrap();
        assert_eq!(p.directive(0).unwrap().mac, [2, 0, 0, 0, 0, 0xaa]);
        assert_eq!(p.directive(1), None);
        let m = MaskRepr::from_packet(&p);
        assert_eq!(m.buffer_len(), EDIT.len());
        let mut out = [0xa5u8; 36];
        out[..24].copy_from_slice(&EDIT[..24]);
        assert_eq!(m.emit(&mut out), 36);
        assert_eq!(out, EDIT);
    }

    #[test]
    fn reserved_bytes_are_not_the_value() {
        let mut f = EDIT;
        f[28] = 0xff;
        let m = MaskRepr::parse(&f).unwrap();
        assert_eq!(m, MaskRepr::parse(&EDIT).unwrap());
        let mut out = [0u8; 36];
        m.emit(&mut out);
        assert_eq!(out[28], 0, "emitted reserved byte");
        let mut g = f;
        g[29] = DCMD_DELETE;
        assert_ne!(MaskRepr::parse(&g).unwrap(), m);
    }

    #[test]
    fn every_count_in_every_buffer() {
        let f = [0x5au8; MASK_HEADER_LEN + 3 * DIRECTIVE_LEN + 5];
        for count in 0..=255u8 {
            let mut f = f;
            f[27] = count;
            for n in 0..=f.len() {
                let ok = n >= MASK_HEADER_LEN + usize::from(count) * DIRECTIVE_LEN;
                match Packet::new_checked(&f[..n]) {
                    Ok(p) => {
                        assert!(ok, "count {count} in {n} bytes");
                        assert_eq!(MaskRepr::from_packet(&p).directives().count(), count.into());
                        assert!((0..=256).all(|i| p.directive(i).is_some() == (i < count.into())));
                    }
                    Err(Truncated) => assert!(!ok, "count {count} in {n} bytes"),
                }
            }
        }
    }

    #[test]
    fn emit_list() {
        let mut f = [0xa5u8; 44];
        let n = emit(&mut f, MCMD_READ, 0, 2, &[[1; 6], [2; 6]]);
        assert_eq!(n, 44);
        assert_eq!(&f[24..28], &[0, 0, 0, 2]);
        assert_eq!(&f[28..36], &[0, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(&f[36..44], &[0, 0, 2, 2, 2, 2, 2, 2]);
    }
}
