//! `aoe-ctl snapshot`: a crash-consistent point-in-time copy of an export while initiators
//! keep reading and writing. Where the image's filesystem can reflink (XFS, btrfs) the copy
//! is one FICLONE: instant, and atomic with respect to writes (the clone takes the inode's
//! locks and writes dirty pages back first). Elsewhere the export's writes go to a
//! copy-on-write overlay (`overlay.rs`) while the frozen image is copied, and are merged
//! back afterwards. docs/operations.md says what a snapshot guarantees and costs.
//!
//! The queue workers see a snapshot through the export's `Hook`: one atomic load per
//! storage request, and only while a snapshot runs do requests take the slow path through
//! the overlay (synchronous I/O under the overlay's lock).

mod client;
mod reflink;
mod serve;
mod take;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::serve::backend::{BackendError, Kind};

pub use client::run;
pub use crate::serve::backend::{log_path, recover};
pub use serve::answer;
pub use take::take;

use crate::serve::backend::Overlay;

/// How to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Reflink where the filesystem can, else the overlay.
    Auto,
    /// Only a reflink: fail where the filesystem cannot.
    Reflink,
    /// The overlay, even where a reflink would do (slower; for tests and odd filesystems).
    Overlay,
}

/// One line the daemon sends while a snapshot runs, and the last one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum Line {
    Progress { phase: Phase, done: u64, total: u64 },
    Done(Outcome),
    Error { error: String },
    NotServed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the storage I/O in flight at the snapshot point.
    Barrier,
    /// Copying the frozen image: bytes copied of the export's.
    Copy,
    /// Merging the overlay back: bytes merged of the log's.
    Merge,
}

/// What a finished snapshot did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// "reflink" or "overlay".
    pub method: String,
    pub bytes: u64,
    /// Bytes written into the overlay while the copy ran (and merged back).
    pub overlaid: u64,
    pub seconds: f64,
}

/// An export's snapshot state, as its queue workers see it.
#[derive(Default)]
pub struct Hook {
    /// Storage requests take the overlay; read by every request (SeqCst: see `take`).
    active: AtomicBool,
    /// A snapshot is running (at most one per export).
    running: AtomicBool,
    overlay: Mutex<Option<Arc<Overlay>>>,
}

impl Hook {
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
