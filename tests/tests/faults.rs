//! The backing store fails under a running target: it answers with ATA errors for the
//! failed region and keeps serving the rest (a naive mmap target dies of SIGBUS).

mod common;

use aoe_common::wire::ata::{ERROR_ABRT, ERROR_UNC, STATUS_DRDY, STATUS_ERR};
use aoe_ctl::initiator::frames;
use common::{ata, Rig, SECTORS};

const OK: (u8, u8) = (STATUS_DRDY, 0);

#[test]
fn file_truncated_under_the_target() {
    let mut r = Rig::start(&[]);
    let me = r.mine();
    let data = vec![0x5a; 1024];
    let rep = r.ask(|b, t| frames::write(b, &me, t, 10, &data)).unwrap();
    assert_eq!(ata(&rep), OK);
    // Shrink the image to half under the live mapping.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&r.image)
        .unwrap()
        .set_len(SECTORS * 512 / 2)
        .unwrap();
    let beyond = SECTORS - 16;
    let rep = r
        .ask(|b, t| frames::read(b, &me, t, beyond, 2))
        .expect("a reply, not a dead target");
    assert_eq!(ata(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_UNC));
    let rep = r
        .ask(|b, t| frames::write(b, &me, t, beyond, &data))
        .expect("a reply to the write");
    assert_eq!(ata(&rep), (STATUS_DRDY | STATUS_ERR, ERROR_ABRT));
    // The rest keeps serving, with the data written before.
    let rep = r.ask(|b, t| frames::read(b, &me, t, 10, 2)).unwrap();
    assert_eq!((ata(&rep), &rep[36..]), (OK, &data[..]));
    // Nothing was written past the end: the file did not grow back.
    assert_eq!(
        std::fs::metadata(&r.image).unwrap().len(),
        SECTORS * 512 / 2
    );
    let log = r.target.take().unwrap().stop().unwrap();
    assert!(log.contains("e1.2: stopped"), "{log}");
}
