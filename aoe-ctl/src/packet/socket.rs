//! A raw AF_PACKET socket for AoE frames on one interface.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result};
use aoe_common::wire::{Mac, ETHERTYPE_AOE};

use crate::net::Interface;

/// An AF_PACKET socket for AoE frames bound to `iface`, which does not see its own
/// transmissions (our requests would otherwise come back to us).
pub(crate) fn open_bound(iface: &Interface) -> Result<OwnedFd> {
    open_bound_to(iface, ETHERTYPE_AOE, false)
}

/// `open_bound` for a target: it receives only the frames addressed to this interface on
/// its own VLAN, from a source that is not a group address (`target_filter`).
pub(crate) fn open_target(iface: &Interface) -> Result<OwnedFd> {
    open_bound_to(iface, ETHERTYPE_AOE, true)
}

/// An AF_PACKET socket bound to `iface` that receives `ethertype` (0: nothing), through the
/// target's filter when `filtered`.
fn open_bound_to(iface: &Interface, ethertype: u16, filtered: bool) -> Result<OwnedFd> {
    // Protocol 0 until bound: no frame is queued before the filter is in place.
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket (are you root?)");
    }
    // SAFETY: a descriptor we just opened and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if filtered {
        attach_filter(&fd, &target_filter(iface.index))
            .context("attaching the target's socket filter")?;
    }
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = iface.index as i32;
    // SAFETY: valid sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("binding to {}", iface.name));
    }
    set_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1)
        .context("PACKET_IGNORE_OUTGOING")?;
    Ok(fd)
}

/// Frames on the wire that are not for a target on this interface, as the stack has marked
/// them: PACKET_OTHERHOST (addressed to another MAC, or tagged for a VLAN that has no device
/// here: the stack strips such a tag and still delivers the frame to a socket bound to the
/// ethertype), a VLAN tag still present, a frame the stack moved to another device (a VLAN
/// device on this one), or a source MAC that is a group address (a reply to it would go to
/// the whole group). The kernel runs this classic BPF filter before the frame is copied into
/// the ring, so a flood of them costs no ring slots; `ring.rs` checks the same again.
fn target_filter(ifindex: u32) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let ancillary = |what: libc::c_int| (libc::SKF_AD_OFF + what) as u32;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, ancillary(libc::SKF_AD_PKTTYPE)),
        // HOST, BROADCAST, MULTICAST: 0..=2.
        op(JGT, 6, 0, libc::PACKET_MULTICAST as u32),
        op(LD_W_ABS, 0, 0, ancillary(libc::SKF_AD_VLAN_TAG_PRESENT)),
        op(JEQ, 0, 4, 0),
        op(LD_W_ABS, 0, 0, ancillary(libc::SKF_AD_IFINDEX)),
        op(JEQ, 0, 2, ifindex),
        // The first byte of the source MAC; its low bit marks a group address.
        op(LD_B_ABS, 0, 0, 6),
        op(JSET, 0, 1, 1),
        op(RET, 0, 0, 0),
        op(RET, 0, 0, u32::MAX),
    ]
}

fn attach_filter(fd: &OwnedFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// setsockopt with a value of the option's type.
pub(crate) fn set_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: `v` is a valid value of the option's type, of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub struct RawSocket {
    fd: OwnedFd,
    pub iface: Interface,
}

impl RawSocket {
    pub fn open(ifname: &str) -> Result<RawSocket> {
        let iface = Interface::lookup(ifname)?;
        let fd = open_bound(&iface)?;
        // Room for a window of replies; best effort (the defaults work, more slowly).
        let size: libc::c_int = 8 << 20;
        let _ = set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size);
        let _ = set_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &size);
        Ok(RawSocket { fd, iface })
    }

    /// A socket that only sends (it receives nothing, so no frame is ever queued to it):
    /// for replies the control plane sends.
    pub fn open_sender(ifname: &str) -> Result<RawSocket> {
        let iface = Interface::lookup(ifname)?;
        let fd = open_bound_to(&iface, 0, false)?;
        Ok(RawSocket { fd, iface })
    }

    pub fn mac(&self) -> Mac {
        self.iface.mac
    }

    /// Send one frame, padded to 60 bytes.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let mut padded = [0u8; 60];
        let data = if frame.len() < 60 {
            padded[..frame.len()].copy_from_slice(frame);
            &padded[..]
        } else {
            frame
        };
        loop {
            // SAFETY: valid buffer.
            let r = unsafe { libc::send(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                _ => return Err(e).context("sending an AoE frame"),
            }
        }
    }

    /// Receive one frame into `buf`, waiting at most `timeout`; None on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(None);
            }
            return Err(e).context("poll");
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                return Ok(None);
            }
            return Err(e).context("receiving an AoE frame");
        }
        Ok(Some(n as usize))
    }
}
