//! A raw AF_PACKET socket for AoE frames on one interface.

use std::io;
use std::time::Duration;

use anyhow::{Context, Result};
use aoe_common::wire::{Mac, ETHERTYPE_AOE};

use crate::net::Interface;

pub struct RawSocket {
    fd: libc::c_int,
    pub iface: Interface,
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.fd) };
    }
}

impl RawSocket {
    pub fn open(ifname: &str) -> Result<RawSocket> {
        let iface = Interface::lookup(ifname)?;
        let proto = ETHERTYPE_AOE.to_be() as libc::c_int;
        // SAFETY: plain socket call.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket (are you root?)");
        }
        let sock = RawSocket { fd, iface };
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETHERTYPE_AOE.to_be();
        sll.sll_ifindex = sock.iface.index as i32;
        // SAFETY: valid sockaddr_ll of the right size.
        let r = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("binding to {ifname}"));
        }
        // Our own requests would otherwise loop back to us.
        let one: libc::c_int = 1;
        // SAFETY: valid option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        let size: libc::c_int = 8 << 20;
        // SAFETY: valid option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                4,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                4,
            );
        }
        Ok(sock)
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
            let r = unsafe { libc::send(self.fd, data.as_ptr().cast(), data.len(), 0) };
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
            fd: self.fd,
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
                self.fd,
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
