//! The daemon's side of `aoe-ctl snapshot` (the command is `crate::admin::snapshot`): a
//! crash-consistent point-in-time copy of an export while initiators keep reading and
//! writing. Where the image's filesystem can reflink (XFS, btrfs) the copy is one FICLONE:
//! instant, and atomic with respect to writes (the clone takes the inode's locks and writes
//! dirty pages back first). Elsewhere the export's writes go to a copy-on-write overlay
//! (`crate::serve::backend::Overlay`) while the frozen image is copied, and are merged back
//! afterwards. docs/operations.md says what a snapshot guarantees and costs.
//!
//! The queue workers see a snapshot through the export's `SnapshotHook`
//! (`serve/backend/overlay_hook.rs`): one atomic load per storage request. This folder holds
//! the protocol of the control socket (below), taking one (`take`), and answering the
//! command (`answer`).

mod answer;
mod reflink;
mod take;

use serde::{Deserialize, Serialize};

pub use answer::answer;
pub use take::take;

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
