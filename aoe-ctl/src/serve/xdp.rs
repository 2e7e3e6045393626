//! The user side of the kernel classifier: loads the embedded object, attaches it, and keeps
//! the export table, settings and XSKMAP in step with the exports.

use std::collections::HashMap as StdHashMap;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use aoe_common::maps::{
    counter, export_counter, ExportEntry, ExportKey, GrantKey, Settings, MAP_COUNTERS, MAP_EXPORTS,
    MAP_EXPORT_COUNTERS, MAP_GRANTS, MAP_SETTINGS, MAP_XSKS, MAX_EXPORTS, MAX_MASKS, MIN_REPLY,
    PROG_CLASSIFIER,
};
use aoe_common::wire::header::{HeaderRepr, FLAG_RESPONSE};
use aoe_common::wire::{Command, Frame, Mac};
use aya::maps::{Array, HashMap, PerCpuArray, XskMap};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp as XdpProgram, XdpMode};
use aya::Ebpf;

use super::access::Lists;
use super::config;
use super::export::Export;
use super::vlan_tags::{self, Stripping};
use super::xdp_native::Native;

/// The eBPF object built from aoe-ebpf by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/aoe"));

/// How to attach: `auto` tries native (driver) mode and falls back to generic (skb) mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeChoice {
    #[default]
    Auto,
    Native,
    Skb,
}

pub struct Classifier {
    bpf: Ebpf,
    /// "native", "skb", or "detached" (loaded for its maps only).
    pub mode: &'static str,
    pub fallback_reason: Option<String>,
    mac: Mac,
    max_sectors: usize,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The attachment in skb mode, while attached: the program can be detached and attached
    /// again (in the other mode) with its maps, and so its sockets and export table, kept.
    link: Option<XdpLinkId>,
    /// The native program (bound to its device, with the VLAN check) and its attachment.
    native: Option<Native>,
    /// Receive VLAN stripping this classifier turned off, to turn on again when it detaches.
    stripping: Option<Stripping>,
    /// The object's maps, which the native program shares.
    maps: Vec<(String, std::os::fd::OwnedFd)>,
    /// Each export's row in EXPORT_COUNTERS.
    rows: StdHashMap<ExportKey, u32>,
    /// What each export grants in `GRANTS`, and how many exports grant each key (the kernel
    /// holds the keys granted at least once).
    granted_by: StdHashMap<ExportKey, Vec<GrantKey>>,
    grants: StdHashMap<GrantKey, u32>,
}

fn program(bpf: &mut Ebpf) -> Result<&mut XdpProgram> {
    Ok(bpf
        .program_mut(PROG_CLASSIFIER)
        .ok_or_else(|| anyhow!("program {PROG_CLASSIFIER} missing"))?
        .try_into()?)
}

fn map<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    bpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

impl Classifier {
    /// Load the classifier into the kernel (not attached yet).
    pub fn load(mac: Mac, max_sectors: usize) -> Result<Self> {
        let mut bpf = Ebpf::load(OBJECT).context("loading the eBPF object")?;
        let maps = super::xdp_native::maps_of(&bpf)?;
        let logger = aya_log::EbpfLogger::init(&mut bpf).ok();
        program(&mut bpf)?
            .load()
            .context("the kernel refused the XDP program")?;
        Ok(Classifier {
            bpf,
            mode: "detached",
            fallback_reason: None,
            mac,
            max_sectors,
            logger,
            link: None,
            native: None,
            stripping: None,
            maps,
            rows: StdHashMap::new(),
            granted_by: StdHashMap::new(),
            grants: StdHashMap::new(),
        })
    }

    /// Load and attach the classifier to `iface`.
    pub fn attach(iface: &str, choice: ModeChoice, mac: Mac, max_sectors: usize) -> Result<Self> {
        let mut c = Classifier::load(mac, max_sectors)?;
        c.attach_to(iface, choice)?;
        Ok(c)
    }

    /// Attach the loaded program to `iface` (it must be detached).
    pub fn attach_to(&mut self, iface: &str, choice: ModeChoice) -> Result<()> {
        let index = crate::net::Interface::lookup(iface)?.index;
        let (mode, fallback_reason) = match choice {
            ModeChoice::Native => {
                self.attach_native(index)
                    .with_context(|| format!("attaching XDP in native mode to {iface}"))?;
                ("native", None)
            }
            ModeChoice::Skb => {
                self.attach_skb(iface)?;
                ("skb", None)
            }
            ModeChoice::Auto => match self.attach_native(index) {
                Ok(()) => ("native", None),
                Err(e) => {
                    self.attach_skb(iface).with_context(|| {
                        format!("attaching XDP to {iface} (native failed: {e:#})")
                    })?;
                    ("skb", Some(format!("{e:#}")))
                }
            },
        };
        self.mode = mode;
        self.fallback_reason = fallback_reason;
        // No socket is bound yet: nothing is served before the tags are visible.
        let reads_metadata =
            mode == "native" && self.vlan_metadata() && vlan_tags::reports_vlan_tags(index);
        if !reads_metadata {
            self.keep_tags_in_frames(iface);
        }
        Ok(())
    }

    /// The native program, bound to `index` (loaded once), attached in driver mode.
    fn attach_native(&mut self, index: u32) -> Result<()> {
        if self.native.is_none() {
            self.native = Some(Native::load(&self.maps, OBJECT, index)?);
        }
        self.native.as_mut().expect("loaded above").attach(index)
    }

    fn attach_skb(&mut self, iface: &str) -> Result<()> {
        let link = program(&mut self.bpf)?
            .attach(iface, XdpMode::Skb)
            .with_context(|| format!("attaching XDP in skb mode to {iface}"))?;
        self.link = Some(link);
        Ok(())
    }

    /// The classifier cannot read VLAN tags from this interface's metadata: turn receive
    /// stripping off, so that a tag stays in the frame where the classifier sees it, and say
    /// where that is not enough.
    fn keep_tags_in_frames(&mut self, iface: &str) {
        if self.stripping.is_none() {
            match Stripping::turn_off(iface) {
                Ok(Some(s)) => {
                    log::info!(
                        "{iface}: receive VLAN stripping turned off while XDP serves, so that \
                         the classifier sees VLAN tags; turned on again when it stops"
                    );
                    self.stripping = Some(s);
                }
                Ok(None) => {}
                Err(e) => log::warn!(
                    "{iface}: {e:#}: frames tagged for other VLANs reach this {} mode program \
                     untagged, and are served (use --mode afpacket on a trunk port)",
                    self.mode
                ),
            }
        }
        // A veth carries its peer's tags in metadata whatever its own features say.
        if vlan_tags::driver(iface).as_deref() == Some("veth") {
            log::warn!(
                "{iface}: a veth in {} mode cannot see VLAN tags its peer sends in metadata: \
                 frames tagged for other VLANs are served (native mode sees them)",
                self.mode
            );
        }
    }

    fn restore_stripping(&mut self) {
        if let Some(s) = self.stripping.take() {
            s.restore();
        }
    }

    /// Take the program off its interface; the maps (export table, sockets) stay.
    pub fn detach(&mut self) -> Result<()> {
        if let Some(n) = self.native.as_mut().filter(|n| n.attached()) {
            n.detach();
        }
        if let Some(link) = self.link.take() {
            program(&mut self.bpf)?
                .detach(link)
                .context("detaching the XDP program")?;
        }
        self.mode = "detached";
        self.restore_stripping();
        Ok(())
    }

    /// The mode it is attached in, if it is.
    pub fn attached(&self) -> Option<ModeChoice> {
        match self.mode {
            "native" => Some(ModeChoice::Native),
            "skb" => Some(ModeChoice::Skb),
            _ => None,
        }
    }

    /// The loaded program, with the maps this classifier keeps (tests run it on crafted
    /// frames with BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> Result<&mut XdpProgram> {
        program(&mut self.bpf)
    }

    /// Write an export's entry: config reply template, access lists, counter row, all from
    /// the export's current state (the daemon's owner thread is the only other writer, and
    /// it writes the same way, so the last write always carries the latest state).
    pub fn sync_export(&mut self, ex: &Export) -> Result<()> {
        let key = ExportKey::new(ex.shelf, ex.slot);
        let Some(&row) = self.rows.get(&key) else {
            return Ok(());
        };
        let entry = entry_for(ex, self.mac, self.max_sectors, row);
        let mut exports: HashMap<_, ExportKey, ExportEntry> =
            HashMap::try_from(map(&mut self.bpf, MAP_EXPORTS)?)?;
        exports
            .insert(key, entry, 0)
            .with_context(|| format!("updating the kernel entry of {}", ex.name()))?;
        self.grant(key, grants_of(ex))
            .with_context(|| format!("updating the broadcast grants of {}", ex.name()))
    }

    /// Make `GRANTS` hold what export `key` grants now (`new`; empty once it is gone): keys
    /// it adds first, then those no export grants any more, so no broadcast is refused
    /// meanwhile that both the old and the new lists let through.
    fn grant(&mut self, key: ExportKey, new: Vec<GrantKey>) -> Result<()> {
        let old = self.granted_by.remove(&key).unwrap_or_default();
        let mut map: HashMap<_, GrantKey, u32> =
            HashMap::try_from(map(&mut self.bpf, MAP_GRANTS)?)?;
        for g in &new {
            let n = self.grants.entry(*g).or_insert(0);
            *n += 1;
            if *n == 1 {
                map.insert(g, 1, 0)?;
            }
        }
        for g in &old {
            let Some(n) = self.grants.get_mut(g) else {
                continue;
            };
            *n -= 1;
            if *n == 0 {
                self.grants.remove(g);
                map.remove(g)?;
            }
        }
        if !new.is_empty() {
            self.granted_by.insert(key, new);
        }
        Ok(())
    }

    /// Each export's row in EXPORT_COUNTERS.
    pub fn rows(&self) -> StdHashMap<ExportKey, u32> {
        self.rows.clone()
    }

    /// Make the kernel know exactly these exports (rows for new ones, entries of removed
    /// ones deleted and their counters zeroed).
    pub fn set_exports(&mut self, exports: &[Arc<Export>]) -> Result<()> {
        let keep: std::collections::HashSet<ExportKey> = exports
            .iter()
            .map(|e| ExportKey::new(e.shelf, e.slot))
            .collect();
        let gone: Vec<(ExportKey, u32)> = self
            .rows
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .map(|(k, r)| (*k, *r))
            .collect();
        for (key, row) in gone {
            let mut m: HashMap<_, ExportKey, ExportEntry> =
                HashMap::try_from(map(&mut self.bpf, MAP_EXPORTS)?)?;
            let _ = m.remove(&key);
            self.grant(key, vec![])?;
            self.zero_row(row)?;
            self.rows.remove(&key);
        }
        // Free rows found in one pass: searching the table for each new export made
        // thousands of them cubic (42 s for 4,096).
        let mut used = vec![false; MAX_EXPORTS as usize];
        for &r in self.rows.values() {
            used[r as usize] = true;
        }
        let mut free = (0..MAX_EXPORTS).filter(|&r| !used[r as usize]);
        for ex in exports {
            let key = ExportKey::new(ex.shelf, ex.slot);
            if !self.rows.contains_key(&key) {
                let row = free
                    .next()
                    .ok_or_else(|| anyhow!("more than {MAX_EXPORTS} exports on one interface"))?;
                self.zero_row(row)?;
                self.rows.insert(key, row);
            }
        }
        for ex in exports {
            self.sync_export(ex)?;
        }
        let settings = Settings {
            export_count: exports.len() as u32,
            single: exports
                .first()
                .map(|e| ExportKey::new(e.shelf, e.slot))
                .unwrap_or_default(),
            mac: self.mac,
            _pad: [0; 2],
        };
        let mut s: Array<_, Settings> = Array::try_from(map(&mut self.bpf, MAP_SETTINGS)?)?;
        s.set(0, settings, 0)?;
        Ok(())
    }

    fn zero_row(&mut self, row: u32) -> Result<()> {
        let mut c: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map(&mut self.bpf, MAP_EXPORT_COUNTERS)?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for col in 0..export_counter::COUNT {
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
            c.set(row * export_counter::COUNT + col, zeros, 0)?;
        }
        Ok(())
    }

    /// Pin the maps a second `aoe-ctl` reads and edits into `dir` (on a bpffs).
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        for name in [MAP_EXPORTS, MAP_COUNTERS, MAP_EXPORT_COUNTERS] {
            map(&mut self.bpf, name)?
                .pin(dir.join(name))
                .with_context(|| format!("pinning {name} in {}", dir.display()))?;
        }
        Ok(())
    }

    /// Register the AF_XDP socket of rx queue `queue`.
    pub fn bind_socket(&mut self, queue: u32, fd: RawFd) -> Result<()> {
        let mut x: XskMap<_> = XskMap::try_from(map(&mut self.bpf, MAP_XSKS)?)?;
        x.set(queue, fd, 0)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
        Ok(())
    }

    /// Counters summed over CPUs, indexed by `aoe_common::maps::counter`.
    pub fn counters(&mut self) -> Result<[u64; counter::COUNT as usize]> {
        let c: PerCpuArray<_, u64> = PerCpuArray::try_from(map(&mut self.bpf, MAP_COUNTERS)?)?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = c.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// One export row of EXPORT_COUNTERS summed over CPUs, indexed by
    /// `aoe_common::maps::export_counter`.
    pub fn export_counters(&mut self, row: u32) -> Result<[u64; export_counter::COUNT as usize]> {
        let c: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map(&mut self.bpf, MAP_EXPORT_COUNTERS)?)?;
        let mut out = [0u64; export_counter::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = c
                .get(&(row * export_counter::COUNT + i as u32), 0)?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// Does the native program read VLAN tags from the driver's metadata (the kernel has the
    /// kfunc)?
    pub fn vlan_metadata(&self) -> bool {
        self.native.as_ref().is_some_and(|n| n.vlan_metadata)
    }

    /// Print whatever the program logged.
    pub fn flush_log(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        // Off its interface before stripping comes back on.
        let _ = self.detach();
    }
}

/// Whom export `ex` would answer a broadcast from (see `GrantKey`).
pub fn grants_of(ex: &Export) -> Vec<GrantKey> {
    let masks = ex.access.snapshot().masks;
    let macs = if masks.is_empty() {
        vec![GrantKey::OPEN]
    } else {
        masks
    };
    macs.into_iter()
        .flat_map(|m| [ex.shelf, GrantKey::ANY_SHELF].map(|s| GrantKey::new(m, s)))
        .collect()
}

/// The access lists an entry holds.
pub fn lists_of(e: &ExportEntry) -> Lists {
    let take = |list: &[[u8; 8]], n: u32| -> Vec<Mac> {
        list.iter()
            .take((n as usize).min(MAX_MASKS))
            .map(|m| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&m[..6]);
                mac
            })
            .collect()
    };
    Lists {
        masks: take(&e.masks, e.mask_count),
        reserve: take(&e.reserve, e.reserve_count),
    }
}

/// The kernel's view of an export; `row` is its row in EXPORT_COUNTERS.
pub fn entry_for(ex: &Export, mac: Mac, max_sectors: usize, row: u32) -> ExportEntry {
    let mut e = ExportEntry::zeroed();
    let n = config::write_reply(ex, max_sectors, &mut e.reply);
    HeaderRepr {
        dst: [0; 6],
        src: mac,
        flags: FLAG_RESPONSE,
        error: 0,
        shelf: ex.shelf,
        slot: ex.slot,
        command: Command::QueryConfig,
        tag: 0,
    }
    .emit(&mut Frame::new_unchecked(&mut e.reply[..]));
    e.reply_len = n.max(MIN_REPLY) as u32;
    e.config_len = ex.config().len() as u32;
    set_lists(&mut e, &ex.access.snapshot());
    e.index = row;
    e
}

/// Write the access lists into an entry (the inverse of `lists_of`).
pub fn set_lists(e: &mut ExportEntry, l: &Lists) {
    let put = |slots: &mut [[u8; 8]; MAX_MASKS], list: &[Mac]| {
        *slots = [[0; 8]; MAX_MASKS];
        for (slot, m) in slots.iter_mut().zip(list) {
            slot[..6].copy_from_slice(m);
        }
        list.len().min(MAX_MASKS) as u32
    };
    e.mask_count = put(&mut e.masks, &l.masks);
    e.reserve_count = put(&mut e.reserve, &l.reserve);
    e.reserved = u32::from(!l.reserve.is_empty());
}
