//! `aoe-ctl verify`: write a pseudo-random pattern, read it back, compare.

use anyhow::{bail, Result};
use aoe_common::wire::SECTOR_SIZE;

use super::client::{Client, Op, RunStats};

/// The pattern of one sector: a function of the seed and the LBA only, so the reader can
/// regenerate it without keeping what was written.
pub fn pattern(seed: u64, lba: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(SECTOR_SIZE).enumerate() {
        let mut x = seed ^ (lba + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
    }
}

pub struct Options {
    pub iface: String,
    pub shelf: u16,
    pub slot: u8,
    pub bytes: u64,
    pub offset: u64,
    pub seed: u64,
}

pub fn run(o: &Options) -> Result<()> {
    let mut c = Client::open(&o.iface)?;
    let t = c.find(o.shelf, o.slot)?;
    let id = c.identify(&t)?;
    // What the target accepts and what our own MTU carries.
    let ours = aoe_common::wire::sectors_per_frame(c.sock.iface.mtu).min(255) as u8;
    let per = t.max_sectors.min(ours).max(1);
    let want = o.bytes.div_ceil(SECTOR_SIZE as u64).max(1);
    if o.offset >= id.sectors {
        bail!(
            "offset {} is beyond the device ({} sectors)",
            o.offset,
            id.sectors
        );
    }
    let sectors = want.min(id.sectors - o.offset);
    let window = usize::from(t.buffers).clamp(1, 64);
    println!(
        "e{}.{}: {} sectors, {} sectors/frame, window {}; writing {} bytes at sector {}",
        o.shelf,
        o.slot,
        id.sectors,
        per,
        window,
        sectors * SECTOR_SIZE as u64,
        o.offset
    );
    let ops = |write: bool| {
        let (start, end, per) = (o.offset, o.offset + sectors, u64::from(per));
        (start..end).step_by(per as usize).map(move |lba| Op {
            lba,
            count: (end - lba).min(per) as u8,
            write,
        })
    };
    let seed = o.seed;
    let w = c.run(
        &t,
        &mut ops(true),
        window,
        &|lba, d| pattern(seed, lba, d),
        &mut |_, _| Ok(()),
    )?;
    let mut mismatches = 0u64;
    let mut expect = vec![0u8; 255 * SECTOR_SIZE];
    let r = c.run(&t, &mut ops(false), window, &|_, _| {}, &mut |op, data| {
        let e = &mut expect[..data.len()];
        pattern(seed, op.lba, e);
        for (i, (a, b)) in data
            .chunks(SECTOR_SIZE)
            .zip(e.chunks(SECTOR_SIZE))
            .enumerate()
        {
            if a != b {
                if mismatches < 5 {
                    eprintln!("mismatch at sector {}", op.lba + i as u64);
                }
                mismatches += 1;
            }
        }
        Ok(())
    })?;
    // The last sector must be readable too.
    let last = Op {
        lba: id.sectors - 1,
        count: 1,
        write: false,
    };
    c.run(
        &t,
        &mut std::iter::once(last),
        1,
        &|_, _| {},
        &mut |_, _| Ok(()),
    )?;
    report("write:", &w);
    report("read: ", &r);
    if mismatches > 0 {
        bail!("{mismatches} of {sectors} sectors read back differently");
    }
    println!(
        "verify OK: {sectors} sectors read back identical; last sector {} readable",
        id.sectors - 1
    );
    Ok(())
}

fn report(label: &str, s: &RunStats) {
    let secs = s.elapsed.as_secs_f64();
    println!(
        "{label} {} bytes in {secs:.3} s ({:.1} MB/s, {} retransmits)",
        s.bytes,
        s.bytes as f64 / 1e6 / secs.max(1e-9),
        s.retransmits
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_lba_and_seed() {
        let mut a = [0u8; 1024];
        let mut b = [0u8; 512];
        pattern(1, 10, &mut a);
        pattern(1, 11, &mut b);
        assert_eq!(&a[512..], &b[..]);
        pattern(2, 11, &mut b);
        assert_ne!(&a[512..], &b[..]);
        assert_ne!(&a[..512], &a[512..]);
    }
}
