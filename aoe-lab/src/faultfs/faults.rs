//! The faults a test arms on a faultfs disk: errors on reads, writes or syncs of a byte
//! range, each for a number of requests or until cleared.

use anyhow::{bail, Context, Result};

/// The request a fault fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// An fsync or fdatasync that finds a cached page of the range to write back: that page
    /// is lost and the sync fails, as a failed writeback does in the kernel.
    Sync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    /// Byte range `at .. at + len` of the file.
    pub at: u64,
    pub len: u64,
    /// What the failed request returns.
    pub errno: i32,
    /// Requests left to fail; None: until cleared.
    pub times: Option<u64>,
}

impl Fault {
    pub fn overlaps(&self, at: u64, len: u64) -> bool {
        at < self.at.saturating_add(self.len) && self.at < at.saturating_add(len)
    }

    /// `fail OP [at=BYTES] [len=BYTES] [errno=NAME|N] [times=N]`, without the `fail`: the
    /// whole file, EIO and no end by default (a sync fault: once).
    pub fn parse(words: &[&str]) -> Result<Fault> {
        let (op, rest) = words
            .split_first()
            .context("fail what? read, write or sync")?;
        let op = match *op {
            "read" => Op::Read,
            "write" => Op::Write,
            "sync" => Op::Sync,
            other => bail!("cannot fail {other:?}: read, write or sync"),
        };
        let mut f = Fault {
            op,
            at: 0,
            len: u64::MAX,
            errno: libc::EIO,
            times: (op == Op::Sync).then_some(1),
        };
        for w in rest {
            let (k, v) = w
                .split_once('=')
                .with_context(|| format!("{w:?} is not KEY=VALUE"))?;
            match k {
                "at" => f.at = number(k, v)?,
                "len" => f.len = number(k, v)?,
                "errno" => f.errno = errno(v)?,
                "times" => f.times = Some(number(k, v)?).filter(|&n| n > 0),
                _ => bail!("unknown key {k:?}: at, len, errno or times"),
            }
        }
        if f.len == 0 {
            bail!("len=0 fails nothing");
        }
        Ok(f)
    }
}

fn number(k: &str, v: &str) -> Result<u64> {
    v.parse()
        .with_context(|| format!("{k}={v:?} is not a number"))
}

/// An errno by name (eio, enospc, edquot, erofs, eagain) or number.
pub fn errno(v: &str) -> Result<i32> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "eio" => libc::EIO,
        "enospc" => libc::ENOSPC,
        "edquot" => libc::EDQUOT,
        "erofs" => libc::EROFS,
        "eagain" => libc::EAGAIN,
        n => match n.parse::<i32>() {
            Ok(n) if n > 0 => n,
            _ => bail!("errno={v:?}: a name (eio, enospc, edquot, erofs, eagain) or a number"),
        },
    })
}

/// The armed faults, in the order they were armed: the first that matches answers.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Vec<Fault>,
}

impl Faults {
    pub fn arm(&mut self, f: Fault) {
        self.armed.push(f);
    }

    pub fn clear(&mut self) {
        self.armed.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// The fault that fails a request `op` of `len` bytes at `at`, if any (the request
    /// uses up one of its times).
    pub fn hit(&mut self, op: Op, at: u64, len: u64) -> Option<Fault> {
        let i = self
            .armed
            .iter()
            .position(|f| f.op == op && f.overlaps(at, len))?;
        let f = self.armed[i].clone();
        self.use_once(i);
        Some(f)
    }

    /// The sync fault that a sync writing back the byte ranges `dirty` trips, if any.
    pub fn sync_hit(&mut self, dirty: impl Iterator<Item = (u64, u64)> + Clone) -> Option<Fault> {
        let i = self
            .armed
            .iter()
            .position(|f| f.op == Op::Sync && dirty.clone().any(|(at, len)| f.overlaps(at, len)))?;
        let f = self.armed[i].clone();
        self.use_once(i);
        Some(f)
    }

    fn use_once(&mut self, i: usize) {
        if let Some(t) = &mut self.armed[i].times {
            *t -= 1;
            if *t == 0 {
                self.armed.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_nonsense() {
        let f = Fault::parse(&["write"]).unwrap();
        assert_eq!(
            f,
            Fault {
                op: Op::Write,
                at: 0,
                len: u64::MAX,
                errno: libc::EIO,
                times: None
            }
        );
        let f = Fault::parse(&["sync"]).unwrap();
        assert_eq!(f.times, Some(1), "a sync fault fires once unless told");
        let f = Fault::parse(&["read", "at=512", "len=512", "errno=enospc", "times=2"]).unwrap();
        assert_eq!(
            (f.at, f.len, f.errno, f.times),
            (512, 512, libc::ENOSPC, Some(2))
        );
        assert_eq!(Fault::parse(&["write", "errno=5"]).unwrap().errno, 5);
        for bad in [
            &["flush"][..],
            &[],
            &["read", "at"],
            &["read", "at=x"],
            &["read", "len=0"],
            &["read", "errno=ebogus"],
            &["read", "colour=red"],
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_fault_hits_overlapping_requests_its_number_of_times() {
        let mut fs = Faults::default();
        fs.arm(Fault::parse(&["read", "at=4096", "len=512", "times=2"]).unwrap());
        assert!(
            fs.hit(Op::Read, 0, 4096).is_none(),
            "ends where the range starts"
        );
        assert!(
            fs.hit(Op::Read, 4608, 512).is_none(),
            "starts where it ends"
        );
        assert!(fs.hit(Op::Write, 4096, 512).is_none(), "another op");
        assert_eq!(fs.hit(Op::Read, 4000, 200).unwrap().errno, libc::EIO);
        assert!(fs.hit(Op::Read, 4500, 8).is_some());
        assert!(fs.hit(Op::Read, 4096, 512).is_none(), "used up");
        assert!(fs.is_empty());
        fs.arm(Fault::parse(&["write"]).unwrap());
        for _ in 0..10 {
            assert!(
                fs.hit(Op::Write, u64::MAX - 10, 5).is_some(),
                "until cleared"
            );
        }
        fs.clear();
        assert!(fs.hit(Op::Write, 0, 1).is_none());
    }

    #[test]
    fn a_sync_fault_waits_for_a_dirty_page_in_its_range() {
        let mut fs = Faults::default();
        fs.arm(Fault::parse(&["sync", "at=8192", "len=4096"]).unwrap());
        let pages = |v: &'static [u64]| v.iter().map(|&p| (p * 4096, 4096));
        assert!(fs.sync_hit(pages(&[0, 1, 3])).is_none());
        assert!(fs.sync_hit(pages(&[0, 2])).is_some());
        assert!(fs.sync_hit(pages(&[2])).is_none(), "once");
    }
}
