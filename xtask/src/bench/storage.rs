//! The storage section of `cargo xtask bench`: cold rows on an image with real extents on
//! the machine's disk, `aoe-ctl export` beside vblade with matching flags, and fio on the same
//! file in the same run as the disk's limit. The page cache is dropped before each target;
//! every target is started, asked until it answers (discover), and only then measured, so
//! no row has a warm-up. Disk bytes per byte served come from /proc/diskstats.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aoe_integration::{Lab, LabOptions, Proc};
use serde::Deserialize;

use super::disk::{self, Counters, Disk};
use super::{Figures, Options, BUFFERS};

/// Export flags of a durable write: none, durability is the default (vblade needs -s).
pub const DURABLE: &[&str] = &[];
const DEPTH: &str = "16";
/// 1 KiB random requests, as fio's limit rows.
const RANDOM_SECTORS: &str = "2";
/// The hot reference reads this much of the image, first warmed through the page cache.
const HOT_SPAN: u64 = 256 << 20;

/// fio's figure that a row is held against: the disk's limit on the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// randread 1k QD16, IOPS.
    RandRead,
    /// randwrite 1k QD16 O_DSYNC, IOPS.
    RandWriteDsync,
    /// seqread 128k QD4, MB/s.
    SeqRead,
}

pub const LIMITS: [Limit; 3] = [Limit::RandRead, Limit::RandWriteDsync, Limit::SeqRead];

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::RandRead => "fio randread 1k QD16",
            Limit::RandWriteDsync => "fio randwrite 1k QD16 O_DSYNC",
            Limit::SeqRead => "fio seqread 128k QD4",
        }
    }
    /// Sequential rows compare MB/s (their request sizes differ), random rows IOPS.
    pub fn in_mbps(self) -> bool {
        self == Limit::SeqRead
    }
    fn args(self) -> &'static [&'static str] {
        match self {
            Limit::RandRead => &["--rw=randread", "--bs=1k", "--iodepth=16"],
            Limit::RandWriteDsync => &["--rw=randwrite", "--bs=1k", "--iodepth=16", "--sync=dsync"],
            Limit::SeqRead => &["--rw=read", "--bs=128k", "--iodepth=4"],
        }
    }
}

/// One row: the same client against `aoe-ctl export OURS` and `vblade THEIRS`.
#[derive(Debug, Clone)]
pub struct Case {
    pub label: &'static str,
    pub pattern: &'static str,
    pub mtu: u32,
    pub ours: Vec<&'static str>,
    pub vblade: &'static [&'static str],
    pub limit: Limit,
    /// Page cache dropped before each target (the hot reference warms its span instead).
    pub cold: bool,
}

pub fn cases() -> Vec<Case> {
    let case = |label, pattern, mtu, ours: &[&'static str], vblade, limit| Case {
        label,
        pattern,
        mtu,
        ours: ours.to_vec(),
        vblade,
        limit,
        cold: true,
    };
    let direct_durable = [&["--direct"], DURABLE].concat();
    vec![
        case(
            "cold randread d16 default",
            "randread",
            1500,
            &[],
            &[],
            Limit::RandRead,
        ),
        case(
            "cold randread d16 --direct",
            "randread",
            1500,
            &["--direct"],
            &["-d"],
            Limit::RandRead,
        ),
        case(
            "durable randwrite d16 default",
            "randwrite",
            1500,
            DURABLE,
            &["-s"],
            Limit::RandWriteDsync,
        ),
        case(
            "durable randwrite d16 --direct",
            "randwrite",
            1500,
            &direct_durable,
            &["-d", "-s"],
            Limit::RandWriteDsync,
        ),
        case(
            "cold seqread d16 @1500",
            "seqread",
            1500,
            &[],
            &[],
            Limit::SeqRead,
        ),
        case(
            "cold seqread d16 @9000",
            "seqread",
            9000,
            &[],
            &[],
            Limit::SeqRead,
        ),
        Case {
            cold: false,
            ..case(
                "hot seqread d16 @9000",
                "seqread",
                9000,
                &[],
                &[],
                Limit::SeqRead,
            )
        },
    ]
}

/// One target's run of one row.
#[derive(Debug, Clone)]
pub struct Sample {
    pub figures: Figures,
    /// Bytes the client moved in the timed window.
    pub served: u64,
    /// The whole disk's traffic in the window (/proc/diskstats).
    pub disk: Counters,
    /// The target process's own share of it (/proc/PID/io).
    pub own: Counters,
    /// A sequential run went past the end of its region and re-read what it had read.
    pub wrapped: bool,
}

impl Sample {
    /// Disk bytes read per byte served.
    pub fn read_amplification(&self) -> f64 {
        per_byte(self.disk.read, self.served)
    }
    /// The bytes the target itself had read per byte served.
    pub fn own_read_amplification(&self) -> f64 {
        per_byte(self.own.read, self.served)
    }
    pub fn write_amplification(&self) -> f64 {
        per_byte(self.disk.written, self.served)
    }
}

/// NaN when nothing was served (shown as "–").
fn per_byte(bytes: u64, served: u64) -> f64 {
    if served == 0 {
        f64::NAN
    } else {
        bytes as f64 / served as f64
    }
}

/// fio's figures on the same file.
#[derive(Debug, Clone, Copy)]
pub struct Fio {
    pub iops: f64,
    pub mbps: f64,
    /// Disk bytes read per byte fio moved: about 1 with O_DIRECT, which checks the method.
    pub read_amplification: f64,
}

pub struct Measured {
    pub case: Case,
    pub ours: Sample,
    pub vblade: Sample,
    /// fio's figure for the row's limit, measured right before its targets.
    pub limit: Fio,
}

pub struct Results {
    pub rows: Vec<Measured>,
    /// Indexed as LIMITS.
    pub fio: [Fio; 3],
    pub disk: String,
    pub bytes: u64,
    pub seconds: f64,
    pub fio_version: String,
}

impl Results {
    pub fn fio(&self, l: Limit) -> Fio {
        self.fio[LIMITS.iter().position(|&x| x == l).unwrap_or(0)]
    }
}

/// The default image: under target/, on the machine's disk, kept between runs.
pub fn default_image() -> PathBuf {
    aoe_integration::workspace_root().join("target/aoe-bench-storage.img")
}

/// The section's image (made if it is not there yet) and its size.
pub fn image(o: &Options) -> Result<(PathBuf, u64)> {
    let bytes = o
        .storage_gib
        .checked_mul(1 << 30)
        .filter(|&b| b > 0)
        .with_context(|| format!("--storage-gib {} is not a size in GiB", o.storage_gib))?;
    let path = o.storage_image.clone().unwrap_or_else(default_image);
    Ok((disk::image(&path, bytes)?, bytes))
}

pub fn run(o: &Options) -> Result<Results> {
    let t0 = Instant::now();
    let (image, bytes) = image(o)?;
    let disk = Disk::of(&image)?;
    let fio_version = fio_version()?;
    println!(
        "bench storage: {} on {} (/proc/diskstats), {} s per target",
        image.display(),
        disk.name,
        o.duration
    );
    let cases = cases();
    // Every cold sequential run (fio and two targets per row, then fio) reads a region of
    // its own, so none reads what another just pulled into the disk's (or the host's) cache.
    let seq_runs = 3 * cases
        .iter()
        .filter(|c| c.cold && c.pattern == "seqread")
        .count() as u64
        + 1;
    let region = (bytes / 512 / seq_runs) & !7;
    let mut regions = (0..seq_runs).map(|k| (k * region, region));
    let mut seed = 0x5eed_u64;
    let mut next_seed = || {
        seed += 1;
        seed
    };
    let m = Measure {
        image: &image,
        disk: &disk,
        duration: o.duration,
        data_path: &o.data_path,
    };

    let mut rows = Vec::new();
    for mtu in [1500, 9000] {
        let lab = Lab::with(LabOptions { mtu, queues: 1 })?;
        // Native XDP_TX (our config replies) needs a program on the peer; it stays on for
        // both targets so the client pays the same.
        let _peer = lab.start_peer(&lab.initiator_if)?;
        for case in cases.iter().filter(|c| c.mtu == mtu) {
            // The disk's limit right before the row's targets: the disk here is shared and
            // its speed drifts over minutes, so each row is held against its own fio run.
            let fio_region = match case.limit {
                Limit::SeqRead => regions.next().unwrap_or((0, region)),
                _ => (0, region),
            };
            let limit = m
                .fio(case.limit, next_seed(), fio_region)
                .with_context(|| format!("{}: fio", case.label))?;
            let mut sample = |target: Target| -> Result<Sample> {
                let (offset, span) = match (case.pattern, case.cold) {
                    ("seqread", true) => regions.next().unwrap_or((0, region)),
                    ("seqread", false) => (0, HOT_SPAN.min(bytes / 4) / 512),
                    _ => (0, 0),
                };
                if !case.cold {
                    warm(&image, span * 512)?;
                }
                let s = m
                    .target(&lab, case, target, next_seed(), offset, span)
                    .with_context(|| format!("{}: {}", target.name(), case.label))?;
                println!(
                    "{:<31} {:<7} {:>9.0} IOPS {:>8.1} MB/s  p99 {:>8.0} us  timeouts {:>3}  disk read {:>8.2} B/B (own {:.2}){}",
                    case.label,
                    target.name(),
                    s.figures.iops,
                    s.figures.mbps,
                    s.figures.p99_us,
                    s.figures.timeouts,
                    s.read_amplification(),
                    s.own_read_amplification(),
                    if s.wrapped { "  (wrapped)" } else { "" }
                );
                Ok(s)
            };
            let ours = sample(Target::Ours)?;
            let vblade = sample(Target::Vblade)?;
            rows.push(Measured {
                case: case.clone(),
                ours,
                vblade,
                limit,
            });
        }
    }
    let seq_region = regions.next().unwrap_or((0, region));
    let mut fio = Vec::new();
    for limit in LIMITS {
        let f = m
            .fio(limit, next_seed(), seq_region)
            .with_context(|| limit.label())?;
        println!(
            "{:<31} {:>9.0} IOPS {:>8.1} MB/s  disk read {:.2} B/B",
            limit.label(),
            f.iops,
            f.mbps,
            f.read_amplification
        );
        fio.push(f);
    }
    let seconds = t0.elapsed().as_secs_f64();
    println!("bench storage: {seconds:.0} s in all");
    Ok(Results {
        rows,
        fio: [fio[0], fio[1], fio[2]],
        disk: disk.name,
        bytes,
        seconds,
        fio_version,
    })
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Ours,
    Vblade,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ours => "aoe-ctl",
            Target::Vblade => "vblade",
        }
    }
}

struct Measure<'a> {
    image: &'a Path,
    disk: &'a Disk,
    duration: f64,
    data_path: &'a str,
}

impl Measure<'_> {
    /// One target on one row: cache dropped (cold rows), started, answering, then measured.
    /// `span` 0 is the whole image.
    fn target(
        &self,
        lab: &Lab,
        case: &Case,
        target: Target,
        seed: u64,
        offset: u64,
        span: u64,
    ) -> Result<Sample> {
        if case.cold {
            disk::drop_caches()?;
        }
        let running = self.start(lab, case, target)?;
        wait_answers(lab)?;
        let (offset, span, seed) = (offset.to_string(), span.to_string(), seed.to_string());
        let duration = self.duration.to_string();
        let mut args = vec![
            "--pattern",
            case.pattern,
            "--depth",
            DEPTH,
            "--duration",
            &duration,
            "--seed",
            &seed,
            "--json",
        ];
        if case.pattern == "seqread" {
            // As many sectors as a frame carries (17 at MTU 9000), as the hot rows.
            args.extend_from_slice(&["--offset", &offset, "--span", &span]);
        } else {
            args.extend_from_slice(&["--sectors", RANDOM_SECTORS]);
        }
        let (before, own_before) = (self.disk.counters()?, disk::process(running.pid())?);
        let figures = super::client(lab, &args)?;
        let (after, own_after) = (self.disk.counters()?, disk::process(running.pid())?);
        drop(running);
        let served = figures.ios * u64::from(figures.sectors_per_io) * 512;
        Ok(Sample {
            wrapped: case.pattern == "seqread" && served > span.parse::<u64>()? * 512,
            served,
            disk: after.since(before),
            own: own_after.since(own_before),
            figures,
        })
    }

    fn start(&self, lab: &Lab, case: &Case, target: Target) -> Result<Proc> {
        match target {
            Target::Ours => {
                let mut args = case.ours.clone();
                args.extend_from_slice(&["--buffers", BUFFERS, "--mode", self.data_path]);
                lab.start_export(self.image, &args)
            }
            Target::Vblade => {
                let mut args = case.vblade.to_vec();
                args.extend_from_slice(&["-b", BUFFERS]);
                lab.start_vblade(self.image, &args)
            }
        }
    }

    /// fio on the same file: io_uring, O_DIRECT, `region` (first sector, sectors) for the
    /// sequential limit.
    fn fio(&self, limit: Limit, seed: u64, region: (u64, u64)) -> Result<Fio> {
        disk::drop_caches()?;
        let mut cmd = Command::new("fio");
        cmd.args([
            "--name=limit",
            "--ioengine=io_uring",
            "--direct=1",
            "--time_based",
            "--norandommap",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", self.image.display()))
        // fio's times are whole units: milliseconds, one second at least.
        .arg(format!(
            "--runtime={}ms",
            (self.duration * 1000.0).round().max(1000.0)
        ))
        .arg(format!("--randseed={seed}"))
        .args(limit.args());
        if limit == Limit::SeqRead {
            cmd.arg(format!("--offset={}", region.0 * 512))
                .arg(format!("--size={}", region.1 * 512));
        }
        let before = self.disk.counters()?;
        let out = cmd.output().context("running fio (apt-get install fio)")?;
        let after = self.disk.counters()?;
        if !out.status.success() {
            bail!(
                "fio failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let report = parse_fio(&String::from_utf8_lossy(&out.stdout))?;
        let dir = if limit == Limit::RandWriteDsync {
            &report.write
        } else {
            &report.read
        };
        let seconds = dir.runtime as f64 / 1000.0;
        Ok(Fio {
            iops: dir.iops,
            mbps: if seconds > 0.0 {
                dir.io_bytes as f64 / 1e6 / seconds
            } else {
                0.0
            },
            read_amplification: per_byte(after.since(before).read, dir.io_bytes),
        })
    }
}

/// Until `aoe-ctl discover` lists e1.2 (10 s at most): measuring starts with a target that
/// answers, not with its start-up.
pub fn wait_answers(lab: &Lab) -> Result<()> {
    let start = Instant::now();
    loop {
        let out = lab.discover(&["--wait-ms", "200"])?;
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("e1.2 "))
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("e1.2 did not answer discover within 10 s");
        }
    }
}

/// The first `bytes` of the image through the page cache, for the hot reference.
fn warm(image: &Path, bytes: u64) -> Result<()> {
    let mut f = std::fs::File::open(image)?.take(bytes);
    std::io::copy(&mut f, &mut std::io::sink())?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct FioReport {
    jobs: Vec<FioJob>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FioJob {
    pub(super) read: FioDir,
    pub(super) write: FioDir,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct FioDir {
    pub(super) io_bytes: u64,
    pub(super) iops: f64,
    /// Milliseconds.
    pub(super) runtime: u64,
    /// Completion latency percentiles in ns, keyed "99.000000".
    #[serde(default)]
    pub(super) clat_ns: Clat,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Clat {
    #[serde(default)]
    pub(super) percentile: std::collections::HashMap<String, f64>,
}

impl FioDir {
    /// The completion latency at `p` percent, in µs (0 when fio gave none).
    pub(super) fn clat_us(&self, p: f64) -> f64 {
        self.clat_ns
            .percentile
            .get(&format!("{p:.6}"))
            .map_or(0.0, |ns| ns / 1000.0)
    }
}

/// fio's JSON report (fio may print notes before it).
pub(super) fn parse_fio(stdout: &str) -> Result<FioJob> {
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .context("fio printed no JSON report")?;
    let r: FioReport = serde_json::from_str(json).context("parsing fio's JSON report")?;
    r.jobs.into_iter().next().context("fio's report has no job")
}

pub(super) fn fio_version() -> Result<String> {
    let out = Command::new("fio")
        .arg("--version")
        .output()
        .context("running fio --version (apt-get install fio, or cargo xtask setup)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json_after_notes() {
        let out = "note: both iodepth >= 1 and synchronous I/O engine are selected\n\
            {\"fio version\": \"fio-3.33\", \"jobs\": [{\"jobname\": \"limit\", \
            \"read\": {\"io_bytes\": 1024000, \"iops\": 200.5, \"runtime\": 5000, \
            \"clat_ns\": {\"percentile\": {\"50.000000\": 1500, \"99.000000\": 64000}}}, \
            \"write\": {\"io_bytes\": 0, \"iops\": 0.0, \"runtime\": 0}}]}";
        let j = parse_fio(out).unwrap();
        assert_eq!(j.read.io_bytes, 1024000);
        assert_eq!(j.read.runtime, 5000);
        assert!((j.read.iops - 200.5).abs() < 1e-9);
        assert_eq!(j.read.clat_us(99.0), 64.0);
        assert_eq!(j.write.clat_us(99.0), 0.0, "no percentiles: 0");
        assert!(parse_fio("fio: no such file").is_err());
        assert!(parse_fio("{\"jobs\": []}").is_err());
    }

    #[test]
    fn durable_rows_carry_the_durable_flags_and_vblade_matches() {
        for c in cases() {
            let direct = c.ours.contains(&"--direct");
            assert_eq!(direct, c.vblade.contains(&"-d"), "{}", c.label);
            let durable = c.pattern == "randwrite";
            assert_eq!(durable, c.vblade.contains(&"-s"), "{}", c.label);
            if durable {
                assert!(DURABLE.iter().all(|f| c.ours.contains(f)), "{}", c.label);
            }
        }
    }
}
