//! The engine against an in-memory backend: every command and error, frames written with
//! the initiator's builders and checked byte by byte where the spec fixes the bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aoe_common::wire::ata::{
    self as ata, AtaCommand, AtaRepr, AFLAG_LBA48, AFLAG_WRITE, ERROR_ABRT, ERROR_IDNF,
    STATUS_DRDY, STATUS_ERR,
};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::mask::{Directive, MaskRepr, DCMD_ADD, DCMD_DELETE, MERROR_BAD_DCMD};
use aoe_common::wire::reserve::{ReserveRepr, RCMD_FORCE_SET, RCMD_READ, RCMD_SET};
use aoe_common::wire::{identify, Frame, Mac};

use super::backend::MemBackend;
use super::engine::{answer_now, ControlWork, Engine, Ignore, Parsed, Route, Verdict};
use super::export::{Export, ExportOptions};
use crate::initiator::frames::{self, Addr, BROADCAST_MAC};

const TARGET: Mac = [2, 0, 0, 0, 0, 1];
const HOST_A: Mac = [2, 0, 0, 0, 0, 0xa];
const HOST_B: Mac = [2, 0, 0, 0, 0, 0xb];
const SECTORS: u64 = 64;

struct Rig {
    engine: Engine,
    /// State-changing requests the engine handed to the control plane.
    handed: Arc<Mutex<Vec<ControlWork>>>,
    /// How many of them changed the export's state.
    changes: Arc<AtomicUsize>,
    buf: Vec<u8>,
}

fn rig_with(opts: impl FnOnce(&mut ExportOptions)) -> Rig {
    let mut o = ExportOptions::new(1, 2);
    opts(&mut o);
    let ex = Arc::new(Export::new(o, Box::new(MemBackend::new(SECTORS))));
    let handed: Arc<Mutex<Vec<ControlWork>>> = Arc::default();
    let h = handed.clone();
    let engine = Engine::new(vec![ex], TARGET, 2).with_control(Arc::new(move |w| {
        h.lock().unwrap().push(w);
        true
    }));
    Rig {
        engine,
        handed,
        changes: Arc::default(),
        buf: vec![0; 3840],
    }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

fn from(src: Mac) -> Addr {
    Addr {
        src,
        dst: TARGET,
        shelf: 1,
        slot: 2,
    }
}

impl Rig {
    /// Send a frame built by `build`; returns the reply bytes or why there was none.
    fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Result<Vec<u8>, Ignore> {
        self.buf.fill(0);
        let n = build(&mut self.buf);
        // As the workers do: what `route` parsed goes on with the frame.
        let (idx, parsed) = match self.engine.route(&self.buf[..n]) {
            Route::One(i, parsed) => (i, parsed),
            Route::Each => (0, Parsed::Other),
            Route::Ignore(why) => return Err(why),
        };
        match self
            .engine
            .handle_routed(idx, parsed, &mut self.buf, n, &[], false)
        {
            Verdict::Reply(m) => Ok(self.buf[..m].to_vec()),
            Verdict::Ignore(why) => Err(why),
            // What the daemon's owner thread does: apply it, then send its reply.
            Verdict::Pending => {
                let mut w = self.handed.lock().unwrap().pop().expect("handed over");
                let before = w.export.control_state();
                let v = answer_now(&w.export, w.responder, &mut w.frame, w.len, &|_| true);
                if w.export.control_state() != before {
                    self.changes.fetch_add(1, Ordering::SeqCst);
                }
                match v {
                    Verdict::Reply(m) => Ok(w.frame[..m].to_vec()),
                    Verdict::Ignore(why) => Err(why),
                    Verdict::Pending | Verdict::Io(_) => panic!("pending twice"),
                }
            }
            Verdict::Io(_) => panic!("handle never defers storage I/O"),
        }
    }
}

fn ata_status(r: &[u8]) -> (u8, u8) {
    (r[27], r[25])
}

#[test]
fn reply_header_per_spec() {
    let mut r = rig();
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 0xdead_beef, 0, 1))
        .unwrap();
    assert_eq!(&rep[0..6], &HOST_A); // back to the sender
    assert_eq!(&rep[6..12], &TARGET); // from us
    assert_eq!(&rep[12..14], &[0x88, 0xa2]);
    assert_eq!(rep[14], 0x18); // version 1, R
    assert_eq!(&rep[16..19], &[0, 1, 2]); // real shelf/slot
    assert_eq!(&rep[20..24], &[0xde, 0xad, 0xbe, 0xef]); // tag echoed
    assert_eq!(rep.len(), 36 + 512);
}

#[test]
fn write_then_read_lba48_and_lba28() {
    let mut r = rig();
    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    let rep = r
        .send(|b| frames::write(b, &from(HOST_A), 1, 10, &data))
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY, 0));
    assert_eq!(rep.len(), 60); // 36 bytes padded
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 2, 10, 2))
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY, 0));
    assert_eq!(&rep[36..], &data[..]);
    // LBA28 READ SECTORS of sector 11 with device bits in lba3.
    let rep = r
        .send(|b| {
            let args = AtaRepr::new(0, 1, AtaCommand::ReadSectors, [11, 0, 0, 0xE0, 0, 0]);
            frames::ata(b, &from(HOST_A), 3, args, &[])
        })
        .unwrap();
    assert_eq!(&rep[36..], &data[512..]);
    // LBA28 WRITE SECTORS.
    let rep = r
        .send(|b| {
            let args = AtaRepr::new(
                AFLAG_WRITE,
                1,
                AtaCommand::WriteSectors,
                [12, 0, 0, 0xE0, 0, 0],
            );
            frames::ata(b, &from(HOST_A), 4, args, &[0x5a; 512])
        })
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY, 0));
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 5, 12, 1))
        .unwrap();
    assert!(rep[36..].iter().all(|&x| x == 0x5a));
}

#[test]
fn out_of_range_is_idnf_and_writes_nothing() {
    let mut r = rig();
    // Straddling the end.
    let rep = r
        .send(|b| frames::write(b, &from(HOST_A), 1, SECTORS - 1, &[1; 1024]))
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_IDNF));
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 2, SECTORS - 1, 1))
        .unwrap();
    assert!(rep[36..].iter().all(|&x| x == 0), "nothing written");
    // Huge LBA: no overflow.
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 3, 0xFFFF_FFFF_FFFF, 2))
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_IDNF));
    assert_eq!(rep.len(), 60);
}

#[test]
fn counts_the_frame_cannot_carry() {
    let mut r = rig(); // 2 sectors per frame
    let rep = r.send(|b| frames::read(b, &from(HOST_A), 1, 0, 3)).unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    // Count 0 in LBA48 means 65536.
    let rep = r.send(|b| frames::read(b, &from(HOST_A), 2, 0, 0)).unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    // A write whose payload is shorter than its count: nothing written.
    let rep = r
        .send(|b| {
            let n = frames::write(b, &from(HOST_A), 3, 0, &[9; 1024]);
            n - 100
        })
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    let rep = r.send(|b| frames::read(b, &from(HOST_A), 4, 0, 2)).unwrap();
    assert!(rep[36..].iter().all(|&x| x == 0));
}

#[test]
fn identify_reports_capacity_and_lba48() {
    let mut r = rig();
    let rep = r.send(|b| frames::identify(b, &from(HOST_A), 7)).unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY, 0));
    assert_eq!(rep.len(), 36 + 512);
    let p = identify::parse(rep[36..548].try_into().unwrap());
    assert!(p.lba48);
    assert_eq!(p.sectors, SECTORS);
    assert!(p.serial.starts_with(b"AOE1.2"));
    assert!(p.model.starts_with(b"aoe-ctl"));
}

#[test]
fn flush_power_and_unknown_opcode() {
    let mut r = rig();
    for op in [0xE7u8, 0xEA] {
        let rep = r
            .send(|b| {
                let args = AtaRepr::new(AFLAG_LBA48, 0, AtaCommand::from(op), [0; 6]);
                frames::ata(b, &from(HOST_A), 1, args, &[])
            })
            .unwrap();
        assert_eq!(ata_status(&rep), (STATUS_DRDY, 0), "flush {op:#x}");
    }
    let rep = r
        .send(|b| {
            let args = AtaRepr::new(0, 0, AtaCommand::CheckPowerMode, [0; 6]);
            frames::ata(b, &from(HOST_A), 2, args, &[])
        })
        .unwrap();
    assert_eq!((ata_status(&rep), rep[26]), ((STATUS_DRDY, 0), 0xFF));
    let rep = r
        .send(|b| {
            let args = AtaRepr::new(0, 1, AtaCommand::Unknown(0xC8), [0; 6]);
            frames::ata(b, &from(HOST_A), 3, args, &[])
        })
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
}

#[test]
fn read_only_refuses_writes() {
    let mut r = rig_with(|o| o.read_only = true);
    let rep = r
        .send(|b| frames::write(b, &from(HOST_A), 1, 0, &[1; 512]))
        .unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    let rep = r.send(|b| frames::read(b, &from(HOST_A), 2, 0, 1)).unwrap();
    assert_eq!(ata_status(&rep), (STATUS_DRDY, 0));
}

#[test]
fn aoe_errors_unknown_command_and_version() {
    let mut r = rig();
    let rep = r
        .send(|b| {
            let n = frames::mask_read(b, &from(HOST_A), 1);
            b[19] = 0x7;
            n
        })
        .unwrap();
    assert_eq!((rep[14], rep[15]), (0x1C, 1)); // R|E, unrecognized command
    let rep = r
        .send(|b| {
            let n = frames::read(b, &from(HOST_A), 2, 0, 1);
            b[14] = 0x20; // version 2
            n
        })
        .unwrap();
    assert_eq!((rep[14], rep[15]), (0x1C, 5));
    assert_eq!(rep.len(), 60);
}

#[test]
fn responses_truncated_and_foreign_ignored() {
    let mut r = rig();
    assert_eq!(
        r.send(|b| {
            frames::read(b, &from(HOST_A), 1, 0, 1);
            b[14] |= 0x08;
            36
        }),
        Err(Ignore::Response)
    );
    assert_eq!(
        r.send(|b| frames::read(b, &from(HOST_A), 1, 0, 1) - 3),
        Err(Ignore::Malformed)
    );
    assert_eq!(r.send(|_| 20), Err(Ignore::Malformed));
    let other = Addr {
        slot: 9,
        ..from(HOST_A)
    };
    assert_eq!(
        r.send(|b| frames::read(b, &other, 1, 0, 1)),
        Err(Ignore::NotOurs)
    );
    // ATA to a broadcast address is never executed.
    let bcast = Addr {
        shelf: 0xFFFF,
        slot: 0xFF,
        dst: BROADCAST_MAC,
        ..from(HOST_A)
    };
    assert_eq!(
        r.send(|b| frames::write(b, &bcast, 1, 0, &[1; 512])),
        Err(Ignore::BroadcastAta)
    );
}

fn config_of(rep: &[u8]) -> ConfigRepr<'_> {
    ConfigRepr::parse(rep).unwrap()
}

#[test]
fn config_read_and_broadcast() {
    let mut r = rig_with(|o| o.config = b"hello".to_vec());
    let bcast = Addr {
        shelf: 0xFFFF,
        slot: 0xFF,
        dst: BROADCAST_MAC,
        ..from(HOST_A)
    };
    let rep = r
        .send(|b| frames::config(b, &bcast, 9, ConfigCommand::Read, b""))
        .unwrap();
    // Real shelf/slot, never the broadcast address.
    assert_eq!(&rep[16..19], &[0, 1, 2]);
    let c = config_of(&rep);
    assert_eq!(c.string, b"hello");
    assert_eq!(c.buffer_count, 16);
    assert_eq!(c.sector_count, 2);
    assert_eq!(c.aoe_version, 1);
    assert_eq!(rep.len(), 60);
}

#[test]
fn config_test_and_prefix() {
    let mut r = rig_with(|o| o.config = b"hello".to_vec());
    let a = from(HOST_A);
    assert!(r
        .send(|b| frames::config(b, &a, 1, ConfigCommand::Test, b"hello"))
        .is_ok());
    assert_eq!(
        r.send(|b| frames::config(b, &a, 1, ConfigCommand::Test, b"hell")),
        Err(Ignore::ConfigMismatch)
    );
    assert!(r
        .send(|b| frames::config(b, &a, 1, ConfigCommand::TestPrefix, b"hell"))
        .is_ok());
    assert_eq!(
        r.send(|b| frames::config(b, &a, 1, ConfigCommand::TestPrefix, b"help")),
        Err(Ignore::ConfigMismatch)
    );
}

#[test]
fn config_set_rules() {
    let mut r = rig();
    let a = from(HOST_A);
    let rep = r
        .send(|b| frames::config(b, &a, 1, ConfigCommand::SetIfEmpty, b"one"))
        .unwrap();
    assert_eq!(config_of(&rep).string, b"one");
    assert_eq!(r.changes.load(Ordering::SeqCst), 1);
    // Identical string: accepted, as vblade does.
    assert!(r
        .send(|b| frames::config(b, &a, 2, ConfigCommand::SetIfEmpty, b"one"))
        .is_ok());
    // Different string: error 4, the reply carries the current string.
    let rep = r
        .send(|b| frames::config(b, &a, 3, ConfigCommand::SetIfEmpty, b"two"))
        .unwrap();
    assert_eq!((rep[14], rep[15]), (0x1C, 4));
    assert_eq!(config_of(&rep).string, b"one");
    let rep = r
        .send(|b| frames::config(b, &a, 4, ConfigCommand::ForceSet, b"two"))
        .unwrap();
    assert_eq!(rep[14], 0x18);
    assert_eq!(config_of(&rep).string, b"two");
    assert_eq!(r.changes.load(Ordering::SeqCst), 2);
    let rep = r
        .send(|b| frames::config(b, &a, 5, ConfigCommand::Unknown(7), b""))
        .unwrap();
    assert_eq!((rep[14], rep[15]), (0x1C, 2));
    // A lying string length is dropped.
    assert_eq!(
        r.send(|b| {
            let n = frames::config(b, &a, 6, ConfigCommand::ForceSet, b"abc");
            b[31] = 200;
            n
        }),
        Err(Ignore::Malformed)
    );
}

#[test]
fn mask_list_edit_and_enforce() {
    let mut r = rig();
    let rep = r
        .send(|b| {
            frames::mask_edit(
                b,
                &from(HOST_A),
                1,
                &[Directive {
                    dcmd: DCMD_ADD,
                    mac: HOST_A,
                }],
            )
        })
        .unwrap();
    let m = MaskRepr::parse(&rep).unwrap();
    assert_eq!((m.merror, m.count), (0, 1));
    assert_eq!(m.directives().next().unwrap().mac, HOST_A);
    // B is now ignored, for every command.
    assert_eq!(
        r.send(|b| frames::read(b, &from(HOST_B), 1, 0, 1)),
        Err(Ignore::Acl)
    );
    assert_eq!(
        r.send(|b| frames::mask_read(b, &from(HOST_B), 1)),
        Err(Ignore::Acl)
    );
    assert!(r.send(|b| frames::read(b, &from(HOST_A), 1, 0, 1)).is_ok());
    // A bad directive after a good one: merror 2, count = its index.
    let rep = r
        .send(|b| {
            frames::mask_edit(
                b,
                &from(HOST_A),
                2,
                &[
                    Directive {
                        dcmd: DCMD_ADD,
                        mac: HOST_B,
                    },
                    Directive {
                        dcmd: 5,
                        mac: HOST_B,
                    },
                ],
            )
        })
        .unwrap();
    let m = MaskRepr::parse(&rep).unwrap();
    assert_eq!((m.merror, m.count), (MERROR_BAD_DCMD, 1));
    assert!(r.send(|b| frames::read(b, &from(HOST_B), 1, 0, 1)).is_ok());
    // Delete both: open again (and no crash on delete, unlike vblade 25).
    r.send(|b| {
        frames::mask_edit(
            b,
            &from(HOST_A),
            3,
            &[
                Directive {
                    dcmd: DCMD_DELETE,
                    mac: HOST_A,
                },
                Directive {
                    dcmd: DCMD_DELETE,
                    mac: HOST_B,
                },
            ],
        )
    })
    .unwrap();
    let rep = r.send(|b| frames::mask_read(b, &from(HOST_B), 4)).unwrap();
    assert_eq!(MaskRepr::parse(&rep).unwrap().count, 0);
}

#[test]
fn reservations_with_two_hosts() {
    let mut r = rig();
    let rep = r
        .send(|b| frames::reserve(b, &from(HOST_A), 1, RCMD_SET, &[HOST_A]))
        .unwrap();
    assert_eq!(rep[14], 0x18);
    assert_eq!(
        ReserveRepr::parse(&rep).unwrap().macs().collect::<Vec<_>>(),
        vec![HOST_A]
    );
    // B's ATA commands and set: error 6; B may still read the list.
    let rep = r.send(|b| frames::read(b, &from(HOST_B), 2, 0, 1)).unwrap();
    assert_eq!((rep[14], rep[15]), (0x1C, 6));
    let rep = r
        .send(|b| frames::reserve(b, &from(HOST_B), 3, RCMD_SET, &[HOST_B]))
        .unwrap();
    assert_eq!((rep[14], rep[15]), (0x1C, 6));
    let rep = r
        .send(|b| frames::reserve(b, &from(HOST_B), 4, RCMD_READ, &[]))
        .unwrap();
    assert_eq!(rep[14], 0x18);
    assert!(r.send(|b| frames::read(b, &from(HOST_A), 5, 0, 1)).is_ok());
    // Release by the holder, then B gets in.
    r.send(|b| frames::reserve(b, &from(HOST_A), 6, RCMD_SET, &[]))
        .unwrap();
    let rep = r.send(|b| frames::read(b, &from(HOST_B), 7, 0, 1)).unwrap();
    assert_eq!(rep[14], 0x18);
    // Force set always wins.
    r.send(|b| frames::reserve(b, &from(HOST_A), 8, RCMD_SET, &[HOST_A]))
        .unwrap();
    let rep = r
        .send(|b| frames::reserve(b, &from(HOST_B), 9, RCMD_FORCE_SET, &[HOST_B]))
        .unwrap();
    assert_eq!(rep[14], 0x18);
    assert_eq!(r.changes.load(Ordering::SeqCst), 4);
}

#[test]
fn garbage_never_panics() {
    let mut r = rig();
    let mut seed = 0x1234_5678_9abc_def0u64;
    for i in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 1600) as usize;
        r.buf.fill(0);
        for (j, b) in r.buf[..len].iter_mut().enumerate() {
            *b = (seed.rotate_left(j as u32 % 64) >> (j % 8)) as u8;
        }
        if len >= 24 && i % 2 == 0 {
            // Make half of them AoE requests to our export so the parsers run.
            r.buf[12] = 0x88;
            r.buf[13] = 0xa2;
            r.buf[14] = 0x10;
            r.buf[16] = 0;
            r.buf[17] = 1;
            r.buf[18] = 2;
            r.buf[19] %= 5;
        }
        if let Route::One(idx, parsed) = r.engine.route(&r.buf[..len]) {
            let _ = r
                .engine
                .handle_routed(idx, parsed, &mut r.buf, len, &[], false);
        }
    }
    // Random frames may legitimately have edited the mask list or reserved the export
    // (AoE has no authentication); reset them, then check it still serves correctly.
    let ex = &r.engine.exports()[0];
    ex.access.set_masks(vec![]);
    ex.access.clear_reservation();
    r.send(|b| frames::write(b, &from(HOST_A), 1, 3, &[0x77; 512]))
        .unwrap();
    let rep = r.send(|b| frames::read(b, &from(HOST_A), 2, 3, 1)).unwrap();
    assert!(rep[36..].iter().all(|&x| x == 0x77));
    let _ = Frame::new_checked(&rep[..]).unwrap();
}

#[test]
fn lba28_ignores_the_device_bits() {
    // LBA28 carries the device/head register in lba3's high nibble: it is not address.
    let mut r = rig();
    let a = from(HOST_A);
    r.send(|b| {
        let n = frames::write(b, &a, 1, 5, &[0x5a; 512]);
        b[ata::field::AFLAGS] &= !AFLAG_LBA48;
        b[ata::field::CMD_STATUS] = 0x30;
        b[ata::field::LBA + 3] = 0xE0;
        n
    })
    .unwrap();
    let rep = r.send(|b| frames::read(b, &a, 2, 5, 1)).unwrap();
    assert!(rep[36..36 + 512].iter().all(|&x| x == 0x5a));
}

#[test]
fn a_write_in_pieces_lands_as_one() {
    let mut r = rig();
    let data: Vec<u8> = (0..1024).map(|i| (i * 13 + 1) as u8).collect();
    let n = frames::write(&mut r.buf, &from(HOST_A), 1, 20, &data);
    // As a jumbo frame arrives: the headers and a little data, then odd-sized pieces.
    let (head, rest) = r.buf[..n].split_at(36 + 100);
    let (mid, last) = rest.split_at(411);
    let (head, mid, last) = (head.to_vec(), mid.to_vec(), last.to_vec());
    let mut buf = head.clone();
    buf.resize(3840, 0);
    let v = r
        .engine
        .handle_parts(0, &mut buf, head.len(), &[&mid, &last]);
    let Verdict::Reply(m) = v else {
        panic!("no reply: {v:?}")
    };
    assert_eq!(ata_status(&buf[..m]), (STATUS_DRDY, 0));
    assert_eq!(m, 60);
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 2, 20, 2))
        .unwrap();
    assert_eq!(&rep[36..], &data[..]);

    // Pieces that carry less than the count: refused, nothing written.
    let mut buf = head.clone();
    buf[28] = 40; // lba 40
    buf.resize(3840, 0);
    let v = r.engine.handle_parts(0, &mut buf, head.len(), &[&mid]);
    let Verdict::Reply(m) = v else {
        panic!("no reply: {v:?}")
    };
    assert_eq!(
        ata_status(&buf[..m]),
        (STATUS_DRDY | STATUS_ERR, ERROR_ABRT)
    );
    let rep = r
        .send(|b| frames::read(b, &from(HOST_A), 3, 40, 2))
        .unwrap();
    assert!(rep[36..].iter().all(|&x| x == 0), "nothing written");
}

#[test]
fn state_changes_go_to_the_control_plane_and_nothing_else_does() {
    let mut r = rig();
    let a = from(HOST_A);
    // Reads of the string and the lists are answered at once, by the worker.
    let n = frames::config(&mut r.buf, &a, 1, ConfigCommand::Read, b"");
    assert!(matches!(
        r.engine.handle(0, &mut r.buf, n),
        Verdict::Reply(_)
    ));
    let n = frames::mask_read(&mut r.buf, &a, 2);
    assert!(matches!(
        r.engine.handle(0, &mut r.buf, n),
        Verdict::Reply(_)
    ));
    assert!(r.handed.lock().unwrap().is_empty());
    // A set is handed over whole, unapplied: the owner applies and answers it.
    let n = frames::config(&mut r.buf, &a, 3, ConfigCommand::ForceSet, b"mine");
    assert_eq!(r.engine.handle(0, &mut r.buf, n), Verdict::Pending);
    assert!(r.engine.exports()[0].config().is_empty());
    let mut w = r.handed.lock().unwrap().pop().unwrap();
    assert_eq!((w.len, &w.frame[..n]), (n, &r.buf[..n]));
    assert!(w.frame.len() >= super::engine::CONTROL_REPLY_MAX);
    // The owner applies it to a copy, keeps it, and only then publishes it: a change that
    // cannot be kept is never seen, and gets no reply.
    let seen = std::cell::Cell::new(false);
    let refuse = |new: &super::export::ControlState| {
        assert_eq!(new.config, b"mine");
        seen.set(true);
        false
    };
    let v = answer_now(&w.export, w.responder, &mut w.frame, w.len, &refuse);
    assert!(seen.get());
    assert_eq!(v, Verdict::Ignore(Ignore::NotKept));
    assert!(w.export.config().is_empty());
    let during = |_: &super::export::ControlState| {
        // While it is being kept, the export still shows the old string.
        assert!(r.engine.exports()[0].config().is_empty());
        true
    };
    let v = answer_now(&w.export, w.responder, &mut w.frame, w.len, &during);
    assert!(matches!(v, Verdict::Reply(_)));
    assert_eq!(w.export.config().as_slice(), b"mine");
    w.export.restore_control_state(super::export::ControlState {
        config: vec![],
        lists: Default::default(),
    });
    // Without a control plane (tests, fuzzing) the engine applies it inline.
    let ex = r.engine.exports()[0].clone();
    let inline = Engine::new(vec![ex.clone()], TARGET, 2);
    assert!(matches!(inline.handle(0, &mut r.buf, n), Verdict::Reply(_)));
    assert_eq!(ex.config().as_slice(), b"mine");
    // A full control queue drops the frame: the initiator retransmits.
    let full = Engine::new(vec![ex], TARGET, 2).with_control(Arc::new(|_| false));
    let n = frames::config(&mut r.buf, &a, 4, ConfigCommand::ForceSet, b"x");
    assert_eq!(
        full.handle(0, &mut r.buf, n),
        Verdict::Ignore(Ignore::ControlBusy)
    );
}

#[test]
fn a_broadcast_reaches_each_export_it_names() {
    let exports: Vec<Arc<Export>> = [(1, 2), (1, 3), (2, 2)]
        .into_iter()
        .map(|(shelf, slot)| {
            Arc::new(Export::new(
                ExportOptions::new(shelf, slot),
                Box::new(MemBackend::new(8)),
            ))
        })
        .collect();
    let engine = Engine::new(exports, TARGET, 2);
    let mut buf = [0u8; 1200];
    let to = |shelf, slot| Addr {
        src: HOST_A,
        dst: BROADCAST_MAC,
        shelf,
        slot,
    };
    let mut each = |shelf, slot| {
        let n = frames::config(&mut buf, &to(shelf, slot), 1, ConfigCommand::Read, b"");
        assert_eq!(engine.route(&buf[..n]), Route::Each);
        engine.each(&buf[..n]).collect::<Vec<_>>()
    };
    assert_eq!(each(0xFFFF, 0xFF), vec![0, 1, 2]);
    assert_eq!(each(1, 0xFF), vec![0, 1]);
    assert_eq!(each(0xFFFF, 2), vec![0, 2]);
}

/// A backend whose every I/O fails as a dying disk does.
struct Failing;

impl super::backend::Backend for Failing {
    fn sectors(&self) -> u64 {
        SECTORS
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> super::backend::Result<()> {
        Err(eio("pread"))
    }
    fn write_parts_at(&self, _: u64, _: &[&[u8]]) -> super::backend::Result<()> {
        Err(eio("pwrite"))
    }
    fn sync_range(&self, _: u64, _: usize) -> super::backend::Result<()> {
        Err(eio("fdatasync"))
    }
    fn flush(&self) -> super::backend::Result<()> {
        Err(eio("fsync"))
    }
}

fn eio(call: &'static str) -> super::backend::BackendError {
    super::backend::BackendError::Syscall {
        call,
        source: std::io::Error::from_raw_os_error(libc::EIO),
    }
}

#[test]
fn storage_errors_become_ata_errors_and_are_counted() {
    use super::export::STORAGE_REASONS;
    let ex = Arc::new(Export::new(ExportOptions::new(1, 2), Box::new(Failing)));
    let engine = Engine::new(vec![ex.clone()], TARGET, 2);
    let mut buf = vec![0u8; 3840];
    let a = from(HOST_A);
    let mut send = |build: &dyn Fn(&mut [u8]) -> usize| {
        let n = build(&mut buf);
        match engine.handle(0, &mut buf, n) {
            Verdict::Reply(m) => buf[..m].to_vec(),
            v => panic!("{v:?}"),
        }
    };
    let rep = send(&|b| frames::read(b, &a, 1, 0, 1));
    assert_eq!(
        ata_status(&rep),
        (STATUS_DRDY | STATUS_ERR, aoe_common::wire::ata::ERROR_UNC)
    );
    let rep = send(&|b| frames::write(b, &a, 2, 0, &[1; 512]));
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    let io = STORAGE_REASONS.iter().position(|r| *r == "io").unwrap();
    let counted = |i: usize| ex.stats.storage_errors[i].load(Ordering::Relaxed);
    assert_eq!(counted(io), 2);
    assert_eq!(ex.stats.ata_errors.load(Ordering::Relaxed), 2);
    assert_eq!(ex.stats.writes.load(Ordering::Relaxed), 0);
    // Out of range is refused before the backend is asked: IDNF, and no storage error.
    let rep = send(&|b| frames::read(b, &a, 3, SECTORS, 1));
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_IDNF));
    assert_eq!(counted(io), 2);
}

/// A store whose size the test sets, followed as a file backend follows its file: grown to,
/// never shrunk to.
struct Resizable {
    data: Mutex<Vec<u8>>,
    store: AtomicUsize,
    served: AtomicUsize,
}

impl Resizable {
    fn new(sectors: usize) -> Resizable {
        Resizable {
            data: Mutex::new(vec![0; 1 << 20]),
            store: AtomicUsize::new(sectors),
            served: AtomicUsize::new(sectors),
        }
    }
}

impl super::backend::Backend for Arc<Resizable> {
    fn sectors(&self) -> u64 {
        self.served.load(Ordering::SeqCst) as u64
    }
    fn refresh(&self) -> std::io::Result<super::backend::Extent> {
        let store = self.store.load(Ordering::SeqCst) as u64;
        self.served.fetch_max(store as usize, Ordering::SeqCst);
        Ok(super::backend::Extent {
            served: self.sectors(),
            store,
            fixed: false,
        })
    }
    fn read_at(&self, lba: u64, buf: &mut [u8]) -> super::backend::Result<()> {
        let r = super::backend::byte_range(self.sectors(), lba, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> super::backend::Result<()> {
        let n = parts.iter().map(|p| p.len()).sum();
        let r = super::backend::byte_range(self.sectors(), lba, n)?;
        let mut d = self.data.lock().unwrap();
        let mut at = r.start;
        for p in parts {
            d[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        Ok(())
    }
    fn sync_range(&self, _: u64, _: usize) -> super::backend::Result<()> {
        Ok(())
    }
    fn flush(&self) -> super::backend::Result<()> {
        Ok(())
    }
}

#[test]
fn a_grown_store_is_served_after_identify_and_a_shrunk_one_fails_past_its_end() {
    use super::export::STORAGE_REASONS;
    let backend = Arc::new(Resizable::new(64));
    let ex = Arc::new(Export::new(
        ExportOptions::new(1, 2),
        Box::new(backend.clone()),
    ));
    let engine = Engine::new(vec![ex.clone()], TARGET, 2);
    let mut buf = vec![0u8; 3840];
    let a = from(HOST_A);
    let mut send = |build: &dyn Fn(&mut [u8]) -> usize| {
        let n = build(&mut buf);
        match engine.handle(0, &mut buf, n) {
            Verdict::Reply(m) => buf[..m].to_vec(),
            v => panic!("{v:?}"),
        }
    };
    let identified = |rep: &[u8]| identify::parse(rep[36..548].try_into().unwrap()).sectors;
    let fail = (STATUS_DRDY | STATUS_ERR, ERROR_IDNF);
    assert_eq!(identified(&send(&|b| frames::identify(b, &a, 1))), 64);
    assert_eq!(ata_status(&send(&|b| frames::read(b, &a, 2, 100, 1))), fail);

    // The store grows: the next IDENTIFY (an initiator's revalidate) looks and reports it,
    // and the new sectors are served.
    backend.store.store(128, Ordering::SeqCst);
    assert_eq!(identified(&send(&|b| frames::identify(b, &a, 3))), 128);
    let rep = send(&|b| frames::write(b, &a, 4, 127, &[9; 512]));
    assert_eq!(ata_status(&rep), (STATUS_DRDY, 0));
    let rep = send(&|b| frames::read(b, &a, 5, 127, 1));
    assert_eq!(
        (ata_status(&rep), &rep[36..548]),
        ((STATUS_DRDY, 0), &[9; 512][..])
    );
    assert_eq!(
        ex.unannounced(),
        Some(128),
        "a change for the daemon to announce"
    );
    assert_eq!(ex.unannounced(), None);

    // It shrinks: the size initiators know stays, what lies past the store's end fails as a
    // storage error (UNC on a read, ABRT on a write), counted as `shrunk`; before it, all
    // is well; past the served size, IDNF as ever.
    backend.store.store(32, Ordering::SeqCst);
    let r = ex.refresh_size().unwrap();
    assert!(r.shrunk(), "{r:?}");
    assert_eq!((ex.sectors(), ex.store_sectors()), (128, 32));
    assert_eq!(identified(&send(&|b| frames::identify(b, &a, 6))), 128);
    let rep = send(&|b| frames::read(b, &a, 7, 40, 1));
    assert_eq!(
        ata_status(&rep),
        (STATUS_DRDY | STATUS_ERR, aoe_common::wire::ata::ERROR_UNC)
    );
    let rep = send(&|b| frames::write(b, &a, 8, 31, &[1; 1024]));
    assert_eq!(ata_status(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    assert_eq!(
        ata_status(&send(&|b| frames::read(b, &a, 9, 30, 2))),
        (STATUS_DRDY, 0)
    );
    assert_eq!(
        ata_status(&send(&|b| frames::read(b, &a, 10, 128, 1))),
        fail
    );
    let shrunk = STORAGE_REASONS.iter().position(|r| *r == "shrunk").unwrap();
    assert_eq!(ex.stats.storage_errors[shrunk].load(Ordering::Relaxed), 2);
    assert_eq!(
        ex.unannounced(),
        None,
        "a shrink is not announced: nothing changed"
    );

    // Grown back: served again.
    backend.store.store(128, Ordering::SeqCst);
    assert!(!ex.refresh_size().unwrap().shrunk());
    let rep = send(&|b| frames::read(b, &a, 11, 127, 1));
    assert_eq!(
        (ata_status(&rep), &rep[36..548]),
        ((STATUS_DRDY, 0), &[9; 512][..])
    );
}

/// A backend whose writes wait until the test lets them go: a write in the middle of its
/// copy, for as long as the test likes.
struct HeldWrites {
    mem: MemBackend,
    entered: std::sync::mpsc::SyncSender<()>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl super::backend::Backend for HeldWrites {
    fn sectors(&self) -> u64 {
        self.mem.sectors()
    }
    fn read_at(&self, lba: u64, buf: &mut [u8]) -> super::backend::Result<()> {
        self.mem.read_at(lba, buf)
    }
    fn write_parts_at(&self, lba: u64, parts: &[&[u8]]) -> super::backend::Result<()> {
        self.entered.send(()).unwrap();
        self.go.lock().unwrap().recv().unwrap();
        self.mem.write_parts_at(lba, parts)
    }
    fn sync_range(&self, lba: u64, len: usize) -> super::backend::Result<()> {
        self.mem.sync_range(lba, len)
    }
    fn flush(&self) -> super::backend::Result<()> {
        self.mem.flush()
    }
}

#[test]
fn a_write_that_bypasses_the_ring_is_counted_for_the_snapshot_point() {
    use std::sync::mpsc::{channel, sync_channel};
    let (entered, in_write) = sync_channel(1);
    let (go, wait) = channel();
    let backend = HeldWrites {
        mem: MemBackend::new(SECTORS),
        entered,
        go: Mutex::new(wait),
    };
    let ex = Arc::new(Export::new(ExportOptions::new(1, 2), Box::new(backend)));
    let engine = Engine::new(vec![ex.clone()], TARGET, 2);
    // A write on the synchronous path (write-back through the mapping, or a queue without
    // a ring), stopped in the middle of its copy.
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 3840];
        let n = frames::write(&mut buf, &from(HOST_A), 7, 4, &[0x77; 512]);
        matches!(engine.handle(0, &mut buf, n), Verdict::Reply(_))
    });
    in_write.recv().unwrap();
    // The snapshot point waits for the export's storage requests in flight to reach zero;
    // one that is not counted lands in the image while the copy reads it.
    assert_eq!(
        ex.stats.storage_in_flight.load(Ordering::SeqCst),
        1,
        "a write in its copy is not counted"
    );
    go.send(()).unwrap();
    assert!(writer.join().unwrap());
    assert_eq!(ex.stats.storage_in_flight.load(Ordering::SeqCst), 0);
}
