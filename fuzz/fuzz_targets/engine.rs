//! The protocol engine, frame in -> reply out, over an in-memory backend: no panic, every
//! reply fits its buffer, is at least a minimum frame, is a response from us, and nothing is
//! written outside the device. The first input byte picks the delivery: in one buffer, or
//! split into pieces as a jumbo frame's descriptors arrive.
#![no_main]

use std::sync::Arc;

use aoe_common::wire::Frame;
use aoe_ctl::serve::backend::MemBackend;
use aoe_ctl::serve::engine::{Engine, Route, Verdict};
use aoe_ctl::serve::export::{Export, ExportOptions};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const FRAME_MAX: usize = 9216;

fn check(v: Verdict, buf: &[u8]) {
    if let Verdict::Reply(n) = v {
        assert!((60..=buf.len()).contains(&n), "reply of {n} bytes");
        let f = Frame::new_checked(&buf[..n]).expect("a whole header");
        assert!(f.is_response());
        assert_eq!(f.src(), MAC);
        assert!(
            f.shelf() != 0xFFFF && f.slot() != 0xFF,
            "reply from a broadcast address"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, frame)) = data.split_first() else {
        return;
    };
    let frame = &frame[..frame.len().min(FRAME_MAX)];
    // Two exports (one read-only) with 64 sectors each, 17 sectors per frame as at MTU 9000.
    let mut ro = ExportOptions::new(1, 3);
    ro.read_only = true;
    let exports = vec![
        Arc::new(Export::new(
            ExportOptions::new(1, 2),
            Box::new(MemBackend::new(64)),
        )),
        Arc::new(Export::new(ro, Box::new(MemBackend::new(64)))),
    ];
    let engine = Engine::new(exports, MAC, 17);
    let mut buf = vec![0u8; FRAME_MAX];
    buf[..frame.len()].copy_from_slice(frame);
    match engine.route(frame) {
        Route::One(i, parsed) if how & 1 == 1 && frame.len() > 36 => {
            let head = 36 + usize::from(how >> 1) % (frame.len() - 36);
            let tail: Vec<&[u8]> = frame[head..].chunks(1 + usize::from(how) * 13).collect();
            let v = engine.handle_routed(i, parsed, &mut buf, head, &tail, false);
            check(v, &buf);
        }
        Route::One(i, parsed) => {
            let v = engine.handle_routed(i, parsed, &mut buf, frame.len(), &[], false);
            check(v, &buf);
        }
        Route::Each => {
            for i in 0..engine.exports().len() {
                let mut b = buf.clone();
                let v = engine.handle(i, &mut b, frame.len());
                check(v, &b);
            }
        }
        Route::Ignore(_) => {}
    }
});
