//! The state file next to the config: config strings set by initiators (AoE Query Config
//! set / force set), so they survive restarts as they would on a real EtherDrive. Written
//! before the reply to the set leaves (temporary file, fsync, rename), so an acknowledged
//! string is never lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use aoe_common::wire::CONFIG_STRING_MAX;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Contents {
    /// Config string per target (e1.2), hex-encoded: strings are bytes, not text.
    config_hex: BTreeMap<String, String>,
}

pub struct StateFile {
    path: PathBuf,
    strings: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl StateFile {
    /// `exports.toml` -> `exports.state`.
    pub fn beside(config: &Path) -> PathBuf {
        config.with_extension("state")
    }

    /// Load it; a missing file is an empty state.
    pub fn open(path: PathBuf) -> Result<StateFile> {
        let mut strings = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let c: Contents = serde_json::from_str(&text)
                    .map_err(|e| anyhow!("state file {} is damaged: {e}", path.display()))?;
                for (name, hex) in c.config_hex {
                    let bytes = decode_hex(&hex).ok_or_else(|| {
                        anyhow!("state file {}: bad hex for {name}", path.display())
                    })?;
                    // It becomes the export's string as it is: the same limit as everywhere.
                    if bytes.len() > CONFIG_STRING_MAX {
                        bail!(
                            "state file {}: {name}: {} bytes, a config string holds at most {CONFIG_STRING_MAX}",
                            path.display(),
                            bytes.len()
                        );
                    }
                    strings.insert(name, bytes);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("reading {}", path.display())),
        }
        Ok(StateFile {
            path,
            strings: Mutex::new(strings),
        })
    }

    pub fn config(&self, name: &str) -> Option<Vec<u8>> {
        self.strings.lock().unwrap().get(name).cloned()
    }

    /// Keep `config` as the string of `name`; a no-op when unchanged.
    pub fn record(&self, name: &str, config: &[u8]) -> Result<()> {
        let mut s = self.strings.lock().unwrap();
        if s.get(name).map(Vec::as_slice) == Some(config) {
            return Ok(());
        }
        let before = s.insert(name.to_string(), config.to_vec());
        let c = Contents {
            config_hex: s.iter().map(|(k, v)| (k.clone(), encode_hex(v))).collect(),
        };
        let tmp = self.path.with_extension("state.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(serde_json::to_string_pretty(&c)?.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })?
                .sync_all()?;
            }
            Ok(())
        };
        let written = write().with_context(|| format!("writing {}", self.path.display()));
        if written.is_err() {
            // Not kept: forget it, or the same string set again would look kept already,
            // and the next write for another export would keep it unacknowledged.
            match before {
                Some(b) => s.insert(name.to_string(), b),
                None => s.remove(name),
            };
        }
        written
    }
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

    #[test]
    fn survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("aoe-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = StateFile::beside(&dir.join("exports.toml"));
        let s = StateFile::open(path.clone()).unwrap();
        assert_eq!(s.config("e1.2"), None);
        s.record("e1.2", b"host-a\x00\xff").unwrap();
        let again = StateFile::open(path.clone()).unwrap();
        assert_eq!(again.config("e1.2").unwrap(), b"host-a\x00\xff");
        let long = "78".repeat(CONFIG_STRING_MAX + 1);
        std::fs::write(
            &path,
            format!("{{\"config_hex\": {{\"e1.2\": \"{long}\"}}}}"),
        )
        .unwrap();
        let e = StateFile::open(path.clone()).err().unwrap().to_string();
        assert!(e.contains("e1.2: 1025 bytes"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(StateFile::open(path)
            .err()
            .unwrap()
            .to_string()
            .contains("damaged"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_forgotten() {
        let dir = std::env::temp_dir().join(format!("aoe-state-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = StateFile::beside(&dir.join("exports.toml"));
        let s = StateFile::open(path.clone()).unwrap();
        s.record("e1.2", b"old").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(s.record("e1.2", b"new").is_err());
        assert!(s.record("e1.3", b"other").is_err());
        assert_eq!(s.config("e1.2").unwrap(), b"old");
        assert_eq!(s.config("e1.3"), None);
        // The same string again is written, not taken for kept.
        std::fs::create_dir_all(&dir).unwrap();
        s.record("e1.2", b"new").unwrap();
        let again = StateFile::open(path).unwrap();
        assert_eq!(again.config("e1.2").unwrap(), b"new");
        assert_eq!(again.config("e1.3"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
