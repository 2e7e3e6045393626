//! Whether an interface's AoE traffic is spread over its receive queues. A NIC's RSS hashes
//! IP and TCP/UDP headers; an AoE frame has none, so most NICs deliver every one of them to
//! a single queue, and one worker then does all the work while the others idle. The daemon
//! watches the workers' frame counts and says so once, naming what spreads the traffic
//! (docs/operations.md, "Receive queues").

/// Frames to see before judging (a few seconds of moderate load): a handful of requests
/// landing on one queue says nothing.
const JUDGE_AFTER: u64 = 100_000;
/// One queue taking this share of the frames is "all on one queue".
const ONE_QUEUE_SHARE: f64 = 0.95;

#[derive(Debug, Default)]
pub struct Spread {
    /// Each queue's frame count at the last look.
    last: Vec<u64>,
    /// Frames per queue since judging began.
    seen: Vec<u64>,
    said: bool,
}

impl Spread {
    /// Look at the workers' frame counts (one per queue, as they grow); returns the line to
    /// log when nearly every frame arrived on one queue of several, once per interface.
    pub fn observe(&mut self, iface: &str, frames: &[u64]) -> Option<String> {
        if frames.len() != self.last.len() {
            // Started, or the queues changed with a reload: judge afresh.
            self.last = frames.to_vec();
            self.seen = vec![0; frames.len()];
            return None;
        }
        for ((seen, last), &now) in self.seen.iter_mut().zip(&mut self.last).zip(frames) {
            *seen += now.saturating_sub(*last);
            *last = now;
        }
        let total: u64 = self.seen.iter().sum();
        if self.said || frames.len() < 2 || total < JUDGE_AFTER {
            return None;
        }
        let (queue, most) = self
            .seen
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .map(|(q, n)| (q, *n))?;
        self.seen.iter_mut().for_each(|n| *n = 0);
        if (most as f64) < ONE_QUEUE_SHARE * total as f64 {
            return None;
        }
        self.said = true;
        Some(format!(
            "{iface}: {:.0}% of the last {total} AoE frames arrived on queue {queue} of {}: the \
             NIC does not spread AoE frames (they carry no IP header for RSS to hash), so one \
             worker does the work of all; steer initiators to queues with ntuple rules, or add \
             ports (docs/operations.md, \"Receive queues\")",
            100.0 * most as f64 / total as f64,
            frames.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_on_one_queue_of_four_is_said_once_after_enough_frames() {
        let mut s = Spread::default();
        assert_eq!(s.observe("eth0", &[0, 0, 0, 0]), None);
        assert_eq!(
            s.observe("eth0", &[50_000, 0, 10, 0]),
            None,
            "too few to judge"
        );
        let said = s.observe("eth0", &[120_000, 0, 20, 0]).expect("said");
        assert!(said.contains("queue 0 of 4"), "{said}");
        assert_eq!(s.observe("eth0", &[300_000, 0, 30, 0]), None, "once");
    }

    #[test]
    fn spread_traffic_and_one_queue_interfaces_are_not_flagged() {
        let mut s = Spread::default();
        s.observe("eth0", &[0, 0]);
        assert_eq!(s.observe("eth0", &[60_000, 50_000]), None);
        assert_eq!(s.observe("eth0", &[200_000, 190_000]), None);
        let mut one = Spread::default();
        one.observe("eth1", &[0]);
        assert_eq!(one.observe("eth1", &[1_000_000]), None);
    }

    #[test]
    fn a_reload_that_changes_the_queues_starts_over() {
        let mut s = Spread::default();
        s.observe("eth0", &[0, 0]);
        assert_eq!(s.observe("eth0", &[90_000, 0, 0, 0]), None);
        assert_eq!(
            s.observe("eth0", &[95_000, 0, 0, 0]),
            None,
            "5k since the change"
        );
    }
}
