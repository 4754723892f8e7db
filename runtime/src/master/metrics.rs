//! The Master's metrics (`GET /metrics`, docs/metrics.md): what it counts as it goes (decisions,
//! a push's validation time, Git requests) and what it reads at scrape time (servers by state
//! and mode, event subscribers). Everything counted here is rare next to a scrape, so plain
//! atomics and one small lock for the Git request counters are enough.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reconciler::pin::{Outcome, Source};

use super::servers::{ServerState, View};
use crate::metrics::{Histogram, Kind, TASK_BUCKETS, Text};

/// Every source of a decision, so each counter is written (at zero) from the first scrape:
/// `rate()` needs a series to exist before its first increment.
const SOURCES: [Source; 8] = [
    Source::Init,
    Source::Push,
    Source::Watch,
    Source::Poll,
    Source::Webhook,
    Source::Rollback,
    Source::Recovered,
    Source::Resume,
];

fn source_index(s: Source) -> usize {
    SOURCES.iter().position(|x| *x == s).unwrap_or(0)
}

/// What a Git request came to, the `outcome` label of `steward_master_git_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum GitOutcome {
    /// Answered below 400.
    Ok,
    /// Refused for want of a permission (403), or a push to a mirror.
    Denied,
    /// Any other answer of 400 or more (a bad path, a failing backend).
    Failed,
}

impl GitOutcome {
    fn as_str(self) -> &'static str {
        match self {
            GitOutcome::Ok => "ok",
            GitOutcome::Denied => "denied",
            GitOutcome::Failed => "failed",
        }
    }

    pub(super) fn of(status: u16) -> GitOutcome {
        match status {
            ..400 => GitOutcome::Ok,
            403 => GitOutcome::Denied,
            _ => GitOutcome::Failed,
        }
    }
}

pub(super) struct Metrics {
    pins: [AtomicU64; SOURCES.len()],
    rejections: [AtomicU64; SOURCES.len()],
    held: [AtomicU64; SOURCES.len()],
    push_validation: Histogram,
    /// (service, outcome) → requests.
    git: Mutex<BTreeMap<(&'static str, GitOutcome), u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            pins: Default::default(),
            rejections: Default::default(),
            held: Default::default(),
            push_validation: Histogram::new(TASK_BUCKETS),
            git: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// A decision made public (see `State::publish`).
    pub(super) fn decided(&self, outcome: Outcome, source: Source) {
        let counters = match outcome {
            Outcome::Pinned => &self.pins,
            Outcome::Rejected => &self.rejections,
            Outcome::Held => &self.held,
        };
        counters[source_index(source)].fetch_add(1, Ordering::Relaxed);
    }

    /// From the end of a push's upload to the Master's decision on it.
    pub(super) fn push_validated(&self, took: Duration) {
        self.push_validation.observe(took);
    }

    /// `service`: `git-upload-pack` (fetches) or `git-receive-pack` (pushes).
    pub(super) fn git_request(&self, service: &'static str, outcome: GitOutcome) {
        let mut git = self.git.lock().unwrap_or_else(|p| p.into_inner());
        *git.entry((service, outcome)).or_insert(0) += 1;
    }

    /// The scrape's body. `servers`: every server's view now; `subscribers`: open event streams.
    pub(super) fn render(&self, servers: &[View], subscribers: usize) -> String {
        let mut t = Text::new();
        for (name, help, counters) in [
            (
                "steward_master_pins_total",
                "Commits pinned, by what made the Master decide.",
                &self.pins,
            ),
            (
                "steward_master_rejections_total",
                "Commits rejected (invalid, or a push the pre-receive hook refused), by what made the Master decide.",
                &self.rejections,
            ),
            (
                "steward_master_held_total",
                "Valid upstream commits recorded as held, not pinned, while the domain is held (mirror mode).",
                &self.held,
            ),
        ] {
            t.family(name, Kind::Counter, help);
            for (s, c) in SOURCES.iter().zip(counters) {
                t.sample(name, &[("source", s.as_str())], c.load(Ordering::Relaxed));
            }
        }

        let name = "steward_master_push_validation_duration_seconds";
        t.family(
            name,
            Kind::Histogram,
            "From the end of a push's upload to the Master's decision: the pre-receive validation and the pin.",
        );
        t.histogram(name, &[], &self.push_validation);

        let name = "steward_master_git_requests_total";
        t.family(
            name,
            Kind::Counter,
            "Git smart HTTP requests of authenticated users, by service and outcome.",
        );
        {
            let git = self.git.lock().unwrap_or_else(|p| p.into_inner());
            for service in ["git-receive-pack", "git-upload-pack"] {
                for outcome in [GitOutcome::Ok, GitOutcome::Denied, GitOutcome::Failed] {
                    let n = git.get(&(service, outcome)).copied().unwrap_or(0);
                    t.sample(
                        name,
                        &[("service", service), ("outcome", outcome.as_str())],
                        n,
                    );
                }
            }
        }

        let name = "steward_master_servers";
        t.family(
            name,
            Kind::Gauge,
            "Managed Servers by state and mode, as the Master sees them (mode \"\" while unknown).",
        );
        for ((state, mode), n) in count_servers(servers) {
            t.sample(name, &[("state", state), ("mode", mode)], n);
        }

        let name = "steward_master_event_subscribers";
        t.family(name, Kind::Gauge, "Open /v1/events streams.");
        t.sample(name, &[], subscribers as u64);
        t.finish()
    }
}

/// Servers per (state, mode): every state with each mode at zero included, so a series does not
/// vanish when its last server changes state.
fn count_servers(servers: &[View]) -> BTreeMap<(&'static str, &'static str), u64> {
    let mut out = BTreeMap::new();
    for s in ServerState::ALL {
        for m in ["DEPENDENT", "INDEPENDENT"] {
            out.insert((s.as_str(), m), 0);
        }
    }
    for v in servers {
        let mode = v.mode.map_or("", |m| m.as_str());
        *out.entry((v.state.as_str(), mode)).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decisions_by_source_and_git_by_outcome() {
        let m = Metrics::default();
        m.decided(Outcome::Pinned, Source::Push);
        m.decided(Outcome::Pinned, Source::Push);
        m.decided(Outcome::Rejected, Source::Watch);
        m.git_request("git-receive-pack", GitOutcome::of(200));
        m.git_request("git-upload-pack", GitOutcome::of(403));
        m.push_validated(Duration::from_millis(30));
        let text = m.render(&[], 2);
        for line in [
            "steward_master_pins_total{source=\"push\"} 2",
            "steward_master_pins_total{source=\"watch\"} 0",
            "steward_master_rejections_total{source=\"watch\"} 1",
            "steward_master_git_requests_total{service=\"git-receive-pack\",outcome=\"ok\"} 1",
            "steward_master_git_requests_total{service=\"git-upload-pack\",outcome=\"denied\"} 1",
            "steward_master_push_validation_duration_seconds_bucket{le=\"0.05\"} 1",
            "steward_master_push_validation_duration_seconds_count 1",
            "steward_master_servers{state=\"RUNNING\",mode=\"DEPENDENT\"} 0",
            "steward_master_event_subscribers 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn git_outcomes() {
        assert_eq!(GitOutcome::of(200), GitOutcome::Ok);
        assert_eq!(GitOutcome::of(304), GitOutcome::Ok);
        assert_eq!(GitOutcome::of(403), GitOutcome::Denied);
        assert_eq!(GitOutcome::of(404), GitOutcome::Failed);
        assert_eq!(GitOutcome::of(502), GitOutcome::Failed);
    }
}
