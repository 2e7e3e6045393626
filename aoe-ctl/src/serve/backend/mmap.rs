//! A file or block device mapped shared into memory (memmap2): reads are one copy from the
//! mapping into the reply frame, writes one copy from the request frame into the page cache.
//!
//! An export that runs to the end of its store grows with it (`refresh`). The mapping covers
//! address space past the end of the file for that (a page there faults only if touched,
//! and range checks stop every access at the served size), so most growth is one store to
//! `sectors`. Growth past it maps the file anew and publishes the new base; the old mapping
//! stays until the backend drops, since a copy on another thread may still be using it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};

use super::{
    byte_range, extent, fault, page_cache, Backend, BackendError, Extent, Follow, Image, ImageRef,
    IoTarget, OpenOptions, Resident, Result, SECTOR,
};

pub struct MmapBackend {
    /// Where the exported data starts in the newest mapping. Stored before `sectors` grows,
    /// so a base loaded after `sectors` covers at least that many.
    base: AtomicPtr<u8>,
    /// Sectors served (never more than the mapping at `base` covers).
    sectors: AtomicU64,
    /// Every mapping made, newest last, and how many bytes the newest covers.
    maps: Mutex<(Vec<MmapRaw>, u64)>,
    follow: Follow,
    file: File,
    path: PathBuf,
    /// Byte offset in the file where the mapping's data starts.
    data_offset: u64,
    read_only: bool,
    write_back: bool,
    regular: bool,
    /// The same file opened O_DIRECT, for every durable write and cold reads (`WriteAround`).
    around: Option<(File, super::DioAlign)>,
    image: Arc<Image>,
    /// A page of the mapping could not be mapped back onto the file after SIGBUS: an
    /// anonymous stand-in sits over the file there, so nothing the mapping says is trusted.
    failed: AtomicBool,
}

const FAILED_CLOSED: BackendError = BackendError::FailedClosed {
    why: "mapping the file back after SIGBUS failed",
};

/// Bytes mapped for an export of `bytes` that follows its store: as much again, at least
/// 1 GiB and at most 1 TiB more, so that growing seldom needs a new mapping. It costs
/// address space only (4,096 exports of 1 MiB reserve 4 TiB of the 128 TiB there are).
fn reserve(bytes: u64) -> u64 {
    bytes.saturating_add(bytes.clamp(1 << 30, 1 << 40))
}

/// `len` bytes of `file` from byte `offset`, shared, with MADV_RANDOM: a fault on a shared
/// mapping otherwise reads a whole `read_ahead_kb` window around the page (read-around),
/// megabytes per random sector on an image bigger than RAM.
fn map(file: &File, offset: u64, len: u64, read_only: bool) -> io::Result<MmapRaw> {
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let mut mo = MmapOptions::new();
    mo.offset(offset).len(len);
    let map = if read_only {
        mo.map_raw_read_only(file)
    } else {
        mo.map_raw(file)
    }?;
    map.advise(memmap2::Advice::Random)?;
    Ok(map)
}

/// msync(MS_SYNC) of `len` bytes at `addr` in one of our mappings (rounded to its page).
fn msync(addr: usize, len: usize) -> io::Result<()> {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    let page = *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    });
    let start = addr - addr % page;
    // SAFETY: start..addr + len lies in a mapping of this backend, which outlives the call.
    let r = unsafe {
        libc::msync(
            start as *mut libc::c_void,
            len + (addr - start),
            libc::MS_SYNC,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl MmapBackend {
    /// Open a regular file, sparse file or block device.
    pub fn open(path: &Path, opts: &OpenOptions) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Self::from_file(file, path, opts)
    }

    /// Serve `file`, opened from `path` (named in messages; never opened again).
    fn from_file(file: File, path: &Path, opts: &OpenOptions) -> anyhow::Result<Self> {
        use anyhow::Context;
        let sectors = extent(&file, path, opts)?;
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let data_offset = opts.offset * SECTOR;
        let bytes = sectors * SECTOR;
        // An export with a length never grows: it needs no room.
        let room = if opts.length.is_some() {
            bytes
        } else {
            reserve(bytes)
        };
        let m = map(&file, data_offset, room, opts.read_only)
            .or_else(|_| map(&file, data_offset, bytes, opts.read_only))
            .with_context(|| format!("cannot map {}", path.display()))?;
        let mapped = m.len() as u64;
        // Write-back exports keep everything in the page cache, reads included.
        let around = if opts.write_back {
            None
        } else {
            open_direct(&file, opts.read_only)
        };
        Ok(MmapBackend {
            base: AtomicPtr::new(m.as_mut_ptr()),
            sectors: AtomicU64::new(sectors),
            maps: Mutex::new((vec![m], mapped)),
            follow: Follow::of(opts),
            file,
            path: path.to_owned(),
            data_offset,
            read_only: opts.read_only,
            write_back: opts.write_back,
            regular,
            around,
            image: Image::new(path),
            failed: AtomicBool::new(false),
        })
    }

    /// The base of the newest mapping and the sectors it serves, consistent: the base is
    /// loaded after the count, and was published before it.
    fn view(&self) -> (usize, u64) {
        let sectors = self.sectors.load(Ordering::Acquire);
        (self.base.load(Ordering::Acquire) as usize, sectors)
    }

    /// `FailedClosed` once a restore or a sync has failed.
    fn open_for_io(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(FAILED_CLOSED);
        }
        self.image.check()
    }

    /// A durable write where the file takes O_DIRECT: past the page cache, as the rings
    /// write it (one write path per file), through an aligned bounce.
    fn write_around(&self, around: &File, lba: u64, parts: &[&[u8]]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let r = byte_range(self.view().1, lba, len)?;
        self.open_for_io()?;
        let at = self.data_offset + r.start as u64;
        // As the mapping would fault, never grow a file someone shrank under us.
        if self.regular && at + len as u64 > file_size(&self.file) {
            return Err(BackendError::Short {
                call: "pwrite",
                len,
                done: 0,
            });
        }
        super::direct::with_bounce(len, |bounce| {
            let mut o = 0;
            for p in parts {
                bounce[o..o + p.len()].copy_from_slice(p);
                o += p.len();
            }
            around
                .write_all_at(bounce, at)
                .map_err(BackendError::syscall("pwrite"))
        })
    }

    /// Copy under SIGBUS protection (see `fault`); `r` is the byte range in the mapping
    /// whose data starts at `base`.
    fn guarded(&self, base: usize, r: &std::ops::Range<usize>, copy: impl FnOnce()) -> Result<()> {
        self.open_for_io()?;
        let copied = fault::guarded(base + r.start, base + r.end, copy, |page, size| {
            self.remap(base, page, size)
                .map_err(|e| self.fail_closed(e))
        });
        // Checked again after the copy: a restore that failed on another thread while this
        // copy ran no longer announces its stand-in, which this copy may have touched.
        self.open_for_io()?;
        copied
    }

    /// Refuse all I/O from now on: the stand-in page cannot be taken off the file.
    fn fail_closed(&self, e: io::Error) -> BackendError {
        if !self.failed.swap(true, Ordering::SeqCst) {
            log::error!(
                "{}: mapping the file back after SIGBUS failed ({e}); failing closed, every I/O \
                 fails until the export is reopened",
                self.path.display()
            );
        }
        FAILED_CLOSED
    }

    /// Put the file's page back at `page` of the mapping whose data starts at `base`, after
    /// a fault replaced it.
    fn remap(&self, base: usize, page: usize, size: usize) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let file_offset = (self.data_offset as i64) - (base as i64 - page as i64);
        let prot = if self.read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: `page` is a page of our own mapping (the fault handler checked), mapped
        // back onto the same file at the offset it had.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size,
                prot,
                libc::MAP_FIXED | libc::MAP_SHARED,
                self.file.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `file` opened again with O_DIRECT, with its alignment; None where the filesystem has
/// no O_DIRECT (tmpfs before 6.6, some FUSE), does not say how to align it, or wants more
/// than a sector (every write then takes the buffered path: one write path per file).
/// Opened through /proc/self/fd, not by path: a rename or a moved /dev link between the
/// two opens would otherwise split reads and writes across two inodes.
fn open_direct(file: &File, read_only: bool) -> Option<(File, super::DioAlign)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()?;
    let align = super::dio_alignment(&f)?;
    (align.offset as u64 <= SECTOR).then_some((f, align))
}

/// The size of `file` now (0 when it cannot be read: every write then fails).
fn file_size(file: &File) -> u64 {
    file.metadata().map_or(0, |m| m.len())
}

impl Backend for MmapBackend {
    fn sectors(&self) -> u64 {
        self.sectors.load(Ordering::Acquire)
    }

    fn refresh(&self) -> io::Result<Extent> {
        let mut maps = self.maps.lock().unwrap();
        let served = self.sectors.load(Ordering::Acquire);
        let e = self.follow.extent(&self.file, served)?;
        if e.served > served {
            let bytes = e.served * SECTOR;
            if bytes > maps.1 {
                let m = map(&self.file, self.data_offset, reserve(bytes), self.read_only)
                    .or_else(|_| map(&self.file, self.data_offset, bytes, self.read_only))?;
                self.base.store(m.as_mut_ptr(), Ordering::Release);
                maps.1 = m.len() as u64;
                maps.0.push(m);
            }
            self.sectors.store(e.served, Ordering::Release);
        }
        Ok(e)
    }

    fn read_at(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let (base, sectors) = self.view();
        let r = byte_range(sectors, lba, buf.len())?;
        // SAFETY: r lies inside the mapping at base (checked above). Concurrent writers to
        // the same sectors race as they would on a disk; the initiator orders its own
        // requests.
        self.guarded(base, &r, || unsafe {
            std::ptr::copy_nonoverlapping(
                (base as *const u8).add(r.start),
                buf.as_mut_ptr(),
                r.len(),
            )
        })
    }

    fn read_resident(&self, lba: u64, buf: &mut [u8]) -> Resident {
        use std::os::fd::AsRawFd;
        /// Larger reads go to the ring, where merging and readahead pay.
        const MAX_BYTES: usize = 64 << 10;
        let r = match byte_range(self.view().1, lba, buf.len()) {
            Ok(r) => r,
            Err(e) => return Resident::Read(Err(e)),
        };
        if r.len() > MAX_BYTES {
            return Resident::NotAsked;
        }
        // One cachestat and a copy from the mapping beat a buffered read on the ring for
        // pages the cache holds: no filemap walk per folio, no ring round trip, and the
        // reply leaves in the pass that received the request. A page evicted between the
        // two costs this worker one synchronous read, rarely.
        let at = self.data_offset + r.start as u64;
        if page_cache::cached(self.file.as_raw_fd(), at, r.len() as u64) {
            Resident::Read(self.read_at(lba, buf))
        } else {
            Resident::Missed
        }
    }

    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> Result<()> {
        if let Some((around, _)) = &self.around {
            return self.write_around(around, lba, parts);
        }
        let (base, sectors) = self.view();
        let r = byte_range(sectors, lba, parts.iter().map(|p| p.len()).sum())?;
        self.guarded(base, &r, || {
            let mut at = r.start;
            for p in parts {
                // SAFETY: the parts add up to r, which lies inside the mapping at base
                // (checked above); as in read_at for concurrent writers. A read-only mapping
                // never gets here (the engine refuses writes to read-only exports first).
                unsafe {
                    std::ptr::copy_nonoverlapping(p.as_ptr(), (base as *mut u8).add(at), p.len())
                };
                at += p.len();
            }
        })
    }

    fn sync_range(&self, lba: u64, len: usize) -> Result<()> {
        let (base, sectors) = self.view();
        let r = byte_range(sectors, lba, len)?;
        self.open_for_io()?;
        if self.around.is_some() {
            // Written past the cache: the device's cache is what is left to flush.
            return self.image.sync("fdatasync", || self.file.sync_data());
        }
        self.image.sync("msync", || msync(base + r.start, r.len()))
    }

    fn flush(&self) -> Result<()> {
        let (base, sectors) = self.view();
        self.open_for_io()?;
        self.image
            .sync("msync", || msync(base, (sectors * SECTOR) as usize))
    }

    fn failed_closed(&self) -> bool {
        self.failed.load(Ordering::SeqCst) || self.image.failed()
    }

    fn sync_errors(&self) -> u64 {
        self.image.sync_errors()
    }

    fn io_target(&self) -> Option<IoTarget> {
        use std::os::fd::AsRawFd;
        Some(IoTarget {
            fd: self.file.as_raw_fd(),
            base: self.data_offset,
            direct: false,
            mem_align: 1,
            durable: !self.write_back,
            regular: self.regular,
            write_around: self.around.as_ref().map(|(f, align)| super::WriteAround {
                fd: f.as_raw_fd(),
                align: *align,
            }),
            image: ImageRef::new(&self.image),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: u64) -> (tempdir::Dir, std::path::PathBuf) {
        let d = tempdir::Dir::new();
        let p = d.0.join("disk.img");
        let f = File::create(&p).unwrap();
        f.set_len(bytes).unwrap();
        (d, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "aoe-mmap-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_file_shrunk_under_the_mapping_gives_errors_not_sigbus() {
        let (_d, p) = image(1 << 20);
        let b = MmapBackend::open(&p, &OpenOptions::default()).unwrap();
        b.write_at(8, &[7u8; 512]).unwrap();
        // Shrink the file to 64 KiB under the live mapping.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(64 << 10)
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let beyond = (512 << 10) / 512;
        assert!(b.read_at(beyond, &mut buf).is_err());
        assert!(b.write_at(beyond, &buf).is_err());
        // Again: the file's page was mapped back, so it fails again rather than reading the
        // stand-in page.
        assert!(b.read_at(beyond, &mut buf).is_err());
        // The part still backed by the file keeps working.
        let mut one = [0u8; 512];
        b.read_at(8, &mut one).unwrap();
        assert_eq!(one, [7u8; 512]);
        // Growing the file back makes the sectors readable again (zeros).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        b.read_at(beyond, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
    }

    #[test]
    fn a_failed_restore_fails_closed() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let (_d, p) = image(1 << 20);
        let b = MmapBackend::open(&p, &OpenOptions::default()).unwrap();
        b.write_at(8, &[7u8; 512]).unwrap();
        // Make the real restore fail: the backend's descriptor becomes a read-only one, so
        // mapping the page back shared and writable is refused (EACCES) after the fault
        // handler has put its stand-in over the file, as ENOMEM at vm.max_map_count would.
        let fd = b.file.as_raw_fd();
        // SAFETY: dup and dup2 on descriptors this test owns; `saved` is closed below.
        let saved = unsafe { libc::dup(fd) };
        assert!(saved >= 0);
        let ro = File::open(&p).unwrap();
        // SAFETY: as above.
        let r = unsafe { libc::dup2(ro.as_raw_fd(), fd) };
        assert_eq!(r, fd);
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(64 << 10).unwrap();
        let beyond = (512 << 10) / 512;
        let mut buf = vec![0xeeu8; 1024];
        let e = b.read_at(beyond, &mut buf).unwrap_err();
        assert_eq!(e.reason(), "failed_closed", "{e}");
        assert!(b.failed_closed());
        // Undo the sabotage and heal the file: the sector now holds data, and the stand-in
        // still sits over it. Reading it as zeros, or writing into it, would be silent loss.
        // SAFETY: as above.
        let r = unsafe { libc::dup2(saved, fd) };
        assert_eq!(r, fd);
        // SAFETY: `saved` is ours and used no more.
        unsafe { libc::close(saved) };
        file.set_len(1 << 20).unwrap();
        file.write_all_at(&[0x55; 1024], 512 << 10).unwrap();
        buf.fill(0xee);
        let e = b.read_at(beyond, &mut buf).unwrap_err();
        assert_eq!(e.reason(), "failed_closed", "{e}");
        assert!(
            buf.iter().all(|&x| x == 0xee),
            "a failed read filled the buffer"
        );
        assert!(b.write_at(beyond, &[1u8; 512]).is_err());
        // The whole export fails, not only the page: its mapping is no longer the file.
        assert!(b.read_at(8, &mut [0u8; 512]).is_err());
        assert!(b.write_at(8, &[1u8; 512]).is_err());
        assert!(b.sync_range(8, 512).is_err());
        assert!(b.flush().is_err());
        drop(b);
        // Reopening starts clean, and none of the refused writes landed.
        let b = MmapBackend::open(&p, &OpenOptions::default()).unwrap();
        b.read_at(beyond, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0x55));
        let mut one = [0u8; 512];
        b.read_at(8, &mut one).unwrap();
        assert_eq!(one, [7u8; 512]);
    }

    #[test]
    fn the_write_around_descriptor_is_the_served_file_after_a_rename() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let (d, p) = image(1 << 20);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        // Between the open and the second (O_DIRECT) one, the image is renamed and another
        // file takes its name (a moved /dev link does the same to a device).
        std::fs::rename(&p, d.0.join("moved.img")).unwrap();
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let b = MmapBackend::from_file(file, &p, &OpenOptions::default()).unwrap();
        let Some((around, _)) = &b.around else {
            return eprintln!("skipped: no O_DIRECT on {}", p.display());
        };
        let ino = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        assert_eq!(
            ino(around.as_raw_fd()),
            ino(b.file.as_raw_fd()),
            "reads and writes split across two files"
        );
        // And through the backend: what is written is read back.
        b.write_at(8, &[9u8; 512]).unwrap();
        let mut back = [0u8; 512];
        b.read_at(8, &mut back).unwrap();
        assert_eq!(back, [9u8; 512]);
    }

    #[test]
    fn a_read_the_cache_holds_is_copied_from_the_mapping_a_miss_is_left_to_the_ring() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let (_d, p) = image(1 << 20);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        f.sync_all().unwrap();
        // The export starts 8 sectors into the file: the cache is asked about file bytes.
        let b = MmapBackend::open(
            &p,
            &OpenOptions {
                offset: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        // Just written: in the cache, answered here, the bytes at the export's offset.
        assert!(matches!(
            b.read_resident(10, &mut buf),
            Resident::Read(Ok(()))
        ));
        assert_eq!(buf[..], data[18 * 512..18 * 512 + 1024]);
        // Out of range: the error, not a pass to the ring.
        assert!(matches!(
            b.read_resident(b.sectors() - 1, &mut buf),
            Resident::Read(Err(_))
        ));
        // Evicted (pages this test never touched through the mapping): left to the ring,
        // and nothing was read from the disk to find that out.
        // SAFETY: fadvise on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if page_cache::cached(f.as_raw_fd(), 512 << 10, 1024) {
            return; // a filesystem whose pages cannot be evicted (tmpfs)
        }
        let before = page_cache::thread_disk_reads();
        assert!(matches!(
            b.read_resident(1024 - 8, &mut buf),
            Resident::Missed
        ));
        assert_eq!(page_cache::thread_disk_reads(), before);
        // Larger than a hit is worth copying here: the ring's, cached or not.
        let mut big = vec![0u8; 128 << 10];
        assert!(matches!(b.read_resident(10, &mut big), Resident::NotAsked));
    }

    #[test]
    fn write_lands_in_file_at_offset() {
        let (_d, p) = image(64 * 512);
        let b = MmapBackend::open(
            &p,
            &OpenOptions {
                offset: 8,
                length: Some(16),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(b.sectors(), 16);
        b.write_at(2, &[0xab; 512]).unwrap();
        b.sync_range(2, 512).unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert!(raw[10 * 512..11 * 512].iter().all(|&x| x == 0xab));
        assert!(raw[..10 * 512].iter().all(|&x| x == 0));
        let mut back = [0u8; 512];
        b.read_at(2, &mut back).unwrap();
        assert_eq!(back, [0xab; 512]);
        assert!(b.write_at(16, &[0; 512]).is_err());
        assert!(b.read_at(15, &mut [0; 1024]).is_err());
    }

    #[test]
    fn bad_geometry_named() {
        let (_d, p) = image(8 * 512);
        let err = |o: OpenOptions| MmapBackend::open(&p, &o).err().unwrap().to_string();
        assert!(err(OpenOptions {
            offset: 8,
            ..Default::default()
        })
        .contains("beyond the end"));
        assert!(err(OpenOptions {
            length: Some(9),
            ..Default::default()
        })
        .contains("beyond"));
        let (_d2, tiny) = image(100);
        assert!(MmapBackend::open(&tiny, &OpenOptions::default())
            .err()
            .unwrap()
            .to_string()
            .contains("smaller than one"));
    }

    fn set_len(p: &Path, bytes: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(bytes)
            .unwrap();
    }

    #[test]
    fn a_grown_file_is_followed_within_and_past_the_mapping() {
        let (_d, p) = image(1 << 20);
        let b = MmapBackend::open(&p, &OpenOptions::default()).unwrap();
        b.write_at(3, &[3u8; 512]).unwrap();
        let first = b.base.load(Ordering::Acquire);
        let at = |bytes: u64| bytes / SECTOR - 1;
        // Within the room mapped past the end: no new mapping.
        set_len(&p, 2 << 20);
        assert_eq!(b.sectors(), 2048, "not followed before a look");
        assert!(b.read_at(at(2 << 20), &mut [0u8; 512]).is_err());
        let e = b.refresh().unwrap();
        assert_eq!((e.served, e.store, e.fixed), (4096, 4096, false));
        assert_eq!(b.base.load(Ordering::Acquire), first);
        b.write_at(at(2 << 20), &[7u8; 512]).unwrap();
        b.sync_range(at(2 << 20), 512).unwrap();
        // Past it (1 MiB + 1 GiB mapped): a new mapping, the old one kept.
        let big = (1 << 20) + (1 << 30) + (1 << 20);
        set_len(&p, big);
        assert_eq!(b.refresh().unwrap().served, big / SECTOR);
        assert_ne!(b.base.load(Ordering::Acquire), first);
        assert_eq!(b.maps.lock().unwrap().0.len(), 2);
        b.write_at(at(big), &[9u8; 512]).unwrap();
        b.flush().unwrap();
        let mut one = [0u8; 512];
        for (lba, want) in [(3, 3u8), (at(2 << 20), 7), (at(big), 9)] {
            b.read_at(lba, &mut one).unwrap();
            assert_eq!(one, [want; 512], "sector {lba}");
        }
        use std::os::unix::fs::FileExt;
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut one, big - 512)
            .unwrap();
        assert_eq!(one, [9u8; 512], "in the file");
    }

    #[test]
    fn a_length_is_kept_and_a_shrink_not_followed() {
        let (_d, p) = image(1 << 20);
        let fixed = MmapBackend::open(
            &p,
            &OpenOptions {
                offset: 8,
                length: Some(64),
                ..Default::default()
            },
        )
        .unwrap();
        let follows = MmapBackend::open(
            &p,
            &OpenOptions {
                offset: 8,
                ..Default::default()
            },
        )
        .unwrap();
        set_len(&p, 2 << 20);
        let e = fixed.refresh().unwrap();
        assert_eq!((e.served, e.store, e.fixed), (64, 4096 - 8, true));
        assert_eq!(fixed.sectors(), 64);
        assert_eq!(follows.refresh().unwrap().served, 4096 - 8);
        // Shrunk below what is served: the size stays, the store says how much is left.
        set_len(&p, 16 * 512);
        let e = follows.refresh().unwrap();
        assert_eq!((e.served, e.store), (4096 - 8, 8));
        assert_eq!(follows.sectors(), 4096 - 8);
        let e = fixed.refresh().unwrap();
        assert_eq!((e.served, e.store), (64, 8));
        assert!(follows.read_at(100, &mut [0u8; 512]).is_err());
        follows.read_at(7, &mut [0u8; 512]).unwrap();
    }
}
