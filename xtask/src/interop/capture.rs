//! tshark's reading of a capture: no malformed AoE frame, and exactly one response per
//! request (matched by tag; the unsolicited announcement, tag 0, is not a reply).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(Debug, Default, Clone)]
pub struct Capture {
    pub frames: u64,
    pub requests: u64,
    pub responses: u64,
    pub malformed: u64,
    /// Request tags with no response, or with more than one.
    pub unanswered: u64,
    pub answered_twice: u64,
    /// Config replies broadcast unasked (a target announcing itself).
    pub announcements: u64,
    /// The first few odd tags, for the report.
    pub odd: Vec<String>,
}

impl Capture {
    pub fn clean(&self) -> bool {
        self.malformed == 0 && self.unanswered == 0 && self.answered_twice == 0 && self.requests > 0
    }
}

pub fn analyze(pcap: &Path) -> Result<Capture> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-Y",
            "aoe || _ws.malformed",
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "aoe.tag",
            "-e",
            "aoe.response",
            "-e",
            "_ws.malformed",
            "-e",
            "frame.number",
            "-e",
            "aoe.cmd",
            "-e",
            "eth.dst",
        ])
        .output()
        .context("running tshark (apt-get install tshark)")?;
    if !out.status.success() {
        bail!("tshark: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut c = Capture::default();
    // tag -> (requests, responses, frames and commands)
    let mut tags: HashMap<String, (u64, u64, String)> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').collect();
        c.frames += 1;
        if f.get(2).is_some_and(|m| !m.is_empty()) {
            c.malformed += 1;
            continue;
        }
        let (Some(tag), Some(resp)) = (f.first(), f.get(1)) else {
            continue;
        };
        let response = matches!(*resp, "1" | "True" | "true");
        if response
            && f.get(5)
                .is_some_and(|d| d.eq_ignore_ascii_case("ff:ff:ff:ff:ff:ff"))
        {
            // A config announcement to everyone (at start, and when a link comes back up):
            // not an answer to any request.
            c.announcements += 1;
            continue;
        }
        let e = tags.entry(tag.to_string()).or_default();
        if e.2.len() < 80 {
            let what = if response { "rsp" } else { "req" };
            e.2 += &format!(
                " #{}:{what}/cmd{}",
                f.get(3).unwrap_or(&"?"),
                f.get(4).unwrap_or(&"?")
            );
        }
        if response {
            c.responses += 1;
            e.1 += 1;
        } else {
            c.requests += 1;
            e.0 += 1;
        }
    }
    for (tag, (req, resp, frames)) in &tags {
        if *req == 0 {
            // An unsolicited config reply (tag 0) or a reply to a request before the capture.
            continue;
        }
        if *resp < *req {
            c.unanswered += req - resp;
        }
        if *resp > *req {
            c.answered_twice += resp - req;
        }
        if resp != req && c.odd.len() < 5 {
            c.odd.push(format!("tag {tag}:{frames}"));
        }
    }
    Ok(c)
}
