//! exports.toml: what the daemon serves. Parsed whole and checked before anything changes,
//! so a bad file is refused with its line and problem while the running set keeps serving.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use aoe_common::wire::Mac;
use serde::Deserialize;
use toml::Spanned;

use super::spec::{self, ExportDraft, Field, FrontEnd, SpecError};
use crate::serve::xdp::ModeChoice;

pub use super::spec::ExportSpec;

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

/// Everything the daemon serves, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub mode: DataPath,
    pub xdp_mode: ModeChoice,
    /// Receive queues per interface (default: all).
    pub queues: Option<u32>,
    /// Where the Prometheus endpoint listens (off when None).
    pub metrics: Option<std::net::SocketAddr>,
    pub exports: Vec<ExportSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    mode: DataPath,
    #[serde(default)]
    xdp_mode: ModeChoice,
    queues: Option<Spanned<u64>>,
    metrics: Option<Spanned<String>>,
    #[serde(default, rename = "export")]
    exports: Vec<Spanned<ExportToml>>,
}

// Values keep their place in the file, so that an error points at the value's own line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportToml {
    shelf: Spanned<u64>,
    slot: Spanned<u64>,
    interfaces: Spanned<Vec<String>>,
    path: Spanned<PathBuf>,
    #[serde(default)]
    read_only: bool,
    /// Accepted: durable writes are the default.
    #[serde(default)]
    sync: bool,
    /// Acknowledge writes from the page cache (`--write-back`).
    #[serde(default)]
    write_back: bool,
    #[serde(default)]
    direct: bool,
    offset: Option<Spanned<u64>>,
    length: Option<Spanned<u64>>,
    buffers: Option<Spanned<u64>>,
    #[serde(default, deserialize_with = "de_macs")]
    allow: Option<Spanned<Vec<Mac>>>,
    config: Option<Spanned<String>>,
    /// Kernel cache size, as "64M" (`--kernel-cache`).
    kernel_cache: Option<Spanned<String>>,
}

impl ExportToml {
    /// Where the value of `field` is, when it is in the file.
    fn span(&self, field: Field) -> Option<Range<usize>> {
        match field {
            Field::Shelf => Some(self.shelf.span()),
            Field::Slot => Some(self.slot.span()),
            Field::Interfaces => Some(self.interfaces.span()),
            Field::Path => Some(self.path.span()),
            Field::Offset => self.offset.as_ref().map(Spanned::span),
            Field::Length => self.length.as_ref().map(Spanned::span),
            Field::Buffers => self.buffers.as_ref().map(Spanned::span),
            Field::Allow => self.allow.as_ref().map(Spanned::span),
            Field::Config => self.config.as_ref().map(Spanned::span),
            Field::KernelCache => self.kernel_cache.as_ref().map(Spanned::span),
            Field::Queues | Field::WriteBack => None,
        }
    }

    fn draft(&self) -> ExportDraft {
        ExportDraft {
            shelf: *self.shelf.get_ref(),
            slot: *self.slot.get_ref(),
            interfaces: self.interfaces.get_ref().clone(),
            path: self.path.get_ref().clone(),
            read_only: self.read_only,
            sync: self.sync,
            write_back: self.write_back,
            direct: self.direct,
            offset: self.offset.as_ref().map_or(0, |o| *o.get_ref()),
            length: self.length.as_ref().map(|l| *l.get_ref()),
            buffers: self.buffers.as_ref().map(|b| *b.get_ref()),
            allow: self.allow.as_ref().map_or(vec![], |a| a.get_ref().clone()),
            config: self
                .config
                .as_ref()
                .map_or(vec![], |c| c.get_ref().clone().into_bytes()),
            kernel_cache: self.kernel_cache.as_ref().map(|k| k.get_ref().clone()),
        }
    }
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
    let at = |span: Range<usize>, e: SpecError| {
        anyhow!(
            "line {}: {}",
            line_of(text, span.start),
            e.render(FrontEnd::File)
        )
    };
    let queues = match &file.queues {
        None => None,
        Some(q) => spec::check_queues(Some(*q.get_ref())).map_err(|e| at(q.span(), e))?,
    };
    let metrics = match &file.metrics {
        None => None,
        Some(m) => Some(
            parse_metrics(m.get_ref())
                .map_err(|e| anyhow!("line {}: {e}", line_of(text, m.span().start)))?,
        ),
    };
    let mut exports: Vec<ExportSpec> = Vec::new();
    for e in &file.exports {
        let spec = e.get_ref().draft().check().map_err(|err| {
            let span = e.get_ref().span(err.field).unwrap_or(e.span());
            at(span, err)
        })?;
        if let Some(dup) = exports.iter().find(|x| x.key() == spec.key()) {
            bail!(
                "line {}: {} is exported twice",
                line_of(text, e.span().start),
                dup.name()
            );
        }
        exports.push(spec);
    }
    Ok(NodeConfig {
        mode: file.mode,
        xdp_mode: file.xdp_mode,
        queues,
        metrics,
        exports,
    })
}

/// `metrics = "ADDR:PORT"` (and `--metrics`): an IP address and a port, no host name (the
/// daemon must not depend on a resolver to start).
pub fn parse_metrics(s: &str) -> Result<std::net::SocketAddr> {
    s.parse().map_err(|_| {
        anyhow!("metrics: {s:?} is not an IP address and port (e.g. \"127.0.0.1:9727\")")
    })
}

fn de_macs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Spanned<Vec<Mac>>>, D::Error> {
    let list = Spanned::<Vec<String>>::deserialize(d)?;
    let span = list.span();
    let macs = list
        .get_ref()
        .iter()
        .map(|m| crate::net::parse_mac(m).map_err(serde::de::Error::custom))
        .collect::<Result<Vec<Mac>, D::Error>>()?;
    Ok(Some(Spanned::new(span, macs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::export::DEFAULT_BUFFERS;

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
        assert!(c.exports[0].direct && c.exports[1].read_only && !c.exports[2].write_back);
        assert_eq!(c.exports[2].allow.len(), 2);
        assert_eq!(
            (c.exports[1].kernel_cache, c.exports[0].kernel_cache),
            (64 << 20, 0)
        );
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
            err(&bad_slot).starts_with("line 14: slot: 255 is the broadcast slot"),
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
            err(&buffers).starts_with("line 19: buffers: 1, must be at least 2"),
            "{}",
            err(&buffers)
        );
        let cache = GOOD.replace("length = 16", "length = 16\nkernel_cache = \"lots\"");
        assert!(
            err(&cache).starts_with("line 19: kernel_cache: \"lots\" is not a size"),
            "{}",
            err(&cache)
        );
        assert!(err("[[export]\n").starts_with("line 1:"));
        assert!(err("queues = 0\n").starts_with("line 1: queues: 0, must be at least 1"));
        assert!(err("mode = \"fast\"").contains("line 1"));
        assert_eq!(
            err(&GOOD.replacen("mode = \"auto\"", "mode = \"auto\"\nmetrics = \"localhost:9727\"", 1)),
            "line 3: metrics: \"localhost:9727\" is not an IP address and port (e.g. \"127.0.0.1:9727\")"
        );
    }

    #[test]
    fn metrics_are_off_unless_configured() {
        assert_eq!(parse(GOOD).unwrap().metrics, None);
        let c = parse(&format!("metrics = \"127.0.0.1:9727\"\n{GOOD}")).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9727".parse().unwrap()));
        let c = parse(&format!("metrics = \"[::1]:9727\"\n{GOOD}")).unwrap();
        assert_eq!(c.metrics, Some("[::1]:9727".parse().unwrap()));
    }

    #[test]
    fn the_file_has_the_limits_of_the_command_line() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        let macs: Vec<String> = (0..=32)
            .map(|i| format!("\"02:00:00:00:00:{i:02x}\""))
            .collect();
        let many = GOOD.replace("\"52:54:00:00:00:01\"", &macs.join(", "));
        assert_eq!(
            err(&many),
            "line 10: allow: 33 MACs, the mask list holds at most 32"
        );
        let twice = GOOD.replace(
            "\"52:54:00:00:00:01\"",
            "\"52:54:00:00:00:01\", \"52:54:00:00:00:01\"",
        );
        assert_eq!(
            err(&twice),
            "line 10: allow: 52:54:00:00:00:01 is listed twice"
        );
        let long = GOOD.replace(
            "length = 16",
            &format!("length = 16\nconfig = \"{}\"", "x".repeat(1025)),
        );
        assert_eq!(
            err(&long),
            "line 19: config: 1025 bytes, a config string holds at most 1024"
        );
        let none = GOOD.replace("interfaces = [\"eth0\"]", "interfaces = []");
        assert_eq!(err(&none), "line 15: interfaces: no interface named");
        let shelf = GOOD.replace("shelf = 1\nslot = 3", "shelf = 65535\nslot = 3");
        assert!(err(&shelf).starts_with("line 13: shelf: 65535 is the broadcast shelf"));
        let zero = GOOD.replace("length = 16", "length = 0");
        assert_eq!(
            err(&zero),
            "line 18: length: 0, must be at least one sector"
        );
    }

    #[test]
    fn xdp_mode_is_one_of_three() {
        let c = parse(&format!("xdp_mode = \"skb\"\n{GOOD}")).unwrap();
        assert_eq!(c.xdp_mode, ModeChoice::Skb);
        assert_eq!(parse(GOOD).unwrap().xdp_mode, ModeChoice::Auto);
        let e = parse("xdp_mode = \"fast\"\n").unwrap_err().to_string();
        assert!(
            e.starts_with("line 1:") && e.contains("native") && e.contains("skb"),
            "{e}"
        );
    }
}
