//! The engine a worker serves, replaceable while it runs: a reload swaps in an engine with
//! another export list, and each worker picks it up between two batches, keeping its socket
//! and every frame in its rings (untouched exports never miss a request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::engine::Engine;

pub struct LiveEngine {
    generation: AtomicU64,
    engine: Mutex<Arc<Engine>>,
}

impl LiveEngine {
    pub fn new(engine: Engine) -> Self {
        LiveEngine {
            generation: AtomicU64::new(0),
            engine: Mutex::new(Arc::new(engine)),
        }
    }

    /// The current engine and its generation.
    pub fn load(&self) -> (Arc<Engine>, u64) {
        let e = self.engine.lock().unwrap();
        (e.clone(), self.generation.load(Ordering::Acquire))
    }

    /// Has the engine changed since generation `seen`? One relaxed load: cheap per batch.
    #[inline]
    pub fn changed_since(&self, seen: u64) -> bool {
        self.generation.load(Ordering::Relaxed) != seen
    }

    pub fn replace(&self, engine: Engine) {
        let mut e = self.engine.lock().unwrap();
        *e = Arc::new(engine);
        self.generation.fetch_add(1, Ordering::Release);
    }
}
