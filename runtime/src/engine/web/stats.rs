//! The web engine's part of a Managed Server's metrics (docs/metrics.md). A request adds to
//! relaxed atomics only: each route carries its application's counters (an `Arc` put in the
//! snapshot by `apply`), so nothing is looked up or locked per request. The table of
//! applications' counters is locked only by `apply` and by a scrape; an application keeps its
//! counters across applies and redeployments (counters never go back), and one that left the
//! configuration keeps being reported until the process restarts.
//!
//! What a scrape reads rather than counts: a listener's slots in use are its capacity less the
//! semaphore's free permits (a request holds its permit until its response body is sent).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::{Histogram, Kind, REQUEST_BUCKETS, STATUS_CLASSES, Text, status_class};

/// One application's request counters.
#[derive(Debug)]
pub(super) struct AppStats {
    /// Per status class (1xx … 5xx).
    requests: [AtomicU64; 5],
    duration: Histogram,
}

impl AppStats {
    fn new() -> AppStats {
        AppStats {
            requests: Default::default(),
            duration: Histogram::new(REQUEST_BUCKETS),
        }
    }

    /// A request answered with `status`, its response head ready after `took`.
    pub(super) fn record(&self, status: u16, took: Duration) {
        if let Some(c) = self.requests.get(status_class(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took);
    }
}

/// The engine's counters.
#[derive(Debug, Default)]
pub(super) struct Stats {
    apps: Mutex<BTreeMap<String, Arc<AppStats>>>,
    /// Requests no application's context path covers (answered 404).
    unrouted: AtomicU64,
}

impl Stats {
    /// The counters of `app` (created at its first apply).
    pub(super) fn app(&self, app: &str) -> Arc<AppStats> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            apps.entry(app.to_owned())
                .or_insert_with(|| Arc::new(AppStats::new())),
        )
    }

    pub(super) fn unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a scrape reads of one listener.
#[derive(Debug)]
pub(super) struct ListenerReading<'a> {
    pub(super) name: &'a str,
    pub(super) capacity: usize,
    pub(super) in_use: usize,
    pub(super) rejected: u64,
}

/// Writes the engine's families.
pub(super) fn render(t: &mut Text, stats: &Stats, listeners: &[ListenerReading<'_>]) {
    let apps: Vec<(String, Arc<AppStats>)> = stats
        .apps
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect();

    let name = "steward_server_http_requests_total";
    t.family(
        name,
        Kind::Counter,
        "Requests routed to each application, by status class of the answer (a 504 of request-timeout and a 503 of an application not ready included).",
    );
    for (app, s) in &apps {
        for (class, c) in STATUS_CLASSES.iter().zip(&s.requests) {
            t.sample(
                name,
                &[("application", app), ("class", class)],
                c.load(Ordering::Relaxed),
            );
        }
    }

    let name = "steward_server_http_request_duration_seconds";
    t.family(
        name,
        Kind::Histogram,
        "Time from a request's arrival (its head read) to its response head, per application.",
    );
    for (app, s) in &apps {
        t.histogram(name, &[("application", app)], &s.duration);
    }

    let name = "steward_server_http_unrouted_requests_total";
    t.family(
        name,
        Kind::Counter,
        "Requests under no application's context path (answered 404).",
    );
    t.sample(name, &[], stats.unrouted.load(Ordering::Relaxed));

    let name = "steward_server_http_requests_in_flight";
    t.family(
        name,
        Kind::Gauge,
        "Requests holding a slot of a listener's thread pool now (until their response is sent).",
    );
    for l in listeners {
        t.sample(name, &[("listener", l.name)], l.in_use as u64);
    }

    let name = "steward_server_http_pool_capacity";
    t.family(
        name,
        Kind::Gauge,
        "Slots of a listener's thread pool (thread-pool.max): requests served at once.",
    );
    for l in listeners {
        t.sample(name, &[("listener", l.name)], l.capacity as u64);
    }

    let name = "steward_server_http_pool_saturation_ratio";
    t.family(
        name,
        Kind::Gauge,
        "Slots in use over capacity (1: every further request waits, up to queue-timeout).",
    );
    for l in listeners {
        let ratio = if l.capacity == 0 {
            0.0
        } else {
            l.in_use as f64 / l.capacity as f64
        };
        t.sample_f64(name, &[("listener", l.name)], ratio);
    }

    let name = "steward_server_http_pool_rejections_total";
    t.family(
        name,
        Kind::Counter,
        "Requests answered 503 because no slot of the listener's pool freed within queue-timeout.",
    );
    for l in listeners {
        t.sample(name, &[("listener", l.name)], l.rejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_application_and_class_and_keeps_counters_across_applies() {
        let stats = Stats::default();
        let shop = stats.app("shop");
        shop.record(200, Duration::from_millis(2));
        shop.record(503, Duration::from_millis(1));
        // Another apply hands out the same counters.
        stats.app("shop").record(204, Duration::from_millis(3));
        stats.unrouted();
        let mut t = Text::new();
        render(
            &mut t,
            &stats,
            &[ListenerReading {
                name: "http",
                capacity: 4,
                in_use: 1,
                rejected: 2,
            }],
        );
        let text = t.finish();
        for line in [
            "steward_server_http_requests_total{application=\"shop\",class=\"2xx\"} 2",
            "steward_server_http_requests_total{application=\"shop\",class=\"5xx\"} 1",
            "steward_server_http_requests_total{application=\"shop\",class=\"4xx\"} 0",
            "steward_server_http_request_duration_seconds_count{application=\"shop\"} 3",
            "steward_server_http_unrouted_requests_total 1",
            "steward_server_http_requests_in_flight{listener=\"http\"} 1",
            "steward_server_http_pool_saturation_ratio{listener=\"http\"} 0.25",
            "steward_server_http_pool_rejections_total{listener=\"http\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
