//! Commands for a second process while a target runs: `status` and `stats` read the pinned
//! maps (`crate::pinned`); `acl`, `reservation` and `resize` ask the daemon over its control
//! socket (`crate::daemon::control`), since only the daemon writes export state.

pub mod access;
pub mod resize;
pub mod snapshot;
pub mod stats;
pub mod status;

pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}
