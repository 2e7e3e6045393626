//! faultfs, the fault lab's storage layer, through the real kernel: what a power cut keeps
//! and drops, and each injected fault as a process on the mount sees it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aoe_integration::{FaultFs, LoopDev};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("aoe-faultfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A backing file of `bytes` filled with `fill`, and faultfs mounted over it.
    fn mount(&self, bytes: usize, fill: u8) -> FaultFs {
        let backing = self.0.join("disk.img");
        if !backing.exists() {
            std::fs::write(&backing, vec![fill; bytes]).unwrap();
        }
        FaultFs::mount(&backing, &self.0.join("mnt")).expect("faultfs mounts (root, /dev/fuse)")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

fn stored(fs: &FaultFs, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    File::open(&fs.backing)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    b
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned(*mut u8, usize);

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: a non-zero layout; filled before use.
        let p = unsafe { std::alloc::alloc(layout) };
        // SAFETY: p points at len bytes.
        unsafe { std::ptr::write_bytes(p, fill, len) };
        Aligned(p, len)
    }

    fn as_slice(&mut self) -> &mut [u8] {
        // SAFETY: allocated with this length in `new`.
        unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.1, 4096).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.0, layout) };
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn a_power_cut_keeps_what_was_synced_and_nothing_else() {
    let d = Dir::new("cut");
    let mut fs = d.mount(1 << 20, 0);
    let f = open(&fs.file);
    f.write_all_at(&[1u8; 1024], 0).unwrap();
    assert_eq!(stored(&fs, 0, 1024), vec![0u8; 1024], "written, not synced");
    let mut back = [0u8; 1024];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, [1u8; 1024], "the mount reads its own writes");
    f.sync_data().unwrap();
    assert_eq!(stored(&fs, 0, 1024), vec![1u8; 1024], "synced");
    // Through a shared mapping (as a target maps its image), then unsynced writes.
    {
        // SAFETY: a shared mapping of a file we keep open, unmapped below.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(m, libc::MAP_FAILED);
        // SAFETY: inside the 1 MiB mapping.
        unsafe { std::ptr::write_bytes(m.cast::<u8>().add(8192), 2, 512) };
        // SAFETY: msync and munmap of the mapping made above.
        unsafe {
            assert_eq!(libc::msync(m, 1 << 20, libc::MS_SYNC), 0);
            libc::munmap(m, 1 << 20);
        }
    }
    assert_eq!(
        stored(&fs, 8192, 512),
        vec![2u8; 512],
        "msync reaches the disk"
    );
    f.write_all_at(&[3u8; 512], 0).unwrap();
    f.write_all_at(&[3u8; 512], 65536).unwrap();
    let stats = fs.stats().unwrap();
    assert_eq!(stats.get("unsynced_writes"), 2, "{stats:?}");
    drop(f);
    let cut = fs.cut().unwrap();
    assert_eq!((cut.dropped_writes, cut.dropped_pages), (2, 2));
    assert_eq!(
        stored(&fs, 0, 1024),
        vec![1u8; 1024],
        "the last sync's data"
    );
    assert_eq!(
        stored(&fs, 65536, 512),
        vec![0u8; 512],
        "never synced: gone"
    );
    assert!(!fs.file.exists(), "unmounted after the cut");
    // Mounted again, it serves what survived.
    let fs = d.mount(1 << 20, 0);
    let mut back = [0u8; 512];
    open(&fs.file).read_exact_at(&mut back, 8192).unwrap();
    assert_eq!(back, [2u8; 512]);
}

#[test]
fn write_faults_fail_the_write_with_their_errno() {
    let d = Dir::new("write");
    let fs = d.mount(1 << 20, 0);
    let f = open(&fs.file);
    fs.fail("write at=4096 len=512 errno=enospc").unwrap();
    let e = f.write_all_at(&[1u8; 512], 4096).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    f.write_all_at(&[1u8; 512], 0).unwrap();
    fs.fail("write at=8192 len=1 times=1").unwrap();
    let e = f.write_all_at(&[1u8; 512], 8192).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    f.write_all_at(&[1u8; 512], 8192).unwrap();
    assert_eq!(fs.stats().unwrap().get("injected"), 2);
    fs.clear().unwrap();
    f.write_all_at(&[1u8; 512], 4096).unwrap();
}

#[test]
fn a_bad_sector_fails_its_reads_only_even_when_cached() {
    let d = Dir::new("read");
    let fs = d.mount(1 << 20, 9);
    // O_DIRECT: the request is the sector itself.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&fs.file)
        .expect("faultfs takes O_DIRECT opens");
    let mut b = Aligned::new(512, 0);
    fs.fail("read at=5120 len=512").unwrap();
    let e = f.read_exact_at(b.as_slice(), 5120).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    f.read_exact_at(b.as_slice(), 5632).unwrap();
    f.read_exact_at(b.as_slice(), 4608).unwrap();
    assert_eq!(b.as_slice(), &[9u8; 512][..]);
    fs.clear().unwrap();
    // Buffered: the page holding it, though the kernel cached that page before.
    let g = open(&fs.file);
    let mut c = [0u8; 512];
    g.read_exact_at(&mut c, 5120).unwrap();
    fs.fail("read at=5120 len=512").unwrap();
    let e = g.read_exact_at(&mut c, 4096).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    g.read_exact_at(&mut c, 8192).unwrap();
}

#[test]
fn a_failed_sync_loses_its_page_and_tells_each_open_file_once() {
    let d = Dir::new("sync");
    let mut fs = d.mount(1 << 20, 0);
    // Two opens, as two writers of one image would have (or one target's two descriptors).
    let (a, b) = (open(&fs.file), open(&fs.file));
    a.write_all_at(&[1u8; 512], 0).unwrap();
    b.write_all_at(&[2u8; 512], 8192).unwrap();
    // b's page fails the writeback of a's sync.
    fs.fail("sync at=8192 len=512").unwrap();
    let e = a.sync_data().unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    a.sync_data().expect("the error is reported once to a");
    let e = b.sync_data().expect_err("b sees the error once as well");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    b.sync_data().unwrap();
    assert_eq!(fs.stats().unwrap().get("lost_pages"), 1);
    drop((a, b));
    fs.cut().unwrap();
    assert_eq!(stored(&fs, 0, 512), vec![1u8; 512], "a's page was written");
    assert_eq!(stored(&fs, 8192, 512), vec![0u8; 512], "b's page is lost");
}

#[test]
fn a_stall_holds_every_request_until_it_ends() {
    let d = Dir::new("stall");
    let fs = d.mount(1 << 20, 0);
    let f = open(&fs.file);
    fs.stall(60_000).unwrap();
    let writer = std::thread::spawn(move || {
        f.write_all_at(&[1u8; 512], 0).unwrap();
        f.sync_data().unwrap();
    });
    // The control socket answers during the stall, and the write waits.
    let before = fs.stats().unwrap().get("writes");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished(), "a write got through a 60 s stall");
    assert_eq!(fs.stats().unwrap().get("writes"), before);
    fs.clear().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writer.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the write never ended after clear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    assert_eq!(stored(&fs, 0, 512), vec![1u8; 512]);
}

/// STATX_DIOALIGN of `p`: (memory, file offset) alignment, when reported.
fn dio_align(p: &Path) -> Option<(u32, u32)> {
    let f = File::open(p).unwrap();
    // SAFETY: statx on our open descriptor into a zeroed struct.
    unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        );
        assert_eq!(r, 0);
        (stx.stx_mask & libc::STATX_DIOALIGN != 0)
            .then_some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
    }
}

#[test]
fn the_file_reports_no_dio_alignment_and_a_loop_device_on_it_does() {
    // Why the power-cut test also serves a loop device on faultfs: a target decides its
    // O_DIRECT write-around path from STATX_DIOALIGN, which FUSE never reports.
    let d = Dir::new("dio");
    let mut fs = d.mount(4 << 20, 0);
    assert_eq!(dio_align(&fs.file), None);
    let mut lo = LoopDev::attach(&fs.file, 512).unwrap();
    assert_eq!(dio_align(&lo.path), Some((512, 512)));
    // A write and a flush through the device reach faultfs as a write and a sync.
    let dev = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&lo.path)
        .unwrap();
    let mut b = Aligned::new(4096, 6);
    dev.write_all_at(b.as_slice(), 1 << 20).unwrap();
    let unsynced = fs.stats().unwrap().get("unsynced_writes");
    assert!(
        unsynced >= 1,
        "the O_DIRECT write is in the cache, not on disk"
    );
    dev.sync_data().unwrap();
    assert_eq!(stored(&fs, 1 << 20, 4096), vec![6u8; 4096]);
    // Attaching and detaching a loop device syncs its file: after the check above.
    let mut four_k = LoopDev::attach(&fs.file, 4096).unwrap();
    assert_eq!(
        dio_align(&four_k.path).map(|a| a.1),
        Some(4096),
        "a 4Kn device"
    );
    four_k.detach().unwrap();
    drop(dev);
    lo.detach().unwrap();
    fs.cut().unwrap();
}
