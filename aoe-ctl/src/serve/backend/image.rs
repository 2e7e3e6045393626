//! What every queue worker shares about one image file: the order of the writes in flight
//! to it, and whether it failed closed after a sync error.
//!
//! **Order.** Two writes to the same bytes must land in the order they were started: a
//! retransmitted write parked in io-wq must not land after the initiator's next write to
//! that sector. Each write (a merged run) takes a ticket in arrival order and starts only
//! when no earlier ticket overlaps it, whichever queue holds that one.
//!
//! **Failing closed.** Linux reports a writeback error once per open file description and
//! may mark the failed pages clean, so after one failed fdatasync a later one can return 0
//! for a write that is not on disk (PostgreSQL's "fsyncgate", 2018). After any sync error
//! every write waiting for a sync fails and every later I/O of the image fails, on every
//! queue, until the export is reopened.

use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::BackendError;

/// The error of every I/O after a sync failed.
pub const SYNC_FAILED: BackendError = BackendError::FailedClosed {
    why: "a sync of the image failed, so acknowledged writes may be lost",
};

pub struct Image {
    id: u64,
    path: PathBuf,
    failed: AtomicBool,
    /// Its filesystem refused a read with RWF_NOWAIT (tmpfs, FUSE, NFS: no FMODE_NOWAIT).
    no_nowait: AtomicBool,
    sync_errors: AtomicU64,
    writes: Mutex<Writes>,
    /// Syncs of the synchronous path, one at a time: the first to see an error marks the
    /// image failed before the next can return 0 for the same lost page.
    sync_lock: Mutex<()>,
}

/// Writes in flight to the image: (ticket, first byte, end byte), in ticket order.
#[derive(Default)]
struct Writes {
    next: u64,
    live: Vec<(u64, u64, u64)>,
}

impl Image {
    pub fn new(path: &Path) -> Arc<Image> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Arc::new(Image {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
            failed: AtomicBool::new(false),
            no_nowait: AtomicBool::new(false),
            sync_errors: AtomicU64::new(0),
            writes: Mutex::new(Writes::default()),
            sync_lock: Mutex::new(()),
        })
    }

    /// Unique for the life of the process (descriptor numbers are reused, this is not).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A sync failed: every I/O fails until the export is reopened.
    #[inline]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// `SYNC_FAILED` once a sync has failed.
    #[inline]
    pub fn check(&self) -> Result<(), BackendError> {
        if self.failed() {
            return Err(SYNC_FAILED);
        }
        Ok(())
    }

    /// May reads be tried without waiting for the disk (RWF_NOWAIT)?
    pub fn nowait_reads(&self) -> bool {
        !self.no_nowait.load(Ordering::Relaxed)
    }

    /// The filesystem refused RWF_NOWAIT: reads wait from now on.
    pub fn no_nowait_reads(&self) {
        self.no_nowait.store(true, Ordering::Relaxed);
    }

    /// Failed syncs so far (a counter for `stats` and the metrics).
    pub fn sync_errors(&self) -> u64 {
        self.sync_errors.load(Ordering::Relaxed)
    }

    /// A sync (`call`) failed with `e`: count it and fail closed (logged once).
    pub fn sync_failed(&self, call: &str, e: &io::Error) {
        self.sync_errors.fetch_add(1, Ordering::Relaxed);
        if !self.failed.swap(true, Ordering::SeqCst) {
            log::error!(
                "{}: {call} failed ({e}); failing closed: writes waiting for it and every later \
                 I/O fail until the export is reopened (restart, or a reload that changes it)",
                self.path.display()
            );
        }
    }

    /// Run a sync of the synchronous path: one at a time per image, and a success that
    /// follows another path's failure still fails.
    pub fn sync(
        &self,
        call: &'static str,
        f: impl FnOnce() -> io::Result<()>,
    ) -> Result<(), BackendError> {
        let _one = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.check()?;
        if let Err(e) = f() {
            self.sync_failed(call, &e);
            return Err(BackendError::Syscall { call, source: e });
        }
        self.check()
    }

    /// Take a ticket for a write of file bytes `start..end`; true when it may start now.
    pub fn enter(&self, start: u64, end: u64) -> (u64, bool) {
        let mut w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = w.next;
        w.next += 1;
        let clear = !w.live.iter().any(|&(_, s, e)| s < end && start < e);
        w.live.push((ticket, start, end));
        (ticket, clear)
    }

    /// May the write holding `ticket` (bytes `start..end`) start: no earlier one overlaps?
    pub fn may_start(&self, ticket: u64, start: u64, end: u64) -> bool {
        let w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        !w.live
            .iter()
            .take_while(|&&(t, _, _)| t < ticket)
            .any(|&(_, s, e)| s < end && start < e)
    }

    /// Writes holding a ticket now.
    pub fn writes_in_flight(&self) -> usize {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .len()
    }

    /// The write holding `ticket` finished (landed or failed).
    pub fn leave(&self, ticket: u64) {
        let mut w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = w.live.iter().position(|&(t, _, _)| t == ticket) {
            w.live.remove(i);
        }
    }
}

/// An `Image` as the rings hold it: a pointer beside the raw descriptors of `IoTarget`, valid
/// while the backend lives (a request keeps its export, and so the backend, until done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef(NonNull<Image>);

// SAFETY: it stands for a shared reference to an `Image`, which is Sync.
unsafe impl Send for ImageRef {}
// SAFETY: as above.
unsafe impl Sync for ImageRef {}

impl ImageRef {
    pub fn new(image: &Arc<Image>) -> ImageRef {
        ImageRef(NonNull::from(&**image))
    }

    /// # Safety
    /// The backend whose `io_target` gave this is still alive.
    pub unsafe fn get<'a>(self) -> &'a Image {
        // SAFETY: the caller's promise.
        unsafe { self.0.as_ref() }
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("failed", &self.failed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_overlapping_write_waits_for_the_earlier_one() {
        let i = Image::new(Path::new("x"));
        let (a, clear) = i.enter(0, 4096);
        assert!(clear);
        let (b, clear) = i.enter(4096, 8192);
        assert!(clear, "no overlap");
        let (c, clear) = i.enter(1024, 2048);
        assert!(!clear, "overlaps a");
        let (d, clear) = i.enter(8000, 9000);
        assert!(!clear, "overlaps b");
        i.leave(a);
        assert!(i.may_start(c, 1024, 2048));
        assert!(!i.may_start(d, 8000, 9000));
        i.leave(b);
        assert!(i.may_start(d, 8000, 9000));
    }

    #[test]
    fn a_failed_sync_fails_every_later_one() {
        let i = Image::new(Path::new("x"));
        let e = i
            .sync("fdatasync", || Err(io::Error::from_raw_os_error(libc::EIO)))
            .unwrap_err();
        assert_eq!(e.reason(), "io");
        // The kernel reports the error once: the next sync "succeeds" and must not count.
        let e = i.sync("fdatasync", || Ok(())).unwrap_err();
        assert_eq!(e.reason(), "failed_closed");
        assert!(i.failed());
        assert_eq!(i.sync_errors(), 1);
    }
}
