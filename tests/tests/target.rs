//! The target end to end: XDP classifier + AF_XDP workers + engine + mmap backend, in two
//! network namespaces, driven by crafted frames from a raw socket; broadcast config, mask and
//! reserve requests longer than a minimum frame answered by each of two exports.

mod common;

use std::time::Duration;

use aoe_common::wire::ata::{
    AtaCommand, AtaRepr, AFLAG_WRITE, ERROR_ABRT, ERROR_IDNF, STATUS_DRDY, STATUS_ERR,
};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::identify;
use aoe_common::wire::mask::{Directive, MaskRepr, DCMD_ADD, DCMD_DELETE, MERROR_BAD_DCMD};
use aoe_common::wire::reserve::{ReserveRepr, RCMD_FORCE_SET, RCMD_READ, RCMD_SET};
use aoe_common::wire::{Frame, Mac};
use aoe_ctl::initiator::frames::{self, Addr, BROADCAST_MAC};
use common::{aoe, ata, wait_for_some, Rig, SECTORS};

const OK: (u8, u8) = (STATUS_DRDY, 0);
const HOST_B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0b];
const HOST_C: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 0x0c];

#[test]
fn ata_commands_and_errors() {
    let mut r = Rig::start(&[]);
    let me = r.mine();
    // WRITE EXT then READ EXT, and the bytes are in the image at the right offset.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 1) as u8).collect();
    let rep = r
        .ask(|b, t| frames::write(b, &me, t, 100, &data))
        .expect("write reply");
    assert_eq!(ata(&rep), OK);
    assert_eq!(rep.len(), 60);
    let rep = r
        .ask(|b, t| frames::read(b, &me, t, 100, 2))
        .expect("read reply");
    assert_eq!((ata(&rep), &rep[36..]), (OK, &data[..]));
    assert_eq!(&r.image_bytes()[100 * 512..102 * 512], &data[..]);
    // LBA28 forms.
    let rep = r
        .ask(|b, t| {
            let a = AtaRepr::new(
                AFLAG_WRITE,
                1,
                AtaCommand::WriteSectors,
                [7, 0, 0, 0xE0, 0, 0],
            );
            frames::ata(b, &me, t, a, &[0x42; 512])
        })
        .unwrap();
    assert_eq!(ata(&rep), OK);
    let rep = r
        .ask(|b, t| {
            let a = AtaRepr::new(0, 1, AtaCommand::ReadSectors, [7, 0, 0, 0xE0, 0, 0]);
            frames::ata(b, &me, t, a, &[])
        })
        .unwrap();
    assert!(rep[36..548].iter().all(|&x| x == 0x42));
    // IDENTIFY.
    let rep = r.ask(|b, t| frames::identify(b, &me, t)).unwrap();
    let id = identify::parse(rep[36..548].try_into().unwrap());
    assert!(id.lba48);
    assert_eq!(id.sectors, SECTORS);
    // FLUSH CACHE (EXT), CHECK POWER MODE, an unknown opcode.
    for (op, want) in [
        (0xE7u8, OK),
        (0xEA, OK),
        (0xE5, OK),
        (0xC8, (STATUS_DRDY | STATUS_ERR, ERROR_ABRT)),
    ] {
        let rep = r
            .ask(|b, t| {
                let a = AtaRepr::new(0x40, 0, AtaCommand::from(op), [0; 6]);
                frames::ata(b, &me, t, a, &[])
            })
            .unwrap();
        assert_eq!(ata(&rep), want, "opcode {op:#x}");
    }
    // Out of range and straddling the end: IDNF, nothing written.
    let before = r.image_bytes();
    let rep = r
        .ask(|b, t| frames::write(b, &me, t, SECTORS - 1, &[9; 1024]))
        .unwrap();
    assert_eq!(ata(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_IDNF));
    let rep = r
        .ask(|b, t| frames::read(b, &me, t, 0xFFFF_FFFF_FFFF, 1))
        .unwrap();
    assert_eq!(ata(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_IDNF));
    // A count the frame cannot carry, and a write shorter than its count: ABRT.
    let rep = r.ask(|b, t| frames::read(b, &me, t, 0, 3)).unwrap();
    assert_eq!(ata(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    let rep = r
        .ask(|b, t| frames::write(b, &me, t, 0, &[9; 1024]) - 512)
        .unwrap();
    assert_eq!(ata(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    assert_eq!(
        r.image_bytes(),
        before,
        "no failed request changed the image"
    );
    // Last sector readable.
    let rep = r
        .ask(|b, t| frames::read(b, &me, t, SECTORS - 1, 1))
        .unwrap();
    assert_eq!(ata(&rep), OK);
}

#[test]
fn config_subcommands() {
    let mut r = Rig::start(&["--config", "hello"]);
    let me = r.mine();
    let cfg = |rep: &[u8]| ConfigRepr::parse(rep).unwrap().string.to_vec();
    let rep = r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::Read, b""))
        .unwrap();
    assert_eq!((rep[14], cfg(&rep)), (0x18, b"hello".to_vec()));
    assert!(r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::Test, b"hello"))
        .is_some());
    assert!(r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::Test, b"hell"))
        .is_none());
    assert!(r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::TestPrefix, b"hell"))
        .is_some());
    assert!(r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::TestPrefix, b"help"))
        .is_none());
    // Set if empty on a non-empty string: error 4 with the current string.
    let rep = r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::SetIfEmpty, b"other"))
        .unwrap();
    assert_eq!((aoe(&rep), cfg(&rep)), ((0x1C, 4), b"hello".to_vec()));
    // Force set; then the kernel's own answer (read) carries the new string at once.
    let rep = r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::ForceSet, b"new"))
        .unwrap();
    assert_eq!((aoe(&rep), cfg(&rep)), ((0x18, 0), b"new".to_vec()));
    let rep = r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::Read, b""))
        .unwrap();
    assert_eq!(cfg(&rep), b"new");
    assert!(r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::Test, b"new"))
        .is_some());
    let rep = r
        .ask(|b, t| frames::config(b, &me, t, ConfigCommand::Unknown(9), b""))
        .unwrap();
    assert_eq!(aoe(&rep), (0x1C, 2));
    // A broadcast query gets the real shelf/slot, padded to 60 bytes.
    let bcast = Addr {
        dst: BROADCAST_MAC,
        shelf: 0xFFFF,
        slot: 0xFF,
        ..me
    };
    let rep = r
        .ask(|b, t| frames::config(b, &bcast, t, ConfigCommand::Read, b""))
        .unwrap();
    assert_eq!((&rep[16..19], rep.len()), (&[0u8, 1, 2][..], 60));
}

#[test]
fn mask_list_edits_are_enforced() {
    let mut r = Rig::start(&[]);
    let me = r.mine();
    let b_addr = r.from(HOST_B);
    let mine = r.client.mac();
    let rep = r
        .ask(|b, t| {
            frames::mask_edit(
                b,
                &me,
                t,
                &[Directive {
                    dcmd: DCMD_ADD,
                    mac: mine,
                }],
            )
        })
        .unwrap();
    let m = MaskRepr::parse(&rep).unwrap();
    assert_eq!((m.merror, m.count), (0, 1));
    // HOST_B is now ignored, for ATA and config alike (dropped in the kernel).
    assert!(r.ask(|b, t| frames::read(b, &b_addr, t, 0, 1)).is_none());
    assert!(r
        .ask(|b, t| frames::config(b, &b_addr, t, ConfigCommand::Read, b""))
        .is_none());
    assert!(r.ask(|b, t| frames::read(b, &me, t, 0, 1)).is_some());
    // A bad directive after a good one: merror 2, count 1; HOST_B added.
    let rep = r
        .ask(|b, t| {
            frames::mask_edit(
                b,
                &me,
                t,
                &[
                    Directive {
                        dcmd: DCMD_ADD,
                        mac: HOST_B,
                    },
                    Directive {
                        dcmd: 7,
                        mac: HOST_C,
                    },
                ],
            )
        })
        .unwrap();
    let m = MaskRepr::parse(&rep).unwrap();
    assert_eq!((m.merror, m.count), (MERROR_BAD_DCMD, 1));
    assert!(r.ask(|b, t| frames::read(b, &b_addr, t, 0, 1)).is_some());
    // Delete both entries: everyone may talk again.
    r.ask(|b, t| {
        frames::mask_edit(
            b,
            &me,
            t,
            &[
                Directive {
                    dcmd: DCMD_DELETE,
                    mac: mine,
                },
                Directive {
                    dcmd: DCMD_DELETE,
                    mac: HOST_B,
                },
            ],
        )
    })
    .unwrap();
    let c_addr = r.from(HOST_C);
    let rep = r.ask(|b, t| frames::mask_read(b, &c_addr, t)).unwrap();
    assert_eq!(MaskRepr::parse(&rep).unwrap().count, 0);
}

#[test]
fn reservations_with_two_initiators() {
    let mut r = Rig::start(&[]);
    let b_addr = r.from(HOST_B);
    let c_addr = r.from(HOST_C);
    let rep = r
        .ask(|b, t| frames::reserve(b, &b_addr, t, RCMD_SET, &[HOST_B]))
        .unwrap();
    assert_eq!(aoe(&rep), (0x18, 0));
    let rep = r
        .ask(|b, t| frames::write(b, &c_addr, t, 0, &[1; 512]))
        .unwrap();
    assert_eq!(aoe(&rep), (0x1C, 6));
    let rep = r
        .ask(|b, t| frames::reserve(b, &c_addr, t, RCMD_SET, &[HOST_C]))
        .unwrap();
    assert_eq!(aoe(&rep), (0x1C, 6));
    assert_eq!(
        ata(&r
            .ask(|b, t| frames::write(b, &b_addr, t, 0, &[2; 512]))
            .unwrap()),
        OK
    );
    // Released by the holder, C may write.
    r.ask(|b, t| frames::reserve(b, &b_addr, t, RCMD_SET, &[]))
        .unwrap();
    assert_eq!(
        ata(&r
            .ask(|b, t| frames::write(b, &c_addr, t, 1, &[3; 512]))
            .unwrap()),
        OK
    );
    // Force set takes it over.
    r.ask(|b, t| frames::reserve(b, &b_addr, t, RCMD_SET, &[HOST_B]))
        .unwrap();
    let rep = r
        .ask(|b, t| frames::reserve(b, &c_addr, t, RCMD_FORCE_SET, &[HOST_C]))
        .unwrap();
    assert_eq!(aoe(&rep), (0x18, 0));
    assert_eq!(
        aoe(&r
            .ask(|b, t| frames::write(b, &b_addr, t, 0, &[4; 512]))
            .unwrap()),
        (0x1C, 6)
    );
    let img = r.image_bytes();
    assert!(img[..512].iter().all(|&x| x == 2) && img[512..1024].iter().all(|&x| x == 3));
}

#[test]
fn hostile_frames_then_correct_data() {
    let mut r = Rig::start(&[]);
    let me = r.mine();
    r.ask(|b, t| frames::write(b, &me, t, 50, &[0x5a; 1024]))
        .unwrap();
    let before = r.image_bytes();
    let mut sent = 0;
    let mut send = |r: &mut Rig, f: &[u8]| {
        r.client.sock.send(f).unwrap();
        sent += 1;
    };
    let mut b = vec![0u8; 2048];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..3000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = match i % 10 {
            // Truncated headers.
            0 => {
                frames::read(&mut b, &me, i, 0, 1);
                (seed % 36) as usize
            }
            // Wrong version.
            1 => {
                let n = frames::write(&mut b, &me, i, 60, &[1; 512]);
                b[14] = 0x30;
                n
            }
            // Lying sector count (says 2, carries 1).
            2 => {
                let n = frames::write(&mut b, &me, i, 61, &[1; 512]);
                b[26] = 2;
                n
            }
            // Huge LBAs.
            3 => frames::write(&mut b, &me, i, seed & 0xFFFF_FFFF_FFFF | 1 << 40, &[1; 512]),
            // Response frames sent to the target.
            4 => {
                let n = frames::write(&mut b, &me, i, 62, &[1; 512]);
                b[14] |= 0x08;
                n
            }
            // Lying config string length.
            5 => {
                let n = frames::config(&mut b, &me, i, ConfigCommand::ForceSet, b"x");
                b[30] = 0xFF;
                n
            }
            // Lying mask directive count.
            6 => {
                let n = frames::mask_read(&mut b, &me, i);
                b[25] = 1;
                b[27] = 200;
                n
            }
            // Broadcast write: never executed.
            7 => frames::write(
                &mut b,
                &Addr {
                    dst: BROADCAST_MAC,
                    shelf: 0xFFFF,
                    slot: 0xFF,
                    ..me
                },
                i,
                63,
                &[1; 512],
            ),
            // Unknown command, vendor range.
            8 => {
                let n = frames::mask_read(&mut b, &me, i);
                b[19] = 0xF1;
                n
            }
            // Random garbage behind a valid ATA header to us.
            _ => {
                frames::read(&mut b, &me, i, 0, 1);
                let n = 24 + (seed % 1400) as usize;
                for (j, x) in b[24..n].iter_mut().enumerate() {
                    *x = (seed >> (j % 56)) as u8;
                }
                n
            }
        };
        send(&mut r, &b[..n]);
    }
    assert!(sent >= 3000);
    // Still serving (once it has worked through the queued frames), with the data intact
    // and nothing else changed.
    let rep = wait_for_some(
        "the target to answer a read after the hostile frames",
        || r.ask(|b, t| frames::read(b, &me, t, 50, 2)),
    );
    assert!(rep[36..].iter().all(|&x| x == 0x5a));
    let after = r.image_bytes();
    let changed: Vec<usize> = (0..SECTORS as usize)
        .filter(|&s| before[s * 512..(s + 1) * 512] != after[s * 512..(s + 1) * 512])
        .collect();
    // Only the random garbage (case 9: ATA with arbitrary args) may have written; it writes
    // only what a well-formed write says. The hostile kinds above wrote nothing.
    assert!(
        !changed.contains(&60)
            && !changed.contains(&61)
            && !changed.contains(&62)
            && !changed.contains(&63),
        "changed sectors {changed:?}"
    );
    let t = r.target.take().unwrap();
    let log = t.stop().unwrap();
    assert!(log.contains("stopped"), "target exited cleanly: {log}");
}

/// How long a broadcast's replies are collected: both exports answer well within it.
const BROADCAST_WAIT: Duration = Duration::from_millis(600);

/// Every export of the segment, addressed from `r`'s initiator.
fn everyone(r: &Rig) -> Addr {
    Addr {
        dst: BROADCAST_MAC,
        shelf: 0xFFFF,
        slot: 0xFF,
        ..r.mine()
    }
}

/// The replies to a broadcast in slot order, each with the slot of the export that sent it.
fn by_slot(replies: Vec<Vec<u8>>) -> Vec<(u8, Vec<u8>)> {
    let mut v: Vec<(u8, Vec<u8>)> = replies
        .into_iter()
        .map(|rep| (Frame::new_checked(&rep[..]).unwrap().slot(), rep))
        .collect();
    v.sort_by_key(|(slot, _)| *slot);
    v
}

/// The slots that answered, each once: both exports of `Rig::start_pair`.
fn slots(v: &[(u8, Vec<u8>)]) -> Vec<u8> {
    v.iter().map(|(slot, _)| *slot).collect()
}

#[test]
fn broadcast_config_set_and_test_with_a_long_string() {
    // Longer than the 64 bytes the XDP worker once copied of a broadcast.
    let mut r = Rig::start_pair();
    let all = everyone(&r);
    let long: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
    let cfg = |rep: &[u8]| ConfigRepr::parse(rep).unwrap().string.to_vec();
    let set = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| {
        frames::config(b, &all, t, ConfigCommand::ForceSet, &long)
    }));
    assert_eq!(slots(&set), [2, 3], "both exports answer the force set");
    for (slot, rep) in &set {
        assert_eq!((aoe(rep), cfg(rep)), ((0x18, 0), long.clone()), "e1.{slot}");
    }
    // Shelf 1, every slot: a test of the whole string, and of a prefix of it.
    let shelf1 = Addr { shelf: 1, ..all };
    for (command, string) in [
        (ConfigCommand::Test, &long[..]),
        (ConfigCommand::TestPrefix, &long[..150]),
    ] {
        let got = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| {
            frames::config(b, &shelf1, t, command, string)
        }));
        assert_eq!(slots(&got), [2, 3], "{command:?} answered by both");
        for (slot, rep) in &got {
            assert_eq!(cfg(rep), long, "{command:?} reply of e1.{slot}");
        }
    }
    // A test of less than the whole string is not answered.
    let none = r.ask_all(BROADCAST_WAIT, |b, t| {
        frames::config(b, &all, t, ConfigCommand::Test, &long[..199])
    });
    assert!(none.is_empty(), "{} replies to a failing test", none.len());
    // Each export kept it: its own (kernel) answer to a read carries the new string.
    for slot in [2, 3] {
        let one = Addr { slot, ..r.mine() };
        let rep = r
            .ask(|b, t| frames::config(b, &one, t, ConfigCommand::Read, b""))
            .unwrap();
        assert_eq!(cfg(&rep), long, "e1.{slot} read");
    }
}

#[test]
fn broadcast_mask_list_edit_and_read_of_ten() {
    // Ten directives (108 bytes) reach past the 64 bytes once copied of a broadcast.
    let mut r = Rig::start_pair();
    let all = everyone(&r);
    let mut macs: Vec<Mac> = (0..9).map(|i| [0x02, 0xdd, 0, 0, 0, i]).collect();
    macs.push(r.client.mac()); // ourselves, or the list would lock us out
    let edit =
        |dcmd| -> Vec<Directive> { macs.iter().map(|&mac| Directive { dcmd, mac }).collect() };
    let listed = |rep: &[u8]| {
        let m = MaskRepr::parse(rep).unwrap();
        let mut l: Vec<Mac> = m.directives().map(|d| d.mac).collect();
        l.sort();
        (m.merror, usize::from(m.count), l)
    };
    let mut want = macs.clone();
    want.sort();
    let adds = edit(DCMD_ADD);
    let added = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| frames::mask_edit(b, &all, t, &adds)));
    assert_eq!(slots(&added), [2, 3], "both exports answer the edit");
    for (slot, rep) in &added {
        assert_eq!(
            listed(rep),
            (0, 10, want.clone()),
            "edit reply of e1.{slot}"
        );
    }
    // Enforced: a MAC not on the list gets nothing, we still do.
    let stranger = Addr {
        slot: 3,
        ..r.from(HOST_C)
    };
    assert!(r.ask(|b, t| frames::read(b, &stranger, t, 0, 1)).is_none());
    let me3 = Addr {
        slot: 3,
        ..r.mine()
    };
    assert!(r.ask(|b, t| frames::read(b, &me3, t, 0, 1)).is_some());
    let read = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| frames::mask_read(b, &all, t)));
    assert_eq!(slots(&read), [2, 3], "both exports answer the read");
    for (slot, rep) in &read {
        assert_eq!(
            listed(rep),
            (0, 10, want.clone()),
            "read reply of e1.{slot}"
        );
    }
    let deletes = edit(DCMD_DELETE);
    let deleted = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| {
        frames::mask_edit(b, &all, t, &deletes)
    }));
    assert_eq!(slots(&deleted), [2, 3], "both exports answer the delete");
    for (slot, rep) in &deleted {
        assert_eq!(listed(rep), (0, 0, vec![]), "delete reply of e1.{slot}");
    }
    assert!(r.ask(|b, t| frames::read(b, &stranger, t, 0, 1)).is_some());
}

#[test]
fn broadcast_reserve_set_and_read_of_eight() {
    // Eight MACs (74 bytes): six would fit in the 64 bytes once copied of a broadcast.
    let mut r = Rig::start_pair();
    let all = everyone(&r);
    let mut macs: Vec<Mac> = (0..7).map(|i| [0x02, 0xee, 0, 0, 0, i]).collect();
    macs.push(r.client.mac()); // a holder may release it again
    let listed = |rep: &[u8]| {
        let mut l: Vec<Mac> = ReserveRepr::parse(rep).unwrap().macs().collect();
        l.sort();
        (aoe(rep), l)
    };
    let mut want = macs.clone();
    want.sort();
    let set = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| {
        frames::reserve(b, &all, t, RCMD_SET, &macs)
    }));
    assert_eq!(slots(&set), [2, 3], "both exports answer the set");
    for (slot, rep) in &set {
        assert_eq!(
            listed(rep),
            ((0x18, 0), want.clone()),
            "set reply of e1.{slot}"
        );
    }
    // Enforced: a MAC not on the list may not write.
    let stranger = Addr {
        slot: 3,
        ..r.from(HOST_C)
    };
    let rep = r
        .ask(|b, t| frames::write(b, &stranger, t, 0, &[1; 512]))
        .unwrap();
    assert_eq!(aoe(&rep), (0x1C, 6));
    let read = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| {
        frames::reserve(b, &all, t, RCMD_READ, &[])
    }));
    assert_eq!(slots(&read), [2, 3], "both exports answer the read");
    for (slot, rep) in &read {
        assert_eq!(
            listed(rep),
            ((0x18, 0), want.clone()),
            "read reply of e1.{slot}"
        );
    }
    let released = by_slot(r.ask_all(BROADCAST_WAIT, |b, t| {
        frames::reserve(b, &all, t, RCMD_SET, &[])
    }));
    assert_eq!(slots(&released), [2, 3], "both exports answer the release");
    for (slot, rep) in &released {
        assert_eq!(
            listed(rep),
            ((0x18, 0), vec![]),
            "release reply of e1.{slot}"
        );
    }
    let rep = r
        .ask(|b, t| frames::write(b, &stranger, t, 0, &[1; 512]))
        .unwrap();
    assert_eq!(ata(&rep), OK);
}
