//! One exported device: its address, backing store, options and mutable state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use aoe_common::wire::Mac;

use super::access::{Access, Lists};
use super::backend::{Backend, BackendError, Extent};
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
pub const STORAGE_REASONS: [&str; 9] = [
    "out_of_range",
    "unaligned",
    "io",
    "no_space",
    "short",
    "sigbus",
    "concurrent_fault",
    "failed_closed",
    "shrunk",
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
    /// Its kernel cache, and the caches its writes must invalidate.
    pub cache: super::kernel_cache::CacheLink,
    config: RwLock<Vec<u8>>,
    serial: [u8; 20],
    /// Unix second of the last storage error logged, and errors not logged since.
    last_logged: AtomicU64,
    unlogged: AtomicU64,
    size: Size,
}

/// What the export serves against what its store holds, refreshed by a look at the store
/// (`Export::refresh_size`), never per request.
#[derive(Debug)]
struct Size {
    /// Sectors a request may reach without more checks: the served size, or less when the
    /// store shrank under it.
    usable: AtomicU64,
    /// Sectors the store held from the offset at the last look.
    store: AtomicU64,
    /// Served sectors initiators were last told of (the daemon announces a change).
    announced: AtomicU64,
    /// One look at a time; the last look could not measure the store.
    looking: Mutex<bool>,
}

/// What a look at the store found, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// Served before the look.
    pub before: u64,
    pub now: Extent,
}

impl Resized {
    /// The store holds less than is served: what lies past its end fails.
    pub fn shrunk(&self) -> bool {
        self.now.store < self.now.served
    }
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
        let sectors = backend.sectors();
        let s = format!("AOE{}.{}-{:x}", opts.shelf, opts.slot, sectors);
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
            cache: Default::default(),
            config: RwLock::new(opts.config),
            serial,
            last_logged: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            size: Size {
                usable: AtomicU64::new(sectors),
                store: AtomicU64::new(sectors),
                announced: AtomicU64::new(sectors),
                looking: Mutex::new(false),
            },
        }
    }

    /// Sectors served: range checks and IDENTIFY.
    pub fn sectors(&self) -> u64 {
        self.backend.sectors()
    }

    /// Sectors a request may reach without more checks (one load: every request asks). Less
    /// than `sectors` while the store holds less than is served.
    #[inline]
    pub fn usable_sectors(&self) -> u64 {
        self.size.usable.load(Ordering::Acquire)
    }

    /// Sectors the store held from the offset at the last look.
    pub fn store_sectors(&self) -> u64 {
        self.size.store.load(Ordering::Relaxed)
    }

    /// Look at the store's size and follow it (`Backend::refresh`): a store that grew is
    /// served at its new size, unless the export has a length of its own; one that shrank
    /// is not followed, what lies past its end fails. Changes are logged.
    pub fn refresh_size(&self) -> std::io::Result<Resized> {
        let mut failed = self.size.looking.lock().unwrap();
        self.look(&mut failed)
    }

    /// `refresh_size` unless another look is under way (that one will do): for the queue
    /// workers, which must not wait.
    pub fn refresh_size_now(&self) {
        if let Ok(mut failed) = self.size.looking.try_lock() {
            let _ = self.look(&mut failed);
        }
    }

    fn look(&self, failed: &mut bool) -> std::io::Result<Resized> {
        let before = Extent {
            served: self.sectors(),
            store: self.store_sectors(),
            fixed: false,
        };
        let now = match self.backend.refresh() {
            Ok(e) => e,
            Err(e) => {
                if !std::mem::replace(failed, true) {
                    log::warn!(
                        "{}: cannot measure {} ({e}); still serving {} sectors",
                        self.name(),
                        self.path.display(),
                        before.served
                    );
                }
                return Err(e);
            }
        };
        *failed = false;
        let now = Extent {
            served: self.sectors(),
            ..now
        };
        self.size.store.store(now.store, Ordering::Relaxed);
        if now.store != before.store {
            // Changed behind our back (truncated, rewritten): no kernel cache copy of it
            // can be trusted.
            self.cache.forget_all();
        }
        // After the backend grew: a request passing this check finds the backend as large.
        self.size
            .usable
            .store(now.served.min(now.store), Ordering::Release);
        let r = Resized {
            before: before.served,
            now,
        };
        if now.served != before.served {
            log::info!(
                "{}: {} grew: served at {} sectors ({} MiB) instead of {}",
                self.name(),
                self.path.display(),
                now.served,
                now.served >> 11,
                before.served
            );
        }
        let was_short = before.store < before.served;
        if r.shrunk() && (!was_short || now.store != before.store) {
            log::error!(
                "{}: {} shrank to {} sectors, below the {} served: not followed (the \
                 initiator's filesystem would lose its end); reads and writes past sector {} \
                 fail until it holds {} sectors again",
                self.name(),
                self.path.display(),
                now.store,
                now.served,
                now.store,
                now.served
            );
        } else if !r.shrunk() && was_short {
            log::info!(
                "{}: {} holds all {} served sectors again",
                self.name(),
                self.path.display(),
                now.served
            );
        }
        Ok(r)
    }

    /// The served size, when initiators have not been told of it yet (then they are taken
    /// to have been: the caller announces it).
    pub fn unannounced(&self) -> Option<u64> {
        let now = self.sectors();
        (self.size.announced.swap(now, Ordering::Relaxed) != now).then_some(now)
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
