//! Rolling restarts: servers with `restart-policy = "rolling"` that report pending restarts are
//! restarted by the Master's order, one per cluster at a time, the next only once the previous
//! one is back RUNNING on the pinned commit with nothing pending. The order travels in the
//! answer to a heartbeat (`"restart": true`); the server restarts itself through its launcher.
//!
//! [`step`] is the pure decision; [`Rolling`] only remembers which server of each group was
//! ordered and when.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use schema::model::{Domain, RestartPolicy};

use crate::wire::{ServerState, View};

/// How long an ordered restart may take before the Master stops waiting for it (orders again if
/// the server still needs it, or moves on to the next one).
pub const RESTART_GRACE: Duration = Duration::from_secs(120);

/// A restart the Master ordered and waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered {
    pub server: String,
    pub at: Instant,
}

/// What to answer a server that reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do for it.
    None,
    /// Order it to restart now; it becomes the group's ordered restart.
    Order,
    /// It needs a restart, but another member of its group is restarting.
    Wait { behind: String },
}

/// The group a server restarts in turn with: its cluster, else itself alone.
pub fn group_of(domain: &Domain, server: &str) -> String {
    domain.cluster_of(server).map_or_else(
        || format!("server:{server}"),
        |name| format!("cluster:{name}"),
    )
}

/// Whether `view` is back: reporting, RUNNING on the pinned commit, nothing pending.
fn settled(view: &View, pinned: &str) -> bool {
    view.reachable
        && view.state == ServerState::Running
        && view.pending_restart.is_empty()
        && view.applied_commit.as_deref() == Some(pinned)
}

/// The decision for server `me`, given the views of the servers (its own report included), the
/// group's ordered restart, and the pinned commit.
pub fn step(
    domain: &Domain,
    me: &View,
    views: &[View],
    ordered: Option<&Ordered>,
    pinned: &str,
    now: Instant,
) -> Step {
    let rolling = domain
        .config
        .servers
        .get(&me.name)
        .is_some_and(|s| s.restart_policy == RestartPolicy::Rolling);
    if !rolling || me.pending_restart.is_empty() {
        return Step::None;
    }
    match ordered {
        Some(o) if o.server == me.name => {
            // Ordered already and still pending: it has not restarted yet. Order again only
            // when the first order is clearly lost.
            if now.duration_since(o.at) > RESTART_GRACE {
                Step::Order
            } else {
                Step::Wait {
                    behind: me.name.clone(),
                }
            }
        }
        Some(o) => {
            let back = views
                .iter()
                .find(|v| v.name == o.server)
                .is_none_or(|v| settled(v, pinned));
            if back || now.duration_since(o.at) > RESTART_GRACE {
                Step::Order
            } else {
                Step::Wait {
                    behind: o.server.clone(),
                }
            }
        }
        None => Step::Order,
    }
}

/// The ordered restart of each group.
#[derive(Debug, Default)]
pub struct Rolling {
    ordered: Mutex<BTreeMap<String, Ordered>>,
}

impl Rolling {
    /// Decides for `me` and records an order. Returns whether to order the restart.
    pub fn decide(&self, domain: &Domain, me: &View, views: &[View], pinned: &str) -> Step {
        let group = group_of(domain, &me.name);
        let mut ordered = self.ordered.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let s = step(domain, me, views, ordered.get(&group), pinned, now);
        match &s {
            Step::Order => {
                ordered.insert(
                    group,
                    Ordered {
                        server: me.name.clone(),
                        at: now,
                    },
                );
            }
            Step::None => {
                // A settled server that was the group's ordered restart: the turn is over.
                if ordered.get(&group).is_some_and(|o| o.server == me.name) && settled(me, pinned) {
                    ordered.remove(&group);
                }
            }
            Step::Wait { .. } => {}
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::model::{Cluster, Domain, Server};

    fn domain(policy: RestartPolicy) -> Domain {
        let mut d = Domain::default();
        for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
            let server: Server = serde_json::from_value(
                serde_json::json!({ "listen": format!("127.0.0.1:{}", 9000 + i) }),
            )
            .expect("a server");
            d.config.servers.insert(
                (*name).to_owned(),
                Server {
                    restart_policy: policy,
                    ..server
                },
            );
        }
        d.config.clusters.insert(
            "c1".into(),
            Cluster {
                servers: vec!["s1".into(), "s2".into()],
                description: String::new(),
            },
        );
        d
    }

    fn view(name: &str, pending: bool, state: &str, applied: &str) -> View {
        View {
            name: name.into(),
            state: state.parse().expect("a state"),
            mode: None,
            applied_commit: Some(applied.into()),
            pending_restart: if pending {
                vec!["servers.x.process.env.A".into()]
            } else {
                vec![]
            },
            failed_applications: vec![],
            last_error: None,
            last_heartbeat: None,
            pid: None,
            started_at: None,
            reachable: true,
            configured: true,
        }
    }

    #[test]
    fn one_at_a_time_within_a_cluster() {
        let d = domain(RestartPolicy::Rolling);
        let r = Rolling::default();
        let s1 = view("s1", true, "RUNNING", "p");
        let s2 = view("s2", true, "RUNNING", "p");
        let views = [s1.clone(), s2.clone()];
        assert_eq!(r.decide(&d, &s1, &views, "p"), Step::Order);
        // s2 waits while s1 restarts…
        assert_eq!(
            r.decide(&d, &s2, &views, "p"),
            Step::Wait {
                behind: "s1".into()
            }
        );
        // …also while s1 is back but not yet on the pin.
        let s1_starting = view("s1", false, "STARTING", "p");
        assert_eq!(
            r.decide(&d, &s2, &[s1_starting.clone(), s2.clone()], "p"),
            Step::Wait {
                behind: "s1".into()
            }
        );
        // s1 is back RUNNING with nothing pending: s2's turn.
        let s1_back = view("s1", false, "RUNNING", "p");
        assert_eq!(
            r.decide(&d, &s1_back, &[s1_back.clone(), s2.clone()], "p"),
            Step::None
        );
        assert_eq!(r.decide(&d, &s2, &[s1_back, s2.clone()], "p"), Step::Order);
    }

    #[test]
    fn groups_are_independent_and_other_policies_ignored() {
        let d = domain(RestartPolicy::Rolling);
        let r = Rolling::default();
        let s1 = view("s1", true, "RUNNING", "p");
        let s3 = view("s3", true, "RUNNING", "p");
        assert_eq!(
            r.decide(&d, &s1, &[s1.clone(), s3.clone()], "p"),
            Step::Order
        );
        // s3 is in no cluster: its own group.
        assert_eq!(
            r.decide(&d, &s3, &[s1.clone(), s3.clone()], "p"),
            Step::Order
        );
        let manual = domain(RestartPolicy::Manual);
        assert_eq!(
            Rolling::default().decide(&manual, &s1, std::slice::from_ref(&s1), "p"),
            Step::None
        );
    }

    #[test]
    fn a_lost_order_is_given_again_after_the_grace() {
        let d = domain(RestartPolicy::Rolling);
        let me = view("s1", true, "RUNNING", "p");
        let long_ago = Instant::now();
        let later = long_ago + RESTART_GRACE + Duration::from_secs(1);
        let o = Ordered {
            server: "s1".into(),
            at: long_ago,
        };
        assert_eq!(
            step(&d, &me, std::slice::from_ref(&me), Some(&o), "p", long_ago),
            Step::Wait {
                behind: "s1".into()
            }
        );
        assert_eq!(
            step(&d, &me, std::slice::from_ref(&me), Some(&o), "p", later),
            Step::Order
        );
    }
}
