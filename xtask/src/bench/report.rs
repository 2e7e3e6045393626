//! The bench's tables, the machine they were measured on, and the goals of the issue checked
//! against them, as Markdown; and the block of docs/benchmarks.md they replace.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::{Figures, Options, Results, CEILING, OURS, TARGETS, VBLADE};

/// The markers of the side-by-side block in docs/benchmarks.md.
pub const HOT: (&str, &str) = (
    "<!-- xtask bench: begin (generated; edit outside these markers) -->",
    "<!-- xtask bench: end -->",
);

pub fn markdown(results: &Results, o: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {}.\n",
        now(),
        machine(&TARGETS.join(", "))
    );
    let _ = writeln!(
        s,
        "    cargo xtask bench --duration {} --runs {}{}    # aoe-ctl {}, vblade {}\n",
        o.duration,
        o.runs,
        if o.data_path == "xdp" {
            String::new()
        } else {
            format!(" --data-path {}", o.data_path)
        },
        commit(),
        vblade_version()
    );
    let _ = writeln!(
        s,
        "Each cell is the run with the median IOPS of {} (targets alternating).\n",
        o.runs
    );
    let _ = writeln!(
        s,
        "Throughput (IOPS and MB/s of vblade / aoe-ctl / ceiling; ratios of aoe-ctl's IOPS):\n"
    );
    s.push_str("| row | sectors/io | IOPS | MB/s | ÷ vblade | ÷ ceiling |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    for (row, f) in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2}× | {:.0}% |",
            row.label(),
            f[OURS].sectors_per_io,
            three(f, |x| format!("{:.0}", x.iops)),
            three(f, |x| format!("{:.0}", x.mbps)),
            f[OURS].iops / f[VBLADE].iops,
            100.0 * f[OURS].iops / f[CEILING].iops
        );
    }
    let _ = writeln!(
        s,
        "\nLatency in µs (p50 / p99 / p99.9) and the machine's busy CPU time per I/O in µs \
         (all cores, /proc/stat, client included), vblade / aoe-ctl / ceiling:\n"
    );
    s.push_str("| row | vblade latency | aoe-ctl latency | ceiling latency | CPU per I/O | CPU ÷ vblade | timeouts |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for (row, f) in results {
        let lat = |x: &Figures| format!("{:.0} / {:.0} / {:.0}", x.p50_us, x.p99_us, x.p999_us);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2}× | {} |",
            row.label(),
            lat(&f[VBLADE]),
            lat(&f[OURS]),
            lat(&f[CEILING]),
            three(f, |x| format!("{:.2}", x.cpu_us_per_io)),
            f[OURS].cpu_us_per_io / f[VBLADE].cpu_us_per_io,
            three(f, |x| x.timeouts.to_string())
        );
    }
    s.push_str("\n![IOPS and CPU per I/O](benchmarks.svg)\n\nGoals (issue 6), as measured in this run:\n\n");
    for line in goals(results) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

fn three(f: &[Figures; 3], show: impl Fn(&Figures) -> String) -> String {
    f.iter().map(show).collect::<Vec<_>>().join(" / ")
}

/// Each goal of the issue, met or not, with the figure.
fn goals(results: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for (row, f) in results
        .iter()
        .filter(|(r, _)| r.depth >= 16 && r.pattern.starts_with("rand"))
    {
        let share = f[OURS].iops / f[CEILING].iops;
        let cpu = f[OURS].cpu_us_per_io / f[VBLADE].cpu_us_per_io;
        out.push(format!(
            "{}: IOPS {:.0}% of the ceiling (goal ≥ 80%: {}); CPU per I/O {:.2}× vblade's (goal ≤ 0.5×: {})",
            row.label(),
            100.0 * share,
            verdict(share >= 0.8),
            cpu,
            verdict(cpu <= 0.5)
        ));
    }
    for (row, f) in results.iter().filter(|(r, _)| r.mtu == 9000) {
        let x = f[OURS].mbps / f[VBLADE].mbps;
        out.push(format!(
            "{}: {:.0} vs {:.0} MB/s, {:.2}× vblade (goal ≥ 2×: {})",
            row.label(),
            f[OURS].mbps,
            f[VBLADE].mbps,
            x,
            verdict(x >= 2.0)
        ));
    }
    out
}

/// Put `table` between the `(begin, end)` markers of `doc` (or at its end when it has none).
pub fn write_block(doc: &Path, (begin, end): (&str, &str), table: &str) -> Result<()> {
    let old = std::fs::read_to_string(doc).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{begin}\n{table}{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(doc, new).with_context(|| format!("writing {}", doc.display()))
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn now() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
}

pub fn commit() -> String {
    let c = first_line(Command::new("git").args(["describe", "--always", "--dirty"]));
    if c.is_empty() {
        "(no git)".into()
    } else {
        c
    }
}

pub fn vblade_version() -> String {
    first_line(Command::new("dpkg-query").args(["-W", "-f=${Version}", "vblade"]))
}

/// CPU model, cores, memory, kernel, and the `targets` measured.
pub fn machine(targets: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1 << 20) as f64);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} × {model}, {mem_gib:.0} GiB, kernel {}; a veth pair between two namespaces, \
         client and target sharing the cores; targets: {targets}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::storage_report::STORAGE;

    #[test]
    fn each_block_replaces_only_its_own() {
        let doc = std::env::temp_dir().join(format!("aoe-bench-doc-{}.md", std::process::id()));
        std::fs::write(&doc, "# B\n\nbefore\n").unwrap();
        write_block(&doc, HOT, "hot 1\n").unwrap();
        write_block(&doc, STORAGE, "cold 1\n").unwrap();
        write_block(&doc, HOT, "hot 2\n").unwrap();
        write_block(&doc, STORAGE, "cold 2\n").unwrap();
        let text = std::fs::read_to_string(&doc).unwrap();
        std::fs::remove_file(&doc).unwrap();
        assert!(text.starts_with("# B\n\nbefore\n"), "{text}");
        assert!(
            text.contains(&format!("{}\nhot 2\n{}", HOT.0, HOT.1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}\ncold 2\n{}", STORAGE.0, STORAGE.1)),
            "{text}"
        );
        assert!(
            !text.contains("hot 1") && !text.contains("cold 1"),
            "{text}"
        );
    }
}
