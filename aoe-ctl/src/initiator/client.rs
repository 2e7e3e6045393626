//! Requests and replies: tags, a window of requests in flight, retransmits with new tags
//! (as the Linux initiator does). Tags carry bit 31, which the Linux initiator leaves to
//! userland tools, so a kernel initiator on the same host ignores our replies.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aoe_common::wire::ata::{ATA_HEADER_LEN, STATUS_BSY, STATUS_DF, STATUS_DRQ, STATUS_ERR};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::{identify, Frame, Mac, SECTOR_SIZE};

use super::frames::{self, Addr, BROADCAST_MAC};
use crate::packet::socket::RawSocket;

/// A target as discovered by a config query.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: Addr,
    pub buffers: u16,
    pub max_sectors: u8,
    pub firmware: u16,
    pub config: Vec<u8>,
}

/// One ATA transfer.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub lba: u64,
    pub count: u8,
    pub write: bool,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub ops: u64,
    pub bytes: u64,
    pub retransmits: u64,
    pub elapsed: Duration,
}

pub struct Client {
    pub sock: RawSocket,
    tag: u32,
    pub timeout: Duration,
    pub retries: u32,
}

const FRAME_MAX: usize = 9216;

struct Slot {
    op: Op,
    tag: u32,
    sent: Instant,
    tries: u32,
    frame: Vec<u8>,
    len: usize,
}

impl Client {
    pub fn open(ifname: &str) -> Result<Client> {
        Ok(Client {
            sock: RawSocket::open(ifname)?,
            tag: std::process::id() << 12,
            timeout: Duration::from_millis(500),
            retries: 8,
        })
    }

    pub fn mac(&self) -> Mac {
        self.sock.mac()
    }

    fn next_tag(&mut self) -> u32 {
        self.tag = self.tag.wrapping_add(1);
        0x8000_0000 | (self.tag & 0x7FFF_FFFF)
    }

    /// Broadcast (or direct) a config read and collect replies for `wait`.
    pub fn query_config(&mut self, shelf: u16, slot: u8, wait: Duration) -> Result<Vec<Target>> {
        let tag = self.next_tag();
        let mut buf = vec![0u8; FRAME_MAX];
        let addr = Addr {
            src: self.mac(),
            dst: BROADCAST_MAC,
            shelf,
            slot,
        };
        let n = frames::config(&mut buf, &addr, tag, ConfigCommand::Read, b"");
        self.sock.send(&buf[..n])?;
        let deadline = Instant::now() + wait;
        let mut found: Vec<Target> = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(n) = self.sock.recv(&mut buf, left)? else {
                break;
            };
            let Ok(f) = Frame::new_checked(&buf[..n]) else {
                continue;
            };
            if !f.is_response() || f.tag() != tag || f.is_error() {
                continue;
            }
            let Ok(c) = ConfigRepr::parse(&buf[..n]) else {
                continue;
            };
            let t = Target {
                addr: Addr {
                    src: self.mac(),
                    dst: f.src(),
                    shelf: f.shelf(),
                    slot: f.slot(),
                },
                buffers: c.buffer_count,
                max_sectors: if c.sector_count == 0 {
                    2
                } else {
                    c.sector_count
                },
                firmware: c.firmware,
                config: c.string.to_vec(),
            };
            if !found.iter().any(|o| o.addr == t.addr) {
                found.push(t);
            }
        }
        Ok(found)
    }

    /// Find one target by shelf/slot.
    pub fn find(&mut self, shelf: u16, slot: u8) -> Result<Target> {
        for _ in 0..3 {
            if let Some(t) = self
                .query_config(shelf, slot, Duration::from_millis(700))?
                .into_iter()
                .next()
            {
                return Ok(t);
            }
        }
        bail!("no reply from e{shelf}.{slot} on {}", self.sock.iface.name)
    }

    /// One request, one reply; retransmitted with a new tag on timeout.
    pub fn request(&mut self, build: &dyn Fn(&mut [u8], u32) -> usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; FRAME_MAX];
        for _ in 0..=self.retries {
            let tag = self.next_tag();
            let n = build(&mut buf, tag);
            if let Some(reply) = self.exchange(&buf[..n], self.timeout)? {
                return Ok(reply);
            }
        }
        bail!("no reply after {} tries", self.retries + 1)
    }

    /// Send one prepared frame once and wait up to `timeout` for the reply with its tag.
    pub fn exchange(&mut self, frame: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>> {
        let tag = u32::from_be_bytes([frame[20], frame[21], frame[22], frame[23]]);
        let sent = Frame::new_checked(frame).context("a request shorter than an AoE header")?;
        let addr = Addr {
            src: sent.src(),
            dst: sent.dst(),
            shelf: sent.shelf(),
            slot: sent.slot(),
        };
        self.sock.send(frame)?;
        let mut buf = vec![0u8; FRAME_MAX];
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(m) = self.sock.recv(&mut buf, left)? else {
                break;
            };
            let Ok(f) = Frame::new_checked(&buf[..m]) else {
                continue;
            };
            if frames::answers(&f, &addr) && f.tag() == tag {
                return Ok(Some(buf[..m].to_vec()));
            }
        }
        Ok(None)
    }

    /// IDENTIFY DEVICE.
    pub fn identify(&mut self, t: &Target) -> Result<identify::Parsed> {
        let addr = t.addr;
        let rep = self.request(&|b, tag| frames::identify(b, &addr, tag))?;
        check_ata(&rep, "IDENTIFY")?;
        if rep.len() < ATA_HEADER_LEN + SECTOR_SIZE {
            bail!("IDENTIFY reply of {} bytes is short", rep.len());
        }
        Ok(identify::parse(
            rep[ATA_HEADER_LEN..ATA_HEADER_LEN + SECTOR_SIZE]
                .try_into()
                .unwrap(),
        ))
    }

    /// Run `ops` with up to `window` in flight. Writes take their data from `fill`; read
    /// data goes to `done`. Fails on any error reply or after `retries` retransmits.
    pub fn run(
        &mut self,
        t: &Target,
        ops: &mut dyn Iterator<Item = Op>,
        window: usize,
        fill: &dyn Fn(u64, &mut [u8]),
        done: &mut dyn FnMut(&Op, &[u8]) -> Result<()>,
    ) -> Result<RunStats> {
        let window = window.clamp(1, 256);
        let mut slots: Vec<Option<Slot>> = (0..window).map(|_| None).collect();
        let mut spare: Vec<Vec<u8>> = (0..window).map(|_| vec![0u8; FRAME_MAX]).collect();
        let mut rbuf = vec![0u8; FRAME_MAX];
        let mut stats = RunStats::default();
        let start = Instant::now();
        let mut exhausted = false;
        let mut in_flight = 0usize;
        let mut data = vec![0u8; 255 * SECTOR_SIZE];
        loop {
            // Keep the window full.
            while !exhausted && in_flight < window {
                let Some(op) = ops.next() else {
                    exhausted = true;
                    break;
                };
                let mut frame = spare.pop().unwrap();
                let tag = self.next_tag();
                let len = if op.write {
                    let d = &mut data[..op.count as usize * SECTOR_SIZE];
                    fill(op.lba, d);
                    frames::write(&mut frame, &t.addr, tag, op.lba, d)
                } else {
                    frames::read(&mut frame, &t.addr, tag, op.lba, op.count)
                };
                self.sock.send(&frame[..len])?;
                let i = slots.iter().position(|s| s.is_none()).unwrap();
                slots[i] = Some(Slot {
                    op,
                    tag,
                    sent: Instant::now(),
                    tries: 0,
                    frame,
                    len,
                });
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            if let Some(n) = self.sock.recv(&mut rbuf, Duration::from_millis(20))? {
                let Ok(f) = Frame::new_checked(&rbuf[..n]) else {
                    continue;
                };
                if !frames::answers(&f, &t.addr) {
                    continue;
                }
                let tag = f.tag();
                let Some(i) = slots
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|s| s.tag == tag))
                else {
                    continue; // a late reply to a retransmitted tag
                };
                let slot = slots[i].take().unwrap();
                in_flight -= 1;
                if f.is_error() {
                    bail!(
                        "target answered AoE error {} to lba {}",
                        f.error(),
                        slot.op.lba
                    );
                }
                check_ata(&rbuf[..n], if slot.op.write { "write" } else { "read" })
                    .with_context(|| format!("at lba {}", slot.op.lba))?;
                let bytes = slot.op.count as usize * SECTOR_SIZE;
                if !slot.op.write {
                    if n < ATA_HEADER_LEN + bytes {
                        bail!(
                            "read reply for lba {} carries {} bytes, want {}",
                            slot.op.lba,
                            n,
                            ATA_HEADER_LEN + bytes
                        );
                    }
                    done(&slot.op, &rbuf[ATA_HEADER_LEN..ATA_HEADER_LEN + bytes])?;
                } else {
                    done(&slot.op, &[])?;
                }
                stats.ops += 1;
                stats.bytes += bytes as u64;
                spare.push(slot.frame);
            }
            // Retransmit what timed out, with a new tag.
            let now = Instant::now();
            for s in slots.iter_mut().flatten() {
                if now.duration_since(s.sent) < self.timeout {
                    continue;
                }
                if s.tries >= self.retries {
                    bail!("lba {}: no reply after {} tries", s.op.lba, s.tries + 1);
                }
                s.tries += 1;
                self.tag = self.tag.wrapping_add(1);
                s.tag = 0x8000_0000 | (self.tag & 0x7FFF_FFFF);
                s.frame[20..24].copy_from_slice(&s.tag.to_be_bytes());
                self.sock.send(&s.frame[..s.len])?;
                s.sent = now;
                stats.retransmits += 1;
            }
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }
}

/// Fail unless an ATA reply says success (the Linux initiator's test: status & 0xA9 == 0).
pub fn check_ata(rep: &[u8], what: &str) -> Result<()> {
    let f = Frame::new_checked(rep).context("reply shorter than an AoE header")?;
    if f.is_error() {
        bail!("{what}: AoE error {}", f.error());
    }
    let (status, error) =
        aoe_common::wire::ata::status(rep).context("reply shorter than an ATA header")?;
    if status & (STATUS_BSY | STATUS_DF | STATUS_DRQ | STATUS_ERR) != 0 {
        bail!("{what}: ATA status {status:#04x} error {error:#04x}");
    }
    Ok(())
}
