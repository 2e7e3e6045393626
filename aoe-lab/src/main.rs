//! aoe-lab: the lab and benchmark instruments. Each command attaches its program (or mounts
//! its filesystem), prints one line, and keeps it until SIGINT/SIGTERM (flip-bit and faultctl
//! do their one thing and exit).

use anyhow::Result;
use aoe_ctl::address::{parse_shelf, parse_slot};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    /// Mount a filesystem showing one file, MOUNTPOINT/NAME, whose writes stay in a volatile
    /// cache until fsync'd into the backing file: `cut` on the control socket drops the
    /// unsynced ones (a power cut); `fail` and `stall` make the disk fail (see faultctl).
    Faultfs {
        /// The file whose data the mount shows; it holds what survives a cut.
        #[arg(long)]
        backing: PathBuf,
        /// The control socket (default: MOUNTPOINT.ctl).
        #[arg(long)]
        control: Option<PathBuf>,
        /// The file's name under the mountpoint (default: the backing file's name).
        #[arg(long)]
        name: Option<std::ffi::OsString>,
        mountpoint: PathBuf,
    },
    /// Send one command to a faultfs control socket and print the answer: cut;
    /// fail read|write|sync [at=BYTES] [len=BYTES] [errno=eio|enospc|N] [times=N];
    /// stall ms=N; clear; stats.
    Faultctl {
        #[arg(long)]
        control: PathBuf,
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
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
            until_signal(|| false)
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
            until_signal(|| false)?;
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
            until_signal(|| false)
        }
        Cmd::Faultfs {
            backing,
            control,
            name,
            mountpoint,
        } => {
            let control = control.unwrap_or_else(|| {
                let mut c = mountpoint.clone().into_os_string();
                c.push(".ctl");
                c.into()
            });
            let m = aoe_lab::faultfs::mount(&aoe_lab::faultfs::Options {
                backing: backing.clone(),
                mountpoint,
                control: control.clone(),
                name,
            })?;
            println!(
                "faultfs {} over {}, control {}",
                m.file.display(),
                backing.display(),
                control.display()
            );
            until_signal(|| m.ended())?;
            m.stop()
        }
        Cmd::Faultctl { control, command } => {
            println!(
                "{}",
                aoe_lab::faultfs::control::ask(&control, &command.join(" "))?
            );
            Ok(())
        }
    }
}

/// Block until SIGINT or SIGTERM (what a command attached stays attached until then), or
/// until `ended` says there is nothing left to keep.
fn until_signal(ended: impl Fn() -> bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => if ended() { break },
            }
        }
        Ok(())
    })
}
