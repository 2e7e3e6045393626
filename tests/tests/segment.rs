//! Frames a hostile host on the segment sends that the target must not serve, on both data
//! paths: writes tagged for another VLAN (the tag in the frame, and the tag in the packet's
//! metadata, as a NIC that strips tags or a veth's peer hands it over), frames addressed to
//! another host's MAC, and requests from a group source MAC (whose reply would go to the
//! whole group); and a reply longer than the MTU, which must not stall the AF_PACKET ring.
//! Each hostile frame is followed by a legitimate one; once the target has stopped (it drains
//! its I/O), its image and its count of frames handled say exactly what it served.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use aoe_common::wire::config::ConfigCommand;
use aoe_common::wire::{Frame, Mac};
use aoe_ctl::initiator::client::Client;
use aoe_ctl::initiator::frames::{self, Addr};
use aoe_integration::{Lab, LabOptions, Proc};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};
use common::{exit_count, SECTORS};

const OTHER_HOST: Mac = [0x02, 0x99, 0, 0, 0, 0x99];
const VLAN: u16 = 200;

/// A target on one end of a lab, and a raw socket on the other that sends each frame once.
struct Segment {
    client: Client,
    target: Option<Proc>,
    target_mac: Mac,
    image: std::path::PathBuf,
    /// Frames sent that the target should serve.
    legit: u64,
    tag: u32,
    _peer: Proc,
    lab: Lab,
}

impl Segment {
    fn start(lab: Lab, args: &[&str]) -> Segment {
        let image = lab.image("disk.img", SECTORS * 512).unwrap();
        let peer = lab.start_peer(&lab.initiator_if).unwrap();
        let target = lab
            .spawn(&lab.target_ns, &lab.export_args(&image, args))
            .unwrap();
        let ifname = lab.initiator_if.clone();
        let mut client = Lab::in_ns(&lab.initiator_ns, move || Client::open(&ifname))
            .unwrap()
            .unwrap();
        client.timeout = Duration::from_secs(2);
        let target_mac = mac_of(&lab.target_ns, &lab.target_if);
        Segment {
            client,
            target: Some(target),
            target_mac,
            image,
            legit: 0,
            tag: 0x8000_0000 | (std::process::id() << 8),
            _peer: peer,
            lab,
        }
    }

    fn to_target(&self) -> Addr {
        Addr {
            src: self.client.mac(),
            dst: self.target_mac,
            shelf: 1,
            slot: 2,
        }
    }

    fn next_tag(&mut self) -> u32 {
        self.tag += 1;
        self.tag
    }

    /// A legitimate request, answered.
    fn ask(&mut self, build: impl Fn(&mut [u8], u32) -> usize) -> Vec<u8> {
        let mut b = vec![0u8; 9216];
        let n = build(&mut b, self.next_tag());
        self.legit += 1;
        self.client
            .exchange(&b[..n], Duration::from_secs(10))
            .unwrap()
            .expect("the target answers a legitimate request")
    }

    /// A legitimate write of two sectors of `byte` at `lba`, answered.
    fn write(&mut self, lba: u64, byte: u8) {
        self.write_sectors(lba, byte, 2);
    }

    fn write_sectors(&mut self, lba: u64, byte: u8, sectors: usize) {
        let a = self.to_target();
        let data = vec![byte; sectors * 512];
        let rep = self.ask(|b, t| frames::write(b, &a, t, lba, &data));
        assert_eq!(common::ata(&rep).0 & 0x01, 0, "the write succeeds");
    }

    /// Send a hostile frame once (edited by `edit` after it is built); no reply is awaited.
    fn send(&mut self, build: impl Fn(&mut [u8], u32) -> usize, edit: impl Fn(Vec<u8>) -> Vec<u8>) {
        let mut b = vec![0u8; 9216];
        let n = build(&mut b, self.next_tag());
        b.truncate(n);
        self.client.sock.send(&edit(b)).unwrap();
    }

    /// Stop the target (it answers what it took in first); frames it handled in user space.
    fn stop(&mut self) -> (u64, String) {
        let log = self.target.take().unwrap().stop().unwrap();
        (exit_count(&log, "user space handled"), log)
    }

    fn sector(&self, lba: u64) -> Vec<u8> {
        let all = std::fs::read(&self.image).unwrap();
        all[lba as usize * 512..(lba as usize + 2) * 512].to_vec()
    }
}

/// The MAC of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> Mac {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{dev}/address"))
        .output()
        .unwrap();
    aoe_ctl::net::parse_mac(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

/// `frame` with an 802.1Q tag for `vid` after its MAC addresses.
fn tagged(vid: u16) -> impl Fn(Vec<u8>) -> Vec<u8> {
    move |f| {
        let mut t = f[..12].to_vec();
        t.extend_from_slice(&[0x81, 0x00]);
        t.extend_from_slice(&vid.to_be_bytes());
        t.extend_from_slice(&f[12..]);
        t
    }
}

fn as_is(f: Vec<u8>) -> Vec<u8> {
    f
}

/// While it lives, every frame `iface` (namespace `ns`) sends carries an 802.1Q tag for
/// `vid` in the packet's metadata, not in the frame: a tcx egress program calling
/// bpf_skb_vlan_push, which is how a VLAN device, or a NIC that strips tags on receive, hands
/// a tagged frame over (a veth passes the metadata to its peer). This kernel may have no
/// 802.1Q module; the program needs none.
struct MetadataTag {
    _link: OwnedFd,
    _prog: OwnedFd,
}

fn tag_in_metadata(ns: &str, iface: &str, vid: u16) -> MetadataTag {
    let iface = std::ffi::CString::new(iface).unwrap();
    Lab::in_ns(ns, move || {
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        assert_ne!(index, 0, "the interface exists");
        // r2 = htons(ETH_P_8021Q); r3 = vid; call bpf_skb_vlan_push (18); r0 = 0 (TCX_PASS).
        let insn = |code: u8, regs: u8, imm: i32| {
            let mut i = [0u8; 8];
            i[0] = code;
            i[1] = regs;
            i[4..].copy_from_slice(&imm.to_le_bytes());
            i
        };
        let prog: Vec<u8> = [
            insn(0xb7, 0x02, 0x0081),
            insn(0xb7, 0x03, i32::from(vid)),
            insn(0x85, 0x00, 18),
            insn(0xb7, 0x00, 0),
            insn(0x95, 0x00, 0),
        ]
        .concat();
        let license = c"GPL";
        // SAFETY: bpf_attr is plain old data.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the prog-load member, whose pointers outlive the call.
        unsafe {
            let p = &mut attr.__bindgen_anon_3;
            p.prog_type = bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32;
            p.insns = prog.as_ptr() as u64;
            p.insn_cnt = (prog.len() / 8) as u32;
            p.license = license.as_ptr() as u64;
        }
        let prog = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
        // SAFETY: as above, the link-create member.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe {
            let l = &mut attr.link_create;
            l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
            l.__bindgen_anon_2.target_ifindex = index;
            l.attach_type = bpf_attach_type::BPF_TCX_EGRESS as u32;
        }
        let link = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr);
        MetadataTag {
            _link: link,
            _prog: prog,
        }
    })
    .unwrap()
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> OwnedFd {
    // SAFETY: a valid command and attribute union of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    assert!(r >= 0, "bpf {cmd:?}: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor, ours alone.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// Writes from other VLANs and to other hosts on `args`' data path: none lands, and none
/// reaches user space; a priority tag (VLAN 0) in the metadata is untagged and served.
/// `metadata`: whether this path must also refuse tags in the metadata (not skb mode on a
/// veth, where no XDP program can see them: docs/security.md).
fn other_vlans_and_hosts(args: &[&str], metadata: bool) {
    let mut s = Segment::start(Lab::new().unwrap(), args);
    s.write(10, 0x11);
    let me = s.to_target();
    let write = |lba| move |b: &mut [u8], t| frames::write(b, &me, t, lba, &[0xee; 1024]);
    // The tag in the frame.
    s.send(write(20), tagged(VLAN));
    // The frame addressed to another host's MAC.
    let other = Addr {
        dst: OTHER_HOST,
        ..me
    };
    s.send(
        move |b, t| frames::write(b, &other, t, 22, &[0xee; 1024]),
        as_is,
    );
    if metadata {
        // The tag in the metadata, for another VLAN: refused; for VLAN 0: served.
        let tag = tag_in_metadata(&s.lab.initiator_ns, &s.lab.initiator_if, VLAN);
        s.send(write(24), as_is);
        drop(tag);
        let tag = tag_in_metadata(&s.lab.initiator_ns, &s.lab.initiator_if, 0);
        s.write(26, 0x26);
        drop(tag);
    }
    s.write(12, 0x12);
    let (handled, log) = s.stop();
    assert_eq!(s.sector(10), vec![0x11; 1024]);
    assert_eq!(s.sector(12), vec![0x12; 1024]);
    for lba in [20, 22, 24] {
        assert_eq!(
            s.sector(lba),
            vec![0; 1024],
            "sector {lba} was written: {log}"
        );
    }
    if metadata {
        assert_eq!(s.sector(26), vec![0x26; 1024], "a priority tag is untagged");
    }
    assert_eq!(
        handled, s.legit,
        "only the legitimate frames reached user space: {log}"
    );
}

#[test]
fn other_vlans_and_hosts_on_xdp_native() {
    other_vlans_and_hosts(&["--xdp-mode", "native"], true);
}

#[test]
fn other_vlans_and_hosts_on_xdp_skb() {
    other_vlans_and_hosts(&["--xdp-mode", "skb"], false);
}

/// In skb mode no program sees a tag the NIC stripped: stripping is off while the target
/// serves, and on again once it stops.
#[test]
fn skb_mode_turns_rx_vlan_stripping_off_while_it_serves() {
    let mut s = Segment::start(Lab::new().unwrap(), &["--xdp-mode", "skb"]);
    let stripping = |lab: &Lab| {
        let dev = lab.target_if.clone();
        Lab::in_ns(&lab.target_ns, move || {
            aoe_ctl::serve::vlan_tags::Stripping::active(&dev).unwrap()
        })
        .unwrap()
    };
    assert!(!stripping(&s.lab));
    let (_, log) = s.stop();
    assert!(log.contains("receive VLAN stripping turned off"), "{log}");
    assert!(stripping(&s.lab), "turned on again at exit");
}

/// Served on a VLAN sub-interface, the target answers its VLAN's frames, and neither the
/// untagged ones on the port below nor another VLAN's (needs the kernel's 802.1Q support).
fn on_a_vlan_subinterface(path: &[&str]) {
    let lab = Lab::new().unwrap();
    let vlan = |ns: &str, dev: &str| -> Option<String> {
        let name = format!("{dev}v");
        let ok = std::process::Command::new("ip")
            .args(["-n", ns, "link", "add", "link", dev, "name", &name])
            .args(["type", "vlan", "id", &VLAN.to_string()])
            .output()
            .unwrap()
            .status
            .success();
        ok.then(|| {
            let up = std::process::Command::new("ip")
                .args(["-n", ns, "link", "set", &name, "up"])
                .status()
                .unwrap();
            assert!(up.success());
            name
        })
    };
    let Some(target_vlan) = vlan(&lab.target_ns, &lab.target_if) else {
        eprintln!("skipped: this kernel cannot make VLAN devices (no CONFIG_VLAN_8021Q)");
        return;
    };
    let initiator_vlan = vlan(&lab.initiator_ns, &lab.initiator_if).unwrap();
    let image = lab.image("disk.img", SECTORS * 512).unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let mut args = vec![
        "export",
        "--shelf",
        "1",
        "--slot",
        "2",
        "--iface",
        &target_vlan,
    ];
    args.extend_from_slice(path);
    args.push(image.to_str().unwrap());
    let target = lab.spawn(&lab.target_ns, &args).unwrap();
    let target_mac = mac_of(&lab.target_ns, &target_vlan);
    let client = |dev: &str| {
        let dev = dev.to_string();
        Lab::in_ns(&lab.initiator_ns, move || Client::open(&dev))
            .unwrap()
            .unwrap()
    };
    let (mut tagged_client, port) = (client(&initiator_vlan), client(&lab.initiator_if));
    let to = |c: &Client| Addr {
        src: c.mac(),
        dst: target_mac,
        shelf: 1,
        slot: 2,
    };
    let mut b = vec![0u8; 2048];
    // From the port below (untagged), and tagged for another VLAN: not answered.
    let n = frames::write(&mut b, &to(&port), 0x8000_0001, 20, &[0xee; 1024]);
    port.sock.send(&b[..n]).unwrap();
    let n = frames::write(&mut b, &to(&port), 0x8000_0002, 22, &[0xee; 1024]);
    port.sock.send(&tagged(VLAN + 1)(b[..n].to_vec())).unwrap();
    // From the VLAN: answered.
    let n = frames::write(&mut b, &to(&tagged_client), 0x8000_0003, 10, &[0x11; 1024]);
    let rep = tagged_client
        .exchange(&b[..n], Duration::from_secs(10))
        .unwrap()
        .expect("the VLAN's initiator is answered");
    assert_eq!(common::ata(&rep).0 & 0x01, 0);
    let log = target.stop().unwrap();
    let all = std::fs::read(&image).unwrap();
    assert_eq!(&all[10 * 512..12 * 512], &[0x11; 1024][..]);
    assert_eq!(&all[20 * 512..24 * 512], &[0; 2048][..], "{log}");
    assert_eq!(exit_count(&log, "user space handled"), 1, "{log}");
}

#[test]
fn on_a_vlan_subinterface_with_xdp() {
    on_a_vlan_subinterface(&[]);
}

#[test]
fn on_a_vlan_subinterface_with_afpacket() {
    on_a_vlan_subinterface(&["--mode", "afpacket"]);
}

#[test]
fn other_vlans_and_hosts_on_afpacket() {
    other_vlans_and_hosts(&["--mode", "afpacket"], true);
}

/// The target's own receive VLAN stripping does not decide anything: the same with it off.
#[test]
fn other_vlans_without_rx_vlan_offload() {
    for args in [["--xdp-mode", "native"], ["--mode", "afpacket"]] {
        let lab = Lab::new().unwrap();
        let (ns, dev) = (lab.target_ns.clone(), lab.target_if.clone());
        let was = Lab::in_ns(&ns, move || {
            aoe_ctl::serve::vlan_tags::Stripping::turn_off(&dev).unwrap()
        })
        .unwrap();
        assert!(was.is_some(), "a veth strips tags on receive by default");
        let mut s = Segment::start(lab, &args);
        let me = s.to_target();
        let tag = tag_in_metadata(&s.lab.initiator_ns, &s.lab.initiator_if, VLAN);
        s.send(
            move |b, t| frames::write(b, &me, t, 24, &[0xee; 1024]),
            as_is,
        );
        drop(tag);
        s.write(12, 0x12);
        let (handled, log) = s.stop();
        assert_eq!(s.sector(24), vec![0; 1024], "{args:?}: {log}");
        assert_eq!(handled, s.legit, "{args:?}: {log}");
    }
}

/// Requests claiming a group source MAC get no reply, on either path: a 60-byte read from
/// ff:ff:ff:ff:ff:ff would otherwise broadcast its sectors to the segment.
fn group_sources(args: &[&str]) {
    let mut s = Segment::start(Lab::new().unwrap(), args);
    s.write(10, 0x11);
    for (lba, src) in [
        (20, [0xff; 6]),
        (22, [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
        (24, [0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
    ] {
        let from = Addr {
            src,
            ..s.to_target()
        };
        s.send(
            move |b, t| frames::write(b, &from, t, lba, &[0xee; 1024]),
            as_is,
        );
        s.send(move |b, t| frames::read(b, &from, t, 10, 2), as_is);
    }
    // Replies to a group address reach this socket too: none may come before the last
    // legitimate reply (the target answers in the order it reads, but not only then: the
    // image and the count below settle it).
    s.write(12, 0x12);
    let mut b = vec![0u8; 9216];
    while let Some(n) = s
        .client
        .sock
        .recv(&mut b, Duration::from_millis(100))
        .unwrap()
    {
        let f = Frame::new_checked(&b[..n]).unwrap();
        assert!(
            !(f.is_response() && f.dst()[0] & 1 != 0),
            "a reply went to a group address: {:02x?}",
            &b[..n.min(40)]
        );
    }
    let (handled, log) = s.stop();
    for lba in [20, 22, 24] {
        assert_eq!(s.sector(lba), vec![0; 1024], "sector {lba}: {log}");
    }
    assert_eq!(handled, s.legit, "{log}");
}

#[test]
fn group_sources_on_xdp() {
    group_sources(&[]);
}

#[test]
fn group_sources_on_afpacket() {
    group_sources(&["--mode", "afpacket"]);
}

/// A config reply longer than the MTU (a 1024-byte string at MTU 1000) cannot be sent; the
/// AF_PACKET tx ring goes on with the next reply instead of stopping at that slot.
#[test]
fn a_reply_over_the_mtu_does_not_stall_afpacket() {
    let lab = Lab::with(LabOptions {
        mtu: 1000,
        queues: 1,
    })
    .unwrap();
    let long = "x".repeat(1024);
    let mut s = Segment::start(lab, &["--mode", "afpacket", "--config", &long]);
    let me = s.to_target();
    // Twice: a stalled ring holds the second one, and everything after it.
    for _ in 0..2 {
        s.send(
            move |b, t| frames::config(b, &me, t, ConfigCommand::Read, b""),
            as_is,
        );
        s.legit += 1;
    }
    // One sector a frame at this MTU: a 60-byte reply, which must leave.
    s.write_sectors(10, 0x10, 1);
    let rep = s.ask(move |b, t| frames::read(b, &me, t, 10, 1));
    assert_eq!(&rep[36..548], &[0x10; 512][..]);
    let (handled, log) = s.stop();
    assert_eq!(handled, s.legit, "{log}");
}
