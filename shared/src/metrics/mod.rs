//! Prometheus metrics: a small registry of labelled counters, gauges and histograms, rendered
//! in the text exposition format (version 0.0.4), and the HTTP endpoint that serves it
//! ([`server`]: `/metrics`, `/healthz`, `/readyz`).
//!
//! One registry per process ([`global`]): `kiln coordinator` and `kiln agent` each register
//! their families once and count events where they happen; gauges that describe state (Raft,
//! agents, slots) are set from that state when a scrape arrives, so they are never stale.
//! The embedded farm runs both in one process: their families have different names.

pub mod server;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

/// Seconds: from a local step (milliseconds) to an emulated build (tens of minutes).
pub const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Clone, Debug)]
enum Value {
    Scalar(f64),
    /// Per bucket (not cumulative), then sum and count.
    Histogram {
        buckets: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<&'static str>,
    buckets: Vec<f64>,
    series: Mutex<BTreeMap<Vec<String>, Value>>,
}

impl Family {
    fn series(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, Value>> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series of `values`, created empty; a call with the wrong number of labels is a
    /// programming error that must not take the process down: it goes to a series of its own
    /// with the missing values empty (and extra ones dropped).
    fn with<R>(&self, values: &[&str], f: impl FnOnce(&mut Value) -> R) -> R {
        let mut key: Vec<String> = values.iter().take(self.labels.len()).map(|v| v.to_string()).collect();
        key.resize(self.labels.len(), String::new());
        let mut series = self.series();
        let empty = match self.kind {
            Kind::Histogram => Value::Histogram { buckets: vec![0; self.buckets.len()], sum: 0.0, count: 0 },
            _ => Value::Scalar(0.0),
        };
        f(series.entry(key).or_insert(empty))
    }
}

/// A monotonic count of events.
#[derive(Clone, Debug)]
pub struct Counter(Arc<Family>);

impl Counter {
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        self.0.with(labels, |v| {
            if let Value::Scalar(x) = v {
                *x += n as f64;
            }
        });
    }

    /// Makes the series exist at 0, so that a query for it answers before the first event.
    pub fn touch(&self, labels: &[&str]) {
        self.add(labels, 0);
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<Family>);

impl Gauge {
    pub fn set(&self, labels: &[&str], value: f64) {
        self.0.with(labels, |v| *v = Value::Scalar(value));
    }

    /// Forgets every series (before setting those that describe the current state).
    pub fn clear(&self) {
        self.0.series().clear();
    }
}

/// Observations counted into buckets.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Family>);

impl Histogram {
    pub fn observe(&self, labels: &[&str], value: f64) {
        let bounds = &self.0.buckets;
        self.0.with(labels, |v| {
            if let Value::Histogram { buckets, sum, count } = v {
                if let Some(i) = bounds.iter().position(|b| value <= *b) {
                    buckets[i] += 1;
                }
                *sum += value;
                *count += 1;
            }
        });
    }
}

/// The families of one process.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Arc<Family>>>,
}

/// This process's registry.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    fn family(&self, name: &str, help: &str, kind: Kind, labels: &[&'static str], buckets: &[f64]) -> Arc<Family> {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        // Registering a name again gives the same family: two handles count into one series.
        if let Some(f) = families.iter().find(|f| f.name == name && f.kind == kind) {
            return f.clone();
        }
        let f = Arc::new(Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            labels: labels.to_vec(),
            buckets: buckets.to_vec(),
            series: Mutex::new(BTreeMap::new()),
        });
        families.push(f.clone());
        f
    }

    /// A counter; without labels it is shown at 0 from the start.
    pub fn counter(&self, name: &str, help: &str, labels: &[&'static str]) -> Counter {
        let c = Counter(self.family(name, help, Kind::Counter, labels, &[]));
        if labels.is_empty() {
            c.touch(&[]);
        }
        c
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[&'static str]) -> Gauge {
        Gauge(self.family(name, help, Kind::Gauge, labels, &[]))
    }

    /// A histogram with these upper bounds (ascending; `+Inf` is added).
    pub fn histogram(&self, name: &str, help: &str, labels: &[&'static str], buckets: &[f64]) -> Histogram {
        Histogram(self.family(name, help, Kind::Histogram, labels, buckets))
    }

    /// Every family in the text exposition format, in registration order.
    pub fn render(&self) -> String {
        let families: Vec<Arc<Family>> = self.families.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = String::new();
        for f in families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for (values, value) in f.series().iter() {
                match value {
                    Value::Scalar(x) => {
                        let _ = writeln!(out, "{}{} {}", f.name, labels(&f.labels, values, None), number(*x));
                    }
                    Value::Histogram { buckets, sum, count } => {
                        let mut cumulative = 0;
                        for (bound, n) in f.buckets.iter().zip(buckets) {
                            cumulative += n;
                            let le = number(*bound);
                            let _ = writeln!(out, "{}_bucket{} {cumulative}", f.name, labels(&f.labels, values, Some(&le)));
                        }
                        let _ = writeln!(out, "{}_bucket{} {count}", f.name, labels(&f.labels, values, Some("+Inf")));
                        let _ = writeln!(out, "{}_sum{} {}", f.name, labels(&f.labels, values, None), number(*sum));
                        let _ = writeln!(out, "{}_count{} {count}", f.name, labels(&f.labels, values, None));
                    }
                }
            }
        }
        out
    }
}

fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names.iter().zip(values).map(|(n, v)| format!("{n}=\"{}\"", escape_label(v))).collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// Integers without a fraction; the format's spellings of the special values.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Label values escape backslash, double quote and newline (the format's rule).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// HELP text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `kiln_transport_errors_total{kind}`: QUIC calls and connections of this process that failed,
/// and request frames it was sent that did not decode (counted in [`crate::transport`]).
pub fn transport_errors() -> &'static Counter {
    static ERRORS: OnceLock<Counter> = OnceLock::new();
    ERRORS.get_or_init(|| {
        let c = global().counter(
            "kiln_transport_errors_total",
            "QUIC calls, connections and served request frames that failed, by kind (connect, timeout, closed, wire, tls, io).",
            &["kind"],
        );
        for kind in ["connect", "timeout", "closed", "wire"] {
            c.touch(&[kind]);
        }
        c
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let r = Registry::default();
        let c = r.counter("kiln_test_events_total", "Events, by kind.", &["kind"]);
        c.inc(&["a"]);
        c.add(&["b\"\n\\"], 3);
        c.inc(&["a"]);
        let plain = r.counter("kiln_test_plain_total", "No labels.\nTwo lines.", &[]);
        let g = r.gauge("kiln_test_level", "A level.", &["agent"]);
        g.set(&["x"], 2.5);
        let h = r.histogram("kiln_test_seconds", "Durations.", &["platform"], &[0.1, 1.0]);
        h.observe(&["linux/amd64"], 0.05);
        h.observe(&["linux/amd64"], 0.5);
        h.observe(&["linux/amd64"], 7.0);
        let text = r.render();
        let expected = "\
# HELP kiln_test_events_total Events, by kind.
# TYPE kiln_test_events_total counter
kiln_test_events_total{kind=\"a\"} 2
kiln_test_events_total{kind=\"b\\\"\\n\\\\\"} 3
# HELP kiln_test_plain_total No labels.\\nTwo lines.
# TYPE kiln_test_plain_total counter
kiln_test_plain_total 0
# HELP kiln_test_level A level.
# TYPE kiln_test_level gauge
kiln_test_level{agent=\"x\"} 2.5
# HELP kiln_test_seconds Durations.
# TYPE kiln_test_seconds histogram
kiln_test_seconds_bucket{platform=\"linux/amd64\",le=\"0.1\"} 1
kiln_test_seconds_bucket{platform=\"linux/amd64\",le=\"1\"} 2
kiln_test_seconds_bucket{platform=\"linux/amd64\",le=\"+Inf\"} 3
kiln_test_seconds_sum{platform=\"linux/amd64\"} 7.55
kiln_test_seconds_count{platform=\"linux/amd64\"} 3
";
        assert_eq!(text, expected);
        plain.inc(&[]);
        g.clear();
        let text = r.render();
        assert!(text.contains("\nkiln_test_plain_total 1\n"), "{text}");
        assert!(!text.contains("kiln_test_level{"), "a cleared gauge has no series: {text}");
    }

    #[test]
    fn the_same_name_is_one_family_and_wrong_label_counts_do_not_panic() {
        let r = Registry::default();
        let a = r.counter("kiln_test_total", "T.", &["k"]);
        let b = r.counter("kiln_test_total", "T.", &["k"]);
        a.inc(&["x"]);
        b.inc(&["x"]);
        a.inc(&[]);
        a.inc(&["y", "extra"]);
        let text = r.render();
        assert_eq!(text.matches("# TYPE kiln_test_total").count(), 1);
        assert!(text.contains("kiln_test_total{k=\"x\"} 2"), "{text}");
        assert!(text.contains("kiln_test_total{k=\"\"} 1"), "{text}");
        assert!(text.contains("kiln_test_total{k=\"y\"} 1"), "{text}");
    }
}
