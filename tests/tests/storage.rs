//! The storage engine under the protocol: requests wait for the disk without holding up the
//! ones the page cache can answer, every request gets exactly one reply with its own data,
//! on both data paths.

mod common;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use aoe_common::wire::ata::{AtaCommand, AtaRepr, AFLAG_LBA48};
use aoe_common::wire::Frame;
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_ctl::packet::ring::RingSocket;
use aoe_integration::Lab;
use common::pagecache::{resident_pages, DiskDir};

const MIB: u64 = 1 << 20;
/// Requests that must go to the disk, sent before the one the page cache holds.
const COLD: u64 = 24;

/// Sector `lba`'s contents: its number in every 8 bytes, so a misplaced read shows.
fn sector(lba: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    for c in s.chunks_mut(8) {
        c.copy_from_slice(&lba.to_le_bytes());
    }
    s
}

/// A 64 MiB image with real extents (a hole reads zeros without touching the disk), on the
/// disk, written back and dropped from the page cache.
fn cold_image(dir: &DiskDir) -> std::path::PathBuf {
    let p = dir.0.join("cold.img");
    let f = std::fs::File::create(&p).unwrap();
    let mut chunk = vec![0u8; MIB as usize];
    for m in 0..64 {
        for (i, s) in chunk.chunks_mut(512).enumerate() {
            s.copy_from_slice(&sector(m * 2048 + i as u64));
        }
        f.write_all_at(&chunk, m * MIB).unwrap();
    }
    f.sync_all().unwrap();
    drop_cache(&f);
    p
}

fn drop_cache(f: &std::fs::File) {
    // SAFETY: fadvise on our own descriptor.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise");
}

fn a_miss_never_delays_a_hit(extra: &[&str]) {
    let lab = Lab::new().unwrap();
    let dir = DiskDir::new();
    let img = cold_image(&dir);
    let (target, _peer) = lab.start_target(&img, extra).unwrap();
    let ifname = lab.initiator_if.clone();
    let mut client = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
        .unwrap()
        .unwrap();
    let t = client.find(1, 2).expect("target answers");
    let addr: Addr = t.addr;
    // The hot sector: read once, so the page cache holds it.
    let hot = 7u64;
    let mut b = vec![0u8; 9216];
    let n = frames::read(&mut b, &addr, 0x4000_0000, hot, 1);
    let rep = client.exchange(&b[..n], Duration::from_secs(5)).unwrap();
    assert!(rep.is_some(), "warm-up read answered");
    // Far apart (1 MiB), so neither readahead nor merging turns one miss into another's hit.
    let file = std::fs::File::open(&img).unwrap();
    drop_cache(&file);
    let n = frames::read(&mut b, &addr, 0x4000_0000, hot, 1);
    client.exchange(&b[..n], Duration::from_secs(5)).unwrap();
    let resident_before = resident_pages(&img, 64 * MIB as usize);
    assert!(
        resident_before <= 32,
        "{resident_before} pages cached before"
    );
    let cold: Vec<u64> = (1..=COLD).map(|i| i * 2048 + 3).collect();
    let mut sent: HashMap<u32, u64> = HashMap::new();
    let reqs: Vec<(u32, u64)> = cold
        .iter()
        .chain(std::iter::once(&hot))
        .enumerate()
        .map(|(i, &lba)| (0x5000_0000 + i as u32, lba))
        .collect();
    sent.extend(reqs.iter().copied());
    // The whole burst leaves in one send from a PACKET_MMAP ring: the hit arrives right
    // behind the misses, before the disk can have answered them. Every reply, in the order
    // they came back, is collected on the same ring.
    let ifname = lab.initiator_if.clone();
    let replies: Vec<(u32, Vec<u8>)> = Lab::in_ns(&lab.initiator_ns, move || {
        let mut ring = RingSocket::open(&ifname, 256, 256).expect("ring socket");
        for &(tag, lba) in &reqs {
            assert!(ring.queue(|b| frames::read(b, &addr, tag, lba, 1)));
        }
        ring.flush().unwrap();
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while got.len() < reqs.len() && Instant::now() < until {
            while ring.receive(|f| {
                if let Ok(fr) = Frame::new_checked(f) {
                    if frames::answers(&fr, &addr) && reqs.iter().any(|r| r.0 == fr.tag()) {
                        got.push((fr.tag(), f.to_vec()));
                    }
                }
            }) {}
            ring.wait(Duration::from_millis(10)).unwrap();
        }
        // Anything more would be a second answer.
        std::thread::sleep(Duration::from_millis(200));
        while ring.receive(|f| {
            if let Ok(fr) = Frame::new_checked(f) {
                if frames::answers(&fr, &addr) && reqs.iter().any(|r| r.0 == fr.tag()) {
                    got.push((fr.tag(), f.to_vec()));
                }
            }
        }) {}
        got
    })
    .unwrap();
    let mut order: Vec<u32> = Vec::new();
    for (tag, b) in &replies {
        let lba = sent[tag];
        assert_eq!(b[27] & 1, 0, "read of {lba} failed: status {:#x}", b[27]);
        assert_eq!(
            &b[36..548],
            &sector(lba)[..],
            "sector {lba} carries its own data"
        );
        order.push(*tag);
    }
    let mut seen = order.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        order.len(),
        "a request answered twice: {order:x?}"
    );
    assert_eq!(
        order.len(),
        sent.len(),
        "a request never answered: {order:x?}"
    );
    let hot_tag = 0x5000_0000 + COLD as u32;
    let at = order.iter().position(|&t| t == hot_tag).unwrap();
    eprintln!(
        "{extra:?}: the cached read was answered {}th of {}",
        at + 1,
        order.len()
    );
    // Synchronous storage answers in arrival order: the hit would be last, behind every miss.
    assert!(
        at < order.len() - 1,
        "{extra:?}: the cached read waited for all {COLD} disk reads: {order:x?}"
    );
    // And the misses really went to the disk (the file was not cached whole).
    assert!(resident_pages(&img, 64 * MIB as usize) < 1024);
    target.stop().unwrap();
}

#[test]
fn a_miss_never_delays_a_hit_xdp() {
    a_miss_never_delays_a_hit(&["--mode", "xdp", "--queues", "1"]);
}

#[test]
fn a_miss_never_delays_a_hit_afpacket() {
    a_miss_never_delays_a_hit(&["--mode", "afpacket"]);
}

#[test]
fn identify_tells_the_write_cache_as_it_is() {
    // Durable by default: no volatile cache to declare. --write-back is one (words 82/85
    // bit 5), and FLUSH CACHE EXT empties it.
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 4 * MIB).unwrap();
    for (extra, cache) in [(&[][..], false), (&["--write-back"][..], true)] {
        let (target, _peer) = lab.start_target(&img, extra).unwrap();
        let ifname = lab.initiator_if.clone();
        let mut client = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
            .unwrap()
            .unwrap();
        let t = client.find(1, 2).expect("target answers");
        let id = client.identify(&t).unwrap();
        assert_eq!(id.write_cache, cache, "{extra:?}");
        let mut b = vec![0u8; 1024];
        let args = AtaRepr::new(AFLAG_LBA48, 0, AtaCommand::FlushCacheExt, [0; 6]);
        let n = frames::ata(&mut b, &t.addr, 0x6000_0001, args, &[]);
        let rep = client
            .exchange(&b[..n], Duration::from_secs(5))
            .unwrap()
            .expect("FLUSH CACHE EXT answered");
        assert_eq!(rep[27], 0x40, "{extra:?}: flush status");
        target.stop().unwrap();
    }
}
