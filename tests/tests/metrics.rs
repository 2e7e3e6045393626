//! Prometheus metrics judged by the real thing (Debian's `prometheus` package): a daemon
//! with `metrics = ...` in exports.toml serves text that `promtool check metrics` finds
//! clean, a Prometheus server scrapes it while a client runs and its HTTP API shows
//! `aoe_requests_total` moving, and the shipped alert rules and dashboard name only
//! metrics the daemon serves.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aoe_integration::{spawn_in_env, workspace_root, Lab};

/// The daemon's endpoint and the Prometheus server's, on the target namespace's own
/// loopback (a namespace of its own: no port is taken there).
const METRICS: &str = "127.0.0.1:9727";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// A child killed and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from `addr` in namespace `ns`: (status code, body).
fn get(ns: &str, addr: &'static str, path: String) -> Option<(u16, String)> {
    Lab::in_ns(ns, move || -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, body.to_string()))
    })
    .ok()?
    .ok()
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` of `text`: its complaints, or empty.
fn promtool_metrics(text: &str) -> String {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    format!(
        "{}{}{}",
        if o.status.success() { "" } else { "failed: " },
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The value of the first series of an instant query's answer.
fn query_value(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Metric names a text of PromQL (or JSON holding it) uses.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("aoe_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn prometheus_scrapes_the_daemon_while_a_client_runs() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 64 << 20).unwrap();
    let config = lab.dir.join("exports.toml");
    std::fs::write(
        &config,
        format!(
            "metrics = \"{METRICS}\"\n\n[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{}\"]\n\
             path = \"{}\"\n",
            lab.target_if,
            img.display()
        ),
    )
    .unwrap();
    let _peer = lab.start_peer(&lab.initiator_if).unwrap();
    let daemon = spawn_in_env(
        &lab.target_ns,
        &lab.live_env().unwrap(),
        &["daemon", "--config", config.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        daemon.first_line.starts_with("e1.2 "),
        "{}",
        daemon.first_line
    );

    // Elsewhere than /metrics: 404.
    let (code, _) = get(&lab.target_ns, METRICS, "/".into()).unwrap();
    assert_eq!(code, 404);

    let storage = lab.dir.join("prometheus");
    let rules = workspace_root().join("packaging/aoe-alerts.yml");
    let prom_config = lab.dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: aoe\n    static_configs:\n      - targets: [\"{METRICS}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let prometheus = Command::new("ip")
        .args(["netns", "exec", &lab.target_ns, "prometheus"])
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let _prometheus = Killed(prometheus);

    let bench = lab
        .spawn_bench(
            &lab.initiator_if,
            &["--pattern", "randread", "--duration", "30"],
        )
        .unwrap();
    let _bench = Killed(bench);

    let q = "/api/v1/query?query=sum(aoe_requests_total)".to_string();
    let first = wait_for(
        "Prometheus to scrape requests",
        Duration::from_secs(20),
        || {
            get(&lab.target_ns, PROMETHEUS, q.clone())
                .and_then(|(_, body)| query_value(&body))
                .filter(|v| *v > 0.0)
        },
    );
    let second = wait_for(
        "aoe_requests_total to move",
        Duration::from_secs(10),
        || {
            get(&lab.target_ns, PROMETHEUS, q.clone())
                .and_then(|(_, body)| query_value(&body))
                .filter(|v| *v > first)
        },
    );
    assert!(second > first);

    // The scrape itself is healthy, and the shipped rules load and evaluate.
    let (_, targets) = get(&lab.target_ns, PROMETHEUS, "/api/v1/targets".into()).unwrap();
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    let (_, loaded) = get(&lab.target_ns, PROMETHEUS, "/api/v1/rules".into()).unwrap();
    assert!(loaded.contains("AoeLatencyHigh"), "{loaded}");
    assert!(!loaded.contains("\"health\":\"err\""), "{loaded}");

    let (code, text) = get(&lab.target_ns, METRICS, "/metrics".into()).unwrap();
    assert_eq!(code, 200);
    assert_eq!(promtool_metrics(&text), "", "{text}");
    for series in [
        "aoe_info{version=",
        "aoe_requests_total{export=\"e1.2\",kind=\"read\"}",
        "aoe_request_duration_seconds_bucket{export=\"e1.2\",kind=\"read\",le=\"+Inf\"}",
        "aoe_storage_requests_in_flight{export=\"e1.2\"}",
        "aoe_storage_errors_total{export=\"e1.2\",reason=\"io\"} 0",
        "aoe_export_failed_closed{export=\"e1.2\"} 0",
        "aoe_storage_sync_errors_total{export=\"e1.2\"} 0",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
    let reads = |t: &str| {
        t.lines()
            .find_map(|l| {
                l.strip_prefix("aoe_request_duration_seconds_count{export=\"e1.2\",kind=\"read\"} ")
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(reads(&text) > 0, "no read timed in\n{text}");
    assert!(
        text.contains(&format!(
            "aoe_kernel_frames_seen_total{{interface=\"{}\"}}",
            lab.target_if
        )),
        "{text}"
    );

    // `aoe-ctl stats --prometheus`: the same families, through the control socket.
    let o = lab.run_live(&["stats", "--prometheus"]).unwrap();
    let once = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(promtool_metrics(&once), "", "{once}");
    let families = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(families(&once), families(&text));
    assert!(reads(&once) >= reads(&text));

    // What operators are handed names only what is served.
    let served: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let dashboard =
        std::fs::read_to_string(workspace_root().join("packaging/grafana-dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let alerts = std::fs::read_to_string(&rules).unwrap();
    for (file, used) in [
        ("dashboard", names_used(&dashboard)),
        ("alerts", names_used(&alerts)),
    ] {
        assert!(!used.is_empty());
        for name in used {
            assert!(served.contains(&name), "{file} uses {name}, not served");
        }
    }
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    drop(daemon);
}

#[test]
fn a_bad_metrics_address_is_refused_naming_the_key() {
    let lab = Lab::new().unwrap();
    let img = lab.image("disk.img", 1 << 20).unwrap();
    let config = lab.dir.join("exports.toml");
    std::fs::write(
        &config,
        format!(
            "metrics = \"localhost:9727\"\n[[export]]\nshelf = 1\nslot = 2\ninterfaces = [\"{}\"]\n\
             path = \"{}\"\n",
            lab.target_if,
            img.display()
        ),
    )
    .unwrap();
    let o = lab
        .run_live(&["daemon", "--check", "--config", config.to_str().unwrap()])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("line 1: metrics: \"localhost:9727\" is not an IP address and port"),
        "{err}"
    );
    // A port already taken: one line naming it, nothing served.
    let holder = Lab::in_ns(&lab.target_ns, || std::net::TcpListener::bind(METRICS)).unwrap();
    let _holder = holder.unwrap();
    let o = lab
        .run_live(&lab.export_args(&img, &["--metrics", METRICS]))
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!(
            "metrics: cannot listen on {METRICS}: Address already in use"
        )),
        "{err}"
    );
}
