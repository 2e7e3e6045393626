//! The state file next to the config: what initiators and operators changed at run time
//! (an export's config string, MAC mask list and reservation list), so they survive
//! restarts as they would on a real EtherDrive. Each list is kept once it has been changed
//! at run time; until then the export's `config` and `allow` from exports.toml apply.
//! Written before the reply to the change leaves (temporary file, fsync, rename, directory
//! fsync), so an acknowledged change is never lost. A file that cannot be read exactly is
//! refused: an export never starts with guessed access rules.
//!
//! Root writes it, in a directory that may not be root's alone (`--state` names any path)
//! and on a remote host's request (a config set): every name in it is opened relative to
//! the directory's descriptor, never through a symbolic link, and the temporary file is
//! created new (O_EXCL, mode 0600), so a link or file planted there is never written
//! through; the state file itself must be a regular file.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use aoe_common::maps::MAX_MASKS;
use aoe_common::wire::{Mac, CONFIG_STRING_MAX};
use serde::{Deserialize, Serialize};

use crate::net::{format_mac, parse_mac};
use crate::serve::access::MAX_RESERVE;
use crate::serve::export::ControlState;

/// The format written; version 1 (config strings alone, no version field) is still read.
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    version: u32,
    exports: BTreeMap<String, Entry>,
}

/// Version 1: config strings alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentsV1 {
    config_hex: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Hex-encoded: strings are bytes, not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    masks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reserve: Option<Vec<String>>,
}

/// What the state file keeps for one export; `None` is "never changed at run time".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub config: Option<Vec<u8>>,
    pub masks: Option<Vec<Mac>>,
    pub reserve: Option<Vec<Mac>>,
}

impl Kept {
    /// `base` (what exports.toml says) with what is kept in its place.
    pub fn over(&self, mut base: ControlState) -> ControlState {
        if let Some(c) = &self.config {
            base.config = c.clone();
        }
        if let Some(m) = &self.masks {
            base.lists.masks = m.clone();
        }
        if let Some(r) = &self.reserve {
            base.lists.reserve = r.clone();
        }
        base
    }

    fn is_empty(&self) -> bool {
        *self == Kept::default()
    }
}

pub struct StateFile {
    path: PathBuf,
    kept: Mutex<BTreeMap<String, Kept>>,
}

impl StateFile {
    /// `exports.toml` -> `exports.state`.
    pub fn beside(config: &Path) -> PathBuf {
        config.with_extension("state")
    }

    /// Load it; a missing file is an empty state, anything not read exactly an error that
    /// names the file.
    pub fn open(path: PathBuf) -> Result<StateFile> {
        let kept = match read_regular(&path) {
            Ok(text) => {
                parse(&text).map_err(|e| anyhow!("state file {}: {e:#}", path.display()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).context(format!("reading state file {}", path.display())),
        };
        Ok(StateFile {
            path,
            kept: Mutex::new(kept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is kept for export `name`.
    pub fn kept(&self, name: &str) -> Kept {
        self.kept
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Export `name` changed from `before` to `after`: keep every part that changed (the
    /// parts kept already follow `after` too). Returns once it is on disk; a no-op when
    /// nothing kept changes.
    pub fn record(&self, name: &str, before: &ControlState, after: &ControlState) -> Result<()> {
        let mut all = self.kept.lock().unwrap();
        let was = all.get(name).cloned().unwrap_or_default();
        let mut now = was.clone();
        if now.config.is_some() || before.config != after.config {
            now.config = Some(after.config.clone());
        }
        if now.masks.is_some() || before.lists.masks != after.lists.masks {
            now.masks = Some(after.lists.masks.clone());
        }
        if now.reserve.is_some() || before.lists.reserve != after.lists.reserve {
            now.reserve = Some(after.lists.reserve.clone());
        }
        if now == was {
            return Ok(());
        }
        all.insert(name.to_string(), now);
        let written = self
            .write(&render(&all))
            .with_context(|| format!("writing state file {}", self.path.display()));
        if written.is_err() {
            // Not kept: forget it, or the same change made again would look kept already,
            // and the next write for another export would keep it unacknowledged.
            if was.is_empty() {
                all.remove(name);
            } else {
                all.insert(name.to_string(), was);
            }
        }
        written
    }

    /// Temporary file, fsync, rename over the old one, fsync the directory: a crash
    /// leaves the old file or the new one, never a mix. Every name is resolved in the
    /// directory's descriptor; the temporary is new, never a planted file or link.
    fn write(&self, text: &str) -> io::Result<()> {
        let (dir, name) = split(&self.path)?;
        let dir = open_dir(dir)?;
        // A name no other writer uses, so a stale one never blocks the next write.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = cstr(OsStr::new(&tmp))?;
        let written = (|| {
            let mut f = create_new(&dir, &tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            rename_in(&dir, &tmp, &cstr(name)?)
        })();
        if written.is_err() {
            // SAFETY: unlinkat of a name in our directory descriptor (not followed if a link).
            unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
        }
        written?;
        File::from(dir).sync_all()
    }
}

/// The directory and the file name of `path`.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = cstr(dir.as_os_str())?;
    // SAFETY: a NUL-terminated path; the descriptor is owned right after.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new file `name` in `dir`, mode 0600; fails if anything (a link included) is there.
fn create_new(dir: &OwnedFd, name: &CString) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name relative to our directory descriptor.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own alone.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn rename_in(dir: &OwnedFd, from: &CString, to: &CString) -> io::Result<()> {
    // SAFETY: two NUL-terminated names relative to our directory descriptor; a link at `to`
    // is replaced, not followed.
    let r = unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The contents of `path`, which must be a regular file (not a link to one, nor a FIFO or a
/// device that would hang or feed the parser).
fn read_regular(path: &Path) -> io::Result<String> {
    let (dir, name) = split(path)?;
    let dir = open_dir(dir)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let name = cstr(name)?;
    // SAFETY: a NUL-terminated name relative to our directory descriptor.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(io::Error::other(
                "a symbolic link; the state file must be a regular file",
            ));
        }
        return Err(e);
    }
    // SAFETY: a descriptor we just opened and own alone.
    let mut f = unsafe { File::from_raw_fd(fd) };
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

fn render(all: &BTreeMap<String, Kept>) -> String {
    let macs = |l: &Option<Vec<Mac>>| l.as_ref().map(|l| l.iter().map(format_mac).collect());
    let c = Contents {
        version: VERSION,
        exports: all
            .iter()
            .map(|(name, k)| {
                let e = Entry {
                    config_hex: k.config.as_deref().map(encode_hex),
                    masks: macs(&k.masks),
                    reserve: macs(&k.reserve),
                };
                (name.clone(), e)
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&c).expect("plain JSON values");
    text.push('\n');
    text
}

fn parse(text: &str) -> Result<BTreeMap<String, Kept>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("damaged: {e}"))?;
    let entries: BTreeMap<String, Entry> = match value.get("version") {
        None => {
            let v1: ContentsV1 =
                serde_json::from_value(value).map_err(|e| anyhow!("damaged: {e}"))?;
            v1.config_hex
                .into_iter()
                .map(|(name, hex)| {
                    let e = Entry {
                        config_hex: Some(hex),
                        ..Entry::default()
                    };
                    (name, e)
                })
                .collect()
        }
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {
            let c: Contents = serde_json::from_value(value).map_err(|e| anyhow!("damaged: {e}"))?;
            c.exports
        }
        Some(v) => bail!("version {v} is not one this aoe-ctl reads (it reads 1 and {VERSION})"),
    };
    let mut out = BTreeMap::new();
    for (name, e) in entries {
        crate::address::parse_target(&name).map_err(|e| anyhow!("bad export name: {e:#}"))?;
        let config = match e.config_hex {
            None => None,
            Some(hex) => {
                let b = decode_hex(&hex).ok_or_else(|| anyhow!("{name}: bad hex in config_hex"))?;
                // It becomes the export's string as it is: the same limit as everywhere.
                if b.len() > CONFIG_STRING_MAX {
                    bail!(
                        "{name}: {} bytes, a config string holds at most {CONFIG_STRING_MAX}",
                        b.len()
                    );
                }
                Some(b)
            }
        };
        let masks = macs(&name, "masks", e.masks, MAX_MASKS)?;
        let reserve = macs(&name, "reserve", e.reserve, MAX_RESERVE)?;
        out.insert(
            name,
            Kept {
                config,
                masks,
                reserve,
            },
        );
    }
    Ok(out)
}

/// A kept MAC list, checked as an initiator's edit would be: valid, distinct, within `max`.
fn macs(name: &str, what: &str, list: Option<Vec<String>>, max: usize) -> Result<Option<Vec<Mac>>> {
    let Some(list) = list else { return Ok(None) };
    if list.len() > max {
        bail!(
            "{name}: {what}: {} MACs, the list holds at most {max}",
            list.len()
        );
    }
    let mut out: Vec<Mac> = Vec::with_capacity(list.len());
    for s in &list {
        let m = parse_mac(s).map_err(|e| anyhow!("{name}: {what}: {e:#}"))?;
        if out.contains(&m) {
            bail!("{name}: {what}: {s} twice");
        }
        out.push(m);
    }
    Ok(Some(out))
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::access::Lists;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aoe-state-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn state(config: &[u8], masks: &[Mac], reserve: &[Mac]) -> ControlState {
        ControlState {
            config: config.to_vec(),
            lists: Lists {
                masks: masks.to_vec(),
                reserve: reserve.to_vec(),
            },
        }
    }

    fn refused(path: &Path, text: &str) -> String {
        std::fs::write(path, text).unwrap();
        let e = StateFile::open(path.to_path_buf()).err().unwrap();
        let line = format!("{e:#}");
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.contains(&path.display().to_string()), "{line}");
        line
    }

    #[test]
    fn keeps_all_three_across_a_reopen() {
        let d = dir("reopen");
        let path = StateFile::beside(&d.join("exports.toml"));
        let s = StateFile::open(path.clone()).unwrap();
        assert_eq!(s.kept("e1.2"), Kept::default());
        let start = state(b"", &[A], &[]);
        // A string set: only the string is kept; the mask list still follows the config.
        let named = state(b"host-a\x00\xff", &[A], &[]);
        s.record("e1.2", &start, &named).unwrap();
        let k = StateFile::open(path.clone()).unwrap().kept("e1.2");
        assert_eq!(k.config.as_deref(), Some(&b"host-a\x00\xff"[..]));
        assert_eq!((k.masks, k.reserve), (None, None));
        // A reservation and a mask edit: kept, with the string.
        let reserved = state(b"host-a\x00\xff", &[A, B], &[B]);
        s.record("e1.2", &named, &reserved).unwrap();
        let again = StateFile::open(path.clone()).unwrap();
        assert_eq!(again.kept("e1.2").over(state(b"", &[], &[])), reserved);
        // Cleared lists stay kept as empty, not forgotten (they would fall back to `allow`).
        let open = state(b"host-a\x00\xff", &[], &[]);
        s.record("e1.2", &reserved, &open).unwrap();
        let k = StateFile::open(path.clone()).unwrap().kept("e1.2");
        assert_eq!((k.masks, k.reserve), (Some(vec![]), Some(vec![])));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_version_1() {
        let d = dir("v1");
        let path = d.join("exports.state");
        std::fs::write(&path, "{\"config_hex\": {\"e1.2\": \"6869\"}}").unwrap();
        let k = StateFile::open(path).unwrap().kept("e1.2");
        assert_eq!(k.config.as_deref(), Some(&b"hi"[..]));
        assert_eq!(k.masks, None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_file_is_refused_in_one_line() {
        let d = dir("damaged");
        let path = d.join("exports.state");
        assert!(refused(&path, "{").contains("damaged"));
        assert!(refused(&path, "{\"version\": 3, \"exports\": {}}").contains("version 3"));
        let long = "78".repeat(CONFIG_STRING_MAX + 1);
        let e = refused(
            &path,
            &format!(
                "{{\"version\": 2, \"exports\": {{\"e1.2\": {{\"config_hex\": \"{long}\"}}}}}}"
            ),
        );
        assert!(e.contains("e1.2: 1025 bytes"), "{e}");
        let bad_mac =
            "{\"version\": 2, \"exports\": {\"e1.2\": {\"masks\": [\"02:00:zz:00:00:01\"]}}}";
        assert!(refused(&path, bad_mac).contains("e1.2: masks"));
        let many: Vec<String> = (0..=MAX_MASKS)
            .map(|i| format!("\"02:00:00:00:00:{i:02x}\""))
            .collect();
        let full = format!(
            "{{\"version\": 2, \"exports\": {{\"e1.2\": {{\"masks\": [{}]}}}}}}",
            many.join(",")
        );
        assert!(refused(&path, &full).contains("at most"));
        let twice = "{\"version\": 2, \"exports\": {\"e1.2\": {\"reserve\": [\"02:00:00:00:00:01\", \"02:00:00:00:00:01\"]}}}";
        assert!(refused(&path, twice).contains("twice"));
        let unknown = "{\"version\": 2, \"exports\": {\"e1.2\": {\"mask\": []}}}";
        assert!(refused(&path, unknown).contains("unknown field"));
        let name = "{\"version\": 2, \"exports\": {\"disk\": {}}}";
        assert!(refused(&path, name).contains("bad export name"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn planted_links_are_never_written_through_nor_read() {
        let d = dir("planted");
        let victim = d.join("victim");
        std::fs::write(&victim, "root's file\n").unwrap();
        let path = d.join("exports.state");
        let s = StateFile::open(path.clone()).unwrap();
        // Links at the temporary name of old, and at the state file's own name.
        std::os::unix::fs::symlink(&victim, d.join("exports.state.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        s.record("e1.2", &state(b"", &[], &[]), &state(b"x", &[], &[]))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file\n");
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.is_file(), "the link was replaced, not followed");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // Reading: a link, or a FIFO, where the state file should be is refused.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = StateFile::open(path.clone()).err().unwrap();
        assert!(format!("{e:#}").contains("regular file"), "{e:#}");
        std::fs::remove_file(&path).unwrap();
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = StateFile::open(path.clone()).err().unwrap();
        assert!(format!("{e:#}").contains("regular file"), "{e:#}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_is_forgotten() {
        let d = dir("fail");
        let path = StateFile::beside(&d.join("exports.toml"));
        let s = StateFile::open(path.clone()).unwrap();
        let empty = state(b"", &[], &[]);
        s.record("e1.2", &empty, &state(b"old", &[], &[])).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        assert!(s
            .record("e1.2", &state(b"old", &[], &[]), &state(b"new", &[], &[A]))
            .is_err());
        assert!(s
            .record("e1.3", &empty, &state(b"other", &[], &[]))
            .is_err());
        assert_eq!(s.kept("e1.2").config.as_deref(), Some(&b"old"[..]));
        assert_eq!(s.kept("e1.2").reserve, None);
        assert_eq!(s.kept("e1.3"), Kept::default());
        // The same change again is written, not taken for kept.
        std::fs::create_dir_all(&d).unwrap();
        s.record("e1.2", &state(b"old", &[], &[]), &state(b"new", &[], &[A]))
            .unwrap();
        let again = StateFile::open(path).unwrap();
        assert_eq!(again.kept("e1.2").config.as_deref(), Some(&b"new"[..]));
        assert_eq!(again.kept("e1.2").reserve, Some(vec![A]));
        assert_eq!(again.kept("e1.3"), Kept::default());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
