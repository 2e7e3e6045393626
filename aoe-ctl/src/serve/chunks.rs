//! Which UMEM chunks user space owns, and for what.
//!
//! The UMEM is two regions (from address 0, `Layout`). Single chunks feed the fill ring and carry replies that fit where
//! the request arrived. Runs of adjacent chunks (jumbo MTU only) hold a reply longer than one
//! chunk as one contiguous buffer: the engine writes it in one piece, and it leaves as a chain
//! of descriptors, one per chunk. A run comes back when all its chunks have completed.

use super::xsk::FRAME_SIZE;

const CHUNK: u64 = FRAME_SIZE as u64;

/// Where in a run a request is placed: its sectors (after the 36-byte ATA header) then start
/// on a 512-byte boundary, as O_DIRECT wants them.
pub const RUN_OFFSET: usize = 512 - 36;

/// How a UMEM is cut up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub singles: u32,
    pub runs: u32,
    pub run_chunks: u32,
}

impl Layout {
    /// Chunks for the rings of `ring` entries and, when frames of `max_frame` bytes do not
    /// fit one chunk, as many runs as one ring's worth of the longest replies needs.
    pub fn for_frames(ring: u32, max_frame: usize, fits_one_chunk: usize) -> Layout {
        let run_chunks = (RUN_OFFSET + max_frame).div_ceil(FRAME_SIZE as usize) as u32;
        Layout {
            singles: ring * 2,
            runs: if max_frame > fits_one_chunk {
                ring / 8
            } else {
                0
            },
            run_chunks,
        }
    }

    /// Frames longer than one chunk arrive and leave as descriptor chains.
    pub fn multi_buffer(&self) -> bool {
        self.runs > 0
    }

    pub fn total(&self) -> u32 {
        self.singles + self.runs * self.run_chunks
    }
}

pub struct Chunks {
    singles: Vec<u64>,
    runs: Vec<u64>,
    /// Chunks of each run still owned by the kernel.
    outstanding: Vec<u8>,
    run_start: u64,
    run_chunks: u32,
}

impl Chunks {
    pub fn new(layout: Layout) -> Self {
        let Layout {
            singles,
            runs,
            run_chunks,
        } = layout;
        let run_start = u64::from(singles) * CHUNK;
        let run_len = u64::from(run_chunks) * CHUNK;
        Chunks {
            singles: (0..u64::from(singles)).map(|i| i * CHUNK).collect(),
            runs: (0..u64::from(runs))
                .rev()
                .map(|i| run_start + i * run_len)
                .collect(),
            outstanding: vec![0; runs as usize],
            run_start,
            run_chunks,
        }
    }

    /// Bytes one run holds (0 without runs).
    pub fn run_len(&self) -> usize {
        if self.outstanding.is_empty() {
            0
        } else {
            self.run_chunks as usize * FRAME_SIZE as usize
        }
    }

    pub fn take(&mut self) -> Option<u64> {
        self.singles.pop()
    }

    pub fn singles_mut(&mut self) -> &mut Vec<u64> {
        &mut self.singles
    }

    pub fn take_run(&mut self) -> Option<u64> {
        self.runs.pop()
    }

    pub fn has_run(&self) -> bool {
        !self.runs.is_empty()
    }

    /// A run taken with `take_run` whose first `chunks` chunks went to the tx ring.
    pub fn run_sent(&mut self, base: u64, chunks: usize) {
        if chunks == 0 {
            self.runs.push(base);
        } else {
            let i = self.run_index(base);
            self.outstanding[i] = chunks as u8;
        }
    }

    /// A run taken with `take_run` that was not used.
    pub fn put_run(&mut self, base: u64) {
        self.runs.push(base);
    }

    /// A chunk came back from the kernel (rx consumed or tx completed) at any address in it.
    pub fn put(&mut self, addr: u64) {
        if addr < self.run_start {
            self.singles.push(addr & !(CHUNK - 1));
            return;
        }
        let i = self.run_index(addr);
        let Some(left) = self.outstanding.get_mut(i) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.runs
                .push(self.run_start + i as u64 * u64::from(self.run_chunks) * CHUNK);
        }
    }

    fn run_index(&self, addr: u64) -> usize {
        ((addr - self.run_start) / (u64::from(self.run_chunks) * CHUNK)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_returns_when_its_last_chunk_completes() {
        let layout = Layout {
            singles: 4,
            runs: 2,
            run_chunks: 3,
        };
        assert_eq!(layout.total(), 10);
        let mut c = Chunks::new(layout);
        let r = c.take_run().unwrap();
        assert_eq!(r, 4 * CHUNK);
        c.run_sent(r, 3);
        let other = c.take_run().unwrap();
        assert!(c.take_run().is_none());
        c.put(r + 256);
        c.put(r + CHUNK);
        assert!(!c.has_run());
        c.put(r + 2 * CHUNK);
        assert_eq!(c.take_run(), Some(r));
        c.run_sent(other, 0);
        assert_eq!(c.take_run(), Some(other));
    }

    #[test]
    fn singles_come_back_at_their_base() {
        let mut c = Chunks::new(Layout {
            singles: 2,
            runs: 0,
            run_chunks: 3,
        });
        assert_eq!(c.run_len(), 0);
        let a = c.take().unwrap();
        c.take().unwrap();
        assert!(c.take().is_none());
        c.put(a + 256);
        assert_eq!(c.take(), Some(a));
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn runs_only_for_frames_longer_than_a_chunk() {
        let small = Layout::for_frames(2048, 1518, 3840);
        assert_eq!(small.runs, 0);
        assert_eq!(small.total(), 4096);
        let jumbo = Layout::for_frames(2048, 9018, 3840);
        assert_eq!((jumbo.runs, jumbo.run_chunks), (256, 3));
    }
}
