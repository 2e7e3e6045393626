//! The control socket: how `aoe-ctl acl` and `aoe-ctl reservation` reach a running daemon.
//! Each aoe-ctl process that serves exports listens on `<run dir>/aoe-ctl.<pid>.sock` (the run
//! dir is /run/aoe unless `AOE_RUN_DIR` names another; mode 0700, the socket 0600, and only
//! root peers are answered). One JSON request a line, one JSON reply a line. The daemon hands
//! each request to its owner thread, which applies edits one at a time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics_http::Asker;
use super::owner::{Owner, Work};
use super::resize::Resizer;

/// Where control sockets live when `AOE_RUN_DIR` does not say.
pub const DEFAULT_RUN_DIR: &str = "/run/aoe";
/// How long a client waits for a daemon's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    AclList {
        target: String,
    },
    AclAdd {
        target: String,
        mac: String,
    },
    AclDel {
        target: String,
        mac: String,
    },
    ReservationShow {
        target: String,
    },
    ReservationClear {
        target: String,
    },
    /// This daemon's metrics (`aoe-ctl stats --prometheus`), answered by the daemon's
    /// thread, not the owner.
    Metrics,
    /// `aoe-ctl snapshot`: answered with `crate::daemon::snapshot::Line`s, not an `AdminReply`.
    Snapshot {
        target: String,
        dest: String,
        method: crate::daemon::snapshot::Method,
    },
    /// `aoe-ctl resize`: look at the export's backing store and follow its size now,
    /// answered by the daemon's thread (which announces a change), not the owner.
    Resize {
        target: String,
    },
}

impl AdminRequest {
    /// What it asks, for the log: `acl add 02:00:00:00:00:0a`.
    pub fn describe(&self) -> String {
        match self {
            AdminRequest::AclList { .. } => "acl list".into(),
            AdminRequest::AclAdd { mac, .. } => format!("acl add {mac}"),
            AdminRequest::AclDel { mac, .. } => format!("acl del {mac}"),
            AdminRequest::ReservationShow { .. } => "reservation show".into(),
            AdminRequest::ReservationClear { .. } => "reservation clear".into(),
            AdminRequest::Metrics => "metrics".into(),
            AdminRequest::Snapshot { dest, .. } => format!("snapshot {dest}"),
            AdminRequest::Resize { .. } => "resize".into(),
        }
    }

    pub fn target(&self) -> &str {
        match self {
            AdminRequest::AclList { target }
            | AdminRequest::AclAdd { target, .. }
            | AdminRequest::AclDel { target, .. }
            | AdminRequest::ReservationShow { target }
            | AdminRequest::ReservationClear { target }
            | AdminRequest::Snapshot { target, .. }
            | AdminRequest::Resize { target } => target,
            AdminRequest::Metrics => "",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AdminReply {
    /// The list the request is about, after it was applied.
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This daemon does not serve the target: ask the next one.
    #[serde(default)]
    pub not_served: bool,
    /// The answer to `AdminRequest::Metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<crate::prometheus::Family>>,
    /// The answer to `AdminRequest::Resize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<super::resize::SizeReport>,
}

impl AdminReply {
    pub fn list(macs: Vec<String>) -> Self {
        AdminReply {
            macs,
            ..Default::default()
        }
    }
    pub fn error(e: String) -> Self {
        AdminReply {
            error: Some(e),
            ..Default::default()
        }
    }
    pub fn not_served() -> Self {
        AdminReply {
            not_served: true,
            ..Default::default()
        }
    }
}

pub fn run_dir() -> PathBuf {
    std::env::var_os("AOE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The socket this process listens on.
pub fn own_path() -> PathBuf {
    run_dir().join(format!("aoe-ctl.{}.sock", std::process::id()))
}

/// A listening control socket; removed on drop.
pub struct ControlSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
    metrics: Option<Asker>,
    resizer: Option<Resizer>,
}

impl ControlSocket {
    /// Bind `own_path()` (needs a tokio runtime).
    pub fn bind() -> Result<ControlSocket> {
        let dir = run_dir();
        if dir.exists() {
            // Never loosen or take over a directory we did not make: refuse one that others
            // could plant sockets in.
            use std::os::unix::fs::MetadataExt;
            let m =
                std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if !m.is_dir() || (m.uid() != me && m.uid() != 0) || m.mode() & 0o022 != 0 {
                bail!(
                    "refusing the run directory {}: it must be a directory owned by root or \
                     us and not writable by group or others (set AOE_RUN_DIR elsewhere)",
                    dir.display()
                );
            }
        } else {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        let path = own_path();
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            path,
            listener,
            metrics: None,
            resizer: None,
        })
    }

    /// Answer `AdminRequest::Metrics` through `asker`.
    pub fn with_metrics(mut self, asker: Asker) -> Self {
        self.metrics = Some(asker);
        self
    }

    /// Answer `AdminRequest::Resize` through `resizer`.
    pub fn with_resizer(mut self, resizer: Resizer) -> Self {
        self.resizer = Some(resizer);
        self
    }

    /// Take the next connection and answer it in a task of its own.
    pub async fn serve_next(&self, owner: &SyncSender<Work>) {
        let stream = match self.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                log::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        let owner = owner.clone();
        let metrics = self.metrics.clone();
        let resizer = self.resizer.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, owner, metrics, resizer).await {
                log::warn!("control socket: {e:#}");
            }
        });
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    owner: SyncSender<Work>,
    metrics: Option<Asker>,
    resizer: Option<Resizer>,
) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A client that connects and never writes must not hold a task and a descriptor forever.
    tokio::time::timeout(
        ANSWER_WITHIN,
        tokio::io::BufReader::new(read.take(64 << 10)).read_line(&mut line),
    )
    .await
    .map_err(|_| anyhow!("a client sent no request within {ANSWER_WITHIN:?}"))??;
    if let (
        0,
        Ok(AdminRequest::Snapshot {
            target,
            dest,
            method,
        }),
    ) = (uid, serde_json::from_str(&line))
    {
        return crate::daemon::snapshot::answer(target, dest, method, owner, write).await;
    }
    let reply = if uid != 0 {
        AdminReply::error(format!("only root may control aoe-ctl (you are uid {uid})"))
    } else {
        match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => AdminReply::error(format!("bad control request: {e}")),
            Ok(AdminRequest::Metrics) => match &metrics {
                None => AdminReply::error("this aoe-ctl serves no metrics".into()),
                Some(a) => match super::metrics_http::ask(a).await {
                    Ok(m) => AdminReply {
                        metrics: Some(m),
                        ..Default::default()
                    },
                    Err(e) => AdminReply::error(format!("{e:#}")),
                },
            },
            Ok(AdminRequest::Resize { target }) => match &resizer {
                None => AdminReply::error("this aoe-ctl resizes nothing".into()),
                Some(r) => super::resize::ask(r, target).await,
            },
            Ok(req) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if Owner::offer(&owner, Work::Admin(req, tx)) {
                    rx.await
                        .unwrap_or_else(|_| AdminReply::error("the daemon is stopping".into()))
                } else {
                    AdminReply::error("the daemon's control plane is busy; try again".into())
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Ask one daemon.
pub(crate) fn ask(path: &Path, req: &AdminRequest) -> Result<AdminReply> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(ANSWER_WITHIN))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| anyhow!("bad reply from {}: {e}", path.display()))
}

/// The control sockets in `dir`, sorted.
fn sockets(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut sockets: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(e) => e
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    sockets.sort();
    Ok(sockets)
}

/// A socket whose daemon died refuses the connection: not an answer.
fn stale(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
        )
    })
}

/// The metrics of every running daemon; one that fails makes the command fail, naming it.
pub fn metrics_of_all() -> Result<Vec<Vec<crate::prometheus::Family>>> {
    let mut out = vec![];
    for path in sockets(&run_dir())? {
        match ask(&path, &AdminRequest::Metrics) {
            Err(e) if stale(&e) => {}
            Err(e) => bail!("{} did not answer: {e}", path.display()),
            Ok(AdminReply {
                metrics: Some(m), ..
            }) => out.push(m),
            Ok(r) => bail!(
                "{}: {}",
                path.display(),
                r.error.unwrap_or_else(|| "no metrics in the answer".into())
            ),
        }
    }
    Ok(out)
}

/// Send `req` to every daemon serving its target (an export may be served by several
/// processes, one per interface): an edit must reach them all. The list comes from the
/// first; any daemon that fails or does not answer makes the command fail, naming it.
pub fn request(req: &AdminRequest) -> Result<Vec<String>> {
    let first = request_all(req)?.into_iter().next();
    Ok(first.map(|r| r.macs).unwrap_or_default())
}

/// `request`, with the answer of every daemon serving the target (at least one).
pub fn request_all(req: &AdminRequest) -> Result<Vec<AdminReply>> {
    let dir = run_dir();
    let sockets = sockets(&dir)?;
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for path in sockets {
        let reply = match ask(&path, req) {
            Ok(r) => r,
            Err(e) => {
                if !stale(&e) {
                    failures.push(format!(
                        "{} did not answer ({e}); the request may still take effect there",
                        path.display()
                    ));
                }
                continue;
            }
        };
        if reply.not_served {
            continue;
        }
        match &reply.error {
            Some(e) => failures.push(e.clone()),
            None => answers.push(reply),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    if answers.is_empty() {
        bail!(
            "{} is not served by any running aoe-ctl (no daemon in {} answered for it)",
            req.target(),
            dir.display()
        );
    }
    Ok(answers)
}
