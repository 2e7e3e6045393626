//! The daemon's side of `aoe-ctl snapshot`: find the export, take the snapshot in a thread
//! of its own (it lasts as long as the copy), and stream its progress to the client, one
//! JSON `Line` a line, the outcome last.

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncWriteExt;

use super::{take, Line, Method, Phase};
use crate::daemon::owner::{Owner, Work};

/// Progress lines at most this often (the client's read timeout is much longer).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub async fn answer(
    target: String,
    dest: String,
    method: Method,
    owner: SyncSender<Work>,
    mut write: tokio::net::unix::OwnedWriteHalf,
) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ex = if Owner::offer(&owner, Work::Export(target.clone(), tx)) {
        rx.await.ok().flatten()
    } else {
        None
    };
    let (lines, mut out) = tokio::sync::mpsc::unbounded_channel();
    match ex {
        None => {
            let _ = lines.send(Line::NotServed);
        }
        Some(_) if !dest.starts_with('/') => {
            let _ = lines.send(Line::Error {
                error: format!("the destination must be an absolute path, not {dest}"),
            });
        }
        Some(ex) => {
            std::thread::Builder::new()
                .name("aoe-snapshot".into())
                .spawn(move || {
                    let dest = PathBuf::from(dest);
                    log::info!(
                        "{}: snapshot into {} ({method:?})",
                        ex.name(),
                        dest.display()
                    );
                    let mut last = Instant::now() - PROGRESS_EVERY;
                    let mut progress = |phase: Phase, done: u64, total: u64| {
                        if last.elapsed() >= PROGRESS_EVERY
                            || (phase != Phase::Barrier && done == total)
                        {
                            last = Instant::now();
                            let _ = lines.send(Line::Progress { phase, done, total });
                        }
                    };
                    let end = match take(&ex, &dest, method, &mut progress) {
                        Ok(o) => {
                            log::info!(
                                "{}: snapshot in {} ({}, {} bytes, {} overlaid, {:.2} s)",
                                ex.name(),
                                dest.display(),
                                o.method,
                                o.bytes,
                                o.overlaid,
                                o.seconds
                            );
                            Line::Done(o)
                        }
                        Err(e) => {
                            log::warn!(
                                "{}: snapshot into {} failed: {e:#}",
                                ex.name(),
                                dest.display()
                            );
                            Line::Error {
                                error: format!("{e:#}"),
                            }
                        }
                    };
                    let _ = lines.send(end);
                })?;
        }
    }
    while let Some(l) = out.recv().await {
        let mut v = serde_json::to_vec(&l)?;
        v.push(b'\n');
        // A client that went away does not stop the snapshot (the thread finishes it).
        write.write_all(&v).await?;
    }
    Ok(())
}
