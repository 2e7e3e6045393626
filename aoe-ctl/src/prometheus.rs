//! Metrics as Prometheus reads them: families of samples, merged across daemons, and the one
//! renderer of the text exposition format (version 0.0.4) that both the daemon's HTTP
//! endpoint and `aoe-ctl stats --prometheus` print.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// The Content-Type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Counter,
    Gauge,
    /// A gauge of value 1 whose labels are the information: merged by keeping one.
    Info,
    Histogram,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Number(f64),
    /// Upper bounds (seconds, ascending, without +Inf), the count in each bucket (not
    /// cumulative; one more than `bounds`: the last is above every bound), and the sum.
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &str, kind: Kind, help: &str) -> Family {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: vec![],
        }
    }

    /// Add a number sample with `labels` (name, value pairs).
    pub fn push(&mut self, labels: &[(&str, &str)], v: f64) {
        self.samples.push(Sample {
            labels: own(labels),
            value: Value::Number(v),
        });
    }

    pub fn push_histogram(&mut self, labels: &[(&str, &str)], value: Value) {
        self.samples.push(Sample {
            labels: own(labels),
            value,
        });
    }
}

fn own(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Merge the families of several daemons: same-named families join, and samples with the
/// same labels add up (an export served by two processes counts once, with the sum of
/// both), except info samples, which are the same fact told twice.
pub fn merge(sets: impl IntoIterator<Item = Vec<Family>>) -> Vec<Family> {
    let mut out: Vec<Family> = vec![];
    for set in sets {
        for f in set {
            let Some(into) = out.iter_mut().find(|o| o.name == f.name) else {
                out.push(f);
                continue;
            };
            for s in f.samples {
                match into.samples.iter_mut().find(|o| o.labels == s.labels) {
                    None => into.samples.push(s),
                    Some(_) if into.kind == Kind::Info => {}
                    Some(o) => add(&mut o.value, s.value),
                }
            }
        }
    }
    out
}

fn add(into: &mut Value, v: Value) {
    match (into, v) {
        (Value::Number(a), Value::Number(b)) => *a += b,
        (
            Value::Histogram {
                bounds,
                counts,
                sum,
            },
            Value::Histogram {
                bounds: b2,
                counts: c2,
                sum: s2,
            },
        ) if *bounds == b2 && counts.len() == c2.len() => {
            counts.iter_mut().zip(c2).for_each(|(a, b)| *a += b);
            *sum += s2;
        }
        // Different shapes (daemons of different versions): keep the first.
        _ => {}
    }
}

/// The text exposition format.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        if f.samples.is_empty() {
            continue;
        }
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Info => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            match &s.value {
                Value::Number(v) => {
                    let _ = writeln!(out, "{}{} {}", f.name, labels(&s.labels, None), num(*v));
                }
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                } => {
                    let mut cumulative = 0u64;
                    for (i, c) in counts.iter().enumerate() {
                        cumulative += c;
                        let le = bounds.get(i).map_or("+Inf".to_string(), |b| num(*b));
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {cumulative}",
                            f.name,
                            labels(&s.labels, Some(&le))
                        );
                    }
                    let l = labels(&s.labels, None);
                    let _ = writeln!(out, "{}_sum{l} {}", f.name, num(*sum));
                    let _ = writeln!(out, "{}_count{l} {cumulative}", f.name);
                }
            }
        }
    }
    out
}

fn labels(l: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Integers as integers (counters stay exact up to 2^53), others in Rust's shortest form.
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_set(reads: f64) -> Vec<Family> {
        let mut info = Family::new("aoe_info", Kind::Info, "The build.");
        info.push(&[("version", "0.1.0")], 1.0);
        let mut c = Family::new("aoe_requests_total", Kind::Counter, "Requests.");
        c.push(&[("export", "e1.2"), ("kind", "read")], reads);
        let mut h = Family::new("aoe_request_duration_seconds", Kind::Histogram, "Latency.");
        h.push_histogram(
            &[("export", "e1.2")],
            Value::Histogram {
                bounds: vec![0.001, 0.5],
                counts: vec![2, 1, 1],
                sum: 3.25,
            },
        );
        vec![info, c, h]
    }

    #[test]
    fn the_text_format() {
        let text = render(&sample_set(7.0));
        assert_eq!(
            text,
            "# HELP aoe_info The build.\n\
             # TYPE aoe_info gauge\n\
             aoe_info{version=\"0.1.0\"} 1\n\
             # HELP aoe_requests_total Requests.\n\
             # TYPE aoe_requests_total counter\n\
             aoe_requests_total{export=\"e1.2\",kind=\"read\"} 7\n\
             # HELP aoe_request_duration_seconds Latency.\n\
             # TYPE aoe_request_duration_seconds histogram\n\
             aoe_request_duration_seconds_bucket{export=\"e1.2\",le=\"0.001\"} 2\n\
             aoe_request_duration_seconds_bucket{export=\"e1.2\",le=\"0.5\"} 3\n\
             aoe_request_duration_seconds_bucket{export=\"e1.2\",le=\"+Inf\"} 4\n\
             aoe_request_duration_seconds_sum{export=\"e1.2\"} 3.25\n\
             aoe_request_duration_seconds_count{export=\"e1.2\"} 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut f = Family::new("aoe_x", Kind::Gauge, "a\\b\nc");
        f.push(&[("path", "a\"b\\c\nd")], 0.5);
        assert_eq!(
            render(&[f]),
            "# HELP aoe_x a\\\\b\\nc\n# TYPE aoe_x gauge\naoe_x{path=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        );
    }

    #[test]
    fn merging_adds_counters_and_histograms_and_keeps_one_info() {
        let mut other = sample_set(3.0);
        other[1].push(&[("export", "e9.9"), ("kind", "read")], 1.0);
        let m = merge([sample_set(7.0), other]);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].samples.len(), 1);
        assert_eq!(m[1].samples.len(), 2);
        assert_eq!(m[1].samples[0].value, Value::Number(10.0));
        assert_eq!(
            m[2].samples[0].value,
            Value::Histogram {
                bounds: vec![0.001, 0.5],
                counts: vec![4, 2, 2],
                sum: 6.5
            }
        );
    }

    #[test]
    fn families_survive_the_control_socket() {
        let s = sample_set(1.0);
        let back: Vec<Family> = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
