//! Metrics in the Prometheus text exposition format, version 0.0.4 (`GET /metrics` of the Master
//! and of every Managed Server; the metrics themselves are listed in docs/metrics.md).
//!
//! Hand-written rather than the `prometheus-client` crate, for two reasons:
//! - that crate writes only the OpenMetrics 1.0 text format (a counter's `# TYPE` line names the
//!   family without `_total`, and the body ends with `# EOF`), which is not the 0.0.4 format
//!   Prometheus asks for by default and its own text parser reads;
//! - its labelled families look each label set up in a map behind a lock on every update, while
//!   the web engine's per-request counters must stay a few relaxed atomic additions (the engine's
//!   throughput is measured against nginx).
//!
//! The format itself is small: `# HELP` and `# TYPE` lines, then one sample per line with its
//! labels (values escaped), and for a histogram its cumulative `_bucket` samples with `le`, then
//! `_sum` and `_count`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) for request durations: 0.5 ms to 10 s.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds (seconds) for slower work (a push's validation, applying a commit): 10 ms to
/// 2 min.
pub const TASK_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
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

/// A scrape's body, written family by family.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// One sample with an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample with a floating-point value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(name, labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's samples (its family started with [`Kind::Histogram`]).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let snap = h.snapshot();
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (bound, n) in h.bounds.iter().zip(&snap.buckets) {
            cumulative += n;
            le.clear();
            push_f64(&mut le, *bound);
            self.name_and_labels(&bucket, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let count = cumulative + snap.buckets.last().copied().unwrap_or(0);
        self.name_and_labels(&bucket, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        self.sample_f64(&format!("{name}_sum"), labels, snap.sum_seconds);
        self.sample(&format!("{name}_count"), labels, count);
    }

    fn name_and_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.out.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Go's and Prometheus's spellings of the special values; plain decimal otherwise (Rust never
/// writes an exponent for `{}`).
fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A histogram of durations updated with relaxed atomic additions only: one per bucket (not
/// cumulative; summed when written) and one for the sum, in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// The bounds in nanoseconds, compared against without floating point.
    bounds_ns: Box<[u64]>,
    /// One per bound, then the overflow (`+Inf`) bucket.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// What a histogram held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Per bucket, not cumulative; the last is above the last bound.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds`: the buckets' upper bounds in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|b| *b < ns);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// `2xx` for 204 and so on: the `class` label of request counters.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`STATUS_CLASSES`] of a status code (codes outside 100–599 count as `5xx`).
pub fn status_class(code: u16) -> usize {
    match code {
        100..=599 => usize::from(code / 100 - 1),
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_labels_and_escapes() {
        let mut t = Text::new();
        t.family("x_total", Kind::Counter, "Things\\ counted.\nTwo lines.");
        t.sample("x_total", &[], 3);
        t.sample("x_total", &[("app", "a\"b\\c\nd"), ("class", "2xx")], 7);
        t.family("g", Kind::Gauge, "A gauge.");
        t.sample_f64("g", &[], 0.25);
        assert_eq!(
            t.finish(),
            "# HELP x_total Things\\\\ counted.\\nTwo lines.\n# TYPE x_total counter\nx_total 3\n\
             x_total{app=\"a\\\"b\\\\c\\nd\",class=\"2xx\"} 7\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 0.25\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        static B: &[f64] = &[0.001, 0.01, 0.1];
        let h = Histogram::new(B);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: counts in it (le means <=)
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(2));
        assert_eq!(h.count(), 4);
        let mut t = Text::new();
        t.family("d_seconds", Kind::Histogram, "Durations.");
        t.histogram("d_seconds", &[("app", "a")], &h);
        assert_eq!(
            t.finish(),
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{app=\"a\",le=\"0.001\"} 2\n\
             d_seconds_bucket{app=\"a\",le=\"0.01\"} 2\n\
             d_seconds_bucket{app=\"a\",le=\"0.1\"} 3\n\
             d_seconds_bucket{app=\"a\",le=\"+Inf\"} 4\n\
             d_seconds_sum{app=\"a\"} 2.0515\n\
             d_seconds_count{app=\"a\"} 4\n"
        );
    }

    #[test]
    fn special_values_and_classes() {
        let mut s = String::new();
        push_f64(&mut s, f64::INFINITY);
        s.push(' ');
        push_f64(&mut s, f64::NAN);
        s.push(' ');
        push_f64(&mut s, 1e-7);
        assert_eq!(s, "+Inf NaN 0.0000001");
        assert_eq!(STATUS_CLASSES[status_class(204)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(503)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(42)], "5xx");
    }
}
