//! Execute command 0: an ATA request against the export's backend. Reads land in the reply
//! buffer after the ATA header; a write's payload goes from where it arrived (one buffer,
//! or a chain of descriptors) to the backend. On a queue worker with a ring, a checked
//! read, write or flush is handed to the ring instead (`Completion::Storage`) and finished
//! by `complete` when its I/O is done. The reply itself is `reply.rs`'s business.

use aoe_common::wire::ata::ATA_HEADER_LEN;
use aoe_common::wire::identify::Identity;
use aoe_common::wire::SECTOR_SIZE;

use aoe_common::wire::header::HeaderRepr;

use super::backend::{BackendError, Kind};
use super::export::{Export, ExportStats, FIRMWARE_STRING, MODEL};
use super::kernel_cache::NO_TICKET;
use super::reply::{Completion, Responder, Verdict};
use super::request::{AtaOp, AtaRequest};
use super::status::{self, AtaFailure, OK};

/// Most pieces a write's payload may arrive in (the worker's longest descriptor chain).
pub const MAX_WRITE_PARTS: usize = 32;

/// Storage I/O a checked request waits for, with what its reply needs when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageIo {
    pub kind: Kind,
    pub lba: u64,
    pub bytes: usize,
    pub header: HeaderRepr,
    /// When the engine handed it on (for the latency histograms).
    pub started: std::time::Instant,
    /// A read's kernel cache ticket (`kernel_cache::NO_TICKET` when it does not fill).
    pub ticket: u64,
}

/// Execute `req`, whose frame is `buf[..len]` with its payload possibly continuing in `tail`.
/// With `defer`, a read, write or flush of a file-backed export is checked and then left to
/// the caller's ring (`Completion::Storage`).
pub fn execute(
    ex: &Export,
    max_sectors: usize,
    req: &AtaRequest,
    buf: &mut [u8],
    len: usize,
    tail: &[&[u8]],
    defer: bool,
) -> Completion {
    let defer = defer && ex.backend.io_target().is_some();
    match run(ex, max_sectors, req, buf, len, tail, defer) {
        Ok(Ran::Deferred(kind)) => Completion::Storage {
            kind,
            lba: req.lba,
            bytes: if kind == Kind::Flush { 0 } else { req.bytes() },
            // Taken before the read is submitted (kernel_cache.rs says why).
            ticket: if kind == Kind::Read {
                ticket(ex, req)
            } else {
                NO_TICKET
            },
        },
        Ok(Ran::Done(data, sector_count)) => Completion::Ata {
            status: OK,
            error: 0,
            data,
            sector_count,
        },
        Err(failure) => failed(ex, failure, req.op),
    }
}

/// Finish a request whose storage I/O is done: count it, and write its reply into `buf`
/// (the request's frame, `len` bytes, with a read's sectors already after the ATA header).
pub fn complete(
    ex: &Export,
    responder: &Responder,
    io: &StorageIo,
    result: Result<(), BackendError>,
    buf: &mut [u8],
    len: usize,
) -> Verdict {
    let op = match io.kind {
        Kind::Read => AtaOp::Read,
        Kind::Write => AtaOp::Write,
        Kind::Flush => AtaOp::Flush,
    };
    let latency = &ex.stats.latency[match io.kind {
        Kind::Read => 0,
        Kind::Write => 1,
        Kind::Flush => 2,
    }];
    latency.record(super::latency::now().saturating_duration_since(io.started));
    match io.kind {
        // Before the reply exists: no cache may answer with what it overwrote.
        Kind::Write => ex
            .cache
            .written(ex.offset, io.lba, (io.bytes / SECTOR_SIZE) as u64),
        Kind::Read if result.is_ok() => {
            if let Some(data) = buf.get(ATA_HEADER_LEN..ATA_HEADER_LEN + io.bytes) {
                ex.cache.fill(io.lba, io.ticket, data);
            }
        }
        _ => {}
    }
    let done = match result {
        Ok(()) => {
            match io.kind {
                Kind::Read => {
                    ExportStats::add(&ex.stats.reads, 1);
                    ExportStats::add(&ex.stats.bytes_read, io.bytes as u64);
                }
                Kind::Write => {
                    ExportStats::add(&ex.stats.writes, 1);
                    ExportStats::add(&ex.stats.bytes_written, io.bytes as u64);
                }
                Kind::Flush => {}
            }
            Completion::Ata {
                status: OK,
                error: 0,
                data: if io.kind == Kind::Read { io.bytes } else { 0 },
                sector_count: None,
            }
        }
        Err(e) => failed(ex, AtaFailure::Storage(e), op),
    };
    responder.respond(ex, &io.header, done, buf, len)
}

fn failed(ex: &Export, failure: AtaFailure, op: AtaOp) -> Completion {
    if let AtaFailure::Storage(e) = &failure {
        ex.storage_failed(e);
    }
    let (status, error) = status::registers(&failure, op);
    Completion::Ata {
        status,
        error,
        data: 0,
        sector_count: None,
    }
}

/// What `run` did: answered (data bytes in the buffer, a sector count register), or
/// checked and left the I/O to the ring.
enum Ran {
    Done(usize, Option<u8>),
    Deferred(Kind),
}

fn run(
    ex: &Export,
    max_sectors: usize,
    req: &AtaRequest,
    buf: &mut [u8],
    len: usize,
    tail: &[&[u8]],
    defer: bool,
) -> Result<Ran, AtaFailure> {
    let h = ATA_HEADER_LEN;
    match req.op {
        AtaOp::Read => {
            let bytes = req.bytes();
            if req.count > max_sectors || h + bytes > buf.len() {
                return Err(AtaFailure::TooLong);
            }
            in_range(ex, req)?;
            if defer {
                return Ok(Ran::Deferred(Kind::Read));
            }
            let out = &mut buf[h..h + bytes];
            let ticket = ticket(ex, req);
            if ex.snapshot.active() {
                ex.snapshot.read(req.lba, out)
            } else {
                ex.backend.read_at(req.lba, out)
            }
            .map_err(AtaFailure::Storage)?;
            ex.cache.fill(req.lba, ticket, out);
            ExportStats::add(&ex.stats.reads, 1);
            ExportStats::add(&ex.stats.bytes_read, bytes as u64);
            Ok(Ran::Done(bytes, None))
        }
        AtaOp::Write => {
            let bytes = req.bytes();
            // A short payload or a count the frame cannot carry: nothing is written.
            let mut parts: [&[u8]; MAX_WRITE_PARTS] = [&[]; MAX_WRITE_PARTS];
            let n = payload(&buf[h..len.max(h)], tail, bytes, &mut parts)
                .ok_or(AtaFailure::ShortPayload)?;
            if ex.read_only {
                return Err(AtaFailure::ReadOnly);
            }
            if req.count > max_sectors {
                return Err(AtaFailure::TooLong);
            }
            in_range(ex, req)?;
            // A write-back write is a copy into the page cache: done here through the
            // mapping (a buffered write on the ring is handed to an io-wq thread each time,
            // which measured at vblade's speed). Durable and O_DIRECT writes go to the ring.
            if defer && (ex.direct || !ex.write_back) {
                return Ok(Ran::Deferred(Kind::Write));
            }
            // Counted before the snapshot flag is read, as `InFlight::start` does, so the
            // snapshot point waits for writes that bypass the ring too (write-back writes
            // through the mapping, the synchronous fallback): none is torn in the copy.
            let _counted = Counted::new(&ex.stats.storage_in_flight);
            // Durable before it returns when the export is.
            let written = match ex
                .snapshot
                .active()
                .then(|| ex.snapshot.write(req.lba, &parts[..n]))
                .flatten()
            {
                Some(r) => r,
                None => ex
                    .backend
                    .write_parts_at(req.lba, &parts[..n])
                    .and_then(|()| match ex.write_back {
                        true => Ok(()),
                        false => ex.backend.sync_range(req.lba, bytes),
                    }),
            };
            // Done or failed (maybe in part): before the reply, as on the ring.
            ex.cache.written(ex.offset, req.lba, req.count as u64);
            written.map_err(AtaFailure::Storage)?;
            ExportStats::add(&ex.stats.writes, 1);
            ExportStats::add(&ex.stats.bytes_written, bytes as u64);
            Ok(Ran::Done(0, None))
        }
        AtaOp::Identify => {
            let Some(out) = buf
                .get_mut(h..h + SECTOR_SIZE)
                .and_then(|s| <&mut [u8; SECTOR_SIZE]>::try_from(s).ok())
            else {
                return Err(AtaFailure::TooLong);
            };
            // An initiator identifies the device when it first sees it and when it is told
            // to revalidate: the store is looked at now (one syscall, on a command no
            // initiator sends per I/O), so a grown store needs nothing from the operator.
            ex.refresh_size_now();
            Identity {
                sectors: ex.sectors(),
                serial: ex.serial(),
                firmware: FIRMWARE_STRING,
                model: MODEL,
                write_cache: ex.write_back,
            }
            .emit(out);
            Ok(Ran::Done(SECTOR_SIZE, None))
        }
        AtaOp::Flush if defer => Ok(Ran::Deferred(Kind::Flush)),
        AtaOp::Flush if ex.snapshot.active() => {
            ex.snapshot.flush().map_err(AtaFailure::Storage)?;
            Ok(Ran::Done(0, None))
        }
        AtaOp::Flush => {
            ex.backend.flush().map_err(AtaFailure::Storage)?;
            Ok(Ran::Done(0, None))
        }
        // Sector count 0xFF: active or idle.
        AtaOp::CheckPowerMode => Ok(Ran::Done(0, Some(0xFF))),
        AtaOp::Unsupported(_) => Err(AtaFailure::Unsupported),
    }
}

/// A request counted in a gauge while it lives (SeqCst: `crate::daemon::snapshot::take`'s barrier).
struct Counted<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Counted<'a> {
    fn new(c: &'a std::sync::atomic::AtomicU64) -> Self {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The first `bytes` of `head` followed by `tail`, as slices in `parts`; how many, or None
/// when they carry fewer bytes (or come in more pieces than `parts` holds).
pub fn payload<'a>(
    head: &'a [u8],
    tail: &[&'a [u8]],
    bytes: usize,
    parts: &mut [&'a [u8]; MAX_WRITE_PARTS],
) -> Option<usize> {
    let mut need = bytes;
    let mut n = 0;
    for piece in std::iter::once(head).chain(tail.iter().copied()) {
        if need == 0 {
            break;
        }
        let take = piece.len().min(need);
        *parts.get_mut(n)? = &piece[..take];
        n += 1;
        need -= take;
    }
    (need == 0).then_some(n)
}

/// The kernel cache ticket of a read about to be done (none while a snapshot's overlay may
/// answer it: nothing is filled then).
fn ticket(ex: &Export, req: &AtaRequest) -> u64 {
    if ex.snapshot.active() {
        return NO_TICKET;
    }
    ex.cache.ticket(req.lba, req.count)
}

/// Within what the export serves (else IDNF), and within what its store holds (else the
/// store shrank under it: a storage failure, counted as `shrunk`).
fn in_range(ex: &Export, req: &AtaRequest) -> Result<(), AtaFailure> {
    match req.lba.checked_add(req.count as u64) {
        Some(end) if end <= ex.usable_sectors() => Ok(()),
        Some(end) if end <= ex.sectors() => {
            // The store was short at the last look; a file rewritten in place (truncated,
            // then written) is whole again a moment later. Looked at again, on this path
            // only: a request past the end of a store that is still short costs one more
            // syscall, a whole one no error.
            ex.refresh_size_now();
            if end <= ex.usable_sectors() {
                return Ok(());
            }
            Err(AtaFailure::Storage(BackendError::Shrunk {
                lba: req.lba,
                count: req.count,
                store: ex.store_sectors(),
            }))
        }
        _ => Err(AtaFailure::OutOfRange),
    }
}
