//! One exported device: its address, backing store, options and mutable state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use aoe_common::wire::Mac;

use super::access::{Access, Lists};
use super::backend::Backend;
use super::backend::BackendError;
use super::latency::Histogram;

/// Per-export counters (relaxed atomics; read by `stats`).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Frames the engine was handed for this export.
    pub frames: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub ata_errors: AtomicU64,
    pub aoe_errors: AtomicU64,
    pub config_replies: AtomicU64,
    /// Dropped here: source MAC not on the mask list (the kernel drops most before).
    pub dropped_acl: AtomicU64,
    /// Query Config tests that did not match (no reply is the answer).
    pub dropped_config_mismatch: AtomicU64,
    /// Backend failures, by `BackendError::reason` in the order of `STORAGE_REASONS`.
    pub storage_errors: [AtomicU64; STORAGE_REASONS.len()],
    /// Request latency by kind, in the order of `latency::KINDS`.
    pub latency: [Histogram; 3],
    /// Requests waiting for storage I/O now (a gauge).
    pub storage_in_flight: AtomicU64,
}

/// The reasons backend failures are counted by (`BackendError::reason`).
pub const STORAGE_REASONS: [&str; 8] = [
    "out_of_range",
    "unaligned",
    "io",
    "no_space",
    "short",
    "sigbus",
    "concurrent_fault",
    "failed_closed",
];

impl ExportStats {
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters in the order of `crate::pinned::STAT_NAMES`.
    pub fn snapshot(&self) -> [u64; 10 + STORAGE_REASONS.len()] {
        let mut out = [0; 10 + STORAGE_REASONS.len()];
        let named = [
            &self.frames,
            &self.reads,
            &self.writes,
            &self.bytes_read,
            &self.bytes_written,
            &self.ata_errors,
            &self.aoe_errors,
            &self.config_replies,
            &self.dropped_acl,
            &self.dropped_config_mismatch,
        ];
        for (o, c) in out
            .iter_mut()
            .zip(named.into_iter().chain(&self.storage_errors))
        {
            *o = c.load(Ordering::Relaxed);
        }
        out
    }
}

/// Default buffer count advertised to initiators: 16, as vblade. The Linux aoe driver (6.1)
/// keeps min(bufcnt, 64) frames in flight; with 64 against a fast target in a slow guest it
/// stalled in half of the interop runs (docs/interop.md), with 16 never.
pub const DEFAULT_BUFFERS: u16 = 16;

pub struct Export {
    pub shelf: u16,
    pub slot: u8,
    pub backend: Box<dyn Backend>,
    /// Where the backend came from, and how (for `status`).
    pub path: PathBuf,
    pub offset: u64,
    pub direct: bool,
    /// Unix seconds when it started serving.
    pub started: u64,
    pub read_only: bool,
    /// Acknowledge writes from the page cache instead of once on stable storage.
    pub write_back: bool,
    /// Buffer count advertised in config replies.
    pub buffers: u16,
    pub access: Access,
    pub stats: ExportStats,
    /// Where storage requests go while `aoe-ctl snapshot` runs.
    pub snapshot: super::backend::SnapshotHook,
    config: RwLock<Vec<u8>>,
    serial: [u8; 20],
    /// Unix second of the last storage error logged, and errors not logged since.
    last_logged: AtomicU64,
    unlogged: AtomicU64,
}

/// An export's config string and access lists: what initiators and `aoe-ctl acl` change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlState {
    pub config: Vec<u8>,
    pub lists: Lists,
}

/// What `Export::new` needs besides the backend.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub shelf: u16,
    pub slot: u8,
    pub path: PathBuf,
    pub offset: u64,
    pub direct: bool,
    pub read_only: bool,
    pub write_back: bool,
    pub buffers: u16,
    pub allow: Vec<Mac>,
    pub config: Vec<u8>,
}

impl ExportOptions {
    /// Read-write, durable, vblade's buffer count, open to every MAC, no string.
    pub fn new(shelf: u16, slot: u8) -> Self {
        ExportOptions {
            shelf,
            slot,
            path: PathBuf::new(),
            offset: 0,
            direct: false,
            read_only: false,
            write_back: false,
            buffers: DEFAULT_BUFFERS,
            allow: vec![],
            config: vec![],
        }
    }
}

/// Firmware version reported in config replies and IDENTIFY.
pub const FIRMWARE_VERSION: u16 = 0x0001;
pub const FIRMWARE_STRING: &[u8] = concat!("aoe", env!("CARGO_PKG_VERSION")).as_bytes();
pub const MODEL: &[u8] = b"aoe-ctl XDP AoE target";

impl Export {
    /// `opts` comes checked (`crate::daemon::spec`): buffers of at least 2, at most
    /// `MAX_MASKS` MACs, a string of at most `CONFIG_STRING_MAX` bytes.
    pub fn new(opts: ExportOptions, backend: Box<dyn Backend>) -> Self {
        let mut serial = [b' '; 20];
        let s = format!("AOE{}.{}-{:x}", opts.shelf, opts.slot, backend.sectors());
        let n = s.len().min(20);
        serial[..n].copy_from_slice(&s.as_bytes()[..n]);
        Export {
            shelf: opts.shelf,
            slot: opts.slot,
            backend,
            path: opts.path,
            offset: opts.offset,
            direct: opts.direct,
            started: crate::pinned::unix_now(),
            read_only: opts.read_only,
            write_back: opts.write_back,
            buffers: opts.buffers,
            access: Access::new(opts.allow),
            stats: ExportStats::default(),
            snapshot: Default::default(),
            config: RwLock::new(opts.config),
            serial,
            last_logged: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    pub fn key(&self) -> aoe_common::maps::ExportKey {
        aoe_common::maps::ExportKey::new(self.shelf, self.slot)
    }

    /// `crate::pinned::FLAG_*`.
    pub fn flags(&self) -> u32 {
        use crate::pinned::{FLAG_DIRECT, FLAG_READ_ONLY, FLAG_WRITE_BACK};
        (if self.read_only { FLAG_READ_ONLY } else { 0 })
            | (if self.write_back { FLAG_WRITE_BACK } else { 0 })
            | (if self.direct { FLAG_DIRECT } else { 0 })
    }

    pub fn name(&self) -> String {
        format!("e{}.{}", self.shelf, self.slot)
    }

    /// Does a frame addressed to (shelf, slot), possibly broadcast, reach this export?
    pub fn matches(&self, shelf: u16, slot: u8) -> bool {
        (shelf == 0xFFFF || shelf == self.shelf) && (slot == 0xFF || slot == self.slot)
    }

    pub fn serial(&self) -> &[u8; 20] {
        &self.serial
    }

    pub fn config(&self) -> std::sync::RwLockReadGuard<'_, Vec<u8>> {
        self.config.read().unwrap()
    }

    pub fn config_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<u8>> {
        self.config.write().unwrap()
    }

    pub fn control_state(&self) -> ControlState {
        ControlState {
            config: self.config().clone(),
            lists: self.access.snapshot(),
        }
    }

    /// Put back a state taken with `control_state` (an edit that could not be kept).
    pub fn restore_control_state(&self, s: ControlState) {
        *self.config_mut() = s.config;
        self.access.set_lists(s.lists);
    }

    /// Every I/O fails until the export is reopened: a sync of its image failed (the
    /// kernel may have dropped the pages that failed), or its mapping cannot be trusted.
    pub fn failed_closed(&self) -> bool {
        self.backend.failed_closed()
    }

    /// Syncs of the image that failed.
    pub fn sync_errors(&self) -> u64 {
        self.backend.sync_errors()
    }

    /// Count a backend failure by reason and log it, at most once a second per export (a
    /// failing disk under load must not flood the log).
    pub fn storage_failed(&self, e: &BackendError) {
        let reason = e.reason();
        if let Some(i) = STORAGE_REASONS.iter().position(|r| *r == reason) {
            ExportStats::add(&self.stats.storage_errors[i], 1);
        }
        let now = crate::pinned::unix_now();
        let last = self.last_logged.load(Ordering::Relaxed);
        if now == last
            || self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let more = self.unlogged.swap(0, Ordering::Relaxed);
        if more > 0 {
            log::error!(
                "{}: {e} ({more} more storage errors in the last second)",
                self.name()
            );
        } else {
            log::error!("{}: {e}", self.name());
        }
    }
}
