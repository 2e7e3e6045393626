//! Command-line interface.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};

use aoe_ctl::daemon::config::DataPath;
use aoe_ctl::initiator::bench::Pattern;
use aoe_ctl::serve::xdp::ModeChoice;

#[derive(Parser, Debug)]
#[command(
    name = "aoe-ctl",
    version,
    about = "ATA over Ethernet target (XDP + AF_XDP) and userspace initiator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Export a disk image or block device as eSHELF.SLOT on an interface until SIGINT/SIGTERM.
    Export {
        /// Shelf (major) address, 0-65534: initiators see eSHELF.SLOT.
        #[arg(long, value_parser = parse_shelf)]
        shelf: u16,
        /// Slot (minor) address, 0-254.
        #[arg(long, value_parser = parse_slot)]
        slot: u8,
        /// Network interface to serve on (e.g. enp0s3).
        #[arg(long)]
        iface: String,
        /// Refuse writes (ATA ABRT).
        #[arg(long)]
        read_only: bool,
        /// Accepted for compatibility: writes are acknowledged only once on stable storage
        /// by default.
        #[arg(long)]
        sync: bool,
        /// UNSAFE on power loss: acknowledge writes from the page cache. The Linux initiator
        /// never flushes, so its filesystem treats those writes as stable; only for a
        /// UPS-backed node or scratch data.
        #[arg(long)]
        write_back: bool,
        /// O_DIRECT I/O instead of the page cache (for block devices).
        #[arg(long)]
        direct: bool,
        /// Buffer count advertised to initiators (default 16, at least 2).
        #[arg(long)]
        buffers: Option<u64>,
        /// Only these MACs may talk to the export (seeds the MAC mask list).
        #[arg(long, value_delimiter = ',', value_parser = parse_mac)]
        allow: Vec<[u8; 6]>,
        /// First sector of the file to export (vblade -o).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Sectors to export from the offset (default: to the end).
        #[arg(long)]
        length: Option<u64>,
        /// Initial config string.
        #[arg(long, default_value = "")]
        config: String,
        /// Keep the config string, mask list and reservation set at run time in this file.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Data path: XDP + AF_XDP, AF_PACKET rings, or XDP when possible.
        #[arg(long, value_enum, default_value_t = DataPath::Auto)]
        mode: DataPath,
        /// How to attach the XDP program.
        #[arg(long, value_enum, default_value_t = ModeChoice::Auto)]
        xdp_mode: ModeChoice,
        /// Receive queues to serve (default: all of the interface's).
        #[arg(long)]
        queues: Option<u64>,
        /// Serve Prometheus metrics on ADDR:PORT (e.g. 127.0.0.1:9727), as `metrics` in
        /// exports.toml.
        #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics)]
        metrics: Option<std::net::SocketAddr>,
        /// Answer hot 1 KiB reads (2 sectors at an even LBA, what MTU-1500 initiators send)
        /// from a cache of SIZE (e.g. 64M) in the XDP program, never waking user space;
        /// kept coherent with this process's writes (docs/operations.md).
        #[arg(long, value_name = "SIZE")]
        kernel_cache: Option<String>,
        /// The image: regular file, sparse file or block device.
        path: PathBuf,
    },
    /// Serve every export of a config file until SIGINT/SIGTERM; SIGHUP reloads the file.
    Daemon {
        /// The exports file (format in exports.toml(5)).
        #[arg(long, default_value = "/etc/aoe/exports.toml")]
        config: PathBuf,
        /// Check the file and exit (0 when it is good).
        #[arg(long)]
        check: bool,
    },
    /// vblade 25's command line: aoe-ctl vblade [-b bufcnt] [-d] [-s] [-r] [-m mac[,mac...]]
    /// [-o offset] [-l length] shelf slot netif filename. As vblade, writes are acknowledged
    /// from the page cache (unsafe on power loss) unless -s.
    Vblade {
        /// Buffer count advertised to initiators (default 16, at least 2).
        #[arg(short = 'b')]
        bufcnt: Option<u64>,
        /// O_DIRECT I/O.
        #[arg(short = 'd')]
        direct: bool,
        /// Acknowledge writes once on stable storage (without it: from the page cache).
        #[arg(short = 's')]
        sync: bool,
        /// Read-only.
        #[arg(short = 'r')]
        read_only: bool,
        /// Only these MACs may use the export.
        #[arg(short = 'm', value_delimiter = ',', value_parser = parse_mac)]
        macs: Vec<[u8; 6]>,
        /// First sector of the file to export.
        #[arg(short = 'o', default_value_t = 0)]
        offset: u64,
        /// Sectors to export (default: to the end).
        #[arg(short = 'l')]
        length: Option<u64>,
        /// Shelf (major) address, 0-65534.
        #[arg(value_parser = parse_shelf)]
        shelf: u16,
        /// Slot (minor) address, 0-254.
        #[arg(value_parser = parse_slot)]
        slot: u8,
        /// Network interface to serve on.
        netif: String,
        /// The image: regular file, sparse file or block device.
        filename: PathBuf,
    },
    /// Exports, interfaces, data path, queues and uptime of the running targets.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Counters per export (frames, bytes, config answers, errors, drops by reason) and per
    /// interface.
    Stats {
        /// Print again every second (with --json, one object per line).
        #[arg(long)]
        watch: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print every running daemon's metrics once, in Prometheus's text format (as its
        /// metrics endpoint serves them; an export served by several processes shows their
        /// sum).
        #[arg(long, conflicts_with_all = ["watch", "json"])]
        prometheus: bool,
    },
    /// The MAC mask list of an export (the list AoE command 2 edits), in force on every
    /// interface serving it when the command returns.
    Acl {
        #[command(subcommand)]
        action: AclAction,
    },
    /// An export's reservation (AoE command 3).
    Reservation {
        #[command(subcommand)]
        action: ReservationAction,
    },
    /// Serve an export at its backing store's size now, after the file or device grew
    /// (`truncate -s`, `losetup -c`, `lvextend`), and announce it. The daemon also looks by
    /// itself every second and on IDENTIFY; an export with a length keeps it, and a store
    /// that shrank is never followed (the command then fails, saying so).
    Resize {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
    },
    /// A crash-consistent point-in-time copy of a served export into a new file, while
    /// initiators keep reading and writing: a reflink where the filesystem can (XFS,
    /// btrfs), else a copy with writes held in an overlay meanwhile (progress on stderr).
    Snapshot {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
        /// How to copy.
        #[arg(long, value_enum, default_value = "auto")]
        method: aoe_ctl::daemon::snapshot::Method,
        /// The copy to create (never an existing file).
        dest: std::path::PathBuf,
    },
    /// List every AoE target that answers on an interface.
    Discover {
        /// Interface to broadcast the query on.
        #[arg(long)]
        iface: String,
        /// How long to collect replies, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
    /// Write a pseudo-random pattern to a target, read it back and compare (destructive).
    Verify {
        /// Interface the target is reached on.
        #[arg(long)]
        iface: String,
        /// The target, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
        /// Bytes to write and read back (suffixes K, M, G).
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        bytes: u64,
        /// First sector to write.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Seed of the pseudo-random pattern.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Load generator: keep DEPTH requests in flight against a target for DURATION seconds
    /// and report IOPS, MB/s, latency percentiles and CPU per I/O.
    Bench {
        /// Interface the target is reached on.
        #[arg(long)]
        iface: String,
        /// The target, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
        /// Access pattern.
        #[arg(long, value_enum)]
        pattern: Pattern,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        /// Seconds to run (fractions allowed).
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        duration: f64,
        /// Stop after this many requests, or at the duration if that comes first: a
        /// sequential pass of N requests covers N request-sized blocks whatever the speed.
        #[arg(long)]
        ios: Option<u64>,
        /// Sectors per request (default: as many as one frame carries).
        #[arg(long)]
        sectors: Option<u8>,
        /// First sector to address.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Only address SPAN sectors from the offset (default: to the end of the device).
        #[arg(long)]
        span: Option<u64>,
        /// Writes carry a pattern that is read back and compared afterwards; reads are
        /// compared with the pattern (write it first with the same --seed).
        #[arg(long)]
        verify: bool,
        /// Seed of the pseudo-random pattern.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// Send every request twice under two tags, as a retransmitting initiator would
        /// (a robustness check: the duplicate's reply is ignored).
        #[arg(long)]
        duplicate: bool,
        /// Send each batch of new requests in reverse order (a robustness check).
        #[arg(long)]
        reorder: bool,
        /// Pad read requests to BYTES (at most 1514). On a veth, a kernel cache hit needs a
        /// request as long as its reply (1060 bytes): the XDP program cannot grow a short
        /// frame there; NICs need no padding.
        #[arg(long, value_name = "BYTES", default_value_t = 0)]
        pad_to: usize,
        /// Retransmit a request with a new tag after this long without a reply.
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub use aoe_ctl::address::{parse_shelf, parse_slot, parse_target};
pub use aoe_ctl::daemon::config::parse_metrics;

#[derive(Subcommand, Debug)]
pub enum AclAction {
    /// Print the export's MAC mask list.
    List {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
    },
    /// Let a MAC use the export.
    Add {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
        /// The initiator's MAC, as 52:54:00:12:34:56.
        #[arg(value_parser = parse_mac)]
        mac: [u8; 6],
    },
    /// Take a MAC off the list.
    Del {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
        /// The initiator's MAC, as 52:54:00:12:34:56.
        #[arg(value_parser = parse_mac)]
        mac: [u8; 6],
    },
}

#[derive(Subcommand, Debug)]
pub enum ReservationAction {
    /// Print the MACs holding the export's reservation.
    Show {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
    },
    /// Release the reservation, whoever holds it.
    Clear {
        /// The export, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
    },
}

pub fn parse_seconds(s: &str) -> Result<f64> {
    let v: f64 = s
        .parse()
        .map_err(|_| anyhow!("duration {s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 86400.0) {
        bail!("duration {v} is out of range (more than 0, at most 86400 seconds)");
    }
    Ok(v)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    aoe_ctl::net::parse_mac(s)
}

pub fn parse_size(s: &str) -> Result<u64> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("size {s:?} is not a number (suffixes K, M, G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man pages are made of these lines (examples/package-docs.rs): none may be empty.
    #[test]
    fn every_argument_says_something() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = vec![];
        walk(&Cli::command(), "aoe-ctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn targets_and_sizes() {
        assert_eq!(parse_target("e1.2").unwrap(), (1, 2));
        assert!(parse_target("1.2")
            .unwrap_err()
            .to_string()
            .contains("eSHELF.SLOT"));
        assert!(parse_target("e65535.1")
            .unwrap_err()
            .to_string()
            .contains("broadcast"));
        assert!(parse_slot("255")
            .unwrap_err()
            .to_string()
            .contains("broadcast"));
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("x").is_err());
    }
}
