//! Command 3: Reserve/Release. Arguments at bytes 24..26, then 6-byte MACs.

use super::header::{mac_at, Mac, MAC_LEN};
use super::{fits, Truncated};

/// Byte offsets counted from the start of the frame.
pub mod field {
    pub const RCMD: usize = 24;
    pub const NMACS: usize = 25;
    /// `NMACS` MAC addresses.
    pub const MACS: usize = 26;
}

/// Length of a reserve frame without MACs.
pub const RESERVE_HEADER_LEN: usize = field::MACS;

/// rcmd values.
pub const RCMD_READ: u8 = 0;
pub const RCMD_SET: u8 = 1;
pub const RCMD_FORCE_SET: u8 = 2;

super::checked_view!(
    /// A view of a Reserve/Release request or reply (the whole frame, header included).
    Packet,
    "Wrap a buffer that holds every MAC its count claims."
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The arguments are there and `nmacs` MACs fit in the buffer.
    pub fn check_len(&self) -> Result<(), Truncated> {
        let len = self.b().len();
        if len < RESERVE_HEADER_LEN || !fits(len, RESERVE_HEADER_LEN, self.nmacs().into(), MAC_LEN)
        {
            return Err(Truncated);
        }
        Ok(())
    }

    pub fn rcmd(&self) -> u8 {
        self.b()[field::RCMD]
    }
    pub fn nmacs(&self) -> u8 {
        self.b()[field::NMACS]
    }
    /// MAC `i`, `None` past `nmacs`.
    pub fn mac(&self, i: usize) -> Option<Mac> {
        if i >= usize::from(self.nmacs()) {
            return None;
        }
        let at = RESERVE_HEADER_LEN + i * MAC_LEN;
        self.b().get(at..at + MAC_LEN).map(|m| mac_at(m, 0))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The MAC bytes, borrowed for as long as the buffer.
    fn mac_bytes_ref(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let n = usize::from(b[field::NMACS]) * MAC_LEN;
        &b[RESERVE_HEADER_LEN..RESERVE_HEADER_LEN + n]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_rcmd(&mut self, v: u8) {
        self.bm()[field::RCMD] = v;
    }
    pub fn set_nmacs(&mut self, v: u8) {
        self.bm()[field::NMACS] = v;
    }
    /// Write MAC `i`; the buffer must hold it.
    pub fn set_mac(&mut self, i: usize, mac: Mac) {
        let at = RESERVE_HEADER_LEN + i * MAC_LEN;
        self.bm()[at..at + MAC_LEN].copy_from_slice(&mac);
    }
}

/// The Reserve/Release arguments of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRepr<'a> {
    pub rcmd: u8,
    /// `count()` MACs as they were on the wire.
    macs: &'a [u8],
}

impl<'a> ReserveRepr<'a> {
    /// Parse a whole frame; nmacs must lie within the frame.
    pub fn parse(frame: &'a [u8]) -> Result<ReserveRepr<'a>, Truncated> {
        Ok(ReserveRepr::from_packet(&Packet::new_checked(frame)?))
    }

    /// The arguments of a checked view.
    pub fn from_packet<T: AsRef<[u8]> + ?Sized>(p: &Packet<&'a T>) -> ReserveRepr<'a> {
        ReserveRepr {
            rcmd: p.rcmd(),
            macs: p.mac_bytes_ref(),
        }
    }

    pub fn count(&self) -> usize {
        self.macs.len() / MAC_LEN
    }

    pub fn macs(&self) -> impl Iterator<Item = Mac> + 'a {
        self.macs.chunks_exact(MAC_LEN).map(|m| mac_at(m, 0))
    }

    /// Bytes this value occupies from the start of the frame.
    pub fn buffer_len(&self) -> usize {
        RESERVE_HEADER_LEN + self.macs.len()
    }

    /// Write the arguments and MACs into a frame of at least `buffer_len()` bytes; returns
    /// the frame length.
    pub fn emit(&self, frame: &mut [u8]) -> usize {
        let mut p = Packet::new_unchecked(frame);
        p.set_rcmd(self.rcmd);
        p.set_nmacs(self.count() as u8);
        for (i, mac) in self.macs().enumerate() {
            p.set_mac(i, mac);
        }
        self.buffer_len()
    }
}

/// Write the arguments and MAC list; returns the frame length.
pub fn emit(frame: &mut [u8], rcmd: u8, list: &[Mac]) -> usize {
    let mut p = Packet::new_unchecked(frame);
    p.set_rcmd(rcmd);
    p.set_nmacs(list.len() as u8);
    for (i, mac) in list.iter().enumerate() {
        p.set_mac(i, *mac);
    }
    RESERVE_HEADER_LEN + list.len() * MAC_LEN
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

    // A set request reserving the target for two initiators, written from the spec.
    static SET: [u8; 38] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x09, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x88, 0xa2, 0x10,
        0x00, 0x00, 0x01, 0x02, 0x03, 0, 0, 0, 5,    //
        0x01, // rcmd set
        0x02, // two MACs
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, //
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn every_prefix_of_a_valid_frame() {
        for n in 0..SET.len() {
            assert_eq!(
                Packet::new_checked(&SET[..n]).unwrap_err(),
                Truncated,
                "{n}"
            );
            assert_eq!(ReserveRepr::parse(&SET[..n]).unwrap_err(), Truncated, "{n}");
        }
        let p = Packet::new_checked(&SET[..]).unwrap();
        assert_eq!(p.mac(1), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(p.mac(2), None);
        let r = ReserveRepr::from_packet(&p);
        assert_eq!(r.buffer_len(), SET.len());
        let mut out = [0xa5u8; 38];
        out[..24].copy_from_slice(&SET[..24]);
        assert_eq!(r.emit(&mut out), 38);
        assert_eq!(out, SET);
    }

    #[test]
    fn every_count_in_every_buffer() {
        let f = [0x5au8; RESERVE_HEADER_LEN + 3 * MAC_LEN + 5];
        for count in 0..=255u8 {
            let mut f = f;
            f[25] = count;
            for n in 0..=f.len() {
                let ok = n >= RESERVE_HEADER_LEN + usize::from(count) * MAC_LEN;
                match Packet::new_checked(&f[..n]) {
                    Ok(p) => {
                        assert!(ok, "count {count} in {n} bytes");
                        assert_eq!(ReserveRepr::from_packet(&p).macs().count(), count.into());
                        assert!((0..=256).all(|i| p.mac(i).is_some() == (i < count.into())));
                    }
                    Err(Truncated) => assert!(!ok, "count {count} in {n} bytes"),
                }
            }
        }
    }

    #[test]
    fn emit_bytes() {
        let mut f = [0xa5u8; 32];
        assert_eq!(emit(&mut f, RCMD_READ, &[[9; 6]]), 32);
        assert_eq!(&f[24..32], &[0, 1, 9, 9, 9, 9, 9, 9]);
    }
}
