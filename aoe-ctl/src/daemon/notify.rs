//! Telling systemd how the daemon is (sd_notify, for `Type=notify` units): READY=1 once
//! every export serves, STATUS= lines, RELOADING=1 .. READY=1 around a SIGHUP reload,
//! STOPPING=1 on the way out, and WATCHDOG=1 at half of WATCHDOG_USEC for as long as every
//! queue worker lives. Without NOTIFY_SOCKET (not under systemd) each call does nothing.
//!
//! The watchdog pings from the daemon's own event loop rather than from a thread of its
//! own: a ping then also proves that loop (signals, reloads, the control socket) is not
//! stuck, and the loop owns the node whose workers it checks.

use std::time::Duration;

use sd_notify::NotifyState;

use super::Node;

pub struct Notifier {
    /// Half the watchdog timeout systemd asked for, if it asked.
    every: Option<Duration>,
    /// A worker was found dead: the pings stopped, so systemd restarts the service.
    failed: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            every: sd_notify::watchdog_enabled().map(|t| (t / 2).max(Duration::from_millis(10))),
            failed: false,
        }
    }

    /// How often `watchdog` should run (a day when there is no watchdog: never, in effect).
    pub fn period(&self) -> Duration {
        self.every.unwrap_or(Duration::from_secs(86400))
    }

    /// Every export serves.
    pub fn ready(&self, node: &Node) {
        send(&[NotifyState::Ready, NotifyState::Status(&node.summary())]);
    }

    /// SIGHUP arrived: systemd shows the unit reloading until the next `ready`.
    pub fn reloading(&self) {
        // systemd wants the reload's start on CLOCK_MONOTONIC next to RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// A reload was refused: serving as before, say why.
    pub fn refused(&self, node: &Node, why: &str) {
        let status = format!("{}; last reload refused: {why}", node.summary());
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Ping, unless a queue worker has died (then never again).
    pub fn watchdog(&mut self, node: &Node) {
        if self.every.is_none() || self.failed {
            return;
        }
        let wanted: u32 = node.hosts.values().map(|h| h.queues()).sum();
        let alive = workers_alive();
        if alive < wanted as usize {
            self.failed = true;
            let why = format!("{alive} of {wanted} queue workers alive: watchdog pings stopped");
            log::error!("{why}");
            send(&[NotifyState::Status(&why)]);
            return;
        }
        send(&[NotifyState::Watchdog]);
    }
}

/// Queue workers among this process's threads: "aoe-q<N>" (AF_XDP) and "aoe-packet"
/// (AF_PACKET) are the names serve/ gives them, and a worker that returned or panicked
/// is gone from the kernel's list. The count can only run high (while a reload has old and
/// new workers both), never low while every worker lives.
fn workers_alive() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return usize::MAX;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| {
            let name = name.trim_end();
            name == "aoe-packet"
                || name
                    .strip_prefix("aoe-q")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("sd_notify: {e}");
    }
}
