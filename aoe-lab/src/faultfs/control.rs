//! The control socket of a faultfs mount: one command a line, one answer a line
//! (`ok key=value ...` or `err why`). Tests, `aoe-lab faultctl` and `socat` speak it.
//!
//! | command | what |
//! |---|---|
//! | `cut` | the power is cut: every write not synced is dropped, every later data request fails with EIO |
//! | `fail read\|write\|sync [at=BYTES] [len=BYTES] [errno=NAME\|N] [times=N]` | arm a fault (whole file, EIO; until cleared, a sync fault once) |
//! | `stall ms=N` | every request waits until N ms from now |
//! | `clear` | disarm every fault, end a stall |
//! | `stats` | counters |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::disk::Disk;
use super::faults::{Fault, Op};

/// Something to tell the kernel after a command: its cached pages of a range are stale (a
/// read fault must reach the disk, not the page cache).
pub type Invalidate = Box<dyn Fn(u64, u64) + Send + Sync>;

/// Answer commands on `listener` until the process ends, one connection at a time.
pub fn serve(listener: UnixListener, disk: Arc<Mutex<Disk>>, invalidate: Invalidate) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(mut out) = conn.try_clone() else {
            continue;
        };
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            let answer = match execute(&disk, &line, &invalidate) {
                Ok(s) if s.is_empty() => "ok".to_string(),
                Ok(s) => format!("ok {s}"),
                Err(e) => format!("err {e:#}"),
            };
            if writeln!(out, "{answer}").is_err() {
                break;
            }
        }
    }
}

/// Run one command line; the answer's `key=value` words.
pub fn execute(disk: &Mutex<Disk>, line: &str, invalidate: &Invalidate) -> Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        bail!("empty command: cut, fail, stall, clear or stats");
    };
    let mut d = disk.lock().unwrap_or_else(|p| p.into_inner());
    match cmd {
        "cut" => {
            no_args(cmd, args)?;
            let c = d.cut();
            Ok(format!(
                "dropped_writes={} dropped_pages={}",
                c.writes, c.pages
            ))
        }
        "fail" => {
            let f = Fault::parse(args)?;
            let (op, at, len) = (f.op, f.at, f.len);
            d.arm(f);
            drop(d);
            if op == Op::Read {
                invalidate(at, len);
            }
            Ok(String::new())
        }
        "stall" => {
            let ms = match args {
                [a] => a
                    .strip_prefix("ms=")
                    .and_then(|v| v.parse::<u64>().ok())
                    .with_context(|| format!("stall {a:?}: want ms=N"))?,
                _ => bail!("stall takes ms=N"),
            };
            d.stall(Duration::from_millis(ms));
            Ok(String::new())
        }
        "clear" => {
            no_args(cmd, args)?;
            d.clear();
            Ok(String::new())
        }
        "stats" => {
            no_args(cmd, args)?;
            let s = d.stats();
            Ok(format!(
                "reads={} writes={} written_bytes={} syncs={} synced_pages={} injected={} \
                 lost_pages={} dirty_pages={} unsynced_writes={} cuts={} size={}",
                s.reads,
                s.writes,
                s.written_bytes,
                s.syncs,
                s.synced_pages,
                s.injected,
                s.lost_pages,
                d.dirty_pages(),
                d.unsynced_writes(),
                s.cuts,
                d.size()
            ))
        }
        other => bail!("unknown command {other:?}: cut, fail, stall, clear or stats"),
    }
}

fn no_args(cmd: &str, args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("{cmd} takes no arguments");
    }
    Ok(())
}

/// Send one command to the control socket at `path` and return its answer (the `ok` line
/// without `ok`, or an error with the `err` line's reason).
pub fn ask(path: &Path, command: &str) -> Result<String> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("connecting to faultfs control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ok") {
        return Ok(rest.trim_start().to_string());
    }
    match line.strip_prefix("err ") {
        Some(why) => bail!("faultfs: {why}"),
        None => bail!("faultfs control socket answered {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Mutex<Disk> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap();
        f.set_len(1 << 20).unwrap();
        Mutex::new(Disk::new(f).unwrap())
    }

    #[test]
    fn commands_answer_and_bad_ones_say_why() {
        let d = disk();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let inval: Invalidate = Box::new(move |at, len| s.lock().unwrap().push((at, len)));
        assert_eq!(execute(&d, "fail write at=0 len=512", &inval).unwrap(), "");
        assert_eq!(d.lock().unwrap().write(0, &[1]), Err(libc::EIO));
        execute(&d, "fail read at=4096 len=512", &inval).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(4096, 512)],
            "a read fault drops the kernel's copy"
        );
        execute(&d, "stall ms=60000", &inval).unwrap();
        assert!(d.lock().unwrap().stall_left().is_some());
        execute(&d, "clear", &inval).unwrap();
        assert!(d.lock().unwrap().stall_left().is_none());
        d.lock().unwrap().write(0, &[1]).unwrap();
        let stats = execute(&d, "stats", &inval).unwrap();
        assert!(
            stats.contains("writes=2 ") && stats.contains("injected=1 "),
            "{stats}"
        );
        assert!(stats.contains("unsynced_writes=1 "), "{stats}");
        assert_eq!(
            execute(&d, "cut", &inval).unwrap(),
            "dropped_writes=1 dropped_pages=1"
        );
        for bad in [
            "",
            "fly",
            "cut now",
            "stall",
            "stall ms=x",
            "fail",
            "fail write at=q",
        ] {
            assert!(execute(&d, bad, &inval).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_socket_answers_a_line_per_command() {
        let dir = std::env::temp_dir().join(format!("faultfs-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let d = Arc::new(disk());
        std::thread::spawn(move || serve(l, d, Box::new(|_, _| {})));
        assert!(ask(&path, "stats").unwrap().starts_with("reads=0 "));
        let e = ask(&path, "fail nothing").unwrap_err().to_string();
        assert!(e.contains("cannot fail"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
