//! `aoe-ctl resize`: ask every daemon serving an export to look at its backing store now and
//! serve it at its new size (and announce it), instead of waiting for the daemon's own look
//! within the second. Fails when the store shrank under the export: that is never followed.

use anyhow::{anyhow, bail, Result};

use crate::daemon::control::{self, AdminRequest};
use crate::daemon::resize::SizeReport;

/// One line for the operator, or why the command fails.
pub fn describe(target: &str, s: &SizeReport) -> Result<String> {
    let mib = |sectors: u64| sectors >> 11;
    if s.store < s.served {
        bail!(
            "{target}: the backing store holds {} sectors, fewer than the {} served: not \
             followed; reads and writes past sector {} fail until it holds {} sectors again",
            s.store,
            s.served,
            s.store,
            s.served
        );
    }
    Ok(if s.served != s.before {
        format!(
            "{target}: {} -> {} sectors ({} MiB), announced; on a Linux initiator: \
             echo {target} > /dev/etherd/revalidate",
            s.before,
            s.served,
            mib(s.served)
        )
    } else if s.fixed && s.store > s.served {
        format!(
            "{target}: {} sectors ({} MiB), kept: its length is its own (the store holds {} \
             from the offset); change `length` and reload to grow it",
            s.served,
            mib(s.served),
            s.store
        )
    } else {
        format!(
            "{target}: {} sectors ({} MiB), unchanged",
            s.served,
            mib(s.served)
        )
    })
}

pub fn run(target: (u16, u8)) -> Result<()> {
    let name = format!("e{}.{}", target.0, target.1);
    let replies = control::request_all(&AdminRequest::Resize {
        target: name.clone(),
    })?;
    // Each daemon serving the export (one per interface, possibly) looked for itself.
    let mut said = None;
    for r in replies {
        let s = r
            .size
            .ok_or_else(|| anyhow!("{name}: a daemon answered without a size"))?;
        let line = describe(&name, &s)?;
        if said.as_ref() != Some(&line) {
            println!("{line}");
            said = Some(line);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_in_one_line() {
        let s = |before, served, store, fixed| SizeReport {
            before,
            served,
            store,
            fixed,
        };
        let grown = describe("e1.2", &s(2048, 4096, 4096, false)).unwrap();
        assert!(
            grown.contains("2048 -> 4096 sectors (2 MiB), announced"),
            "{grown}"
        );
        assert!(grown.contains("/dev/etherd/revalidate"), "{grown}");
        let same = describe("e1.2", &s(4096, 4096, 4096, false)).unwrap();
        assert_eq!(same, "e1.2: 4096 sectors (2 MiB), unchanged");
        let kept = describe("e1.2", &s(2048, 2048, 8192, true)).unwrap();
        assert!(kept.contains("kept: its length is its own"), "{kept}");
        let e = describe("e1.2", &s(4096, 4096, 1024, false)).unwrap_err();
        assert!(
            e.to_string()
                .contains("holds 1024 sectors, fewer than the 4096 served"),
            "{e}"
        );
    }
}
