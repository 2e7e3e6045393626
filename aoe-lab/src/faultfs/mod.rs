//! `aoe-lab faultfs`: a FUSE filesystem with a volatile write cache and fault injection,
//! for power-cut and failing-disk tests (as LazyFS and dm-flakey are for storage products).
//! It shows one file, MOUNTPOINT/NAME, whose data lives in a backing file; writes stay in
//! a cache (`disk.rs`) until an fsync writes them there, so a `cut` on the control socket
//! (`control.rs`) leaves exactly what was synced. Faults (`faults.rs`) fail reads, writes
//! or syncs of a range, and `stall` holds every request for a while.

pub mod control;
pub mod disk;
pub mod faults;
pub mod fuse;

use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

/// What to mount.
pub struct Options {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    /// The file's name under the mountpoint (default: the backing file's).
    pub name: Option<OsString>,
}

/// A mounted faultfs: serves until `stop` (or until someone unmounts it).
pub struct Mounted {
    unmounter: fuser::SessionUnmounter,
    session: std::thread::JoinHandle<std::io::Result<()>>,
    control: PathBuf,
    pub file: PathBuf,
}

/// Mount it and start answering, the kernel and the control socket.
pub fn mount(o: &Options) -> Result<Mounted> {
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&o.backing)
        .with_context(|| format!("cannot open {}", o.backing.display()))?;
    if !backing.metadata()?.is_file() {
        anyhow::bail!("{} is not a regular file", o.backing.display());
    }
    let name = match &o.name {
        Some(n) => n.clone(),
        None => o
            .backing
            .file_name()
            .with_context(|| format!("{} names no file", o.backing.display()))?
            .to_owned(),
    };
    let disk = Arc::new(Mutex::new(disk::Disk::new(backing)?));
    let _ = std::fs::remove_file(&o.control);
    let listener = UnixListener::bind(&o.control)
        .with_context(|| format!("cannot bind {}", o.control.display()))?;
    let fs = fuse::FaultFs {
        disk: disk.clone(),
        name: name.clone(),
        // SAFETY: getuid and getgid cannot fail.
        uid: unsafe { libc::getuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getgid() },
        born: std::time::SystemTime::now(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("faultfs".into()),
        fuser::MountOption::Subtype("faultfs".into()),
        fuser::MountOption::RW,
    ];
    config.acl = fuser::SessionACL::All;
    // A stalled request holds a thread; the others keep the control flowing.
    config.n_threads = Some(4);
    let mut session = fuser::Session::new(fs, &o.mountpoint, &config)
        .with_context(|| format!("cannot mount faultfs on {}", o.mountpoint.display()))?;
    let notifier = session.notifier();
    let unmounter = session.unmount_callable();
    let session = std::thread::Builder::new()
        .name("faultfs".into())
        .spawn(move || session.run())?;
    let invalidate: control::Invalidate = Box::new(move |at, len| {
        let len = i64::try_from(len).unwrap_or(0);
        let _ = notifier.inval_inode(fuse::FILE, at as i64, len);
    });
    std::thread::Builder::new()
        .name("faultfs-control".into())
        .spawn(move || control::serve(listener, disk, invalidate))?;
    Ok(Mounted {
        unmounter,
        session,
        control: o.control.clone(),
        file: o.mountpoint.join(name),
    })
}

impl Mounted {
    /// Has the filesystem been unmounted (from outside) and its session ended?
    pub fn ended(&self) -> bool {
        self.session.is_finished()
    }

    /// Unmount (lazily when busy) and wait a moment for the session to end; whatever still
    /// holds the mount then sees the connection end as the process exits.
    pub fn stop(mut self) -> Result<()> {
        if self.unmounter.unmount().is_err() {
            let _ = detach(&self.file);
        }
        let _ = std::fs::remove_file(&self.control);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !self.session.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.session.is_finished() {
            let _ = self.session.join();
        }
        Ok(())
    }
}

fn detach(file: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(dir) = file.parent() else {
        return Ok(());
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: umount2 on a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
