//! One AF_XDP socket bound to one rx queue, with its own UMEM (xdpilone for the rings).

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use anyhow::{anyhow, Result};

use super::chunks::Layout;
use memmap2::MmapMut;
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

/// One UMEM chunk per frame. The kernel allows at most one page; 4096 leaves room for the
/// largest single-buffer reply after the 256-byte XDP headroom.
pub const FRAME_SIZE: u32 = 4096;
/// Bytes the kernel puts before a received frame in copy mode (XDP_PACKET_HEADROOM).
pub const RX_HEADROOM: usize = 256;
/// Bytes the UMEM keeps free before the kernel's headroom in every chunk. With them an ATA
/// request's sectors, after its 36 header bytes, start on a 512-byte boundary, so O_DIRECT
/// moves them between the disk and the frame without a bounce copy.
pub const UMEM_HEADROOM: usize = 512 - (RX_HEADROOM + 36) % 512;
/// Largest received frame one descriptor holds; longer ones arrive as a chain.
pub const MAX_FRAME: usize = FRAME_SIZE as usize - RX_HEADROOM - UMEM_HEADROOM;
/// Descriptor option: more descriptors of this frame follow (multi-buffer).
pub const XDP_PKT_CONTD: u32 = 1;
/// Bind flag for multi-buffer (scatter-gather) frames, kernel >= 6.6.
const XDP_USE_SG: u16 = 1 << 4;
/// Most descriptors the kernel accepts for one transmitted frame (MAX_SKB_FRAGS + 1).
pub const MAX_TX_CHAIN: usize = 18;

#[derive(Debug, Clone)]
pub struct XskConfig {
    pub ifname: String,
    pub queue: u32,
    /// Entries in each ring (fill, completion, rx, tx); a power of two.
    pub ring: u32,
    /// How the UMEM is cut up; runs mean jumbo frames as descriptor chains (XDP_USE_SG).
    pub layout: Layout,
}

pub struct XskSocket {
    // Field order matters: the rings and UMEM go before the memory they point into.
    pub device: DeviceQueue,
    pub rx: RingRx,
    pub tx: RingTx,
    _umem: Umem,
    area: MmapMut,
}

fn errno(what: &str) -> impl FnOnce(xdpilone::Errno) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

impl XskSocket {
    pub fn open(cfg: &XskConfig) -> Result<Self> {
        let len = cfg.layout.total() as usize * FRAME_SIZE as usize;
        let mut area = MmapMut::map_anon(len)?;
        let mem = NonNull::new(std::ptr::slice_from_raw_parts_mut(area.as_mut_ptr(), len))
            .ok_or_else(|| anyhow!("UMEM mapping is null"))?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.ring,
            complete_size: cfg.ring,
            frame_size: FRAME_SIZE,
            headroom: UMEM_HEADROOM as u32,
            flags: 0,
        };
        // SAFETY: `area` is page aligned, `len` bytes long and outlives the Umem (field order).
        let umem = unsafe { Umem::new(umem_cfg, mem) }.map_err(errno("registering UMEM"))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(cfg.ifname.as_str())?;
        info.from_name(&name)
            .map_err(errno("AF_XDP interface lookup"))?;
        info.set_queue(cfg.queue);
        let sock = Socket::with_shared(&info, &umem).map_err(errno("AF_XDP socket"))?;
        let device = umem.fq_cq(&sock).map_err(errno("fill/completion rings"))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(cfg.ring),
                    tx_size: NonZeroU32::new(cfg.ring),
                    // No COPY/ZEROCOPY flag: the kernel tries zero-copy and falls back to copy.
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP
                        | if cfg.layout.multi_buffer() {
                            XDP_USE_SG
                        } else {
                            0
                        },
                },
            )
            .map_err(errno("rx/tx rings"))?;
        let rx = user.map_rx().map_err(errno("mapping the rx ring"))?;
        let tx = user.map_tx().map_err(errno("mapping the tx ring"))?;
        // Rebinding a queue right after the previous socket closed can fail with EBUSY once.
        let mut tries = 0;
        loop {
            match umem.bind(&user) {
                Ok(()) => break,
                Err(e) if e.get_raw() == libc::EBUSY && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if cfg.layout.multi_buffer() && e.get_raw() == libc::EOPNOTSUPP => {
                    return Err(anyhow!(
                        "{} queue {}: the driver has no AF_XDP multi-buffer support, which an \
                         MTU above {} needs: lower the MTU or use generic XDP mode",
                        cfg.ifname,
                        cfg.queue,
                        MAX_FRAME - 14
                    ))
                }
                Err(e) => {
                    return Err(anyhow!(
                        "binding AF_XDP to {} queue {}: {e}",
                        cfg.ifname,
                        cfg.queue
                    ))
                }
            }
        }
        Ok(XskSocket {
            device,
            rx,
            tx,
            _umem: umem,
            area,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// The bytes of the UMEM from `addr` to the end of its chunk.
    ///
    /// # Safety
    /// The chunk must be owned by user space (not in the fill or tx ring), and no other
    /// slice of it may be alive.
    pub unsafe fn chunk_from(&mut self, addr: u64) -> &mut [u8] {
        let base = addr & !(u64::from(FRAME_SIZE) - 1);
        let end = (base + u64::from(FRAME_SIZE)).min(self.area.len() as u64);
        let start = addr.min(end);
        // SAFETY: start..end lies inside `area`; exclusivity is the caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.area.as_mut_ptr().add(start as usize),
                (end - start) as usize,
            )
        }
    }
}

impl XskSocket {
    /// `len` bytes of the UMEM from `addr`, across chunk boundaries.
    ///
    /// # Safety
    /// Every chunk touched must be owned by user space, and no other slice of them alive.
    pub unsafe fn region(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let start = (addr as usize).min(self.area.len());
        let end = start.saturating_add(len).min(self.area.len());
        // SAFETY: start..end lies inside `area`; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.area.as_mut_ptr().add(start), end - start) }
    }

    /// The bytes of a frame that arrived as a chain: the first descriptor's chunk from its
    /// address (mutable: the reply is written there), and the other descriptors' bytes, read
    /// only, in `tail` (which must hold `chain.len() - 1`).
    ///
    /// # Safety
    /// Every chunk of the chain must be owned by user space, the chunks distinct, and no
    /// other slice of them alive.
    pub unsafe fn chain<'a>(
        &'a mut self,
        chain: &[XdpDesc],
        tail: &mut [&'a [u8]],
    ) -> &'a mut [u8] {
        let size = self.area.len() as u64;
        let base = self.area.as_mut_ptr();
        let span = |addr: u64, len: u64| {
            let end = (chunk_base(addr) + u64::from(FRAME_SIZE)).min(size);
            let start = addr.min(end);
            (start as usize, (end - start).min(len) as usize)
        };
        for (t, d) in tail.iter_mut().zip(&chain[1..]) {
            let (start, len) = span(d.addr, u64::from(d.len));
            // SAFETY: start..start+len lies inside `area` and its chunk; the chunks are
            // distinct from the first one (the caller's promise), so nothing aliases.
            *t = unsafe { std::slice::from_raw_parts(base.add(start), len) };
        }
        let (start, len) = span(chain[0].addr, u64::MAX);
        // SAFETY: as above, for the first chunk.
        unsafe { std::slice::from_raw_parts_mut(base.add(start), len) }
    }

    /// Copy `len` bytes inside the UMEM from `from` to `to`, clamped to the area; returns
    /// the bytes copied.
    ///
    /// # Safety
    /// Both ranges must lie in chunks user space owns: the kernel may be writing any other
    /// chunk (the copy itself stays inside the area whatever the arguments).
    pub unsafe fn copy(&mut self, from: u64, len: usize, to: u64) -> usize {
        let size = self.area.len();
        let (from, to) = ((from as usize).min(size), (to as usize).min(size));
        let n = len.min(size - from).min(size - to);
        self.area.copy_within(from..from + n, to);
        n
    }
}

/// Chunk base address of a descriptor address.
pub fn chunk_base(addr: u64) -> u64 {
    addr & !(u64::from(FRAME_SIZE) - 1)
}
