//! Scale-out with the Linux initiator: md RAID and LVM in the guest over five target nodes
//! (each its own namespace and process, killing it is losing the node) and a node with many
//! exports, all on one bridge with the guest's tap; one node also on a second bridge, the
//! guest's second NIC, for multipath. The guest (scale-init.sh) asks for node kills,
//! restarts and link changes on its serial line; the host does them and judges the counters.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aoe_integration::{aoe_ctl, aoe_lab, spawn_in_env, spawn_lab_in, Proc, TapLab};

use super::assets::Assets;
use super::guest::{self, Boot, Step};

const NODE_MB: u64 = 32;
const MANY_MB: u64 = 1;
/// Seconds the guest's driver waits for a silent target before failing its I/O.
const DEADSECS: u32 = 5;
/// The node md loses, and the one whose image the corrupt case flips a bit in.
const VICTIM: &str = "e5.2";
/// The node answering on both segments.
const MULTIPATH: &str = "e7.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    AoeCtl,
    Vblade,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::AoeCtl => "aoe-ctl",
            Target::Vblade => "vblade",
        }
    }
}

pub struct Outcome {
    /// (case, MB/s and seconds as the guest said) for every case that passed in the guest.
    pub passed: Vec<(String, String)>,
    pub failures: Vec<String>,
    /// What the host found (paths, the flipped bit); the guest's own lines are printed as
    /// they come.
    pub notes: Vec<String>,
    pub seconds: f64,
}

struct Node {
    name: String,
    ns: String,
    /// (shelf, slot, image) of each export.
    exports: Vec<(u16, u8, PathBuf)>,
    /// Interfaces in the node's namespace it serves on.
    ifaces: Vec<String>,
    dir: PathBuf,
    running: Vec<Running>,
}

enum Running {
    Ours(Proc),
    Vblade(Child),
}

impl Running {
    fn kill(self) {
        match self {
            // SIGKILL: the node is lost, nothing gets to clean up.
            Running::Ours(mut p) => {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            Running::Vblade(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn stop(self) {
        match self {
            Running::Ours(p) => {
                let _ = p.stop();
            }
            Running::Vblade(c) => Running::Vblade(c).kill(),
        }
    }
}

impl Node {
    fn env(&self) -> Vec<String> {
        vec![
            format!("AOE_BPFFS={}", self.dir.join("bpf").display()),
            format!("AOE_RUN_DIR={}", self.dir.join("run").display()),
        ]
    }

    fn start(&mut self, target: Target) -> Result<()> {
        match target {
            Target::AoeCtl => {
                let mut toml = String::new();
                let ifaces: Vec<String> = self.ifaces.iter().map(|i| format!("{i:?}")).collect();
                for (shelf, slot, image) in &self.exports {
                    toml.push_str(&format!(
                        "[[export]]\nshelf = {shelf}\nslot = {slot}\ninterfaces = [{}]\npath = {:?}\n",
                        ifaces.join(", "),
                        image.display().to_string()
                    ));
                }
                let cfg = self.dir.join("exports.toml");
                std::fs::write(&cfg, toml)?;
                let p = spawn_in_env(
                    &self.ns,
                    &self.env(),
                    &["daemon", "--config", cfg.to_str().unwrap()],
                )
                .with_context(|| format!("starting node {}", self.name))?;
                self.running.push(Running::Ours(p));
            }
            Target::Vblade => {
                for (shelf, slot, image) in &self.exports {
                    for i in &self.ifaces {
                        let c = Command::new("ip")
                            .args(["netns", "exec", &self.ns, "vblade"])
                            .args([&shelf.to_string(), &slot.to_string(), i])
                            .arg(image)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .context("starting vblade")?;
                        self.running.push(Running::Vblade(c));
                    }
                }
                // vblade prints nothing when ready; its socket is open within milliseconds.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Ok(())
    }

    fn kill(&mut self) {
        for r in self.running.drain(..) {
            r.kill();
        }
    }

    fn stop(&mut self) {
        for r in self.running.drain(..) {
            r.stop();
        }
    }

    /// `handled_user` of each interface, from `aoe-ctl stats --json`.
    /// Frames each interface's workers took, live from the daemon (`stats --prometheus`
    /// asks it over its control socket; the pins lag by the daemon's 500 ms tick), once
    /// they stopped moving: the guest waits for the acknowledgement, so nothing new comes.
    fn settled_handled(&self) -> Result<BTreeMap<String, u64>> {
        let mut last = self.handled()?;
        let give_up = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.handled()?;
            if now == last {
                return Ok(now);
            }
            if std::time::Instant::now() > give_up {
                bail!("the counters of {} never settled: {now:?}", self.name);
            }
            last = now;
        }
    }

    fn handled(&self) -> Result<BTreeMap<String, u64>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "env"])
            .args(self.env())
            .arg(aoe_ctl())
            .args(["stats", "--prometheus"])
            .output()?;
        if !out.status.success() {
            bail!(
                "aoe-ctl stats --prometheus on {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // aoe_worker_frames_total{interface="n0"} 1234
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("aoe_worker_frames_total{interface=\""))
            .filter_map(|l| {
                let (iface, rest) = l.split_once('"')?;
                let v = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((iface.to_string(), v as u64))
            })
            .collect())
    }
}

/// A node to build: its name, the shelf.slot of each export, how many segments it is on.
type Planned = (&'static str, Vec<(u16, u8)>, usize);

/// The segment: the guest's taps on two bridges in one namespace, each node's veths on them.
struct Segment {
    tap_b: String,
    nodes: Vec<Node>,
    /// The XDP pass program on the bridge side of every veth (native XDP_TX from a node's
    /// veth is only delivered to a peer with an XDP program).
    _peers: Vec<Proc>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
            let bpf = n.dir.join("bpf");
            let _ = Command::new("umount").arg(&bpf).status();
            let _ = ip(&["netns", "del", &n.ns]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Segment {
    fn new(lab: &TapLab, target: Target, many: usize) -> Result<Segment> {
        let tap_b = format!("{}b", lab.tap);
        ip(&["-n", &lab.ns, "tuntap", "add", "dev", &tap_b, "mode", "tap"])?;
        for (br, tap) in [("bra", lab.tap.as_str()), ("brb", tap_b.as_str())] {
            ip(&["-n", &lab.ns, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &lab.ns, "link", "set", br, "up"])?;
            ip(&["-n", &lab.ns, "link", "set", tap, "master", br, "up"])?;
        }
        let mut seg = Segment {
            tap_b,
            nodes: Vec::new(),
            _peers: Vec::new(),
        };
        let mut plan: Vec<Planned> = vec![
            ("e5.1", vec![(5, 1)], 1),
            ("e5.2", vec![(5, 2)], 1),
            ("e5.3", vec![(5, 3)], 1),
            ("e7.1", vec![(7, 1)], 1),
            (MULTIPATH, vec![(7, 2)], 2),
        ];
        if many > 0 {
            // Shelves 10 and 11, half each: one shelf holds 255 slots.
            let addrs = (0..many)
                .map(|i| (10 + (i % 2) as u16, (i / 2) as u8))
                .collect();
            plan.push(("many", addrs, 1));
        }
        for (k, (name, addrs, links)) in plan.into_iter().enumerate() {
            let ns = format!("{}-n{k}", lab.ns);
            let dir = lab.dir.join(name);
            std::fs::create_dir_all(dir.join("run"))?;
            std::fs::create_dir_all(dir.join("bpf"))?;
            ip(&["netns", "add", &ns])?;
            let mut node = Node {
                name: name.to_string(),
                ns: ns.clone(),
                exports: Vec::new(),
                ifaces: Vec::new(),
                dir: dir.clone(),
                running: Vec::new(),
            };
            let mb = if name == "many" { MANY_MB } else { NODE_MB };
            for (shelf, slot) in addrs {
                let image = dir.join(format!("e{shelf}.{slot}.img"));
                std::fs::File::create(&image)?.set_len(mb << 20)?;
                node.exports.push((shelf, slot, image));
            }
            for l in 0..links {
                let inner = format!("n{l}");
                let outer = format!("v{k}{l}");
                ip(&[
                    "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                    "netns", &lab.ns,
                ])?;
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
                let br = if l == 0 { "bra" } else { "brb" };
                ip(&["-n", &lab.ns, "link", "set", &outer, "master", br, "up"])?;
                for (n, d) in [(&ns, &inner), (&lab.ns, &outer)] {
                    let _ = Command::new("ip")
                        .args(["netns", "exec", n, "sysctl", "-qw"])
                        .arg(format!("net.ipv6.conf.{d}.disable_ipv6=1"))
                        .status();
                }
                seg._peers
                    .push(spawn_lab_in(&lab.ns, &["peer", "--iface", &outer])?);
                node.ifaces.push(inner);
            }
            let ok = Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(dir.join("bpf"))
                .status()?
                .success();
            if !ok {
                bail!("mounting a bpffs for node {name}");
            }
            node.start(target)?;
            seg.nodes.push(node);
        }
        Ok(seg)
    }

    fn node(&mut self, name: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("the guest named node {name}, there is none"))
    }
}

/// Host side of one `AOE-GUEST HOST verb arg` request.
struct Host {
    target: Target,
    seg: Segment,
    /// Multipath: per-interface `handled_user` at each `stats` label.
    stats: Vec<(String, BTreeMap<String, u64>)>,
    errors: Vec<String>,
    flipped: Option<String>,
}

impl Host {
    fn act(&mut self, verb: &str, arg: &str) -> Result<()> {
        let target = self.target;
        match verb {
            "kill" => self.seg.node(arg)?.kill(),
            "start" => self.seg.node(arg)?.start(target)?,
            "restart" => {
                let n = self.seg.node(arg)?;
                n.stop();
                n.start(target)?;
            }
            "linkdown" | "linkup" => {
                let n = self.seg.node(arg)?;
                let up = if verb == "linkup" { "up" } else { "down" };
                ip(&["-n", &n.ns, "link", "set", "n1", up])?;
            }
            "stats" if target != Target::Vblade => {
                let s = self.seg.node(MULTIPATH)?.settled_handled()?;
                self.stats.push((arg.to_string(), s));
            }
            "flip" => {
                let n = self.seg.node(arg)?;
                let image = n.exports[0].2.clone();
                // Past md's superblock and bitmap: the first sector holding data.
                let out = Command::new(aoe_lab())
                    .args(["flip-bit", "--skip-mib", "4"])
                    .arg(&image)
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "aoe-lab flip-bit: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                self.flipped = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            _ => {}
        }
        Ok(())
    }

    /// Traffic reached both of the multipath node's interfaces between two stats labels.
    fn both_paths(&self, from: &str, to: &str) -> Option<String> {
        let at = |l: &str| self.stats.iter().find(|(k, _)| k == l).map(|(_, v)| v);
        let (a, b) = (at(from)?, at(to)?);
        let delta: Vec<(String, u64)> = b
            .iter()
            .map(|(i, v)| (i.clone(), v - a.get(i).copied().unwrap_or(0)))
            .collect();
        let shown = delta
            .iter()
            .map(|(i, d)| format!("{i} +{d}"))
            .collect::<Vec<_>>()
            .join(", ");
        (delta.len() < 2 || delta.iter().any(|(_, d)| *d == 0))
            .then_some(shown.clone())
            .or(Some(format!("ok: {shown}")))
    }
}

pub fn run(assets: &Assets, target: Target, many: usize) -> Result<Outcome> {
    let lab = TapLab::new(1500)?;
    let seg = Segment::new(&lab, target, many)?;
    // The control proves the harness on the riskiest case (a node lost and re-added); all of
    // it with vblade would double the step's TCG time. The corrupt case runs last: it leaves
    // md0 inconsistent on purpose.
    let cases = match target {
        Target::Vblade => "lost",
        Target::AoeCtl if many > 0 => "lost,rolling,multipath,many,corrupt",
        Target::AoeCtl => "lost,rolling,multipath,corrupt",
    };
    let append =
        format!("console=ttyS0 quiet panic=-1 deadsecs={DEADSECS} many={many} cases={cases}");
    let extra = [seg.tap_b.clone()];
    let started = std::time::Instant::now();
    let host = RefCell::new(Host {
        target,
        seg,
        stats: Vec::new(),
        errors: Vec::new(),
        flipped: None,
    });
    let serial = guest::run(
        &lab,
        &Boot {
            kernel: &assets.kernel,
            initrd: Some(&assets.scale_initramfs),
            append,
            memory: "512M",
            capture: None,
            extra_taps: &extra,
        },
        Duration::from_secs(600),
        |l| {
            // As it happens: a run takes minutes, and the timings belong in the log.
            if l.starts_with("AOE-GUEST") {
                println!("interop:   [{:6.1} s] {l}", started.elapsed().as_secs_f64());
            }
            if let Some(req) = l.strip_prefix("AOE-GUEST HOST ") {
                // "<n> <verb> <arg>": done, then acknowledged with "ACK <n> ok|error", which
                // the guest waits for before its next step (a check of the counters, say,
                // must not race the I/O that follows the request).
                let mut w = req.splitn(3, ' ');
                let (n, verb, arg) = (
                    w.next().unwrap_or(""),
                    w.next().unwrap_or(""),
                    w.next().unwrap_or("").trim(),
                );
                let mut h = host.borrow_mut();
                let how = match h.act(verb, arg) {
                    Ok(()) => "ok",
                    Err(e) => {
                        h.errors.push(format!("host {verb} {arg}: {e:#}"));
                        "error"
                    }
                };
                return Step::Answer(format!("ACK {n} {how}"));
            }
            if l.starts_with("AOE-GUEST DONE") || l.starts_with("AOE-GUEST FAIL") {
                Step::Done
            } else {
                Step::Go
            }
        },
    )?;
    let mut host = host.into_inner();
    let mut failures = std::mem::take(&mut host.errors);
    let mut passed = Vec::new();
    let mut notes = Vec::new();
    let mut done = false;
    for l in &serial.lines {
        let Some(l) = l.strip_prefix("AOE-GUEST ") else {
            continue;
        };
        if let Some(c) = l.strip_prefix("CASE ") {
            let mut w = c.splitn(3, ' ');
            let (case, _pass, rest) = (w.next().unwrap_or(""), w.next(), w.next().unwrap_or(""));
            passed.push((case.to_string(), rest.to_string()));
        } else if let Some(why) = l.strip_prefix("FAIL ") {
            failures.push(format!("guest: {why}"));
        } else if l == "DONE" {
            done = true;
        }
    }
    if !done && !failures.iter().any(|f| f.starts_with("guest:")) {
        let tail: Vec<&str> = serial
            .lines
            .iter()
            .rev()
            .take(5)
            .map(|s| s.as_str())
            .collect();
        failures.push(format!(
            "guest did not finish{} (last lines: {tail:?})",
            if serial.timed_out { " in time" } else { "" }
        ));
    }
    if target == Target::AoeCtl && passed.iter().any(|(c, _)| c == "multipath") {
        for (from, to, what) in [
            ("before", "both", "both links up"),
            ("down", "back", "the link back"),
        ] {
            match host.both_paths(from, to) {
                Some(s) if s.starts_with("ok: ") => {
                    notes.push(format!("multipath {what}: {}", &s[4..]))
                }
                Some(s) => failures.push(format!(
                    "multipath, {what}: traffic not on both interfaces ({s})"
                )),
                None => failures.push(format!("multipath, {what}: no stats")),
            }
        }
    }
    if let Some(f) = &host.flipped {
        notes.push(format!("corrupt: flipped {f} in {VICTIM}'s image"));
    }
    Ok(Outcome {
        passed,
        failures,
        notes,
        seconds: serial.elapsed.as_secs_f64(),
    })
}
