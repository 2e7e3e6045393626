//! What the guests boot: Debian's kernel with its aoe.ko (unpacked, never installed), an
//! initramfs of busybox + the modules + our /init, and Debian's iPXE. Cached in
//! .tools/interop/ and fetched with apt-get on first use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// Modules the guest loads; their dependencies come from modules.dep.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "aoe", "ext4", "crc32c_generic"];
const INIT: &str = include_str!("guest-init.sh");
/// The scale-out guest's: md and device-mapper on top.
const SCALE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "aoe",
    "ext4",
    "crc32c_generic",
    "md-mod",
    "raid1",
    "raid456",
    "dm-mod",
];
const SCALE_INIT: &str = include_str!("scale-init.sh");
/// The resize guest's (resize-init.sh): the plain guest's modules, e2fsprogs from the scale-out
/// userland.
const RESIZE_INIT: &str = include_str!("resize-init.sh");
/// Debian packages whose programs the scale-out guest runs, and the programs (with the names
/// they are also called by: lvm dispatches on its name).
const SCALE_PACKAGES: &[&str] = &["mdadm", "lvm2", "libdevmapper-event1.02.1", "e2fsprogs"];
const SCALE_PROGRAMS: &[(&str, &[&str])] = &[
    ("sbin/mdadm", &[]),
    (
        "sbin/lvm",
        &["pvcreate", "vgcreate", "lvcreate", "vgextend", "lvextend"],
    ),
    ("sbin/mke2fs", &["mkfs.ext4"]),
    ("sbin/e2fsck", &[]),
    ("sbin/resize2fs", &[]),
    ("etc/mke2fs.conf", &[]),
];

pub struct Assets {
    pub kernel: PathBuf,
    pub kernel_package: String,
    pub initramfs: PathBuf,
    /// The scale-out guest's initramfs (scale-init.sh, md, LVM, e2fsprogs).
    pub scale_initramfs: PathBuf,
    /// The resize guest's initramfs (resize-init.sh, e2fsprogs).
    pub resize_initramfs: PathBuf,
    pub ipxe: PathBuf,
    pub ipxe_version: String,
}

fn cache() -> PathBuf {
    aoe_integration::workspace_root().join(".tools/interop")
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-get download` a package into the cache and unpack it into `dest` (once); returns
/// the package's version.
fn fetch(package: &str, dest: &Path) -> Result<String> {
    let stamp = dest.join("DEBIAN-VERSION");
    if let Ok(v) = std::fs::read_to_string(&stamp) {
        return Ok(v);
    }
    let dir = cache();
    std::fs::create_dir_all(&dir)?;
    output(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&dir),
    )
    .with_context(|| format!("downloading {package}"))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(dest.parent().unwrap())?;
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let version = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
    let version = version.trim().to_string();
    std::fs::write(partial.join("DEBIAN-VERSION"), &version)?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&partial, dest)?;
    std::fs::remove_file(&deb)?;
    Ok(version)
}

pub fn prepare() -> Result<Assets> {
    // The versioned package moves with security updates: resolve it now.
    let depends = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let kernel_package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.as_bytes()[12].is_ascii_digit())
        .ok_or_else(|| anyhow!("apt-cache names no linux-image for linux-image-amd64"))?
        .to_string();
    let version = kernel_package
        .trim_start_matches("linux-image-")
        .to_string();
    let root = cache().join(&kernel_package);
    let kernel_version = fetch(&kernel_package, &root)?;
    let kernel = root.join(format!("boot/vmlinuz-{version}"));
    let modules = root.join("lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        // The .deb ships no modules.dep.
        output(
            Command::new("busybox")
                .arg("depmod")
                .arg("-b")
                .arg(&root)
                .arg(&version),
        )?;
    }
    let initramfs = cache().join(format!("initramfs-{version}.cpio"));
    build_initramfs(&modules, &version, MODULES, INIT, None, &initramfs)?;
    let userland = cache().join("scale-userland");
    for p in SCALE_PACKAGES {
        fetch(p, &userland.join(p))?;
    }
    let scale_initramfs = cache().join(format!("initramfs-scale-{version}.cpio"));
    build_initramfs(
        &modules,
        &version,
        SCALE_MODULES,
        SCALE_INIT,
        Some(&userland),
        &scale_initramfs,
    )?;
    let resize_initramfs = cache().join(format!("initramfs-resize-{version}.cpio"));
    build_initramfs(
        &modules,
        &version,
        MODULES,
        RESIZE_INIT,
        Some(&userland),
        &resize_initramfs,
    )?;

    let ipxe_root = cache().join("ipxe");
    let ipxe_version = fetch("ipxe", &ipxe_root)?;
    Ok(Assets {
        kernel,
        kernel_package: format!("{kernel_package} {kernel_version}"),
        initramfs,
        scale_initramfs,
        resize_initramfs,
        ipxe: ipxe_root.join("boot/ipxe.lkrn"),
        ipxe_version,
    })
}

/// The modules in `wanted` and everything they depend on, as paths relative to `modules`.
fn closure(modules: &Path, wanted: &[&str]) -> Result<BTreeSet<String>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))?;
    let deps_of = |m: &str| -> Option<Vec<String>> {
        dep.lines().find_map(|l| {
            let (path, deps) = l.split_once(':')?;
            let name = Path::new(path).file_name()?.to_str()?;
            let stem = name.split('.').next()?;
            (stem == m || path == m).then(|| {
                std::iter::once(path.to_string())
                    .chain(deps.split_whitespace().map(String::from))
                    .collect()
            })
        })
    };
    let mut all = BTreeSet::new();
    let mut todo: Vec<String> = wanted.iter().map(|m| m.to_string()).collect();
    while let Some(m) = todo.pop() {
        let found = deps_of(&m).ok_or_else(|| anyhow!("module {m} not in modules.dep"))?;
        for p in found {
            if all.insert(p.clone()) {
                todo.push(p);
            }
        }
    }
    Ok(all)
}

fn build_initramfs(
    modules: &Path,
    version: &str,
    wanted: &[&str],
    init_script: &str,
    userland: Option<&Path>,
    out: &Path,
) -> Result<()> {
    let stage = out.with_extension("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("bin"))?;
    let busybox = which("busybox").ok_or_else(|| anyhow!("busybox not installed"))?;
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    let init = stage.join("init");
    std::fs::write(&init, init_script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let dest = stage.join("lib/modules").join(version);
    let needed = closure(modules, wanted)?;
    for rel in &needed {
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(modules.join(rel), &to)?;
    }
    // modprobe needs modules.dep; only the lines of the modules we ship.
    let dep: String = std::fs::read_to_string(modules.join("modules.dep"))?
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|p| needed.contains(p)))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dest.join("modules.dep"), dep)?;
    if let Some(userland) = userland {
        install_programs(userland, &stage)?;
    }
    let file = std::fs::File::create(out)?;
    let ok = Command::new("sh")
        .args(["-c", "find . | busybox cpio -o -H newc 2>/dev/null"])
        .current_dir(&stage)
        .stdout(file)
        .status()?
        .success();
    std::fs::remove_dir_all(&stage)?;
    if !ok {
        bail!("building the initramfs with busybox cpio failed");
    }
    Ok(())
}

/// The scale-out guest's programs from the unpacked packages under `userland`, with the
/// shared libraries ldd resolves for them (the packages' own first, then the host's: both
/// Debian bookworm, the guest kernel's release).
fn install_programs(userland: &Path, stage: &Path) -> Result<()> {
    let pkg_roots: Vec<PathBuf> = SCALE_PACKAGES.iter().map(|p| userland.join(p)).collect();
    let lib_path: Vec<String> = pkg_roots
        .iter()
        .flat_map(|r| {
            [
                r.join("lib/x86_64-linux-gnu"),
                r.join("usr/lib/x86_64-linux-gnu"),
            ]
        })
        .map(|p| p.display().to_string())
        .collect();
    let mut libs = BTreeSet::new();
    for (rel, aliases) in SCALE_PROGRAMS {
        let from = pkg_roots
            .iter()
            .map(|r| r.join(rel))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("{rel} is in none of {SCALE_PACKAGES:?}"))?;
        let to = stage.join(rel);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(&from, &to)?;
        for a in *aliases {
            std::os::unix::fs::symlink(Path::new(rel).file_name().unwrap(), to.with_file_name(a))?;
        }
        if rel.starts_with("etc/") {
            continue;
        }
        let ldd = output(
            Command::new("ldd")
                .arg(&from)
                .env("LD_LIBRARY_PATH", lib_path.join(":")),
        )?;
        for line in ldd.lines() {
            // "libx.so.1 => /path (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
            let path = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = path {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    for lib in libs {
        // A package's own library lands where the host would have it.
        let name = lib.file_name().unwrap();
        let to = stage.join("lib/x86_64-linux-gnu").join(name);
        let to = if lib.starts_with("/lib64") {
            stage.join("lib64").join(name)
        } else {
            to
        };
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(())
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}
