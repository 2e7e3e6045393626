//! The pinned maps through which a second `aoe-ctl` (`status`, `stats`) sees a running
//! target; edits go to the daemon's control socket instead (`crate::daemon::control`).
//! `<bpffs>/aoe/<interface>/` holds the classifier's EXPORTS (entries with the access lists),
//! COUNTERS and EXPORT_COUNTERS, plus two maps only user space uses: `info` (the interface:
//! data path, queues, owner pid, start time, socket drops) and `exports` (each export's
//! options and user-space counters, refreshed by the daemon twice a second).
//!
//! The bpffs is /sys/fs/bpf unless `AOE_BPFFS` names another mount (tests use one per lab:
//! `ip netns exec` gives each process a fresh /sys without the host's bpffs).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aoe_common::maps::{ExportKey, MAX_EXPORTS};
use aya::maps::{Array, HashMap, MapData};

/// Where the bpffs is when `AOE_BPFFS` does not say.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Columns of `ExportRecord::stats`, as `ExportStats` counts them.
pub const STAT_NAMES: [&str; 19] = [
    "frames",
    "reads",
    "writes",
    "bytes_read",
    "bytes_written",
    "errors_ata",
    "errors_aoe",
    "config_answered_user",
    "dropped_acl_user",
    "dropped_config_mismatch_user",
    "errors_storage_out_of_range",
    "errors_storage_unaligned",
    "errors_storage_io",
    "errors_storage_no_space",
    "errors_storage_short",
    "errors_storage_sigbus",
    "errors_storage_concurrent_fault",
    "errors_storage_failed_closed",
    "errors_storage_shrunk",
];

/// Export option flags in `ExportRecord::flags`.
pub const FLAG_READ_ONLY: u32 = 1;
/// Writes acknowledged from the page cache (`--write-back`).
pub const FLAG_WRITE_BACK: u32 = 2;
pub const FLAG_DIRECT: u32 = 4;

/// One interface a process serves.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IfaceInfo {
    pub pid: u32,
    pub queues: u32,
    pub mtu: u32,
    /// Times the interface was removed while served (and came back).
    pub removed: u32,
    /// Unix seconds.
    pub started: u64,
    /// Frames the workers handled, replies they sent, frames dropped at their sockets.
    pub handled: u64,
    pub replied: u64,
    pub socket_dropped: u64,
    /// "xdp native", "xdp skb" or "afpacket", NUL padded.
    pub mode: [u8; 16],
}

/// One export on an interface.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExportRecord {
    pub shelf: u16,
    pub slot: u8,
    pub _pad: u8,
    pub flags: u32,
    pub buffers: u32,
    /// Its row in EXPORT_COUNTERS.
    pub row: u32,
    pub offset: u64,
    /// Served (range checks, IDENTIFY).
    pub sectors: u64,
    /// What the backing store held from the offset at the last look: less than `sectors`
    /// when it shrank under the export.
    pub store_sectors: u64,
    /// Unix seconds.
    pub started: u64,
    pub stats: [u64; STAT_NAMES.len()],
    /// The image path, NUL padded (cut at 255 bytes).
    pub path: [u8; 256],
}

// SAFETY: #[repr(C)] structs of integers and byte arrays without padding holes.
unsafe impl aya::Pod for IfaceInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for ExportRecord {}
const _: () = assert!(std::mem::size_of::<IfaceInfo>() == 64);
const _: () = assert!(std::mem::size_of::<ExportRecord>() == 48 + 8 * STAT_NAMES.len() + 256);

/// `<bpffs>/aoe`.
pub fn root() -> PathBuf {
    std::env::var_os("AOE_BPFFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS))
        .join("aoe")
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data, and c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mount a bpffs where the pins go when none is there (a system without systemd's mount).
fn ensure_bpffs() -> Result<PathBuf> {
    let root = root();
    let base = root.parent().unwrap().to_path_buf();
    if !is_bpffs(&base) {
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let c = std::ffi::CString::new(base.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C strings; a bpffs has no source device.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mounting a bpffs on {}", base.display()));
        }
        log::info!("mounted a bpffs on {}", base.display());
    }
    Ok(root)
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pins of one interface, owned by the process serving it; removed on drop.
pub struct Pins {
    dir: PathBuf,
    info: Array<MapData, IfaceInfo>,
    records: HashMap<MapData, ExportKey, ExportRecord>,
}

impl Pins {
    /// Make `<bpffs>/aoe/<iface>/` and pin the classifier's maps there (with `pin`), plus
    /// `info` and `exports`. Pins a dead process left behind are removed; a live owner is
    /// an error.
    pub fn create(iface: &str, pin: impl FnOnce(&Path) -> Result<()>) -> Result<Pins> {
        let dir = ensure_bpffs()?.join(iface);
        if dir.exists() {
            if let Some(owner) = Served::open(&dir).ok().map(|i| i.info.pid) {
                if alive(owner) && owner != std::process::id() {
                    bail!(
                        "{iface} is already served by aoe-ctl pid {owner} ({})",
                        dir.display()
                    );
                }
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale pins in {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let made = (|| -> Result<Pins> {
            pin(&dir)?;
            // Pinning consumes the typed map: pin it, then open the pin.
            Array::<MapData, IfaceInfo>::create(1, 0)?.pin(dir.join("info"))?;
            HashMap::<MapData, ExportKey, ExportRecord>::create(MAX_EXPORTS, 0)?
                .pin(dir.join("exports"))?;
            let info =
                Array::try_from(aya::maps::Map::Array(MapData::from_pin(dir.join("info"))?))?;
            let records = HashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(
                dir.join("exports"),
            )?))?;
            Ok(Pins {
                dir: dir.clone(),
                info,
                records,
            })
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    /// Publish the interface and its exports (records of exports not in `records` go).
    pub fn publish(&mut self, info: IfaceInfo, records: &[ExportRecord]) -> Result<()> {
        self.info.set(0, info, 0)?;
        let keep: Vec<ExportKey> = records
            .iter()
            .map(|r| ExportKey::new(r.shelf, r.slot))
            .collect();
        let stale: Vec<ExportKey> = self
            .records
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(k))
            .collect();
        for k in stale {
            let _ = self.records.remove(&k);
        }
        for (k, r) in keep.iter().zip(records) {
            self.records.insert(k, r, 0)?;
        }
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        // Unlinking the pins is enough: the maps go with the last descriptor.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A served interface as a second process sees it.
pub struct Served {
    pub name: String,
    pub dir: PathBuf,
    pub info: IfaceInfo,
    pub records: Vec<ExportRecord>,
}

impl Served {
    fn open(dir: &Path) -> Result<Served> {
        let info: Array<MapData, IfaceInfo> =
            Array::try_from(aya::maps::Map::Array(MapData::from_pin(dir.join("info"))?))?;
        let records: HashMap<MapData, ExportKey, ExportRecord> = HashMap::try_from(
            aya::maps::Map::HashMap(MapData::from_pin(dir.join("exports"))?),
        )?;
        let mut list: Vec<ExportRecord> = records
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, v)| v)
            .collect();
        list.sort_by_key(|r| (r.shelf, r.slot));
        Ok(Served {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: dir.to_path_buf(),
            info: info.get(&0, 0)?,
            records: list,
        })
    }

    /// Every interface a live aoe-ctl serves, by name.
    pub fn all() -> Result<Vec<Served>> {
        let root = root();
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if let Ok(i) = Served::open(&e.path()) {
                if alive(i.info.pid) {
                    out.push(i);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A pinned map of this interface's classifier.
    pub fn map(&self, name: &str) -> Result<MapData> {
        MapData::from_pin(self.dir.join(name))
            .map_err(|e| anyhow!("{} has no pinned {name} ({e})", self.name))
    }

    pub fn mode(&self) -> String {
        text(&self.info.mode)
    }
}

/// A NUL-padded byte field as text.
pub fn text(b: &[u8]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// Copy `s` into a NUL-padded field, cut to fit.
pub fn fill(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len() - 1);
    field[..n].copy_from_slice(&s[..n]);
    field[n..].fill(0);
}
