//! The user side of an export's kernel cache (`--kernel-cache SIZE`): hot 1 KiB blocks the
//! XDP program answers reads from (aoe-ebpf/src/cache.rs), kept coherent with writes here.
//!
//! The cache is a BPF array of `cache::Slot`s, direct-mapped by block, that this process
//! maps shared: a fill is a copy into the mapping, not a system call. Each slot has a
//! sequence lock (`seq`, odd while a fill writes it) and a write generation (`gen`). The
//! rules, which the tests in tests/tests/kernel_cache.rs race against each other:
//!
//! - A write to a block bumps its slot's `gen` once its data is in the file (or it failed),
//!   before its reply is built: `Coherence::written`, from `ata.rs`, for every export of
//!   the same file, whichever data path the write came in on.
//! - A read that may fill takes a ticket (the slot's `gen`) before its I/O is submitted, and
//!   fills only if `gen` still equals it, writing the ticket as `filled`. So a write that
//!   completed before the ticket is in the data read, and one that completes after it
//!   leaves `filled != gen`.
//! - The kernel answers only when `filled == gen` and `seq` is even and unchanged around its
//!   copy; it reads `gen` again after the copy, so a write acknowledged before a read's
//!   request arrived can never be answered with the data from before it.
//!
//! Fills wait for a block's second miss (`seen`): a block read once is not copied.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::{addr_of, addr_of_mut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use anyhow::{bail, Context, Result};
use aoe_common::maps::cache::{self, Slot, BLOCK_BYTES, BLOCK_SECTORS, EMPTY, SLOT_LEN};
use aya::maps::{MapData, MapFd};

/// A read that will not fill: no cache, a block not seen before, or not a block read.
pub const NO_TICKET: u64 = u64::MAX;

/// What `aoe-ctl stats` shows besides the kernel's hit and miss counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Blocks copied into the cache.
    pub fills: AtomicU64,
    /// Fills given up because a write completed while their read was in flight.
    pub fills_raced: AtomicU64,
    /// Slots whose generation a write bumped.
    pub invalidations: AtomicU64,
}

/// One export's cache: the BPF array and its shared mapping.
pub struct KernelCache {
    /// Unique in the process: which cache a classifier's row holds.
    pub id: u64,
    map: MapData,
    base: *mut Slot,
    slots: u32,
    /// Where the export starts in its file (sectors).
    offset: u64,
    pub stats: CacheStats,
}

// SAFETY: the mapping is shared memory used only through atomics and the sequence lock
// (fills are serialised per slot by `seq`); the pointer stays valid until Drop.
unsafe impl Send for KernelCache {}
// SAFETY: as above.
unsafe impl Sync for KernelCache {}

impl KernelCache {
    /// A cache of `bytes` (rounded down to whole slots) for an export at `offset` sectors
    /// into its file.
    pub fn new(bytes: u64, offset: u64) -> Result<Self> {
        if !cfg!(target_arch = "x86_64") {
            bail!(
                "the kernel cache needs x86-64: its XDP reader relies on the CPU keeping loads \
                 in order"
            );
        }
        let slots = slots_for(bytes)?;
        let map = MapData::from_fd(create_array(slots).context("creating the kernel cache map")?)
            .context("creating the kernel cache map")?;
        let len = slots as usize * SLOT_LEN;
        // SAFETY: mapping a BPF_F_MMAPABLE array's values, `len` bytes, shared.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the kernel cache");
        }
        static IDS: AtomicU64 = AtomicU64::new(1);
        let c = KernelCache {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            map,
            base: base.cast(),
            slots,
            offset,
            stats: CacheStats::default(),
        };
        for i in 0..slots {
            // SAFETY: a slot of our mapping; the kernel does not answer from this map yet.
            unsafe { addr_of_mut!((*c.slot(i)).lba).write_volatile(EMPTY) };
        }
        Ok(c)
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes of kernel memory the slots take.
    pub fn bytes(&self) -> u64 {
        u64::from(self.slots) * SLOT_LEN as u64
    }

    /// The map, for the classifier's `CACHES` table.
    pub fn fd(&self) -> &MapFd {
        self.map.fd()
    }

    fn slot(&self, i: u32) -> *mut Slot {
        debug_assert!(i < self.slots);
        // SAFETY: i < slots, inside the mapping.
        unsafe { self.base.add(i as usize) }
    }

    fn slot_of(&self, lba: u64) -> *mut Slot {
        self.slot(cache::slot_of(lba, self.slots))
    }

    /// Before the I/O of a read of `sectors` at `lba` is submitted: the ticket it may fill
    /// with when it completes.
    pub fn ticket(&self, lba: u64, sectors: usize) -> u64 {
        if sectors as u64 != BLOCK_SECTORS || !lba.is_multiple_of(BLOCK_SECTORS) {
            return NO_TICKET;
        }
        let s = self.slot_of(lba);
        // SAFETY: fields of a slot in our mapping, through atomics.
        let (gen, seen) = unsafe { (atomic(addr_of!((*s).gen)), atomic(addr_of!((*s).seen))) };
        let ticket = gen.load(Ordering::SeqCst);
        if seen.load(Ordering::Relaxed) == lba {
            ticket
        } else {
            seen.store(lba, Ordering::Relaxed);
            NO_TICKET
        }
    }

    /// A read of block `lba` with ticket `ticket` read `data`: keep it, unless a write to
    /// the slot completed since the ticket was taken or another fill holds the slot.
    pub fn fill(&self, lba: u64, ticket: u64, data: &[u8]) {
        if ticket == NO_TICKET || data.len() != BLOCK_BYTES {
            return;
        }
        let Some(held) = self.hold(lba) else {
            return;
        };
        let s = held.slot;
        // SAFETY: fields of a slot in our mapping, which `held` gives this thread.
        unsafe {
            if atomic(addr_of!((*s).gen)).load(Ordering::SeqCst) != ticket {
                CacheStats::add(&self.stats.fills_raced);
                return;
            }
            addr_of_mut!((*s).lba).write_volatile(lba);
            addr_of_mut!((*s).filled).write_volatile(ticket);
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                addr_of_mut!((*s).data).cast::<u8>(),
                BLOCK_BYTES,
            );
        }
        CacheStats::add(&self.stats.fills);
    }

    /// The slot of block `lba`, held for writing: its `seq` is odd (the kernel passes its
    /// reads on) until the guard drops. None while another thread holds it.
    pub fn hold(&self, lba: u64) -> Option<Held<'_>> {
        let s = self.slot_of(lba);
        // SAFETY: a slot of our mapping, through an atomic.
        let seq = unsafe { atomic(addr_of!((*s).seq)) };
        let was = seq.load(Ordering::Relaxed);
        if was & 1 != 0
            || seq
                .compare_exchange(was, was + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        Some(Held {
            slot: s,
            was,
            _cache: self,
        })
    }

    /// Make every slot stale.
    fn forget_all(&self) {
        for i in 0..self.slots {
            // SAFETY: a slot of our mapping, through an atomic.
            unsafe { atomic(addr_of!((*self.slot(i)).gen)) }.fetch_add(1, Ordering::SeqCst);
        }
        self.stats
            .invalidations
            .fetch_add(u64::from(self.slots), Ordering::Relaxed);
    }

    /// Sectors `[sector, sector + count)` of the file were written: bump the generation of
    /// every slot of a block they touch in this export.
    fn written(&self, sector: u64, count: u64) {
        // The part from the export's start on (beyond its end is harmless: no such block
        // is ever filled, and an export that grows keeps its offset).
        let end = sector.saturating_add(count);
        let start = sector.max(self.offset);
        if start >= end {
            return;
        }
        let first = (start - self.offset) / BLOCK_SECTORS;
        let last = (end - 1 - self.offset) / BLOCK_SECTORS;
        // More blocks than slots touch every slot at least once.
        let n = (last - first + 1).min(u64::from(self.slots));
        for b in first..first + n {
            let s = self.slot_of(b * BLOCK_SECTORS);
            // SAFETY: a slot of our mapping, through an atomic.
            unsafe { atomic(addr_of!((*s).gen)) }.fetch_add(1, Ordering::SeqCst);
        }
        self.stats.invalidations.fetch_add(n, Ordering::Relaxed);
    }
}

/// A slot `KernelCache::hold` gave one thread; released (even `seq`) on drop.
pub struct Held<'a> {
    slot: *mut Slot,
    was: u64,
    _cache: &'a KernelCache,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: the slot's `seq`, in a mapping `_cache` keeps alive.
        unsafe { atomic(addr_of!((*self.slot).seq)) }.store(self.was + 2, Ordering::Release);
    }
}

impl CacheStats {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// In the order of `crate::pinned::CACHE_STAT_NAMES`.
    pub fn snapshot(&self) -> [u64; 3] {
        [&self.fills, &self.fills_raced, &self.invalidations].map(|c| c.load(Ordering::Relaxed))
    }
}

impl Drop for KernelCache {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unused from here on.
        unsafe { libc::munmap(self.base.cast(), self.slots as usize * SLOT_LEN) };
    }
}

/// An atomic view of a u64 in the shared mapping.
///
/// # Safety
/// `p` points into a live mapping, 8-byte aligned.
unsafe fn atomic<'a>(p: *const u64) -> &'a AtomicU64 {
    // SAFETY: the caller's promise; the slot is `align(64)` and its words are u64.
    unsafe { AtomicU64::from_ptr(p.cast_mut()) }
}

/// A BPF array of `slots` `Slot`s with `cache::MAP_FLAGS` (aya 0.14 creates no mmapable
/// array): BPF_MAP_CREATE.
fn create_array(slots: u32) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        _rest: [u32; 27],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: SLOT_LEN as u32,
        max_entries: slots,
        map_flags: cache::MAP_FLAGS,
        _rest: [0; 27],
    };
    // SAFETY: the bpf syscall with a zeroed attribute block of the size it reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const CreateAttr,
            std::mem::size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Empty `row` of an array of maps (aya 0.14 has no delete for it): BPF_MAP_DELETE_ELEM.
pub fn delete_row(outer: &MapFd, row: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct DeleteAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        _rest: [u64; 14],
    }
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    let attr = DeleteAttr {
        map_fd: outer.as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &row as *const u32 as u64,
        _rest: [0; 14],
    };
    // SAFETY: the bpf syscall with a zeroed attribute block of the size it reads; `key`
    // points at a live u32 for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const DeleteAttr,
            std::mem::size_of::<DeleteAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Slots in `bytes`: at least one, at most `cache::MAX_SLOTS`.
pub fn slots_for(bytes: u64) -> Result<u32> {
    let n = bytes / SLOT_LEN as u64;
    if n == 0 {
        bail!("{bytes} bytes hold no block (a slot takes {SLOT_LEN} bytes)");
    }
    if n > u64::from(cache::MAX_SLOTS) {
        bail!(
            "{bytes} bytes is more than the {} MiB one export's cache may take",
            (u64::from(cache::MAX_SLOTS) * SLOT_LEN as u64) >> 20
        );
    }
    Ok(n as u32)
}

/// Everything that must hear of a write to one file: the caches of every export of it in
/// this process (two exports may share an image, and a reload briefly runs the old and the
/// new export side by side).
#[derive(Default)]
pub struct Coherence {
    any: AtomicBool,
    caches: RwLock<Vec<Weak<KernelCache>>>,
}

/// The export's side of it: its own cache, if any, and its file's `Coherence`.
#[derive(Default, Clone)]
pub struct CacheLink {
    pub own: Option<Arc<KernelCache>>,
    file: Arc<Coherence>,
}

/// A file's identity: device and inode, or (MAX, the device) for a device node.
type FileId = (u64, u64);

/// Files with a `Coherence`, by identity.
static FILES: Mutex<Option<HashMap<FileId, Weak<Coherence>>>> = Mutex::new(None);

impl CacheLink {
    /// The link of an export of `path` at `offset` sectors with a cache of `bytes` (0: none;
    /// its writes still invalidate other exports' caches of the file).
    pub fn open(path: &Path, offset: u64, bytes: u64) -> Result<CacheLink> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        let id = if m.file_type().is_block_device() {
            (u64::MAX, m.rdev())
        } else {
            (m.dev(), m.ino())
        };
        let file = {
            let mut files = FILES.lock().unwrap();
            let files = files.get_or_insert_with(HashMap::new);
            files.retain(|_, w| w.strong_count() > 0);
            match files.get(&id).and_then(Weak::upgrade) {
                Some(c) => c,
                None => {
                    let c = Arc::new(Coherence::default());
                    files.insert(id, Arc::downgrade(&c));
                    c
                }
            }
        };
        let own = if bytes > 0 {
            let c = Arc::new(KernelCache::new(bytes, offset)?);
            let mut list = file.caches.write().unwrap();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&c));
            file.any.store(true, Ordering::SeqCst);
            Some(c)
        } else {
            None
        };
        Ok(CacheLink { own, file })
    }

    /// A cache of `bytes` whose writes only its own export makes (a backend with no file).
    pub fn private(bytes: u64) -> Result<CacheLink> {
        let file = Arc::new(Coherence::default());
        let c = Arc::new(KernelCache::new(bytes, 0)?);
        file.caches.write().unwrap().push(Arc::downgrade(&c));
        file.any.store(true, Ordering::SeqCst);
        Ok(CacheLink { own: Some(c), file })
    }

    /// Before a read's I/O: its ticket (`NO_TICKET` when it will not fill).
    pub fn ticket(&self, lba: u64, sectors: usize) -> u64 {
        match &self.own {
            Some(c) => c.ticket(lba, sectors),
            None => NO_TICKET,
        }
    }

    /// A read with a ticket completed with `data`.
    pub fn fill(&self, lba: u64, ticket: u64, data: &[u8]) {
        if let Some(c) = &self.own {
            c.fill(lba, ticket, data);
        }
    }

    /// The file changed size behind the target's back: every cache of it forgets all.
    pub fn forget_all(&self) {
        for c in self.file.caches.read().unwrap().iter() {
            if let Some(c) = c.upgrade() {
                c.forget_all();
            }
        }
    }

    /// A write of `count` sectors at `lba` of an export `offset` sectors into the file is
    /// done (or failed): before its reply, every cache of the file forgets those blocks.
    pub fn written(&self, offset: u64, lba: u64, count: u64) {
        if !self.file.any.load(Ordering::SeqCst) {
            return;
        }
        let sector = offset.saturating_add(lba);
        for c in self.file.caches.read().unwrap().iter() {
            if let Some(c) = c.upgrade() {
                c.written(sector, count);
            }
        }
    }
}
