//! Take one snapshot of a served export into a new file.
//!
//! The overlay's snapshot point: `SnapshotHook::active` is set, then every storage request
//! already handed to a ring, or being written synchronously (write-back through the mapping,
//! a queue without a ring), is waited for (the export's `storage_in_flight` gauge reaching
//! zero). A worker raises that gauge before it reads `active`, and the snapshot sets
//! `active` before it reads the gauge (both SeqCst), so a request either sees the flag and
//! goes to the overlay or is counted and waited for: once the gauge is zero no write reaches
//! the image until the merge. Every write acknowledged before the snapshot began is in the
//! image by then; writes in flight at that point may or may not be in the copy, as after a
//! crash.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{reflink, Method, Outcome, Phase};
use crate::serve::backend::SECTOR;
use crate::serve::backend::{log_path, Overlay};
use crate::serve::export::Export;

/// Bytes copied per read and write.
const COPY_CHUNK: usize = 1 << 20;
/// How long requests in flight at the snapshot point may take.
const BARRIER_WITHIN: Duration = Duration::from_secs(30);

/// Copy `ex` into `dest` (created; never an existing file) the way `method` says, telling
/// `progress` how far it got.
pub fn take(
    ex: &Export,
    dest: &Path,
    method: Method,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Outcome> {
    let hook = &ex.snapshot;
    if !hook.begin() {
        bail!("{}: a snapshot of it is already running", ex.name());
    }
    let started = Instant::now();
    let result = take_once(ex, dest, method, progress);
    hook.end();
    let (method, overlaid) = result?;
    Ok(Outcome {
        method: method.into(),
        bytes: ex.backend.sectors() * SECTOR,
        overlaid,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn take_once(
    ex: &Export,
    dest: &Path,
    method: Method,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<(&'static str, u64)> {
    let target = ex
        .backend
        .io_target()
        .ok_or_else(|| anyhow!("{}: not backed by a file; nothing to copy", ex.name()))?;
    let bytes = ex.backend.sectors() * SECTOR;
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let result = (|| {
        if method != Method::Overlay {
            match reflink::clone(target.fd, target.base, bytes, &out) {
                Ok(()) => {
                    progress(Phase::Copy, bytes, bytes);
                    out.sync_all().context("fsync of the copy")?;
                    return Ok(("reflink", 0));
                }
                Err(e) if method == Method::Auto && reflink::unsupported(&e) => {
                    log::info!(
                        "{}: no reflink into {} ({e}); copying under an overlay",
                        ex.name(),
                        dest.display()
                    );
                }
                Err(e) => bail!(
                    "cannot reflink {} into {}: {e}",
                    ex.path.display(),
                    dest.display()
                ),
            }
        }
        if ex.read_only {
            // Nothing writes it: a plain copy is a point in time.
            let image = File::open(format!("/proc/self/fd/{}", target.fd))?;
            copy(&image, target.base, bytes, &out, progress)?;
            return Ok(("copy", 0));
        }
        if !target.regular {
            bail!(
                "{}: {} is not a regular file: the overlay needs a directory beside the image \
                 (take the snapshot with the block device's own tools)",
                ex.name(),
                ex.path.display()
            );
        }
        overlaid(ex, target.fd, target.base, bytes, &out, progress)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// The overlay path: freeze, copy, merge back. Bytes that went to the overlay.
fn overlaid(
    ex: &Export,
    fd: std::os::fd::RawFd,
    base: u64,
    bytes: u64,
    out: &File,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<(&'static str, u64)> {
    let hook = &ex.snapshot;
    let durable = !ex.write_back;
    let o = Arc::new(Overlay::create(
        &ex.path,
        fd,
        base,
        bytes / SECTOR,
        durable,
    )?);
    hook.divert(o.clone());
    let copied = barrier(ex, progress).and_then(|()| copy(o.image(), base, bytes, out, progress));
    let overlaid = o.unmerged();
    // Merged whether the copy worked or not: the log holds acknowledged writes.
    let merged = merge(&o, progress);
    if let Err(e) = &merged {
        // The overlay stays in force (writes keep going to its log, nothing is lost); a
        // reopen of the export replays it.
        log::error!(
            "{}: the overlay could not be merged back ({e:#}); writes keep going to {}, which \
             the next start of the export replays",
            ex.name(),
            log_path(&ex.path).display()
        );
    } else {
        hook.restore();
    }
    copied?;
    merged?;
    Ok(("overlay", overlaid))
}

fn barrier(ex: &Export, progress: &mut dyn FnMut(Phase, u64, u64)) -> Result<()> {
    let until = Instant::now() + BARRIER_WITHIN;
    loop {
        let n = ex.stats.storage_in_flight.load(Ordering::SeqCst);
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{n} storage requests still in flight after {BARRIER_WITHIN:?}: the disk hangs?");
        }
        progress(Phase::Barrier, 0, n);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Copy `bytes` at `base` of `image` to the start of `out`, leaving holes where the image
/// reads as zeros, then make the copy durable.
fn copy(
    image: &File,
    base: u64,
    bytes: u64,
    out: &File,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<()> {
    out.set_len(bytes).context("sizing the copy")?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(COPY_CHUNK as u64) as usize;
        image
            .read_exact_at(&mut buf[..n], base + at)
            .context("reading the image")?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], at)
                .context("writing the copy")?;
        }
        at += n as u64;
        progress(Phase::Copy, at, bytes);
    }
    out.sync_all().context("fsync of the copy")
}

fn merge(o: &Overlay, progress: &mut dyn FnMut(Phase, u64, u64)) -> Result<()> {
    let total = o.unmerged();
    loop {
        if o.merge_step()? {
            progress(Phase::Merge, total, total);
            return Ok(());
        }
        let left = o.unmerged();
        progress(Phase::Merge, total.saturating_sub(left), total.max(left));
    }
}
