//! The control plane's one owner of export state: edits from operators (`aoe-ctl acl`) and
//! initiators (AoE mask list edits) at the same time lose nothing, in the daemon's answer, the
//! kernel's entry and the classifier's verdicts alike; and a slow state write holds up no
//! queue, while one that fails is undone and never acknowledged.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe_common::maps::{ExportEntry, ExportKey, MAX_MASKS};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::mask::{Directive, MaskRepr, DCMD_ADD, DCMD_DELETE};
use aoe_common::wire::{Frame, Mac};
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_ctl::net::{format_mac, parse_mac};
use aoe_integration::Lab;
use common::stderr::StderrLog;
use common::wait_for;

/// How long the edits race.
const RACE: Duration = Duration::from_secs(4);
const ADMINS: u8 = 4;
const MACS_PER_ADMIN: u8 = 5;
const INITIATOR_MACS: u8 = 6;
/// The initiator's edits come from here: on the list from the start, so they always pass.
const ANCHOR: Mac = [0x02, 0xa0, 0, 0, 0, 0x01];
/// Tries per operation before the test gives up on it (an unanswered one is retried: the
/// edits are idempotent, so a retry settles what the list holds).
const TRIES: usize = 20;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tiny deterministic generator: which operation comes next.
struct Lcg(u64);

impl Lcg {
    fn coin(&mut self) -> bool {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 63 == 1
    }
}

/// What the list should hold of the MACs one actor edits: the last acknowledged operation on
/// each, and how many attempts went unacknowledged on the way.
#[derive(Default)]
struct Outcome {
    present: BTreeMap<Mac, bool>,
    acknowledged: usize,
    unanswered: usize,
}

/// One operator process after the other, `aoe-ctl acl add|del`, over `macs` until `until`.
fn operator(lab: &Lab, macs: &[Mac], seed: u64, until: Instant) -> Outcome {
    let mut rng = Lcg(seed);
    let mut out = Outcome::default();
    let mut k = 0;
    while Instant::now() < until {
        let mac = macs[k % macs.len()];
        k += 1;
        let add = rng.coin();
        let m = format_mac(&mac);
        let op = if add { "add" } else { "del" };
        let mut last = String::new();
        let ok = (0..TRIES).any(|_| {
            let o = lab.run_live(&["acl", op, "--target", "e1.2", &m]).unwrap();
            if !o.status.success() {
                out.unanswered += 1;
                last = text(&o);
            }
            o.status.success()
        });
        assert!(ok, "acl {op} {m} failed {TRIES} times: {last}");
        out.present.insert(mac, add);
        out.acknowledged += 1;
    }
    out
}

/// A mask list edit answered without error (AoE error 0, merror 0).
fn edit_acknowledged(rep: &[u8]) -> bool {
    rep.len() > 15 && rep[15] == 0 && MaskRepr::parse(rep).is_ok_and(|m| m.merror == 0)
}

fn mask_edit(client: &mut Client, from: &Addr, dcmd: u8, mac: Mac) -> bool {
    let mut b = vec![0u8; 1500];
    let n = frames::mask_edit(&mut b, from, rand_tag(), &[Directive { dcmd, mac }]);
    client
        .exchange(&b[..n], Duration::from_millis(300))
        .unwrap()
        .is_some_and(|rep| edit_acknowledged(&rep))
}

/// An initiator's AoE mask list edits (command 2, mcmd 1) over `macs` until `until`.
fn initiator(client: &mut Client, from: &Addr, macs: &[Mac], until: Instant) -> Outcome {
    let mut rng = Lcg(0x1e);
    let mut out = Outcome::default();
    let mut k = 0;
    while Instant::now() < until {
        let mac = macs[k % macs.len()];
        k += 1;
        let add = rng.coin();
        let dcmd = if add { DCMD_ADD } else { DCMD_DELETE };
        let ok = (0..TRIES).any(|_| {
            let ok = mask_edit(client, from, dcmd, mac);
            out.unanswered += usize::from(!ok);
            ok
        });
        assert!(ok, "mask edit {dcmd} {} unanswered", format_mac(&mac));
        out.present.insert(mac, add);
        out.acknowledged += 1;
    }
    out
}

fn rand_tag() -> u32 {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(1);
    0x8000_0000 | (std::process::id() << 16) & 0x7FFF_0000 | N.fetch_add(1, Ordering::Relaxed)
}

/// The mask list in the kernel's EXPORTS entry of e1.2 on the target interface.
fn kernel_masks(lab: &Lab) -> Vec<Mac> {
    let pin = lab.dir.join("bpf/aoe").join(&lab.target_if).join("EXPORTS");
    let map = aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{pin:?}: {e}"));
    let exports: aya::maps::HashMap<_, ExportKey, ExportEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap();
    let e = exports.get(&ExportKey::new(1, 2), 0).unwrap();
    aoe_ctl::serve::xdp::lists_of(&e).masks
}

fn sorted(mut v: Vec<Mac>) -> Vec<Mac> {
    v.sort();
    v
}

fn stats(lab: &Lab) -> serde_json::Value {
    let o = lab.run_live(&["stats", "--json"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn export_stat(v: &serde_json::Value, key: &str) -> u64 {
    v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == "e1.2")
        .unwrap_or_else(|| panic!("e1.2 in {v}"))[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {v}"))
}

fn discovers(lab: &Lab) -> bool {
    let o = lab
        .run(
            &lab.initiator_ns,
            &["discover", "--iface", &lab.initiator_if, "--wait-ms", "300"],
        )
        .unwrap();
    String::from_utf8_lossy(&o.stdout).contains("e1.2")
}

/// A raw initiator socket in the lab's initiator namespace, and the target's MAC.
fn client(lab: &Lab) -> (Client, Mac) {
    let ifname = lab.initiator_if.clone();
    Lab::in_ns(&lab.initiator_ns, move || {
        let mut c = Client::open(&ifname).unwrap();
        let t = c.find(1, 2).expect("target answers a config query");
        (c, t.addr.dst)
    })
    .unwrap()
}

#[test]
fn concurrent_acl_edits_lose_nothing_xdp() {
    no_lost_update("xdp");
}

#[test]
fn concurrent_acl_edits_lose_nothing_afpacket() {
    no_lost_update("afpacket");
}

/// Operators and an initiator edit one export's mask list at once, each its own MACs; at the
/// end the daemon, the kernel entry and the classifier agree with every acknowledged edit.
fn no_lost_update(mode: &str) {
    let xdp = mode == "xdp";
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let img = lab.image("disk.img", 8 << 20).unwrap();
    let target = lab
        .spawn_live(&lab.export_args(&img, &["--mode", mode]))
        .unwrap();
    let (mut client, target_mac) = client(&lab);
    let me = client.mac();
    let from = Addr {
        src: ANCHOR,
        dst: target_mac,
        shelf: 1,
        slot: 2,
    };
    // The anchor first, while the list is empty and anyone may edit it.
    assert!(
        mask_edit(&mut client, &from, DCMD_ADD, ANCHOR),
        "anchor added"
    );

    let admin_macs: Vec<Vec<Mac>> = (0..ADMINS)
        .map(|a| {
            (0..MACS_PER_ADMIN)
                .map(|k| [0x02, 0xad, 0, 0, a, k])
                .collect()
        })
        .collect();
    let initiator_macs: Vec<Mac> = (0..INITIATOR_MACS)
        .map(|k| [0x02, 0x1e, 0, 0, 0, k])
        .collect();
    // Every MAC could be on the list at once, with the anchor and the initiator's own.
    assert!(usize::from(ADMINS * MACS_PER_ADMIN + INITIATOR_MACS) + 2 <= MAX_MASKS);

    let until = Instant::now() + RACE;
    let lab = Arc::new(lab);
    let operators: Vec<_> = admin_macs
        .into_iter()
        .enumerate()
        .map(|(a, macs)| {
            let lab = lab.clone();
            std::thread::spawn(move || operator(&lab, &macs, a as u64 + 1, until))
        })
        .collect();
    let from_initiator = initiator(&mut client, &from, &initiator_macs, until);
    let mut outcomes: Vec<Outcome> = operators.into_iter().map(|t| t.join().unwrap()).collect();
    outcomes.push(from_initiator);
    let lab = Arc::try_unwrap(lab).ok().unwrap();

    // Our own MAC last: it lets the real initiator in.
    let add = lab
        .run_live(&["acl", "add", "--target", "e1.2", &format_mac(&me)])
        .unwrap();
    assert!(add.status.success(), "{}", text(&add));

    let mut expected = vec![ANCHOR, me];
    let mut absent = vec![];
    for o in &outcomes {
        for (&mac, &on) in &o.present {
            if on {
                expected.push(mac);
            } else {
                absent.push(mac);
            }
        }
    }
    let expected = sorted(expected);
    let acked: Vec<usize> = outcomes.iter().map(|o| o.acknowledged).collect();
    let unanswered: usize = outcomes.iter().map(|o| o.unanswered).sum();
    eprintln!(
        "{mode}: acknowledged edits per actor {acked:?} (the initiator last), \
         {unanswered} unanswered attempts retried; {} MACs on the list",
        expected.len()
    );
    assert!(
        acked.iter().all(|&n| n >= 5),
        "every actor got edits in: {acked:?}"
    );

    // The daemon's answer.
    let list = lab.run_live(&["acl", "list", "--target", "e1.2"]).unwrap();
    assert!(list.status.success(), "{}", text(&list));
    let listed = sorted(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(|l| parse_mac(l.trim()).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect(),
    );
    let show = |v: &[Mac]| v.iter().map(format_mac).collect::<Vec<_>>();
    assert_eq!(show(&listed), show(&expected), "acl list");
    // The kernel's entry.
    assert_eq!(
        show(&sorted(kernel_masks(&lab))),
        show(&expected),
        "EXPORTS"
    );

    // The classifier: the real initiator is in (at once on XDP; the AF_PACKET data path
    // adopts the list within 100 ms) ...
    if xdp {
        assert!(
            discovers(&lab),
            "the initiator's own MAC, added last, is let in"
        );
    } else {
        wait_for("the initiator's own MAC let in", || discovers(&lab));
    }
    let v = lab.verify("256K", &[]).unwrap();
    assert!(v.status.success(), "{}", text(&v));
    // ... and a MAC that was deleted last is kept out, its frame dropped (in the kernel on
    // XDP).
    let stranger = absent.first().copied().unwrap_or([0x02, 0, 0, 0, 0, 0x99]);
    let dropped = if xdp {
        "dropped_acl_kernel"
    } else {
        "dropped_acl_user"
    };
    let before = export_stat(&stats(&lab), dropped);
    let from_stranger = Addr {
        src: stranger,
        ..from
    };
    let mut b = vec![0u8; 1500];
    let n = frames::config(&mut b, &from_stranger, rand_tag(), ConfigCommand::Read, b"");
    assert!(
        client
            .exchange(&b[..n], Duration::from_millis(500))
            .unwrap()
            .is_none(),
        "{} is not on the list: no answer",
        format_mac(&stranger)
    );
    wait_for(&format!("{dropped} to count the stranger's frame"), || {
        export_stat(&stats(&lab), dropped) > before
    });
    let log = target.stop().unwrap();
    assert!(!log.contains("not kept"), "{log}");
}

/// The string of a Query Config reply.
fn config_string(rep: &[u8]) -> Vec<u8> {
    ConfigRepr::parse(rep).unwrap().string.to_vec()
}

fn config_frame(to: &Addr, tag: u32, command: ConfigCommand, s: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1500];
    let n = frames::config(&mut b, to, tag, command, s);
    b.truncate(n);
    b
}

fn hex(s: &[u8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// One thread of another process held stopped (ptrace stops a single thread, the rest of
/// the process runs on), as a state write on a hung disk would hold the daemon's owner;
/// resumed on drop. Seize and detach must come from the same thread of the test.
struct Held {
    tid: libc::pid_t,
}

impl Held {
    fn thread(pid: u32, name: &str) -> Held {
        let tid: libc::pid_t = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    == name
            })
            .and_then(|t| t.file_name().to_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no thread {name} in process {pid}"));
        // SAFETY: ptrace requests on a thread id, with no pointers passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE"
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
        }
        let mut status = 0;
        // SAFETY: waiting for our tracee to report its stop.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(r, tid, "waitpid: {}", std::io::Error::last_os_error());
        Held { tid }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: as above; the thread runs on.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0) };
    }
}

/// With one queue, a config set that the owner cannot get to (held, as by a state write on a
/// hung disk) leaves ATA traffic on that queue flowing and changes nothing anyone sees; when
/// the state write then fails, the set is undone and never answered, and a later set with a
/// working state file is kept. (The state write no longer opens anything planted in the
/// directory, such as a FIFO: tests/tests/planted_files.rs.)
#[test]
fn a_held_owner_stalls_no_queue_and_a_failed_state_write_is_not_acknowledged() {
    let lab = Lab::new().unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let img = lab.image("disk.img", 8 << 20).unwrap();
    let dir = lab.dir.join("state");
    std::fs::create_dir(&dir).unwrap();
    let state = dir.join("e12.state");
    let mut target = lab
        .start_export(&img, &["--queues", "1", "--state", state.to_str().unwrap()])
        .unwrap();
    let pid = target.pid();
    let log = StderrLog::of(&mut target);
    let (mut client, target_mac) = client(&lab);
    let to = Addr {
        src: client.mac(),
        dst: target_mac,
        shelf: 1,
        slot: 2,
    };
    let set = |c: &mut Client, s: &'static [u8]| {
        c.request(&|b, tag| frames::config(b, &to, tag, ConfigCommand::ForceSet, s))
            .unwrap_or_else(|e| panic!("set {s:?}: {e:#}"))
    };
    let read = |c: &mut Client| {
        let rep = c
            .request(&|b, tag| frames::config(b, &to, tag, ConfigCommand::Read, b""))
            .unwrap();
        config_string(&rep)
    };
    set(&mut client, b"old-string");
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains(&hex(b"old-string")));

    let owner = Held::thread(pid, "aoe-owner");
    let tag = rand_tag();
    let pending = config_frame(&to, tag, ConfigCommand::ForceSet, b"new-string");
    client.sock.send(&pending).unwrap();
    // Listen for its reply from now on, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 9216];
            let mut answered = false;
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = client
                    .sock
                    .recv(&mut buf, Duration::from_millis(50))
                    .unwrap()
                {
                    let f = Frame::new_checked(&buf[..n]);
                    answered |= f.is_ok_and(|f| frames::answers(&f, &to) && f.tag() == tag);
                }
            }
            (client, answered)
        })
    };

    // The one queue still serves ATA reads and writes.
    let v = lab.verify("2M", &[]).unwrap();
    assert!(
        v.status.success(),
        "verify while the set waits: {}",
        text(&v)
    );
    // Nobody sees a change before it is kept: config queries still answer the old string
    // (on AF_PACKET from user space, on XDP from the kernel entry).
    let d = lab
        .run(
            &lab.initiator_ns,
            &["discover", "--iface", &lab.initiator_if, "--wait-ms", "300"],
        )
        .unwrap();
    let d = String::from_utf8_lossy(&d.stdout).into_owned();
    assert!(
        d.contains("old-string") && !d.contains("new-string"),
        "discover while the set waits: {d}"
    );

    // The state file's directory goes away, and the owner goes on: its write fails.
    let away = lab.dir.join("state.away");
    std::fs::rename(&dir, &away).unwrap();
    drop(owner);
    wait_for("the daemon to log the set not kept", || {
        log.contains("not kept")
    });
    stop.store(true, Ordering::Relaxed);
    let (mut client, answered) = listener.join().unwrap();
    assert!(!answered, "a set whose state write failed was acknowledged");
    assert_eq!(read(&mut client), b"old-string", "the set was undone");

    // With a working state file the same set is acknowledged, and kept.
    std::fs::rename(&away, &dir).unwrap();
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains(&hex(b"old-string")));
    let rep = set(&mut client, b"new-string");
    assert_eq!(rep[15], 0, "set acknowledged without error");
    // Kept before the reply left.
    let kept = std::fs::read_to_string(&state).unwrap();
    assert!(
        kept.contains(&hex(b"new-string")) && !kept.contains(&hex(b"old-string")),
        "{kept}"
    );
    assert_eq!(read(&mut client), b"new-string");
    drop(target);
    let log = log.finish();
    assert!(
        log.contains("was not kept") && log.contains("writing"),
        "{log}"
    );
}
