//! `cargo xtask bench --kernel-cache`: the kernel cache's A/B (issue 21, lever 4). Hot 1 KiB
//! random reads over a span that fits the cache, at depth 16 and 64, against aoe-ctl with
//! `--kernel-cache`, aoe-ctl without it, vblade and the ceiling, targets alternating in each
//! run. On a veth the XDP program can only answer a request that arrives as long as its
//! reply (the kernel copies a short frame into a buffer just its size), so every target gets
//! requests padded to 1060 bytes (`aoe-ctl bench --pad-to`); aoe-ctl and vblade are measured
//! with the usual 60-byte requests too. Written between its own markers in
//! docs/benchmarks.md. Figures, not a test.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use aoe_integration::{Lab, LabOptions, Proc};

use super::report::{commit, machine, now, vblade_version, write_block};
use super::{client, filled_image, median, Figures, Options, BUFFERS, IMAGE_BYTES};

/// The markers of this block in docs/benchmarks.md.
pub const KERNEL_CACHE: (&str, &str) = (
    "<!-- xtask bench kernel-cache: begin (generated; edit outside these markers) -->",
    "<!-- xtask bench kernel-cache: end -->",
);

/// Sectors the reads address: 64 MiB, 65,536 blocks, all in a cache of `CACHE`.
const SPAN: u64 = 131_072;
const CACHE: &str = "72M";
/// A 2-sector read's reply: 36 bytes of headers and 1 KiB.
const PADDED: usize = 1060;
const DEPTHS: [u32; 2] = [16, 64];

/// One column: a target and the length of the requests it gets.
struct Column {
    name: &'static str,
    target: &'static str,
    pad: usize,
}

const COLUMNS: [Column; 6] = [
    Column {
        name: "aoe-ctl --kernel-cache, 1060 B requests",
        target: "kernel-cache",
        pad: PADDED,
    },
    Column {
        name: "aoe-ctl, 1060 B requests",
        target: "aoe-ctl",
        pad: PADDED,
    },
    Column {
        name: "vblade, 1060 B requests",
        target: "vblade",
        pad: PADDED,
    },
    Column {
        name: "ceiling, 1060 B requests",
        target: "ceiling",
        pad: PADDED,
    },
    Column {
        name: "aoe-ctl, 60 B requests",
        target: "aoe-ctl",
        pad: 0,
    },
    Column {
        name: "vblade, 60 B requests",
        target: "vblade",
        pad: 0,
    },
];
const CACHED: usize = 0;
const OURS_PADDED: usize = 1;
const VBLADE_PADDED: usize = 2;
const CEILING: usize = 3;
const VBLADE: usize = 5;

pub fn run(o: &Options, doc: &Path) -> Result<()> {
    let start = std::time::Instant::now();
    let lab = Lab::with(LabOptions {
        mtu: 1500,
        queues: 1,
    })?;
    let image = filled_image(&lab)?;
    let _peer = lab.start_peer(&lab.initiator_if)?;
    // samples[column][depth]: one Figures per run.
    let mut samples: Vec<Vec<Vec<Figures>>> = vec![vec![Vec::new(); DEPTHS.len()]; COLUMNS.len()];
    for run in 1..=o.runs {
        for (c, col) in COLUMNS.iter().enumerate() {
            let running = start_target(&lab, col.target, &image)?;
            // Every block read twice and more first: a block is filled on its second miss.
            read(&lab, "seqread", 16, 3.0, col.pad)?;
            for (d, depth) in DEPTHS.iter().enumerate() {
                let f = read(&lab, "randread", *depth, o.duration, col.pad)
                    .with_context(|| format!("{}: d{depth}", col.name))?;
                println!(
                    "run {run} d{depth:<3} {:<40} {:>9.0} IOPS  p50 {:>7.1} us  p99 {:>7.1} us  CPU {:>5.2} us/io",
                    col.name, f.iops, f.p50_us, f.p99_us, f.cpu_us_per_io
                );
                samples[c][d].push(f);
            }
            drop(running);
        }
    }
    let results: Vec<Vec<Figures>> = samples
        .iter()
        .map(|per_depth| per_depth.iter().map(|s| median(s)).collect())
        .collect();
    let table = markdown(&results, o, start.elapsed().as_secs_f64());
    println!("\n{table}");
    write_block(doc, KERNEL_CACHE, &table)?;
    println!("bench: wrote {}", doc.display());
    Ok(())
}

fn start_target(lab: &Lab, target: &str, image: &Path) -> Result<Proc> {
    match target {
        "vblade" => lab.start_vblade(image, &["-b", BUFFERS]),
        "aoe-ctl" => lab.start_export(image, &["--buffers", BUFFERS, "--mode", "xdp"]),
        "kernel-cache" => lab.start_export(
            image,
            &[
                "--buffers",
                BUFFERS,
                "--mode",
                "xdp",
                "--kernel-cache",
                CACHE,
            ],
        ),
        _ => lab.start_ceiling(IMAGE_BYTES / 512),
    }
}

fn read(lab: &Lab, pattern: &str, depth: u32, seconds: f64, pad: usize) -> Result<Figures> {
    client(
        lab,
        &[
            "--pattern",
            pattern,
            "--depth",
            &depth.to_string(),
            "--duration",
            &seconds.to_string(),
            "--span",
            &SPAN.to_string(),
            "--pad-to",
            &pad.to_string(),
            "--json",
        ],
    )
}

fn markdown(r: &[Vec<Figures>], o: &Options, seconds: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {}.\n",
        now(),
        machine("aoe-ctl with and without --kernel-cache, vblade, ceiling")
    );
    let _ = writeln!(
        s,
        "    cargo xtask bench --kernel-cache --duration {} --runs {}    # aoe-ctl {}, vblade {}\n",
        o.duration,
        o.runs,
        commit(),
        vblade_version()
    );
    let _ = writeln!(
        s,
        "Hot random 1 KiB reads over {} MiB (every block in a {CACHE} cache), each cell the run \
         with the median IOPS of {}, targets alternating; {seconds:.0} s in all. IOPS, latency \
         p50 / p99 in µs, and the machine's busy CPU time per I/O in µs (all cores, client \
         included; \"target\" subtracts the ceiling's, as issue 21 counts it):\n",
        SPAN / 2048,
        o.runs
    );
    s.push_str("| target | requests | d16 IOPS | d16 latency | d16 CPU/IO | d64 IOPS | d64 latency | d64 CPU/IO |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for (c, col) in COLUMNS.iter().enumerate() {
        let (target, requests) = col.name.split_once(", ").unwrap_or((col.name, ""));
        let _ = write!(s, "| {target} | {requests} |");
        for f in &r[c] {
            let _ = write!(
                s,
                " {:.0} | {:.0} / {:.0} | {:.2} |",
                f.iops, f.p50_us, f.p99_us, f.cpu_us_per_io
            );
        }
        s.push('\n');
    }
    s.push_str(
        "\nRatios of `--kernel-cache`: IOPS, then the machine's CPU per I/O, then the target's \
         (the ceiling's subtracted; \"-\" where the ceiling's was not the lowest, as on a \
         loaded machine):\n\n",
    );
    for (d, depth) in DEPTHS.iter().enumerate() {
        let ours = &r[CACHED][d];
        let floor = r[CEILING][d].cpu_us_per_io;
        let ratio = |other: usize| {
            let f = &r[other][d];
            let target = match (ours.cpu_us_per_io - floor, f.cpu_us_per_io - floor) {
                (a, b) if a > 0.0 && b > 0.0 => format!("{:.2}×", a / b),
                _ => "-".to_string(),
            };
            format!(
                "{:.2}× / {:.2}× / {target}",
                ours.iops / f.iops.max(1.0),
                ours.cpu_us_per_io / f.cpu_us_per_io.max(0.01),
            )
        };
        let _ = writeln!(
            s,
            "- d{depth}: ÷ aoe-ctl (same requests) {}; ÷ vblade (same requests) {}; ÷ vblade \
             (60 B requests) {}; {:.0}% of the ceiling's IOPS",
            ratio(OURS_PADDED),
            ratio(VBLADE_PADDED),
            ratio(VBLADE),
            100.0 * ours.iops / r[CEILING][d].iops.max(1.0)
        );
    }
    s
}
