//! A process's stderr collected as it comes, so a test can wait for a line the process logs.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use aoe_integration::Proc;

pub struct StderrLog {
    text: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl StderrLog {
    /// Take over `p`'s stderr as it is collected (its `stop` then returns what came before
    /// this: read the rest from here).
    pub fn of(p: &mut Proc) -> StderrLog {
        let reader = p.log_reader.take().expect("stderr piped");
        StderrLog {
            text: p.log.clone(),
            reader,
        }
    }

    pub fn contains(&self, s: &str) -> bool {
        self.text.lock().unwrap().contains(s)
    }

    /// All of it, once the process has exited (its end of the pipe closed).
    pub fn finish(self) -> String {
        self.reader.join().unwrap();
        let text = self.text.lock().unwrap().clone();
        text
    }
}
