//! The storage section's disk: an image with real extents on the machine's disk, the
//! /proc/diskstats line of the device under it, and dropping the page cache.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
/// Zeros written per O_DIRECT write while creating the image (as `dd bs=4M oflag=direct`).
const CHUNK: usize = 4 << 20;
/// Room left on the filesystem after the image, so a run never fills the disk.
const SPARE: u64 = 1 << 30;

/// The image at `path` of exactly `bytes`, every block written: kept when a fully allocated
/// file of that size is already there, else written with O_DIRECT zeros (never sparse, never
/// fallocated, so reads reach real extents).
pub fn image(path: &Path, bytes: u64) -> Result<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fs = statfs(dir)?;
    if fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC {
        bail!(
            "{} is on tmpfs/ramfs: the storage bench needs the machine's disk (--storage-image)",
            dir.display()
        );
    }
    let old = std::fs::metadata(path).ok();
    if let Some(m) = &old {
        if m.len() == bytes && m.blocks() * 512 >= bytes {
            println!(
                "bench storage: using {} ({} GiB, kept from an earlier run)",
                path.display(),
                bytes >> 30
            );
            return Ok(path.to_path_buf());
        }
    }
    let free = fs.f_bavail as u64 * fs.f_bsize as u64 + old.map_or(0, |m| m.blocks() * 512);
    if free < bytes + SPARE {
        bail!(
            "{} needs {:.1} GiB free (+1 GiB spare), the filesystem has {:.1} GiB",
            path.display(),
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        );
    }
    println!(
        "bench storage: writing {} GiB of zeros to {} with O_DIRECT (kept for later runs)",
        bytes >> 30,
        path.display()
    );
    let _ = std::fs::remove_file(path);
    // Written under another name, so an interrupted run leaves no image of the wrong shape.
    let partial = path.with_extension("partial");
    write_zeros(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path.to_path_buf())
}

fn write_zeros(path: &Path, bytes: u64) -> Result<()> {
    if !bytes.is_multiple_of(CHUNK as u64) {
        bail!("image size {bytes} is not a multiple of 4 MiB");
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // O_DIRECT wants an aligned buffer: a page-aligned window of a larger one.
    let buf = vec![0u8; CHUNK + 4096];
    let at = buf.as_ptr().align_offset(4096);
    let chunk = &buf[at..at + CHUNK];
    for _ in 0..bytes / CHUNK as u64 {
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    Ok(())
}

fn statfs(dir: &Path) -> Result<libc::statfs> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs is plain old data, all zeros a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs the call fills.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", dir.display()));
    }
    Ok(s)
}

/// The block device under the filesystem that holds a file, as /proc/diskstats names it.
#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    major: u32,
    minor: u32,
}

/// Bytes read and written since some start (boot for a disk, its start for a process), and
/// a disk's flush requests (0 for a process, or a kernel whose diskstats has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub read: u64,
    pub written: u64,
    pub flushes: u64,
}

impl Counters {
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            read: self.read.saturating_sub(before.read),
            written: self.written.saturating_sub(before.written),
            flushes: self.flushes.saturating_sub(before.flushes),
        }
    }
}

/// What process `pid` itself made the block layer read and write (`read_bytes` and
/// `write_bytes` of /proc/PID/io): its own share of the disk's traffic, which other work on
/// a shared machine does not blur.
pub fn process(pid: u32) -> Result<Counters> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("/proc/{pid}/io has no {name}"))
    };
    Ok(Counters {
        read: field("read_bytes:")?,
        written: field("write_bytes:")?,
        flushes: 0,
    })
}

impl Disk {
    /// The disk of `file`'s filesystem: its st_dev, or (for filesystems with an anonymous
    /// st_dev, such as btrfs) the source device that /proc/self/mountinfo gives it.
    pub fn of(file: &Path) -> Result<Disk> {
        let dev = std::fs::metadata(file)
            .with_context(|| format!("stat {}", file.display()))?
            .dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let stats =
            std::fs::read_to_string("/proc/diskstats").context("reading /proc/diskstats")?;
        if let Some(d) = find(&stats, major, minor) {
            return Ok(d);
        }
        let source = mount_source(major, minor).and_then(|s| std::fs::metadata(s).ok());
        if let Some(rdev) = source.map(|m| m.rdev()).filter(|&r| r != 0) {
            if let Some(d) = find(&stats, libc::major(rdev), libc::minor(rdev)) {
                return Ok(d);
            }
        }
        bail!(
            "no /proc/diskstats line for the disk under {} (device {major}:{minor})",
            file.display()
        )
    }

    pub fn counters(&self) -> Result<Counters> {
        let stats =
            std::fs::read_to_string("/proc/diskstats").context("reading /proc/diskstats")?;
        counters_in(&stats, self.major, self.minor)
            .with_context(|| format!("{} left /proc/diskstats", self.name))
    }
}

/// The counters of `major:minor` in a /proc/diskstats text.
fn counters_in(stats: &str, major: u32, minor: u32) -> Option<Counters> {
    let f: Vec<&str> = stats
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[0].parse() == Ok(major) && f[1].parse() == Ok(minor))?;
    // Columns 6 and 10: sectors read and written, 512 bytes each; column 19 (the 16th
    // statistic, kernel >= 5.5): flush requests completed. Every durable write is covered by
    // one on a disk with a volatile cache (where the disk has no FUA, a FUA write is a write
    // and a flush).
    Some(Counters {
        read: f[5].parse::<u64>().ok()? * 512,
        written: f[9].parse::<u64>().ok()? * 512,
        flushes: f.get(18).and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// The line of `major:minor` in /proc/diskstats (fields: major minor name reads merged
/// sectors-read ...).
fn find(stats: &str, major: u32, minor: u32) -> Option<Disk> {
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[0].parse() == Ok(major) && f[1].parse() == Ok(minor)).then(|| Disk {
            name: f[2].to_string(),
            major,
            minor,
        })
    })
}

/// The mount source (a device path) of the filesystem whose st_dev is `major:minor`.
fn mount_source(major: u32, minor: u32) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{major}:{minor}");
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split_whitespace().nth(2)? != want {
            return None;
        }
        Some(right.split_whitespace().nth(1)?.to_string())
    })
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: the next target starts from a cold cache.
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "\
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 1545028 41887 61865871 1957670 729700 203477 205057377 1837629 6 328772 1345279 39619 30 18805184 9101 147982 73374
 254       1 vda1 1000 0 8000 10 20 0 160 5 0 10
";

    #[test]
    fn finds_the_device_by_major_and_minor_not_by_name() {
        assert_eq!(find(STATS, 254, 0).unwrap().name, "vda");
        assert_eq!(find(STATS, 254, 1).unwrap().name, "vda1");
        assert!(find(STATS, 8, 0).is_none());
    }

    #[test]
    fn counts_sectors_and_flushes_by_column() {
        let c = counters_in(STATS, 254, 0).unwrap();
        assert_eq!(
            (c.read, c.written, c.flushes),
            (61865871 * 512, 205057377 * 512, 147982)
        );
        // A line without the flush columns (an older kernel) counts none.
        assert_eq!(counters_in(STATS, 254, 1).unwrap().flushes, 0);
        assert!(counters_in(STATS, 8, 0).is_none());
    }

    #[test]
    fn the_image_refuses_tmpfs() {
        // /dev/shm is tmpfs on every Linux this runs on; skip where it is not.
        let dir = Path::new("/dev/shm");
        if statfs(dir).map_or(true, |s| s.f_type != TMPFS_MAGIC) {
            return;
        }
        let e = image(&dir.join("aoe-bench-refused.img"), 4 << 20).unwrap_err();
        assert!(e.to_string().contains("tmpfs"), "{e}");
        assert!(!dir.join("aoe-bench-refused.img").exists());
    }

    #[test]
    fn the_image_is_written_through_and_kept() {
        let dir = aoe_integration::workspace_root().join("target");
        let p = dir.join(format!("aoe-bench-disk-test-{}.img", std::process::id()));
        image(&p, 8 << 20).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 8 << 20);
        assert!(m.blocks() * 512 >= 8 << 20, "sparse: {} blocks", m.blocks());
        // A sparse file of the right size is not kept: it is rewritten.
        std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
        image(&p, 8 << 20).unwrap();
        assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= 8 << 20);
        assert!(Disk::of(&p).unwrap().counters().is_ok());
        assert!(process(std::process::id()).is_ok());
        std::fs::remove_file(&p).unwrap();
    }
}
