//! A running target in a lab, and a raw initiator socket in the initiator namespace.

#![allow(dead_code)]

pub mod pagecache;
pub mod poll;
pub mod stderr;

#[allow(unused_imports)] // not every test file waits
pub use poll::{wait_for, wait_for_some};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aoe_common::wire::{Frame, Mac};
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_integration::{Lab, Proc};

pub const SECTORS: u64 = 8192; // 4 MiB

pub struct Rig {
    pub client: Client,
    pub target_mac: Mac,
    pub image: PathBuf,
    pub target: Option<Proc>,
    pub peer: Proc,
    pub lab: Lab, // dropped last: removes the namespaces
}

impl Rig {
    pub fn start(extra: &[&str]) -> Rig {
        let lab = Lab::new().expect("lab (root needed)");
        let image = lab.image("disk.img", SECTORS * 512).unwrap();
        let (target, peer) = lab.start_target(&image, extra).expect("target starts");
        let ifname = lab.initiator_if.clone();
        let mut client = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
            .unwrap()
            .expect("raw socket in the initiator namespace");
        client.timeout = Duration::from_millis(300);
        let t = client.find(1, 2).expect("target answers a config query");
        Rig {
            client,
            target_mac: t.addr.dst,
            image,
            target: Some(target),
            peer,
            lab,
        }
    }

    /// Exports e1.2 and e1.3 (an image each; `image` is e1.2's) served by one daemon on the
    /// target link, on the data path AOE_TEST_DATA_PATH names (default: XDP). With two
    /// exports the classifier answers no broadcast itself: user space answers each one.
    pub fn start_pair() -> Rig {
        let lab = Lab::new().expect("lab (root needed)");
        let peer = lab.start_peer(&lab.initiator_if).expect("lab peer starts");
        let path = std::env::var("AOE_TEST_DATA_PATH").unwrap_or_default();
        let mut body = match path.as_str() {
            "" => String::new(),
            m => format!("mode = \"{m}\"\n"),
        };
        let mut image = PathBuf::new();
        for slot in [2, 3] {
            let p = lab.image(&format!("e1.{slot}.img"), SECTORS * 512).unwrap();
            body += &format!(
                "[[export]]\nshelf = 1\nslot = {slot}\ninterfaces = [\"{}\"]\npath = \"{}\"\n",
                lab.target_if,
                p.display()
            );
            if slot == 2 {
                image = p;
            }
        }
        let cfg = lab.dir.join("exports.toml");
        std::fs::write(&cfg, body).unwrap();
        let target = lab
            .spawn_live(&["daemon", "--config", cfg.to_str().unwrap()])
            .expect("daemon starts");
        let ifname = lab.initiator_if.clone();
        let mut client = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
            .unwrap()
            .expect("raw socket in the initiator namespace");
        client.timeout = Duration::from_millis(300);
        let t = client.find(1, 2).expect("e1.2 answers a config query");
        client.find(1, 3).expect("e1.3 answers a config query");
        assert_eq!(
            lab.target_has_xdp().unwrap(),
            path != "afpacket",
            "the daemon serves on the data path AOE_TEST_DATA_PATH={path:?} names"
        );
        Rig {
            client,
            target_mac: t.addr.dst,
            image,
            target: Some(target),
            peer,
            lab,
        }
    }

    /// Send the frame `f` builds (tag given) once and collect every reply to it for `wait`.
    pub fn ask_all(
        &mut self,
        wait: Duration,
        f: impl FnOnce(&mut [u8], u32) -> usize,
    ) -> Vec<Vec<u8>> {
        let mut b = vec![0u8; 9216];
        let tag = 0x8000_0000 | rand_tag();
        let n = f(&mut b, tag);
        let sent = Frame::new_checked(&b[..n]).expect("an AoE request");
        let to = Addr {
            src: sent.src(),
            dst: sent.dst(),
            shelf: sent.shelf(),
            slot: sent.slot(),
        };
        self.client.sock.send(&b[..n]).unwrap();
        let deadline = Instant::now() + wait;
        let mut replies = vec![];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(m) = self.client.sock.recv(&mut b, left).unwrap() else {
                break;
            };
            let Ok(rep) = Frame::new_checked(&b[..m]) else {
                continue;
            };
            if frames::answers(&rep, &to) && rep.tag() == tag {
                replies.push(b[..m].to_vec());
            }
        }
        replies
    }

    /// Address the export from `src` (any MAC: the veth peer delivers replies to it).
    pub fn from(&self, src: Mac) -> Addr {
        Addr {
            src,
            dst: self.target_mac,
            shelf: 1,
            slot: 2,
        }
    }

    pub fn mine(&self) -> Addr {
        self.from(self.client.mac())
    }

    /// Build with `f` (tag given), send once, wait for the reply.
    pub fn ask(&mut self, f: impl FnOnce(&mut [u8], u32) -> usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 9216];
        let tag = 0x8000_0000 | rand_tag();
        let n = f(&mut b, tag);
        self.client
            .exchange(&b[..n], Duration::from_millis(400))
            .unwrap()
    }

    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }
}

fn rand_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed) | (std::process::id() << 16) & 0x7FFF_0000
}

/// ATA (status, error) of a reply.
pub fn ata(rep: &[u8]) -> (u8, u8) {
    (rep[27], rep[25])
}

/// AoE (flags nibble, error) of a reply.
pub fn aoe(rep: &[u8]) -> (u8, u8) {
    (rep[14], rep[15])
}

/// The JSON object `aoe-ctl bench --json` printed last.
pub fn bench_json(stdout: &[u8]) -> serde_json::Value {
    let s = String::from_utf8_lossy(stdout);
    s.lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from bench: {s}"))
}

/// A number of a bench report.
pub fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// A count from the target's exit line, e.g. "user space handled" or "dropped_acl".
pub fn exit_count(log: &str, name: &str) -> u64 {
    // The exit line alone: a log line before it may hold the same words ("... dropped so
    // far"), and its last field ends the line.
    let exit = log
        .lines()
        .rev()
        .find(|l| l.contains(": stopped;"))
        .map(|l| format!("{l},"));
    exit.as_deref()
        .unwrap_or(log)
        .split(&format!("{name} "))
        .nth(1)
        .and_then(|s| s.split([',', ' ', ')']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {log}"))
}

/// Does sector `lba` of `path` hold what `aoe-ctl bench` and `verify` write there (seed 0x5eed)?
pub fn holds_pattern(path: &Path, lba: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut got = [0u8; 512];
    let mut want = [0u8; 512];
    aoe_ctl::initiator::verify::pattern(0x5eed, lba, &mut want);
    let f = std::fs::File::open(path).unwrap();
    f.read_exact_at(&mut got, lba * 512).is_ok() && got == want
}
