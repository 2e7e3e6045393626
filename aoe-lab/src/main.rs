//! aoe-lab: the lab and benchmark instruments. Each command attaches its program, prints one
//! line, and keeps it attached until SIGINT/SIGTERM (flip-bit does its one change and exits).

use anyhow::Result;
use aoe_ctl::address::{parse_shelf, parse_slot};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "aoe-lab",
    version,
    about = "AoE lab and benchmark instruments (not part of aoe-ctl)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Benchmark ceiling: answer every request for SHELF/SLOT on an interface in the kernel
    /// (tc), with no storage behind it.
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
    /// Benchmark floor of the socket path: the product's classifier and AF_XDP sockets (UMEM,
    /// rings, batching as the target's), answering every ATA request for SHELF/SLOT with a
    /// reply of the right size and nothing behind it: no engine, no storage.
    Echo {
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
    /// Attach an XDP_PASS program to a veth peer, so that native-mode XDP_TX replies from the
    /// other end are delivered (real NICs need no such thing).
    Peer {
        #[arg(long)]
        iface: String,
    },
    /// Corrupt an image the way a failing disk does, silently: flip one bit of the first
    /// written sector past --skip-mib, print that sector's number and exit.
    FlipBit {
        /// MiB of the image to leave alone (metadata at its start).
        #[arg(long, default_value_t = 0)]
        skip_mib: u64,
        image: std::path::PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("aoe-lab: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Ceiling {
            iface,
            shelf,
            slot,
            sectors,
            buffers,
        } => {
            let _attached = aoe_lab::ceiling::attach(&aoe_lab::ceiling::Options {
                iface: iface.clone(),
                shelf,
                slot,
                sectors,
                buffers,
            })?;
            println!("ceiling e{shelf}.{slot} on {iface}: {sectors} sectors answered in the kernel, no storage");
            until_signal()
        }
        Cmd::Echo {
            iface,
            shelf,
            slot,
            sectors,
            buffers,
        } => {
            let echo = aoe_lab::echo::start(&aoe_lab::echo::Options {
                iface: iface.clone(),
                shelf,
                slot,
                sectors,
                buffers,
            })?;
            println!(
                "echo e{shelf}.{slot} on {iface}: AF_XDP, xdp {}, {} queue(s), no engine, no storage",
                echo.mode, echo.queues
            );
            until_signal()?;
            eprintln!("{}", echo.stop()?);
            Ok(())
        }
        Cmd::FlipBit { skip_mib, image } => {
            let sector = aoe_lab::flip::flip(&image, skip_mib << 20)?;
            println!("sector {sector}");
            Ok(())
        }
        Cmd::Peer { iface } => {
            let _attached = aoe_lab::peer::attach(&iface)?;
            println!("pass program attached to {iface}");
            until_signal()
        }
    }
}

/// Block until SIGINT or SIGTERM (what a command attached stays attached until then).
fn until_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        Ok(())
    })
}
