//! What the daemon does when a served interface comes, changes or goes (events from
//! `netlink`): one removed stops serving there, is counted, and its exports keep their
//! state (they are still open and kept by the owner); when an interface of that name is up
//! again it is served anew: the program attached, the sockets bound, the announcement
//! sent. An MTU change serves the interface anew too, so sectors per frame, socket frame
//! layout and the kernel's config reply all follow it. Link down and up are logged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::host::{Host, HostOptions};
use super::netlink::{LinkEvent, LinkWatcher};
use super::Node;
use crate::serve::export::Export;

/// Interfaces that went away, and what each link looked like last.
#[derive(Default)]
pub struct Links {
    /// Served interfaces removed and not back yet.
    lost: BTreeSet<String>,
    /// Times each interface was removed while served.
    removed: BTreeMap<String, u32>,
    /// (up, carrier) last seen.
    seen: BTreeMap<String, (bool, bool)>,
}

impl Links {
    /// Is `name` a served interface that is gone for now (a reload leaves it to come back)?
    pub fn is_lost(&self, name: &str) -> bool {
        self.lost.contains(name)
    }
}

/// The next batch from `w`; never, without a watcher.
pub async fn next(w: &Option<LinkWatcher>) -> Vec<LinkEvent> {
    match w {
        Some(w) => match w.next().await {
            Ok(e) => e,
            Err(e) => {
                log::error!("netlink: {e:#}");
                // Not a busy loop on a broken socket.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                vec![]
            }
        },
        None => std::future::pending().await,
    }
}

impl Node {
    pub(crate) fn link_event(&mut self, e: LinkEvent) {
        log::debug!("netlink: {e:?}");
        match e {
            LinkEvent::Removed { name } => self.link_removed(&name),
            LinkEvent::Present {
                name,
                up,
                carrier,
                mtu,
            } => self.link_present(&name, up, carrier, mtu),
            LinkEvent::Overrun => {
                log::warn!("netlink: link events were lost; looking at every served link");
                let names: Vec<String> = self
                    .hosts
                    .keys()
                    .chain(self.links.lost.iter())
                    .cloned()
                    .collect();
                for name in names {
                    match crate::net::Interface::lookup(&name) {
                        Ok(i) => self.link_present(&name, true, true, i.mtu as u32),
                        Err(_) => self.link_removed(&name),
                    }
                }
            }
        }
    }

    fn link_removed(&mut self, name: &str) {
        self.links.seen.remove(name);
        let Some(h) = self.hosts.remove(name) else {
            return;
        };
        let n = self.links.removed.entry(name.to_string()).or_default();
        *n += 1;
        let names: Vec<String> = h.exports().iter().map(|e| e.name()).collect();
        eprintln!(
            "{name}: interface removed ({} time{}); {} keep their state and are served again \
             when it returns",
            n,
            if *n == 1 { "" } else { "s" },
            names.join(",")
        );
        eprintln!("{}", h.stop());
        self.links.lost.insert(name.to_string());
        self.place();
    }

    fn link_present(&mut self, name: &str, up: bool, carrier: bool, mtu: u32) {
        let before = self.links.seen.insert(name.to_string(), (up, carrier));
        if self.links.lost.contains(name) {
            if up {
                self.serve_again(name, "returned");
            }
            return;
        }
        let Some(h) = self.hosts.get(name) else {
            return;
        };
        if let Some((was_up, had_carrier)) = before {
            if (was_up, had_carrier) != (up, carrier) {
                let says = |on: bool| if on { "up" } else { "down" };
                eprintln!("{name}: link {}, carrier {}", says(up), says(carrier));
                if carrier && !had_carrier {
                    h.announce_all();
                }
            }
        }
        if mtu != 0 && mtu as usize != h.iface.mtu {
            let was = h.iface.mtu;
            if let Some(h) = self.hosts.remove(name) {
                eprintln!("{}", h.stop());
            }
            self.links.lost.insert(name.to_string());
            self.serve_again(name, &format!("MTU {was} -> {mtu}"));
        }
    }

    /// Serve `name` anew with its exports (it came back, or its MTU changed); on a failure
    /// it stays lost and the next event of the link tries again.
    fn serve_again(&mut self, name: &str, why: &str) {
        let exports: Vec<Arc<Export>> = self
            .exports
            .values()
            .filter(|(s, _)| s.interfaces.iter().any(|i| i == name))
            .map(|(_, e)| e.clone())
            .collect();
        if exports.is_empty() {
            // A reload took its exports away meanwhile.
            self.links.lost.remove(name);
            return;
        }
        let opts = HostOptions {
            path: self.config.mode,
            xdp_mode: self.config.xdp_mode,
            queues: self.config.queues,
        };
        match Host::start(name, exports, &opts, self.handoff.clone()) {
            Ok(mut h) => {
                h.removed = self.links.removed.get(name).copied().unwrap_or(0);
                h.publish();
                eprintln!("{name}: {why}; served again ({})", h.describe());
                self.links.lost.remove(name);
                self.hosts.insert(name.to_string(), h);
                self.place();
            }
            Err(e) => eprintln!("{name}: {why}; not served: {e:#}"),
        }
    }
}
