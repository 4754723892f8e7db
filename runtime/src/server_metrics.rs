//! A Managed Server's metrics (`GET /metrics` on its base address, docs/metrics.md): the web
//! engine's (requests, pools), its deployments and applies (counted here, by `serving`), and
//! what its status says (pending restarts).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

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

/// The whole scrape of a server: `pending_restart` and `failed` from its status now.
pub fn render(
    engine: &WebEngine,
    deploys: &DeployStats,
    pending_restart: usize,
    failed_applications: usize,
) -> String {
    let mut t = Text::new();
    engine.render_metrics(&mut t);
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
