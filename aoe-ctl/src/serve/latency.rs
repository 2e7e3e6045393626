//! Request latency at the target, per export and kind (read, write, flush): from the moment
//! the engine checked a request to the moment its reply is written, storage I/O included.
//! Fixed buckets, relaxed atomics: recording costs two adds on the hot path, and a reader
//! (metrics) sees each bucket's count and the sum.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

thread_local! {
    /// The clock as the calling queue worker read it for its current batch.
    static BATCH_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Read the clock once for the batch a queue worker starts: requests started and completed
/// in it are stamped with this time. Two clock reads per request were ~3% of a hot read (a
/// clock read is a system call where the VM's TSC is not usable from the vDSO), and the
/// histograms' finest bucket is 25 µs, longer than a batch.
pub fn tick() {
    BATCH_NOW.with(|c| c.set(Some(Instant::now())));
}

/// The current batch's time on a queue worker; the clock itself on any other thread.
pub fn now() -> Instant {
    BATCH_NOW.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Upper bounds of the buckets, in microseconds (the last bucket is everything above).
pub const BOUNDS_US: [u64; 16] = [
    25, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 5_000_000,
];

/// What the histograms are of, in the order of `ExportStats::latency`.
pub const KINDS: [&str; 3] = ["read", "write", "flush"];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Requests in each bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub buckets: [u64; BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.record(Duration::from_micros(25)); // at a bound: that bucket
        h.record(Duration::from_micros(26));
        h.record(Duration::from_secs(60)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[BOUNDS_US.len()], 1);
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_us, 25 + 26 + 60_000_000);
    }
}
