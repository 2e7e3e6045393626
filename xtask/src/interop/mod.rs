//! `cargo xtask interop`: initiators we did not write, against `aoe-ctl export`.
//!
//! The Linux kernel's aoe driver (Debian's kernel in QEMU) at MTU 1500 and 9000, with Debian's
//! vblade as the control (if vblade fails, the harness is broken, not the target), the capture
//! of every run read by tshark, and iPXE booting a machine from an export.

mod assets;
mod capture;
mod fault;
mod guest;
mod ipxe;
mod linux;
mod many;
mod resize;
mod scale;
mod target;

use anyhow::{bail, Result};

use target::Kind;

const MTUS: [u32; 2] = [1500, 9000];

#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Run only this case: vblade-1500, aoe-ctl-1500, vblade-9000, aoe-ctl-9000, ipxe,
    /// resize, scale-vblade, scale-aoe-ctl (ends with the corrupt control), discovery-4096,
    /// power-cut (ext4 through a power cut of the storage) or power-cut-write-back (its
    /// control).
    #[arg(long)]
    pub only: Option<String>,
    /// Extra options for `aoe-ctl export` (e.g. "--buffers 64").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub export_args: String,
}

impl Options {
    fn wants(&self, case: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == case)
    }
}

/// Why interop cannot run on this machine, if it cannot.
fn unavailable() -> Option<String> {
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "tshark",
        "e2fsck",
        "debugfs",
        "vblade",
    ] {
        if assets::which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (cargo xtask setup installs it)"
            ));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for network namespaces".into());
    }
    None
}

/// Run everything; `Ok(false)` when it had to be skipped (and said why).
pub fn run(o: &Options) -> Result<bool> {
    if let Some(why) = unavailable() {
        println!("interop: SKIPPED: {why}");
        return Ok(false);
    }
    let assets = match assets::prepare() {
        Ok(a) => a,
        Err(e) => {
            println!("interop: SKIPPED: guest kernel or iPXE unavailable: {e:#}");
            return Ok(false);
        }
    };
    println!(
        "interop: guest kernel {}, iPXE {}",
        assets.kernel_package, assets.ipxe_version
    );
    let mut broken_harness = Vec::new();
    let mut target_failures = Vec::new();
    for mtu in MTUS {
        for kind in [Kind::Vblade, Kind::AoeCtl] {
            if !o.wants(&format!("{}-{mtu}", kind.name())) {
                continue;
            }
            let o = linux::run(&assets, kind, mtu, &o.export_args)?;
            let mut failures = o.failures.clone();
            // The capture must be clean for ours; vblade's is reported, not judged.
            if let Some(c) = &o.capture {
                if kind == Kind::AoeCtl && !c.clean() {
                    failures.push(format!("capture not clean: {c:?}"));
                }
            }
            let verdict = if failures.is_empty() { "PASS" } else { "FAIL" };
            println!(
                "interop: linux aoe.ko vs {:8} MTU {:5}: {verdict}  write {:>6} MB/s  read {:>6} MB/s  \
                 payload {} B/frame  capture {}  ({:.0} s)",
                kind.name(),
                mtu,
                fmt(o.write_mbs),
                fmt(o.read_mbs),
                o.payload.map_or("?".into(), |p| p.to_string()),
                o.capture.as_ref().map_or("?".into(), |c| format!(
                    "{} requests/{} responses, {} malformed, {} unanswered",
                    c.requests, c.responses, c.malformed, c.unanswered
                )),
                o.seconds
            );
            for f in &failures {
                println!("interop:     {f}");
            }
            if !failures.is_empty() {
                match kind {
                    Kind::Vblade => broken_harness.push(format!("MTU {mtu}: {}", failures[0])),
                    Kind::AoeCtl => target_failures.push(format!("MTU {mtu}: {}", failures[0])),
                }
            }
        }
    }
    match o
        .wants("ipxe")
        .then(|| ipxe::run(&assets, Kind::AoeCtl, &o.export_args))
    {
        None => {}
        Some(Ok(o)) => {
            println!(
                "interop: iPXE sanboot aoe:e1.2 vs aoe-ctl: {}  ({:.1} s to the boot sector's marker)",
                if o.failures.is_empty() { "PASS" } else { "FAIL" },
                o.seconds
            );
            for f in &o.failures {
                println!("interop:     {f}");
            }
            if let Some(f) = o.failures.first() {
                target_failures.push(format!("iPXE: {f}"));
            }
        }
        Some(Err(e)) => target_failures.push(format!("iPXE: {e:#}")),
    }
    if o.wants("resize") {
        match resize::run(&assets) {
            Ok(r) => {
                println!(
                    "interop: grow e1.2 under a mounted ext4 ({} -> {} -> {} MiB) vs aoe-ctl: {}  ({:.0} s)",
                    resize::START_MB,
                    resize::GROW1_MB,
                    resize::GROW2_MB,
                    if r.failures.is_empty() { "PASS" } else { "FAIL" },
                    r.seconds
                );
                for n in &r.notes {
                    println!("interop:     {n}");
                }
                for f in &r.failures {
                    println!("interop:     {f}");
                }
                if let Some(f) = r.failures.first() {
                    target_failures.push(format!("resize: {f}"));
                }
            }
            Err(e) => target_failures.push(format!("resize: {e:#}")),
        }
    }
    scale_out(o, &assets, &mut broken_harness, &mut target_failures)?;
    fault::cases(o, &assets, &mut broken_harness, &mut target_failures)?;
    if !broken_harness.is_empty() {
        bail!(
            "the harness is broken: the control (vblade) failed too, so no verdict on aoe-ctl: {}",
            broken_harness.join("; ")
        );
    }
    if !target_failures.is_empty() {
        bail!(
            "aoe-ctl failed interop (the control passed): {}",
            target_failures.join("; ")
        );
    }
    println!("interop: all passed");
    Ok(true)
}

/// Exports the many-exports node serves to the guest.
const GUEST_EXPORTS: usize = 256;
/// Exports our own initiator discovers from one daemon.
const DISCOVERY_EXPORTS: usize = 4096;

/// The scale-out cases: vblade as the control, then aoe-ctl, whose run ends with the corrupt
/// case (a flipped bit md's check must find); then our initiator against one daemon's 4,096
/// exports.
fn scale_out(
    o: &Options,
    assets: &assets::Assets,
    broken_harness: &mut Vec<String>,
    target_failures: &mut Vec<String>,
) -> Result<()> {
    use scale::Target;
    for target in [Target::Vblade, Target::AoeCtl] {
        if !o.wants(&format!("scale-{}", target.name())) {
            continue;
        }
        let many = if target == Target::AoeCtl {
            GUEST_EXPORTS
        } else {
            0
        };
        let r = scale::run(assets, target, many)?;
        for (case, figures) in &r.passed {
            println!(
                "interop: scale-out {case:9} vs {:8}: guest PASS  {figures}",
                target.name()
            );
        }
        let verdict = if r.failures.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
        println!(
            "interop: scale-out md+LVM over 5 nodes vs {:8}: {verdict}  ({:.0} s)",
            target.name(),
            r.seconds
        );
        for n in &r.notes {
            println!("interop:     {n}");
        }
        for f in &r.failures {
            println!("interop:     {f}");
        }
        let Some(first) = r.failures.first() else {
            continue;
        };
        // A flipped bit nobody noticed: the checks cannot fail, so no verdict on anything.
        let blind = r.failures.iter().find(|f| f.starts_with("guest: corrupt:"));
        match (target, blind) {
            (_, Some(f)) => broken_harness.push(format!("scale-out: {f}")),
            (Target::Vblade, None) => broken_harness.push(format!("scale-out: {first}")),
            (Target::AoeCtl, None) => target_failures.push(format!("scale-out: {first}")),
        }
    }
    if o.wants(&format!("discovery-{DISCOVERY_EXPORTS}")) {
        match many::run(DISCOVERY_EXPORTS) {
            Ok(m) => println!("interop: {m}"),
            Err(e) => {
                target_failures.push(format!("discovery of {DISCOVERY_EXPORTS} exports: {e:#}"))
            }
        }
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.1}"))
}
