//! The storage I/O of one queue worker, in flight on the worker's own io_uring. The worker
//! queues each request's I/O and goes on; nothing here waits for the disk. A page-cache hit
//! completes inside the submitting call, a miss completes later, and replies leave in
//! completion order (tags make that legal). Adjacent requests of one batch become one
//! readv/writev (the Linux initiator cuts each bio into consecutive frames), so the disk and
//! the kernel's readahead see the I/O the initiator issued, not its frames. A durable
//! write is acknowledged only after an fdatasync issued after it completed; one fdatasync
//! covers every write of that file waiting at the time (group commit).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use super::image::{Image, SYNC_FAILED};
use super::page_cache::cached;
use super::{BackendError, IoTarget};

/// Most requests merged into one I/O (as ggaoed).
pub const MAX_MERGE: usize = 32;
/// Most bytes of one merged I/O: 32 jumbo frames of 17 sectors fit.
const MAX_MERGED_BYTES: usize = 288 << 10;
/// Submission queue entries: more than the requests one batch can bring.
const ENTRIES: u32 = 512;
/// `user_data` of the poll on the worker's socket (`IoRing::wait`); slots are far below it.
const POLL_TOKEN: u64 = u64::MAX;
/// Rounds of submit and reap in one `pump`: a completion can start more I/O (the rest of a
/// read that missed the cache, a write an earlier one held back, an fdatasync).
const ROUNDS: usize = 8;

/// What a request asks of the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    /// Everything acknowledged so far made durable.
    Flush,
}

/// One request's storage I/O finished: its token and how it went.
#[derive(Debug)]
pub struct Done {
    pub token: u32,
    pub result: Result<(), BackendError>,
}

/// A request's I/O as queued, before merging.
#[derive(Clone, Copy)]
struct Queued {
    token: u32,
    target: IoTarget,
    kind: Kind,
    offset: u64,
    len: usize,
    /// Its buffers: `staged_iov[iov.0 .. iov.0 + iov.1]`.
    iov: (usize, usize),
    /// Its place in the batch, in arrival order.
    arrival: usize,
    /// A read the page cache was just asked about and did not hold (`queue_missed_read`).
    missed: bool,
}

/// A request in an op: where its bytes end in the op, and its buffers in `Op::iov`.
#[derive(Clone, Copy)]
struct Member {
    token: u32,
    end: usize,
    iov_end: usize,
}

/// One submitted operation: its requests, in file order.
#[derive(Default)]
struct Op {
    members: Vec<Member>,
    iov: Vec<libc::iovec>,
    /// An aligned copy for O_DIRECT when the requests' buffers are not aligned.
    bounce: Option<Bounce>,
    kind: Option<OpKind>,
    /// The descriptor and the byte of the file it goes to.
    fd: RawFd,
    at: u64,
    /// A buffered read of several requests, tried without waiting for the disk
    /// (RWF_NOWAIT): the requests the page cache holds are answered at once, and only the
    /// rest wait for the disk, so a hit merged with a miss never waits for the miss.
    nowait: bool,
    /// A write's place in its image's write order (`Image::enter`).
    ticket: Option<u64>,
}

#[derive(Clone, Copy)]
enum OpKind {
    Io { kind: Kind, target: IoTarget },
    Sync { image: u64 },
}

/// Group commit state of one image on this ring.
struct Commit {
    target: IoTarget,
    /// This ring's own open file description of the image, for its fdatasyncs: the kernel
    /// reports a writeback error once per description, so two rings syncing one file each
    /// see it (on a shared one the first would consume the other's error). Opened before
    /// the first write it covers is submitted.
    file: File,
    /// Requests whose writes completed (or flushes that arrived) since the last fdatasync
    /// was issued: acknowledged by the next one.
    waiting: Vec<u32>,
    syncing: bool,
    /// Durable writes and flushes queued, not yet waiting for an fdatasync.
    pending: usize,
}

pub struct IoRing {
    ring: IoUring,
    ops: Vec<Op>,
    free: Vec<usize>,
    staged: Vec<Queued>,
    staged_iov: Vec<libc::iovec>,
    /// By `Image::id`.
    commits: HashMap<u64, Commit>,
    /// Writes held back by an earlier overlapping write (built, not submitted), in order.
    blocked: Vec<usize>,
    /// Requests queued and not handed back to the worker yet.
    in_flight: usize,
    bounces: Vec<Bounce>,
    /// Finished requests not handed to the worker yet.
    ready: Vec<Done>,
    /// fdatasyncs issued.
    syncs: u64,
    /// io_uring_enter failures other than EINTR and EBUSY (logged the first time).
    enter_errors: u64,
    /// A poll of the socket `wait` watches is armed (it completes once, when readable).
    polling: bool,
    /// Pages that missed the cache lately (see `submit_io`).
    missed: Missed,
}

// SAFETY: the raw pointers in `Op::iov` and `Queued` point at buffers the worker that owns
// this ring keeps for the request until its `Done`; the ring moves with its worker only.
unsafe impl Send for IoRing {}

/// The shared state of a target's image.
fn image<'a>(t: &IoTarget) -> &'a Image {
    // SAFETY: the contract of `IoRing::queue` keeps the backend of every target this ring
    // holds alive until its requests are done; commits are dropped when the ring has no
    // request left.
    unsafe { t.image.get() }
}

impl IoRing {
    pub fn new() -> io::Result<IoRing> {
        // Completions that need the worker's context (a buffered read that missed, the poll
        // of the socket) wait until the worker enters the ring: never an interrupt of its
        // work. The ring raises a flag the worker checks as it spins (`pump`), and a worker
        // asleep in `wait` is woken by them.
        let ring = IoUring::builder()
            .setup_cqsize(ENTRIES * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)?;
        Ok(IoRing {
            ring,
            ops: Vec::new(),
            free: Vec::new(),
            staged: Vec::new(),
            staged_iov: Vec::new(),
            commits: HashMap::new(),
            blocked: Vec::new(),
            in_flight: 0,
            bounces: Vec::new(),
            ready: Vec::new(),
            syncs: 0,
            enter_errors: 0,
            polling: false,
            missed: Missed::default(),
        })
    }

    /// Requests queued and not done yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The one place a queue worker sleeps: until a storage completion arrives, `watch` (the
    /// worker's socket, through a poll on this ring) becomes readable, or `timeout` passes.
    /// What completed is handed out by the next `pump`.
    pub fn wait(&mut self, watch: Option<RawFd>, timeout: std::time::Duration) {
        // Completions already here (or entries not yet submitted) need a `pump` first: what
        // they start (an fdatasync, the rest of a read) must not wait for the next wake-up.
        if self.reap() > 0 || !self.ready.is_empty() || !self.ring.submission().is_empty() {
            return;
        }
        if let (Some(fd), false) = (watch, self.polling) {
            let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(POLL_TOKEN);
            self.push(poll);
            self.polling = true;
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        // ETIME (the timeout) and EINTR (a signal) end the wait as a completion does.
        let _ = self.ring.submitter().submit_with_args(1, &args);
    }

    /// Run what the kernel deferred to this ring's worker (DEFER_TASKRUN: a buffered write
    /// retried once the file polls ready, a read's completion) without reaping anything:
    /// completions stay unread in the ring. `pump` does this as part of its work; a test
    /// that must hold a completion unread calls this instead.
    pub fn run_deferred(&mut self) {
        // SAFETY: no submission, no signal mask: an enter that only runs the task's work.
        let _ = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                0,
                0,
                io_uring::EnterFlags::GETEVENTS.bits(),
                None,
            )
        };
    }

    /// Queue the I/O of request `token`: `len` bytes at byte `offset` of the export (its
    /// start in the file is `target.base`), to or from `bufs`. Flushes have no buffers.
    ///
    /// # Safety
    /// Every buffer stays valid, and is neither read nor written by anyone else, until this
    /// ring reports the token done; so does the backend `target` came from.
    pub unsafe fn queue(
        &mut self,
        token: u32,
        target: IoTarget,
        kind: Kind,
        offset: u64,
        bufs: &[(*mut u8, usize)],
    ) {
        // SAFETY: the caller's promise.
        unsafe { self.enqueue(token, target, kind, offset, bufs, false) }
    }

    /// `queue` for a read whose bytes the page cache was just asked about and did not hold
    /// (`Backend::read_resident`): the ring does not ask again.
    ///
    /// # Safety
    /// As `queue`.
    pub unsafe fn queue_missed_read(
        &mut self,
        token: u32,
        target: IoTarget,
        offset: u64,
        bufs: &[(*mut u8, usize)],
    ) {
        // SAFETY: the caller's promise.
        unsafe { self.enqueue(token, target, Kind::Read, offset, bufs, true) }
    }

    /// # Safety
    /// As `queue`.
    unsafe fn enqueue(
        &mut self,
        token: u32,
        target: IoTarget,
        kind: Kind,
        offset: u64,
        bufs: &[(*mut u8, usize)],
        missed: bool,
    ) {
        self.in_flight += 1;
        if let Err(e) = image(&target).check() {
            self.ready.push(Done {
                token,
                result: Err(e),
            });
            return;
        }
        if kind == Kind::Flush || (kind == Kind::Write && target.durable) {
            match self.commit(&target) {
                Ok(c) => c.pending += 1,
                Err(e) => {
                    self.ready.push(Done {
                        token,
                        result: Err(e),
                    });
                    return;
                }
            }
        }
        let at = self.staged_iov.len();
        self.staged_iov
            .extend(bufs.iter().map(|&(p, n)| libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            }));
        let len = bufs.iter().map(|b| b.1).sum();
        self.staged.push(Queued {
            token,
            target,
            kind,
            offset,
            len,
            iov: (at, bufs.len()),
            arrival: self.staged.len(),
            missed,
        });
    }

    /// Submit what was queued (merged), collect what completed, start the fdatasyncs that
    /// waiting writes need; finished requests are appended to `done`.
    pub fn pump(&mut self, done: &mut Vec<Done>) {
        for round in 0..ROUNDS {
            self.submit_staged();
            self.unblock();
            self.start_syncs();
            // Entries left in the queue by a refused enter go now, whatever else happens.
            let queued = !self.ring.submission().is_empty();
            // After the first round, only for what completions started (one syscall more
            // only when there is something to submit).
            if round > 0 && !queued {
                break;
            }
            if queued || self.ring.submission().taskrun() {
                self.enter();
            }
            self.reap();
        }
        self.in_flight -= self.ready.len();
        if self.in_flight == 0 && !self.commits.is_empty() {
            // Nothing left: close the descriptors, so a removed export's image is not held
            // open (a few microseconds to open again, against an fdatasync's hundreds).
            self.commits.clear();
        }
        done.append(&mut self.ready);
    }

    /// The commit of `target`'s image on this ring, opened on first use.
    fn commit(&mut self, target: &IoTarget) -> Result<&mut Commit, BackendError> {
        use std::collections::hash_map::Entry;
        Ok(match self.commits.entry(image(target).id()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let file = File::open(format!("/proc/self/fd/{}", target.fd))
                    .map_err(BackendError::syscall("open"))?;
                v.insert(Commit {
                    target: *target,
                    file,
                    waiting: Vec::new(),
                    syncing: false,
                    pending: 0,
                })
            }
        })
    }

    fn done(&mut self, token: u32, result: Result<(), BackendError>) {
        self.ready.push(Done { token, result });
    }

    /// A write finished: durable ones wait for an fdatasync issued from now on, unless the
    /// image failed closed meanwhile.
    fn settle_write(&mut self, target: &IoTarget, token: u32, result: Result<(), BackendError>) {
        if !target.durable {
            return self.done(token, result);
        }
        let failed = image(target).failed();
        let Some(c) = self.commits.get_mut(&image(target).id()) else {
            return self.done(token, result.and(Err(SYNC_FAILED)));
        };
        c.pending -= 1;
        match result {
            Ok(()) if !failed => c.waiting.push(token),
            Ok(()) => self.done(token, Err(SYNC_FAILED)),
            Err(e) => self.done(token, Err(e)),
        }
    }

    fn submit_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut staged = std::mem::take(&mut self.staged);
        // Stable: requests for the same sectors keep their arrival order.
        staged.sort_by_key(|q| (q.target.fd, q.kind as u8, q.offset));
        let later = defer_overlaps(&mut staged, &self.staged_iov);
        // A write past the end of a regular file would grow it back after someone shrank it
        // under us, leaving zeros where data was: such writes fail instead. One fstat per
        // file and batch (a shrink between it and the write can still slip through).
        let mut sizes: Vec<(RawFd, u64)> = Vec::new();
        let mut i = 0;
        while i < staged.len() {
            let first = &staged[i];
            let target = first.target;
            if let Err(e) = image(&target).check() {
                match first.kind {
                    Kind::Write => self.settle_write(&target, first.token, Err(e)),
                    Kind::Flush => {
                        if let Some(c) = self.commits.get_mut(&image(&target).id()) {
                            c.pending -= 1;
                        }
                        self.done(first.token, Err(e));
                    }
                    Kind::Read => self.done(first.token, Err(e)),
                }
                i += 1;
                continue;
            }
            if first.kind == Kind::Flush {
                let token = first.token;
                if let Some(c) = self.commits.get_mut(&image(&target).id()) {
                    c.pending -= 1;
                    c.waiting.push(token);
                }
                i += 1;
                continue;
            }
            let eof = (first.kind == Kind::Write && target.regular).then(|| {
                match sizes.iter().find(|s| s.0 == target.fd) {
                    Some(&(_, size)) => size,
                    None => {
                        let size = file_size(target.fd);
                        sizes.push((target.fd, size));
                        size
                    }
                }
            });
            // Every request of a run is checked, not only its first.
            let past =
                |q: &Queued| eof.is_some_and(|size| q.target.base + q.offset + q.len as u64 > size);
            if past(first) {
                let (token, len) = (first.token, first.len);
                let short = BackendError::Short {
                    call: "write",
                    len,
                    done: 0,
                };
                self.settle_write(&target, token, Err(short));
                i += 1;
                continue;
            }
            // The run of requests that continue each other.
            let mut j = i + 1;
            let mut bytes = first.len;
            while j < staged.len()
                && j - i < MAX_MERGE
                && staged[j].target.fd == target.fd
                && staged[j].kind == first.kind
                && staged[j].offset == first.offset + bytes as u64
                && bytes + staged[j].len <= MAX_MERGED_BYTES
                && !past(&staged[j])
            {
                bytes += staged[j].len;
                j += 1;
            }
            self.submit_io(&staged[i..j]);
            i = j;
        }
        staged.clear();
        self.staged = staged;
        self.staged_iov.clear();
        // The held-back writes, in arrival order, for the next batch.
        for (mut q, iov) in later {
            q.iov = (self.staged_iov.len(), iov.len());
            q.arrival = self.staged.len();
            self.staged_iov.extend_from_slice(&iov);
            self.staged.push(q);
        }
    }

    /// One read or write for `run` (requests in file order, each continuing the last).
    fn submit_io(&mut self, run: &[Queued]) {
        let first = &run[0];
        let (target, kind) = (first.target, first.kind);
        let slot = self.slot();
        let mut op = std::mem::take(&mut self.ops[slot]);
        op.members.clear();
        op.iov.clear();
        let mut end = 0;
        for q in run {
            end += q.len;
            op.iov
                .extend_from_slice(&self.staged_iov[q.iov.0..q.iov.0 + q.iov.1]);
            op.members.push(Member {
                token: q.token,
                end,
                iov_end: op.iov.len(),
            });
        }
        if end > MAX_MERGED_BYTES || op.iov.len() > libc::UIO_MAXIOV as usize {
            // Cannot happen with the limits above; refuse rather than overrun the bounce.
            let members = std::mem::take(&mut op.members);
            self.ops[slot] = op;
            self.free.push(slot);
            for m in members {
                let e = BackendError::Unaligned {
                    len: end,
                    max: MAX_MERGED_BYTES,
                };
                match kind {
                    Kind::Write => self.settle_write(&target, m.token, Err(e)),
                    _ => self.done(m.token, Err(e)),
                }
            }
            return;
        }
        // Durable writes go around the page cache where the file allows it, all of them
        // (`IoTarget::around`): a write smaller than a page would otherwise first read that
        // page from the disk, and the page would be written back again by the fdatasync.
        // A lone read that misses the cache goes around it too, unless the same page missed
        // a little while ago: a page read once costs a cache insert and a whole page from
        // the disk for nothing, a page read again is worth keeping. Whether it misses is
        // asked of the cache (`cached`, one cachestat: ~250 ns here) before anything is
        // read, unless the caller has just asked (`queue_missed_read`): a hit is read from
        // the cache as always. A merged run is a stream: through the cache, for readahead.
        // (Reads leave no dirty page behind, so this does not make a second write path.)
        let at = target.base + first.offset;
        let (fd, direct, mem_align) = match (target.around(), target.write_around) {
            (Some(w), _) if kind == Kind::Write => (w.fd, true, w.align.mem),
            (_, Some(w))
                if kind == Kind::Read
                    && target.durable
                    && run.len() == 1
                    && at.is_multiple_of(w.align.offset as u64)
                    && end % w.align.offset == 0
                    && (first.missed || !cached(target.fd, at, end as u64))
                    && !self.missed.again(target.fd, at) =>
            {
                (w.fd, true, w.align.mem)
            }
            _ => (target.fd, target.direct, target.mem_align),
        };
        // O_DIRECT from scattered buffers (a merged run, a jumbo chain) goes through one
        // contiguous bounce: measured 47% faster for merged sequential reads than a readv of
        // 32 one-KiB pieces of UMEM (docs/benchmarks.md). A single aligned buffer goes
        // straight between the disk and the frame.
        if direct && (op.iov.len() > 1 || !aligned(&op.iov, mem_align)) {
            let mut b = self.bounces.pop().unwrap_or_else(Bounce::new);
            if kind == Kind::Write {
                let mut at = 0;
                for v in &op.iov {
                    // SAFETY: the caller of `queue` keeps each buffer valid until done.
                    let src =
                        unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                    b.as_mut()[at..at + v.iov_len].copy_from_slice(src);
                    at += v.iov_len;
                }
            }
            op.bounce = Some(b);
        }
        op.fd = fd;
        op.at = at;
        op.nowait =
            kind == Kind::Read && !direct && op.members.len() > 1 && image(&target).nowait_reads();
        op.kind = Some(OpKind::Io { kind, target });
        let clear = if kind == Kind::Write {
            let (ticket, clear) = image(&target).enter(at, at + end as u64);
            op.ticket = Some(ticket);
            clear
        } else {
            true
        };
        self.ops[slot] = op;
        if clear {
            self.launch(slot);
        } else {
            self.blocked.push(slot);
        }
    }

    /// Put op `slot`'s read or write on the submission queue.
    fn launch(&mut self, slot: usize) {
        let op = &mut self.ops[slot];
        let Some(OpKind::Io { kind, .. }) = op.kind else {
            return;
        };
        let len = op.members.last().map_or(0, |m| m.end) as u32;
        let fd = types::Fd(op.fd);
        let flags = if op.nowait { libc::RWF_NOWAIT } else { 0 };
        let entry = match (&mut op.bounce, kind) {
            (Some(b), Kind::Read) => opcode::Read::new(fd, b.as_mut().as_mut_ptr(), len)
                .offset(op.at)
                .build(),
            (Some(b), _) => opcode::Write::new(fd, b.as_mut().as_ptr(), len)
                .offset(op.at)
                .build(),
            (None, Kind::Read) if op.iov.len() == 1 => {
                opcode::Read::new(fd, op.iov[0].iov_base.cast(), len)
                    .offset(op.at)
                    .rw_flags(flags as _)
                    .build()
            }
            (None, Kind::Read) => opcode::Readv::new(fd, op.iov.as_ptr(), op.iov.len() as u32)
                .offset(op.at)
                .rw_flags(flags as _)
                .build(),
            (None, _) if op.iov.len() == 1 => {
                opcode::Write::new(fd, op.iov[0].iov_base as *const u8, len)
                    .offset(op.at)
                    .build()
            }
            (None, _) => opcode::Writev::new(fd, op.iov.as_ptr(), op.iov.len() as u32)
                .offset(op.at)
                .build(),
        };
        self.push(entry.user_data(slot as u64));
    }

    /// Start the held-back writes whose earlier overlapping writes have finished.
    fn unblock(&mut self) {
        if self.blocked.is_empty() {
            return;
        }
        for slot in std::mem::take(&mut self.blocked) {
            let op = &self.ops[slot];
            let (Some(OpKind::Io { target, .. }), Some(ticket)) = (op.kind, op.ticket) else {
                continue;
            };
            let end = op.at + op.members.last().map_or(0, |m| m.end) as u64;
            let img = image(&target);
            if img.failed() {
                // Never started: fail it without writing.
                img.leave(ticket);
                let op = &mut self.ops[slot];
                op.kind = None;
                op.ticket = None;
                let members = std::mem::take(&mut op.members);
                if let Some(b) = op.bounce.take() {
                    self.bounces.push(b);
                }
                for m in &members {
                    self.settle_write(&target, m.token, Err(SYNC_FAILED));
                }
                self.ops[slot].members = members;
                self.free.push(slot);
            } else if img.may_start(ticket, op.at, end) {
                self.launch(slot);
            } else {
                self.blocked.push(slot);
            }
        }
    }

    /// Start an fdatasync for each image with requests waiting and none in flight; fail
    /// what waits on an image that failed closed.
    fn start_syncs(&mut self) {
        let ready: Vec<u64> = self
            .commits
            .iter()
            .filter(|(_, c)| !c.syncing && !c.waiting.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            let c = self.commits.get_mut(&id).expect("listed above");
            if image(&c.target).failed() {
                let waiting = std::mem::take(&mut c.waiting);
                for token in waiting {
                    self.done(token, Err(SYNC_FAILED));
                }
                continue;
            }
            c.syncing = true;
            let fd = c.file.as_raw_fd();
            let members = c
                .waiting
                .drain(..)
                .map(|token| Member {
                    token,
                    end: 0,
                    iov_end: 0,
                })
                .collect();
            self.syncs += 1;
            let slot = self.slot();
            let op = &mut self.ops[slot];
            op.members = members;
            op.kind = Some(OpKind::Sync { image: id });
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(slot as u64);
            self.push(entry);
        }
    }

    /// Completions reaped.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        loop {
            let cqe = {
                let mut cq = self.ring.completion();
                cq.sync();
                cq.next()
            };
            let Some(cqe) = cqe else { return n };
            n += 1;
            if cqe.user_data() == POLL_TOKEN {
                // The socket became readable: the worker reads it on its next loop.
                self.polling = false;
                continue;
            }
            self.finish(cqe.user_data() as usize, cqe.result());
        }
    }

    fn finish(&mut self, slot: usize, res: i32) {
        let Some(op) = self.ops.get_mut(slot) else {
            return;
        };
        let Some(kind) = op.kind.take() else { return };
        let members = std::mem::take(&mut op.members);
        let iov = std::mem::take(&mut op.iov);
        let bounce = op.bounce.take();
        let ticket = op.ticket.take();
        let nowait = std::mem::take(&mut op.nowait);
        let (fd, at) = (op.fd, op.at);
        match kind {
            OpKind::Sync { image: id } => self.synced(id, &members, res),
            OpKind::Io { kind, target } => {
                if let Some(t) = ticket {
                    image(&target).leave(t);
                }
                let got = usize::try_from(res).unwrap_or(0);
                if let (Some(b), Kind::Read, true) = (&bounce, kind, res > 0) {
                    let mut at = 0;
                    for v in &iov {
                        let n = v.iov_len.min(got.saturating_sub(at));
                        // SAFETY: the caller of `queue` keeps each buffer valid until done;
                        // `n` bytes of the bounce were read.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                b.as_ref()[at..].as_ptr(),
                                v.iov_base.cast(),
                                n,
                            )
                        };
                        at += v.iov_len;
                    }
                }
                let all = members.last().map_or(0, |m| m.end);
                if nowait && res == -libc::EOPNOTSUPP {
                    // A filesystem without FMODE_NOWAIT refuses the flag outright.
                    image(&target).no_nowait_reads();
                }
                let refused = [-libc::EAGAIN, -libc::EOPNOTSUPP].contains(&res);
                if nowait && (refused || (res >= 0 && got < all)) {
                    self.read_rest(target, (fd, at), &members, &iov, got);
                } else {
                    let call = if kind == Kind::Read { "read" } else { "write" };
                    for m in &members {
                        let result = if res < 0 {
                            syscall_result(call, res)
                        } else if got < m.end {
                            Err(BackendError::Short {
                                call,
                                len: m.end,
                                done: got,
                            })
                        } else {
                            Ok(())
                        };
                        match kind {
                            Kind::Write => self.settle_write(&target, m.token, result),
                            _ => self.done(m.token, result),
                        }
                    }
                }
            }
        }
        let op = &mut self.ops[slot];
        op.members = members;
        op.members.clear();
        op.iov = iov;
        op.iov.clear();
        if let Some(b) = bounce {
            self.bounces.push(b);
        }
        self.free.push(slot);
    }

    /// A read tried without waiting got only the first `got` bytes from the page cache:
    /// answer the requests it covered, and read the rest in one read that waits for the
    /// disk. Never more than two operations for a run: a cold sequential run costs one
    /// refused try (which starts the readahead) and the read it always was.
    fn read_rest(
        &mut self,
        target: IoTarget,
        (fd, at): (RawFd, u64),
        members: &[Member],
        iov: &[libc::iovec],
        got: usize,
    ) {
        let k = members.iter().position(|m| m.end > got).unwrap_or(0);
        for m in &members[..k] {
            self.done(m.token, Ok(()));
        }
        let base = match k {
            0 => (0, 0),
            _ => (members[k - 1].end, members[k - 1].iov_end),
        };
        self.read_op(target, fd, at, &members[k..], iov, base);
    }

    /// A read, waiting for the disk, of `members` (whose ends count from `base` in the op
    /// they came from).
    fn read_op(
        &mut self,
        target: IoTarget,
        fd: RawFd,
        at: u64,
        members: &[Member],
        iov: &[libc::iovec],
        base: (usize, usize),
    ) {
        let slot = self.slot();
        let op = &mut self.ops[slot];
        op.members.clear();
        op.members.extend(members.iter().map(|m| Member {
            token: m.token,
            end: m.end - base.0,
            iov_end: m.iov_end - base.1,
        }));
        op.iov.clear();
        op.iov
            .extend_from_slice(&iov[base.1..members.last().map_or(base.1, |m| m.iov_end)]);
        op.fd = fd;
        op.at = at + base.0 as u64;
        op.nowait = false;
        op.ticket = None;
        op.kind = Some(OpKind::Io {
            kind: Kind::Read,
            target,
        });
        self.launch(slot);
    }

    /// An fdatasync finished: acknowledge its members, or fail them and everything waiting
    /// on the image, which fails closed on every ring.
    fn synced(&mut self, id: u64, members: &[Member], res: i32) {
        let Some(c) = self.commits.get_mut(&id) else {
            for m in members {
                self.done(m.token, Err(SYNC_FAILED));
            }
            return;
        };
        c.syncing = false;
        let img = image(&c.target);
        if res < 0 {
            img.sync_failed("fdatasync", &io::Error::from_raw_os_error(-res));
        }
        // A sync that returns 0 after another ring's failed may have found nothing to
        // write: the pages that failed are clean and not on disk.
        let failed = img.failed();
        let waiting = if failed {
            std::mem::take(&mut c.waiting)
        } else {
            Vec::new()
        };
        for m in members {
            let result = match (res < 0, failed) {
                (true, _) => syscall_result("fdatasync", res),
                (false, true) => Err(SYNC_FAILED),
                (false, false) => Ok(()),
            };
            self.done(m.token, result);
        }
        for token in waiting {
            self.done(token, Err(SYNC_FAILED));
        }
    }

    fn slot(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.ops.push(Op::default());
            self.ops.len() - 1
        })
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every pointer in `entry` stays valid until its completion: the iovec
            // array and bounce live in `self.ops[slot]` until `finish`, and the buffers
            // belong to requests not done yet (the contract of `queue`).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand what it holds to the kernel, and make room in the completion
            // queue too (a full one makes the kernel refuse submissions).
            self.enter();
            self.reap();
        }
    }

    /// Hand the queued entries to the kernel. Whatever it does not take stays queued and
    /// goes with the next `pump` (which always submits a queue that is not empty).
    fn enter(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Too many completions unread: the caller reaps and comes back.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return,
                Err(e) => {
                    self.enter_errors += 1;
                    if self.enter_errors == 1 {
                        log::error!(
                            "io_uring_enter failed ({e}); the queued I/O is submitted again at \
                             the next pass"
                        );
                    }
                    return;
                }
            }
        }
    }
}

/// Take out of a batch (sorted by file, kind and offset) every write that overlaps one
/// that arrived before it in the batch (a retransmit beside the original): held back to the
/// next batch, it takes a later ticket in the image's write order and so lands after it,
/// while the rest of the batch merges as usual. Returned in arrival order, with their
/// buffers (from `iov`).
fn defer_overlaps(
    staged: &mut Vec<Queued>,
    iov: &[libc::iovec],
) -> Vec<(Queued, Vec<libc::iovec>)> {
    let writes = |q: &&Queued| q.kind == Kind::Write;
    // Cheap look first: in file order, does any write start before the previous ones end?
    let mut reach: Option<(RawFd, u64)> = None;
    let mut any = false;
    for q in staged.iter().filter(writes) {
        let end = q.offset + q.len as u64;
        reach = match reach {
            Some((fd, r)) if fd == q.target.fd => {
                any |= q.offset < r;
                Some((fd, r.max(end)))
            }
            _ => Some((q.target.fd, end)),
        };
    }
    if !any {
        return Vec::new();
    }
    let overlaps = |a: &Queued, b: &Queued| {
        a.target.fd == b.target.fd
            && a.offset < b.offset + b.len as u64
            && b.offset < a.offset + a.len as u64
    };
    let held: Vec<bool> = staged
        .iter()
        .map(|q| {
            q.kind == Kind::Write
                && staged
                    .iter()
                    .filter(writes)
                    .any(|w| w.arrival < q.arrival && overlaps(w, q))
        })
        .collect();
    let mut later: Vec<(Queued, Vec<libc::iovec>)> = staged
        .iter()
        .zip(&held)
        .filter(|(_, &h)| h)
        .map(|(q, _)| (*q, iov[q.iov.0..q.iov.0 + q.iov.1].to_vec()))
        .collect();
    let mut h = held.iter();
    staged.retain(|_| !h.next().copied().unwrap_or(false));
    later.sort_by_key(|(q, _)| q.arrival);
    later
}

/// The pages of the last reads that missed the cache, one per slot of a small direct-mapped
/// table (a newer miss overwrites an older one): a page found here missed before, and is
/// admitted to the cache this time. The cache then holds what is read more than once.
struct Missed(Box<[u64]>);

impl Default for Missed {
    fn default() -> Self {
        /// 16K pages: 64 MiB of recently missed data per worker, in 128 KiB of table.
        const SLOTS: usize = 1 << 14;
        Missed(vec![0; SLOTS].into_boxed_slice())
    }
}

impl Missed {
    /// Did the page at byte `at` of the file at `fd` miss recently? Remembers it if not.
    fn again(&mut self, fd: RawFd, at: u64) -> bool {
        // Non-zero for every page: 0 marks an empty slot.
        let key = ((at >> 12) << 16 | (fd as u64 & 0xffff)) + 1;
        let slot = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % self.0.len();
        if self.0[slot] == key {
            return true;
        }
        self.0[slot] = key;
        false
    }
}

/// The size of the file open at `fd` (0 when it cannot be read: every write then fails).
fn file_size(fd: RawFd) -> u64 {
    // SAFETY: fstat on a descriptor the caller keeps open, into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return 0;
        }
        st.st_size as u64
    }
}

fn syscall_result(call: &'static str, res: i32) -> Result<(), BackendError> {
    if res < 0 {
        return Err(BackendError::Syscall {
            call,
            source: io::Error::from_raw_os_error(-res),
        });
    }
    Ok(())
}

/// Every buffer of `iov` starts and ends on an `align` boundary (what O_DIRECT needs).
fn aligned(iov: &[libc::iovec], align: usize) -> bool {
    let mask = align.max(1) - 1;
    iov.iter()
        .all(|v| (v.iov_base as usize | v.iov_len) & mask == 0)
}

/// A page-aligned buffer for one merged O_DIRECT I/O.
struct Bounce(std::ptr::NonNull<u8>);

impl Bounce {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(MAX_MERGED_BYTES, 4096).expect("a valid layout")
    }

    fn new() -> Bounce {
        // SAFETY: a non-zero size layout.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        Bounce(
            std::ptr::NonNull::new(p)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout())),
        )
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds MAX_MERGED_BYTES bytes, owned by this Bounce.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), MAX_MERGED_BYTES) }
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), MAX_MERGED_BYTES) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::layout()) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::ImageRef;
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    fn file(bytes: usize) -> (std::path::PathBuf, std::fs::File) {
        let p = std::env::temp_dir().join(format!(
            "aoe-ring-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(bytes as u64).unwrap();
        (p, f)
    }

    /// Images the tests' targets point at (kept for the life of the test binary).
    fn image_of(f: &std::fs::File) -> ImageRef {
        use std::sync::{Arc, Mutex, OnceLock};
        static IMAGES: OnceLock<Mutex<Vec<Arc<Image>>>> = OnceLock::new();
        let i = Image::new(std::path::Path::new(&format!("fd {}", f.as_raw_fd())));
        let r = ImageRef::new(&i);
        IMAGES.get_or_init(Default::default).lock().unwrap().push(i);
        r
    }

    fn target(f: &std::fs::File, durable: bool) -> IoTarget {
        IoTarget {
            image: image_of(f),
            fd: f.as_raw_fd(),
            base: 0,
            direct: false,
            mem_align: 1,
            durable,
            regular: true,
            write_around: None,
        }
    }

    fn run_until(ring: &mut IoRing, n: usize) -> Vec<Done> {
        let mut done = Vec::new();
        // Generous: an fdatasync on a busy disk can take seconds.
        for _ in 0..200_000 {
            ring.pump(&mut done);
            if done.len() >= n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        done
    }

    #[test]
    fn adjacent_requests_merge_and_each_gets_its_bytes() {
        let (p, f) = file(1 << 20);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&data, 4096).unwrap();
        let mut ring = IoRing::new().unwrap();
        let t = target(&f, false);
        let mut bufs = vec![vec![0u8; 1024]; 8];
        // Queued out of order: merging sorts them by offset.
        for i in [3usize, 0, 7, 1, 2, 6, 5, 4] {
            let b = (bufs[i].as_mut_ptr(), 1024);
            // SAFETY: `bufs` outlives the ring's use of it (run_until waits for all).
            unsafe { ring.queue(i as u32, t, Kind::Read, 4096 + 1024 * i as u64, &[b]) };
        }
        ring.submit_staged();
        // One readv for the eight.
        assert_eq!(ring.ops.len(), 1, "merged into one op");
        let done = run_until(&mut ring, 8);
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(&b[..], &data[i * 1024..(i + 1) * 1024], "request {i}");
        }
        assert_eq!(ring.in_flight(), 0);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_read_past_the_end_of_a_shrunk_file_fails() {
        let (p, f) = file(64 << 10);
        let mut ring = IoRing::new().unwrap();
        let t = target(&f, false);
        let mut a = vec![0xeeu8; 1024];
        let mut b = vec![0xeeu8; 1024];
        // Two adjacent reads straddling the end: the first gets its bytes, the second fails.
        // SAFETY: as above.
        unsafe {
            ring.queue(
                1,
                t,
                Kind::Read,
                (64 << 10) - 1024,
                &[(a.as_mut_ptr(), 1024)],
            );
            ring.queue(2, t, Kind::Read, 64 << 10, &[(b.as_mut_ptr(), 1024)]);
        }
        let mut done = run_until(&mut ring, 2);
        done.sort_by_key(|d| d.token);
        assert!(done[0].result.is_ok(), "{:?}", done[0]);
        let e = done[1].result.as_ref().unwrap_err();
        assert_eq!(e.reason(), "short", "{e}");
        assert!(a.iter().all(|&x| x == 0));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn durable_writes_wait_for_one_fdatasync_flushes_too() {
        let (p, f) = file(1 << 20);
        let mut ring = IoRing::new().unwrap();
        let t = target(&f, true);
        let payload = vec![0x5au8; 512];
        for i in 0..16u32 {
            // Every other sector: sixteen writes, none adjacent, so none merge.
            // SAFETY: `payload` outlives the ring's use of it.
            unsafe {
                ring.queue(
                    i,
                    t,
                    Kind::Write,
                    u64::from(i) * 1024,
                    &[(payload.as_ptr().cast_mut(), 512)],
                )
            };
        }
        // SAFETY: a flush has no buffers.
        unsafe { ring.queue(99, t, Kind::Flush, 0, &[]) };
        let done = run_until(&mut ring, 17);
        assert_eq!(done.len(), 17);
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
        // The writes and the flush were acknowledged by fdatasyncs, never one per write:
        // ops in the slab are writes (16) plus at most a few syncs.
        let syncs = ring.syncs;
        assert!((1..=3).contains(&syncs), "{syncs} fdatasyncs for 16 writes");
        let mut back = [0u8; 512];
        f.read_exact_at(&mut back, 15 * 1024).unwrap();
        assert_eq!(back, [0x5a; 512]);
        std::fs::remove_file(p).unwrap();
    }

    /// A second file beside the test's, opened O_DIRECT (vda's ext4 allows 512-byte I/O).
    fn direct(p: &std::path::Path) -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap()
    }

    /// Which of the file's pages `pages` are in the page cache (mincore).
    fn cached(f: &std::fs::File, pages: usize) -> Vec<bool> {
        // SAFETY: a read-only shared mapping of our own file, unmapped before returning;
        // mincore writes one byte per page into `v`, which has that many.
        unsafe {
            let len = pages * 4096;
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(m, libc::MAP_FAILED);
            let mut v = vec![0u8; pages];
            assert_eq!(libc::mincore(m, len, v.as_mut_ptr()), 0);
            libc::munmap(m, len);
            v.iter().map(|b| b & 1 == 1).collect()
        }
    }

    #[test]
    fn a_merged_write_past_the_end_of_a_shrunk_file_fails_and_does_not_grow_it() {
        let (p, f) = file(64 << 10);
        let mut ring = IoRing::new().unwrap();
        let t = target(&f, true);
        let (a, b) = (vec![1u8; 1024], vec![2u8; 1024]);
        // Adjacent: the first ends at the end of the file, the second lies past it. Merged
        // into one write, only the first used to be checked and the file grew.
        // SAFETY: the buffers outlive the ring's use of them.
        unsafe {
            let end = 64 << 10;
            ring.queue(
                1,
                t,
                Kind::Write,
                end - 1024,
                &[(a.as_ptr().cast_mut(), 1024)],
            );
            ring.queue(2, t, Kind::Write, end, &[(b.as_ptr().cast_mut(), 1024)]);
        }
        let mut done = run_until(&mut ring, 2);
        done.sort_by_key(|d| d.token);
        assert!(done[0].result.is_ok(), "{:?}", done[0]);
        let e = done[1]
            .result
            .as_ref()
            .expect_err("a write past the end was acknowledged");
        assert_eq!(e.reason(), "short", "{e}");
        assert_eq!(f.metadata().unwrap().len(), 64 << 10, "the file grew");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_cache_hit_merged_with_a_miss_does_not_wait_for_it() {
        let (p, f) = file(1 << 20);
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        f.sync_data().unwrap();
        // (the hot page, the requests in the run, which of them hits)
        let layouts = [
            // The hit (the last KiB of page 0), then two misses.
            (0u64, [3072u64, 4096, 5120], 0usize),
        ];
        for (hot, at, hit) in layouts {
            // Everything back to the disk only, then the hot page read back alone (no
            // readahead).
            // SAFETY: fadvise on our own descriptor.
            unsafe {
                assert_eq!(
                    libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED),
                    0
                );
                assert_eq!(
                    libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM),
                    0
                );
            }
            f.read_exact_at(&mut [0u8; 4096], hot).unwrap();
            let c = cached(&f, 3);
            assert!(
                c[(hot / 4096) as usize] && c.iter().filter(|&&x| x).count() == 1,
                "set-up: {c:?}"
            );
            let mut ring = IoRing::new().unwrap();
            let t = target(&f, false);
            let mut bufs = [vec![0u8; 1024], vec![0u8; 1024], vec![0u8; 1024]];
            // One run of three.
            for (i, b) in bufs.iter_mut().enumerate() {
                // SAFETY: `bufs` outlives the ring's use of it.
                unsafe { ring.queue(i as u32, t, Kind::Read, at[i], &[(b.as_mut_ptr(), 1024)]) };
            }
            let mut done = Vec::new();
            ring.pump(&mut done);
            assert!(
                done.iter().any(|d| d.token == hit as u32),
                "hot page {hot}: the hit waited for the disk: {done:?}"
            );
            done.extend(run_until(&mut ring, 3 - done.len()));
            assert_eq!(done.len(), 3);
            assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
            for (i, b) in bufs.iter().enumerate() {
                let at = at[i] as usize;
                assert_eq!(&b[..], &data[at..at + 1024], "hot page {hot}, request {i}");
            }
        }
        std::fs::remove_file(p).unwrap();
    }

    /// A page whose first touch blocks until `fill` (userfaultfd): the buffer of a write
    /// the kernel stays parked on, as a write parked in io-wq behind a slow disk.
    struct Parked {
        uffd: std::os::fd::OwnedFd,
        page: *mut u8,
    }

    impl Parked {
        fn new() -> Parked {
            use std::os::fd::FromRawFd;
            // The kernel's uapi (linux/userfaultfd.h), which libc does not carry.
            #[repr(C)]
            struct Api(u64, u64, u64);
            #[repr(C)]
            struct Register(u64, u64, u64, u64);
            const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
            const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
            // SAFETY: the syscalls and ioctls of the uapi on structs laid out as it says,
            // and an anonymous page of our own.
            unsafe {
                let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
                assert!(fd >= 0, "userfaultfd: {}", io::Error::last_os_error());
                let uffd = std::os::fd::OwnedFd::from_raw_fd(fd);
                let mut api = Api(0xaa, 0, 0);
                assert_eq!(libc::ioctl(fd, UFFDIO_API, &mut api), 0);
                let page = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(page, libc::MAP_FAILED);
                let mut reg = Register(page as u64, 4096, 1, 0);
                assert_eq!(
                    libc::ioctl(fd, UFFDIO_REGISTER, &mut reg),
                    0,
                    "UFFDIO_REGISTER: {}",
                    io::Error::last_os_error()
                );
                Parked {
                    uffd,
                    page: page.cast(),
                }
            }
        }

        /// Fill the page with `byte`, waking whoever waits on it.
        fn fill(&self, byte: u8) {
            use std::os::fd::AsRawFd;
            #[repr(C)]
            struct Copy(u64, u64, u64, u64, i64);
            const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
            let src = vec![byte; 4096];
            let mut c = Copy(self.page as u64, src.as_ptr() as u64, 4096, 0, 0);
            // SAFETY: as in `new`.
            let r = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c) };
            assert_eq!(r, 0, "UFFDIO_COPY: {}", io::Error::last_os_error());
        }
    }

    impl Drop for Parked {
        fn drop(&mut self) {
            // SAFETY: our own page.
            unsafe { libc::munmap(self.page.cast(), 4096) };
        }
    }

    #[test]
    fn overlapping_writes_land_in_the_order_they_arrived_across_rings() {
        use std::sync::mpsc::channel;
        use std::time::{Duration, Instant};
        let (p, f) = file(1 << 20);
        // Written and on disk: O_DIRECT overwrites, which the filesystem runs side by side
        // (buffered writes to one file it would serialize on the inode's lock).
        f.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
        let d = direct(&p);
        let mut t = target(&f, false);
        t.fd = d.as_raw_fd();
        t.direct = true;
        t.mem_align = 512;
        let first = Parked::new();
        let second = vec![0x22u8; 4096];
        let (page, at) = (
            first.page as usize,
            (second.as_ptr() as usize, second.len()),
        );
        // Queue worker A starts a write whose data the kernel cannot read yet (parked, as
        // behind a slow disk); then worker B gets a write to the same sectors (the
        // retransmit, or the initiator's next write). Each is a thread, as in the daemon.
        let a = std::thread::spawn(move || {
            let mut a = IoRing::new().unwrap();
            // SAFETY: the page outlives this thread, which is joined before it drops.
            unsafe { a.queue(1, t, Kind::Write, 8192, &[(page as *mut u8, 4096)]) };
            run_until(&mut a, 1)
        });
        // SAFETY: the image lives as long as the test binary (`image_of`).
        let image = unsafe { t.image.get() };
        let until = Instant::now() + Duration::from_secs(30);
        while image.writes_in_flight() == 0 {
            assert!(Instant::now() < until, "A's write never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (checked, b_checked) = channel();
        let (go, b_goes) = channel::<()>();
        let b = std::thread::spawn(move || {
            let mut b = IoRing::new().unwrap();
            let mut done = Vec::new();
            // SAFETY: `second` outlives this thread, which is joined before it drops.
            unsafe { b.queue(2, t, Kind::Write, 8192, &[(at.0 as *mut u8, at.1)]) };
            // Long enough for its write to land if nothing holds it back.
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until && done.is_empty() {
                b.pump(&mut done);
                std::thread::sleep(Duration::from_millis(1));
            }
            checked.send(!done.is_empty()).unwrap();
            b_goes.recv().unwrap();
            done.extend(run_until(&mut b, 1 - done.len()));
            done
        });
        let early = b_checked.recv().unwrap();
        first.fill(0x11);
        go.send(()).unwrap();
        let mut done = a.join().unwrap();
        done.extend(b.join().unwrap());
        assert!(!early, "B's write finished while A's was still in flight");
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
        let mut back = vec![0u8; 4096];
        f.read_exact_at(&mut back, 8192).unwrap();
        assert!(
            back.iter().all(|&x| x == 0x22),
            "the earlier write landed last"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn overlapping_writes_of_one_batch_start_in_arrival_order() {
        let (p, f) = file(1 << 20);
        let t = target(&f, false);
        let first = Parked::new();
        let second = vec![0x22u8; 8192];
        let mut a = IoRing::new().unwrap();
        let mut done = Vec::new();
        // The later write covers the earlier one and starts lower in the file: sorted by
        // offset alone, it would go first and the parked one land over it.
        // SAFETY: the page and `second` outlive the ring's use of them (waited for below).
        unsafe {
            a.queue(1, t, Kind::Write, 8192, &[(first.page, 4096)]);
            a.queue(
                2,
                t,
                Kind::Write,
                4096,
                &[(second.as_ptr().cast_mut(), 8192)],
            );
        }
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while std::time::Instant::now() < until && done.is_empty() {
            a.pump(&mut done);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(done.is_empty(), "the later write finished first: {done:?}");
        first.fill(0x11);
        done.extend(run_until(&mut a, 2 - done.len()));
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
        let mut back = vec![0u8; 8192];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert!(
            back.iter().all(|&x| x == 0x22),
            "the earlier write landed last"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn entries_a_refused_enter_left_queued_go_with_the_next_pump() {
        let mut ring = IoRing::new().unwrap();
        // What an io_uring_enter that failed (EBUSY, EAGAIN, ENOMEM) leaves behind: an
        // entry in the submission queue, with nothing staged to submit after it.
        let nop = opcode::Nop::new().build().user_data(u64::MAX);
        // SAFETY: a nop points at nothing.
        unsafe { ring.ring.submission().push(&nop).unwrap() };
        let mut done = Vec::new();
        ring.pump(&mut done);
        assert!(
            ring.ring.submission().is_empty(),
            "the entry is still waiting to be submitted"
        );
    }

    #[test]
    fn a_file_has_one_write_path() {
        use super::super::{DioAlign, WriteAround};
        for offset in [512, 4096] {
            let (p, f) = file(1 << 20);
            let d = direct(&p);
            let mut t = target(&f, true);
            // 512: every whole-sector write may go around the cache. 4096 (a 4Kn disk):
            // a 1 KiB write may not, so none does.
            t.write_around = Some(WriteAround {
                fd: d.as_raw_fd(),
                align: DioAlign { mem: 512, offset },
            });
            let (a, b) = (vec![3u8; 4096], vec![4u8; 1024]);
            // SAFETY: the buffers outlive the ring's use of them.
            unsafe {
                ring_write(&t, &a, 0, &b, 2 * 4096 + 1024);
            }
            let c = cached(&f, 3);
            assert_eq!(
                c[0], c[2],
                "alignment {offset}: page 0 cached {}, page 2 cached {}: two write paths",
                c[0], c[2]
            );
            assert_eq!(c[0], offset > 512, "alignment {offset}");
            let mut back = vec![0u8; 1024];
            f.read_exact_at(&mut back, 2 * 4096 + 1024).unwrap();
            assert_eq!(back, b);
            std::fs::remove_file(p).unwrap();
        }
    }

    /// Write `a` at `at_a` and `b` at `at_b` on a new ring and wait for both.
    unsafe fn ring_write(t: &IoTarget, a: &[u8], at_a: u64, b: &[u8], at_b: u64) {
        let mut ring = IoRing::new().unwrap();
        // SAFETY: the caller's buffers outlive this call, which waits for both.
        unsafe {
            ring.queue(
                1,
                *t,
                Kind::Write,
                at_a,
                &[(a.as_ptr().cast_mut(), a.len())],
            );
            ring.queue(
                2,
                *t,
                Kind::Write,
                at_b,
                &[(b.as_ptr().cast_mut(), b.len())],
            );
        }
        let done = run_until(&mut ring, 2);
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
    }
    #[test]
    fn a_read_that_misses_the_cache_completes_by_pump_alone_and_wakes_wait() {
        let (p, f) = file(1 << 20);
        f.write_all_at(&[0x42u8; 4096], 64 << 10).unwrap();
        f.sync_all().unwrap();
        let evict = || {
            // SAFETY: fadvise on an open descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        };
        let mut ring = IoRing::new().unwrap();
        let t = target(&f, false);
        // Completed by looking: the deferred completion raises the taskrun flag, and pump
        // enters the ring for it (no wait, no interrupt).
        evict();
        let mut a = vec![0u8; 4096];
        // SAFETY: `a` outlives the ring's use of it (run_until waits for it).
        unsafe { ring.queue(1, t, Kind::Read, 64 << 10, &[(a.as_mut_ptr(), 4096)]) };
        let done = run_until(&mut ring, 1);
        assert_eq!(done.len(), 1);
        assert!(done[0].result.is_ok(), "{:?}", done[0]);
        assert!(a.iter().all(|&b| b == 0x42));
        // Completed while asleep: wait returns for it long before its timeout.
        evict();
        let mut b = vec![0u8; 4096];
        // SAFETY: as above.
        unsafe { ring.queue(2, t, Kind::Read, 64 << 10, &[(b.as_mut_ptr(), 4096)]) };
        let mut done = Vec::new();
        ring.pump(&mut done);
        let start = Instant::now();
        while done.is_empty() && start.elapsed() < Duration::from_secs(20) {
            ring.wait(None, Duration::from_secs(10));
            ring.pump(&mut done);
        }
        assert_eq!(done.len(), 1);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(b.iter().all(|&x| x == 0x42));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn wait_wakes_when_the_watched_descriptor_becomes_readable() {
        let mut fds = [0; 2];
        // SAFETY: a pipe into a valid array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut ring = IoRing::new().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: writing one byte to the pipe's write end.
            unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
        });
        let start = Instant::now();
        ring.wait(Some(fds[0]), Duration::from_secs(10));
        writer.join().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Readable already: the next wait does not sleep either.
        let start = Instant::now();
        ring.wait(Some(fds[0]), Duration::from_secs(10));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // SAFETY: closing the pipe.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    /// A durable target on `f` with an O_DIRECT descriptor of `p` to go around the cache
    /// with (kept open by the caller), or None where the filesystem has no O_DIRECT.
    fn durable_with_write_around(p: &std::path::Path, f: &File) -> Option<(IoTarget, File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap();
        let align = super::super::dio_alignment(&direct)?;
        let mut t = target(f, true);
        t.write_around = Some(super::super::WriteAround {
            fd: direct.as_raw_fd(),
            align,
        });
        Some((t, direct))
    }

    #[test]
    fn a_lone_read_the_cache_holds_is_read_from_it_not_around_it() {
        let (p, f) = file(1 << 20);
        f.write_all_at(&[0x24u8; 128 << 10], 0).unwrap();
        f.sync_all().unwrap();
        let Some((t, _direct)) = durable_with_write_around(&p, &f) else {
            return;
        };
        // The first 32 pages are in the cache (just written), and no read of them missed.
        assert!((0..32).all(|i| super::cached(f.as_raw_fd(), i * 4096, 4096)));
        let mut ring = IoRing::new().unwrap();
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: a non-zero layout; freed below.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        let disk_reads = super::super::page_cache::thread_disk_reads;
        let before = disk_reads();
        for i in 0..32u32 {
            // SAFETY: `buf` outlives the ring's use of it (run_until waits for it).
            unsafe { ring.queue(i, t, Kind::Read, u64::from(i) * 4096, &[(buf, 4096)]) };
            let done = run_until(&mut ring, 1);
            assert!(done[0].result.is_ok(), "{:?}", done[0]);
        }
        // SAFETY: 4096 bytes just read into.
        assert!(unsafe { std::slice::from_raw_parts(buf, 4096) }
            .iter()
            .all(|&b| b == 0x24));
        // Past the cache, each would have read its page from the disk.
        assert_eq!(
            super::super::page_cache::thread_disk_reads() - before,
            0,
            "hits went around the cache"
        );
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buf, layout) };
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_lone_cold_read_goes_around_the_cache_and_a_second_miss_is_kept() {
        let (p, f) = file(1 << 20);
        f.write_all_at(&[0x42u8; 4096], 128 << 10).unwrap();
        f.sync_all().unwrap();
        let Some((t, _direct)) = durable_with_write_around(&p, &f) else {
            return;
        };
        let evict = || {
            // SAFETY: fadvise on an open descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        };
        evict();
        let mut ring = IoRing::new().unwrap();
        // Page aligned, as UMEM chunks and O_DIRECT want it.
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: a non-zero layout; freed below.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        for (round, kept) in [(1, false), (2, true)] {
            // SAFETY: `buf` outlives the ring's use of it (run_until waits for it).
            unsafe { ring.queue(round, t, Kind::Read, 128 << 10, &[(buf, 4096)]) };
            let done = run_until(&mut ring, 1);
            assert!(done[0].result.is_ok(), "{:?}", done[0]);
            // SAFETY: 4096 bytes just read into.
            assert!(unsafe { std::slice::from_raw_parts(buf, 4096) }
                .iter()
                .all(|&b| b == 0x42));
            assert_eq!(cached(&f, 33)[32], kept, "read {round}");
            evict();
        }
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buf, layout) };
        std::fs::remove_file(p).unwrap();
    }
}
