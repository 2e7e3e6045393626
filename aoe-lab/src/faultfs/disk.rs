//! The disk behind faultfs: a backing file, which is what survives a power cut, under a
//! volatile write cache, which is what a power cut loses (the page cache and the drive's
//! cache of a real node, as one). Writes land in the cache; an fsync writes the cached
//! pages to the backing file; `cut` drops the cache and leaves the disk dead. Faults are
//! injected on the way (`faults.rs`), and a failed sync loses its pages and reports the
//! error once to each open file, as Linux does (errseq).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::faults::{Fault, Faults, Op};

/// The cache's unit: what a partial write reads in first, and what a failed sync loses.
pub const PAGE: u64 = 4096;

/// What happened so far, for `stats`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub syncs: u64,
    /// Pages written to the backing file by syncs.
    pub synced_pages: u64,
    /// Requests failed by an armed fault.
    pub injected: u64,
    /// Cached pages a failed sync dropped.
    pub lost_pages: u64,
    pub cuts: u64,
}

/// What a power cut dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Write requests since the last sync.
    pub writes: u64,
    pub pages: u64,
}

pub struct Disk {
    backing: File,
    /// The file's size as clients see it (a write past the end grows it in the cache).
    size: u64,
    /// Cached pages by index, each PAGE bytes: newer than the backing file.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// Write requests since the last sync: what a cut now would lose.
    unsynced_writes: u64,
    /// Open files by handle, with the error count each has seen (errseq).
    handles: HashMap<u64, u64>,
    next_handle: u64,
    /// Sync errors so far, and the last one's errno.
    errors: u64,
    last_errno: i32,
    faults: Faults,
    stall_until: Option<Instant>,
    /// The power was cut: every data request fails.
    dead: bool,
    stats: Stats,
}

type Result<T> = std::result::Result<T, i32>;

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Disk {
    pub fn new(backing: File) -> std::io::Result<Disk> {
        let size = backing.metadata()?.len();
        Ok(Disk {
            backing,
            size,
            dirty: BTreeMap::new(),
            unsynced_writes: 0,
            handles: HashMap::new(),
            next_handle: 1,
            errors: 0,
            last_errno: 0,
            faults: Faults::default(),
            stall_until: None,
            dead: false,
            stats: Stats::default(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    pub fn dirty_pages(&self) -> u64 {
        self.dirty.len() as u64
    }

    pub fn unsynced_writes(&self) -> u64 {
        self.unsynced_writes
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    fn alive(&self) -> Result<()> {
        if self.dead {
            return Err(libc::EIO);
        }
        Ok(())
    }

    /// A new open file: it will see sync errors from now on, not earlier ones.
    pub fn open(&mut self) -> Result<u64> {
        self.alive()?;
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(h, self.errors);
        Ok(h)
    }

    pub fn release(&mut self, handle: u64) {
        self.handles.remove(&handle);
    }

    pub fn arm(&mut self, f: Fault) {
        self.faults.arm(f);
    }

    /// Remove every fault and end a stall.
    pub fn clear(&mut self) {
        self.faults.clear();
        self.stall_until = None;
    }

    /// Every request from now until `for_` has passed waits for its end.
    pub fn stall(&mut self, for_: Duration) {
        self.stall_until = Some(Instant::now() + for_);
    }

    /// How long a request arriving now still waits.
    pub fn stall_left(&self) -> Option<Duration> {
        self.stall_until?.checked_duration_since(Instant::now())
    }

    fn injected(&mut self, op: Op, at: u64, len: u64) -> Result<()> {
        if let Some(f) = self.faults.hit(op, at, len) {
            self.stats.injected += 1;
            return Err(f.errno);
        }
        Ok(())
    }

    /// Page `idx` as the backing file holds it (zeros past its end).
    fn stored(&self, idx: u64) -> Result<Box<[u8]>> {
        let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
        let mut got = 0;
        while got < p.len() {
            match self.backing.read_at(&mut p[got..], idx * PAGE + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_errno(e)),
            }
        }
        Ok(p)
    }

    /// Up to `len` bytes at `at` (fewer at the end of the file), the cache over the
    /// backing file.
    pub fn read(&mut self, at: u64, len: u64) -> Result<Vec<u8>> {
        self.alive()?;
        self.stats.reads += 1;
        self.injected(Op::Read, at, len)?;
        let end = at.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(at) as usize);
        let mut pos = at;
        while pos < end {
            let idx = pos / PAGE;
            let from = (pos % PAGE) as usize;
            let to = (end - idx * PAGE).min(PAGE) as usize;
            match self.dirty.get(&idx) {
                Some(p) => out.extend_from_slice(&p[from..to]),
                None => out.extend_from_slice(&self.stored(idx)?[from..to]),
            }
            pos = idx * PAGE + to as u64;
        }
        Ok(out)
    }

    /// Write `data` at `at` into the cache.
    pub fn write(&mut self, at: u64, data: &[u8]) -> Result<()> {
        self.alive()?;
        self.stats.writes += 1;
        let len = data.len() as u64;
        self.injected(Op::Write, at, len)?;
        let end = at.checked_add(len).ok_or(libc::EFBIG)?;
        let mut pos = at;
        while pos < end {
            let idx = pos / PAGE;
            let from = (pos % PAGE) as usize;
            let to = (end - idx * PAGE).min(PAGE) as usize;
            if !self.dirty.contains_key(&idx) {
                let p = self.stored(idx)?;
                self.dirty.insert(idx, p);
            }
            let page = self.dirty.get_mut(&idx).expect("inserted above");
            let src = (pos - at) as usize;
            page[from..to].copy_from_slice(&data[src..src + (to - from)]);
            pos = idx * PAGE + to as u64;
        }
        self.size = self.size.max(end);
        self.stats.written_bytes += len;
        self.unsynced_writes += 1;
        Ok(())
    }

    /// fsync from open file `handle`: the cached pages go to the backing file. An armed sync
    /// fault that finds a cached page of its range drops the range's pages (lost, as a
    /// failed writeback leaves them in the kernel) and fails; every file open at the time
    /// then sees that error on its next sync, once.
    pub fn sync(&mut self, handle: u64) -> Result<()> {
        self.alive()?;
        self.stats.syncs += 1;
        let ranges = self.dirty.keys().map(|&i| (i * PAGE, PAGE));
        if let Some(f) = self.faults.sync_hit(ranges) {
            self.stats.injected += 1;
            let lost: Vec<u64> = self
                .dirty
                .keys()
                .copied()
                .filter(|&i| f.overlaps(i * PAGE, PAGE))
                .collect();
            for i in &lost {
                self.dirty.remove(i);
            }
            self.stats.lost_pages += lost.len() as u64;
            self.errors += 1;
            self.last_errno = f.errno;
        }
        if self.backing.metadata().map_err(io_errno)?.len() < self.size {
            self.backing.set_len(self.size).map_err(io_errno)?;
        }
        for (&idx, page) in &self.dirty {
            let n = (self.size - idx * PAGE).min(PAGE) as usize;
            self.backing
                .write_all_at(&page[..n], idx * PAGE)
                .map_err(io_errno)?;
        }
        self.stats.synced_pages += self.dirty.len() as u64;
        self.dirty.clear();
        self.unsynced_writes = 0;
        let seen = self.handles.entry(handle).or_insert(self.errors);
        if *seen < self.errors {
            *seen = self.errors;
            return Err(self.last_errno);
        }
        Ok(())
    }

    /// Truncate or extend to `size`, at once and durably (the model keeps data volatile,
    /// not the size).
    pub fn set_len(&mut self, size: u64) -> Result<()> {
        self.alive()?;
        self.backing.set_len(size).map_err(io_errno)?;
        self.dirty.retain(|&i, _| i * PAGE < size);
        if let Some(p) = self.dirty.get_mut(&(size / PAGE)) {
            p[(size % PAGE) as usize..].fill(0);
        }
        self.size = size;
        Ok(())
    }

    /// The power is cut: everything not synced is gone, and every data request fails from
    /// now on.
    pub fn cut(&mut self) -> Cut {
        let cut = Cut {
            writes: self.unsynced_writes,
            pages: self.dirty.len() as u64,
        };
        self.dirty.clear();
        self.unsynced_writes = 0;
        self.faults.clear();
        self.stall_until = None;
        self.dead = true;
        self.stats.cuts += 1;
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(bytes: u64) -> (Disk, File) {
        let f = tempfile();
        f.set_len(bytes).unwrap();
        let d = Disk::new(f.try_clone().unwrap()).unwrap();
        (d, f)
    }

    /// An unnamed file in the temporary directory, removed when closed.
    fn tempfile() -> File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap()
    }

    fn stored(f: &File, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, at).unwrap();
        b
    }

    #[test]
    fn writes_are_read_back_and_reach_the_file_only_at_a_sync() {
        let (mut d, f) = disk(64 << 10);
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        let h = d.open().unwrap();
        // Across a page boundary, over what the file holds.
        d.write(4000, &[1u8; 200]).unwrap();
        let got = d.read(3990, 220).unwrap();
        assert_eq!(&got[..10], &[7u8; 10]);
        assert_eq!(&got[10..210], &[1u8; 200]);
        assert_eq!(&got[210..], &[7u8; 10]);
        assert_eq!(stored(&f, 4000, 200), vec![7u8; 200], "not before a sync");
        assert_eq!((d.dirty_pages(), d.unsynced_writes()), (2, 1));
        d.sync(h).unwrap();
        assert_eq!(stored(&f, 3990, 220), got);
        assert_eq!((d.dirty_pages(), d.unsynced_writes()), (0, 0));
        assert_eq!(d.stats().synced_pages, 2);
    }

    #[test]
    fn a_cut_keeps_what_was_synced_and_nothing_after() {
        let (mut d, f) = disk(64 << 10);
        let h = d.open().unwrap();
        d.write(0, &[1u8; 512]).unwrap();
        d.sync(h).unwrap();
        d.write(0, &[2u8; 512]).unwrap();
        d.write(8192, &[3u8; 512]).unwrap();
        assert_eq!(
            d.cut(),
            Cut {
                writes: 2,
                pages: 2
            }
        );
        assert_eq!(stored(&f, 0, 512), vec![1u8; 512]);
        assert_eq!(stored(&f, 8192, 512), vec![0u8; 512]);
        assert_eq!(d.read(0, 512), Err(libc::EIO), "dead after the cut");
        assert_eq!(d.write(0, &[4]), Err(libc::EIO));
        assert_eq!(d.sync(h), Err(libc::EIO));
        assert_eq!(d.open(), Err(libc::EIO));
    }

    #[test]
    fn reads_stop_at_the_end_and_writes_past_it_grow_the_file_at_the_sync() {
        let (mut d, f) = disk(1000);
        assert_eq!(d.read(900, 512).unwrap().len(), 100);
        assert!(d.read(1000, 512).unwrap().is_empty());
        let h = d.open().unwrap();
        d.write(1500, &[9u8; 100]).unwrap();
        assert_eq!(d.size(), 1600);
        assert_eq!(f.metadata().unwrap().len(), 1000);
        let got = d.read(990, 700).unwrap();
        assert_eq!(got.len(), 610);
        assert!(got[..510].iter().all(|&b| b == 0) && got[510..].iter().all(|&b| b == 9));
        d.sync(h).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1600);
        assert_eq!(stored(&f, 1500, 100), vec![9u8; 100]);
    }

    #[test]
    fn injected_read_and_write_errors_fail_the_request_and_store_nothing() {
        let (mut d, f) = disk(64 << 10);
        let h = d.open().unwrap();
        d.arm(Fault::parse(&["write", "at=4096", "len=512", "errno=enospc"]).unwrap());
        d.arm(Fault::parse(&["read", "at=512", "len=512", "times=1"]).unwrap());
        assert_eq!(d.write(4096, &[1u8; 512]), Err(libc::ENOSPC));
        d.write(8192, &[1u8; 512]).unwrap();
        assert_eq!(d.read(0, 1024), Err(libc::EIO));
        assert_eq!(d.read(0, 1024).unwrap(), vec![0u8; 1024], "once");
        d.sync(h).unwrap();
        assert_eq!(stored(&f, 4096, 512), vec![0u8; 512]);
        assert_eq!(stored(&f, 8192, 512), vec![1u8; 512]);
        assert_eq!(d.stats().injected, 2);
        d.clear();
        d.write(4096, &[1u8; 512]).unwrap();
    }

    #[test]
    fn a_failed_sync_loses_its_pages_and_tells_each_open_file_once() {
        let (mut d, f) = disk(64 << 10);
        let (a, b) = (d.open().unwrap(), d.open().unwrap());
        // Another queue's page (b's, at 8192) fails the sync that a runs.
        d.arm(Fault::parse(&["sync", "at=8192", "len=4096"]).unwrap());
        d.write(0, &[1u8; 512]).unwrap();
        d.write(8192, &[2u8; 512]).unwrap();
        assert_eq!(d.sync(a), Err(libc::EIO));
        assert_eq!(
            stored(&f, 0, 512),
            vec![1u8; 512],
            "the good page was written"
        );
        assert_eq!(
            stored(&f, 8192, 512),
            vec![0u8; 512],
            "the failed page is lost"
        );
        assert_eq!(
            d.read(8192, 512).unwrap(),
            vec![0u8; 512],
            "and not cached either"
        );
        assert_eq!(d.sync(a), Ok(()), "reported once to a");
        let c = d.open().unwrap();
        assert_eq!(
            d.sync(c),
            Ok(()),
            "a file opened after the error never sees it"
        );
        assert_eq!(d.sync(b), Err(libc::EIO), "b sees it once too");
        assert_eq!(d.sync(b), Ok(()));
        assert_eq!(d.stats().lost_pages, 1);
    }

    #[test]
    fn a_sync_fault_waits_for_a_page_of_its_range() {
        let (mut d, _f) = disk(64 << 10);
        let h = d.open().unwrap();
        d.arm(Fault::parse(&["sync", "at=8192", "len=512"]).unwrap());
        assert_eq!(d.sync(h), Ok(()), "nothing cached");
        d.write(0, &[1u8; 512]).unwrap();
        assert_eq!(d.sync(h), Ok(()), "nothing cached in the range");
        d.write(8192, &[1u8; 512]).unwrap();
        assert_eq!(d.sync(h), Err(libc::EIO));
    }

    #[test]
    fn truncation_is_immediate_and_drops_cached_pages_past_the_end() {
        let (mut d, f) = disk(64 << 10);
        let h = d.open().unwrap();
        d.write(0, &[5u8; 16384]).unwrap();
        d.set_len(6000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 6000);
        assert_eq!(d.dirty_pages(), 2);
        d.set_len(8192).unwrap();
        let got = d.read(0, 8192).unwrap();
        assert!(got[..6000].iter().all(|&b| b == 5) && got[6000..].iter().all(|&b| b == 0));
        d.sync(h).unwrap();
        assert_eq!(stored(&f, 5990, 20)[..10], [5u8; 10]);
    }

    #[test]
    fn a_stall_lasts_its_time_or_until_cleared() {
        let (mut d, _f) = disk(4096);
        assert_eq!(d.stall_left(), None);
        d.stall(Duration::from_secs(60));
        assert!(d.stall_left().unwrap() > Duration::from_secs(59));
        d.clear();
        assert_eq!(d.stall_left(), None);
    }
}
