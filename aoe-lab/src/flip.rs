//! `aoe-lab flip-bit`: the silently corrupting member. One bit of the first written (non-zero)
//! sector past an offset of an image is flipped in place, behind the target's back, so a
//! check that reads every member (md `check`, a file comparison) has something it must find.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const SECTOR: u64 = 512;

/// Flip the lowest bit of the first non-zero byte of the first non-zero sector at or after
/// `skip` bytes; returns that sector's number.
pub fn flip(image: &Path, skip: u64) -> Result<u64> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = skip / SECTOR * SECTOR;
    while at < len {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            let pos = at + i as u64;
            f.write_at(&[buf[i] ^ 1], pos)?;
            f.sync_data()?;
            return Ok(pos / SECTOR);
        }
        at += n as u64;
    }
    bail!(
        "{}: nothing written past byte {skip}, no bit to flip",
        image.display()
    )
}
