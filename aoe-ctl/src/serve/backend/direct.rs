//! O_DIRECT I/O (`--direct`): every read and write goes to the device with pread/pwrite
//! through an aligned bounce buffer, past the page cache. For block devices whose cache
//! belongs to the initiator, and for nodes that should not spend their memory on it.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::{byte_range, extent, Backend, BackendError, OpenOptions, Result, SECTOR};

/// Alignment of the bounce buffer: a page satisfies every device's O_DIRECT rule.
const ALIGN: usize = 4096;
/// The longest I/O: 255 sectors (one ATA command).
const MAX_IO: usize = 255 * SECTOR as usize;

pub struct DirectBackend {
    file: File,
    sectors: u64,
    /// Byte offset in the file where the exported data starts.
    data_offset: u64,
    /// Opened with O_DSYNC: every write is durable when it returns.
    dsync: bool,
}

/// A page-aligned buffer of `MAX_IO` bytes.
struct Bounce(*mut u8);

impl Bounce {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(MAX_IO.next_multiple_of(ALIGN), ALIGN).unwrap()
    }

    fn new() -> Self {
        // SAFETY: a non-zero size layout.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        if p.is_null() {
            std::alloc::handle_alloc_error(Self::layout());
        }
        Bounce(p)
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: the allocation holds MAX_IO bytes and len is checked by the callers.
        unsafe { std::slice::from_raw_parts_mut(self.0, len.min(MAX_IO)) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.0, Self::layout()) };
    }
}

thread_local! {
    /// One bounce buffer per worker thread: no lock and no allocation per I/O.
    static BOUNCE: RefCell<Bounce> = RefCell::new(Bounce::new());
}

impl DirectBackend {
    pub fn open(path: &Path, opts: &OpenOptions) -> anyhow::Result<Self> {
        use anyhow::{bail, Context};
        let mut flags = libc::O_DIRECT;
        if opts.sync {
            flags |= libc::O_DSYNC;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(flags)
            .open(path)
            .with_context(|| format!("cannot open {} with O_DIRECT", path.display()))?;
        let sectors = extent(&file, path, opts)?;
        let b = DirectBackend {
            file,
            sectors,
            data_offset: opts.offset * SECTOR,
            dsync: opts.sync,
        };
        // Some filesystems refuse O_DIRECT, or 512-byte O_DIRECT (4Kn devices): say so now,
        // not as an ATA error on the first read.
        let mut probe = [0u8; SECTOR as usize];
        if let Err(e) = b.read_at(0, &mut probe) {
            bail!(
                "--direct: 512-byte O_DIRECT reads fail on {} ({e}); export it without --direct",
                path.display()
            );
        }
        Ok(b)
    }

    fn check(&self, lba: u64, len: usize) -> Result<u64> {
        if len > MAX_IO || !len.is_multiple_of(SECTOR as usize) {
            return Err(BackendError::Unaligned { len, max: MAX_IO });
        }
        let r = byte_range(self.sectors, lba, len)?;
        Ok(self.data_offset + r.start as u64)
    }
}

impl Backend for DirectBackend {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read_at(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.check(lba, buf.len())?;
        BOUNCE.with_borrow_mut(|b| {
            let bounce = b.slice(buf.len());
            self.file
                .read_exact_at(bounce, at)
                .map_err(BackendError::syscall("pread"))?;
            buf.copy_from_slice(bounce);
            Ok(())
        })
    }

    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        let at = self.check(lba, len)?;
        BOUNCE.with_borrow_mut(|b| {
            let bounce = b.slice(len);
            let mut o = 0;
            for p in parts {
                bounce[o..o + p.len()].copy_from_slice(p);
                o += p.len();
            }
            self.file
                .write_all_at(bounce, at)
                .map_err(BackendError::syscall("pwrite"))
        })
    }

    fn sync_range(&self, _lba: u64, _len: usize) -> Result<()> {
        if self.dsync {
            return Ok(());
        }
        // O_DIRECT bypasses the page cache, not the device's write cache.
        self.file
            .sync_data()
            .map_err(BackendError::syscall("fdatasync"))
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(BackendError::syscall("fdatasync"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_at_the_offset() {
        let dir = std::env::temp_dir().join(format!("aoe-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![0u8; 64 * 512]).unwrap();
        let opts = OpenOptions {
            offset: 8,
            length: Some(16),
            direct: true,
            ..Default::default()
        };
        let b = match DirectBackend::open(&path, &opts) {
            Ok(b) => b,
            // tmpfs before 6.6 has no O_DIRECT: nothing to test there.
            Err(e) if e.to_string().contains("O_DIRECT") => return,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(b.sectors(), 16);
        b.write_parts_at(1, &[&[7u8; 512], &[9u8; 512]]).unwrap();
        let mut back = [0u8; 1024];
        b.read_at(1, &mut back).unwrap();
        assert!(back[..512].iter().all(|&x| x == 7) && back[512..].iter().all(|&x| x == 9));
        let file = std::fs::read(&path).unwrap();
        assert!(file[9 * 512..10 * 512].iter().all(|&x| x == 7));
        assert!(b.read_at(16, &mut [0u8; 512]).is_err(), "past the length");
        assert!(b.read_at(0, &mut [0u8; 100]).is_err(), "not whole sectors");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
