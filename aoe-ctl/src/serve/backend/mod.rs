//! The block backend: where sectors live. Positional, `&self` access so every queue worker
//! uses it at once without a lock.

mod direct;
mod error;
mod fault;
mod image;
mod mem;
mod mmap;
mod overlay;
mod overlay_hook;
mod page_cache;
mod ring;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

pub use direct::DirectBackend;
pub use error::{BackendError, Result};
pub use image::{Image, ImageRef};
pub use mem::MemBackend;
pub use mmap::MmapBackend;
pub use overlay::{log_path, recover, Overlay};
pub use overlay_hook::SnapshotHook;
pub use ring::{Done, IoRing, Kind};

/// What `Backend::read_resident` did.
#[derive(Debug)]
pub enum Resident {
    /// The cache held it: read (or the range was refused).
    Read(Result<()>),
    /// The cache does not hold every page: the disk's.
    Missed,
    /// Not asked: no page cache behind this backend, or a read larger than a copy pays for.
    NotAsked,
}

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// What a look at the backing store found (`Backend::refresh`), in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Served to initiators (range checks, IDENTIFY): it grows with the store, never shrinks.
    pub served: u64,
    /// What the store holds from the export's offset (more than is served when the export has
    /// a length of its own and the store is larger).
    pub store: u64,
    /// The export has a length of its own: it keeps it whatever the store does.
    pub fixed: bool,
}

/// A device of whole sectors.
pub trait Backend: Send + Sync {
    /// Capacity in sectors (one load: this is on every request's path).
    fn sectors(&self) -> u64;
    /// Look at the store's size again: a syscall, never made per request. An export that
    /// runs to the end of its store grows to it; one with a length of its own keeps it; a
    /// store that shrank is never followed (what lies past its end fails instead).
    fn refresh(&self) -> std::io::Result<Extent> {
        let s = self.sectors();
        Ok(Extent {
            served: s,
            store: s,
            fixed: true,
        })
    }
    /// Copy `buf.len()` bytes from sector `lba` into `buf`.
    fn read_at(&self, lba: u64, buf: &mut [u8]) -> Result<()>;
    /// Copy `buf` to sector `lba`. When this returns Ok the data is visible to every later
    /// reader and survives the death of this process (it is in the shared page cache).
    fn write_at(&self, lba: u64, buf: &[u8]) -> Result<()> {
        self.write_parts_at(lba, &[buf])
    }
    /// Copy the concatenation of `parts` to sector `lba`, as `write_at` does: a write that
    /// arrived in pieces (a jumbo frame's descriptors) lands without being gathered first.
    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> Result<()>;
    /// `read_at` when every page of the sectors is in the page cache, without waiting for
    /// the disk; otherwise the caller queues the read on its ring, told whether the cache
    /// was asked and missed (so the ring does not ask again).
    fn read_resident(&self, _lba: u64, _buf: &mut [u8]) -> Resident {
        Resident::NotAsked
    }
    /// Make the sectors `lba .. lba + len/512` durable on stable storage.
    fn sync_range(&self, lba: u64, len: usize) -> Result<()>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<()>;
    /// The backend can no longer trust its store and fails every I/O
    /// (`BackendError::FailedClosed`) until the export is reopened.
    fn failed_closed(&self) -> bool {
        false
    }
    /// Failed syncs of the image (each one failed the export closed).
    fn sync_errors(&self) -> u64 {
        0
    }
    /// The file behind the backend, for I/O in flight on a worker's ring (`IoRing`); None
    /// when it has none (memory, tests).
    fn io_target(&self) -> Option<IoTarget> {
        None
    }
}

/// What O_DIRECT I/O on a file must be aligned to (statx STATX_DIOALIGN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlign {
    /// Of the buffer's address and length in memory.
    pub mem: usize,
    /// Of the offset and length in the file.
    pub offset: usize,
}

/// The O_DIRECT alignment of `file`, when its filesystem reports one.
pub fn dio_alignment(file: &File) -> Option<DioAlign> {
    use std::os::fd::AsRawFd;
    // SAFETY: statx on our own open descriptor into a zeroed struct it fills.
    let stx = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        );
        (r == 0).then_some(stx)?
    };
    let a = DioAlign {
        mem: stx.stx_dio_mem_align as usize,
        offset: stx.stx_dio_offset_align as usize,
    };
    (stx.stx_mask & libc::STATX_DIOALIGN != 0
        && a.mem.is_power_of_two()
        && a.offset.is_power_of_two())
    .then_some(a)
}

/// A second descriptor on the same file, opened O_DIRECT: durable writes go around the page
/// cache through it (a write smaller than a page, to a page not cached, would otherwise read
/// that page from the disk first), every durable write of the file or none
/// (`IoTarget::around`); and so do random reads that missed the cache (a page cache insert
/// and a 4 KiB read for every 1 KiB asked, for a page read once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAround {
    pub fd: std::os::fd::RawFd,
    pub align: DioAlign,
}

/// Where a ring sends an export's I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoTarget {
    pub fd: std::os::fd::RawFd,
    /// Byte offset in the file where the export starts.
    pub base: u64,
    /// Opened with O_DIRECT: buffers must be aligned to `mem_align`.
    pub direct: bool,
    pub mem_align: usize,
    /// Writes are acknowledged only after an fdatasync that followed them.
    pub durable: bool,
    /// A regular file (whose size can change under us), not a block device.
    pub regular: bool,
    /// Where durable writes and cold random reads go past the page cache, when the file
    /// allows O_DIRECT.
    pub write_around: Option<WriteAround>,
    /// What every queue shares about the file: write order, failed closed.
    pub image: ImageRef,
}

impl IoTarget {
    /// Where this file's durable writes go past the page cache: all of them, or none when
    /// a whole-sector write may not be aligned enough for O_DIRECT (a 4Kn disk). One write
    /// path per file: a buffered read-modify-write of a block beside an O_DIRECT write to
    /// it can re-dirty the page with the old sector and put it back on disk.
    pub fn around(&self) -> Option<WriteAround> {
        self.write_around
            .filter(|w| self.durable && w.align.offset as u64 <= SECTOR && w.align.offset > 0)
    }
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub read_only: bool,
    /// First sector of the image that is exported (vblade -o).
    pub offset: u64,
    /// Sectors exported from `offset` (vblade -l); None: to the end.
    pub length: Option<u64>,
    /// O_DIRECT I/O past the page cache (`DirectBackend`) instead of a mapping.
    pub direct: bool,
    /// Writes are acknowledged from the page cache (or the device's volatile cache), not
    /// once on stable storage.
    pub write_back: bool,
}

/// Open an image the way `opts` asks: mapped, or with O_DIRECT.
pub fn open(path: &Path, opts: &OpenOptions) -> anyhow::Result<Box<dyn Backend>> {
    Ok(if opts.direct {
        Box::new(DirectBackend::open(path, opts)?)
    } else {
        Box::new(MmapBackend::open(path, opts)?)
    })
}

/// The sectors of `file` that `opts.offset` and `opts.length` export, checked against its
/// size (seeking to the end measures block devices too: their metadata length is 0).
fn extent(file: &File, path: &Path, opts: &OpenOptions) -> anyhow::Result<u64> {
    use anyhow::{bail, Context};
    let bytes = measure(file).with_context(|| format!("cannot measure {}", path.display()))?;
    let total = bytes / SECTOR;
    if total == 0 {
        bail!("{} is smaller than one 512-byte sector", path.display());
    }
    if opts.offset >= total {
        bail!(
            "offset {} is beyond the end of {} ({} sectors)",
            opts.offset,
            path.display(),
            total
        );
    }
    let available = total - opts.offset;
    Ok(match opts.length {
        Some(0) => bail!("length must be at least one sector"),
        Some(l) if l > available => bail!(
            "offset {} + length {} is beyond the end of {} ({} sectors)",
            opts.offset,
            l,
            path.display(),
            total
        ),
        Some(l) => l,
        None => available,
    })
}

/// How an export's extent follows its store: from `offset`, `length` sectors or to the end.
#[derive(Debug, Clone, Copy)]
struct Follow {
    offset: u64,
    length: Option<u64>,
}

impl Follow {
    fn of(opts: &OpenOptions) -> Follow {
        Follow {
            offset: opts.offset,
            length: opts.length,
        }
    }

    /// The store of `file` now, against `served` sectors served now.
    fn extent(&self, file: &File, served: u64) -> std::io::Result<Extent> {
        let available = (measure(file)? / SECTOR).saturating_sub(self.offset);
        Ok(match self.length {
            Some(_) => Extent {
                served,
                store: available,
                fixed: true,
            },
            None => Extent {
                served: served.max(available),
                store: available,
                fixed: false,
            },
        })
    }
}

/// The size of `file` in bytes. Seeking to the end measures block devices too (their
/// metadata length is 0), and a grown loop device (`losetup -c`) or LV at once.
fn measure(mut file: &File) -> std::io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// The byte range of `len` bytes at sector `lba`, if it lies inside a device of `sectors`.
pub fn byte_range(sectors: u64, lba: u64, len: usize) -> Result<std::ops::Range<usize>> {
    let start = lba.checked_mul(SECTOR);
    let end = start.and_then(|s| s.checked_add(len as u64));
    match (start, end) {
        (Some(s), Some(e)) if e <= sectors * SECTOR => Ok(s as usize..e as usize),
        _ => Err(BackendError::OutOfRange { lba, len, sectors }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range(4, 0, 2048).unwrap(), 0..2048);
        assert_eq!(byte_range(4, 3, 512).unwrap(), 1536..2048);
        assert!(matches!(
            byte_range(4, 3, 1024),
            Err(BackendError::OutOfRange {
                lba: 3,
                len: 1024,
                sectors: 4
            })
        ));
        assert!(byte_range(4, u64::MAX, 512).is_err());
        assert!(byte_range(4, u64::MAX / 512, 512).is_err());
    }
}
