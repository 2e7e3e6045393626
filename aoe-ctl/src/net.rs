//! What we need to know about a network interface, asked through ioctls (sysfs would show
//! the wrong namespace after a plain setns).

use std::ffi::CString;
use std::io;

use anyhow::{anyhow, bail, Context, Result};
use aoe_common::wire::Mac;

#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    pub mtu: usize,
    /// Receive queues in use (ETHTOOL_GCHANNELS; 1 when the driver does not say).
    pub rx_queues: u32,
}

struct Fd(libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is not valid");
    }
    // SAFETY: ifreq is plain old data.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}
const ETHTOOL_GCHANNELS: u32 = 0x3c;

impl Interface {
    pub fn lookup(name: &str) -> Result<Interface> {
        let cname =
            CString::new(name).map_err(|_| anyhow!("interface name {name:?} is not valid"))?;
        // SAFETY: valid C string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            bail!("no interface named {name}");
        }
        // SAFETY: plain socket call.
        let fd =
            Fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) });
        if fd.0 < 0 {
            return Err(io::Error::last_os_error()).context("socket for interface ioctls");
        }
        let mut r = ifreq(name)?;
        // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq.
        if unsafe { libc::ioctl(fd.0, libc::SIOCGIFHWADDR, &mut r) } < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("MAC address of {name}"));
        }
        // SAFETY: union field written by the ioctl above.
        let data = unsafe { r.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        let mut r = ifreq(name)?;
        // SAFETY: SIOCGIFMTU fills ifr_mtu.
        if unsafe { libc::ioctl(fd.0, libc::SIOCGIFMTU, &mut r) } < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("MTU of {name}"));
        }
        // SAFETY: union field written by the ioctl above.
        let mtu = unsafe { r.ifr_ifru.ifru_mtu } as usize;
        let mut ch = EthtoolChannels {
            cmd: ETHTOOL_GCHANNELS,
            ..Default::default()
        };
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
        // SAFETY: SIOCETHTOOL with a valid ethtool_channels buffer.
        let ok = unsafe { libc::ioctl(fd.0, libc::SIOCETHTOOL, &mut r) } >= 0;
        let rx_queues = if ok {
            ch.rx_count.max(ch.combined_count).max(1)
        } else {
            1
        };
        Ok(Interface {
            name: name.to_string(),
            index,
            mac,
            mtu,
            rx_queues,
        })
    }
}

pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

pub fn parse_mac(s: &str) -> Result<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("{s:?} is not a MAC address (want six hex bytes like 52:54:00:12:34:56)");
    }
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16)
            .map_err(|_| anyhow!("{s:?} is not a MAC address (bad byte {p:?})"))?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let m = parse_mac("52:54:00:0a:Bc:ff").unwrap();
        assert_eq!(m, [0x52, 0x54, 0, 0x0a, 0xbc, 0xff]);
        assert_eq!(format_mac(&m), "52:54:00:0a:bc:ff");
        assert!(parse_mac("52:54:00:0a:bc")
            .unwrap_err()
            .to_string()
            .contains("six hex"));
        assert!(parse_mac("52:54:00:0a:bc:zz")
            .unwrap_err()
            .to_string()
            .contains("zz"));
    }

    #[test]
    fn loopback_exists() {
        let lo = Interface::lookup("lo").unwrap();
        assert!(lo.index > 0);
        assert!(Interface::lookup("no-such-if0")
            .unwrap_err()
            .to_string()
            .contains("no interface"));
    }
}
