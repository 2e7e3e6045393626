//! The storage I/O of one queue worker, in flight on the worker's own io_uring. The worker
//! queues each request's I/O and goes on; nothing here waits for the disk. A page-cache hit
//! completes inside the submitting call, a miss completes later, and replies leave in
//! completion order (tags make that legal). Adjacent requests of one batch become one
//! readv/writev (the Linux initiator cuts each bio into consecutive frames), so the disk and
//! the kernel's readahead see the I/O the initiator issued, not its frames. A durable
//! write is acknowledged only after an fdatasync issued after it completed; one fdatasync
//! covers every write of that file waiting at the time (group commit).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::{BackendError, IoTarget};

/// Most requests merged into one I/O (as ggaoed).
pub const MAX_MERGE: usize = 32;
/// Most bytes of one merged I/O: 32 jumbo frames of 17 sectors fit.
const MAX_MERGED_BYTES: usize = 288 << 10;
/// Submission queue entries: more than the requests one batch can bring.
const ENTRIES: u32 = 512;
/// `user_data` of the poll on the worker's socket (`IoRing::wait`); slots are far below it.
const POLL_TOKEN: u64 = u64::MAX;

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
struct Queued {
    token: u32,
    target: IoTarget,
    kind: Kind,
    offset: u64,
    len: usize,
    /// Its buffers: `staged_iov[iov.0 .. iov.0 + iov.1]`.
    iov: (usize, usize),
}

/// One submitted operation: its requests, in file order, each ending at `end` bytes into it.
#[derive(Default)]
struct Op {
    members: Vec<(u32, usize)>,
    iov: Vec<libc::iovec>,
    /// An aligned copy for O_DIRECT when the requests' buffers are not aligned.
    bounce: Option<Bounce>,
    kind: Option<OpKind>,
}

#[derive(Clone, Copy)]
enum OpKind {
    Io { kind: Kind, target: IoTarget },
    Sync { fd: RawFd },
}

/// Group commit state of one file.
#[derive(Default)]
struct Commit {
    /// Requests whose writes completed (or flushes that arrived) since the last fdatasync
    /// was issued: acknowledged by the next one.
    waiting: Vec<u32>,
    syncing: bool,
}

pub struct IoRing {
    ring: IoUring,
    ops: Vec<Op>,
    free: Vec<usize>,
    staged: Vec<Queued>,
    staged_iov: Vec<libc::iovec>,
    commits: HashMap<RawFd, Commit>,
    /// Requests queued or submitted and not done yet.
    in_flight: usize,
    bounces: Vec<Bounce>,
    /// Finished requests not handed to the worker yet.
    ready: Vec<Done>,
    /// fdatasyncs issued.
    syncs: u64,
    /// A poll of the socket `wait` watches is armed (it completes once, when readable).
    polling: bool,
    /// Pages that missed the cache lately (see `submit_io`).
    missed: Missed,
}

// SAFETY: the raw pointers in `Op::iov` and `Queued` point at buffers the worker that owns
// this ring keeps for the request until its `Done`; the ring moves with its worker only.
unsafe impl Send for IoRing {}

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
            in_flight: 0,
            bounces: Vec::new(),
            ready: Vec::new(),
            syncs: 0,
            polling: false,
            missed: Missed::default(),
        })
    }

    /// Requests queued and not handed back by `pump` yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight + self.ready.len()
    }

    /// The one place a queue worker sleeps: until a storage completion arrives, `watch` (the
    /// worker's socket, through a poll on this ring) becomes readable, or `timeout` passes.
    /// What completed is handed out by the next `pump`.
    pub fn wait(&mut self, watch: Option<RawFd>, timeout: std::time::Duration) {
        self.reap();
        if !self.ready.is_empty() {
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

    /// Queue the I/O of request `token`: `len` bytes at byte `offset` of the export (its
    /// start in the file is `target.base`), to or from `bufs`. Flushes have no buffers.
    ///
    /// # Safety
    /// Every buffer stays valid, and is neither read nor written by anyone else, until this
    /// ring reports the token done.
    pub unsafe fn queue(
        &mut self,
        token: u32,
        target: IoTarget,
        kind: Kind,
        offset: u64,
        bufs: &[(*mut u8, usize)],
    ) {
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
        });
        self.in_flight += 1;
    }

    /// Submit what was queued (merged), collect what completed, start the fdatasyncs that
    /// waiting writes need; finished requests are appended to `done`.
    pub fn pump(&mut self, done: &mut Vec<Done>) {
        self.submit_staged();
        if self.ring.submission().taskrun() {
            self.enter();
        }
        self.reap();
        if self.start_syncs() {
            self.enter();
            self.reap();
        }
        done.append(&mut self.ready);
    }

    fn submit_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut staged = std::mem::take(&mut self.staged);
        // Stable: requests for the same sectors keep their arrival order.
        staged.sort_by_key(|q| (q.target.fd, q.kind as u8, q.offset));
        // A write past the end of a regular file would grow it back after someone shrank it
        // under us, leaving zeros where data was: such writes fail instead. One fstat per
        // file and batch (a shrink between it and the write can still slip through).
        let mut sizes: Vec<(RawFd, u64)> = Vec::new();
        let mut i = 0;
        while i < staged.len() {
            let first = &staged[i];
            if first.kind == Kind::Write && first.target.regular {
                let fd = first.target.fd;
                let size = match sizes.iter().find(|s| s.0 == fd) {
                    Some(&(_, size)) => size,
                    None => {
                        let size = file_size(fd);
                        sizes.push((fd, size));
                        size
                    }
                };
                let end = first.target.base + first.offset + first.len as u64;
                if end > size {
                    self.in_flight -= 1;
                    self.ready.push(Done {
                        token: first.token,
                        result: Err(BackendError::Short {
                            call: "write",
                            len: first.len,
                            done: 0,
                        }),
                    });
                    i += 1;
                    continue;
                }
            }
            if first.kind == Kind::Flush {
                self.commits
                    .entry(first.target.fd)
                    .or_default()
                    .waiting
                    .push(first.token);
                i += 1;
                continue;
            }
            // The run of requests that continue each other.
            let mut j = i + 1;
            let mut bytes = first.len;
            while j < staged.len()
                && j - i < MAX_MERGE
                && staged[j].target.fd == first.target.fd
                && staged[j].kind == first.kind
                && staged[j].offset == first.offset + bytes as u64
                && bytes + staged[j].len <= MAX_MERGED_BYTES
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
        self.enter();
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
            op.members.push((q.token, end));
            op.iov
                .extend_from_slice(&self.staged_iov[q.iov.0..q.iov.0 + q.iov.1]);
        }
        if end > MAX_MERGED_BYTES || op.iov.len() > libc::UIO_MAXIOV as usize {
            // Cannot happen with the limits above; refuse rather than overrun the bounce.
            for &(token, _) in &op.members {
                self.in_flight -= 1;
                self.ready.push(Done {
                    token,
                    result: Err(BackendError::Unaligned {
                        len: end,
                        max: MAX_MERGED_BYTES,
                    }),
                });
            }
            self.ops[slot] = op;
            self.free.push(slot);
            return;
        }
        // Durable writes go around the page cache where the file allows: a write smaller
        // than a page would otherwise first read that page from the disk, and the page
        // would be written back again by the fdatasync. A lone read that missed the cache
        // (the worker reads what the cache holds from the mapping before it comes here)
        // goes around it too, unless the same pages missed a little while ago: a page read
        // once costs a cache insert and a whole page from the disk for nothing, a page read
        // again is worth keeping. A merged run is a stream: through the cache, for readahead.
        let at = target.base + first.offset;
        let (fd, direct, mem_align) = match target.write_around {
            Some(w)
                if target.durable
                    && at.is_multiple_of(w.align.offset as u64)
                    && end % w.align.offset == 0
                    && (kind == Kind::Write
                        || (kind == Kind::Read
                            && run.len() == 1
                            && !self.missed.again(target.fd, at))) =>
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
        let fd = types::Fd(fd);
        let offset = at;
        let entry = match (&mut op.bounce, kind) {
            (Some(b), Kind::Read) => opcode::Read::new(fd, b.as_mut().as_mut_ptr(), end as u32)
                .offset(offset)
                .build(),
            (Some(b), _) => opcode::Write::new(fd, b.as_mut().as_ptr(), end as u32)
                .offset(offset)
                .build(),
            (None, Kind::Read) if op.iov.len() == 1 => {
                opcode::Read::new(fd, op.iov[0].iov_base.cast(), end as u32)
                    .offset(offset)
                    .build()
            }
            (None, Kind::Read) => opcode::Readv::new(fd, op.iov.as_ptr(), op.iov.len() as u32)
                .offset(offset)
                .build(),
            (None, _) if op.iov.len() == 1 => {
                opcode::Write::new(fd, op.iov[0].iov_base as *const u8, end as u32)
                    .offset(offset)
                    .build()
            }
            (None, _) => opcode::Writev::new(fd, op.iov.as_ptr(), op.iov.len() as u32)
                .offset(offset)
                .build(),
        };
        op.kind = Some(OpKind::Io { kind, target });
        self.ops[slot] = op;
        self.push(entry.user_data(slot as u64));
    }

    /// Start an fdatasync for each file with requests waiting and none in flight.
    fn start_syncs(&mut self) -> bool {
        let ready: Vec<RawFd> = self
            .commits
            .iter()
            .filter(|(_, c)| !c.syncing && !c.waiting.is_empty())
            .map(|(&fd, _)| fd)
            .collect();
        for &fd in &ready {
            let c = self.commits.get_mut(&fd).expect("listed above");
            c.syncing = true;
            self.syncs += 1;
            let members: Vec<(u32, usize)> = c.waiting.drain(..).map(|t| (t, 0)).collect();
            let slot = self.slot();
            let op = &mut self.ops[slot];
            op.members = members;
            op.kind = Some(OpKind::Sync { fd });
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(slot as u64);
            self.push(entry);
        }
        !ready.is_empty()
    }

    fn reap(&mut self) {
        loop {
            let cqe = {
                let mut cq = self.ring.completion();
                cq.sync();
                cq.next()
            };
            let Some(cqe) = cqe else { break };
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
        let mut members = std::mem::take(&mut op.members);
        let bounce = op.bounce.take();
        match kind {
            OpKind::Sync { fd } => {
                let c = self.commits.entry(fd).or_default();
                c.syncing = false;
                if c.waiting.is_empty() {
                    self.commits.remove(&fd);
                }
                for &(token, _) in &members {
                    self.in_flight -= 1;
                    self.ready.push(Done {
                        token,
                        result: syscall_result("fdatasync", res),
                    });
                }
            }
            OpKind::Io { kind, target } => {
                let got = usize::try_from(res).unwrap_or(0);
                if let (Some(b), Kind::Read, true) = (&bounce, kind, res > 0) {
                    let mut at = 0;
                    for v in &op.iov {
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
                let call = if kind == Kind::Read { "read" } else { "write" };
                for &(token, end) in &members {
                    let result = if res < 0 {
                        syscall_result(call, res)
                    } else if got < end {
                        Err(BackendError::Short {
                            call,
                            len: end,
                            done: got,
                        })
                    } else {
                        Ok(())
                    };
                    if result.is_ok() && kind == Kind::Write && target.durable {
                        // Acknowledged once an fdatasync issued from now on completes.
                        self.commits
                            .entry(target.fd)
                            .or_default()
                            .waiting
                            .push(token);
                        continue;
                    }
                    self.in_flight -= 1;
                    self.ready.push(Done { token, result });
                }
            }
        }
        members.clear();
        let op = &mut self.ops[slot];
        op.members = members;
        if let Some(b) = bounce {
            self.bounces.push(b);
        }
        self.free.push(slot);
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

    fn enter(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY/EAGAIN: too many completions unread; the caller reaps and comes back.
                Err(_) => return,
            }
        }
    }
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
    use super::*;
    use std::os::fd::AsRawFd;
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

    fn target(f: &std::fs::File, durable: bool) -> IoTarget {
        IoTarget {
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

    /// Is the page at `at` of `f` in the page cache? (A non-blocking read says.)
    fn cached(f: &std::fs::File, at: u64) -> bool {
        let mut b = [0u8; 512];
        let iov = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        // SAFETY: one valid iovec on an open descriptor.
        let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, at as i64, libc::RWF_NOWAIT) };
        r == 512
    }

    #[test]
    fn a_lone_cold_read_goes_around_the_cache_and_a_second_miss_is_kept() {
        use std::os::unix::fs::OpenOptionsExt;
        let (p, f) = file(1 << 20);
        f.write_all_at(&[0x42u8; 4096], 128 << 10).unwrap();
        f.sync_all().unwrap();
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .unwrap();
        let Some(align) = super::super::dio_alignment(&direct) else {
            // A filesystem without O_DIRECT here: nothing to go around the cache with.
            return;
        };
        let mut t = target(&f, true);
        t.write_around = Some(super::super::WriteAround {
            fd: direct.as_raw_fd(),
            align,
        });
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
            assert_eq!(cached(&f, 128 << 10), kept, "read {round}");
            evict();
        }
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buf, layout) };
        std::fs::remove_file(p).unwrap();
    }
}
