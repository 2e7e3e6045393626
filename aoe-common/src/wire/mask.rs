//! Command 2: MAC Mask List. Arguments at bytes 24..28, then 8-byte directives.

use super::header::{mac_at, Mac};
use super::Truncated;

/// Byte offsets counted from the start of the frame.
pub mod field {
    pub const RESERVED: usize = 24;
    pub const MCMD: usize = 25;
    pub const MERROR: usize = 26;
    pub const DIR_COUNT: usize = 27;
    pub const DIRECTIVES: usize = 28;
}

/// Length of a mask frame without directives.
pub const MASK_HEADER_LEN: usize = field::DIRECTIVES;
/// Bytes per directive: reserved, dcmd, MAC.
pub const DIRECTIVE_LEN: usize = 8;

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

/// The mask list arguments of a frame.
#[derive(Debug, Clone, Copy)]
pub struct MaskRepr<'a> {
    pub mcmd: u8,
    pub merror: u8,
    pub count: u8,
    directives: &'a [u8],
}

impl<'a> MaskRepr<'a> {
    /// Parse a whole frame; the directive count must lie within the frame.
    pub fn parse(frame: &'a [u8]) -> Result<MaskRepr<'a>, Truncated> {
        if frame.len() < MASK_HEADER_LEN {
            return Err(Truncated);
        }
        let count = frame[field::DIR_COUNT];
        let end = MASK_HEADER_LEN + usize::from(count) * DIRECTIVE_LEN;
        if frame.len() < end {
            return Err(Truncated);
        }
        Ok(MaskRepr {
            mcmd: frame[field::MCMD],
            merror: frame[field::MERROR],
            count,
            directives: &frame[MASK_HEADER_LEN..end],
        })
    }

    /// The directives, in order.
    pub fn directives(&self) -> impl Iterator<Item = Directive> + 'a {
        self.directives
            .chunks_exact(DIRECTIVE_LEN)
            .map(|d| Directive {
                dcmd: d[1],
                mac: mac_at(d, 2),
            })
    }
}

/// Write the mask arguments and `list` as (dcmd none) directives; returns the frame length.
/// `frame` must hold `MASK_HEADER_LEN + list.len() * 8` bytes.
pub fn emit(frame: &mut [u8], mcmd: u8, merror: u8, count: u8, list: &[Mac]) -> usize {
    frame[field::RESERVED] = 0;
    frame[field::MCMD] = mcmd;
    frame[field::MERROR] = merror;
    frame[field::DIR_COUNT] = count;
    let mut at = MASK_HEADER_LEN;
    for mac in list {
        frame[at] = 0;
        frame[at + 1] = DCMD_NONE;
        frame[at + 2..at + 8].copy_from_slice(mac);
        at += DIRECTIVE_LEN;
    }
    at
}

/// Write an edit request's directives; returns the frame length.
pub fn emit_edit(frame: &mut [u8], directives: &[Directive]) -> usize {
    frame[field::RESERVED] = 0;
    frame[field::MCMD] = MCMD_EDIT;
    frame[field::MERROR] = 0;
    frame[field::DIR_COUNT] = directives.len() as u8;
    let mut at = MASK_HEADER_LEN;
    for d in directives {
        frame[at] = 0;
        frame[at + 1] = d.dcmd;
        frame[at + 2..at + 8].copy_from_slice(&d.mac);
        at += DIRECTIVE_LEN;
    }
    at
}

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
