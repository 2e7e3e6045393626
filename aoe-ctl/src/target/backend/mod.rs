//! The block backend: where sectors live. Positional, `&self` access so every queue worker
//! uses it at once without a lock.

mod fault;
mod mem;
mod mmap;

use std::io;

pub use mem::MemBackend;
pub use mmap::{MmapBackend, OpenOptions};

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// A device of whole sectors.
pub trait Backend: Send + Sync {
    /// Capacity in sectors.
    fn sectors(&self) -> u64;
    /// Copy `buf.len()` bytes from sector `lba` into `buf`.
    fn read_at(&self, lba: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Copy `buf` to sector `lba`. When this returns Ok the data is visible to every later
    /// reader and survives the death of this process (it is in the shared page cache).
    fn write_at(&self, lba: u64, buf: &[u8]) -> io::Result<()> {
        self.write_parts_at(lba, &[buf])
    }
    /// Copy the concatenation of `parts` to sector `lba`, as `write_at` does: a write that
    /// arrived in pieces (a jumbo frame's descriptors) lands without being gathered first.
    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> io::Result<()>;
    /// Make the sectors `lba .. lba + len/512` durable on stable storage.
    fn sync_range(&self, lba: u64, len: usize) -> io::Result<()>;
    /// Make everything written so far durable.
    fn flush(&self) -> io::Result<()>;
}

/// The byte range of `len` bytes at sector `lba`, if it lies inside a device of `sectors`.
pub fn byte_range(sectors: u64, lba: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
    let start = lba.checked_mul(SECTOR);
    let end = start.and_then(|s| s.checked_add(len as u64));
    match (start, end) {
        (Some(s), Some(e)) if e <= sectors * SECTOR => Ok(s as usize..e as usize),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sector {lba} + {len} bytes is outside the device ({sectors} sectors)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range(4, 0, 2048).unwrap(), 0..2048);
        assert_eq!(byte_range(4, 3, 512).unwrap(), 1536..2048);
        assert!(byte_range(4, 3, 1024).is_err());
        assert!(byte_range(4, u64::MAX, 512).is_err());
        assert!(byte_range(4, u64::MAX / 512, 512).is_err());
    }
}
