//! The storage engine's durability promises against a disk that fails (faultfs): a failed
//! sync fails the writes waiting for it on every queue, and the image fails closed; the
//! daemon answers ATA errors for that export until it is reopened, counts it, exports it as
//! a metric, and its other exports serve on.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_common::wire::ata::{ERROR_ABRT, STATUS_DRDY, STATUS_ERR};
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_ctl::serve::backend::{Done, Image, ImageRef, IoRing, IoTarget, Kind};
use aoe_integration::{spawn_in_env, FaultFs, Lab, Proc};
use common::ata;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("aoe-durability-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn mount(&self, bytes: usize) -> FaultFs {
        let backing = self.0.join("disk.img");
        std::fs::write(&backing, vec![0u8; bytes]).unwrap();
        FaultFs::mount(&backing, &self.0.join("mnt")).expect("faultfs mounts (root, /dev/fuse)")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pump `ring` until `n` requests are done (a generous deadline: FUSE on a busy machine).
fn run_until(ring: &mut IoRing, n: usize) -> Vec<Done> {
    let mut done = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while done.len() < n {
        assert!(
            Instant::now() < until,
            "only {} of {n} done: {done:?}",
            done.len()
        );
        ring.pump(&mut done);
        std::thread::sleep(Duration::from_micros(200));
    }
    done
}

/// Wait until faultfs has received `n` writes from `ring`, which runs what the kernel
/// deferred to it (a write to a FUSE file is retried from the ring's task work once the file
/// polls writable) but reaps nothing: its completions stay unread.
fn wait_writes(fs: &FaultFs, n: u64, ring: &mut IoRing) {
    let until = Instant::now() + Duration::from_secs(30);
    while fs.stats().unwrap().get("writes") < n {
        assert!(Instant::now() < until, "faultfs never saw write {n}");
        ring.run_deferred();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Two queues write one image; the disk loses queue B's page in the fdatasync queue A
/// issues, and reports the error once to each open file. On one shared descriptor A's sync
/// consumed the error and B's then returned 0: B's write was acknowledged and was not on
/// the disk. Now B's write fails, and so does every later I/O of the image.
#[test]
fn a_failed_sync_fails_the_waiting_writes_of_every_queue_and_the_image_fails_closed() {
    let dir = Dir::new("sync");
    let mut fs = dir.mount(1 << 20);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fs.file)
        .unwrap();
    let image = Image::new(&fs.file);
    // faultfs reports no STATX_DIOALIGN: the buffered + fdatasync path, as aoe-ctl takes it.
    let t = IoTarget {
        fd: file.as_raw_fd(),
        base: 0,
        direct: false,
        mem_align: 1,
        durable: true,
        regular: true,
        write_around: None,
        image: ImageRef::new(&image),
    };
    let (mut a, mut b) = (IoRing::new().unwrap(), IoRing::new().unwrap());
    let (data_a, data_b) = (vec![0xaau8; 4096], vec![0xbbu8; 4096]);
    let mut done_b = Vec::new();
    // B's write reaches the disk's cache; B has not looked at its completion yet.
    // SAFETY: the buffers and `file` outlive the rings' use of them (waited for below).
    unsafe {
        b.queue(
            2,
            t,
            Kind::Write,
            8192,
            &[(data_b.as_ptr().cast_mut(), 4096)],
        )
    };
    b.pump(&mut done_b);
    wait_writes(&fs, 1, &mut b);
    // The next sync loses B's page (a writeback error on it).
    fs.fail("sync at=8192 len=4096 times=1").unwrap();
    // SAFETY: as above.
    unsafe { a.queue(1, t, Kind::Write, 0, &[(data_a.as_ptr().cast_mut(), 4096)]) };
    let done_a = run_until(&mut a, 1);
    let e = done_a[0].result.as_ref().expect_err("A's sync failed");
    assert_eq!(e.reason(), "io", "{e}");
    assert!(image.failed(), "the image failed closed");
    assert_eq!(image.sync_errors(), 1);
    // B now finishes its write and syncs: it must not acknowledge it.
    done_b.extend(run_until(&mut b, 1 - done_b.len()));
    let e = done_b[0]
        .result
        .as_ref()
        .expect_err("B's write was acknowledged after the disk lost it");
    assert!(
        ["io", "failed_closed"].contains(&e.reason()),
        "B's write: {e}"
    );
    // Every later I/O fails, on both queues, reads too, until the image is reopened.
    let mut back = vec![0u8; 512];
    // SAFETY: as above.
    unsafe {
        a.queue(3, t, Kind::Write, 0, &[(data_a.as_ptr().cast_mut(), 512)]);
        b.queue(4, t, Kind::Read, 0, &[(back.as_mut_ptr(), 512)]);
    }
    for d in run_until(&mut a, 1).into_iter().chain(run_until(&mut b, 1)) {
        let e = d.result.expect_err("an I/O of a failed image");
        assert_eq!(e.reason(), "failed_closed", "{e}");
    }
    // What the disk holds after a power cut: B's page is not there.
    drop((a, b, file));
    fs.cut().unwrap();
    let mut stored = vec![0u8; 4096];
    File::open(&fs.backing)
        .unwrap()
        .read_exact_at(&mut stored, 8192)
        .unwrap();
    assert_ne!(stored, data_b, "the lost page came back?");
    let _keep: Arc<Image> = image;
}

const METRICS: &str = "127.0.0.1:9731";

/// The daemon's /metrics text (inside the target namespace).
fn metrics(lab: &Lab) -> String {
    Lab::in_ns(&lab.target_ns, || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(METRICS)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .unwrap()
    .unwrap()
}

fn daemon(lab: &Lab, config: &std::path::Path) -> Proc {
    spawn_in_env(
        &lab.target_ns,
        &lab.live_env().unwrap(),
        &["daemon", "--config", config.to_str().unwrap()],
    )
    .expect("daemon starts")
}

/// Send once and wait for the reply; retransmit (new tag) a few times: a slow FUSE disk.
fn ask(c: &mut Client, f: impl Fn(&mut [u8], u32) -> usize) -> Vec<u8> {
    let mut b = vec![0u8; 9216];
    for tag in 1..=20u32 {
        let n = f(&mut b, 0x4000_0000 | tag);
        if let Some(rep) = c.exchange(&b[..n], Duration::from_millis(500)).unwrap() {
            return rep;
        }
    }
    panic!("no reply after 20 tries");
}

/// A sync error on one export's disk under a running daemon: that export answers ATA
/// errors for every request (reads too) until the daemon reopens it, the failure is
/// logged, counted and exported as a metric, and the daemon's other export serves on.
#[test]
fn a_sync_error_fails_the_export_closed_until_it_is_reopened() {
    let lab = Lab::new().expect("lab (root needed)");
    let dir = Dir::new("export");
    let fs = dir.mount(4 << 20);
    let other = lab.image("other.img", 4 << 20).unwrap();
    let config = lab.dir.join("exports.toml");
    let mut body = format!("metrics = \"{METRICS}\"\n");
    for (slot, path) in [(2, &fs.file), (3, &other)] {
        body += &format!(
            "\n[[export]]\nshelf = 1\nslot = {slot}\ninterfaces = [\"{}\"]\npath = \"{}\"\n",
            lab.target_if,
            path.display()
        );
    }
    std::fs::write(&config, body).unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let d = daemon(&lab, &config);
    let ifname = lab.initiator_if.clone();
    let mut c = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
        .unwrap()
        .expect("raw socket in the initiator namespace");
    let t = c.find(1, 2).expect("e1.2 answers");
    let to = |slot: u8| Addr {
        src: t.addr.src,
        dst: t.addr.dst,
        shelf: 1,
        slot,
    };
    const OK: (u8, u8) = (STATUS_DRDY, 0);
    const ABRT: (u8, u8) = (STATUS_DRDY | STATUS_ERR, ERROR_ABRT);
    let data = vec![0x5au8; 1024];
    let write = |c: &mut Client, slot, lba| {
        ata(&ask(c, |b, tag| {
            frames::write(b, &to(slot), tag, lba, &data)
        }))
    };
    assert_eq!(write(&mut c, 2, 8), OK);
    // The disk fails the next sync of e1.2's image, and loses what it held unsynced.
    fs.fail("sync times=1").unwrap();
    assert_eq!(write(&mut c, 2, 16), ABRT, "a write whose sync failed");
    // Failed closed: the next requests fail too, although the disk syncs again (the kernel
    // reports a writeback error once; a sync now would return 0 for the lost page).
    assert_eq!(write(&mut c, 2, 24), ABRT, "a write after the failed sync");
    let rep = ask(&mut c, |b, tag| frames::read(b, &to(2), tag, 8, 2));
    assert_eq!(
        ata(&rep).0 & STATUS_ERR,
        STATUS_ERR,
        "a read after the failed sync"
    );
    // The other export serves on.
    assert_eq!(write(&mut c, 3, 8), OK);
    let rep = ask(&mut c, |b, tag| frames::read(b, &to(3), tag, 8, 2));
    assert_eq!((ata(&rep), &rep[36..36 + 1024]), (OK, &data[..]));
    let m = metrics(&lab);
    for series in [
        "aoe_export_failed_closed{export=\"e1.2\"} 1",
        "aoe_export_failed_closed{export=\"e1.3\"} 0",
        "aoe_storage_sync_errors_total{export=\"e1.2\"} 1",
    ] {
        assert!(m.contains(series), "no {series} in\n{m}");
    }
    let log = d.stop().unwrap();
    assert!(log.contains("failing closed"), "{log}");
    // Reopened (a restart): it serves again.
    let d = daemon(&lab, &config);
    assert_eq!(write(&mut c, 2, 24), OK);
    let m = metrics(&lab);
    assert!(
        m.contains("aoe_export_failed_closed{export=\"e1.2\"} 0"),
        "{m}"
    );
    drop(d);
}

/// Wait until the daemon's log holds `what`.
fn wait_log(d: &Proc, what: &str, within: Duration) {
    let until = Instant::now() + within;
    while !d.log.lock().unwrap().contains(what) {
        assert!(
            Instant::now() < until,
            "no {what:?} in the log:\n{}",
            d.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an export's series in the metrics text.
fn series(text: &str, name: &str, export: &str) -> Option<f64> {
    let key = format!("{name}{{export=\"{export}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.parse().ok())
}

/// The AF_PACKET worker stops on a send error (the link went down) while a read waits for a
/// disk that hangs: it waits for that read before its buffers go (the kernel would write
/// the late read into freed heap memory of a daemon that keeps serving), and says so.
#[test]
fn the_afpacket_worker_waits_for_io_in_flight_when_it_stops_on_an_error() {
    let lab = Lab::new().expect("lab (root needed)");
    let (da, db) = (Dir::new("drain-a"), Dir::new("drain-b"));
    let (fa, fb) = (da.mount(4 << 20), db.mount(4 << 20));
    let config = lab.dir.join("exports.toml");
    let mut body = format!("mode = \"afpacket\"\nmetrics = \"{METRICS}\"\n");
    for (slot, fs) in [(2, &fa), (3, &fb)] {
        body += &format!(
            "\n[[export]]\nshelf = 1\nslot = {slot}\ninterfaces = [\"{}\"]\npath = \"{}\"\n",
            lab.target_if,
            fs.file.display()
        );
    }
    std::fs::write(&config, body).unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let d = daemon(&lab, &config);
    let ifname = lab.initiator_if.clone();
    let mut c = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
        .unwrap()
        .expect("raw socket in the initiator namespace");
    let t = c.find(1, 2).expect("e1.2 answers");
    c.find(1, 3).expect("e1.3 answers");
    // Both disks hang; one read waits on each.
    fa.stall(120_000).unwrap();
    fb.stall(120_000).unwrap();
    let mut b = vec![0u8; 9216];
    for slot in [2, 3] {
        let to = Addr {
            src: t.addr.src,
            dst: t.addr.dst,
            shelf: 1,
            slot,
        };
        let n = frames::read(&mut b, &to, 0x100 + u32::from(slot), 64, 2);
        c.sock.send(&b[..n]).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(&lab);
        let waiting = |e| series(&m, "aoe_storage_requests_in_flight", e);
        if waiting("e1.2") == Some(1.0) && waiting("e1.3") == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the reads never reached the disks:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The link goes down; e1.2's disk comes back, its reply cannot be sent: the worker
    // stops on that error with e1.3's read still in flight.
    let ip = |args: &[&str]| {
        let s = std::process::Command::new("ip")
            .args(["-n", &lab.target_ns])
            .args(args)
            .status()
            .unwrap();
        assert!(s.success(), "ip {args:?}");
    };
    ip(&["link", "set", &lab.target_if, "down"]);
    fa.clear().unwrap();
    wait_log(
        &d,
        "AF_PACKET worker: sending from the tx ring",
        Duration::from_secs(30),
    );
    // It is still waiting: nothing freed yet. The disk comes back, and the wait ends.
    assert!(
        !d.log.lock().unwrap().contains("waited for"),
        "{}",
        d.log.lock().unwrap()
    );
    fb.clear().unwrap();
    wait_log(
        &d,
        "waited for 1 storage requests in flight at exit",
        Duration::from_secs(30),
    );
    ip(&["link", "set", &lab.target_if, "up"]);
    let log = d.stop().unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
