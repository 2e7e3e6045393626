//! Growing an export while it serves (docs/operations.md, "Growing an export"): a regular
//! file and a loop device (`losetup -c`) grown under a running target, on both data paths,
//! are served at their new size whoever notices first (an initiator's IDENTIFY, `aoe-ctl
//! resize`, the daemon's own look every second), and the change is announced; a store that
//! shrank is not followed: what lies past its end fails, counted and shown; an export with
//! a length keeps it until the config changes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aoe_common::wire::ata::{ERROR_ABRT, ERROR_UNC, STATUS_DRDY, STATUS_ERR};
use aoe_common::wire::{Command as AoeCommand, Frame};
use aoe_ctl::initiator::client::{Client, Target};
use aoe_ctl::initiator::frames;
use aoe_ctl::packet::socket::RawSocket;
use aoe_integration::{Lab, Proc};
use common::poll::DEADLINE;
use common::{ata, wait_for, wait_for_some};

const MIB: u64 = 1 << 20;
const OK: (u8, u8) = (STATUS_DRDY, 0);

/// A target serving e1.2 from `store` in a lab with live control (its own run dir and bpffs),
/// an initiator that talks to it, and a second socket that only listens for announcements.
struct Served {
    client: Client,
    listener: RawSocket,
    t: Target,
    target: Option<Proc>,
    _peer: Proc,
    lab: Lab,
}

impl Served {
    fn start(lab: Lab, args: &[&str]) -> Served {
        let peer = lab.start_peer(&lab.initiator_if).expect("lab peer");
        let target = lab.spawn_live(args).expect("target starts");
        let ifname = lab.initiator_if.clone();
        let (client, listener) = Lab::in_ns(&lab.initiator_ns, move || {
            (Client::open(&ifname), RawSocket::open(&ifname))
        })
        .unwrap();
        let mut client = client.expect("raw socket in the initiator namespace");
        client.timeout = Duration::from_millis(300);
        let t = client.find(1, 2).expect("e1.2 answers a config query");
        Served {
            client,
            listener: listener.expect("a second raw socket"),
            t,
            target: Some(target),
            _peer: peer,
            lab,
        }
    }

    fn identify(&mut self) -> u64 {
        self.client.identify(&self.t).expect("IDENTIFY").sectors
    }

    fn read(&mut self, lba: u64) -> Vec<u8> {
        let a = self.t.addr;
        self.client
            .request(&|b, tag| frames::read(b, &a, tag, lba, 1))
            .expect("a reply to the read")
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Vec<u8> {
        let a = self.t.addr;
        self.client
            .request(&|b, tag| frames::write(b, &a, tag, lba, data))
            .expect("a reply to the write")
    }

    /// `aoe-ctl ARGS` against this lab's daemon: (success, stdout and stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let o = self.lab.run_live(args).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    /// The export's entry in `aoe-ctl status --json` (refreshed by the daemon twice a second).
    fn status(&self) -> serde_json::Value {
        let (ok, out) = self.ctl(&["status", "--json"]);
        assert!(ok, "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["interfaces"][0]["exports"][0].clone()
    }

    /// The unsolicited config reply (tag 0) announcing e1.2, on the listening socket.
    fn announcement(&self) -> bool {
        let mut b = vec![0u8; 9216];
        let deadline = Instant::now() + DEADLINE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(n) = self.listener.recv(&mut b, left).unwrap() else {
                continue;
            };
            let Ok(f) = Frame::new_checked(&b[..n]) else {
                continue;
            };
            if f.is_response()
                && f.command() == AoeCommand::QueryConfig
                && f.tag() == 0
                && (f.shelf(), f.slot()) == (1, 2)
            {
                return true;
            }
        }
        false
    }

    /// Drop what the listener holds (announcements of earlier steps).
    fn drain(&self) {
        let mut b = vec![0u8; 9216];
        while self
            .listener
            .recv(&mut b, Duration::ZERO)
            .unwrap()
            .is_some()
        {}
    }

    fn stop(&mut self) -> String {
        self.target.take().unwrap().stop().unwrap()
    }
}

/// A loop device over `file`, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup (util-linux)");
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Tell the loop driver its file changed size (`losetup -c`).
    fn recapacity(&self) {
        let ok = Command::new("losetup")
            .args(["-c", &self.0])
            .status()
            .unwrap();
        assert!(ok.success(), "losetup -c {}", self.0);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn set_len(p: &Path, bytes: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(bytes)
        .unwrap();
}

fn sector_of(p: &Path, lba: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; 512];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, lba * 512)
        .unwrap();
    b
}

/// One store grown three times under a running target, each time noticed another way.
fn grow_under(mode: &str, on_loop: bool, extra: &[&str]) {
    let lab = Lab::new().expect("lab (root needed)");
    let file: PathBuf = lab.image("disk.img", 4 * MIB).unwrap();
    let dev = on_loop.then(|| Loop::attach(&file));
    let served_path = dev.as_ref().map_or(file.clone(), |l| PathBuf::from(&l.0));
    let grow = |bytes: u64| {
        set_len(&file, bytes);
        if let Some(l) = &dev {
            l.recapacity();
        }
    };
    let what = format!("{mode} {} {extra:?}", if on_loop { "loop" } else { "file" });
    let mut args = lab.export_args(&served_path, extra);
    args.splice(1..1, ["--mode", mode]);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Served::start(lab, &args);
    assert_eq!(s.identify(), 8192, "{what}");

    // 1. An initiator's IDENTIFY (what a Linux revalidate sends) looks at the store: the
    //    new size at once, nothing asked of the operator; and the change is announced.
    s.drain();
    grow(8 * MIB);
    assert_eq!(s.identify(), 16384, "{what}: IDENTIFY after the store grew");
    assert!(s.announcement(), "{what}: the new size was not announced");
    let data = vec![0x6b; 512];
    assert_eq!(
        ata(&s.write(16383, &data)),
        OK,
        "{what}: write in the new space"
    );
    let rep = s.read(16383);
    assert_eq!((ata(&rep), &rep[36..]), (OK, &data[..]), "{what}");
    wait_for("the write in the file", || sector_of(&file, 16383) == data);

    // 2. `aoe-ctl resize`: when it returns, the new size is served.
    grow(12 * MIB);
    let (ok, out) = s.ctl(&["resize", "--target", "e1.2"]);
    assert!(ok, "{what}: {out}");
    assert!(out.contains("24576 sectors"), "{what}: {out}");
    assert_eq!(
        ata(&s.read(24575)),
        OK,
        "{what}: read at the new end after resize"
    );

    // 3. Nobody says anything: the daemon's own look (every second) finds it.
    grow(16 * MIB);
    wait_for_some("the watch to follow the store", || {
        (s.status()["sectors"].as_u64() == Some(32768)).then_some(())
    });
    assert_eq!(ata(&s.read(32767)), OK, "{what}");
    assert_eq!(s.status()["store_sectors"].as_u64(), Some(32768), "{what}");
    assert_eq!(s.identify(), 32768, "{what}");
    let log = s.stop();
    assert!(
        log.contains("grew: served at 32768 sectors"),
        "{what}: {log}"
    );
}

#[test]
fn a_grown_file_is_served_at_its_new_size_on_both_data_paths() {
    grow_under("xdp", false, &[]);
    grow_under("afpacket", false, &[]);
}

#[test]
fn a_loop_device_grown_with_losetup_c_is_followed() {
    grow_under("xdp", true, &[]);
    grow_under("afpacket", true, &["--direct"]);
}

#[test]
fn a_shrunk_store_is_not_followed_errors_past_its_end_are_counted() {
    let lab = Lab::new().expect("lab (root needed)");
    let file = lab.image("disk.img", 8 * MIB).unwrap();
    let args = lab.export_args(&file, &[]);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Served::start(lab, &args);
    let data = vec![0x3c; 512];
    assert_eq!(ata(&s.write(100, &data)), OK);
    set_len(&file, 4 * MIB);
    // The operator asks: refused in one line, with both sizes.
    let (ok, out) = s.ctl(&["resize", "--target", "e1.2"]);
    assert!(!ok, "a shrink must not look like success: {out}");
    assert!(
        out.contains("holds 8192 sectors, fewer than the 16384 served: not followed"),
        "{out}"
    );
    // Initiators still see the size they had; past the store's end, ATA errors.
    assert_eq!(s.identify(), 16384);
    assert_eq!(ata(&s.read(12000)), (STATUS_DRDY | STATUS_ERR, ERROR_UNC));
    assert_eq!(
        ata(&s.write(12000, &data)),
        (STATUS_DRDY | STATUS_ERR, ERROR_ABRT)
    );
    let rep = s.read(100);
    assert_eq!(
        (ata(&rep), &rep[36..]),
        (OK, &data[..]),
        "before the end, served"
    );
    // Counted by reason, and shown by status with both sizes.
    wait_for_some("errors_storage_shrunk in stats", || {
        let (_, out) = s.ctl(&["stats", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["exports"][0]["errors_storage_shrunk"].as_u64() == Some(2)).then_some(())
    });
    let st = s.status();
    assert_eq!(
        (st["sectors"].as_u64(), st["store_sectors"].as_u64()),
        (Some(16384), Some(8192)),
        "{st}"
    );
    let (_, text) = s.ctl(&["status"]);
    assert!(
        text.contains("16384 sectors (store shrank to 8192"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        4 * MIB,
        "nothing grew the file back"
    );
    // Grown back: all served again.
    set_len(&file, 8 * MIB);
    let (ok, out) = s.ctl(&["resize", "--target", "e1.2"]);
    assert!(ok && out.contains("16384 sectors"), "{out}");
    assert_eq!(ata(&s.read(12000)), OK);
    let log = s.stop();
    assert!(
        log.contains("shrank to 8192 sectors, below the 16384 served"),
        "{log}"
    );
    assert!(
        log.contains("holds all 16384 served sectors again"),
        "{log}"
    );
}

#[test]
fn a_length_is_kept_until_the_config_changes_it() {
    let lab = Lab::new().expect("lab (root needed)");
    let file = lab.image("disk.img", 4 * MIB).unwrap();
    // `aoe-ctl export --length`: the store grows, the export does not.
    let args = lab.export_args(&file, &["--offset", "8", "--length", "4096"]);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Served::start(lab, &args);
    set_len(&file, 8 * MIB);
    let (ok, out) = s.ctl(&["resize", "--target", "e1.2"]);
    assert!(ok && out.contains("4096 sectors (2 MiB), kept"), "{out}");
    assert_eq!(s.identify(), 4096);
    s.stop();
    drop(s);

    // The daemon: `length` in exports.toml, changed and reloaded.
    let lab = Lab::new().expect("lab (root needed)");
    let file = lab.image("disk.img", 8 * MIB).unwrap();
    let cfg = lab.dir.join("exports.toml");
    let iface = lab.target_if.clone();
    let toml = |length: u64| {
        format!(
            "[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{iface}\"]\npath = \"{}\"\nlength = {length}\n",
            file.display()
        )
    };
    std::fs::write(&cfg, toml(4096)).unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let mut s = Served::start(lab, &["daemon", "--config", &cfg_arg]);
    assert_eq!(s.identify(), 4096);
    std::fs::write(&cfg, toml(12288)).unwrap();
    s.drain();
    let pid = s.target.as_ref().unwrap().pid() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("the reloaded length", || s.identify() == 12288);
    assert!(s.announcement(), "the restarted export was not announced");
    assert_eq!(ata(&s.read(12287)), OK);
    s.stop();
}
