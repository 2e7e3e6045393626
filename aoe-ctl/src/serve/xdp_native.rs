//! The classifier for native mode, loaded bound to its device so that it can ask the driver
//! for a frame's VLAN tag. A NIC that strips VLAN tags on receive (the default on most) and a
//! veth whose peer sent a tagged frame hand XDP the inner ethertype; the tag is only in the
//! packet's metadata, which the kfunc `bpf_xdp_metadata_rx_vlan_tag` (kernel 6.8+) reads, and
//! only for a device-bound program (`prog_ifindex`, `BPF_F_XDP_DEV_BOUND_ONLY`).
//!
//! aya 0.14 can do neither (no kfunc relocation, aya-rs/aya#432; no `prog_ifindex`), so this
//! file loads `aoe_classifier_native` itself: the object's instructions relocated against the
//! maps aya created for the generic program (they share every map), the marker call
//! (`KFUNC_RX_VLAN_TAG_MARKER`) turned into the kfunc call, BPF_PROG_LOAD, and a bpf_link to
//! attach it. Where the kernel has no such kfunc, the marker becomes "no metadata", and the
//! loader's other measure (`vlan_tags`: receive VLAN stripping off) keeps tags in the frame.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{anyhow, bail, Context, Result};
use aoe_common::maps::{KFUNC_RX_VLAN_TAG_MARKER, PROG_CLASSIFIER_NATIVE};
use aya::maps::Map;
use aya::Ebpf;
use aya_obj::btf::{Btf, BtfKind};
use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type, BPF_F_XDP_DEV_BOUND_ONLY,
    BPF_F_XDP_HAS_FRAGS, BPF_PSEUDO_KFUNC_CALL, XDP_FLAGS_DRV_MODE,
};
use aya_obj::Object;

/// The kfunc the marker stands for.
const KFUNC: &str = "bpf_xdp_metadata_rx_vlan_tag";
/// BPF_JMP | BPF_CALL.
const CALL: u8 = 0x85;
/// BPF_ALU64 | BPF_MOV | BPF_K: what the marker becomes without the kfunc (r0 = -EOPNOTSUPP,
/// which the program reads as "no tag in the metadata").
const MOV64_IMM: u8 = 0xb7;

/// The native program of one interface, and its attachment while attached.
pub struct Native {
    prog: OwnedFd,
    link: Option<OwnedFd>,
    /// Does the program read VLAN tags from the metadata (the kernel has the kfunc)?
    pub vlan_metadata: bool,
}

impl Native {
    /// Load `aoe_classifier_native` for interface `ifindex`, sharing `maps` (those aya
    /// created for the generic program from `object`, see `maps_of`).
    pub fn load(maps: &[(String, OwnedFd)], object: &[u8], ifindex: u32) -> Result<Native> {
        let mut obj = Object::parse(object).context("parsing the eBPF object")?;
        let defined = obj.maps.clone();
        let fds = defined
            .iter()
            .map(|(name, m)| {
                let fd = maps
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, fd)| fd.as_raw_fd())
                    .ok_or_else(|| anyhow!("map {name} of the eBPF object was not created"))?;
                Ok((name.as_str(), fd, m))
            })
            .collect::<Result<Vec<_>>>()?;
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(fds.into_iter(), &text)
            .context("relocating the native program's maps")?;
        obj.relocate_calls(&text)
            .context("relocating the native program's calls")?;
        let prog = obj
            .programs
            .get(PROG_CLASSIFIER_NATIVE)
            .ok_or_else(|| anyhow!("program {PROG_CLASSIFIER_NATIVE} missing"))?;
        let mut insns = obj.functions[&prog.function_key()].instructions.clone();
        let kfunc = Btf::from_sys_fs()
            .ok()
            .and_then(|btf| btf.id_by_type_name_kind(KFUNC, BtfKind::Func).ok());
        if patch_marker(&mut insns, kfunc) == 0 {
            bail!(
                "{PROG_CLASSIFIER_NATIVE} does not ask for VLAN tags (a build without the check?)"
            );
        }
        let license = prog.license.clone();
        let fd = prog_load(&insns, &license, ifindex)
            .with_context(|| format!("the kernel refused {PROG_CLASSIFIER_NATIVE}"))?;
        Ok(Native {
            prog: fd,
            link: None,
            vlan_metadata: kfunc.is_some(),
        })
    }

    /// Attach in native (driver) mode to `ifindex`.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        // SAFETY: bpf_attr is plain old data; zero is "unset" for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the link_create member of the union, the one BPF_LINK_CREATE reads.
        unsafe {
            let l = &mut attr.link_create;
            l.__bindgen_anon_1.prog_fd = self.prog.as_raw_fd() as u32;
            l.__bindgen_anon_2.target_ifindex = ifindex;
            l.attach_type = bpf_attach_type::BPF_XDP as u32;
            l.flags = XDP_FLAGS_DRV_MODE;
        }
        let link = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
        self.link = Some(link);
        Ok(())
    }

    /// Take it off its interface (the link's last descriptor goes).
    pub fn detach(&mut self) {
        self.link = None;
    }

    pub fn attached(&self) -> bool {
        self.link.is_some()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

/// A descriptor of each map of `bpf`, by name: taken before aya-log takes its map away.
pub fn maps_of(bpf: &Ebpf) -> Result<Vec<(String, OwnedFd)>> {
    bpf.maps()
        .filter_map(|(name, m)| map_fd(m).map(|fd| (name, fd)))
        .map(|(name, fd)| {
            // SAFETY: the map's descriptor is open for as long as `bpf` lives, which covers
            // this call; the duplicate is ours.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
            Ok((name.to_string(), fd))
        })
        .collect()
}

/// The descriptor of one of aya's maps.
fn map_fd(m: &Map) -> Option<RawFd> {
    let data = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerfEventArray(d)
        | Map::RingBuf(d)
        | Map::XskMap(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Turn every marker call into the kfunc call (BTF id `kfunc` in vmlinux), or into
/// "r0 = -EOPNOTSUPP" without one; returns how many there were.
fn patch_marker(insns: &mut [bpf_insn], kfunc: Option<u32>) -> usize {
    let mut n = 0;
    for i in insns.iter_mut() {
        if i.code != CALL || i.src_reg() != 0 || i.imm as u32 != KFUNC_RX_VLAN_TAG_MARKER {
            continue;
        }
        n += 1;
        match kfunc {
            Some(id) => {
                i.set_src_reg(BPF_PSEUDO_KFUNC_CALL as u8);
                i.off = 0;
                i.imm = id as i32;
            }
            None => {
                i.code = MOV64_IMM;
                i.set_dst_reg(0);
                i.imm = -libc::EOPNOTSUPP;
            }
        }
    }
    n
}

/// BPF_PROG_LOAD of an XDP program with fragments, bound to `ifindex`; when the verifier
/// refuses it, the end of its log is in the error.
fn prog_load(insns: &[bpf_insn], license: &CString, ifindex: u32) -> Result<OwnedFd> {
    let e = match prog_load_with_log(insns, license, ifindex, &mut []) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    // Again with a log (a whole one is ~10 MiB; the kernel keeps its end when it is longer).
    let mut log = vec![0u8; 1 << 20];
    let _ = prog_load_with_log(insns, license, ifindex, &mut log);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    Err(anyhow!(
        "{e} (verifier: {})",
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

fn prog_load_with_log(
    insns: &[bpf_insn],
    license: &CString,
    ifindex: u32,
    log: &mut [u8],
) -> std::io::Result<OwnedFd> {
    let name = b"aoe_classifier\0";
    // SAFETY: bpf_attr is plain old data; zero is "unset" for every field.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the prog-load member of the union, the one BPF_PROG_LOAD reads; the
    // pointers stay valid until the call returns.
    unsafe {
        let p = &mut attr.__bindgen_anon_3;
        p.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
        p.expected_attach_type = bpf_attach_type::BPF_XDP as u32;
        p.insns = insns.as_ptr() as u64;
        p.insn_cnt = insns.len() as u32;
        p.license = license.as_ptr() as u64;
        p.prog_flags = BPF_F_XDP_HAS_FRAGS | BPF_F_XDP_DEV_BOUND_ONLY;
        p.prog_ifindex = ifindex;
        for (d, s) in p.prog_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        if !log.is_empty() {
            p.log_level = 1;
            p.log_buf = log.as_mut_ptr() as u64;
            p.log_size = log.len() as u32;
        }
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// The bpf() syscall returning a new descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid command and attribute union of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we own alone.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(imm: u32) -> bpf_insn {
        // SAFETY: bpf_insn is plain old data.
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = CALL;
        i.imm = imm as i32;
        i
    }

    #[test]
    fn only_the_marker_is_patched() {
        let mut insns = [call(1), call(KFUNC_RX_VLAN_TAG_MARKER), call(0x33)];
        assert_eq!(patch_marker(&mut insns, Some(65610)), 1);
        assert_eq!((insns[0].src_reg(), insns[0].imm), (0, 1));
        assert_eq!((insns[1].src_reg(), insns[1].imm), (2, 65610));
        assert_eq!((insns[2].src_reg(), insns[2].imm), (0, 0x33));
        let mut insns = [call(KFUNC_RX_VLAN_TAG_MARKER)];
        assert_eq!(patch_marker(&mut insns, None), 1);
        assert_eq!(
            (insns[0].code, insns[0].dst_reg(), insns[0].imm),
            (MOV64_IMM, 0, -libc::EOPNOTSUPP)
        );
    }
}
