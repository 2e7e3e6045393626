//! The storage engine's durability promises against a disk that fails (faultfs): a failed
//! sync fails the writes waiting for it on every queue, and the image fails closed.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_ctl::serve::backend::{Done, Image, ImageRef, IoRing, IoTarget, Kind};
use aoe_integration::FaultFs;

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

/// Wait until faultfs has received `n` writes.
fn wait_writes(fs: &FaultFs, n: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    while fs.stats().unwrap().get("writes") < n {
        assert!(Instant::now() < until, "faultfs never saw write {n}");
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
    wait_writes(&fs, 1);
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
