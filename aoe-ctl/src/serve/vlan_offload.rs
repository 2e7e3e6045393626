//! Receive VLAN stripping, turned off while XDP serves an interface. A NIC that strips the
//! 802.1Q (or 802.1ad) tag on receive leaves it only in the packet's metadata, where a
//! program without the VLAN kfunc (skb mode, or a driver that does not implement it) cannot
//! see it and would serve another VLAN's frame as its own. With stripping off the tag stays
//! in the frame and the classifier passes it to the stack. Through the ethtool ioctl
//! (ETHTOOL_GFEATURES / SFEATURES), by the features' names.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// The features that strip a VLAN tag on receive.
const STRIPPING: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

/// What `turn_off` changed, to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stripping {
    iface: String,
    /// Feature bits turned off.
    bits: Vec<usize>,
}

impl Stripping {
    /// Turn receive VLAN stripping off on `iface`. `Ok(None)`: it was off already (or the
    /// device has no such feature). An error: it is on and cannot be turned off.
    pub fn turn_off(iface: &str) -> Result<Option<Stripping>> {
        let sock = socket()?;
        let names = feature_names(&sock, iface)?;
        let bits: Vec<usize> = STRIPPING
            .iter()
            .filter_map(|want| names.iter().position(|n| n == want))
            .collect();
        let state = features(&sock, iface, names.len())?;
        let on: Vec<usize> = bits.into_iter().filter(|&b| state.active(b)).collect();
        if on.is_empty() {
            return Ok(None);
        }
        set(&sock, iface, names.len(), &on, false)?;
        let after = features(&sock, iface, names.len())?;
        if let Some(&b) = on.iter().find(|&&b| after.active(b)) {
            bail!(
                "{iface}: {} stays on (the driver does not let it be turned off)",
                names[b]
            );
        }
        Ok(Some(Stripping {
            iface: iface.to_string(),
            bits: on,
        }))
    }

    /// Put stripping back on (best effort: the interface may be gone).
    pub fn restore(&self) {
        let done = socket().and_then(|sock| {
            let n = feature_names(&sock, &self.iface)?.len();
            set(&sock, &self.iface, n, &self.bits, true)
        });
        if let Err(e) = done {
            log::debug!("{}: rx VLAN stripping not restored: {e:#}", self.iface);
        }
    }
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("a socket for ethtool");
    }
    // SAFETY: a descriptor we just opened and own alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIOCETHTOOL on `iface` with `data` (an ethtool command structure).
fn ethtool(sock: &OwnedFd, iface: &str, data: &mut [u32]) -> io::Result<()> {
    // SAFETY: ifreq is plain old data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= ifr.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: a valid ifreq whose data points at a command buffer the kernel reads and writes
    // within its declared sizes.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names of the device's features, by bit.
fn feature_names(sock: &OwnedFd, iface: &str) -> Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set.
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ethtool(sock, iface, &mut info).with_context(|| format!("{iface}: ETHTOOL_GSSET_INFO"))?;
    let count = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then the strings.
    let mut buf = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    buf[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool(sock, iface, &mut buf).with_context(|| format!("{iface}: ETHTOOL_GSTRINGS"))?;
    let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect())
}

/// The feature blocks of ETHTOOL_GFEATURES: available, requested, active, never_changed.
struct Features(Vec<[u32; 4]>);

impl Features {
    fn active(&self, bit: usize) -> bool {
        self.0
            .get(bit / 32)
            .is_some_and(|b| b[2] & (1 << (bit % 32)) != 0)
    }
}

fn features(sock: &OwnedFd, iface: &str, count: usize) -> Result<Features> {
    let blocks = count.div_ceil(32);
    let mut buf = vec![0u32; 2 + 4 * blocks];
    buf[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
    ethtool(sock, iface, &mut buf).with_context(|| format!("{iface}: ETHTOOL_GFEATURES"))?;
    Ok(Features(
        buf[2..]
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    ))
}

/// Request feature `bits` on or off.
fn set(sock: &OwnedFd, iface: &str, count: usize, bits: &[usize], on: bool) -> Result<()> {
    let blocks = count.div_ceil(32);
    // struct ethtool_sfeatures: cmd, size, then {valid, requested} per block.
    let mut buf = vec![0u32; 2 + 2 * blocks];
    buf[..2].copy_from_slice(&[ETHTOOL_SFEATURES, blocks as u32]);
    for &b in bits {
        let at = 2 + 2 * (b / 32);
        buf[at] |= 1 << (b % 32);
        if on {
            buf[at + 1] |= 1 << (b % 32);
        }
    }
    ethtool(sock, iface, &mut buf).with_context(|| format!("{iface}: ETHTOOL_SFEATURES"))
}
