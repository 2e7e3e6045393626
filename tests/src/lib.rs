//! The lab: two network namespaces joined by a veth pair, a sparse image, and the processes
//! running in them. Everything is named uniquely and removed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

mod faultfs;
mod tap;
pub use faultfs::{Cut, FaultFs, LoopDev, Stats as FaultStats};
pub use tap::TapLab;

/// The aoe-ctl binary under test: $AOE_CTL, else target/release/aoe-ctl.
pub fn aoe_ctl() -> PathBuf {
    if let Some(p) = std::env::var_os("AOE_CTL") {
        return PathBuf::from(p);
    }
    workspace_root().join("target/release/aoe-ctl")
}

/// The lab instruments (ceiling, veth peer program): $AOE_LAB, else target/release/aoe-lab.
pub fn aoe_lab() -> PathBuf {
    if let Some(p) = std::env::var_os("AOE_LAB") {
        return PathBuf::from(p);
    }
    workspace_root().join("target/release/aoe-lab")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args))
}

/// No IPv6 chatter from `dev` on the segment (best effort).
pub(crate) fn quiet_ipv6(ns: &str, dev: &str) {
    let _ = sh(Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!("net.ipv6.conf.{dev}.disable_ipv6=1")));
}

/// A running process, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub first_line: String,
    pub name: String,
    /// Its stderr so far: drained as it comes, so a chatty process never blocks on a full
    /// pipe (a target logging each edit would stall its control plane otherwise).
    pub log: Arc<Mutex<String>>,
    pub log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn new(mut child: Child, first_line: String, name: String) -> Proc {
        let log = Arc::new(Mutex::new(String::new()));
        let log_reader = child.stderr.take().map(|mut err| {
            let l = log.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut b = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut b) {
                    l.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&b[..n]));
                }
            })
        });
        Proc {
            child,
            first_line,
            name,
            log,
            log_reader,
        }
    }

    /// SIGTERM and wait; returns the process's stderr.
    pub fn stop(mut self) -> Result<String> {
        self.terminate();
        if let Some(r) = self.log_reader.take() {
            let _ = r.join();
        }
        let log = self.log.lock().unwrap().clone();
        Ok(log)
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Start `aoe-ctl ARGS` in namespace `ns` and wait for its first line of output.
pub fn spawn_in(ns: &str, args: &[&str]) -> Result<Proc> {
    spawn_in_env(ns, &[], args)
}

/// `spawn_in` with environment variables (`NAME=value`).
pub fn spawn_in_env(ns: &str, env: &[String], args: &[&str]) -> Result<Proc> {
    spawn_program(&aoe_ctl(), ns, env, args)
}

/// `spawn_in_env` with aoe-ctl run by `wrapper` (e.g. `setpriv ... --`): `wrapper[0]` is
/// the program, then the rest of `wrapper`, then aoe-ctl and `args`.
pub fn spawn_under(ns: &str, env: &[String], wrapper: &[String], args: &[&str]) -> Result<Proc> {
    let (program, rest) = wrapper.split_first().context("no wrapper program")?;
    let ctl = aoe_ctl();
    let mut all: Vec<&str> = rest.iter().map(String::as_str).collect();
    all.push(ctl.to_str().context("aoe-ctl path is not UTF-8")?);
    all.extend_from_slice(args);
    spawn_program(Path::new(program), ns, env, &all)
}

/// Start `aoe-lab ARGS` in namespace `ns` and wait for its first line of output.
pub fn spawn_lab_in(ns: &str, args: &[&str]) -> Result<Proc> {
    spawn_program(&aoe_lab(), ns, &[], args)
}

/// Start `program ARGS` in namespace `ns` (the test's own namespaces when `ns` is empty)
/// and wait for its first line of output.
fn spawn_program(program: &Path, ns: &str, env: &[String], args: &[&str]) -> Result<Proc> {
    let shown = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new("ip");
    if ns.is_empty() {
        cmd = Command::new("env");
    } else {
        cmd.args(["netns", "exec", ns, "env"]);
    }
    let mut child = cmd
        .args(env)
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let name = args.first().copied().unwrap_or("").to_string();
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(first_line) => Ok(Proc::new(child, first_line, name)),
        Err(_) => {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            Err(anyhow!(
                "{shown} {} printed nothing: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// A veth pair, each end `[name, "netns", ns, options...]`: created in its namespace, so
/// nothing is ever made in the root namespace (where a failed move would leak it).
fn veth(a: &[&str], b: &[&str]) -> Result<()> {
    let mut args = vec!["link", "add"];
    args.extend_from_slice(a);
    args.extend_from_slice(&["type", "veth", "peer", "name"]);
    args.extend_from_slice(b);
    ip(&args)
}

pub struct Lab {
    pub target_ns: String,
    pub initiator_ns: String,
    pub target_if: String,
    pub initiator_if: String,
    pub dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name part no other lab of this or another process uses: hex pid, a dash, hex
/// sequence (the dash keeps pid 0x1 lab 0x23 apart from pid 0x12 lab 0x3). Interface names
/// hold 15 bytes: "ai" + 6 (pid_max is 2^22) + 1 + up to 3, and room for a suffix such as
/// "m12"; a longer one makes `ip link add` fail, never collide.
pub(crate) fn unique_id() -> String {
    id_of(std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn id_of(pid: u32, seq: u32) -> String {
    format!("{pid:x}-{seq:x}")
}

/// Options for the veth pair.
#[derive(Debug, Clone, Copy)]
pub struct LabOptions {
    pub mtu: u32,
    pub queues: u32,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            mtu: 1500,
            queues: 1,
        }
    }
}

impl Lab {
    pub fn new() -> Result<Lab> {
        Lab::with(LabOptions::default())
    }

    pub fn with(o: LabOptions) -> Result<Lab> {
        let id = unique_id();
        let lab = Lab {
            target_ns: format!("aoe-{id}-t"),
            initiator_ns: format!("aoe-{id}-i"),
            target_if: format!("at{id}"),
            initiator_if: format!("ai{id}"),
            dir: std::env::temp_dir().join(format!("aoe-lab-{id}")),
        };
        std::fs::create_dir_all(&lab.dir)?;
        ip(&["netns", "add", &lab.target_ns])?;
        ip(&["netns", "add", &lab.initiator_ns])?;
        let q = o.queues.to_string();
        let mtu = o.mtu.to_string();
        let end = |dev, ns| {
            [
                dev,
                "netns",
                ns,
                "mtu",
                &mtu,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
            ]
        };
        veth(
            &end(&lab.target_if, &lab.target_ns),
            &end(&lab.initiator_if, &lab.initiator_ns),
        )?;
        for (ns, dev) in [
            (&lab.target_ns, &lab.target_if),
            (&lab.initiator_ns, &lab.initiator_if),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            quiet_ipv6(ns, dev);
        }
        Ok(lab)
    }

    /// A sparse image of `bytes` in the lab's directory.
    pub fn image(&self, name: &str, bytes: u64) -> Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::File::create(&p)?.set_len(bytes)?;
        Ok(p)
    }

    /// Start `aoe-ctl ARGS` in a namespace and wait for its first line of output.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Result<Proc> {
        spawn_in(ns, args)
    }

    /// `aoe-ctl export` of `image` as e1.2 on the target side, plus the lab peer program on
    /// the initiator side (native XDP_TX on veth needs one there).
    pub fn start_target(&self, image: &Path, extra: &[&str]) -> Result<(Proc, Proc)> {
        let peer = self.start_peer(&self.initiator_if)?;
        Ok((self.start_export(image, extra)?, peer))
    }

    /// `aoe-lab peer` on `iface` of the initiator side: native XDP_TX from the target's veth
    /// is only delivered to a peer with an XDP program.
    pub fn start_peer(&self, iface: &str) -> Result<Proc> {
        spawn_lab_in(&self.initiator_ns, &["peer", "--iface", iface])
    }

    /// The arguments of `aoe-ctl export` serving `image` as e1.2 on the target side.
    pub fn export_args<'a>(&'a self, image: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "export",
            "--shelf",
            "1",
            "--slot",
            "2",
            "--iface",
            &self.target_if,
        ];
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        args
    }

    /// `aoe-ctl export` of `image` as e1.2 on the target side.
    pub fn start_export(&self, image: &Path, extra: &[&str]) -> Result<Proc> {
        let mut extra = extra.to_vec();
        // AOE_TEST_DATA_PATH=afpacket runs the same tests on the AF_PACKET data path.
        let path = std::env::var("AOE_TEST_DATA_PATH").unwrap_or_default();
        if !path.is_empty() {
            extra.extend_from_slice(&["--mode", &path]);
        }
        let args = self.export_args(image, &extra);
        self.spawn(&self.target_ns, &args)
    }

    /// A bpffs for this lab's pins (`AOE_BPFFS=...`), mounted on first use and unmounted
    /// with the lab: `ip netns exec` hides the host's /sys/fs/bpf.
    pub fn bpffs_env(&self) -> Result<String> {
        let dir = self.dir.join("bpf");
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            sh(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))?;
        }
        Ok(format!("AOE_BPFFS={}", dir.display()))
    }

    /// The environment of live control in this lab: its bpffs, and its own run dir for
    /// control sockets (`AOE_RUN_DIR`), so `aoe-ctl acl` reaches this lab's daemon only.
    pub fn live_env(&self) -> Result<Vec<String>> {
        let run = self.dir.join("run");
        std::fs::create_dir_all(&run)?;
        Ok(vec![
            self.bpffs_env()?,
            format!("AOE_RUN_DIR={}", run.display()),
        ])
    }

    /// `aoe-ctl ARGS` in the target namespace with this lab's live-control environment.
    pub fn spawn_live(&self, args: &[&str]) -> Result<Proc> {
        spawn_in_env(&self.target_ns, &self.live_env()?, args)
    }

    /// Run `aoe-ctl ARGS` to completion in the target namespace with this lab's
    /// live-control environment.
    pub fn run_live(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("ip")
            .args(["netns", "exec", &self.target_ns, "env"])
            .args(self.live_env()?)
            .arg(aoe_ctl())
            .args(args)
            .output()?)
    }

    /// A second veth pair between the two namespaces: (target side, initiator side).
    pub fn add_link(&self, suffix: &str) -> Result<(String, String)> {
        let t = format!("{}{suffix}", self.target_if);
        let i = format!("{}{suffix}", self.initiator_if);
        veth(
            &[&t, "netns", &self.target_ns],
            &[&i, "netns", &self.initiator_ns],
        )?;
        for (ns, dev) in [(&self.target_ns, &t), (&self.initiator_ns, &i)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            quiet_ipv6(ns, dev);
        }
        Ok((t, i))
    }

    /// Debian's vblade serving `image` as e1.2 on the target side (stopped on drop).
    pub fn start_vblade(&self, image: &Path, args: &[&str]) -> Result<Proc> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.target_ns, "vblade"])
            .args(args)
            .args(["1", "2", &self.target_if])
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting vblade (apt-get install vblade)")?;
        // vblade says nothing when it is ready: wait for its AoE packet socket.
        let mut child = child;
        let start = std::time::Instant::now();
        while !has_aoe_socket(child.id()) {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                bail!("vblade exited ({status}): {}", err.trim());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("vblade opened no AoE socket in 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Proc::new(child, String::new(), "vblade".into()))
    }

    /// The benchmark ceiling (`aoe-lab ceiling`) answering as e1.2 with `sectors` on the
    /// target side.
    pub fn start_ceiling(&self, sectors: u64) -> Result<Proc> {
        spawn_lab_in(
            &self.target_ns,
            &[
                "ceiling",
                "--iface",
                &self.target_if,
                "--shelf",
                "1",
                "--slot",
                "2",
                "--sectors",
                &sectors.to_string(),
            ],
        )
    }

    /// The AF_XDP floor (`aoe-lab echo`: the product's classifier and sockets, no engine, no
    /// storage) answering as e1.2 with `sectors` on the target side.
    pub fn start_echo(&self, sectors: u64) -> Result<Proc> {
        spawn_lab_in(
            &self.target_ns,
            &[
                "echo",
                "--iface",
                &self.target_if,
                "--shelf",
                "1",
                "--slot",
                "2",
                "--sectors",
                &sectors.to_string(),
            ],
        )
    }

    /// `aoe-ctl bench` of e1.2 from the initiator side with `args`.
    pub fn bench(&self, args: &[&str]) -> Result<Output> {
        self.bench_via(&self.initiator_if, args)
    }

    /// `aoe-ctl bench` of e1.2 from interface `iface` of the initiator namespace.
    pub fn bench_via(&self, iface: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["bench", "--iface", iface, "--target", "e1.2"];
        all.extend_from_slice(args);
        self.run(&self.initiator_ns, &all)
    }

    /// `aoe-ctl bench` of e1.2 from `iface` of the initiator namespace, in the background
    /// (stdout and stderr piped).
    pub fn spawn_bench<S: AsRef<std::ffi::OsStr>>(&self, iface: &str, args: &[S]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.initiator_ns])
            .arg(aoe_ctl())
            .args(["bench", "--iface", iface, "--target", "e1.2"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting aoe-ctl bench")
    }

    /// `n` more initiators on the segment: macvlan interfaces on the initiator's veth, each
    /// with a MAC of its own. Returns their names.
    pub fn macvlans(&self, n: usize) -> Result<Vec<String>> {
        (0..n)
            .map(|k| {
                let name = format!("{}m{k}", self.initiator_if);
                let ns = &self.initiator_ns;
                ip(&[
                    "-n",
                    ns,
                    "link",
                    "add",
                    &name,
                    "link",
                    &self.initiator_if,
                    "type",
                    "macvlan",
                    "mode",
                    "bridge",
                ])?;
                ip(&["-n", ns, "link", "set", &name, "up"])?;
                quiet_ipv6(ns, &name);
                Ok(name)
            })
            .collect()
    }

    /// Run `aoe-ctl ARGS` to completion in a namespace.
    pub fn run(&self, ns: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(aoe_ctl())
            .args(args)
            .output()
            .context("running aoe-ctl")
    }

    /// `aoe-ctl discover` on the initiator side, with `extra` options.
    pub fn discover(&self, extra: &[&str]) -> Result<Output> {
        let mut args = vec!["discover", "--iface", &self.initiator_if];
        args.extend_from_slice(extra);
        self.run(&self.initiator_ns, &args)
    }

    /// `aoe-ctl verify` of e1.2 from the initiator side, writing `bytes` (e.g. "16M").
    pub fn verify(&self, bytes: &str, extra: &[&str]) -> Result<Output> {
        let mut args = vec![
            "verify",
            "--iface",
            &self.initiator_if,
            "--target",
            "e1.2",
            "--bytes",
            bytes,
        ];
        args.extend_from_slice(extra);
        self.run(&self.initiator_ns, &args)
    }

    /// Run `f` on a thread that has entered network namespace `ns` (sockets it opens stay
    /// in that namespace).
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
    }

    /// Is any XDP program attached to the target interface?
    pub fn target_has_xdp(&self) -> Result<bool> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.target_ns,
                "link",
                "show",
                "dev",
                &self.target_if,
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("xdp"))
    }
}

/// Does process `pid` hold a packet socket for the AoE ethertype (88a2)?
fn has_aoe_socket(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| {
            let l = std::fs::read_link(fd.ok()?.path()).ok()?;
            let l = l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(l.to_string())
        })
        .collect();
    // Columns: sk RefCnt Type Proto Iface R Rmem User Inode.
    let packet = std::fs::read_to_string(format!("/proc/{pid}/net/packet")).unwrap_or_default();
    packet.lines().skip(1).any(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        c.len() >= 9 && c[3] == "88a2" && inodes.iter().any(|i| i == c[8])
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        let _ = ip(&["netns", "del", &self.target_ns]);
        let _ = ip(&["netns", "del", &self.initiator_ns]);
        let bpf = self.dir.join("bpf");
        if bpf.exists() {
            let _ = Command::new("umount").arg(&bpf).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::id_of;

    #[test]
    fn lab_ids_are_unambiguous_and_fit_interface_names() {
        // Hex pid then decimal (or hex) sequence, unseparated, made these equal.
        assert_ne!(id_of(0x1, 23), id_of(0x12, 3));
        assert_ne!(id_of(0x1, 0x23), id_of(0x12, 0x3));
        // The longest name: a macvlan "ai{id}m{k}" of the last pid (pid_max 2^22).
        let longest = format!("ai{}m12", id_of(1 << 22, 0xfff));
        assert!(longest.len() <= 15, "{longest}");
    }
}
