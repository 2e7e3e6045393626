//! Growing an export while it serves, on the daemon's side. The size is looked at off the
//! data path: every second (the watch), on SIGHUP, on `aoe-ctl resize` (through the control
//! socket), and by the queue workers on IDENTIFY (`serve/ata.rs`). Whoever looks, the
//! daemon's thread announces a changed size to every interface serving the export, with the
//! tag-0 config reply a start sends, so initiators that do not have the device open
//! identify it again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::control::AdminReply;
use super::Node;
use crate::serve::export::Export;

/// One daemon's answer to `aoe-ctl resize`, in sectors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SizeReport {
    /// Served before the look.
    pub before: u64,
    /// Served now.
    pub served: u64,
    /// What the store holds from the export's offset.
    pub store: u64,
    /// The export has a length of its own (`--length`, `length =`), which it keeps.
    pub fixed: bool,
}

/// Asks the daemon's thread to look at an export's size: the target, and where the answer
/// goes.
pub type Resizer = tokio::sync::mpsc::Sender<(String, tokio::sync::oneshot::Sender<AdminReply>)>;

/// Hand `target` to the daemon's thread and wait for its answer.
pub async fn ask(resizer: &Resizer, target: String) -> AdminReply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if resizer.send((target, tx)).await.is_err() {
        return AdminReply::error("the daemon is stopping".into());
    }
    rx.await
        .unwrap_or_else(|_| AdminReply::error("the daemon is stopping".into()))
}

impl Node {
    /// Look at every export's store, and announce the exports whose served size changed
    /// since the last announcement (here, or on a queue worker's IDENTIFY meanwhile).
    pub fn follow_sizes(&self) {
        for (_, ex) in self.exports.values() {
            // A store that cannot be measured is logged once, in `refresh_size`.
            let _ = ex.refresh_size();
        }
        self.announce_resized();
    }

    /// `aoe-ctl resize --target T`: look at T's store now; announce a change.
    pub fn resize(&self, target: &str) -> AdminReply {
        let key = match crate::address::parse_target(target) {
            Ok((shelf, slot)) => aoe_common::maps::ExportKey::new(shelf, slot),
            Err(e) => return AdminReply::error(format!("{e:#}")),
        };
        let Some((_, ex)) = self.exports.get(&key) else {
            return AdminReply::not_served();
        };
        let r = match ex.refresh_size() {
            Ok(r) => r,
            Err(e) => {
                return AdminReply::error(format!(
                    "{}: cannot measure {}: {e}",
                    ex.name(),
                    ex.path.display()
                ))
            }
        };
        log::info!(
            "{}: resize (control socket): {} -> {} sectors, store {}",
            ex.name(),
            r.before,
            r.now.served,
            r.now.store
        );
        self.announce_resized();
        AdminReply {
            size: Some(SizeReport {
                before: r.before,
                served: r.now.served,
                store: r.now.store,
                fixed: r.now.fixed,
            }),
            ..Default::default()
        }
    }

    fn announce_resized(&self) {
        let changed: Vec<Arc<Export>> = self
            .exports
            .values()
            .filter_map(|(_, ex)| {
                let sectors = ex.unannounced()?;
                log::info!("{}: announcing its new size, {sectors} sectors", ex.name());
                Some(ex.clone())
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        for h in self.hosts.values() {
            h.announce_some(&changed);
        }
    }
}
