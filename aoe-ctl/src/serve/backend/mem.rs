//! An in-memory backend for tests of the engine.

use std::sync::Mutex;

use super::{byte_range, Backend, Result, SECTOR};

pub struct MemBackend {
    data: Mutex<Vec<u8>>,
    sectors: u64,
}

impl MemBackend {
    pub fn new(sectors: u64) -> Self {
        MemBackend {
            data: Mutex::new(vec![0; (sectors * SECTOR) as usize]),
            sectors,
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl Backend for MemBackend {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read_at(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let r = byte_range(self.sectors, lba, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> Result<()> {
        let r = byte_range(self.sectors, lba, parts.iter().map(|p| p.len()).sum())?;
        let mut data = self.data.lock().unwrap();
        let mut at = r.start;
        for p in parts {
            data[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        Ok(())
    }
    fn sync_range(&self, _lba: u64, _len: usize) -> Result<()> {
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
