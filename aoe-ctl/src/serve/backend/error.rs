//! How a backend I/O fails: one enum, so the engine and its counters can tell a bad request
//! from a failing store without parsing messages.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("sector {lba} + {len} bytes is outside the device ({sectors} sectors)")]
    OutOfRange { lba: u64, len: usize, sectors: u64 },
    #[error("an O_DIRECT I/O of {len} bytes is not whole sectors up to {max}")]
    Unaligned { len: usize, max: usize },
    #[error("{call} failed: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{call} moved {done} of {len} bytes: the image is shorter than the export (truncated?) or its filesystem is full")]
    Short {
        call: &'static str,
        len: usize,
        done: usize,
    },
    #[error("the backing store failed under the mapping (SIGBUS): file shrunk, filesystem full or device error")]
    Sigbus,
    #[error("a concurrent backing-store fault may have touched this copy")]
    ConcurrentFault,
    #[error("failed closed ({why}): every I/O fails until the export is reopened")]
    FailedClosed { why: &'static str },
    #[error("sector {lba} + {count} is past the end of the backing store, which shrank to {store} sectors (not followed: the export still serves its old size)")]
    Shrunk { lba: u64, count: usize, store: u64 },
}

impl BackendError {
    /// Short stable label for counters and logs: "out_of_range", "unaligned", "io",
    /// "no_space", "short", "sigbus", "concurrent_fault", "failed_closed", "shrunk".
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::OutOfRange { .. } => "out_of_range",
            BackendError::Unaligned { .. } => "unaligned",
            BackendError::Syscall { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => "no_space",
                _ => "io",
            },
            BackendError::Short { .. } => "short",
            BackendError::Sigbus => "sigbus",
            BackendError::ConcurrentFault => "concurrent_fault",
            BackendError::FailedClosed { .. } => "failed_closed",
            BackendError::Shrunk { .. } => "shrunk",
        }
    }

    /// A closure for `map_err` naming the failed `call`.
    pub fn syscall(call: &'static str) -> impl FnOnce(io::Error) -> BackendError {
        move |source| BackendError::Syscall { call, source }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let sys = |errno| BackendError::syscall("pwrite")(io::Error::from_raw_os_error(errno));
        assert_eq!(sys(libc::ENOSPC).reason(), "no_space");
        assert_eq!(sys(libc::EDQUOT).reason(), "no_space");
        assert_eq!(sys(libc::EIO).reason(), "io");
        let e = sys(libc::EIO).to_string();
        assert!(e.starts_with("pwrite failed: "), "{e}");
        assert_eq!(BackendError::Sigbus.reason(), "sigbus");
        assert_eq!(
            BackendError::FailedClosed { why: "x" }.to_string(),
            "failed closed (x): every I/O fails until the export is reopened"
        );
    }
}
