//! O_DIRECT I/O (`--direct`): every read and write goes to the device with pread/pwrite
//! through an aligned bounce buffer, past the page cache. For block devices whose cache
//! belongs to the initiator, and for nodes that should not spend their memory on it.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    byte_range, extent, Backend, BackendError, Extent, Follow, Image, ImageRef, IoTarget,
    OpenOptions, Result, SECTOR,
};

/// Alignment of the bounce buffer: a page satisfies every device's O_DIRECT rule.
const ALIGN: usize = 4096;
/// The longest I/O: 255 sectors (one ATA command).
const MAX_IO: usize = 255 * SECTOR as usize;

pub struct DirectBackend {
    file: File,
    /// Sectors served: grows with the store (`refresh`), never shrinks.
    sectors: AtomicU64,
    follow: Follow,
    /// Byte offset in the file where the exported data starts.
    data_offset: u64,
    /// The memory alignment O_DIRECT needs here (statx STATX_DIOALIGN; a page when the
    /// filesystem does not say).
    mem_align: usize,
    write_back: bool,
    regular: bool,
    image: Arc<Image>,
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

/// Run `f` on this thread's page-aligned bounce buffer cut to `len` bytes (at most 255
/// sectors: longer is refused).
pub(super) fn with_bounce<R>(len: usize, f: impl FnOnce(&mut [u8]) -> Result<R>) -> Result<R> {
    if len > MAX_IO {
        return Err(BackendError::Unaligned { len, max: MAX_IO });
    }
    BOUNCE.with_borrow_mut(|b| f(b.slice(len)))
}

impl DirectBackend {
    pub fn open(path: &Path, opts: &OpenOptions) -> anyhow::Result<Self> {
        use anyhow::{bail, Context};
        // Durable writes are made so by fdatasync (one for a group of writes on a ring), not
        // O_DSYNC, which would flush the device cache once per write.
        let flags = libc::O_DIRECT;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(flags)
            .open(path)
            .with_context(|| format!("cannot open {} with O_DIRECT", path.display()))?;
        let sectors = extent(&file, path, opts)?;
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let b = DirectBackend {
            file,
            sectors: AtomicU64::new(sectors),
            follow: Follow::of(opts),
            data_offset: opts.offset * SECTOR,
            mem_align: 0,
            write_back: opts.write_back,
            regular,
            image: Image::new(path),
        };
        let b = DirectBackend {
            mem_align: super::dio_alignment(&b.file).map_or(ALIGN, |a| a.mem),
            ..b
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
        self.image.check()?;
        if len > MAX_IO || !len.is_multiple_of(SECTOR as usize) {
            return Err(BackendError::Unaligned { len, max: MAX_IO });
        }
        let r = byte_range(self.sectors(), lba, len)?;
        Ok(self.data_offset + r.start as u64)
    }
}

impl Backend for DirectBackend {
    fn sectors(&self) -> u64 {
        self.sectors.load(Ordering::Acquire)
    }

    fn refresh(&self) -> std::io::Result<Extent> {
        let e = self.follow.extent(&self.file, self.sectors())?;
        // The largest wins: two looks at once never take the size back.
        self.sectors.fetch_max(e.served, Ordering::AcqRel);
        Ok(e)
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
        // O_DIRECT bypasses the page cache, not the device's write cache.
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        self.image.sync("fdatasync", || self.file.sync_data())
    }

    fn failed_closed(&self) -> bool {
        self.image.failed()
    }

    fn sync_errors(&self) -> u64 {
        self.image.sync_errors()
    }

    fn io_target(&self) -> Option<IoTarget> {
        use std::os::fd::AsRawFd;
        Some(IoTarget {
            fd: self.file.as_raw_fd(),
            base: self.data_offset,
            direct: true,
            mem_align: self.mem_align,
            durable: !self.write_back,
            regular: self.regular,
            // Already past the page cache.
            write_around: None,
            image: ImageRef::new(&self.image),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    /// A scratch directory next to the test binary: on the filesystem the build lives on,
    /// a real one, where temp_dir() may be tmpfs.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let exe = std::env::current_exe().unwrap();
            let target = exe.parent().and_then(Path::parent).unwrap();
            let d = target.join(format!("aoe-direct-test-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The memory and file-offset alignment O_DIRECT needs on `path` (statx DIOALIGN; None
    /// when the filesystem does not say), or why its filesystem has no usable O_DIRECT.
    fn dio_align(path: &Path) -> std::result::Result<Option<(u32, u32)>, String> {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs, open, statx and close on a NUL-terminated path and our own fd.
        unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            assert_eq!(
                libc::statfs(c.as_ptr(), &mut fs),
                0,
                "statfs {}",
                path.display()
            );
            let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECT);
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL is how open says the filesystem has no O_DIRECT (tmpfs before 6.6).
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Err(format!(
                        "the filesystem of {} (statfs type {:#x}{}) refuses O_DIRECT",
                        path.display(),
                        fs.f_type,
                        if fs.f_type == libc::TMPFS_MAGIC {
                            ", tmpfs"
                        } else {
                            ""
                        }
                    ));
                }
                panic!("O_DIRECT open of {}: {e}", path.display());
            }
            let mut stx: libc::statx = std::mem::zeroed();
            let empty = c"";
            let r = libc::statx(
                fd,
                empty.as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            );
            libc::close(fd);
            assert_eq!(r, 0, "statx {}", path.display());
            if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
                return Ok(None);
            }
            if stx.stx_dio_offset_align as u64 > SECTOR {
                return Err(format!(
                    "{} needs O_DIRECT offsets aligned to {} bytes, not 512",
                    path.display(),
                    stx.stx_dio_offset_align
                ));
            }
            Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
        }
    }

    #[test]
    fn reads_and_writes_at_the_offset() {
        let dir = Dir::new();
        let path = dir.0.join("img");
        std::fs::write(&path, vec![0u8; 64 * 512]).unwrap();
        match dio_align(&path) {
            Err(why) => return eprintln!("skipped: {why}"),
            Ok(Some((mem, offset))) => {
                // The bounce buffer and whole-sector offsets satisfy what the filesystem asks.
                assert!(
                    mem > 0 && ALIGN.is_multiple_of(mem as usize),
                    "memory alignment {mem}"
                );
                assert!(
                    SECTOR.is_multiple_of(offset as u64),
                    "offset alignment {offset}"
                );
                let at = BOUNCE.with_borrow(|b| b.0 as usize);
                assert!(at.is_multiple_of(mem as usize), "bounce buffer at {at:#x}");
            }
            Ok(None) => {}
        }
        let opts = OpenOptions {
            offset: 8,
            length: Some(16),
            direct: true,
            ..Default::default()
        };
        let b = DirectBackend::open(&path, &opts).unwrap_or_else(|e| panic!("{e:#}"));
        // SAFETY: F_GETFL on our own open file.
        let fl = unsafe { libc::fcntl(b.file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_DIRECT, 0, "opened without O_DIRECT");
        assert_eq!(b.sectors(), 16);
        // Caller buffers at odd addresses, which O_DIRECT may refuse (EINVAL) where the
        // kernel does not fall back to buffered I/O: the I/O goes through the bounce buffer.
        let mut src = vec![0u8; 1030];
        src[3..515].fill(7);
        src[515..1027].fill(9);
        b.write_parts_at(1, &[&src[3..515], &src[515..1027]])
            .unwrap();
        let mut back = vec![0u8; 1030];
        b.read_at(1, &mut back[1..1025]).unwrap();
        assert!(back[1..513].iter().all(|&x| x == 7) && back[513..1025].iter().all(|&x| x == 9));
        let file = std::fs::read(&path).unwrap();
        assert!(file[9 * 512..10 * 512].iter().all(|&x| x == 7));
        assert!(file[10 * 512..11 * 512].iter().all(|&x| x == 9));
        assert!(
            file[..9 * 512].iter().all(|&x| x == 0),
            "written before the offset"
        );
        b.sync_range(1, 1024).unwrap();
        b.flush().unwrap();
        let e = b.read_at(16, &mut [0u8; 512]).unwrap_err();
        assert_eq!(e.reason(), "out_of_range", "past the length: {e}");
        let e = b.read_at(0, &mut [0u8; 100]).unwrap_err();
        assert_eq!(e.reason(), "unaligned", "not whole sectors: {e}");
        // Without a length it follows the file when it grows, and keeps its size when the
        // file shrinks.
        let opts = OpenOptions {
            offset: 8,
            direct: true,
            ..Default::default()
        };
        let b = DirectBackend::open(&path, &opts).unwrap();
        assert_eq!(b.sectors(), 56);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(128 * 512).unwrap();
        let e = b.read_at(100, &mut [0u8; 512]).unwrap_err();
        assert_eq!(e.reason(), "out_of_range", "before a look: {e}");
        let e = b.refresh().unwrap();
        assert_eq!((e.served, e.store, e.fixed), (120, 120, false));
        b.write_at(119, &[5u8; 512]).unwrap();
        let mut back = [0u8; 512];
        b.read_at(119, &mut back).unwrap();
        assert_eq!(back, [5u8; 512]);
        file.set_len(64 * 512).unwrap();
        let e = b.refresh().unwrap();
        assert_eq!((e.served, e.store), (120, 56));
        assert_eq!(b.sectors(), 120);
    }
}
