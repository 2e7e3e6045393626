//! An export's snapshot state, as its queue workers see it: one atomic load per storage
//! request, and only while a snapshot runs (`crate::daemon::snapshot`) do requests take
//! the slow path through the overlay (synchronous I/O under the overlay's lock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{BackendError, Kind, Overlay};

/// An export's snapshot state, as its queue workers see it.
#[derive(Default)]
pub struct SnapshotHook {
    /// Storage requests take the overlay; read by every request (SeqCst: see `take`).
    active: AtomicBool,
    /// A snapshot is running (at most one per export).
    running: AtomicBool,
    overlay: Mutex<Option<Arc<Overlay>>>,
}

impl SnapshotHook {
    /// Start a snapshot; false when one is running already (at most one per export).
    pub fn begin(&self) -> bool {
        !self.running.swap(true, Ordering::SeqCst)
    }

    /// The snapshot started with `begin` is over.
    pub fn end(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    /// Send the export's storage requests to `o` from now on (SeqCst: the snapshot point
    /// reads the in-flight gauge after this).
    pub fn divert(&self, o: Arc<Overlay>) {
        *self.overlay.lock().unwrap() = Some(o);
        self.active.store(true, Ordering::SeqCst);
    }

    /// Storage requests take the export's own way again (the overlay is merged back).
    pub fn restore(&self) {
        self.active.store(false, Ordering::SeqCst);
    }

    /// Must storage requests go through `io` now?
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    fn overlay(&self) -> Result<Arc<Overlay>, BackendError> {
        self.overlay
            .lock()
            .unwrap()
            .clone()
            .ok_or(BackendError::FailedClosed {
                why: "snapshot without an overlay",
            })
    }

    /// A request's storage I/O, done now through the overlay: `data` are its buffers, in
    /// order (a write's payload, or where a read's sectors go). None for a write once the
    /// overlay is merged back: it goes the export's own way.
    ///
    /// # Safety
    /// Every buffer in `data` is valid for its length, and nobody else touches it during
    /// the call.
    pub unsafe fn io(
        &self,
        kind: Kind,
        lba: u64,
        data: &[(*mut u8, usize)],
    ) -> Option<Result<(), BackendError>> {
        let o = match self.overlay() {
            Ok(o) => o,
            Err(e) => return Some(Err(e)),
        };
        let total: usize = data.iter().map(|d| d.1).sum();
        // SAFETY: the caller's promise.
        let part = |&(p, n): &(*mut u8, usize)| unsafe { std::slice::from_raw_parts_mut(p, n) };
        Some(match kind {
            Kind::Flush => o.flush(),
            Kind::Write => {
                let mut all = Vec::with_capacity(total);
                data.iter().for_each(|d| all.extend_from_slice(part(d)));
                return o
                    .write(lba, &all)
                    .map(|taken| taken.then_some(()))
                    .transpose();
            }
            Kind::Read if data.len() == 1 => o.read(lba, part(&data[0])),
            Kind::Read => {
                let mut all = vec![0u8; total];
                o.read(lba, &mut all).map(|()| {
                    let mut at = 0;
                    for d in data {
                        let out = part(d);
                        out.copy_from_slice(&all[at..at + out.len()]);
                        at += out.len();
                    }
                })
            }
        })
    }

    /// `io` for the synchronous engine's slices.
    pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.overlay()?.read(lba, buf)
    }

    /// None once the overlay is merged back (see `io`).
    pub fn write(&self, lba: u64, parts: &[&[u8]]) -> Option<Result<(), BackendError>> {
        let all: Vec<u8> = parts.concat();
        match self.overlay() {
            Ok(o) => o
                .write(lba, &all)
                .map(|taken| taken.then_some(()))
                .transpose(),
            Err(e) => Some(Err(e)),
        }
    }

    pub fn flush(&self) -> Result<(), BackendError> {
        self.overlay()?.flush()
    }
}
