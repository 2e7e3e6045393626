//! Running a QEMU guest (TCG) in a tap lab and collecting what it prints on its serial port.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aoe_integration::TapLab;

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub append: String,
    pub memory: &'a str,
    pub capture: Option<&'a Path>,
    /// More NICs, each on one of these taps in the lab's namespace (the guest's eth1, ...).
    pub extra_taps: &'a [String],
}

/// What the host does after each line the guest prints.
pub enum Step {
    /// Read on.
    Go,
    /// Write this line to the guest's serial port (its console's input), then read on: the
    /// guest waits for it before its next step (an acknowledgement of something the host did).
    Answer(String),
    /// The guest said its last word.
    Done,
}

/// What the guest printed, up to the line `on_line` returned `Step::Done` for, or until it
/// exited or `timeout` passed.
pub struct Serial {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

pub fn run(
    lab: &TapLab,
    boot: &Boot,
    timeout: Duration,
    mut on_line: impl FnMut(&str) -> Step,
) -> Result<Serial> {
    let mut cmd = lab.command("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        boot.memory,
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-netdev",
        &format!("tap,id=n0,ifname={},script=no,downscript=no", lab.tap),
        "-device",
        "virtio-net-pci,netdev=n0",
    ])
    .args(boot.extra_taps.iter().enumerate().flat_map(|(i, tap)| {
        let id = i + 1;
        [
            "-netdev".to_string(),
            format!("tap,id=n{id},ifname={tap},script=no,downscript=no"),
            "-device".to_string(),
            format!("virtio-net-pci,netdev=n{id}"),
        ]
    }))
    .arg("-kernel")
    .arg(boot.kernel)
    .args(["-append", &boot.append]);
    if let Some(initrd) = boot.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    if let Some(pcap) = boot.capture {
        // QEMU's own dump of the guest's link: it sees every frame, whatever path (XDP_TX,
        // AF_XDP) the host side used, which a capture on the tap would miss.
        cmd.args([
            "-object",
            &format!(
                "filter-dump,id=d0,netdev=n0,maxlen=65536,file={}",
                pcap.display()
            ),
        ]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                let step = on_line(&line);
                lines.push(line);
                match step {
                    Step::Go => {}
                    Step::Done => break,
                    Step::Answer(a) => {
                        // A guest that is gone cannot read it; its own timeout says so.
                        if let Some(w) = stdin.as_mut() {
                            let _ = writeln!(w, "{a}").and_then(|()| w.flush());
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = start.elapsed();
    // The guest powers off by itself; give it a moment to flush the capture, then make sure.
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(Serial {
        lines,
        timed_out,
        elapsed,
    })
}
