//! exports.toml: what the daemon serves. Parsed whole and checked before anything changes,
//! so a bad file is refused with its line and problem while the running set keeps serving.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use aoe_common::maps::ExportKey;
use aoe_common::wire::Mac;
use serde::Deserialize;

use crate::serve::export::DEFAULT_BUFFERS;
use crate::serve::xdp::ModeChoice;

/// Which data path serves an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    /// XDP and AF_XDP when the interface and kernel allow, AF_PACKET otherwise.
    #[default]
    Auto,
    /// XDP and AF_XDP, or fail.
    Xdp,
    /// AF_PACKET with PACKET_MMAP rings: any interface, any kernel.
    Afpacket,
}

/// One export, as resolved from the file or the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSpec {
    pub shelf: u16,
    pub slot: u8,
    pub interfaces: Vec<String>,
    pub path: PathBuf,
    pub read_only: bool,
    pub sync: bool,
    pub direct: bool,
    pub offset: u64,
    pub length: Option<u64>,
    pub buffers: u16,
    pub allow: Vec<Mac>,
    /// The config string until an initiator sets one (the state file keeps that).
    pub config: Vec<u8>,
}

impl ExportSpec {
    pub fn key(&self) -> ExportKey {
        ExportKey::new(self.shelf, self.slot)
    }

    pub fn name(&self) -> String {
        format!("e{}.{}", self.shelf, self.slot)
    }
}

/// Everything the daemon serves, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub mode: DataPath,
    pub xdp_mode: ModeChoice,
    /// Receive queues per interface (default: all).
    pub queues: Option<u32>,
    pub exports: Vec<ExportSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    mode: DataPath,
    #[serde(default)]
    xdp_mode: Option<String>,
    queues: Option<u32>,
    #[serde(default, rename = "export")]
    exports: Vec<toml::Spanned<ExportToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportToml {
    // Checked while parsing, so that an error points at the value's own line.
    #[serde(deserialize_with = "de_shelf")]
    shelf: u16,
    #[serde(deserialize_with = "de_slot")]
    slot: u8,
    interfaces: Vec<String>,
    path: PathBuf,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    sync: bool,
    #[serde(default)]
    direct: bool,
    #[serde(default)]
    offset: u64,
    length: Option<u64>,
    #[serde(default, deserialize_with = "de_buffers")]
    buffers: Option<u16>,
    #[serde(default, deserialize_with = "de_macs")]
    allow: Vec<Mac>,
    #[serde(default)]
    config: String,
}

/// Read and check a config file.
pub fn load(path: &Path) -> Result<NodeConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Parse and check the text of a config file; errors name the line.
pub fn parse(text: &str) -> Result<NodeConfig> {
    let file: FileToml = toml::from_str(text).map_err(|e| match e.span() {
        Some(s) => anyhow!("line {}: {}", line_of(text, s.start), e.message().trim()),
        None => anyhow!("{}", e.message().trim()),
    })?;
    let xdp_mode = match file.xdp_mode.as_deref() {
        None | Some("auto") => ModeChoice::Auto,
        Some("native") => ModeChoice::Native,
        Some("skb") => ModeChoice::Skb,
        Some(other) => bail!("xdp_mode {other:?} is not one of auto, native, skb"),
    };
    if file.queues == Some(0) {
        bail!("queues must be at least 1");
    }
    let mut exports: Vec<ExportSpec> = Vec::new();
    for spanned in file.exports {
        let line = line_of(text, spanned.span().start);
        let e = spanned.into_inner();
        let spec = resolve(e).map_err(|err| anyhow!("line {line}: {err}"))?;
        if let Some(dup) = exports.iter().find(|x| x.key() == spec.key()) {
            bail!("line {line}: {} is exported twice", dup.name());
        }
        exports.push(spec);
    }
    Ok(NodeConfig {
        mode: file.mode,
        xdp_mode,
        queues: file.queues,
        exports,
    })
}

fn de_shelf<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = u64::deserialize(d)?;
    crate::address::parse_shelf(&v.to_string()).map_err(serde::de::Error::custom)
}

fn de_slot<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = u64::deserialize(d)?;
    crate::address::parse_slot(&v.to_string()).map_err(serde::de::Error::custom)
}

fn de_buffers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let v = u64::deserialize(d)?;
    match u16::try_from(v) {
        Ok(b) if b >= 2 => Ok(Some(b)),
        _ => Err(serde::de::Error::custom(format!(
            "buffers {v} is out of range (2-65535)"
        ))),
    }
}

fn de_macs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Mac>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.len() > aoe_common::maps::MAX_MASKS {
        return Err(serde::de::Error::custom(format!(
            "more than {} MACs",
            aoe_common::maps::MAX_MASKS
        )));
    }
    list.iter()
        .map(|m| crate::net::parse_mac(m).map_err(serde::de::Error::custom))
        .collect()
}

fn resolve(e: ExportToml) -> Result<ExportSpec> {
    let (shelf, slot) = (e.shelf, e.slot);
    let name = format!("e{shelf}.{slot}");
    if e.interfaces.is_empty() {
        bail!("{name} names no interfaces");
    }
    let mut interfaces = e.interfaces.clone();
    interfaces.dedup();
    let buffers = e.buffers.unwrap_or(DEFAULT_BUFFERS);
    if e.length == Some(0) {
        bail!("{name}: length must be at least one sector");
    }
    if e.config.len() > aoe_common::wire::CONFIG_STRING_MAX {
        bail!("{name}: config string longer than 1024 bytes");
    }
    let allow = e.allow;
    if e.path.as_os_str().is_empty() {
        bail!("{name}: path is empty");
    }
    Ok(ExportSpec {
        shelf,
        slot,
        interfaces,
        path: e.path,
        read_only: e.read_only,
        sync: e.sync,
        direct: e.direct,
        offset: e.offset,
        length: e.length,
        buffers,
        allow,
        config: e.config.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
mode = "auto"

[[export]]
shelf = 1
slot = 2
interfaces = ["eth0", "eth1"]
path = "/srv/a.img"
read_only = true
allow = ["52:54:00:00:00:01"]

[[export]]
shelf = 1
slot = 3
interfaces = ["eth0"]
path = "/srv/b.img"
offset = 8
length = 16
"#;

    #[test]
    fn a_good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.exports.len(), 2);
        assert_eq!(c.exports[0].interfaces, ["eth0", "eth1"]);
        assert!(c.exports[0].read_only);
        assert_eq!(c.exports[1].length, Some(16));
        assert_eq!(c.exports[1].buffers, DEFAULT_BUFFERS);
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = parse(include_str!("../../../packaging/exports.toml")).unwrap();
        assert_eq!(c.exports.len(), 3);
        assert_eq!(c.exports[0].interfaces.len(), 2);
        assert!(c.exports[0].direct && c.exports[1].read_only && c.exports[2].sync);
        assert_eq!(c.exports[2].allow.len(), 2);
    }

    #[test]
    fn errors_name_the_line() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        let dup = GOOD.replace("slot = 3", "slot = 2");
        assert!(
            err(&dup).starts_with("line 12: e1.2 is exported twice"),
            "{}",
            err(&dup)
        );
        let bad_slot = GOOD.replace("slot = 3", "slot = 255");
        assert!(
            err(&bad_slot).starts_with("line 14: slot 255 is out of range"),
            "{}",
            err(&bad_slot)
        );
        let typo = GOOD.replace("read_only", "readonly");
        assert!(
            err(&typo).starts_with("line 9:") && err(&typo).contains("readonly"),
            "{}",
            err(&typo)
        );
        let mac = GOOD.replace("52:54:00:00:00:01", "52:54:00");
        assert!(err(&mac).starts_with("line 10:"), "{}", err(&mac));
        let buffers = GOOD.replace("length = 16", "length = 16\nbuffers = 1");
        assert!(
            err(&buffers).starts_with("line 19: buffers 1"),
            "{}",
            err(&buffers)
        );
        assert!(err("[[export]\n").starts_with("line 1:"));
        assert!(err("mode = \"fast\"").contains("line 1"));
    }
}
