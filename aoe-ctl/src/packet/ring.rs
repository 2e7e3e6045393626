//! An AF_PACKET socket with memory-mapped rx and tx rings (PACKET_MMAP, TPACKET_V2), for the
//! load generator (which must outrun any one target core) and for the target where XDP is
//! unavailable: frames are written straight into the tx ring and leave with one `send()` per
//! batch; received frames are read in place from the rx ring. No allocation per frame.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_common::wire::Mac;

use super::socket::{open_bound, set_option};
use crate::net::Interface;

/// Where a frame's data starts in a tx slot: the kernel reads it at
/// `TPACKET2_HDRLEN - sizeof(sockaddr_ll)` (net/packet/af_packet.c, tpacket_fill_skb).
const TX_DATA_OFFSET: usize = libc::TPACKET2_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>();
/// Size of one ring block: a power of two the kernel accepts for every slot size here.
const BLOCK: u32 = 1 << 16;
/// Most memory one ring may take: jumbo slots (16 KiB) get fewer of them.
const RING_BYTES: usize = 16 << 20;

pub struct RingSocket {
    fd: OwnedFd,
    pub iface: Interface,
    map: NonNull<u8>,
    map_len: usize,
    slot: usize,
    rx_slots: usize,
    rx_next: usize,
    tx: TxRing,
}

/// The transmit half of the rings, usable while a received frame is borrowed.
pub struct TxRing {
    /// The first tx slot.
    base: NonNull<u8>,
    slot: usize,
    tx_slots: usize,
    tx_next: usize,
    /// Frames written to the tx ring since the last kick.
    unsent: usize,
}

// SAFETY: the mapping belongs to this socket alone; it is moved, never shared.
unsafe impl Send for RingSocket {}

impl Drop for RingSocket {
    fn drop(&mut self) {
        // SAFETY: we own the mapping (the descriptor closes itself).
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

impl RingSocket {
    /// Open the rings on `ifname`, sized for frames of its MTU: `rx_slots` and `tx_slots`
    /// frames (rounded up to whole blocks, at most `RING_BYTES` a ring). No tx ring when
    /// `tx_slots` is 0: sends then go through `send`/`sendmmsg` on `raw_fd`.
    pub fn open(ifname: &str, rx_slots: usize, tx_slots: usize) -> Result<RingSocket> {
        Self::open_with_room(ifname, rx_slots, tx_slots, 0)
    }

    /// `open`, with tx slots of at least `room` bytes of frame (a target's engine asks for
    /// room for its longest possible reply, whatever the MTU).
    pub fn open_with_room(
        ifname: &str,
        rx_slots: usize,
        tx_slots: usize,
        room: usize,
    ) -> Result<RingSocket> {
        let iface = Interface::lookup(ifname)?;
        // A frame of the MTU (a VLAN tag included) after the kernel's header, rounded up.
        let slot = ((iface.mtu + 18).max(room) + libc::TPACKET2_HDRLEN + 16)
            .next_power_of_two()
            .max(2048);
        if slot > BLOCK as usize {
            bail!("MTU {} of {} is too large for the rings", iface.mtu, ifname);
        }
        let per_block = BLOCK as usize / slot;
        let blocks = |n: usize| n.min(RING_BYTES / slot).div_ceil(per_block).max(1);
        let tx_blocks = if tx_slots == 0 { 0 } else { blocks(tx_slots) };
        let rx_blocks = blocks(rx_slots);

        let fd = open_bound(&iface)?;
        let v2 = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v2).context("PACKET_VERSION")?;
        // Straight to the driver: a load generator has no use for the qdisc.
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1)
            .context("PACKET_QDISC_BYPASS")?;
        for (name, nblocks) in [
            (libc::PACKET_RX_RING, rx_blocks),
            (libc::PACKET_TX_RING, tx_blocks),
        ] {
            if nblocks == 0 {
                continue;
            }
            let req = libc::tpacket_req {
                tp_block_size: BLOCK,
                tp_block_nr: nblocks as u32,
                tp_frame_size: slot as u32,
                tp_frame_nr: (nblocks * per_block) as u32,
            };
            set_option(&fd, libc::SOL_PACKET, name, &req)
                .context("setting up a PACKET_MMAP ring")?;
        }
        let map_len = (rx_blocks + tx_blocks) * BLOCK as usize;
        // SAFETY: mapping the rings the kernel just set up on this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap of the rings");
        }
        Ok(RingSocket {
            fd,
            map: NonNull::new(map.cast()).expect("mmap returned null"),
            map_len,
            slot,
            rx_slots: rx_blocks * per_block,
            rx_next: 0,
            tx: TxRing {
                // SAFETY: the tx ring follows the rx blocks inside the mapping.
                base: unsafe {
                    NonNull::new_unchecked(map.cast::<u8>().add(rx_blocks * BLOCK as usize))
                },
                slot,
                tx_slots: tx_blocks * per_block,
                tx_next: 0,
                unsent: 0,
            },
            iface,
        })
    }

    pub fn mac(&self) -> Mac {
        self.iface.mac
    }

    /// Largest frame a tx slot holds.
    pub fn max_frame(&self) -> usize {
        self.slot - TX_DATA_OFFSET
    }

    fn header(&self, index: usize) -> *mut libc::tpacket2_hdr {
        // SAFETY: index < rx_slots, so the slot lies inside the mapping.
        unsafe { self.map.as_ptr().add(index * self.slot).cast() }
    }

    /// The status word of an rx slot, shared with the kernel.
    fn status(&self, index: usize) -> &AtomicU32 {
        status_of(self.header(index))
    }

    /// Write the next frame into the tx ring with `build` (which returns its length, 0 to
    /// send nothing); false when the ring is full (kick and try again later). Frames under
    /// 60 bytes are padded with zeros.
    pub fn queue(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.tx.queue(build)
    }

    /// The tx ring alone, to answer outside `receive_with`.
    pub fn tx(&mut self) -> &mut TxRing {
        &mut self.tx
    }

    /// Hand every queued frame to the kernel: one syscall for the whole batch.
    pub fn flush(&mut self) -> Result<()> {
        if self.tx.unsent == 0 {
            return Ok(());
        }
        loop {
            // SAFETY: a send with no buffer kicks the tx ring.
            let r =
                unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
            if r >= 0 {
                self.tx.unsent = 0;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The device queue is full: the frames stay queued for the next kick.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => return Ok(()),
                _ => return Err(e).context("sending from the tx ring"),
            }
        }
    }

    /// Hand the next received frame to `f`, then give its slot back to the kernel; false
    /// when the rx ring holds nothing.
    pub fn receive(&mut self, f: impl FnOnce(&[u8])) -> bool {
        self.receive_with(|frame, _| f(frame))
    }

    /// `receive`, with the tx ring at hand to answer the frame in place.
    pub fn receive_with(&mut self, f: impl FnOnce(&[u8], &mut TxRing)) -> bool {
        let index = self.rx_next;
        if self.status(index).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return false;
        }
        let h = self.header(index);
        // SAFETY: a USER slot belongs to user space; tp_mac/tp_snaplen locate the frame
        // inside the slot (the kernel never writes past it). The tx ring is a disjoint part
        // of the mapping.
        let frame = unsafe {
            let (mac, snap) = ((*h).tp_mac as usize, (*h).tp_snaplen as usize);
            let len = snap.min(self.slot.saturating_sub(mac));
            std::slice::from_raw_parts(h.cast::<u8>().add(mac), len)
        };
        f(frame, &mut self.tx);
        fence(Ordering::Release);
        self.status(index)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.rx_next = (self.rx_next + 1) % self.rx_slots;
        true
    }

    /// The socket's descriptor, readable when frames wait (to poll it with others).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Sleep until a frame arrives or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e).context("poll");
            }
        }
        Ok(())
    }

    /// Frames the kernel dropped because the rx ring was full (PACKET_STATISTICS).
    pub fn drops(&self) -> u64 {
        // SAFETY: tpacket_stats is plain old data.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: valid buffer and length.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return 0;
        }
        u64::from(st.tp_drops)
    }
}

impl TxRing {
    fn header(&self, index: usize) -> *mut libc::tpacket2_hdr {
        // SAFETY: index < tx_slots, so the slot lies inside the mapping.
        unsafe { self.base.as_ptr().add(index * self.slot).cast() }
    }

    /// See `RingSocket::queue`.
    pub fn queue(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.tx_slots == 0 {
            return false;
        }
        let index = self.tx_next;
        let status = status_of(self.header(index));
        if status.load(Ordering::Acquire) != libc::TP_STATUS_AVAILABLE {
            return false;
        }
        // SAFETY: an AVAILABLE slot belongs to user space until we hand it over below.
        let data = unsafe {
            std::slice::from_raw_parts_mut(
                self.header(index).cast::<u8>().add(TX_DATA_OFFSET),
                self.slot - TX_DATA_OFFSET,
            )
        };
        let n = build(data).min(data.len());
        if n == 0 {
            return true;
        }
        let len = if n < 60 {
            data[n..60].fill(0);
            60
        } else {
            n
        };
        // SAFETY: as above; tp_len is ours to set while the slot is AVAILABLE.
        unsafe { (*self.header(index)).tp_len = len as u32 };
        status.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.tx_next = (self.tx_next + 1) % self.tx_slots;
        self.unsent += 1;
        true
    }
}

/// The status word of a ring slot, shared with the kernel.
fn status_of<'a>(h: *mut libc::tpacket2_hdr) -> &'a AtomicU32 {
    // SAFETY: tp_status is the first, 4-byte aligned field of a slot header inside the
    // mapping, which outlives every use here; the kernel and we only touch it atomically.
    unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*h).tp_status)) }
}
