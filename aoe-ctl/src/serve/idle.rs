//! What a queue worker does when a loop found nothing to do: spin while spinning pays, else
//! sleep at its one wait point. Sleeping costs a wake-up (a context switch on each side, tens
//! of microseconds on a VM); spinning costs the whole gap in CPU. So the worker spins only
//! when the gaps it has been seeing are shorter than a wake-up, as NAPI busy polling does, and
//! adapts to what it measures: under load the gaps are a few microseconds and it never sleeps;
//! at depth 1 or on a slow disk they are long and it sleeps at once; an idle export sleeps in
//! 100 ms naps and costs nothing.
//!
//! The wait point is the worker's storage ring (`InFlight::wait`): it watches the socket
//! through a poll on the ring, so frames and storage completions wake the same sleep. Only a
//! worker without a ring (io_uring disabled) sleeps in poll(2) on its socket.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::in_flight::InFlight;

/// Longest spin: about what a wake-up costs here. A gap longer than this is cheaper slept.
const SPIN_MAX: Duration = Duration::from_micros(20);
/// The longest sleep: how often a quiet worker looks at its stop flag.
pub const NAP: Duration = Duration::from_millis(100);
/// Empty loops between two clock reads while spinning (a clock read can be a system call).
const LOOPS_PER_CLOCK: u32 = 16;
/// One idle period in this many spins its full `SPIN_MAX` even when the budget is zero: a
/// gap measured across a sleep includes the wake-up, so short gaps coming back would
/// otherwise never be seen.
const PROBE_EVERY: u32 = 32;

pub struct Idle {
    /// When the current idle period began (None: the worker is busy).
    since: Option<Instant>,
    loops: u32,
    /// Recent idle gaps (time from running dry to the next work), smoothed.
    gap: Duration,
    /// How long to spin before sleeping, from `gap`.
    budget: Duration,
    /// This idle period's spin (the budget, or `SPIN_MAX` when probing).
    spin_for: Duration,
    periods: u32,
}

impl Default for Idle {
    fn default() -> Self {
        Idle {
            since: None,
            loops: 0,
            gap: SPIN_MAX,
            budget: SPIN_MAX,
            spin_for: SPIN_MAX,
            periods: 0,
        }
    }
}

impl Idle {
    /// The loop did some work: an idle period (if any) ended, spun through.
    pub fn busy(&mut self) {
        if let Some(since) = self.since.take() {
            self.learn(since.elapsed());
        }
        self.loops = 0;
    }

    /// The loop found nothing: spin on (true) or sleep (false, then `slept`).
    pub fn spin(&mut self) -> bool {
        let Some(since) = self.since else {
            self.since = Some(Instant::now());
            self.loops = 0;
            self.periods = self.periods.wrapping_add(1);
            self.spin_for = if self.periods.is_multiple_of(PROBE_EVERY) {
                SPIN_MAX
            } else {
                self.budget
            };
            return !self.spin_for.is_zero();
        };
        self.loops += 1;
        if !self.loops.is_multiple_of(LOOPS_PER_CLOCK) {
            std::hint::spin_loop();
            return true;
        }
        since.elapsed() < self.spin_for
    }

    /// Sleep at the wait point: the ring (watching `sock` too), or poll(2) on `sock` for a
    /// worker without one. Storage in flight wakes the ring's sleep when it completes.
    pub fn sleep<H>(&mut self, storage: Option<&mut InFlight<H>>, sock: RawFd) {
        match storage {
            Some(s) => s.wait(Some(sock), NAP),
            None => poll_one(sock, NAP),
        }
        // The gap ran from the start of the idle period to now, spin included: learnt when
        // the next loop finds work (`busy`); a nap that found none stays an idle period.
    }

    fn learn(&mut self, gap: Duration) {
        // Smoothed over about four gaps: one long pause does not stop the spinning a burst
        // needs, a run of them does.
        self.gap = (self.gap * 3 + gap.min(NAP)) / 4;
        self.budget = if self.gap <= SPIN_MAX {
            (self.gap * 2).min(SPIN_MAX)
        } else {
            Duration::ZERO
        };
    }
}

/// Sleep until `fd` is readable or `timeout` passes (a worker without a ring).
pub fn poll_one(fd: RawFd, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_gaps_keep_it_spinning_long_ones_put_it_to_sleep_at_once() {
        let mut idle = Idle::default();
        for _ in 0..8 {
            idle.learn(Duration::from_micros(3));
        }
        assert!(idle.budget >= Duration::from_micros(6), "{:?}", idle.budget);
        for _ in 0..8 {
            idle.learn(Duration::from_micros(60));
        }
        assert_eq!(idle.budget, Duration::ZERO);
        // Work coming back fast brings the spinning back.
        for _ in 0..8 {
            idle.learn(Duration::from_micros(2));
        }
        assert!(idle.budget > Duration::ZERO);
    }
}
