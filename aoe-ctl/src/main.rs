//! aoe-ctl: parse the command line and dispatch.

mod cli;

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use aoe_ctl::initiator::{bench, discover, verify};
use aoe_ctl::target::serve::{self, ServeOptions};
use cli::{Cli, Cmd};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("aoe-ctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Export {
            shelf,
            slot,
            iface,
            read_only,
            sync,
            buffers,
            allow,
            offset,
            length,
            config,
            xdp_mode,
            queues,
            path,
        } => serve::export(&ServeOptions {
            iface,
            path,
            shelf,
            slot,
            read_only,
            sync,
            buffers,
            allow,
            offset,
            length,
            config: config.into_bytes(),
            mode: xdp_mode,
            queues,
        }),
        Cmd::Discover { iface, wait_ms } => {
            discover::run(&iface, Duration::from_millis(wait_ms))?;
            Ok(())
        }
        Cmd::Verify {
            iface,
            target,
            bytes,
            offset,
            seed,
        } => verify::run(&verify::Options {
            iface,
            shelf: target.0,
            slot: target.1,
            bytes,
            offset,
            seed,
        }),
        Cmd::Bench {
            iface,
            target,
            pattern,
            depth,
            duration,
            sectors,
            offset,
            span,
            verify,
            seed,
            duplicate,
            reorder,
            timeout_ms,
            json,
        } => bench::run(&bench::Options {
            iface,
            shelf: target.0,
            slot: target.1,
            pattern,
            depth,
            duration: Duration::from_secs_f64(duration),
            sectors,
            offset,
            span,
            verify,
            duplicate,
            reorder,
            seed,
            timeout: Duration::from_millis(timeout_ms.max(1)),
            retries: 8,
            json,
        }),
        Cmd::Ceiling {
            iface,
            shelf,
            slot,
            sectors,
            buffers,
        } => {
            let _attached = aoe_ctl::ceiling::attach(&aoe_ctl::ceiling::Options {
                iface: iface.clone(),
                shelf,
                slot,
                sectors,
                buffers,
            })?;
            println!("ceiling e{shelf}.{slot} on {iface}: {sectors} sectors answered in the kernel, no storage");
            until_signal()
        }
        Cmd::LabPeer { iface } => {
            let _attached = aoe_ctl::target::xdp::attach_pass(&iface)?;
            println!("pass program attached to {iface}");
            until_signal()
        }
    }
}

/// Block until SIGINT or SIGTERM (what lab helpers attached stays attached until then).
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
