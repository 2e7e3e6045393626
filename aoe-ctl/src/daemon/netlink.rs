//! Watching rtnetlink for links that come, change and go (RTM_NEWLINK, RTM_DELLINK on the
//! RTMGRP_LINK group): a raw NETLINK_ROUTE socket read from the daemon's tokio loop. Only
//! the name, flags and MTU of each link are read; everything else in a message is skipped,
//! and a malformed message ends the batch without a panic.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};
use tokio::io::unix::AsyncFd;

const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;

/// What a link is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// It exists (new or changed): administratively up, with carrier, and its MTU.
    Present {
        name: String,
        up: bool,
        carrier: bool,
        mtu: u32,
    },
    Removed {
        name: String,
    },
    /// The kernel dropped events (the socket's buffer was full): look at every link again.
    Overrun,
}

pub struct LinkWatcher {
    fd: AsyncFd<OwnedFd>,
}

impl LinkWatcher {
    /// Subscribe to link events of this network namespace.
    pub fn open() -> Result<LinkWatcher> {
        // SAFETY: plain socket(2); the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is its unset value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: `sa` is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            bail!(
                "netlink bind to the link group: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is open, and owned by the AsyncFd for as long as it lives.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(LinkWatcher { fd })
    }

    /// The next batch of events.
    pub async fn next(&self) -> Result<Vec<LinkEvent>> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let mut ready = self.fd.readable().await?;
            let got = ready.try_io(|fd| {
                // SAFETY: `buf` is writable for its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(Ok(n)) => return Ok(parse(&buf[..n])),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![LinkEvent::Overrun])
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The link events in one datagram of netlink messages.
pub fn parse(mut b: &[u8]) -> Vec<LinkEvent> {
    let mut out = vec![];
    while b.len() >= NLMSG_HDR {
        let Some(len) = u32_at(b, 0).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDR || len > b.len() {
            break;
        }
        let kind = u16_at(b, 4).unwrap_or(0);
        if let Some(e) = link(kind, &b[NLMSG_HDR..len]) {
            out.push(e);
        }
        b = &b[align4(len).min(b.len())..];
    }
    out
}

/// One RTM_NEWLINK or RTM_DELLINK body: ifinfomsg, then attributes.
fn link(kind: u16, body: &[u8]) -> Option<LinkEvent> {
    if kind != RTM_NEWLINK && kind != RTM_DELLINK {
        return None;
    }
    let flags = u32_at(body, 8)?;
    let mut attrs = body.get(IFINFO..)?;
    let (mut name, mut mtu) = (None, 0);
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0)? as usize;
        let ty = u16_at(attrs, 2)? & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        match ty {
            IFLA_IFNAME => {
                let end = value.iter().position(|&c| c == 0).unwrap_or(value.len());
                name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            IFLA_MTU => mtu = u32_at(value, 0).unwrap_or(0),
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let name = name?;
    Some(if kind == RTM_DELLINK {
        LinkEvent::Removed { name }
    } else {
        LinkEvent::Present {
            name,
            up: flags & libc::IFF_UP as u32 != 0,
            carrier: flags & libc::IFF_LOWER_UP as u32 != 0,
            mtu,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut a = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFO];
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        for a in attrs {
            body.extend_from_slice(a);
        }
        let mut m = ((NLMSG_HDR + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn reads_new_and_removed_links() {
        let up = (libc::IFF_UP | libc::IFF_LOWER_UP) as u32;
        let mut b = message(
            RTM_NEWLINK,
            up,
            &[
                attr(IFLA_MTU, &9000u32.to_ne_bytes()),
                attr(IFLA_IFNAME, b"veth0\0"),
            ],
        );
        b.extend(message(RTM_DELLINK, 0, &[attr(IFLA_IFNAME, b"veth1\0")]));
        // Not a link message: skipped.
        b.extend(message(20, 0, &[attr(IFLA_IFNAME, b"addr\0")]));
        b.extend(message(
            RTM_NEWLINK,
            libc::IFF_UP as u32,
            &[attr(IFLA_IFNAME, b"v2\0")],
        ));
        assert_eq!(
            parse(&b),
            vec![
                LinkEvent::Present {
                    name: "veth0".into(),
                    up: true,
                    carrier: true,
                    mtu: 9000
                },
                LinkEvent::Removed {
                    name: "veth1".into()
                },
                LinkEvent::Present {
                    name: "v2".into(),
                    up: true,
                    carrier: false,
                    mtu: 0
                },
            ]
        );
    }

    #[test]
    fn hostile_messages_never_panic() {
        let good = message(RTM_NEWLINK, 1, &[attr(IFLA_IFNAME, b"veth0\0")]);
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        // Lengths that lie: the message's, then an attribute's.
        let mut b = good.clone();
        b[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse(&b).is_empty());
        let mut b = good.clone();
        b[NLMSG_HDR + IFINFO..NLMSG_HDR + IFINFO + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(parse(&b).is_empty());
        let mut b = good;
        b[NLMSG_HDR + IFINFO..NLMSG_HDR + IFINFO + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(parse(&b).is_empty());
        let _ = parse(&[0xff; 64]);
    }
}
