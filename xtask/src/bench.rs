//! `cargo xtask bench`: the same client (`aoe-ctl bench`), in one run, against the in-kernel
//! ceiling, the AF_XDP floor (`aoe-lab echo`), `aoe-ctl export` and Debian's vblade 25, over
//! a matrix of patterns, depths and MTUs on a hot image; then the storage section
//! (`storage.rs`): cold rows on an image on the machine's disk against vblade, the NBD and
//! iSCSI peers (`peers.rs`) and fio. Prints the tables, and writes each (with the
//! machine, the command and the goals) into docs/benchmarks.md between its markers, and the
//! plots into docs/benchmarks.svg and docs/storage.svg.
//! Figures, not a test: nothing here asserts a timing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aoe_integration::{Lab, LabOptions, Proc};
use serde::Deserialize;

mod disk;
mod peers;
mod peers_report;
mod plot;
mod report;
pub mod storage;
mod storage_report;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seconds per row and target.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Runs of the whole matrix, targets alternating; each cell is the run with the median
    /// IOPS (the same binary moves by ±15% between runs on this 2-core lab).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where to write benchmarks.md's table and the SVG (default: docs/ of the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// aoe-ctl's data path (`--mode` of `aoe-ctl export`): xdp or afpacket.
    #[arg(long, default_value = "xdp")]
    pub data_path: String,
    /// Size of the storage section's image in GiB (written once with O_DIRECT zeros, then
    /// kept between runs).
    #[arg(long, default_value_t = 16)]
    pub storage_gib: u64,
    /// The storage section's image, on the machine's disk (default: target/aoe-bench-storage.img).
    #[arg(long)]
    pub storage_image: Option<PathBuf>,
    /// Only the hot side-by-side matrix.
    #[arg(long, conflicts_with = "storage_only")]
    pub no_storage: bool,
    /// Only the storage section (cold image on the disk, vblade, the NBD and iSCSI peers,
    /// fio).
    #[arg(long, conflicts_with = "peers_only")]
    pub storage_only: bool,
    /// Only the peers' table of the storage section (aoe-ctl beside NBD, iSCSI, vblade and
    /// the disk, 4 KiB random at depth 16, MTU 9000).
    #[arg(long, conflicts_with = "no_storage")]
    pub peers_only: bool,
}

/// One row of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub pattern: &'static str,
    pub depth: u32,
    pub mtu: u32,
}

impl Row {
    pub fn label(&self) -> String {
        format!("{} d{} @{}", self.pattern, self.depth, self.mtu)
    }
}

pub const ROWS: &[Row] = &[
    Row {
        pattern: "randread",
        depth: 1,
        mtu: 1500,
    },
    Row {
        pattern: "randread",
        depth: 16,
        mtu: 1500,
    },
    Row {
        pattern: "randread",
        depth: 64,
        mtu: 1500,
    },
    Row {
        pattern: "randwrite",
        depth: 1,
        mtu: 1500,
    },
    Row {
        pattern: "randwrite",
        depth: 16,
        mtu: 1500,
    },
    Row {
        pattern: "randwrite",
        depth: 64,
        mtu: 1500,
    },
    Row {
        pattern: "seqread",
        depth: 16,
        mtu: 1500,
    },
    Row {
        pattern: "seqwrite",
        depth: 16,
        mtu: 1500,
    },
    Row {
        pattern: "seqread",
        depth: 16,
        mtu: 9000,
    },
    Row {
        pattern: "seqwrite",
        depth: 16,
        mtu: 9000,
    },
];

/// The targets, in table order: the in-kernel ceiling (what the client drives when the
/// answer costs next to nothing), the AF_XDP floor (the target's socket path with nothing
/// behind it), the target, and vblade.
pub const TARGETS: [&str; 4] = ["ceiling", "floor", "aoe-ctl", "vblade"];
pub const CEILING: usize = 0;
pub const FLOOR: usize = 1;
pub const OURS: usize = 2;
pub const VBLADE: usize = 3;

/// Image size: large enough that random I/O is spread, small enough to stay in page cache.
const IMAGE_BYTES: u64 = 256 << 20;
/// Buffers every target advertises: the deepest row must not exceed it.
const BUFFERS: &str = "64";

/// What `aoe-ctl bench --json` reports (the keys used here).
#[derive(Debug, Clone, Deserialize)]
pub struct Figures {
    pub sectors_per_io: u32,
    /// Requests completed in the timed window.
    pub ios: u64,
    pub iops: f64,
    pub mbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub timeouts: u64,
    pub cpu_us_per_io: f64,
}

/// Every row with the figures of each target (TARGETS order), and what each target burnt
/// while idle.
pub struct Results {
    pub rows: Vec<(Row, [Figures; 4])>,
    pub idle: [Idle; 4],
}

/// CPU time a target's process took while nothing was asked of it (its start-up over).
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    /// Share of one core, in percent: the median over the runs and MTUs.
    pub percent: f64,
    pub seconds: f64,
}

pub fn run(o: &Options) -> Result<()> {
    if o.duration.is_nan() || o.duration <= 0.0 {
        bail!("--duration must be more than 0 seconds");
    }
    if o.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !["xdp", "afpacket"].contains(&o.data_path.as_str()) {
        bail!("--data-path {:?} is not xdp or afpacket", o.data_path);
    }
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| aoe_integration::workspace_root().join("docs"));
    std::fs::create_dir_all(&out)?;
    let doc = out.join("benchmarks.md");
    let mut hot_seqread = None;
    if !o.storage_only && !o.peers_only {
        let results = hot(o)?;
        let table = report::markdown(&results, o);
        println!("\n{table}");
        let svg = out.join("benchmarks.svg");
        plot::svg(&results, &svg)?;
        report::write_block(&doc, report::HOT, &table)?;
        println!("bench: wrote {} and {}", doc.display(), svg.display());
        hot_seqread = results
            .rows
            .iter()
            .find(|(r, _)| r.pattern == "seqread" && r.mtu == 9000)
            .map(|(_, f)| f[OURS].mbps);
    }
    if !o.no_storage && !o.peers_only {
        let results = storage::run(o)?;
        let table = storage_report::markdown(&results, o, hot_seqread);
        println!("\n{table}");
        let svg = out.join("storage.svg");
        plot::storage_svg(&results, &svg)?;
        report::write_block(&doc, storage_report::STORAGE, &table)?;
        println!("bench: wrote {} and {}", doc.display(), svg.display());
    }
    if !o.no_storage {
        let (image, bytes) = storage::image(o)?;
        let disk = disk::Disk::of(&image)?;
        let results = peers::run(o, &image, &disk, bytes)?;
        let table = peers_report::markdown(&results, o);
        println!("\n{table}");
        let svg = out.join("peers.svg");
        plot::peers_svg(&results, &svg)?;
        report::write_block(&doc, peers_report::PEERS, &table)?;
        println!("bench: wrote {} and {}", doc.display(), svg.display());
    }
    Ok(())
}

/// The hot matrix: every row against every target, `runs` times, medians.
fn hot(o: &Options) -> Result<Results> {
    let mut rows_out = Vec::new();
    let mut idle: Vec<Vec<f64>> = vec![Vec::new(); TARGETS.len()];
    // The idle sample: long enough to see a 100 ms poll timeout wake a few times.
    let idle_for = o.duration.clamp(0.3, 2.0);
    for mtu in [1500, 9000] {
        let rows: Vec<Row> = ROWS.iter().copied().filter(|r| r.mtu == mtu).collect();
        let lab = Lab::with(LabOptions { mtu, queues: 1 })?;
        let image = filled_image(&lab)?;
        // Native XDP_TX (our config replies) needs a program on the peer; it stays on for
        // every target so the client pays the same.
        let _peer = lab.start_peer(&lab.initiator_if)?;
        // samples[target][row]: one Figures per run.
        let mut samples: Vec<Vec<Vec<Figures>>> = vec![vec![Vec::new(); rows.len()]; TARGETS.len()];
        for run in 1..=o.runs {
            for (t, target) in TARGETS.iter().enumerate() {
                let running = start(&lab, target, &image, &o.data_path)?;
                // Each target answers before anything is measured; then its idle cost.
                storage::wait_answers(&lab)?;
                if t != CEILING {
                    idle[t].push(idle_percent(running.pid(), idle_for)?);
                }
                for (i, row) in rows.iter().enumerate() {
                    let f = measure(&lab, row, o.duration)
                        .with_context(|| format!("{target}: {}", row.label()))?;
                    println!(
                        "run {run} {:<20} {:<8} {:>9.0} IOPS {:>8.1} MB/s  p50 {:>7.1} us  p99 {:>7.1} us  CPU {:>5.2} us/io",
                        row.label(),
                        target,
                        f.iops,
                        f.mbps,
                        f.p50_us,
                        f.p99_us,
                        f.cpu_us_per_io
                    );
                    samples[t][i].push(f);
                }
                drop(running);
            }
        }
        for (i, row) in rows.iter().enumerate() {
            let f = |t: usize| median(&samples[t][i]);
            rows_out.push((*row, [f(0), f(1), f(2), f(3)]));
        }
    }
    let idle = |t: usize| {
        let mut v = idle[t].clone();
        v.sort_by(f64::total_cmp);
        Idle {
            percent: v.get(v.len() / 2).copied().unwrap_or(0.0),
            seconds: idle_for,
        }
    };
    Ok(Results {
        rows: rows_out,
        idle: [idle(0), idle(1), idle(2), idle(3)],
    })
}

/// The share of one core process `pid` used over `seconds`, in percent: the time each of
/// its threads spent on a CPU (/proc/PID/task/*/schedstat, nanoseconds, exact where the
/// tick-sampled utime/stime would miss short wake-ups).
fn idle_percent(pid: u32, seconds: f64) -> Result<f64> {
    let on_cpu = || -> Result<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("reading /proc/{pid}/task"))?;
        Ok(tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    };
    let before = on_cpu()?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    let used = on_cpu()?.saturating_sub(before);
    Ok(100.0 * used as f64 / 1e9 / t0.elapsed().as_secs_f64())
}

/// The sample with the median IOPS (its other figures come with it, from the same run).
fn median(samples: &[Figures]) -> Figures {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    sorted[sorted.len() / 2].clone()
}

/// The lab's image, written through once so every target reads real pages.
fn filled_image(lab: &Lab) -> Result<PathBuf> {
    let image = lab.image("bench.img", IMAGE_BYTES)?;
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(&image)?;
    for _ in 0..IMAGE_BYTES >> 20 {
        std::io::Write::write_all(&mut f, &chunk)?;
    }
    Ok(image)
}

fn start(lab: &Lab, target: &str, image: &Path, data_path: &str) -> Result<Proc> {
    match target {
        "vblade" => lab.start_vblade(image, &["-b", BUFFERS]),
        // The hot rows measure the network path: write-back, as vblade without -s (the
        // storage section measures durable writes).
        "aoe-ctl" => lab.start_export(
            image,
            &["--buffers", BUFFERS, "--mode", data_path, "--write-back"],
        ),
        "floor" => lab.start_echo(IMAGE_BYTES / 512),
        _ => lab.start_ceiling(IMAGE_BYTES / 512),
    }
}

fn measure(lab: &Lab, row: &Row, duration: f64) -> Result<Figures> {
    client(
        lab,
        &[
            "--pattern",
            row.pattern,
            "--depth",
            &row.depth.to_string(),
            "--duration",
            &duration.to_string(),
            "--json",
        ],
    )
}

/// Run the client (`aoe-ctl bench ARGS --json`) and read its figures.
pub fn client(lab: &Lab, args: &[&str]) -> Result<Figures> {
    let out = lab.bench(args)?;
    if !out.status.success() {
        bail!(
            "aoe-ctl bench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .context("aoe-ctl bench printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}
