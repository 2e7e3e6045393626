//! SIGBUS from a mapped file becomes an I/O error instead of killing the target.
//!
//! A file shrunk under the running target, a full filesystem under a sparse image, or a
//! device error turn an access to the mapping into SIGBUS. Copies to and from the mapping run
//! inside `guarded`. When such a copy faults, the handler puts an anonymous page where the
//! file's page was, so the copy can finish, and notes the page. Afterwards the file's page is
//! mapped back, so a later access tries the file again, and the copy reports an error: an ATA
//! error to the initiator, never an acknowledgement. If the file's page cannot be mapped
//! back, the caller's `restore` fails its mapping closed. A SIGBUS outside a guarded copy is
//! still fatal.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

use super::{BackendError, Result};

/// Pages one copy may span: 255 sectors (130560 bytes) touch at most 33 pages of 4 KiB.
const MAX_PAGES: usize = 64;

thread_local! {
    /// The mapping addresses the running guarded copy may touch (empty: none).
    static RANGE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    static FAULTS: Cell<usize> = const { Cell::new(0) };
    static PAGES: [Cell<usize>; MAX_PAGES] = const { [const { Cell::new(0) }; MAX_PAGES] };
    /// The `LIVE` slot announcing each of `PAGES` (`UNNAMED`: none was free).
    static SLOTS: [Cell<usize>; MAX_PAGES] = const { [const { Cell::new(0) }; MAX_PAGES] };
}

/// A copy on another thread that touched a page while its stand-in was mapped cannot trust
/// what it read or wrote, so it reports an error too. Faults are logged (page addresses,
/// numbered by `EPOCH`) and live stand-ins kept in `LIVE`, so a copy checks only its own range.
static EPOCH: AtomicU64 = AtomicU64::new(0);
const LOG: usize = 256;
static FAULT_LOG: [AtomicUsize; LOG] = [const { AtomicUsize::new(0) }; LOG];
static LIVE: [AtomicUsize; MAX_PAGES] = [const { AtomicUsize::new(0) }; MAX_PAGES];
/// How many `LIVE` slots are in use: copies skip scanning the table while it is 0.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Live stand-ins that found every `LIVE` slot taken. While any exists every copy reports a
/// concurrent fault: a stand-in nobody can name must not be read as data.
static UNNAMED_COUNT: AtomicUsize = AtomicUsize::new(0);
const UNNAMED: usize = usize::MAX;
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf and sigaction with a handler that only makes async-signal-safe
        // calls (mmap, signal) and touches const-initialized thread-locals and atomics.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (lo, hi) = RANGE.with(|r| r.get());
    let page_size = PAGE.load(Ordering::Relaxed);
    let fail = || {
        // Not a guarded copy: return to the faulting instruction with the default action,
        // which kills the process as an unhandled SIGBUS would have.
        // SAFETY: signal() is async-signal-safe.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    };
    if addr < lo || addr >= hi {
        return fail();
    }
    let n = FAULTS.with(|f| f.get());
    if n >= MAX_PAGES {
        return fail();
    }
    let page = addr & !(page_size - 1);
    // Announce the stand-in before it exists: a copy on another thread that can touch it
    // runs after the mmap below, so it is sure to see the page in `LIVE` (or counted in
    // `UNNAMED_COUNT`) or in the log.
    let mut slot = UNNAMED;
    for (i, s) in LIVE.iter().enumerate() {
        if s.compare_exchange(0, page, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            LIVE_COUNT.fetch_add(1, Ordering::SeqCst);
            slot = i;
            break;
        }
    }
    if slot == UNNAMED {
        UNNAMED_COUNT.fetch_add(1, Ordering::SeqCst);
    }
    let seq = EPOCH.fetch_add(1, Ordering::SeqCst);
    FAULT_LOG[seq as usize % LOG].store(page, Ordering::SeqCst);
    // SAFETY: `page` lies in our own mapping; replacing it is what this module is for.
    let p = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            page_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return fail();
    }
    PAGES.with(|pages| pages[n].set(page));
    SLOTS.with(|slots| slots[n].set(slot));
    FAULTS.with(|f| f.set(n + 1));
}

/// Run `copy`, which touches only mapping addresses `lo..hi`. If the backing store failed
/// under it, `restore(page, page_size)` maps the file back at each replaced page and the
/// result is an error.
///
/// When `restore` fails, the stand-in stays over the file, yet it is no longer announced
/// once `restore` returns: before returning the error `restore` must fail the mapping closed
/// (refuse every later copy, and have copies that ran concurrently check again after
/// `guarded` returns), or they would read the stand-in's zeros as data.
pub fn guarded(
    lo: usize,
    hi: usize,
    copy: impl FnOnce(),
    restore: impl Fn(usize, usize) -> Result<()>,
) -> Result<()> {
    install();
    let page_size = PAGE.load(Ordering::Relaxed);
    // Pages overlapping lo..hi start at most one page before lo.
    let touches = |page: usize| page != 0 && page < hi && page + page_size > lo;
    let live_touches = || {
        UNNAMED_COUNT.load(Ordering::SeqCst) > 0
            || (LIVE_COUNT.load(Ordering::SeqCst) > 0
                && LIVE.iter().any(|p| touches(p.load(Ordering::SeqCst))))
    };
    let epoch = EPOCH.load(Ordering::SeqCst);
    let live_before = live_touches();
    FAULTS.with(|f| f.set(0));
    RANGE.with(|r| r.set((lo, hi)));
    compiler_fence(Ordering::SeqCst);
    copy();
    compiler_fence(Ordering::SeqCst);
    RANGE.with(|r| r.set((0, 0)));
    let n = FAULTS.with(|f| f.get());
    let mut restored = Ok(());
    for i in 0..n {
        let page = PAGES.with(|p| p[i].get());
        if let Err(e) = restore(page, page_size) {
            restored = Err(e);
        }
        // Free exactly the slot this fault took: another thread may have faulted the same
        // page again after an earlier restore, and its stand-in is still live.
        match SLOTS.with(|s| s[i].get()) {
            UNNAMED => UNNAMED_COUNT.fetch_sub(1, Ordering::SeqCst),
            slot => {
                LIVE[slot].store(0, Ordering::SeqCst);
                LIVE_COUNT.fetch_sub(1, Ordering::SeqCst)
            }
        };
    }
    restored?;
    if n > 0 {
        return Err(BackendError::Sigbus);
    }
    let now = EPOCH.load(Ordering::SeqCst);
    let logged = if now - epoch > LOG as u64 {
        true
    } else {
        (epoch..now).any(|seq| touches(FAULT_LOG[seq as usize % LOG].load(Ordering::SeqCst)))
    };
    if live_before || logged || live_touches() {
        return Err(BackendError::ConcurrentFault);
    }
    Ok(())
}
