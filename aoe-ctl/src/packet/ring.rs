//! An AF_PACKET socket with memory-mapped rx and tx rings (PACKET_MMAP, TPACKET_V2), for the
//! load generator (which must outrun any one target core) and for the target where XDP is
//! unavailable: frames are written straight into the tx ring and leave with one `send()` per
//! batch; received frames are read in place from the rx ring. No allocation per frame.
//!
//! A target's socket (`open_with_room`) receives only what is addressed to this interface
//! on its own VLAN: the kernel filters with a classic BPF program (`socket::open_target`),
//! and each slot is checked again here from what the kernel wrote beside the frame (its
//! packet type, VLAN tag and device), so a frame of another VLAN is never served.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_common::wire::Mac;

use super::socket::{open_bound, open_target, set_option};
use crate::net::Interface;

/// Where a frame's data starts in a tx slot: the kernel reads it at
/// `TPACKET2_HDRLEN - sizeof(sockaddr_ll)` (net/packet/af_packet.c, tpacket_fill_skb).
const TX_DATA_OFFSET: usize = libc::TPACKET2_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>();
/// Size of one ring block: a power of two the kernel accepts for every slot size here.
const BLOCK: u32 = 1 << 16;
/// Most memory one ring may take: jumbo slots (16 KiB) get fewer of them.
const RING_BYTES: usize = 16 << 20;
/// An Ethernet header, which the MTU does not count.
const ETH_HEADER: usize = 14;
/// Where the kernel's sockaddr_ll lies in an rx slot: after the header, aligned
/// (TPACKET_ALIGN(sizeof(struct tpacket2_hdr))).
const SLL_OFFSET: usize = (std::mem::size_of::<libc::tpacket2_hdr>() + 15) & !15;

pub struct RingSocket {
    fd: OwnedFd,
    pub iface: Interface,
    map: NonNull<u8>,
    map_len: usize,
    slot: usize,
    rx_slots: usize,
    rx_next: usize,
    tx: TxRing,
    /// A target's socket: frames that are not for it are skipped (`for_target`).
    target: bool,
    /// Frames skipped by that check.
    filtered: u64,
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
    /// The longest frame the interface sends (MTU + Ethernet header): a longer one would be
    /// refused by the kernel and, without PACKET_LOSS, stop the ring at its slot.
    max_len: usize,
    /// Frames not sent because they were longer than that.
    pub oversized: u64,
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
        Self::open_rings(ifname, rx_slots, tx_slots, 0, false)
    }

    /// `open` for a target: tx slots of at least `room` bytes of frame (its engine asks for
    /// room for its longest possible reply, whatever the MTU), and only frames addressed to
    /// this interface on its own VLAN received.
    pub fn open_with_room(
        ifname: &str,
        rx_slots: usize,
        tx_slots: usize,
        room: usize,
    ) -> Result<RingSocket> {
        Self::open_rings(ifname, rx_slots, tx_slots, room, true)
    }

    fn open_rings(
        ifname: &str,
        rx_slots: usize,
        tx_slots: usize,
        room: usize,
        target: bool,
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

        let fd = if target {
            open_target(&iface)?
        } else {
            open_bound(&iface)?
        };
        let v2 = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v2).context("PACKET_VERSION")?;
        // A frame the kernel cannot send is dropped and its slot handed back, rather than left
        // in WRONG_FORMAT, where it would hold the ring (before the rings exist, or EBUSY).
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_LOSS, &1).context("PACKET_LOSS")?;
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
                max_len: iface.mtu + ETH_HEADER,
                oversized: 0,
            },
            iface,
            target,
            filtered: 0,
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

    /// `receive`, with the tx ring at hand to answer the frame in place. A target's socket
    /// skips (and gives back) frames that are not for it.
    pub fn receive_with(&mut self, f: impl FnOnce(&[u8], &mut TxRing)) -> bool {
        let mut index = self.rx_next;
        while self.status(index).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
            if self.target && !self.for_target(index) {
                self.filtered += 1;
                self.release(index);
                index = self.rx_next;
                continue;
            }
            let h = self.header(index);
            // SAFETY: a USER slot belongs to user space; tp_mac/tp_snaplen locate the frame
            // inside the slot (the kernel never writes past it). The tx ring is a disjoint
            // part of the mapping.
            let frame = unsafe {
                let (mac, snap) = ((*h).tp_mac as usize, (*h).tp_snaplen as usize);
                let len = snap.min(self.slot.saturating_sub(mac));
                std::slice::from_raw_parts(h.cast::<u8>().add(mac), len)
            };
            f(frame, &mut self.tx);
            self.release(index);
            return true;
        }
        false
    }

    /// Hand rx slot `index` (the next one) back to the kernel.
    fn release(&mut self, index: usize) {
        fence(Ordering::Release);
        self.status(index)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.rx_next = (self.rx_next + 1) % self.rx_slots;
    }

    /// Is the frame in rx slot `index` one a target on this interface serves, by what the
    /// kernel wrote beside it: received on this device (not moved to a VLAN device on it),
    /// addressed to this host (not PACKET_OTHERHOST: another MAC, or a VLAN without a
    /// device here), untagged (a priority tag, VLAN 0, is untagged), from a source that is
    /// not a group address? The socket's filter already dropped such frames in the kernel.
    fn for_target(&self, index: usize) -> bool {
        let h = self.header(index);
        // SAFETY: a USER slot belongs to user space; the header and the sockaddr_ll after it
        // lie inside the slot, and the frame within tp_snaplen bytes of tp_mac.
        let (status, tci, sll, src0) = unsafe {
            let sll = h
                .cast::<u8>()
                .add(SLL_OFFSET)
                .cast::<libc::sockaddr_ll>()
                .read_unaligned();
            let (mac, snap) = ((*h).tp_mac as usize, (*h).tp_snaplen as usize);
            let src0 = (snap > 6 && mac + 7 <= self.slot).then(|| *h.cast::<u8>().add(mac + 6));
            ((*h).tp_status, (*h).tp_vlan_tci, sll, src0)
        };
        let tagged = status & libc::TP_STATUS_VLAN_VALID != 0 && tci & 0x0fff != 0;
        sll.sll_ifindex == self.iface.index as i32
            && sll.sll_pkttype <= libc::PACKET_MULTICAST
            && !tagged
            && src0.is_some_and(|b| b & 1 == 0)
    }

    /// Frames a target's socket skipped because they were not for it.
    pub fn filtered(&self) -> u64 {
        self.filtered
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
        if n > self.max_len {
            // The kernel would refuse it: the slot stays free, the request unanswered.
            self.oversized += 1;
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
