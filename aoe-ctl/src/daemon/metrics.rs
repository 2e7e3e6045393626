//! What this daemon tells Prometheus: its interfaces (kernel verdicts, worker frames, socket
//! drops), its exports (requests, bytes, errors by reason, latency histograms, storage I/O in
//! flight) and the control plane. Read fresh on each scrape, on the daemon's own thread,
//! so a series never mixes two configurations. Per-export series are labelled by export
//! only (one `Export` counts for every interface it is served on); kernel series carry
//! the interface too. No label names an initiator: their number is not bounded.

use aoe_common::maps::{counter, export_counter};

use super::Node;
use crate::prometheus::{Family, Kind, Value};
use crate::serve::export::STORAGE_REASONS;
use crate::serve::latency::{BOUNDS_US, KINDS};

/// Kernel per-export columns as `outcome` labels, indexed by `export_counter`.
const KERNEL_EXPORT_OUTCOMES: [&str; export_counter::COUNT as usize] = [
    "config_answered",
    "redirected",
    "dropped_acl",
    "dropped_config_mismatch",
    "cache_hit",
    "cache_miss",
    "cache_stale",
    "cache_torn",
    "cache_no_room",
];

impl Node {
    /// Every family, in a fixed order.
    pub fn metrics(&self) -> Vec<Family> {
        let mut info = Family::new("aoe_info", Kind::Info, "The aoe-ctl build serving.");
        info.push(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let mut control = Family::new(
            "aoe_control_dropped_requests_total",
            Kind::Counter,
            "State-changing AoE requests dropped because the control plane's queue was full.",
        );
        control.push(&[], super::owner::dropped() as f64);
        let mut out = vec![info, control];
        out.extend(self.interface_metrics());
        out.extend(self.export_metrics());
        out
    }

    fn interface_metrics(&self) -> Vec<Family> {
        let mut iface = Family::new(
            "aoe_interface_info",
            Kind::Info,
            "An interface served, and its data path.",
        );
        let mut queues = Family::new(
            "aoe_interface_queues",
            Kind::Gauge,
            "Receive queues served on the interface.",
        );
        let mut removed = Family::new(
            "aoe_interface_removals_total",
            Kind::Counter,
            "Times the interface went away while served.",
        );
        let mut received = Family::new(
            "aoe_worker_frames_total",
            Kind::Counter,
            "Frames the user-space workers took from their sockets.",
        );
        let mut per_queue = Family::new(
            "aoe_queue_frames_total",
            Kind::Counter,
            "Frames each receive queue's worker took from its socket: AoE frames carry no IP \
             header for RSS to hash, so a NIC may deliver them all to one queue.",
        );
        let mut replied = Family::new(
            "aoe_worker_replies_total",
            Kind::Counter,
            "Replies the user-space workers sent.",
        );
        let mut socket = Family::new(
            "aoe_socket_dropped_frames_total",
            Kind::Counter,
            "Frames the kernel redirected to a worker's socket but dropped there (rx ring full \
             or no fill buffer): the queue drops.",
        );
        let mut seen = Family::new(
            "aoe_kernel_frames_seen_total",
            Kind::Counter,
            "AoE frames the XDP classifier saw.",
        );
        let mut kernel = Family::new(
            "aoe_kernel_frames_total",
            Kind::Counter,
            "What the XDP classifier did with the AoE frames it saw, by outcome.",
        );
        let mut kernel_export = Family::new(
            "aoe_export_kernel_frames_total",
            Kind::Counter,
            "Frames for the export the XDP classifier answered, redirected or dropped, by outcome.",
        );
        for h in self.hosts.values() {
            let name = h.iface.name.as_str();
            let l = [("interface", name)];
            iface.push(&[("interface", name), ("mode", &h.mode())], 1.0);
            queues.push(&l, f64::from(h.queues()));
            removed.push(&l, f64::from(h.removed));
            let (r, p, d) = h.worker_totals();
            received.push(&l, r as f64);
            for (q, n) in h.queue_frames().iter().enumerate() {
                per_queue.push(&[("interface", name), ("queue", &q.to_string())], *n as f64);
            }
            replied.push(&l, p as f64);
            socket.push(&l, d as f64);
            let Some(k) = &h.kernel else { continue };
            let mut k = k.lock().unwrap();
            if let Ok(c) = k.counters() {
                seen.push(&l, c[counter::SEEN as usize] as f64);
                for (i, outcome) in counter::NAMES.iter().enumerate() {
                    if i != counter::SEEN as usize {
                        kernel.push(&[("interface", name), ("outcome", outcome)], c[i] as f64);
                    }
                }
            }
            let rows = k.rows();
            for ex in h.exports() {
                let Some(row) = rows.get(&ex.key()) else {
                    continue;
                };
                let Ok(c) = k.export_counters(*row) else {
                    continue;
                };
                let e = ex.name();
                for (outcome, v) in KERNEL_EXPORT_OUTCOMES.iter().zip(c) {
                    kernel_export.push(
                        &[("export", &e), ("interface", name), ("outcome", outcome)],
                        v as f64,
                    );
                }
            }
        }
        vec![
            iface,
            queues,
            removed,
            received,
            per_queue,
            replied,
            socket,
            seen,
            kernel,
            kernel_export,
        ]
    }

    fn export_metrics(&self) -> Vec<Family> {
        let mut info = Family::new(
            "aoe_export_info",
            Kind::Info,
            "An export served, and its options.",
        );
        let mut size = Family::new(
            "aoe_export_size_bytes",
            Kind::Gauge,
            "The export's size, as initiators are told.",
        );
        let mut store = Family::new(
            "aoe_export_store_bytes",
            Kind::Gauge,
            "What the backing store holds for the export: less than aoe_export_size_bytes \
             when it shrank under it (I/O past its end fails).",
        );
        let mut frames = Family::new(
            "aoe_frames_total",
            Kind::Counter,
            "Frames for the export handled in user space.",
        );
        let mut requests = Family::new(
            "aoe_requests_total",
            Kind::Counter,
            "ATA reads and writes completed without an error.",
        );
        let mut bytes_read = Family::new(
            "aoe_read_bytes_total",
            Kind::Counter,
            "Bytes read for initiators.",
        );
        let mut bytes_written = Family::new(
            "aoe_written_bytes_total",
            Kind::Counter,
            "Bytes written for initiators.",
        );
        let mut errors = Family::new(
            "aoe_error_replies_total",
            Kind::Counter,
            "Requests answered with an error, by kind (ata: ATA status error, aoe: AoE error).",
        );
        let mut storage = Family::new(
            "aoe_storage_errors_total",
            Kind::Counter,
            "Backing store failures, by reason.",
        );
        let mut config = Family::new(
            "aoe_config_replies_total",
            Kind::Counter,
            "Query Config requests answered in user space (the kernel's are in \
             aoe_export_kernel_frames_total).",
        );
        let mut dropped = Family::new(
            "aoe_export_dropped_frames_total",
            Kind::Counter,
            "Frames for the export dropped in user space, by reason.",
        );
        let mut latency = Family::new(
            "aoe_request_duration_seconds",
            Kind::Histogram,
            "Time from a request's check to its reply, storage I/O included, by kind.",
        );
        let mut in_flight = Family::new(
            "aoe_storage_requests_in_flight",
            Kind::Gauge,
            "Requests waiting for storage I/O now.",
        );
        let mut failed_closed = Family::new(
            "aoe_export_failed_closed",
            Kind::Gauge,
            "1 when the export fails every I/O until it is reopened (a sync of its image failed, \
             or its mapping could not be restored).",
        );
        let mut sync_errors = Family::new(
            "aoe_storage_sync_errors_total",
            Kind::Counter,
            "Syncs (fdatasync, msync) of the image that failed; each fails the export closed.",
        );
        let mut cache_size = Family::new(
            "aoe_export_kernel_cache_bytes",
            Kind::Gauge,
            "Kernel memory of the export's kernel cache (0: none).",
        );
        let mut cache = Family::new(
            "aoe_export_kernel_cache_events_total",
            Kind::Counter,
            "Kernel cache upkeep in user space, by event (fill: a block copied in; \
             fill_raced: a fill given up because a write completed meanwhile; invalidation: a \
             slot a write made stale). Hits and misses are in aoe_export_kernel_frames_total.",
        );
        let bounds: Vec<f64> = BOUNDS_US.iter().map(|us| *us as f64 / 1e6).collect();
        for (_, ex) in self.exports.values() {
            let e = ex.name();
            let e = e.as_str();
            let flag = |b: bool| if b { "true" } else { "false" };
            info.push(
                &[
                    ("export", e),
                    ("read_only", flag(ex.read_only)),
                    ("write_back", flag(ex.write_back)),
                    ("direct", flag(ex.direct)),
                ],
                1.0,
            );
            size.push(&[("export", e)], (ex.sectors() * 512) as f64);
            store.push(&[("export", e)], (ex.store_sectors() * 512) as f64);
            let s = &ex.stats;
            let get = |c: &std::sync::atomic::AtomicU64| {
                c.load(std::sync::atomic::Ordering::Relaxed) as f64
            };
            frames.push(&[("export", e)], get(&s.frames));
            requests.push(&[("export", e), ("kind", "read")], get(&s.reads));
            requests.push(&[("export", e), ("kind", "write")], get(&s.writes));
            bytes_read.push(&[("export", e)], get(&s.bytes_read));
            bytes_written.push(&[("export", e)], get(&s.bytes_written));
            errors.push(&[("export", e), ("kind", "ata")], get(&s.ata_errors));
            errors.push(&[("export", e), ("kind", "aoe")], get(&s.aoe_errors));
            for (reason, c) in STORAGE_REASONS.iter().zip(&s.storage_errors) {
                storage.push(&[("export", e), ("reason", reason)], get(c));
            }
            config.push(&[("export", e)], get(&s.config_replies));
            dropped.push(&[("export", e), ("reason", "acl")], get(&s.dropped_acl));
            dropped.push(
                &[("export", e), ("reason", "config_mismatch")],
                get(&s.dropped_config_mismatch),
            );
            for (kind, h) in KINDS.iter().zip(&s.latency) {
                let snap = h.snapshot();
                latency.push_histogram(
                    &[("export", e), ("kind", kind)],
                    Value::Histogram {
                        bounds: bounds.clone(),
                        counts: snap.buckets.to_vec(),
                        sum: snap.sum_us as f64 / 1e6,
                    },
                );
            }
            in_flight.push(&[("export", e)], get(&s.storage_in_flight));
            failed_closed.push(&[("export", e)], f64::from(u8::from(ex.failed_closed())));
            sync_errors.push(&[("export", e)], ex.sync_errors() as f64);
            let own = ex.cache.own.as_ref();
            cache_size.push(&[("export", e)], own.map_or(0, |c| c.bytes()) as f64);
            let events = own.map_or([0; 3], |c| c.stats.snapshot());
            for (event, v) in ["fill", "fill_raced", "invalidation"].iter().zip(events) {
                cache.push(&[("export", e), ("event", event)], v as f64);
            }
        }
        vec![
            info,
            size,
            store,
            frames,
            requests,
            bytes_read,
            bytes_written,
            errors,
            storage,
            config,
            dropped,
            latency,
            in_flight,
            failed_closed,
            sync_errors,
            cache_size,
            cache,
        ]
    }
}
