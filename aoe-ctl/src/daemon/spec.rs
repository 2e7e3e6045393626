//! One export as the front ends give it (`aoe-ctl export`, `aoe-ctl vblade`, exports.toml),
//! checked in one place, so that user space and the kernel agree on every limit whichever
//! way it came in. An error is one line naming the field the way that front end spells it.

use std::path::PathBuf;

use aoe_common::maps::{ExportKey, MAX_MASKS};
use aoe_common::wire::{Mac, CONFIG_STRING_MAX, SHELF_BROADCAST, SLOT_BROADCAST};

use crate::serve::export::DEFAULT_BUFFERS;

/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;

/// One export, checked: what the daemon serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSpec {
    pub shelf: u16,
    pub slot: u8,
    pub interfaces: Vec<String>,
    pub path: PathBuf,
    pub read_only: bool,
    /// Acknowledge writes from the page cache; false: once on stable storage.
    pub write_back: bool,
    pub direct: bool,
    pub offset: u64,
    pub length: Option<u64>,
    pub buffers: u16,
    pub allow: Vec<Mac>,
    /// The config string until an initiator sets one (the state file keeps that).
    pub config: Vec<u8>,
    /// Bytes of kernel cache (0: none).
    pub kernel_cache: u64,
}

impl ExportSpec {
    pub fn key(&self) -> ExportKey {
        ExportKey::new(self.shelf, self.slot)
    }

    pub fn name(&self) -> String {
        format!("e{}.{}", self.shelf, self.slot)
    }
}

/// An export as a front end read it, not checked yet. Numbers are wide so that the range
/// checks (and their messages) are the same for every front end.
#[derive(Debug, Clone, Default)]
pub struct ExportDraft {
    pub shelf: u64,
    pub slot: u64,
    pub interfaces: Vec<String>,
    pub path: PathBuf,
    pub read_only: bool,
    /// Asked for durable writes (the default; vblade's -s).
    pub sync: bool,
    pub write_back: bool,
    pub direct: bool,
    pub offset: u64,
    pub length: Option<u64>,
    /// None: `DEFAULT_BUFFERS`.
    pub buffers: Option<u64>,
    pub allow: Vec<Mac>,
    pub config: Vec<u8>,
    /// The kernel cache's size as written ("64M"); None: no cache.
    pub kernel_cache: Option<String>,
}

/// What an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Shelf,
    Slot,
    Interfaces,
    Path,
    Offset,
    Length,
    Buffers,
    Allow,
    Config,
    Queues,
    WriteBack,
    KernelCache,
}

/// Where the export came from, for the field names in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    Export,
    Vblade,
    File,
}

impl Field {
    /// The field as `front` spells it.
    pub fn name(self, front: FrontEnd) -> &'static str {
        use Field::*;
        match front {
            FrontEnd::Export => match self {
                Shelf => "--shelf",
                Slot => "--slot",
                Interfaces => "--iface",
                Path => "PATH",
                Offset => "--offset",
                Length => "--length",
                Buffers => "--buffers",
                Allow => "--allow",
                Config => "--config",
                Queues => "--queues",
                WriteBack => "--write-back",
                KernelCache => "--kernel-cache",
            },
            FrontEnd::Vblade => match self {
                Shelf => "shelf",
                Slot => "slot",
                Interfaces => "netif",
                Path => "filename",
                Offset => "-o",
                Length => "-l",
                Buffers => "-b",
                Allow => "-m",
                Config => "config",
                Queues => "queues",
                WriteBack => "-s",
                KernelCache => "kernel_cache",
            },
            FrontEnd::File => match self {
                Shelf => "shelf",
                Slot => "slot",
                Interfaces => "interfaces",
                Path => "path",
                Offset => "offset",
                Length => "length",
                Buffers => "buffers",
                Allow => "allow",
                Config => "config",
                Queues => "queues",
                WriteBack => "write_back",
                KernelCache => "kernel_cache",
            },
        }
    }
}

/// A field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: Field,
    pub problem: String,
}

impl SpecError {
    fn new(field: Field, problem: impl Into<String>) -> SpecError {
        SpecError {
            field,
            problem: problem.into(),
        }
    }

    /// "--allow: 33 MACs, the mask list holds at most 32".
    pub fn render(&self, front: FrontEnd) -> String {
        format!("{}: {}", self.field.name(front), self.problem)
    }

    /// As an error of `front`.
    pub fn into_error(self, front: FrontEnd) -> anyhow::Error {
        anyhow::anyhow!(self.render(front))
    }
}

impl ExportDraft {
    /// Check every field; the first problem found is the error.
    pub fn check(self) -> Result<ExportSpec, SpecError> {
        use Field::*;
        let shelf = match u16::try_from(self.shelf) {
            Ok(SHELF_BROADCAST) => {
                return Err(SpecError::new(
                    Shelf,
                    "65535 is the broadcast shelf (0-65534)",
                ));
            }
            Ok(s) => s,
            Err(_) => {
                return Err(SpecError::new(
                    Shelf,
                    format!("{} is out of range (0-65534)", self.shelf),
                ))
            }
        };
        let slot = match u8::try_from(self.slot) {
            Ok(SLOT_BROADCAST) => {
                return Err(SpecError::new(Slot, "255 is the broadcast slot (0-254)"))
            }
            Ok(s) => s,
            Err(_) => {
                return Err(SpecError::new(
                    Slot,
                    format!("{} is out of range (0-254)", self.slot),
                ))
            }
        };
        if self.interfaces.is_empty() {
            return Err(SpecError::new(Interfaces, "no interface named"));
        }
        let mut interfaces: Vec<String> = Vec::with_capacity(self.interfaces.len());
        for i in self.interfaces {
            if i.is_empty() || i.len() > IFNAME_MAX || i.contains(['/', ' ', '\0']) {
                return Err(SpecError::new(
                    Interfaces,
                    format!(
                        "{i:?} is not an interface name (1-{IFNAME_MAX} bytes, no '/' or space)"
                    ),
                ));
            }
            // Naming one twice serves it once.
            if !interfaces.contains(&i) {
                interfaces.push(i);
            }
        }
        if self.path.as_os_str().is_empty() {
            return Err(SpecError::new(Path, "empty"));
        }
        // Byte offsets must fit in 64 bits.
        let last = u64::MAX / 512;
        if self.offset > last {
            return Err(SpecError::new(
                Offset,
                format!("sector {} is beyond any device", self.offset),
            ));
        }
        match self.length {
            Some(0) => return Err(SpecError::new(Length, "0, must be at least one sector")),
            Some(l) if self.offset.checked_add(l).is_none_or(|end| end > last) => {
                return Err(SpecError::new(
                    Length,
                    format!("{l} sectors from {} is beyond any device", self.offset),
                ));
            }
            _ => {}
        }
        let buffers = match self.buffers {
            None => DEFAULT_BUFFERS,
            Some(b) if b < 2 => {
                return Err(SpecError::new(
                    Buffers,
                    format!("{b}, must be at least 2 (the Linux initiator's window starts at half of it)"),
                ));
            }
            Some(b) => u16::try_from(b)
                .map_err(|_| SpecError::new(Buffers, format!("{b} is out of range (2-65535)")))?,
        };
        if self.allow.len() > MAX_MASKS {
            return Err(SpecError::new(
                Allow,
                format!(
                    "{} MACs, the mask list holds at most {MAX_MASKS}",
                    self.allow.len()
                ),
            ));
        }
        for (n, m) in self.allow.iter().enumerate() {
            if self.allow[..n].contains(m) {
                return Err(SpecError::new(
                    Allow,
                    format!("{} is listed twice", crate::net::format_mac(m)),
                ));
            }
        }
        if self.config.len() > CONFIG_STRING_MAX {
            return Err(SpecError::new(
                Config,
                format!(
                    "{} bytes, a config string holds at most {CONFIG_STRING_MAX}",
                    self.config.len()
                ),
            ));
        }
        if self.sync && self.write_back {
            return Err(SpecError::new(
                WriteBack,
                "contradicts sync: writes are acknowledged either from the page cache or once durable",
            ));
        }
        let kernel_cache = match &self.kernel_cache {
            None => 0,
            Some(text) => {
                let bytes = parse_size(text).ok_or_else(|| {
                    SpecError::new(
                        KernelCache,
                        format!("{text:?} is not a size (a number, with K, M or G)"),
                    )
                })?;
                crate::serve::kernel_cache::slots_for(bytes)
                    .map_err(|e| SpecError::new(KernelCache, e.to_string()))?;
                bytes
            }
        };
        Ok(ExportSpec {
            shelf,
            slot,
            interfaces,
            path: self.path,
            read_only: self.read_only,
            write_back: self.write_back,
            direct: self.direct,
            offset: self.offset,
            length: self.length,
            buffers,
            allow: self.allow,
            config: self.config,
            kernel_cache,
        })
    }
}

/// "64M", "1G", "512K", "65536": bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Receive queues per interface: None is all of them, else at least one.
pub fn check_queues(queues: Option<u64>) -> Result<Option<u32>, SpecError> {
    match queues {
        None => Ok(None),
        Some(0) => Err(SpecError::new(Field::Queues, "0, must be at least 1")),
        Some(q) => u32::try_from(q)
            .map(Some)
            .map_err(|_| SpecError::new(Field::Queues, format!("{q} is out of range"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> ExportDraft {
        ExportDraft {
            shelf: 1,
            slot: 2,
            interfaces: vec!["eth0".into()],
            path: "/srv/a.img".into(),
            ..Default::default()
        }
    }

    fn err(d: ExportDraft) -> String {
        d.check().unwrap_err().render(FrontEnd::Export)
    }

    #[test]
    fn a_good_draft_gets_the_defaults() {
        let s = ExportDraft {
            interfaces: vec!["eth0".into(), "eth1".into(), "eth0".into()],
            ..draft()
        }
        .check()
        .unwrap();
        assert_eq!((s.shelf, s.slot, s.buffers), (1, 2, DEFAULT_BUFFERS));
        assert_eq!(s.interfaces, ["eth0", "eth1"], "named twice, served once");
        let full = ExportDraft {
            allow: (0..MAX_MASKS as u8).map(|i| [2, 0, 0, 0, 0, i]).collect(),
            config: vec![b'x'; CONFIG_STRING_MAX],
            buffers: Some(2),
            ..draft()
        };
        assert!(full.check().is_ok(), "the limits themselves are allowed");
        let cached = ExportDraft {
            kernel_cache: Some("64M".into()),
            ..draft()
        };
        assert_eq!(cached.check().unwrap().kernel_cache, 64 << 20);
    }

    #[test]
    fn every_limit_is_checked_and_named() {
        let cases: Vec<(ExportDraft, &str)> = vec![
            (
                ExportDraft {
                    shelf: 65535,
                    ..draft()
                },
                "--shelf: 65535 is the broadcast shelf",
            ),
            (
                ExportDraft {
                    shelf: 70000,
                    ..draft()
                },
                "--shelf: 70000 is out of range",
            ),
            (
                ExportDraft {
                    slot: 255,
                    ..draft()
                },
                "--slot: 255 is the broadcast slot",
            ),
            (
                ExportDraft {
                    slot: 256,
                    ..draft()
                },
                "--slot: 256 is out of range",
            ),
            (
                ExportDraft {
                    interfaces: vec![],
                    ..draft()
                },
                "--iface: no interface named",
            ),
            (
                ExportDraft {
                    interfaces: vec!["a-very-long-interface".into()],
                    ..draft()
                },
                "--iface: \"a-very-long-interface\" is not an interface name",
            ),
            (
                ExportDraft {
                    path: PathBuf::new(),
                    ..draft()
                },
                "PATH: empty",
            ),
            (
                ExportDraft {
                    offset: u64::MAX,
                    ..draft()
                },
                "--offset: sector",
            ),
            (
                ExportDraft {
                    length: Some(0),
                    ..draft()
                },
                "--length: 0, must be at least one sector",
            ),
            (
                ExportDraft {
                    offset: 8,
                    length: Some(u64::MAX - 4),
                    ..draft()
                },
                "--length: ",
            ),
            (
                ExportDraft {
                    buffers: Some(1),
                    ..draft()
                },
                "--buffers: 1, must be at least 2",
            ),
            (
                ExportDraft {
                    buffers: Some(65536),
                    ..draft()
                },
                "--buffers: 65536 is out of range",
            ),
            (
                ExportDraft {
                    allow: (0..=MAX_MASKS as u8).map(|i| [2, 0, 0, 0, 0, i]).collect(),
                    ..draft()
                },
                "--allow: 33 MACs, the mask list holds at most 32",
            ),
            (
                ExportDraft {
                    allow: vec![[2, 0, 0, 0, 0, 1]; 2],
                    ..draft()
                },
                "--allow: 02:00:00:00:00:01 is listed twice",
            ),
            (
                ExportDraft {
                    config: vec![b'x'; CONFIG_STRING_MAX + 1],
                    ..draft()
                },
                "--config: 1025 bytes, a config string holds at most 1024",
            ),
            (
                ExportDraft {
                    kernel_cache: Some("64X".into()),
                    ..draft()
                },
                "--kernel-cache: \"64X\" is not a size",
            ),
            (
                ExportDraft {
                    kernel_cache: Some("1K".into()),
                    ..draft()
                },
                "--kernel-cache: 1024 bytes hold no block",
            ),
            (
                ExportDraft {
                    kernel_cache: Some("8G".into()),
                    ..draft()
                },
                "--kernel-cache: 8589934592 bytes is more than",
            ),
        ];
        for (d, want) in cases {
            let got = err(d);
            assert!(got.starts_with(want), "want {want:?}, got {got:?}");
            assert!(!got.contains('\n'));
        }
    }

    #[test]
    fn each_front_end_spells_the_field_its_way() {
        let e = ExportDraft {
            buffers: Some(1),
            ..draft()
        }
        .check()
        .unwrap_err();
        assert!(e.render(FrontEnd::Vblade).starts_with("-b: 1,"));
        assert!(e.render(FrontEnd::File).starts_with("buffers: 1,"));
        let q = check_queues(Some(0)).unwrap_err();
        assert_eq!(
            q.render(FrontEnd::Export),
            "--queues: 0, must be at least 1"
        );
        assert_eq!(check_queues(Some(4)), Ok(Some(4)));
        assert_eq!(check_queues(None), Ok(None));
    }
}
