//! Can the classifier see an interface's VLAN tags? A NIC that strips the 802.1Q (or
//! 802.1ad) tag on receive, and a veth whose peer sent a tagged frame, leave the tag only in
//! the packet's metadata. The native program reads it there through the driver
//! (`bpf_xdp_metadata_rx_vlan_tag`) where the driver says it can (`reports_vlan_tags`, the
//! netdev family's xdp-rx-metadata-features). Everywhere else, receive stripping is turned
//! off while XDP serves (`Stripping`, through the ethtool ioctl), so the tag stays in the
//! frame and the classifier passes it to the stack.

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

const ETHTOOL_GDRVINFO: u32 = 0x03;

/// The name of the driver of `iface` ("veth", "mlx5_core", ...).
pub fn driver(iface: &str) -> Option<String> {
    let sock = socket().ok()?;
    // struct ethtool_drvinfo: cmd, then driver[32], and more (196 bytes in all).
    let mut info = [0u32; 49];
    info[0] = ETHTOOL_GDRVINFO;
    ethtool(&sock, iface, &mut info).ok()?;
    let bytes: Vec<u8> = info[1..9].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Generic netlink: the controller, and the netdev family (include/uapi/linux/netdev.h).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: u16 = 5;
const NETDEV_XDP_RX_METADATA_VLAN_TAG: u64 = 4;

/// Does the driver of interface `ifindex` report VLAN tags to XDP programs? False where the
/// kernel cannot say (before 6.8, no netdev family).
pub fn reports_vlan_tags(ifindex: u32) -> bool {
    netdev_rx_metadata(ifindex).is_ok_and(|f| f & NETDEV_XDP_RX_METADATA_VLAN_TAG != 0)
}

/// The xdp-rx-metadata-features of interface `ifindex`.
fn netdev_rx_metadata(ifindex: u32) -> Result<u64> {
    let sock = genl_socket()?;
    let family = genl_ask(
        &sock,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        CTRL_ATTR_FAMILY_NAME,
        b"netdev\0",
    )?;
    let id = attr(&family, CTRL_ATTR_FAMILY_ID)
        .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
        .context("no netdev family")?;
    let dev = genl_ask(
        &sock,
        id,
        NETDEV_CMD_DEV_GET,
        NETDEV_A_DEV_IFINDEX,
        &ifindex.to_ne_bytes(),
    )?;
    attr(&dev, NETDEV_A_DEV_XDP_RX_METADATA_FEATURES)
        .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
        .context("no xdp-rx-metadata-features")
}

fn genl_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_GENERIC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("a generic netlink socket");
    }
    // SAFETY: a descriptor we just opened and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    super::super::packet::socket::set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    Ok(fd)
}

/// One request (`cmd` with one attribute) to generic netlink family `family`; the
/// attributes of the reply.
fn genl_ask(sock: &OwnedFd, family: u16, cmd: u8, a: u16, value: &[u8]) -> Result<Vec<u8>> {
    let alen = 4 + value.len();
    let len = 16 + 4 + alen.next_multiple_of(4);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&[0; 8]); // sequence, port
    m.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: command, version 1
    m.extend_from_slice(&(alen as u16).to_ne_bytes());
    m.extend_from_slice(&a.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(len, 0);
    // SAFETY: sending our buffer on our socket (to the kernel: no address needed).
    if unsafe { libc::send(sock.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) } < 0 {
        return Err(io::Error::last_os_error()).context("generic netlink request");
    }
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: receiving into our buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("generic netlink reply");
    }
    let buf = &buf[..n as usize];
    let kind = buf
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = buf
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        bail!("generic netlink: {}", io::Error::from_raw_os_error(-errno));
    }
    let end = buf
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0)
        .min(buf.len());
    Ok(buf.get(20..end).unwrap_or_default().to_vec())
}

/// The value of attribute `kind` among netlink attributes `attrs`.
fn attr(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = usize::from(u16::from_ne_bytes([attrs[at], attrs[at + 1]]));
        let t = u16::from_ne_bytes([attrs[at + 2], attrs[at + 3]]) & 0x3fff;
        if len < 4 || at + len > attrs.len() {
            return None;
        }
        if t == kind {
            return Some(&attrs[at + 4..at + len]);
        }
        at += len.next_multiple_of(4);
    }
    None
}

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

    /// Does `iface` strip VLAN tags on receive now?
    pub fn active(iface: &str) -> Result<bool> {
        let sock = socket()?;
        let names = feature_names(&sock, iface)?;
        let state = features(&sock, iface, names.len())?;
        Ok(STRIPPING
            .iter()
            .filter_map(|want| names.iter().position(|n| n == want))
            .any(|b| state.active(b)))
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

#[cfg(test)]
mod tests {
    use super::attr;

    #[test]
    fn attributes_are_read_within_bounds() {
        // Two attributes: (type 1, 2 bytes padded to 4), (type 5, 8 bytes).
        let mut a = vec![6, 0, 1, 0, 0xaa, 0xbb, 0, 0, 12, 0, 5, 0];
        a.extend_from_slice(&4u64.to_ne_bytes());
        assert_eq!(attr(&a, 1), Some(&[0xaa, 0xbb][..]));
        assert_eq!(attr(&a, 5), Some(&4u64.to_ne_bytes()[..]));
        assert_eq!(attr(&a, 3), None);
        // A length past the end, or shorter than a header: nothing, never a panic.
        assert_eq!(attr(&[200, 0, 1, 0, 0], 1), None);
        assert_eq!(attr(&[2, 0, 1, 0], 1), None);
        for n in 0..a.len() {
            let _ = attr(&a[..n], 5);
        }
    }
}
