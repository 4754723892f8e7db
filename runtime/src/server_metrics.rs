//! A Managed Server's metrics (`GET /metrics` on its base address, docs/metrics.md): the web
//! engine's (requests, pools), the messaging engine's (its `GET /v1/messaging` report, per
//! destination), its deployments and applies (counted here, by `serving`), and what its status
//! says (pending restarts).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::messaging;
use crate::engine::web::WebEngine;
use crate::metrics::{Histogram, Kind, TASK_BUCKETS, Text};

/// Deployments and applies of one server process; counted by [`crate::serving::Serving`].
#[derive(Debug)]
pub struct DeployStats {
    /// Application → (deployments that succeeded, deployments that failed). Deployments are
    /// rare (a pin, a retry), so a lock is fine.
    deploys: Mutex<BTreeMap<String, (u64, u64)>>,
    apply: Histogram,
}

impl Default for DeployStats {
    fn default() -> DeployStats {
        DeployStats {
            deploys: Mutex::new(BTreeMap::new()),
            apply: Histogram::new(TASK_BUCKETS),
        }
    }
}

impl DeployStats {
    /// A deployment of `app` (an unchanged image found in place counts as one) succeeded or not.
    pub fn deployed(&self, app: &str, ok: bool) {
        let mut d = self.deploys.lock().unwrap_or_else(|p| p.into_inner());
        let e = d.entry(app.to_owned()).or_insert((0, 0));
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// A commit applied (at boot or on a new pin), in `took`.
    pub fn applied(&self, took: Duration) {
        self.apply.observe(took);
    }

    fn render(&self, t: &mut Text) {
        let deploys: Vec<(String, (u64, u64))> = self
            .deploys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let name = "steward_server_deploys_total";
        t.family(
            name,
            Kind::Counter,
            "Deployments of each application that succeeded (an unchanged image kept counts), at boot, at a new pin or in a retry.",
        );
        for (app, (ok, _)) in &deploys {
            t.sample(name, &[("application", app)], *ok);
        }
        let name = "steward_server_deploy_failures_total";
        t.family(
            name,
            Kind::Counter,
            "Deployments of each application that failed (the previous image, if any, keeps serving).",
        );
        for (app, (_, failed)) in &deploys {
            t.sample(name, &[("application", app)], *failed);
        }
        let name = "steward_server_apply_duration_seconds";
        t.family(
            name,
            Kind::Histogram,
            "Time to apply a commit, at boot and at each new pin: deployments, the web engine's configuration, undeployments.",
        );
        t.histogram(name, &[], &self.apply);
    }
}

/// The messaging engine's series, from its report (the same numbers as `GET /v1/messaging`):
/// gauges and counters per destination, and the connections.
fn render_messaging(t: &mut Text, report: &messaging::Report) {
    let name = "steward_server_messaging_connections";
    t.family(name, Kind::Gauge, "STOMP connections open now.");
    t.sample(name, &[], report.connections as u64);
    type Field = fn(&messaging::DestinationReport) -> u64;
    let series: [(&str, Kind, &str, Field); 9] = [
        (
            "steward_server_messaging_depth",
            Kind::Gauge,
            "Messages a destination holds: waiting, plus delivered and not yet acknowledged (what max-depth bounds).",
            |d| d.depth,
        ),
        (
            "steward_server_messaging_in_flight",
            Kind::Gauge,
            "Messages delivered to a consumer and not yet acknowledged.",
            |d| d.in_flight,
        ),
        (
            "steward_server_messaging_consumers",
            Kind::Gauge,
            "Subscriptions to a destination now.",
            |d| d.consumers,
        ),
        (
            "steward_server_messaging_enqueued_total",
            Kind::Counter,
            "Messages a destination accepted (a topic: published).",
            |d| d.counts.enqueued,
        ),
        (
            "steward_server_messaging_dequeued_total",
            Kind::Counter,
            "Messages consumed: acknowledged, or handed over in auto mode (a topic: copies handed to subscribers).",
            |d| d.counts.dequeued,
        ),
        (
            "steward_server_messaging_redelivered_total",
            Kind::Counter,
            "Deliveries put back for redelivery (NACK, unsubscribe or disconnect without ACK).",
            |d| d.counts.redelivered,
        ),
        (
            "steward_server_messaging_dead_lettered_total",
            Kind::Counter,
            "Messages moved to the dead-letter queue after too many redeliveries.",
            |d| d.counts.dead_lettered,
        ),
        (
            "steward_server_messaging_discarded_total",
            Kind::Counter,
            "Dead letters dropped because the dead-letter queue was full.",
            |d| d.counts.discarded,
        ),
        (
            "steward_server_messaging_draining",
            Kind::Gauge,
            "1 for a destination removed from the configuration and kept until it is empty.",
            |d| u64::from(d.draining),
        ),
    ];
    for (name, kind, help, field) in series {
        t.family(name, kind, help);
        for d in &report.destinations {
            t.sample(name, &[("destination", &d.destination)], field(d));
        }
    }
}

/// The whole scrape of a server: `pending_restart` and `failed` from its status now.
pub fn render(
    engine: &WebEngine,
    messaging: &messaging::Report,
    deploys: &DeployStats,
    pending_restart: usize,
    failed_applications: usize,
) -> String {
    let mut t = Text::new();
    engine.render_metrics(&mut t);
    render_messaging(&mut t, messaging);
    deploys.render(&mut t);
    let name = "steward_server_pending_restart_settings";
    t.family(
        name,
        Kind::Gauge,
        "Settings of the applied commit that take effect only at the next restart.",
    );
    t.sample(name, &[], pending_restart as u64);
    let name = "steward_server_failed_applications";
    t.family(
        name,
        Kind::Gauge,
        "Applications of the applied commit that failed to deploy or start.",
    );
    t.sample(name, &[], failed_applications as u64);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_deploys_and_failures_per_application() {
        let d = DeployStats::default();
        d.deployed("shop", true);
        d.deployed("shop", false);
        d.deployed("api", true);
        d.applied(Duration::from_millis(40));
        let mut t = Text::new();
        d.render(&mut t);
        let text = t.finish();
        for line in [
            "steward_server_deploys_total{application=\"shop\"} 1",
            "steward_server_deploys_total{application=\"api\"} 1",
            "steward_server_deploy_failures_total{application=\"shop\"} 1",
            "steward_server_deploy_failures_total{application=\"api\"} 0",
            "steward_server_apply_duration_seconds_count 1",
            "steward_server_apply_duration_seconds_bucket{le=\"0.05\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
