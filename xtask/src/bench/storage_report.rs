//! The storage section's table, the disk's limits and issue 14's goals checked against
//! them, as Markdown for its own block of docs/benchmarks.md.

use std::fmt::Write as _;

use super::report::{commit, machine, now, vblade_version};
use super::storage::{Limit, Measured, Results, Sample, LIMITS};
use super::Options;

/// The markers of the storage block in docs/benchmarks.md.
pub const STORAGE: (&str, &str) = (
    "<!-- xtask bench storage: begin (generated; edit outside these markers) -->",
    "<!-- xtask bench storage: end -->",
);

/// `hot` is aoe-ctl's seqread d16 @9000 MB/s of the side-by-side section, when it ran too.
pub fn markdown(r: &Results, o: &Options, hot: Option<f64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {}.\n",
        now(),
        machine("aoe-ctl, vblade, fio")
    );
    let gib = r.bytes >> 30;
    let _ = writeln!(
        s,
        "    {}    # aoe-ctl {}, vblade {}, {}\n",
        command(o, gib),
        commit(),
        vblade_version(),
        r.fio_version
    );
    let _ = writeln!(
        s,
        "A {gib} GiB image with real extents on {} (/proc/diskstats), one run of {} s per target \
         and row, the page cache dropped before each (not for the hot row, whose {} MiB are \
         read through the cache first). The section took {:.0} s.\n",
        r.disk,
        o.duration,
        (256u64 << 20).min(r.bytes / 4) >> 20,
        r.seconds
    );
    s.push_str(
        "| row | aoe-ctl flags / vblade flags | aoe-ctl | vblade | the disk (fio) | ÷ fio | ÷ vblade \
         | disk read ÷ served | the target's own read ÷ served | disk written ÷ served | p99 µs \
         | timeouts |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.rows {
        let limit = r.fio(m.case.limit);
        let mbps = m.case.limit.in_mbps();
        let (ours, theirs, disk) = if mbps {
            (m.ours.figures.mbps, m.vblade.figures.mbps, limit.mbps)
        } else {
            (m.ours.figures.iops, m.vblade.figures.iops, limit.iops)
        };
        let unit = if mbps { "MB/s" } else { "IOPS" };
        let flags = |f: &[&str]| {
            if f.is_empty() {
                "(none)".to_string()
            } else {
                format!("`{}`", f.join(" "))
            }
        };
        let both = |f: fn(&Sample) -> String| format!("{} / {}", f(&m.ours), f(&m.vblade));
        let _ = writeln!(
            s,
            "| {}{} | {} / {} | {ours:.0} {unit} | {theirs:.0} {unit} | {disk:.0} {unit} | {:.2} | {:.2}× | {} | {} | {} | {} | {} |",
            m.case.label,
            if m.case.cold && (m.ours.wrapped || m.vblade.wrapped) {
                " (wrapped: partly hot)"
            } else {
                ""
            },
            flags(&m.case.ours),
            flags(m.case.vblade),
            ours / disk,
            ours / theirs,
            both(|x| ratio(x.read_amplification())),
            both(|x| ratio(x.own_read_amplification())),
            both(|x| ratio(x.write_amplification())),
            both(|x| format!("{:.0}", x.figures.p99_us)),
            both(|x| x.figures.timeouts.to_string()),
        );
    }
    let _ = writeln!(
        s,
        "\nThe disk's limit, fio ({}, io_uring, O_DIRECT) on the same file, caches dropped:\n",
        r.fio_version
    );
    for l in LIMITS {
        let f = r.fio(l);
        let _ = writeln!(
            s,
            "- {}: {:.0} IOPS, {:.1} MB/s ({:.2} disk bytes read per byte)",
            l.label(),
            f.iops,
            f.mbps,
            f.read_amplification
        );
    }
    s.push_str("\n![throughput ÷ the disk's limit, and disk bytes read per byte served](storage.svg)\n\nGoals (issue 14), as measured in this run:\n\n");
    for line in goals(r, hot) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

/// The command that ran this section, with the options that differ from the defaults.
fn command(o: &Options, gib: u64) -> String {
    let mut c = String::from("cargo xtask bench");
    if o.storage_only {
        c.push_str(" --storage-only");
    } else if o.runs != 3 {
        c.push_str(&format!(" --runs {}", o.runs));
    }
    if o.duration != 5.0 {
        c.push_str(&format!(" --duration {}", o.duration));
    }
    if gib != 16 {
        c.push_str(&format!(" --storage-gib {gib}"));
    }
    if o.storage_image.is_some() {
        c.push_str(" --storage-image IMAGE");
    }
    if o.data_path != "xdp" {
        c.push_str(&format!(" --data-path {}", o.data_path));
    }
    c
}

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn row<'a>(r: &'a Results, label: &str) -> Option<&'a Measured> {
    r.rows.iter().find(|m| m.case.label == label)
}

/// Each goal of issue 14, met or not, with the ratio.
pub fn goals(r: &Results, hot: Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    for label in ["cold randread d16 default", "cold randread d16 --direct"] {
        let Some(m) = row(r, label) else { continue };
        let x = m.ours.figures.iops / r.fio(Limit::RandRead).iops;
        let amp = m.ours.read_amplification();
        out.push(format!(
            "{label}: {:.2}× fio's QD16 (goal ≥ 0.9: {}); {} disk bytes read per byte served \
             (goal ≤ 8: {}; the target's own reads: {})",
            x,
            verdict(x >= 0.9),
            ratio(amp),
            verdict(amp <= 8.0),
            ratio(m.ours.own_read_amplification())
        ));
    }
    for label in [
        "durable randwrite d16 default",
        "durable randwrite d16 --direct",
    ] {
        let Some(m) = row(r, label) else { continue };
        let x = m.ours.figures.iops / r.fio(Limit::RandWriteDsync).iops;
        out.push(format!(
            "{label}: {:.2}× fio's QD16 O_DSYNC (goal ≥ 1: {})",
            x,
            verdict(x >= 1.0)
        ));
    }
    if let Some(cold) = row(r, "cold seqread d16 @9000") {
        let mut refs = Vec::new();
        if let Some(h) = row(r, "hot seqread d16 @9000") {
            refs.push(("the hot row above", h.ours.figures.mbps));
        }
        if let Some(h) = hot {
            refs.push(("the side-by-side section's seqread d16 @9000", h));
        }
        for (what, h) in refs {
            let x = cold.ours.figures.mbps / h;
            out.push(format!(
                "cold seqread d16 @9000: {:.0} MB/s, {x:.2}× {what} ({h:.0} MB/s; goal ≥ 0.8: {})",
                cold.ours.figures.mbps,
                verdict(x >= 0.8)
            ));
        }
    }
    out.push(if hot.is_some() {
        "hot rows: the side-by-side table above, measured in the same run (ratios to vblade \
         and to the ceiling; compare with the runs under History)"
            .into()
    } else {
        "hot rows: not measured in this run (`--storage-only`); `cargo xtask bench` measures both"
            .into()
    });
    out
}
