//! The peers' table (aoe-ctl beside NBD, iSCSI, vblade and the disk) and issue 21's storage
//! goals checked against it, as Markdown for its own block of docs/benchmarks.md.

use std::fmt::Write as _;

use super::peers::{Measured, Results, Sample, BLOCK, DEPTH, MTU};
use super::report::{commit, machine, now, vblade_version};
use super::Options;

/// The markers of the peers' block in docs/benchmarks.md.
pub const PEERS: (&str, &str) = (
    "<!-- xtask bench peers: begin (generated; edit outside these markers) -->",
    "<!-- xtask bench peers: end -->",
);

pub fn markdown(r: &Results, o: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {}.\n",
        now(),
        machine("aoe-ctl, vblade, qemu-nbd, nbdkit, tgt, fio")
    );
    let _ = writeln!(
        s,
        "    {}    # aoe-ctl {}, vblade {}, {}\n",
        command(o, r.bytes >> 30),
        commit(),
        vblade_version(),
        r.versions
    );
    let _ = writeln!(
        s,
        "A {} GiB image with real extents on {}, cold (the page cache dropped before every \
         side), {} KiB random I/O at depth {DEPTH} over a veth at MTU {MTU}, {} s per side, \
         one run; userspace initiators: `aoe-ctl bench`, fio's nbd engine, the iSCSI client \
         on libiscsi. CPU per I/O is the machine's busy time (/proc/stat) over the client's run \
         ÷ its I/Os, client included. Every write side is durable by the setting named; disk \
         flushes are the flush requests the disk completed during the run (/proc/diskstats) per \
         write. The section took {:.0} s.\n",
        r.bytes >> 30,
        r.disk,
        BLOCK / 1024,
        o.duration,
        r.seconds
    );
    s.push_str(
        "| server | protocol | read side | randread IOPS | p99 µs | CPU µs per I/O | durable write side | randwrite IOPS | p99 µs | CPU µs per I/O | disk flushes per write | timeouts |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.rows {
        let p = &m.peer;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {} | {:.0} | {:.0} | {:.1} | {} | {} / {} |",
            p.label,
            p.protocol,
            p.read_setting,
            m.read.iops,
            m.read.p99_us,
            m.read.cpu_us_per_io,
            p.write_setting,
            m.write.iops,
            m.write.p99_us,
            m.write.cpu_us_per_io,
            per_write(&m.write),
            m.read.timeouts,
            m.write.timeouts
        );
    }
    s.push_str(
        "\n![IOPS and CPU per I/O, cold 4 KiB random at depth 16](peers.svg)\n\n\
         Goals (issue 21), as measured in this run:\n\n",
    );
    for line in goals(r) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

fn per_write(s: &Sample) -> String {
    let x = s.flushes_per_io();
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}

/// The command that ran this section, with the options that differ from the defaults.
fn command(o: &Options, gib: u64) -> String {
    let mut c = String::from("cargo xtask bench");
    if o.peers_only {
        c.push_str(" --peers-only");
    } else if o.storage_only {
        c.push_str(" --storage-only");
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

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn row<'a>(r: &'a Results, label: &str) -> Option<&'a Measured> {
    r.rows.iter().find(|m| m.peer.label == label)
}

/// Each storage goal of issue 21, met or not, with the figures.
pub fn goals(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    type Side = fn(&Measured) -> &Sample;
    let sides: [(&str, Side); 2] = [
        ("cold randread", |m| &m.read),
        ("durable randwrite", |m| &m.write),
    ];
    for (what, side) in sides {
        let Some(best) = r
            .rows
            .iter()
            .filter(|m| m.peer.is_peer())
            .max_by(|a, b| side(a).iops.total_cmp(&side(b).iops))
        else {
            continue;
        };
        for label in ["aoe-ctl default", "aoe-ctl --direct"] {
            let Some(ours) = row(r, label) else { continue };
            let (o, b) = (side(ours), side(best));
            let x = o.iops / b.iops;
            out.push(format!(
                "{label}, {what}: {:.0} IOPS, {x:.2}× the best NBD/iSCSI peer ({}, {:.0}; goal \
                 ≥ 1.3×: {}); CPU per I/O {:.1} vs {:.1} µs (goal lower: {})",
                o.iops,
                best.peer.label,
                b.iops,
                verdict(x >= 1.3),
                o.cpu_us_per_io,
                b.cpu_us_per_io,
                verdict(o.cpu_us_per_io < b.cpu_us_per_io)
            ));
        }
    }
    if let (Some(d), Some(x)) = (row(r, "aoe-ctl default"), row(r, "aoe-ctl --direct")) {
        let ratio = d.read.iops / x.read.iops;
        out.push(format!(
            "the default export's cold randread: {ratio:.2}× `--direct`'s ({:.0} vs {:.0} IOPS; \
             goal ≥ 0.9×: {})",
            d.read.iops,
            x.read.iops,
            verdict(ratio >= 0.9)
        ));
    }
    for m in r
        .rows
        .iter()
        .filter(|m| m.write.flushes == 0 && m.write.ios > 0)
    {
        out.push(format!(
            "{}: the disk completed no flush during its write run: not durable as measured",
            m.peer.label
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::peers::peers;

    fn sample(iops: f64, cpu: f64, flushes: u64) -> Sample {
        Sample {
            ios: (iops * 5.0) as u64,
            iops,
            p99_us: 1000.0,
            cpu_us_per_io: cpu,
            flushes,
            timeouts: 0,
        }
    }

    #[test]
    fn aoe_ctl_is_held_against_the_best_peer_and_unflushed_writes_are_named() {
        let rows = peers()
            .into_iter()
            .map(|peer| {
                let (r, w) = match peer.label {
                    "aoe-ctl default" => (45e3, 40e3),
                    "aoe-ctl --direct" => (50e3, 41e3),
                    "qemu-nbd" => (30e3, 33e3),
                    "tgt" => (35e3, 20e3),
                    _ => (10e3, 10e3),
                };
                let flushes = if peer.label == "nbdkit file" { 0 } else { 100 };
                Measured {
                    peer,
                    read: sample(r, 10.0, 0),
                    write: sample(w, 20.0, flushes),
                }
            })
            .collect();
        let r = Results {
            rows,
            disk: "vda".into(),
            bytes: 1 << 30,
            seconds: 1.0,
            versions: String::new(),
        };
        let g = goals(&r).join("\n");
        // Reads against tgt (the best peer there), writes against qemu-nbd.
        assert!(g.contains("aoe-ctl default, cold randread: 45000 IOPS, 1.29× the best NBD/iSCSI peer (tgt, 35000; goal ≥ 1.3×: NOT met)"), "{g}");
        assert!(g.contains("aoe-ctl --direct, durable randwrite: 41000 IOPS, 1.24× the best NBD/iSCSI peer (qemu-nbd, 33000"), "{g}");
        assert!(
            g.contains("CPU per I/O 10.0 vs 10.0 µs (goal lower: NOT met)"),
            "{g}"
        );
        assert!(
            g.contains("0.90× `--direct`'s (45000 vs 50000 IOPS; goal ≥ 0.9×: met)"),
            "{g}"
        );
        assert!(
            g.contains("nbdkit file: the disk completed no flush"),
            "{g}"
        );
    }
}
