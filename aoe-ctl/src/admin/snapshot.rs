//! `aoe-ctl snapshot --target e1.2 DEST`: ask the daemon serving the export for a copy,
//! showing its progress on stderr.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::daemon::control::{self, AdminRequest};
use crate::daemon::snapshot::{Line, Method, Phase};

/// Longest silence from the daemon while a snapshot runs (it reports every 250 ms; a
/// merge step or a clone may take a while on a slow disk).
const SILENCE: Duration = Duration::from_secs(120);

pub fn run(target: (u16, u8), dest: &Path, method: Method) -> Result<()> {
    let name = format!("e{}.{}", target.0, target.1);
    let dest = absolute(dest)?;
    let socket = serving(&name)?;
    let mut s = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("cannot reach {}", socket.display()))?;
    s.set_read_timeout(Some(SILENCE))?;
    let req = AdminRequest::Snapshot {
        target: name.clone(),
        dest: dest.to_string_lossy().into_owned(),
        method,
    };
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    for l in BufReader::new(s).lines() {
        let l = l.with_context(|| format!("{} stopped answering", socket.display()))?;
        let parsed: Line = serde_json::from_str(&l)
            .map_err(|e| anyhow!("bad reply from {}: {e}", socket.display()))?;
        match parsed {
            Line::Progress { phase, done, total } => {
                let mib = |b: u64| b as f64 / (1 << 20) as f64;
                match phase {
                    Phase::Barrier => eprintln!("{name}: waiting for {total} requests in flight"),
                    Phase::Copy => eprintln!(
                        "{name}: copy {:.1}/{:.1} MiB ({}%)",
                        mib(done),
                        mib(total),
                        (done * 100).checked_div(total).unwrap_or(100)
                    ),
                    Phase::Merge => eprintln!(
                        "{name}: merging the overlay back {:.1}/{:.1} MiB",
                        mib(done),
                        mib(total)
                    ),
                }
            }
            Line::Done(o) => {
                println!(
                    "{name}: snapshot in {} ({}, {} bytes in {:.2} s, {} bytes overlaid)",
                    dest.display(),
                    o.method,
                    o.bytes,
                    o.seconds,
                    o.overlaid
                );
                return Ok(());
            }
            Line::Error { error } => bail!("{name}: snapshot failed: {error}"),
            Line::NotServed => bail!("{name} is not served by {}", socket.display()),
        }
    }
    bail!(
        "{} closed the connection before the snapshot ended (the daemon's log says how it went)",
        socket.display()
    )
}

/// The daemon's working directory is not ours: send it an absolute path.
fn absolute(dest: &Path) -> Result<PathBuf> {
    if dest.exists() {
        bail!(
            "{} exists; a snapshot never overwrites a file",
            dest.display()
        );
    }
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", dest.display()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("no directory {}", parent.display()))?;
    Ok(parent.join(name))
}

/// The control socket of the one daemon serving `name`. Several processes serving one
/// image (one per interface) each write it: an overlay in one would not see the other's
/// writes, so that is refused.
fn serving(name: &str) -> Result<PathBuf> {
    let dir = control::run_dir();
    let mut sockets: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(e) => e
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    sockets.sort();
    let probe = AdminRequest::AclList {
        target: name.to_string(),
    };
    let serving: Vec<PathBuf> = sockets
        .into_iter()
        .filter(|p| control::ask(p, &probe).is_ok_and(|r| !r.not_served && r.error.is_none()))
        .collect();
    match serving.len() {
        0 => bail!(
            "{name} is not served by any running aoe-ctl (no daemon in {} answered for it)",
            dir.display()
        ),
        1 => Ok(serving.into_iter().next().expect("one")),
        n => bail!(
            "{name} is served by {n} aoe-ctl processes; a snapshot needs the only writer of \
             the image (serve it from one daemon)"
        ),
    }
}
