//! aoe-ctl: parse the command line and dispatch.

mod cli;

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use aoe_ctl::admin;
use aoe_ctl::daemon::config::{self, NodeConfig};
use aoe_ctl::daemon::spec::{self, ExportDraft, ExportSpec, FrontEnd};
use aoe_ctl::daemon::state::StateFile;
use aoe_ctl::initiator::{bench, discover, verify};
use aoe_ctl::serve::xdp::ModeChoice;
use cli::{AclAction, Cli, Cmd, ReservationAction};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // Installed as (or linked to) `vblade`, it takes vblade's command line.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked = std::path::Path::new(&args[0])
        .file_name()
        .map(|n| n.to_os_string());
    if invoked.as_deref() == Some(std::ffi::OsStr::new("vblade")) {
        args.insert(1, "vblade".into());
    }
    if let Err(e) = run(Cli::parse_from(args)) {
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
            write_back,
            direct,
            buffers,
            allow,
            offset,
            length,
            config,
            state,
            mode,
            xdp_mode,
            queues,
            metrics,
            kernel_cache,
            path,
        } => {
            let spec = ExportDraft {
                shelf: shelf.into(),
                slot: slot.into(),
                interfaces: vec![iface],
                path,
                read_only,
                sync,
                write_back,
                direct,
                offset,
                length,
                buffers,
                allow,
                config: config.into_bytes(),
                kernel_cache,
            }
            .check()
            .map_err(|e| e.into_error(FrontEnd::Export))?;
            let queues = spec::check_queues(queues).map_err(|e| e.into_error(FrontEnd::Export))?;
            serve_one(spec, mode, xdp_mode, queues, metrics, state)
        }
        Cmd::Vblade {
            bufcnt,
            direct,
            sync,
            read_only,
            macs,
            offset,
            length,
            shelf,
            slot,
            netif,
            filename,
        } => {
            let spec = ExportDraft {
                shelf: shelf.into(),
                slot: slot.into(),
                interfaces: vec![netif],
                path: filename,
                read_only,
                sync,
                // vblade writes back unless -s.
                write_back: !sync,
                direct,
                offset,
                length,
                buffers: bufcnt,
                allow: macs,
                config: vec![],
                kernel_cache: None,
            }
            .check()
            .map_err(|e| e.into_error(FrontEnd::Vblade))?;
            serve_one(
                spec,
                config::DataPath::Auto,
                ModeChoice::Auto,
                None,
                None,
                None,
            )
        }
        Cmd::Daemon {
            config: path,
            check,
        } => {
            let cfg = config::load(&path)?;
            // A damaged state file is refused here too: never serve guessed access rules.
            let state = StateFile::open(StateFile::beside(&path))?;
            if check {
                println!("{}: {} exports, good", path.display(), cfg.exports.len());
                return Ok(());
            }
            aoe_ctl::daemon::run(cfg, Some(path), Some(state))
        }
        Cmd::Status { json } => admin::status::run(json),
        Cmd::Stats {
            prometheus: true, ..
        } => admin::stats::prometheus(),
        Cmd::Stats { watch, json, .. } => {
            admin::stats::run(json, watch.then_some(Duration::from_secs(1)))
        }
        Cmd::Acl { action } => match action {
            AclAction::List { target } => admin::access::show(target, false),
            AclAction::Add { target, mac } => {
                admin::access::edit(target, admin::access::Edit::AclAdd(mac))
            }
            AclAction::Del { target, mac } => {
                admin::access::edit(target, admin::access::Edit::AclDel(mac))
            }
        },
        Cmd::Resize { target } => admin::resize::run(target),
        Cmd::Snapshot {
            target,
            method,
            dest,
        } => aoe_ctl::admin::snapshot::run(target, &dest, method),
        Cmd::Reservation { action } => match action {
            ReservationAction::Show { target } => admin::access::show(target, true),
            ReservationAction::Clear { target } => {
                admin::access::edit(target, admin::access::Edit::ReservationClear)
            }
        },
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
            ios,
            sectors,
            offset,
            span,
            verify,
            seed,
            duplicate,
            reorder,
            pad_to,
            timeout_ms,
            json,
        } => bench::run(&bench::Options {
            iface,
            shelf: target.0,
            slot: target.1,
            pattern,
            depth,
            duration: Duration::from_secs_f64(duration),
            ios,
            sectors,
            offset,
            span,
            verify,
            duplicate,
            reorder,
            pad_to,
            seed,
            timeout: Duration::from_millis(timeout_ms.max(1)),
            retries: 8,
            json,
        }),
    }
}

/// `aoe-ctl export` and `aoe-ctl vblade`: a daemon of one (checked) export, nothing to
/// reload.
fn serve_one(
    spec: ExportSpec,
    mode: config::DataPath,
    xdp_mode: ModeChoice,
    queues: Option<u32>,
    metrics: Option<std::net::SocketAddr>,
    state: Option<std::path::PathBuf>,
) -> Result<()> {
    let state = state.map(StateFile::open).transpose()?;
    let cfg = NodeConfig {
        mode,
        xdp_mode,
        queues,
        metrics,
        exports: vec![spec],
    };
    aoe_ctl::daemon::run(cfg, None, state)
}
