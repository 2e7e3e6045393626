//! Frames built in user memory and handed to an AF_PACKET socket with one `sendmmsg` per
//! batch: the load generator's transmit side.
//!
//! Why not the PACKET_MMAP tx ring: the kernel sends a tx-ring frame as page fragments of the
//! ring, and a veth that moves it into another namespace must copy those into fresh pages
//! (`skb_copy_ubufs`), then hand the slot back through a completion callback. A `sendmmsg` copies
//! a short request into the skb's own head once. Against the in-kernel ceiling that was ~15%
//! less CPU per request here (docs/benchmarks.md, "The load generator").

use std::io;
use std::os::fd::RawFd;

use anyhow::{Context, Result};

/// Shortest Ethernet frame without its FCS: shorter ones are padded with zeros.
const MIN_FRAME: usize = 60;

pub struct TxBatch {
    /// `capacity` frames of `stride` bytes each.
    frames: Vec<u8>,
    stride: usize,
    lens: Vec<usize>,
    /// Frames `sent..queued` wait for the kernel.
    sent: usize,
    queued: usize,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl TxBatch {
    /// Room for `capacity` frames of at most `max_frame` bytes.
    pub fn new(capacity: usize, max_frame: usize) -> TxBatch {
        let stride = max_frame.max(MIN_FRAME).next_multiple_of(64);
        TxBatch {
            frames: vec![0; capacity * stride],
            stride,
            lens: vec![0; capacity],
            sent: 0,
            queued: 0,
            iov: Vec::with_capacity(capacity),
            // SAFETY: mmsghdr is plain old data; all zeros is a valid (empty) value.
            msgs: vec![unsafe { std::mem::zeroed() }; capacity],
        }
    }

    /// Frames queued and not yet taken by the kernel.
    pub fn pending(&self) -> usize {
        self.queued - self.sent
    }

    /// Build the next frame with `build` (which returns its length, 0 for nothing); false
    /// when the batch is full (flush, then try again).
    pub fn queue(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.queued == self.lens.len() {
            self.compact();
            if self.queued == self.lens.len() {
                return false;
            }
        }
        let at = self.queued * self.stride;
        let buf = &mut self.frames[at..at + self.stride];
        let n = build(buf).min(self.stride);
        if n == 0 {
            return true;
        }
        if n < MIN_FRAME {
            buf[n..MIN_FRAME].fill(0);
        }
        self.lens[self.queued] = n.max(MIN_FRAME);
        self.queued += 1;
        true
    }

    /// Move the frames still waiting to the front, making room after them.
    fn compact(&mut self) {
        if self.sent == 0 {
            return;
        }
        let (from, n) = (self.sent, self.queued - self.sent);
        self.frames
            .copy_within(from * self.stride..self.queued * self.stride, 0);
        self.lens.copy_within(from..self.queued, 0);
        self.sent = 0;
        self.queued = n;
    }

    /// Hand every queued frame to the socket `fd` (bound to its interface): one syscall for
    /// the batch. What the kernel does not take now (a full device queue) stays queued for
    /// the next flush.
    pub fn flush(&mut self, fd: RawFd) -> Result<()> {
        while self.sent < self.queued {
            self.iov.clear();
            for i in self.sent..self.queued {
                self.iov.push(libc::iovec {
                    // SAFETY: frame i lies inside `frames`.
                    iov_base: unsafe { self.frames.as_mut_ptr().add(i * self.stride) }.cast(),
                    iov_len: self.lens[i],
                });
            }
            let n = self.iov.len();
            for (m, iov) in self.msgs.iter_mut().zip(self.iov.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_len = 0;
            }
            // SAFETY: `n` valid mmsghdrs, each with one iovec into `frames`, all alive for the
            // call; no address (the socket is bound to its interface and protocol).
            let r =
                unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The device queue is full: the frames stay queued for the next flush.
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => break,
                    _ => return Err(e).context("sendmmsg"),
                }
            }
            self.sent += r as usize;
            if (r as usize) < n {
                break;
            }
        }
        if self.sent == self.queued {
            self.sent = 0;
            self.queued = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_frames_are_padded_and_a_full_batch_says_so() {
        let mut b = TxBatch::new(2, 100);
        assert!(b.queue(|buf| {
            buf[..3].copy_from_slice(b"abc");
            buf[3..60].fill(0xee);
            3
        }));
        assert_eq!(b.lens[0], 60);
        assert!(b.frames[3..60].iter().all(|&x| x == 0));
        assert!(b.queue(|_| 0), "nothing to send is not a failure");
        assert_eq!(b.pending(), 1);
        assert!(b.queue(|_| 80));
        assert!(!b.queue(|_| 80), "full");
        // Part of the batch went: the rest moves to the front to make room.
        b.sent = 1;
        assert!(b.queue(|_| 70));
        assert_eq!((b.sent, b.queued), (0, 2));
        assert_eq!(&b.lens[..2], &[80, 70]);
    }
}
