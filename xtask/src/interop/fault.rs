//! The fault lab, as the initiator sees it: ext4 in a Linux guest on an aoe-ctl export
//! whose image lives on faultfs (docs/fault-lab.md). The guest (fault-init.sh) writes and
//! fsyncs files one after another; on its request the host kills the target, cuts the
//! power of its storage (faultfs drops what was not synced), mounts what survived and starts
//! the target again; the guest goes on, then runs e2fsck and reads every fsync'd file back.
//! Durable (the default) must keep all of them with a clean filesystem; `--write-back` is
//! the control that must lose some.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_integration::{spawn_in, FaultFs, Proc, TapLab};

use super::assets::Assets;
use super::guest::{self, Boot, Step};

const IMAGE_MB: u64 = 64;
const INIT: &str = include_str!("fault-init.sh");
/// Files fsync'd before the cut, and after the target is back.
const BEFORE: u32 = 6;
const AFTER: u32 = 6;
const FILE_KB: u32 = 256;
/// The driver waits this long for a silent target: longer than the outage.
const DEADSECS: u32 = 60;

pub struct Outcome {
    pub failures: Vec<String>,
    /// e2fsck's exit status in the guest (0: clean).
    pub fsck: Option<i32>,
    pub fsck_said: String,
    /// Files fsync'd, and those intact after the cut.
    pub fsynced: Option<u32>,
    pub intact: Option<u32>,
    pub not_intact: String,
    /// Writes the cut dropped (not synced when the power went).
    pub dropped_writes: u64,
    pub seconds: f64,
}

impl Outcome {
    /// Everything fsync'd is there and the filesystem is clean.
    pub fn kept_everything(&self) -> bool {
        self.fsck == Some(0) && self.fsynced.is_some() && self.intact == self.fsynced
    }
}

/// The storage node: faultfs over the image, the target on its file.
struct Node {
    /// The lab's namespace and tap.
    ns: String,
    tap: String,
    backing: PathBuf,
    mnt: PathBuf,
    fs: Option<FaultFs>,
    target: Option<Proc>,
    export_args: Vec<String>,
    dropped: u64,
}

impl Node {
    fn start(&mut self) -> Result<()> {
        let fs = FaultFs::mount(&self.backing, &self.mnt)?;
        let file = fs.file.to_str().context("image path")?.to_string();
        self.fs = Some(fs);
        let mut args = vec![
            "export", "--shelf", "1", "--slot", "2", "--iface", &self.tap,
        ];
        args.extend(self.export_args.iter().map(String::as_str));
        args.push(&file);
        self.target = Some(spawn_in(&self.ns, &args)?);
        Ok(())
    }

    /// The power cut: the target dies first (SIGKILL: no last sync), then the storage
    /// loses what it had not synced.
    fn cut(&mut self) -> Result<()> {
        if let Some(mut t) = self.target.take() {
            let _ = t.child.kill();
            let _ = t.child.wait();
        }
        let mut fs = self.fs.take().context("no faultfs mounted")?;
        self.dropped += fs.cut_power()?.dropped_writes;
        fs.unmount()
    }

    fn stop(&mut self) {
        if let Some(t) = self.target.take() {
            let _ = t.stop();
        }
        if let Some(mut fs) = self.fs.take() {
            let _ = fs.unmount();
        }
    }
}

/// The scale-out guest's initramfs with fault-init.sh added as /init-fault (a second cpio
/// archive after the first: the kernel unpacks both).
fn initramfs(assets: &Assets, dir: &Path) -> Result<PathBuf> {
    let stage = dir.join("fault-initramfs");
    std::fs::create_dir_all(&stage)?;
    let init = stage.join("init-fault");
    std::fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let extra = Command::new("sh")
        .args([
            "-c",
            "echo init-fault | busybox cpio -o -H newc 2>/dev/null",
        ])
        .current_dir(&stage)
        .output()
        .context("busybox cpio")?;
    if !extra.status.success() || extra.stdout.is_empty() {
        bail!("building the fault guest's cpio archive failed");
    }
    let mut all = std::fs::read(&assets.scale_initramfs)?;
    // Archives start on a 4-byte boundary.
    all.resize(all.len().next_multiple_of(4), 0);
    all.extend_from_slice(&extra.stdout);
    let out = dir.join("initramfs-fault.cpio");
    std::fs::write(&out, all)?;
    Ok(out)
}

pub fn run(assets: &Assets, export_args: &[&str]) -> Result<Outcome> {
    let lab = TapLab::new(1500)?;
    let backing = lab.dir.join("disk.img");
    std::fs::File::create(&backing)?.set_len(IMAGE_MB << 20)?;
    let initrd = initramfs(assets, &lab.dir)?;
    let mnt = lab.dir.join("mnt");
    let node = RefCell::new(Node {
        ns: lab.ns.clone(),
        tap: lab.tap.clone(),
        backing: backing.clone(),
        mnt,
        fs: None,
        target: None,
        export_args: export_args.iter().map(|s| s.to_string()).collect(),
        dropped: 0,
    });
    node.borrow_mut().start()?;
    let append = format!(
        "console=ttyS0 quiet panic=-1 rdinit=/init-fault target=e1.2 deadsecs={DEADSECS} \
         before={BEFORE} after={AFTER} file_kb={FILE_KB}"
    );
    let errors = RefCell::new(Vec::new());
    let started = std::time::Instant::now();
    let serial = guest::run(
        &lab,
        &Boot {
            kernel: &assets.kernel,
            initrd: Some(&initrd),
            append,
            memory: "512M",
            capture: None,
            extra_taps: &[],
        },
        Duration::from_secs(400),
        |l| {
            if l.starts_with("AOE-GUEST") {
                println!("interop:   [{:6.1} s] {l}", started.elapsed().as_secs_f64());
            }
            if let Some(req) = l.strip_prefix("AOE-GUEST HOST ") {
                let (k, verb) = req.split_once(' ').unwrap_or((req, ""));
                let mut n = node.borrow_mut();
                let done = match verb.trim() {
                    "cut" => n.cut().and_then(|()| n.start()),
                    other => Err(anyhow::anyhow!("unknown request {other:?}")),
                };
                let how = match done {
                    Ok(()) => "ok",
                    Err(e) => {
                        errors.borrow_mut().push(format!("host {verb}: {e:#}"));
                        "error"
                    }
                };
                return Step::Answer(format!("ACK {k} {how}"));
            }
            if l.starts_with("AOE-GUEST DONE") || l.starts_with("AOE-GUEST FAIL") {
                Step::Done
            } else {
                Step::Go
            }
        },
    )?;
    let mut node = node.into_inner();
    node.stop();
    let mut o = Outcome {
        failures: errors.into_inner(),
        fsck: None,
        fsck_said: String::new(),
        fsynced: None,
        intact: None,
        not_intact: String::new(),
        dropped_writes: node.dropped,
        seconds: serial.elapsed.as_secs_f64(),
    };
    let mut done = false;
    for l in &serial.lines {
        let Some(l) = l.strip_prefix("AOE-GUEST ") else {
            continue;
        };
        if let Some(why) = l.strip_prefix("FAIL ") {
            o.failures.push(format!("guest: {why}"));
        } else if let Some(f) = l.strip_prefix("fsck ") {
            let (rc, said) = f.split_once(' ').unwrap_or((f, ""));
            o.fsck = rc.parse().ok();
            o.fsck_said = said.trim_end_matches('|').to_string();
        } else if let Some(f) = l.strip_prefix("intact ") {
            // "K of N; names"
            let (counts, names) = f.split_once(';').unwrap_or((f, ""));
            let mut w = counts.split_whitespace();
            o.intact = w.next().and_then(|v| v.parse().ok());
            o.fsynced = w.nth(1).and_then(|v| v.parse().ok());
            o.not_intact = names.trim().to_string();
        } else if l == "DONE" {
            done = true;
        }
    }
    if !done && o.failures.is_empty() {
        let tail: Vec<&str> = serial
            .lines
            .iter()
            .rev()
            .take(5)
            .map(String::as_str)
            .collect();
        o.failures.push(format!(
            "guest did not finish{} (last lines: {tail:?})",
            if serial.timed_out { " in time" } else { "" }
        ));
    }
    Ok(o)
}

/// The interop step's power-cut cases: `--write-back` (the control, which must lose what the
/// guest fsync'd, or the case cannot fail), then the default durable export.
pub fn cases(
    o: &super::Options,
    assets: &Assets,
    broken_harness: &mut Vec<String>,
    target_failures: &mut Vec<String>,
) -> Result<()> {
    for (case, args) in [
        ("power-cut-write-back", &["--write-back"][..]),
        ("power-cut", &[][..]),
    ] {
        if !o.wants(case) {
            continue;
        }
        let r = run(assets, args)?;
        let write_back = !args.is_empty();
        let kept = r.kept_everything();
        let verdict = match (write_back, kept, r.failures.is_empty()) {
            (_, _, false) => "FAIL",
            (false, true, true) | (true, false, true) => "PASS",
            _ => "FAIL",
        };
        println!(
            "interop: {case:20} ext4 through a power cut of the storage: {verdict}  \
             {} of {} fsync'd files intact, e2fsck {} {}, {} unsynced writes dropped at the cut  ({:.0} s)",
            r.intact.map_or("?".into(), |v| v.to_string()),
            r.fsynced.map_or("?".into(), |v| v.to_string()),
            r.fsck.map_or("?".into(), |v| v.to_string()),
            if r.fsck_said.is_empty() { "(clean)".into() } else { format!("({})", r.fsck_said) },
            r.dropped_writes,
            r.seconds
        );
        if !r.not_intact.is_empty() {
            println!("interop:     not intact: {}", r.not_intact);
        }
        for f in &r.failures {
            println!("interop:     {f}");
        }
        let first = r.failures.first().cloned();
        match (write_back, first) {
            (true, Some(f)) => broken_harness.push(format!("{case}: {f}")),
            (true, None) if kept => broken_harness.push(format!(
                "{case}: --write-back kept every fsync'd file through the power cut: the case \
                 cannot see a loss"
            )),
            (false, Some(f)) => target_failures.push(format!("{case}: {f}")),
            (false, None) if !kept => target_failures.push(format!(
                "{case}: fsync'd files lost or the filesystem damaged through a power cut \
                 (e2fsck {:?}, {:?} of {:?} intact)",
                r.fsck, r.intact, r.fsynced
            )),
            _ => {}
        }
    }
    Ok(())
}
