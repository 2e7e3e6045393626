//! Command 3: Reserve/Release. Arguments at bytes 24..26, then 6-byte MACs.

use super::header::{mac_at, Mac};
use super::Truncated;

/// Byte offsets counted from the start of the frame.
pub mod field {
    pub const RCMD: usize = 24;
    pub const NMACS: usize = 25;
    pub const MACS: usize = 26;
}

/// Length of a reserve frame without MACs.
pub const RESERVE_HEADER_LEN: usize = field::MACS;

/// rcmd values.
pub const RCMD_READ: u8 = 0;
pub const RCMD_SET: u8 = 1;
pub const RCMD_FORCE_SET: u8 = 2;

/// The Reserve/Release arguments of a frame.
#[derive(Debug, Clone, Copy)]
pub struct ReserveRepr<'a> {
    pub rcmd: u8,
    macs: &'a [u8],
}

impl<'a> ReserveRepr<'a> {
    /// Parse a whole frame; nmacs must lie within the frame.
    pub fn parse(frame: &'a [u8]) -> Result<ReserveRepr<'a>, Truncated> {
        if frame.len() < RESERVE_HEADER_LEN {
            return Err(Truncated);
        }
        let end = RESERVE_HEADER_LEN + usize::from(frame[field::NMACS]) * 6;
        if frame.len() < end {
            return Err(Truncated);
        }
        Ok(ReserveRepr {
            rcmd: frame[field::RCMD],
            macs: &frame[RESERVE_HEADER_LEN..end],
        })
    }

    pub fn count(&self) -> usize {
        self.macs.len() / 6
    }

    pub fn macs(&self) -> impl Iterator<Item = Mac> + 'a {
        self.macs.chunks_exact(6).map(|m| mac_at(m, 0))
    }
}

/// Write the arguments and MAC list; returns the frame length.
pub fn emit(frame: &mut [u8], rcmd: u8, list: &[Mac]) -> usize {
    frame[field::RCMD] = rcmd;
    frame[field::NMACS] = list.len() as u8;
    let mut at = RESERVE_HEADER_LEN;
    for mac in list {
        frame[at..at + 6].copy_from_slice(mac);
        at += 6;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_set() {
        let mut f = [0u8; 38];
        f[24] = RCMD_SET;
        f[25] = 2;
        f[26..32].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[32..38].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        let r = ReserveRepr::parse(&f).unwrap();
        assert_eq!(r.rcmd, RCMD_SET);
        assert_eq!(r.count(), 2);
        let v: [Mac; 2] = {
            let mut it = r.macs();
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(v, [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
    }

    #[test]
    fn lying_count() {
        let mut f = [0u8; 32];
        f[25] = 2;
        assert!(ReserveRepr::parse(&f).is_err());
        assert!(ReserveRepr::parse(&f[..25]).is_err());
    }

    #[test]
    fn emit_bytes() {
        let mut f = [0xa5u8; 32];
        assert_eq!(emit(&mut f, RCMD_READ, &[[9; 6]]), 32);
        assert_eq!(&f[24..32], &[0, 1, 9, 9, 9, 9, 9, 9]);
    }
}
