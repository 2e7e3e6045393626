//! The XDP classifier on crafted frames through BPF_PROG_TEST_RUN: no interface involved.

use std::sync::Arc;

use aoe_common::maps::counter;
use aoe_common::maps::{PROG_CLASSIFIER, PROG_CLASSIFIER_NATIVE};
use aoe_common::wire::config::{ConfigCommand, ConfigRepr};
use aoe_common::wire::mask::{Directive, DCMD_ADD};
use aoe_ctl::initiator::frames::{self, Addr, BROADCAST_MAC};
use aoe_ctl::serve::backend::MemBackend;
use aoe_ctl::serve::export::{Export, ExportOptions};
use aoe_ctl::serve::xdp::{Classifier, OBJECT};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const TARGET: [u8; 6] = [2, 0, 0, 0, 0, 1];
const HOST: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const STRANGER: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn export(config: &[u8]) -> Arc<Export> {
    let opts = ExportOptions {
        config: config.to_vec(),
        ..ExportOptions::new(1, 2)
    };
    Arc::new(Export::new(opts, Box::new(MemBackend::new(128))))
}

fn loaded(ex: &Arc<Export>) -> Classifier {
    let mut c = Classifier::load(TARGET, 2).expect("load the classifier (root needed)");
    c.set_exports(std::slice::from_ref(ex)).unwrap();
    c
}

/// BPF_PROG_TEST_RUN of the loaded classifier, with the maps `set_exports` filled.
trait TestRun {
    /// Run on one frame: (XDP action, frame after).
    fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)>;
}

impl TestRun for Classifier {
    fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 4096];
        let r = self.program()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}

fn to_export(src: [u8; 6]) -> Addr {
    Addr {
        src,
        dst: TARGET,
        shelf: 1,
        slot: 2,
    }
}

fn frame(build: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut b = vec![0u8; 2048];
    let n = build(&mut b);
    b.truncate(n);
    b
}

#[test]
fn foreign_traffic_passes_untouched() {
    let ex = export(b"");
    let mut c = loaded(&ex);
    // An IPv4 frame.
    let mut ipv4 = vec![0u8; 60];
    ipv4[12] = 0x08;
    let (action, out) = c.test_run(&ipv4).unwrap();
    assert_eq!((action, &out), (XDP_PASS, &ipv4));
    // An AoE response (R flag).
    let mut resp = frame(|b| frames::read(b, &to_export(HOST), 1, 0, 1));
    resp[14] |= 0x08;
    assert_eq!(c.test_run(&resp).unwrap(), (XDP_PASS, resp.clone()));
    // Another shelf/slot.
    let other = frame(|b| {
        frames::read(
            b,
            &Addr {
                slot: 3,
                ..to_export(HOST)
            },
            1,
            0,
            1,
        )
    });
    assert_eq!(c.test_run(&other).unwrap().0, XDP_PASS);
    // Shorter than an AoE header.
    assert_eq!(c.test_run(&resp[..20]).unwrap().0, XDP_PASS);
    let counters = c.counters().unwrap();
    assert_eq!(counters[counter::PASSED as usize], 4);
}

#[test]
fn config_read_answered_in_kernel() {
    let ex = export(b"rack 7");
    let mut c = loaded(&ex);
    // The Linux initiator's broadcast query: 32 bytes, not padded.
    let bcast = Addr {
        src: HOST,
        dst: BROADCAST_MAC,
        shelf: 0xFFFF,
        slot: 0xFF,
    };
    let q = frame(|b| frames::config(b, &bcast, 0x0102_0304, ConfigCommand::Read, b""));
    assert_eq!(q.len(), 32);
    let (action, out) = c.test_run(&q).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), 60, "padded to the shortest frame");
    assert_eq!(&out[0..6], &HOST);
    assert_eq!(&out[6..12], &TARGET);
    assert_eq!(&out[12..16], &[0x88, 0xa2, 0x18, 0x00]);
    assert_eq!(&out[16..20], &[0x00, 0x01, 0x02, 0x01]); // real shelf 1, slot 2, cmd 1
    assert_eq!(&out[20..24], &[1, 2, 3, 4]); // tag echoed
    let r = ConfigRepr::parse(&out).unwrap();
    assert_eq!(r.string, b"rack 7");
    assert_eq!((r.buffer_count, r.sector_count, r.aoe_version), (16, 2, 1));
    assert_eq!(c.counters().unwrap()[counter::ANSWERED as usize], 1);
}

#[test]
fn config_reply_identical_to_user_space() {
    // The kernel's template and the engine's reply must be the same bytes.
    let ex = export(b"same");
    let mut c = loaded(&ex);
    let q = frame(|b| frames::config(b, &to_export(HOST), 9, ConfigCommand::Read, b""));
    let (_, kernel) = c.test_run(&q).unwrap();
    let engine = aoe_ctl::serve::engine::Engine::new(vec![ex], TARGET, 2);
    let mut buf = vec![0u8; 2048];
    buf[..q.len()].copy_from_slice(&q);
    let n = match engine.handle(0, &mut buf, q.len()) {
        aoe_ctl::serve::engine::Verdict::Reply(n) => n,
        v => panic!("{v:?}"),
    };
    assert_eq!(kernel, buf[..n]);
}

#[test]
fn config_test_and_prefix_in_kernel() {
    let ex = export(b"hello");
    let mut c = loaded(&ex);
    let a = to_export(HOST);
    let run = |c: &mut Classifier, cmd, s: &[u8]| {
        c.test_run(&frame(|b| frames::config(b, &a, 1, cmd, s)))
            .unwrap()
            .0
    };
    assert_eq!(run(&mut c, ConfigCommand::Test, b"hello"), XDP_TX);
    assert_eq!(run(&mut c, ConfigCommand::Test, b"hellO"), XDP_DROP);
    assert_eq!(run(&mut c, ConfigCommand::Test, b"hell"), XDP_DROP);
    assert_eq!(run(&mut c, ConfigCommand::TestPrefix, b"hel"), XDP_TX);
    assert_eq!(run(&mut c, ConfigCommand::TestPrefix, b"help"), XDP_DROP);
    assert_eq!(run(&mut c, ConfigCommand::TestPrefix, b"hello!"), XDP_DROP);
    assert_eq!(
        c.counters().unwrap()[counter::DROP_CONFIG_MISMATCH as usize],
        4
    );
    // A test string longer than the frame: left to user space (redirect, here: no socket).
    let mut lying = frame(|b| frames::config(b, &a, 1, ConfigCommand::Test, b"hello"));
    lying[31] = 200;
    assert_eq!(c.test_run(&lying).unwrap().0, XDP_PASS);
    assert_eq!(c.counters().unwrap()[counter::NO_SOCKET as usize], 1);
}

#[test]
fn set_and_other_commands_go_to_user_space() {
    let ex = export(b"");
    let mut c = loaded(&ex);
    let a = to_export(HOST);
    for f in [
        frame(|b| frames::config(b, &a, 1, ConfigCommand::SetIfEmpty, b"x")),
        frame(|b| frames::read(b, &a, 2, 0, 2)),
        frame(|b| frames::write(b, &a, 3, 0, &[1; 1024])),
        frame(|b| frames::mask_read(b, &a, 4)),
        frame(|b| frames::reserve(b, &a, 5, 0, &[])),
    ] {
        // With no AF_XDP socket bound, the redirect falls back to XDP_PASS.
        assert_eq!(c.test_run(&f).unwrap().0, XDP_PASS);
    }
    let k = c.counters().unwrap();
    assert_eq!(k[counter::NO_SOCKET as usize], 5);
    assert_eq!(k[counter::ANSWERED as usize], 0);
}

#[test]
fn mask_list_and_broadcast_ata_dropped_in_kernel() {
    let ex = export(b"");
    ex.access
        .edit_masks(
            [Directive {
                dcmd: DCMD_ADD,
                mac: HOST,
            }]
            .into_iter(),
        )
        .unwrap();
    let mut c = loaded(&ex);
    let q = |src| frame(|b| frames::config(b, &to_export(src), 1, ConfigCommand::Read, b""));
    assert_eq!(c.test_run(&q(HOST)).unwrap().0, XDP_TX);
    assert_eq!(c.test_run(&q(STRANGER)).unwrap().0, XDP_DROP);
    let rd = frame(|b| frames::read(b, &to_export(STRANGER), 1, 0, 1));
    assert_eq!(c.test_run(&rd).unwrap().0, XDP_DROP);
    let bcast = Addr {
        src: HOST,
        dst: BROADCAST_MAC,
        shelf: 0xFFFF,
        slot: 0xFF,
    };
    let w = frame(|b| frames::write(b, &bcast, 1, 0, &[1; 512]));
    assert_eq!(c.test_run(&w).unwrap().0, XDP_DROP);
    let k = c.counters().unwrap();
    assert_eq!(k[counter::DROP_ACL as usize], 2);
    assert_eq!(k[counter::DROP_BROADCAST_ATA as usize], 1);
}

#[test]
fn longest_config_string_left_to_user_space_or_answered() {
    // 1024-byte string: the reply is 1056 bytes; the kernel grows the frame if the headroom
    // allows, else leaves it to user space. Either way nothing malformed leaves the kernel.
    let ex = export(&[b'x'; 1024]);
    let mut c = loaded(&ex);
    let q = frame(|b| frames::config(b, &to_export(HOST), 1, ConfigCommand::Read, b""));
    let (action, out) = c.test_run(&q).unwrap();
    match action {
        XDP_TX => assert_eq!(ConfigRepr::parse(&out).unwrap().string.len(), 1024),
        XDP_PASS => assert_eq!(c.counters().unwrap()[counter::NO_SOCKET as usize], 1),
        a => panic!("unexpected action {a}"),
    }
}

#[test]
fn the_product_object_holds_the_classifier_alone() {
    // The lab's programs (ceiling, veth peer pass) live in aoe-lab's own object.
    let bpf = aya::Ebpf::load(OBJECT).expect("parse the embedded object (root needed)");
    let mut programs: Vec<&str> = bpf.programs().map(|(name, _)| name).collect();
    programs.sort();
    // The classifier, twice: generic, and with the VLAN check for a device-bound load.
    assert_eq!(programs, [PROG_CLASSIFIER, PROG_CLASSIFIER_NATIVE]);
    assert!(bpf.map("CEILING").is_none());
}
