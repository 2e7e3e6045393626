//! Requests of one queue worker waiting for their storage I/O: what each one's reply needs
//! (its export, its header, the buffer it holds), keyed by the token its ring I/O carries.
//! Both workers use it, each with its own kind of buffer handle `H`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ata::StorageIo;
use super::backend::{BackendError, Done, IoRing, Kind, Resident, SECTOR};
use super::export::Export;
use super::reply::Responder;

/// One request waiting for its I/O.
pub struct Pending<H> {
    pub export: Arc<Export>,
    pub responder: Responder,
    pub io: StorageIo,
    /// Where the request and its reply live until it is answered.
    pub held: H,
    /// The request's length in `held`.
    pub len: usize,
}

pub struct InFlight<H> {
    ring: IoRing,
    slots: Vec<Option<Pending<H>>>,
    free: Vec<u32>,
    done: Vec<Done>,
    /// Requests answered in `start` (reads the page cache held, a snapshot's overlay),
    /// handed on at the next `pump`.
    settled: Vec<(Pending<H>, Result<(), BackendError>)>,
}

impl<H> InFlight<H> {
    pub fn new() -> io::Result<Self> {
        Ok(InFlight {
            ring: IoRing::new()?,
            slots: Vec::new(),
            free: Vec::new(),
            done: Vec::new(),
            settled: Vec::new(),
        })
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.ring.in_flight() + self.settled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue the I/O of `p.io` (submitted at the next `pump`); its bytes go to or come from
    /// `data`. Returns the request back when its export has no file to do I/O on.
    ///
    /// # Safety
    /// `data` lies in `p.held`, which stays valid and untouched until the request comes
    /// back from `pump`.
    pub unsafe fn start(
        &mut self,
        p: Pending<H>,
        data: &[(*mut u8, usize)],
    ) -> Result<(), Pending<H>> {
        let Some(target) = p.export.backend.io_target() else {
            return Err(p);
        };
        let (kind, offset) = (p.io.kind, p.io.lba * SECTOR);
        // Counted before the snapshot flag is read: `crate::daemon::snapshot::take`'s barrier.
        let counted = &p.export.stats.storage_in_flight;
        counted.fetch_add(1, Ordering::SeqCst);
        if p.export.snapshot.active() {
            // SAFETY: the caller's promise about `data`.
            if let Some(result) = unsafe { p.export.snapshot.io(kind, p.io.lba, data) } {
                counted.fetch_sub(1, Ordering::Relaxed);
                self.settled.push((p, result));
                return Ok(());
            }
            // A write after the overlay was merged back: the ring's way, as on every queue.
        }
        // A read the page cache holds is copied here and answered in this pass; a miss goes
        // to the ring and never delays it.
        let mut missed = false;
        if kind == Kind::Read && !target.direct {
            if let [(ptr, len)] = *data {
                // SAFETY: the caller's promise about `data`: ours alone until answered.
                let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                match p.export.backend.read_resident(p.io.lba, buf) {
                    Resident::Read(result) => {
                        counted.fetch_sub(1, Ordering::Relaxed);
                        self.settled.push((p, result));
                        return Ok(());
                    }
                    Resident::Missed => missed = true,
                    Resident::NotAsked => {}
                }
            }
        }
        let token = match self.free.pop() {
            Some(t) => {
                self.slots[t as usize] = Some(p);
                t
            }
            None => {
                self.slots.push(Some(p));
                (self.slots.len() - 1) as u32
            }
        };
        // SAFETY: the caller keeps `data` valid until the token is done.
        unsafe {
            if missed {
                self.ring.queue_missed_read(token, target, offset, data);
            } else {
                self.ring.queue(token, target, kind, offset, data);
            }
        }
        Ok(())
    }

    /// Submit what was queued and hand every request whose I/O finished to `each`.
    pub fn pump(&mut self, mut each: impl FnMut(Pending<H>, Result<(), BackendError>)) {
        self.ring.pump(&mut self.done);
        if !self.done.is_empty() || !self.settled.is_empty() {
            // The replies' latency is measured to now.
            super::latency::tick();
        }
        for (p, result) in self.settled.drain(..) {
            each(p, result);
        }
        for d in self.done.drain(..) {
            let Some(p) = self.slots.get_mut(d.token as usize).and_then(Option::take) else {
                continue;
            };
            self.free.push(d.token);
            p.export
                .stats
                .storage_in_flight
                .fetch_sub(1, Ordering::Relaxed);
            each(p, d.result);
        }
    }

    /// Wait for every request to finish (at exit: the kernel may still write into the
    /// buffers they hold). False when some were still waiting at `limit`.
    pub fn drain(
        &mut self,
        limit: Duration,
        mut each: impl FnMut(Pending<H>, Result<(), BackendError>),
    ) -> bool {
        let until = Instant::now() + limit;
        while !self.is_empty() {
            if Instant::now() > until {
                return false;
            }
            self.pump(&mut each);
            if !self.is_empty() {
                self.wait(None, Duration::from_millis(100));
            }
        }
        true
    }

    /// Sleep until a completion arrives, `watch` (the worker's socket) becomes readable, or
    /// `timeout` passes: the one place a worker with a ring sleeps (`IoRing::wait`).
    pub fn wait(&mut self, watch: Option<std::os::fd::RawFd>, timeout: Duration) {
        self.ring.wait(watch, timeout);
    }
}
