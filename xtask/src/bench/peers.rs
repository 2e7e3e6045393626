//! The peers of the storage section: what an admin would run instead of an AoE target. NBD
//! (qemu-nbd, nbdkit's file plugin) and iSCSI (tgt) serve the same cold image over the same
//! veth at the same shape (4 KiB random, depth 16, MTU 9000) to userspace initiators (fio's
//! nbd engine; `iscsi_client.c` on libiscsi, built here with gcc), beside aoe-ctl (default
//! and `--direct`), vblade and the disk's own limit (fio on the file). Every write row is
//! durable on its side, with the setting that makes it so named in the table, and the disk's
//! flushes during it counted. CPU per I/O is the machine's busy time (/proc/stat) over the
//! client's run ÷ its I/Os, for every row alike, the client included.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aoe_integration::{Lab, LabOptions, Proc};

use super::disk::{self, Disk};
use super::storage::{self, parse_fio};
use super::{Options, BUFFERS};

pub const DEPTH: u32 = 16;
pub const BLOCK: u32 = 4096;
pub const MTU: u32 = 9000;
/// RFC 2544's benchmarking block, inside the lab's own namespaces only.
const TARGET_IP: &str = "198.18.0.1";
const INITIATOR_IP: &str = "198.18.0.2";
const NBD_PORT: u16 = 10809;
const ISCSI_PORT: u16 = 3260;
const IQN: &str = "iqn.2026-12.aoe.bench:disk";

/// How one server runs for one pattern.
#[derive(Debug, Clone, Copy)]
pub enum Setup {
    /// `aoe-ctl export` with these flags.
    AoeCtl(&'static [&'static str]),
    /// `vblade` with these flags.
    Vblade(&'static [&'static str]),
    /// `qemu-nbd` with these flags.
    QemuNbd(&'static [&'static str]),
    /// `nbdkit [--filter=F] file IMAGE PARAMS`.
    Nbdkit {
        filter: Option<&'static str>,
        params: &'static [&'static str],
    },
    /// `tgtd`, one LUN with `--bsoflags`, the SCSI write cache on or off (mode page 8).
    Tgt {
        bsoflags: &'static str,
        write_cache: bool,
    },
    /// No server: fio on the file (io_uring, O_DIRECT), O_DSYNC writes when `dsync`.
    Disk { dsync: bool },
}

/// A row: one server, its read side and its (durable) write side.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub label: &'static str,
    pub protocol: &'static str,
    pub read: Setup,
    /// What the read side runs with, as the table says it.
    pub read_setting: &'static str,
    pub write: Setup,
    /// What makes the write side durable, as the table says it.
    pub write_setting: &'static str,
}

impl Peer {
    /// NBD and iSCSI: the ones aoe-ctl is held against in the goals.
    pub fn is_peer(&self) -> bool {
        matches!(self.protocol, "NBD" | "iSCSI")
    }
}

pub fn peers() -> Vec<Peer> {
    vec![
        Peer {
            label: "aoe-ctl default",
            protocol: "AoE",
            read: Setup::AoeCtl(&[]),
            read_setting: "(none): page cache",
            write: Setup::AoeCtl(&[]),
            write_setting: "(none): O_DIRECT write, then an fdatasync covering it (group commit)",
        },
        Peer {
            label: "aoe-ctl --direct",
            protocol: "AoE",
            read: Setup::AoeCtl(&["--direct"]),
            read_setting: "`--direct`",
            write: Setup::AoeCtl(&["--direct"]),
            write_setting: "`--direct`: as the default",
        },
        Peer {
            label: "vblade 25",
            protocol: "AoE",
            read: Setup::Vblade(&["-d"]),
            read_setting: "`-d` (O_DIRECT)",
            write: Setup::Vblade(&["-d", "-s"]),
            write_setting: "`-d -s` (O_DIRECT, O_SYNC)",
        },
        Peer {
            label: "qemu-nbd",
            protocol: "NBD",
            read: Setup::QemuNbd(&["--cache=none", "--aio=native"]),
            read_setting: "`--cache=none --aio=native` (O_DIRECT)",
            write: Setup::QemuNbd(&["--cache=directsync", "--aio=native"]),
            write_setting: "`--cache=directsync --aio=native` (O_DIRECT, O_DSYNC)",
        },
        Peer {
            label: "nbdkit file",
            protocol: "NBD",
            read: Setup::Nbdkit {
                filter: None,
                params: &[],
            },
            read_setting: "file plugin (page cache)",
            write: Setup::Nbdkit {
                filter: Some("fua"),
                params: &["fuamode=force"],
            },
            write_setting: "`--filter=fua fuamode=force` (an fdatasync after each write)",
        },
        Peer {
            label: "tgt",
            protocol: "iSCSI",
            read: Setup::Tgt {
                bsoflags: "direct",
                write_cache: true,
            },
            read_setting: "`--bsoflags direct`",
            write: Setup::Tgt {
                bsoflags: "direct",
                write_cache: false,
            },
            write_setting: "`--bsoflags direct`, write cache off (an fdatasync after each write)",
        },
        Peer {
            label: "the disk: fio",
            protocol: "-",
            read: Setup::Disk { dsync: false },
            read_setting: "io_uring, O_DIRECT, QD16, on the same file",
            write: Setup::Disk { dsync: true },
            write_setting: "io_uring, O_DIRECT, O_DSYNC, QD16",
        },
    ]
}

/// One run of one side.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub ios: u64,
    pub iops: f64,
    pub p99_us: f64,
    pub cpu_us_per_io: f64,
    /// The disk's flush requests completed during the run (/proc/diskstats).
    pub flushes: u64,
    /// Requests the client retransmitted (AoE) or that failed (none, or the run fails).
    pub timeouts: u64,
}

impl Sample {
    pub fn flushes_per_io(&self) -> f64 {
        if self.ios == 0 {
            f64::NAN
        } else {
            self.flushes as f64 / self.ios as f64
        }
    }
}

pub struct Measured {
    pub peer: Peer,
    pub read: Sample,
    pub write: Sample,
}

pub struct Results {
    pub rows: Vec<Measured>,
    pub disk: String,
    pub bytes: u64,
    pub seconds: f64,
    /// "qemu-nbd 10.0.2, nbdkit 1.32.5, ..."
    pub versions: String,
}

pub fn run(o: &Options, image: &Path, disk: &Disk, bytes: u64) -> Result<Results> {
    let t0 = Instant::now();
    let iscsi = build_iscsi_client()?;
    let versions = versions();
    println!("bench peers: {versions}; {} s per side", o.duration);
    let lab = Lab::with(LabOptions {
        mtu: MTU,
        queues: 1,
    })?;
    for (ns, dev, ip) in [
        (&lab.target_ns, &lab.target_if, TARGET_IP),
        (&lab.initiator_ns, &lab.initiator_if, INITIATOR_IP),
    ] {
        sh(Command::new("ip").args(["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev]))?;
    }
    // aoe-ctl's in-kernel config replies need a program on the peer (native XDP_TX on veth);
    // it stays on for every row, so every protocol crosses the same link.
    let _pass = lab.start_peer(&lab.initiator_if)?;
    let m = Measure {
        lab: &lab,
        image,
        disk,
        duration: o.duration,
        data_path: &o.data_path,
        iscsi: &iscsi,
    };
    let mut seed = 0xbe5_u64;
    let mut rows = Vec::new();
    for peer in peers() {
        let mut side = |setup: Setup, pattern: &str| -> Result<Sample> {
            seed += 1;
            let s = m
                .sample(setup, pattern, seed)
                .with_context(|| format!("{} {pattern}", peer.label))?;
            println!(
                "{:<17} {:<9} {:>8.0} IOPS  p99 {:>7.0} us  CPU {:>6.2} us/io  disk flushes {:>6} ({:.2}/io)  timeouts {}",
                peer.label,
                pattern,
                s.iops,
                s.p99_us,
                s.cpu_us_per_io,
                s.flushes,
                s.flushes_per_io(),
                s.timeouts
            );
            Ok(s)
        };
        let read = side(peer.read, "randread")?;
        let write = side(peer.write, "randwrite")?;
        rows.push(Measured { peer, read, write });
    }
    let seconds = t0.elapsed().as_secs_f64();
    println!("bench peers: {seconds:.0} s in all");
    Ok(Results {
        rows,
        disk: disk.name.clone(),
        bytes,
        seconds,
        versions,
    })
}

struct Measure<'a> {
    lab: &'a Lab,
    image: &'a Path,
    disk: &'a Disk,
    duration: f64,
    data_path: &'a str,
    iscsi: &'a Path,
}

/// What the clients report.
struct Figures {
    ios: u64,
    iops: f64,
    p99_us: f64,
    timeouts: u64,
}

impl Measure<'_> {
    /// One side, cold: caches dropped, the server started and answering, then the client's
    /// run measured.
    fn sample(&self, setup: Setup, pattern: &str, seed: u64) -> Result<Sample> {
        disk::drop_caches()?;
        let server = self.start(setup)?;
        let (busy0, disk0) = (machine_busy()?, self.disk.counters()?);
        let f = self.client(setup, pattern, seed)?;
        let (busy1, disk1) = (machine_busy()?, self.disk.counters()?);
        drop(server);
        Ok(Sample {
            ios: f.ios,
            iops: f.iops,
            p99_us: f.p99_us,
            cpu_us_per_io: if f.ios > 0 {
                (busy1 - busy0) * 1e6 / f.ios as f64
            } else {
                0.0
            },
            flushes: disk1.since(disk0).flushes,
            timeouts: f.timeouts,
        })
    }

    fn start(&self, setup: Setup) -> Result<Option<Server>> {
        let lab = self.lab;
        let image = self.image.to_str().context("the image path is not UTF-8")?;
        let server = match setup {
            Setup::AoeCtl(flags) => {
                let mut args = flags.to_vec();
                args.extend_from_slice(&["--buffers", BUFFERS, "--mode", self.data_path]);
                let p = lab.start_export(self.image, &args)?;
                storage::wait_answers(lab)?;
                Server::Aoe { _running: p }
            }
            Setup::Vblade(flags) => {
                let mut args = flags.to_vec();
                args.extend_from_slice(&["-b", BUFFERS]);
                let p = lab.start_vblade(self.image, &args)?;
                storage::wait_answers(lab)?;
                Server::Aoe { _running: p }
            }
            Setup::QemuNbd(flags) => {
                let port = NBD_PORT.to_string();
                let mut args = vec![
                    "qemu-nbd",
                    "--format=raw",
                    "--bind",
                    TARGET_IP,
                    "--port",
                    &port,
                    // It serves the next client after the readiness probe's connection.
                    "--persistent",
                ];
                args.extend_from_slice(flags);
                args.push(image);
                Server::Other(spawn(lab, "qemu-nbd", &args)?).wait_listening(lab, NBD_PORT)?
            }
            Setup::Nbdkit { filter, params } => {
                let port = NBD_PORT.to_string();
                let filter = filter.map(|f| format!("--filter={f}"));
                let mut args = vec!["nbdkit", "--foreground", "--ipaddr", TARGET_IP];
                args.extend_from_slice(&["--port", &port]);
                args.extend(filter.as_deref());
                args.extend_from_slice(&["file", image]);
                args.extend_from_slice(params);
                Server::Other(spawn(lab, "nbdkit", &args)?).wait_listening(lab, NBD_PORT)?
            }
            Setup::Tgt {
                bsoflags,
                write_cache,
            } => self.start_tgt(image, bsoflags, write_cache)?,
            Setup::Disk { .. } => return Ok(None),
        };
        Ok(Some(server))
    }

    /// tgtd on its own management port, one target with one LUN on the image.
    fn start_tgt(&self, image: &str, bsoflags: &str, write_cache: bool) -> Result<Server> {
        let lab = self.lab;
        // The management socket is a file under /var/run/tgtd: a port no other run uses
        // (tgtd takes at most 32767).
        let control = (20_000 + std::process::id() % 12_000).to_string();
        let portal = format!("portal={TARGET_IP}:{ISCSI_PORT}");
        let mut s = spawn(
            lab,
            "tgtd",
            &["tgtd", "-f", "-C", &control, "--iscsi", &portal],
        )?;
        let ns = lab.target_ns.clone();
        // tgtd answers once its management socket is up.
        let start = Instant::now();
        while tgtadm(&ns, &control, &["--op", "show", "--mode", "sys"]).is_err() {
            s.check_alive()?;
            if start.elapsed() > Duration::from_secs(10) {
                bail!("tgtd did not answer tgtadm within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // tgtd ignores SIGTERM: it is taken down through its management socket.
        let (ns2, control2) = (ns.clone(), control.clone());
        s.teardown = Some(Box::new(move || {
            let adm = |args: &[&str]| tgtadm(&ns2, &control2, args);
            let _ = adm(&[
                "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline",
            ]);
            let _ = adm(&[
                "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
            ]);
            let _ = adm(&["--op", "delete", "--mode", "system"]);
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{control2}"));
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{control2}.lock"));
        }));
        let adm = |args: &[&str]| tgtadm(&ns, &control, args);
        let lu = [
            "--lld",
            "iscsi",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
        ];
        adm(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN,
        ])?;
        adm(&[
            &["--op", "new"][..],
            &lu,
            &["-b", image, "--bsoflags", bsoflags],
        ]
        .concat())?;
        if !write_cache {
            // Mode page 8 (caching) with WCE clear: write-through, tgt syncs every write.
            adm(&[
                &["--op", "update"][..],
                &lu,
                &["--params", "mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"],
            ]
            .concat())?;
        }
        adm(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        Server::Other(s).wait_listening(lab, ISCSI_PORT)
    }

    fn client(&self, setup: Setup, pattern: &str, seed: u64) -> Result<Figures> {
        let lab = self.lab;
        let duration = self.duration.to_string();
        let seed_s = seed.to_string();
        match setup {
            Setup::AoeCtl(_) | Setup::Vblade(_) => {
                let sectors = (BLOCK / 512).to_string();
                let depth = DEPTH.to_string();
                let f = super::client(
                    lab,
                    &[
                        "--pattern",
                        pattern,
                        "--depth",
                        &depth,
                        "--sectors",
                        &sectors,
                        "--duration",
                        &duration,
                        "--seed",
                        &seed_s,
                        "--json",
                    ],
                )?;
                Ok(Figures {
                    ios: f.ios,
                    iops: f.iops,
                    p99_us: f.p99_us,
                    timeouts: f.timeouts,
                })
            }
            Setup::QemuNbd(_) | Setup::Nbdkit { .. } => {
                let uri = format!("--uri=nbd://{TARGET_IP}:{NBD_PORT}/");
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &lab.initiator_ns, "fio", "--ioengine=nbd"])
                    .arg(uri);
                self.fio(cmd, pattern, seed)
            }
            Setup::Disk { dsync } => {
                let mut cmd = Command::new("fio");
                cmd.args(["--ioengine=io_uring", "--direct=1"])
                    .arg(format!("--filename={}", self.image.display()));
                if dsync {
                    cmd.arg("--sync=dsync");
                }
                self.fio(cmd, pattern, seed)
            }
            Setup::Tgt { .. } => {
                let url = format!("iscsi://{TARGET_IP}:{ISCSI_PORT}/{IQN}/1");
                let out = Command::new("ip")
                    .args(["netns", "exec", &lab.initiator_ns])
                    .arg(self.iscsi)
                    .args([
                        url.as_str(),
                        pattern,
                        &BLOCK.to_string(),
                        &DEPTH.to_string(),
                        &duration,
                        &seed_s,
                    ])
                    .output()
                    .context("running the iSCSI client")?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    bail!(
                        "the iSCSI client failed: {} {}",
                        stdout.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                #[derive(serde::Deserialize)]
                struct Report {
                    ios: u64,
                    iops: f64,
                    p99_us: f64,
                }
                let line = stdout
                    .lines()
                    .last()
                    .context("the iSCSI client printed nothing")?;
                let r: Report =
                    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
                Ok(Figures {
                    ios: r.ios,
                    iops: r.iops,
                    p99_us: r.p99_us,
                    timeouts: 0,
                })
            }
        }
    }

    /// fio (`cmd`, its engine and target set) at the row's shape for the run's time.
    fn fio(&self, mut cmd: Command, pattern: &str, seed: u64) -> Result<Figures> {
        cmd.args([
            "--name=peer",
            "--time_based",
            "--norandommap",
            "--output-format=json",
        ])
        .arg(format!("--rw={pattern}"))
        .arg(format!("--bs={BLOCK}"))
        .arg(format!("--iodepth={DEPTH}"))
        .arg(format!("--randseed={seed}"))
        // fio's times are whole units: milliseconds, one second at least.
        .arg(format!(
            "--runtime={}ms",
            (self.duration * 1000.0).round().max(1000.0)
        ));
        let out = cmd.output().context("running fio")?;
        if !out.status.success() {
            bail!(
                "fio failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let job = parse_fio(&String::from_utf8_lossy(&out.stdout))?;
        let dir = if pattern == "randwrite" {
            &job.write
        } else {
            &job.read
        };
        Ok(Figures {
            ios: dir.io_bytes / u64::from(BLOCK),
            iops: dir.iops,
            p99_us: dir.clat_us(99.0),
            timeouts: 0,
        })
    }
}

/// A server process in the target namespace: stopped (its teardown first, then SIGTERM,
/// then SIGKILL) on drop.
enum Server {
    Aoe { _running: Proc },
    Other(Spawned),
}

struct Spawned {
    name: &'static str,
    child: Child,
    log: PathBuf,
    teardown: Option<Box<dyn FnOnce()>>,
}

fn spawn(lab: &Lab, name: &'static str, args: &[&str]) -> Result<Spawned> {
    let log = lab.dir.join(format!("{name}.log"));
    let err = std::fs::File::create(&log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.target_ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(err.try_clone()?)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name} (cargo xtask setup installs it)"))?;
    Ok(Spawned {
        name,
        child,
        log,
        teardown: None,
    })
}

/// `tgtadm -C CONTROL ARGS` in namespace `ns`.
fn tgtadm(ns: &str, control: &str, args: &[&str]) -> Result<()> {
    sh(Command::new("ip")
        .args(["netns", "exec", ns, "tgtadm", "-C", control])
        .args(args))
}

impl Spawned {
    /// Fails with the server's log if it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited ({status}): {}", self.name, log.trim());
        }
        Ok(())
    }
}

impl Server {
    fn check_alive(&mut self) -> Result<()> {
        match self {
            Server::Other(s) => s.check_alive(),
            Server::Aoe { .. } => Ok(()),
        }
    }

    /// Until a TCP connection from the initiator's side to `port` succeeds (10 s at most).
    fn wait_listening(mut self, lab: &Lab, port: u16) -> Result<Server> {
        let addr: SocketAddr = format!("{TARGET_IP}:{port}").parse()?;
        let start = Instant::now();
        loop {
            self.check_alive()?;
            let up = Lab::in_ns(&lab.initiator_ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(self);
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("nothing listens on {addr} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(t) = self.teardown.take() {
            t();
        }
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Build the iSCSI client into target/ (gcc, libiscsi-dev); its path.
fn build_iscsi_client() -> Result<PathBuf> {
    let root = aoe_integration::workspace_root();
    let src = root.join("xtask/src/bench/iscsi_client.c");
    let bin = root.join("target/aoe-bench-iscsi");
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-liscsi")
        .output()
        .context("running gcc (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "building the iSCSI client ({}): {} (cargo xtask setup installs libiscsi-dev)",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(bin)
}

/// The peers' versions, for the table's header.
fn versions() -> String {
    let first = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let deb = |p: &str| first(Command::new("dpkg-query").args(["-W", "-f=${Version}", p]));
    format!(
        "{}, {}, tgt {}, libiscsi {}, {}",
        first(Command::new("qemu-nbd").arg("--version")),
        first(Command::new("nbdkit").arg("--version")),
        deb("tgt"),
        deb("libiscsi-dev"),
        storage::fio_version().unwrap_or_default()
    )
}

/// Busy seconds of the whole machine since boot (/proc/stat: user nice system irq softirq
/// steal).
fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        bail!("/proc/stat's cpu line is short");
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) as f64 / hz)
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_side_is_durable_and_reads_are_not_write_settings() {
        for p in peers() {
            let durable = match p.write {
                Setup::AoeCtl(flags) => !flags.contains(&"--write-back"),
                Setup::Vblade(flags) => flags.contains(&"-s"),
                Setup::QemuNbd(flags) => flags
                    .iter()
                    .any(|f| *f == "--cache=directsync" || *f == "--cache=writethrough"),
                Setup::Nbdkit { filter, params } => {
                    filter == Some("fua") && params.contains(&"fuamode=force")
                }
                Setup::Tgt { write_cache, .. } => !write_cache,
                Setup::Disk { dsync } => dsync,
            };
            assert!(durable, "{}: {:?}", p.label, p.write);
            assert!(!p.write_setting.is_empty() && !p.read_setting.is_empty());
        }
        let protocols: Vec<&str> = peers().iter().map(|p| p.protocol).collect();
        for want in ["AoE", "NBD", "iSCSI"] {
            assert!(protocols.contains(&want), "{protocols:?}");
        }
    }
}
