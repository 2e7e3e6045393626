//! Command-line interface.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};

use aoe_ctl::initiator::bench::Pattern;
use aoe_ctl::target::xdp::ModeChoice;

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
        #[arg(long, value_parser = parse_shelf)]
        shelf: u16,
        #[arg(long, value_parser = parse_slot)]
        slot: u8,
        #[arg(long)]
        iface: String,
        /// Refuse writes (ATA ABRT).
        #[arg(long)]
        read_only: bool,
        /// Acknowledge writes only once they are on stable storage.
        #[arg(long)]
        sync: bool,
        /// Buffer count advertised to initiators (default 128, at least 2).
        #[arg(long)]
        buffers: Option<u16>,
        /// Only these MACs may talk to the export (seeds the MAC mask list).
        #[arg(long, value_delimiter = ',', value_parser = parse_mac)]
        allow: Vec<[u8; 6]>,
        /// First sector of the file to export.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Sectors to export from the offset (default: to the end).
        #[arg(long)]
        length: Option<u64>,
        /// Initial config string.
        #[arg(long, default_value = "")]
        config: String,
        /// How to attach the XDP program.
        #[arg(long, value_enum, default_value_t = ModeChoice::Auto)]
        xdp_mode: ModeChoice,
        /// Receive queues to serve (default: all of the interface's).
        #[arg(long)]
        queues: Option<u32>,
        /// The image: regular file, sparse file or block device.
        path: PathBuf,
    },
    /// List every AoE target that answers on an interface.
    Discover {
        #[arg(long)]
        iface: String,
        /// How long to collect replies, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
    /// Write a pseudo-random pattern to a target, read it back and compare (destructive).
    Verify {
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
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Load generator: keep DEPTH requests in flight against a target for DURATION seconds
    /// and report IOPS, MB/s, latency percentiles and CPU per I/O.
    Bench {
        #[arg(long)]
        iface: String,
        /// The target, as eSHELF.SLOT (e.g. e1.2).
        #[arg(long, value_parser = parse_target)]
        target: (u16, u8),
        #[arg(long, value_enum)]
        pattern: Pattern,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        /// Seconds to run (fractions allowed).
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        duration: f64,
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
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// Send every request twice under two tags, as a retransmitting initiator would
        /// (a robustness check: the duplicate's reply is ignored).
        #[arg(long)]
        duplicate: bool,
        /// Send each batch of new requests in reverse order (a robustness check).
        #[arg(long)]
        reorder: bool,
        /// Retransmit a request with a new tag after this long without a reply.
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark instrument: answer every request for SHELF/SLOT on an interface in the
    /// kernel (tc), with no storage behind it, until SIGINT/SIGTERM.
    #[command(hide = true)]
    Ceiling {
        #[arg(long)]
        iface: String,
        #[arg(long, value_parser = parse_shelf)]
        shelf: u16,
        #[arg(long, value_parser = parse_slot)]
        slot: u8,
        /// The size to pretend, in sectors.
        #[arg(long, default_value_t = 1 << 21)]
        sectors: u64,
        /// Buffer count advertised to initiators.
        #[arg(long, default_value_t = 64)]
        buffers: u16,
    },
    /// Lab helper: attach an XDP_PASS program to a veth peer until SIGINT/SIGTERM, so that
    /// native-mode XDP_TX replies from the other end are delivered (real NICs need no such
    /// thing).
    #[command(hide = true)]
    LabPeer {
        #[arg(long)]
        iface: String,
    },
}

pub fn parse_shelf(s: &str) -> Result<u16> {
    let v: u32 = s
        .parse()
        .map_err(|_| anyhow!("shelf {s:?} is not a number"))?;
    if v >= 0xFFFF {
        bail!("shelf {v} is out of range (0-65534; 65535 is the broadcast shelf)");
    }
    Ok(v as u16)
}

pub fn parse_slot(s: &str) -> Result<u8> {
    let v: u32 = s
        .parse()
        .map_err(|_| anyhow!("slot {s:?} is not a number"))?;
    if v >= 0xFF {
        bail!("slot {v} is out of range (0-254; 255 is the broadcast slot)");
    }
    Ok(v as u8)
}

pub fn parse_target(s: &str) -> Result<(u16, u8)> {
    let rest = s
        .strip_prefix('e')
        .ok_or_else(|| anyhow!("target {s:?} is not of the form eSHELF.SLOT (e.g. e1.2)"))?;
    let (shelf, slot) = rest
        .split_once('.')
        .ok_or_else(|| anyhow!("target {s:?} is not of the form eSHELF.SLOT (e.g. e1.2)"))?;
    Ok((parse_shelf(shelf)?, parse_slot(slot)?))
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
