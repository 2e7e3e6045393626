//! Waiting for a condition instead of sleeping for a guess of how long it takes.

use std::time::{Duration, Instant};

/// Generous: the tests share two cores with builds and other tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Poll `f` until it gives a value; fail naming `what` after `DEADLINE`.
pub fn wait_for_some<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `ok` until it holds; fail naming `what` after `DEADLINE`.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    wait_for_some(what, || ok().then_some(()))
}
