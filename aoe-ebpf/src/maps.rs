//! The maps this program shares with aoe-ctl (types from aoe-common).

use aoe_common::maps::{
    counter, export_counter, Budget, ExportEntry, ExportKey, GrantKey, Settings, MAX_EXPORTS,
    MAX_GRANTS, MAX_QUEUES,
};
use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, XskMap},
};

/// Exports served on this interface, by shelf/slot.
#[map]
pub static EXPORTS: HashMap<ExportKey, ExportEntry> = HashMap::with_max_entries(MAX_EXPORTS, 0);

/// Interface-wide settings (one entry).
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `aoe_common::maps::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-export counters, `export_counter::COUNT` per export (see `count_export`).
#[map]
pub static EXPORT_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_EXPORTS * export_counter::COUNT, 0);

/// Who may have a broadcast answered, when several exports share the interface (see
/// `GrantKey`). Allocated as entries are added: most tables hold a few.
#[map]
pub static GRANTS: HashMap<GrantKey, u32> =
    HashMap::with_max_entries(MAX_GRANTS, BPF_F_NO_PREALLOC);

/// The broadcast budget of each CPU (see `aoe_common::maps::Budget`).
#[map]
pub static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// One AF_XDP socket per rx queue.
#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Count `column` (an `export_counter`) for the export whose entry is `entry`.
#[inline(always)]
pub fn count_export(entry: &ExportEntry, column: u32) {
    let row = entry.index;
    if row >= MAX_EXPORTS {
        return;
    }
    if let Some(p) = EXPORT_COUNTERS.get_ptr_mut(row * export_counter::COUNT + column) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}
