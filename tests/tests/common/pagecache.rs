//! What the page cache holds of a file: resident pages (mincore) and dirty ones
//! (/proc/self/pagemap + /proc/kpageflags, root only); and a directory where that means
//! something.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const PAGE: usize = 4096;
/// statfs f_type of ramfs (linux/magic.h; not in the libc crate).
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

/// A fresh read-only shared mapping of the first `bytes` of `path`, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    bytes: usize,
}

impl Mapping {
    fn of(path: &Path, bytes: usize) -> Mapping {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: a new read-only shared mapping of a file we opened; the fd may close after.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
        Mapping { addr, bytes }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`.
        unsafe { libc::munmap(self.addr, self.bytes) };
    }
}

/// Pages of the first `bytes` of `path` in the page cache, without reading any in.
pub fn resident_pages(path: &Path, bytes: usize) -> usize {
    let m = Mapping::of(path, bytes);
    let mut vec = vec![0u8; bytes.div_ceil(PAGE)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(m.addr, bytes, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&v| v & 1 != 0).count()
}

/// Pages of the first `bytes` of `path` that the page cache holds dirty (not yet written
/// back). Reads every page in (a page read from disk is clean).
pub fn dirty_pages(path: &Path, bytes: usize) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    const KPF_DIRTY: u64 = 1 << 4;
    let m = Mapping::of(path, bytes);
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut kflags = std::fs::File::open("/proc/kpageflags").unwrap();
    let mut dirty = 0;
    for page in 0..bytes / PAGE {
        let addr = m.addr as usize + page * PAGE;
        // SAFETY: inside the mapping; a read makes the page present in our page table.
        let _ = unsafe { std::ptr::read_volatile(addr as *const u8) };
        let mut e = [0u8; 8];
        pagemap
            .seek(SeekFrom::Start((addr / PAGE * 8) as u64))
            .unwrap();
        pagemap.read_exact(&mut e).unwrap();
        let entry = u64::from_le_bytes(e);
        assert!(entry & (1 << 63) != 0, "page {page} not present");
        let pfn = entry & ((1 << 55) - 1);
        kflags.seek(SeekFrom::Start(pfn * 8)).unwrap();
        kflags.read_exact(&mut e).unwrap();
        if u64::from_le_bytes(e) & KPF_DIRTY != 0 {
            dirty += 1;
        }
    }
    dirty
}

/// A directory under the workspace's target/, removed on drop, for images whose page cache
/// a test inspects. Not the temp dir: on tmpfs, pages are shmem that no writeback ever
/// cleans (still dirty after msync) and O_DIRECT is served from the page cache, so neither
/// --sync nor --direct would show.
pub struct DiskDir(pub PathBuf);

impl DiskDir {
    pub fn new() -> DiskDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = aoe_integration::workspace_root().join(format!(
            "target/aoe-disk-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let d = DiskDir(dir);
        let c = std::ffi::CString::new(d.0.to_str().unwrap()).unwrap();
        // SAFETY: statfs is plain old data; all zeroes is a valid value.
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: statfs of a NUL-terminated path into a struct of the right type.
        let r = unsafe { libc::statfs(c.as_ptr(), &mut s) };
        assert_eq!(r, 0, "statfs");
        assert!(
            ![libc::TMPFS_MAGIC, RAMFS_MAGIC].contains(&(s.f_type as _)),
            "{} is on tmpfs or ramfs: page cache tests need a disk-backed filesystem",
            d.0.display()
        );
        d
    }
}

impl Drop for DiskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
