//! Asking the page cache whether it holds a file's bytes, without reading them.

use std::os::fd::RawFd;

/// Does the page cache hold every page of `len` bytes at `at` of the file at `fd`? One
/// cachestat(2) (Linux 6.5): a lookup in the file's page index, ~250 ns here, with no page
/// table walk as mincore(2) needs (~1.2 us here). Where the call fails (an older kernel),
/// says no: the caller then takes its path for a miss, which is always correct.
pub fn cached(fd: RawFd, at: u64, len: u64) -> bool {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    // SAFETY: sysconf has no preconditions (glibc answers the page size from memory).
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(512) as u64;
    let first = at - at % page;
    let range = Range {
        off: first,
        len: at + len - first,
    };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both valid for the call.
    let r = unsafe { libc::syscall(SYS_CACHESTAT, fd, &range, &mut st, 0) };
    r == 0 && st.nr_cache >= range.len.div_ceil(page)
}

/// Bytes this thread has had read from the disk (/proc/thread-self/io): how a test tells a
/// read the cache answered from one the disk did. The thread's own count, since tests
/// beside it read from the disk too.
#[cfg(test)]
pub fn thread_disk_reads() -> u64 {
    std::fs::read_to_string("/proc/thread-self/io")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("read_bytes: ")
                .map(|v| v.parse::<u64>().unwrap())
        })
        .unwrap()
}
