//! The copy-on-write overlay of an export whose filesystem cannot reflink: while the image is
//! copied, writes go to a log beside it (`<image>.aoe-overlay`) and reads of the sectors they
//! wrote come from there, so the image holds still. Afterwards the log is merged back in log
//! order and removed.
//!
//! The log is append-only: a 512-byte header, then records of a 512-byte header (lba, sector
//! count, checksum) and the data. An acknowledged record of a durable export is on stable
//! storage (fdatasync before the acknowledgement), so a crash mid-snapshot loses nothing: the
//! next open of the export replays the log onto the image (`recover`), later records over
//! earlier ones, stopping at a torn tail (a record never acknowledged). Replaying records the
//! merge had already applied writes the same bytes again, so a crash mid-merge is safe too.
//! While the log exists it is flock()ed by the process that writes it; `recover` refuses a
//! locked log (another process is taking a snapshot of this image).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::serve::backend::BackendError;

const SECTOR: u64 = 512;
const LOG_MAGIC: &[u8; 8] = b"AOEOVL01";
const RECORD_MAGIC: &[u8; 8] = b"AOEREC01";
/// How much of the log one merge step applies under the lock (I/O of the export waits).
const MERGE_STEP: u64 = 1 << 20;

/// Where the overlay of `image` lives.
pub fn log_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".aoe-overlay");
    PathBuf::from(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writes go to the log.
    Frozen,
    /// Merged and removed: I/O goes to the image, synchronously (until workers see the
    /// snapshot is over).
    Done,
}

struct State {
    phase: Phase,
    /// Sector -> byte offset in the log of its latest data.
    map: HashMap<u64, u64>,
    /// Bytes of the log written.
    end: u64,
    /// Bytes of the log merged into the image.
    merged: u64,
    log: Option<File>,
}

pub struct Overlay {
    /// The image, opened anew without O_DIRECT (any buffer alignment goes).
    image: File,
    /// Byte offset of the export in the image.
    base: u64,
    sectors: u64,
    durable: bool,
    path: PathBuf,
    state: Mutex<State>,
}

impl Overlay {
    /// Start an overlay for the export whose image is open at `fd` (`base`, `sectors`):
    /// the log is created (never over an existing one), locked and made durable.
    pub fn create(image: &Path, fd: RawFd, base: u64, sectors: u64, durable: bool) -> Result<Self> {
        let path = log_path(image);
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| {
                format!("cannot create the overlay {} (a snapshot of this image running, or one not recovered?)", path.display())
            })?;
        lock(&log).with_context(|| format!("cannot lock {}", path.display()))?;
        let mut header = vec![0u8; SECTOR as usize];
        header[..8].copy_from_slice(LOG_MAGIC);
        header[8..16].copy_from_slice(&base.to_le_bytes());
        header[16..24].copy_from_slice(&sectors.to_le_bytes());
        let made = log
            .write_all_at(&header, 0)
            .and_then(|()| log.sync_all())
            .and_then(|()| sync_dir(&path));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))
            .context("cannot reopen the image for the overlay")?;
        Ok(Overlay {
            image,
            base,
            sectors,
            durable,
            path,
            state: Mutex::new(State {
                phase: Phase::Frozen,
                map: HashMap::new(),
                end: SECTOR,
                merged: SECTOR,
                log: Some(log),
            }),
        })
    }

    /// The frozen image, for the copier (nothing writes it until the merge).
    pub fn image(&self) -> &File {
        &self.image
    }

    /// Bytes in the log not merged yet.
    pub fn unmerged(&self) -> u64 {
        let s = self.state.lock().unwrap();
        s.end - s.merged
    }

    fn check(&self, lba: u64, len: usize) -> Result<(), BackendError> {
        crate::serve::backend::byte_range(self.sectors, lba, len).map(|_| ())
    }

    /// Read `buf.len()` bytes at sector `lba`: overlaid sectors from the log, the rest from
    /// the image.
    pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.check(lba, buf.len())?;
        let s = self.state.lock().unwrap();
        let n = buf.len() as u64 / SECTOR;
        let mut i = 0;
        while i < n {
            // A run of sectors from one place: the log at consecutive offsets, or the image.
            let at = s.map.get(&(lba + i)).copied();
            let mut j = i + 1;
            while j < n {
                let next = s.map.get(&(lba + j)).copied();
                match (at, next) {
                    (None, None) => {}
                    (Some(a), Some(b)) if b == a + (j - i) * SECTOR => {}
                    _ => break,
                }
                j += 1;
            }
            let out = &mut buf[(i * SECTOR) as usize..(j * SECTOR) as usize];
            match (at, &s.log) {
                (Some(off), Some(log)) => log.read_exact_at(out, off),
                _ => self
                    .image
                    .read_exact_at(out, self.base + (lba + i) * SECTOR),
            }
            .map_err(BackendError::syscall("read"))?;
            i = j;
        }
        // A read ending mid-sector (never from the engine, which reads whole sectors).
        let tail = (n * SECTOR) as usize;
        if tail < buf.len() {
            self.image
                .read_exact_at(&mut buf[tail..], self.base + lba * SECTOR + tail as u64)
                .map_err(BackendError::syscall("read"))?;
        }
        Ok(())
    }

    /// Write `data` (whole sectors) at sector `lba`: appended to the log while frozen, and
    /// durable before this returns when the export is. False, with nothing written, once
    /// the overlay is merged back: the write then goes the export's own way (one write path
    /// per file: this descriptor's buffered writes beside the queues' O_DIRECT ones could
    /// put old sectors back).
    pub fn write(&self, lba: u64, data: &[u8]) -> Result<bool, BackendError> {
        self.check(lba, data.len())?;
        if !(data.len() as u64).is_multiple_of(SECTOR) {
            return Err(BackendError::Unaligned {
                len: data.len(),
                max: data.len(),
            });
        }
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        let Some(log) = s.log.as_ref().filter(|_| s.phase == Phase::Frozen) else {
            return Ok(false);
        };
        let count = data.len() as u64 / SECTOR;
        let mut rec = Vec::with_capacity(SECTOR as usize + data.len());
        rec.extend_from_slice(&record_header(lba, count, data));
        rec.extend_from_slice(data);
        log.write_all_at(&rec, s.end)
            .map_err(BackendError::syscall("write"))?;
        if self.durable {
            log.sync_data()
                .map_err(BackendError::syscall("fdatasync"))?;
        }
        let data_at = s.end + SECTOR;
        for i in 0..count {
            s.map.insert(lba + i, data_at + i * SECTOR);
        }
        s.end += rec.len() as u64;
        Ok(true)
    }

    /// Everything acknowledged so far made durable.
    pub fn flush(&self) -> Result<(), BackendError> {
        let s = self.state.lock().unwrap();
        if let Some(log) = &s.log {
            log.sync_data()
                .map_err(BackendError::syscall("fdatasync"))?;
        }
        self.image
            .sync_data()
            .map_err(BackendError::syscall("fdatasync"))
    }

    /// Apply the next part of the log to the image, under the lock (I/O of the export waits
    /// that long, about one MiB of writes). True once everything is merged, the image made
    /// durable and the log removed.
    pub fn merge_step(&self) -> Result<bool> {
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        let Some(log) = s.log.as_ref() else {
            return Ok(true);
        };
        let stop = s.end.min(s.merged + MERGE_STEP);
        while s.merged < s.end && s.merged < stop {
            let (lba, data) = read_record(log, s.merged, s.end)?.with_context(|| {
                format!(
                    "{}: damaged record at byte {}",
                    self.path.display(),
                    s.merged
                )
            })?;
            self.image
                .write_all_at(&data, self.base + lba * SECTOR)
                .context("merging the overlay into the image")?;
            let data_at = s.merged + SECTOR;
            for i in 0..data.len() as u64 / SECTOR {
                if s.map.get(&(lba + i)) == Some(&(data_at + i * SECTOR)) {
                    s.map.remove(&(lba + i));
                }
            }
            s.merged += SECTOR + data.len() as u64;
        }
        if s.merged < s.end {
            return Ok(false);
        }
        // The image must hold everything before the log, the only other copy, goes.
        self.image.sync_data().context("fdatasync of the image")?;
        std::fs::remove_file(&self.path)
            .with_context(|| format!("cannot remove {}", self.path.display()))?;
        sync_dir(&self.path).context("fsync of the image's directory")?;
        s.map.clear();
        s.phase = Phase::Done;
        s.log = None;
        Ok(true)
    }
}

/// A record's header: magic, lba, count, checksum of all three and the data.
fn record_header(lba: u64, count: u64, data: &[u8]) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[..8].copy_from_slice(RECORD_MAGIC);
    h[8..16].copy_from_slice(&lba.to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    let sum = checksum(&h[..24], data);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

/// FNV-1a, 64 bits: finds a torn record, not an adversary (the log is root's, mode 0600).
fn checksum(head: &[u8], data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in head.iter().chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The record at byte `at` of a log of `len` bytes: Ok(None) when it is torn or damaged.
fn read_record(log: &File, at: u64, len: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    if at + SECTOR > len {
        return Ok(None);
    }
    let mut h = [0u8; SECTOR as usize];
    log.read_exact_at(&mut h, at)?;
    let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let (lba, count, sum) = (word(8), word(16), word(24));
    let Some(bytes) = count
        .checked_mul(SECTOR)
        .filter(|&b| b > 0 && b <= 16 << 20)
    else {
        return Ok(None);
    };
    if &h[..8] != RECORD_MAGIC || at + SECTOR + bytes > len {
        return Ok(None);
    }
    let mut data = vec![0u8; bytes as usize];
    log.read_exact_at(&mut data, at + SECTOR)?;
    Ok((checksum(&h[..24], &data) == sum).then_some((lba, data)))
}

/// Replay the overlay a crash left beside `image`, if any, onto the export that serves
/// `length` sectors (None: to the end) from sector `offset`: every whole record in order, then
/// make the image durable and remove the log. Returns the records applied.
///
/// Refused, with nothing written: a log another process holds (a snapshot running there),
/// one that is not a regular file owned by root (or us) and writable by no one else (it
/// could be anyone's data, aimed at the image), one written for another window of the image,
/// and one with a whole record outside the export.
pub fn recover(image: &Path, offset: u64, length: Option<u64>) -> Result<Option<u64>> {
    let path = log_path(image);
    let log = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symbolic link, not an overlay aoe-ctl wrote; move it away to serve {}",
            path.display(),
            image.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    trusted(&log).with_context(|| {
        format!(
            "{} is not an overlay aoe-ctl wrote; move it away to serve {}",
            path.display(),
            image.display()
        )
    })?;
    if lock(&log).is_err() {
        bail!(
            "{}: a snapshot of {} is running in another process; open it once that ends",
            path.display(),
            image.display()
        );
    }
    let len = log.metadata()?.len();
    let mut header = [0u8; SECTOR as usize];
    let base = match log.read_exact_at(&mut header, 0) {
        Ok(()) if &header[..8] == LOG_MAGIC => {
            u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"))
        }
        // Created but its header never made durable: no write was acknowledged into it.
        _ if len < SECTOR || header.iter().all(|&b| b == 0) => {
            std::fs::remove_file(&path)?;
            return Ok(Some(0));
        }
        _ => bail!(
            "{} is not an aoe-ctl overlay; move it away to serve {}",
            path.display(),
            image.display()
        ),
    };
    let target = OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("cannot open {} to replay its overlay", image.display()))?;
    let sectors = window(&target, offset, length)
        .with_context(|| format!("replaying {} into {}", path.display(), image.display()))?;
    if Some(base) != offset.checked_mul(SECTOR) {
        bail!(
            "{} was written for the export at byte {base} of {}, not this one (sector {offset}); \
             move it away to serve it",
            path.display(),
            image.display()
        );
    }
    // Every whole record inside the export, before any is applied.
    let mut at = SECTOR;
    while let Some((lba, data)) = read_record(&log, at, len)? {
        let end = lba.checked_add(data.len() as u64 / SECTOR);
        if end.is_none_or(|end| end > sectors) {
            bail!(
                "{}: the record at byte {at} writes sectors {lba}.. outside the export's \
                 {sectors}; nothing replayed (move it away to serve {})",
                path.display(),
                image.display()
            );
        }
        at += SECTOR + data.len() as u64;
    }
    let mut at = SECTOR;
    let mut records = 0;
    while let Some((lba, data)) = read_record(&log, at, len)? {
        // Checked above: inside the export, so inside the image.
        let byte = lba
            .checked_mul(SECTOR)
            .and_then(|b| b.checked_add(base))
            .context("a record's offset overflows")?;
        target
            .write_all_at(&data, byte)
            .with_context(|| format!("replaying {} into {}", path.display(), image.display()))?;
        at += SECTOR + data.len() as u64;
        records += 1;
    }
    target.sync_data()?;
    std::fs::remove_file(&path)?;
    sync_dir(&path)?;
    if at < len {
        log::warn!(
            "{}: {} bytes of a torn record at its end were never acknowledged; dropped",
            path.display(),
            len - at
        );
    }
    Ok(Some(records))
}

/// Is `log` one this process (root) wrote: a regular file, its owner root or us, writable by
/// no one else?
fn trusted(log: &File) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = log.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_file() {
        bail!("not a regular file");
    }
    if m.uid() != 0 && m.uid() != me {
        bail!("owned by uid {}, not root", m.uid());
    }
    if m.mode() & 0o022 != 0 {
        bail!("writable by group or others (mode {:o})", m.mode() & 0o7777);
    }
    Ok(())
}

/// Sectors the export serves: `length` from `offset`, or to the end of the image (seeking
/// measures block devices too).
fn window(mut image: &File, offset: u64, length: Option<u64>) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let total = image.seek(SeekFrom::End(0))? / SECTOR;
    let available = total
        .checked_sub(offset)
        .with_context(|| format!("offset {offset} is beyond the image's {total} sectors"))?;
    Ok(length.unwrap_or(available).min(available))
}

fn lock(f: &File) -> io::Result<()> {
    // SAFETY: flock on our own open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the creation or removal of `path` durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, bytes: u64) -> (PathBuf, File) {
        let p = std::env::temp_dir().join(format!("aoe-overlay-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(log_path(&p));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(bytes).unwrap();
        (p, f)
    }

    #[test]
    fn writes_land_in_the_log_reads_see_them_merge_puts_them_in_the_image() {
        let (p, f) = image("merge", 64 << 10);
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        let o = Overlay::create(&p, f.as_raw_fd(), 0, 128, true).unwrap();
        assert!(o.write(2, &[7u8; 1024]).unwrap());
        assert!(o.write(3, &[9u8; 512]).unwrap());
        // The image holds still.
        let mut back = [0u8; 4096];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [1u8; 4096]);
        // Reads see the newest data, sector by sector.
        o.read(0, &mut back).unwrap();
        assert_eq!(&back[..1024], &[1u8; 1024]);
        assert_eq!(&back[1024..1536], &[7u8; 512]);
        assert_eq!(&back[1536..2048], &[9u8; 512]);
        assert_eq!(&back[2048..], &[1u8; 2048]);
        assert!(o.merge_step().unwrap());
        assert!(!log_path(&p).exists());
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[1024..1536], &[7u8; 512]);
        assert_eq!(&back[1536..2048], &[9u8; 512]);
        // After the merge the overlay takes no write: it goes the export's own way.
        assert!(!o.write(0, &[3u8; 512]).unwrap());
        f.read_exact_at(&mut back[..512], 0).unwrap();
        assert_ne!(&back[..512], &[3u8; 512]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_crash_mid_snapshot_is_replayed_and_a_torn_tail_dropped() {
        let (p, f) = image("crash", 64 << 10);
        let o = Overlay::create(&p, f.as_raw_fd(), 4096, 64, true).unwrap();
        // Refused while the overlay's process holds it.
        assert!(recover(&p, 8, Some(64)).is_err());
        o.write(1, &[5u8; 512]).unwrap();
        o.write(1, &[6u8; 512]).unwrap();
        o.write(8, &[8u8; 1024]).unwrap();
        // A crash: the overlay's lock goes with its process; a torn record follows.
        let end = o.state.lock().unwrap().end;
        drop(o);
        let log = OpenOptions::new().write(true).open(log_path(&p)).unwrap();
        log.write_all_at(&record_header(2, 1, &[4u8; 512]), end)
            .unwrap();
        assert_eq!(recover(&p, 8, Some(64)).unwrap(), Some(3));
        assert!(!log_path(&p).exists());
        let mut back = [0u8; 512];
        f.read_exact_at(&mut back, 4096 + 512).unwrap();
        assert_eq!(back, [6u8; 512], "the later record wins");
        f.read_exact_at(&mut back, 4096 + 8 * 512).unwrap();
        assert_eq!(back, [8u8; 512]);
        f.read_exact_at(&mut back, 4096 + 2 * 512).unwrap();
        assert_eq!(back, [0u8; 512], "the torn record is not applied");
        assert_eq!(recover(&p, 8, Some(64)).unwrap(), None);
        std::fs::remove_file(p).unwrap();
    }

    /// A log with a valid header for `base` and the records `recs` (lba, sectors, byte).
    fn planted_log(image: &Path, base: u64, recs: &[(u64, u64, u8)]) {
        let mut log = vec![0u8; SECTOR as usize];
        log[..8].copy_from_slice(LOG_MAGIC);
        log[8..16].copy_from_slice(&base.to_le_bytes());
        for &(lba, count, byte) in recs {
            let data = vec![byte; (count * SECTOR) as usize];
            log.extend_from_slice(&record_header(lba, count, &data));
            log.extend_from_slice(&data);
        }
        let p = log_path(image);
        std::fs::write(&p, log).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_record_outside_the_export_refuses_the_whole_log() {
        let (p, f) = image("range", 64 << 10);
        // Sectors 8..72 of a 128-sector image are exported.
        for recs in [
            &[(1, 1, 5), (64, 1, 6)][..],
            &[(1, 1, 5), (63, 2, 6)],
            &[(1, 1, 5), (u64::MAX, 1, 6)],
            &[(u64::MAX / SECTOR, 1, 6)],
        ] {
            planted_log(&p, 8 * SECTOR, recs);
            let e = recover(&p, 8, Some(64)).unwrap_err();
            assert!(format!("{e:#}").contains("outside the export"), "{e:#}");
            let mut back = vec![0u8; 64 << 10];
            f.read_exact_at(&mut back, 0).unwrap();
            assert!(back.iter().all(|&b| b == 0), "nothing replayed: {recs:?}");
            assert!(log_path(&p).exists(), "the log is left for the operator");
        }
        // The last sector of the export is inside it.
        planted_log(&p, 8 * SECTOR, &[(63, 1, 7)]);
        assert_eq!(recover(&p, 8, Some(64)).unwrap(), Some(1));
        let mut back = [0u8; 512];
        f.read_exact_at(&mut back, (8 + 63) * SECTOR).unwrap();
        assert_eq!(back, [7u8; 512]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_log_for_another_window_or_not_roots_own_is_refused() {
        let (p, f) = image("trust", 64 << 10);
        let refused = |why: &str| {
            let e = recover(&p, 8, Some(64)).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{why}: {e:#}");
            let mut back = vec![0u8; 64 << 10];
            f.read_exact_at(&mut back, 0).unwrap();
            assert!(back.iter().all(|&b| b == 0), "{why}: nothing replayed");
        };
        // Another window of the image: its records would land elsewhere.
        planted_log(&p, 0, &[(1, 1, 5)]);
        refused("not this one");
        // Writable by others, or someone else's.
        planted_log(&p, 8 * SECTOR, &[(1, 1, 5)]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(log_path(&p), std::fs::Permissions::from_mode(0o666)).unwrap();
        refused("writable by group or others");
        std::fs::set_permissions(log_path(&p), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(log_path(&p), Some(65534), None).unwrap();
        refused("owned by uid 65534");
        // A link to a log elsewhere.
        let elsewhere = p.with_extension("elsewhere");
        std::fs::rename(log_path(&p), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, log_path(&p)).unwrap();
        refused("symbolic link");
        std::fs::remove_file(log_path(&p)).unwrap();
        std::fs::remove_file(elsewhere).unwrap();
        std::fs::remove_file(p).unwrap();
    }
}
