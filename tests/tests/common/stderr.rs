//! A process's stderr collected as it comes, so a test can wait for a line the process logs.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use aoe_integration::Proc;

pub struct StderrLog {
    text: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl StderrLog {
    /// Take over `p`'s stderr (its `stop` then returns nothing: read it from here).
    pub fn of(p: &mut Proc) -> StderrLog {
        let mut err = p.child.stderr.take().expect("stderr piped");
        let text = Arc::new(Mutex::new(String::new()));
        let t = text.clone();
        let reader = std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut b) {
                t.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&b[..n]));
            }
        });
        StderrLog { text, reader }
    }

    pub fn contains(&self, s: &str) -> bool {
        self.text.lock().unwrap().contains(s)
    }

    /// All of it, once the process has exited (its end of the pipe closed).
    pub fn finish(self) -> String {
        self.reader.join().unwrap();
        Arc::try_unwrap(self.text).unwrap().into_inner().unwrap()
    }
}
