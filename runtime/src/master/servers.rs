//! What the Master knows about each Managed Server: the last status it reported, and when.
//!
//! Servers push their status (the same document they serve at their own `GET /v1/status`) on
//! registration and at every heartbeat; the Master never polls them. A server whose last heartbeat
//! is older than `[master] heartbeat-timeout` is shown as `UNREACHABLE`. The registry lives in
//! memory: after a Master restart, servers reappear at their next heartbeat (a few seconds), which
//! is simpler and never stale, unlike a persisted copy. A server that stops gracefully says so
//! in a last report (`SHUTDOWN`), and stays shown as such instead of `UNREACHABLE`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use reconciler::wire::{ServerState, Status, View};

struct Entry {
    report: Status,
    seen: Instant,
    seen_at: String,
    /// Whether the `unreachable` transition was already announced.
    lost: bool,
}

#[derive(Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Registry {
    /// Records a report. Returns the server's new view when something an operator cares about
    /// changed (first report, state, mode, commit, pending restarts, failures, error, or coming
    /// back after being unreachable), `None` for a plain heartbeat.
    pub fn report(&self, name: &str, report: Status, configured: bool) -> Option<View> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match entries.get(name) {
            None => true,
            Some(old) => old.lost || !same(&old.report, &report),
        };
        let entry = Entry {
            report,
            seen: Instant::now(),
            seen_at: reconciler::pin::now_rfc3339(),
            lost: false,
        };
        let view = changed.then(|| view(name, Some(&entry), configured, Duration::MAX));
        entries.insert(name.to_owned(), entry);
        view
    }

    /// A report for `name` that the Master refused (401/403): shown as the server's `last_error`
    /// until its next accepted report, so `GET /v1/servers` says why it went silent. Only for a
    /// server already registered: a refused request never adds an entry.
    pub fn refused(&self, name: &str, why: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(name) {
            e.report.last_error = Some(why);
        }
    }

    /// Every configured server (in name order), then servers that report but are no longer
    /// configured.
    pub fn list<'a>(
        &self,
        configured: impl Iterator<Item = &'a String>,
        timeout: Duration,
    ) -> Vec<View> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // A set, not a scan of `out` per entry: with a thousand servers, every report would
        // otherwise cost a million comparisons.
        let mut names = std::collections::HashSet::new();
        let mut out: Vec<View> = configured
            .inspect(|n| {
                names.insert(n.as_str());
            })
            .map(|n| view(n, entries.get(n), true, timeout))
            .collect();
        for (n, e) in entries.iter() {
            if !names.contains(n.as_str()) {
                out.push(view(n, Some(e), false, timeout));
            }
        }
        out
    }

    /// `name`'s view alone: what a report needs, at the cost of one entry however many servers
    /// report (a `list` of one name still lists every unconfigured entry beside it).
    pub fn one(&self, name: &str, configured: bool, timeout: Duration) -> View {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        view(name, entries.get(name), configured, timeout)
    }

    /// Servers that just went silent for longer than `timeout`, each returned once per outage.
    pub fn newly_lost(&self, timeout: Duration, configured: impl Fn(&str) -> bool) -> Vec<View> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (n, e) in entries.iter_mut() {
            if !e.lost && e.report.state != ServerState::Shutdown && e.seen.elapsed() > timeout {
                e.lost = true;
                out.push(view(n, Some(e), configured(n), timeout));
            }
        }
        out
    }
}

fn same(a: &Status, b: &Status) -> bool {
    (
        a.state,
        a.mode,
        &a.applied_commit,
        &a.pending_restart,
        &a.failed_applications,
        &a.last_error,
        a.pid,
    ) == (
        b.state,
        b.mode,
        &b.applied_commit,
        &b.pending_restart,
        &b.failed_applications,
        &b.last_error,
        b.pid,
    )
}

fn view(name: &str, entry: Option<&Entry>, configured: bool, timeout: Duration) -> View {
    let Some(e) = entry else {
        return View {
            name: name.to_owned(),
            state: ServerState::Unknown,
            mode: None,
            applied_commit: None,
            pending_restart: Vec::new(),
            failed_applications: Vec::new(),
            last_error: None,
            last_heartbeat: None,
            reachable: false,
            configured,
            pid: None,
            started_at: None,
        };
    };
    let down = e.report.state == ServerState::Shutdown;
    let reachable = !down && e.seen.elapsed() <= timeout;
    View {
        name: name.to_owned(),
        state: if reachable || down {
            e.report.state
        } else {
            ServerState::Unreachable
        },
        mode: Some(e.report.mode),
        applied_commit: e.report.applied_commit.clone(),
        pending_restart: e.report.pending_restart.clone(),
        failed_applications: e.report.failed_applications.clone(),
        last_error: e.report.last_error.clone(),
        last_heartbeat: Some(e.seen_at.clone()),
        reachable,
        configured,
        pid: e.report.pid,
        started_at: e.report.started_at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reconciler::wire::Mode;

    fn report(state: &str) -> Status {
        serde_json::from_value(serde_json::json!({
            "name": "server1", "state": state, "mode": "DEPENDENT",
            "applied_commit": "abc", "pending_restart": [], "failed_applications": [],
            "last_error": null
        }))
        .expect("a report")
    }

    #[test]
    fn reports_changes_heartbeats_and_loss() {
        let r = Registry::default();
        let names = ["server1".to_owned(), "server2".to_owned()];
        let v = r
            .report("server1", report("running"), true)
            .expect("first report is news");
        assert_eq!((v.state, v.reachable), (ServerState::Running, true));
        assert!(
            r.report("server1", report("running"), true).is_none(),
            "a plain heartbeat"
        );
        assert!(r.report("server1", report("stopping"), true).is_some());

        let list = r.list(names.iter(), Duration::from_secs(10));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].state, ServerState::Stopping);
        assert_eq!(list[0].mode, Some(Mode::Dependent));
        assert_eq!(
            (list[1].state, list[1].reachable),
            (ServerState::Unknown, false)
        );

        std::thread::sleep(Duration::from_millis(20));
        let lost = r.newly_lost(Duration::from_millis(10), |_| true);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].state, ServerState::Unreachable);
        assert!(
            r.newly_lost(Duration::from_millis(10), |_| true).is_empty(),
            "announced once"
        );
        assert_eq!(
            r.list(names.iter(), Duration::from_millis(10))[0].state,
            ServerState::Unreachable
        );
        let back = r
            .report("server1", report("stopping"), true)
            .expect("coming back is news");
        assert!(back.reachable);

        // A server no longer configured still shows, flagged.
        r.report("old", report("running"), false);
        let list = r.list(names.iter(), Duration::from_secs(10));
        assert_eq!(list.len(), 3);
        assert!(!list[2].configured);
    }

    #[test]
    fn states_have_one_spelling() {
        for st in ServerState::ALL {
            let json = serde_json::to_value(st).expect("json");
            assert_eq!(json, st.as_str());
            assert_eq!(st.as_str(), st.as_str().to_uppercase());
            // Read in either case, written upper case.
            let lower = serde_json::json!(st.as_str().to_lowercase());
            assert_eq!(
                serde_json::from_value::<ServerState>(lower).expect("lower"),
                st
            );
            assert_eq!(
                st.as_str()
                    .to_lowercase()
                    .parse::<ServerState>()
                    .expect("parse"),
                st
            );
        }
        let bad = serde_json::json!({"state": "SLEEPING", "mode": "DEPENDENT"});
        assert!(serde_json::from_value::<Status>(bad).is_err());
    }

    #[test]
    fn mode_is_checked() {
        let bad = serde_json::json!({"state": "running", "mode": "SOMETIMES"});
        assert!(serde_json::from_value::<Status>(bad).is_err());
        let ok = serde_json::json!({"state": "running", "mode": "independent"});
        assert_eq!(
            serde_json::from_value::<Status>(ok).expect("ok").mode,
            Mode::Independent
        );
    }
}
