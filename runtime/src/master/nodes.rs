//! What the Master knows about the node agents (`steward node`, docs/node.md): the last report of
//! each, when it last polled, and the orders waiting for it.
//!
//! Agents dial out and long-poll `POST /v1/nodes/{name}/poll`; an order queued for a node wakes
//! its waiting poll at once. A node is connected while it polled within `[master]
//! heartbeat-timeout` (a poll lasts at most the heartbeat interval, so a live agent is seen at
//! least that often; a poll hanging on a cut link does not count). Kept in memory, as the server
//! registry is: after a Master restart, agents reappear at their next poll.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconciler::wire::{NodeOrder, NodeReport, NodeServer, NodeServerState, NodeView};
use schema::model::Domain;

struct Entry {
    report: NodeReport,
    seen: Instant,
    seen_at: String,
    /// Whether the loss of contact was already announced.
    lost: bool,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    orders: BTreeMap<String, Vec<NodeOrder>>,
    wake: BTreeMap<String, Arc<tokio::sync::Notify>>,
    next: u64,
}

#[derive(Default)]
pub(super) struct Nodes {
    inner: Mutex<Inner>,
}

/// The nodes of `domain`: those declared in `[nodes]`, else the machines its servers name.
pub(super) fn configured(domain: &Domain) -> BTreeMap<String, String> {
    let cfg = &domain.config;
    if cfg.nodes.is_empty() {
        cfg.servers
            .values()
            .map(|s| (s.node.clone(), s.node.clone()))
            .collect()
    } else {
        cfg.nodes
            .iter()
            .map(|(n, node)| (n.clone(), node.address.clone()))
            .collect()
    }
}

/// The `node` event with `name`'s element of the list (it connected, or was lost).
pub(super) fn announce(state: &super::state::State, domain: &Domain, name: &str) {
    let timeout = domain.config.master.heartbeat_timeout.0;
    let v = state.nodes.one(domain, name, timeout);
    state
        .events
        .send(super::state::Event::new("node", None, &v));
}

impl Nodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a poll of `name`; returns whether it is news (first poll, a new run of the agent,
    /// or back after a loss) and the wake-up to wait on for orders.
    pub(super) fn polled(
        &self,
        name: &str,
        report: NodeReport,
    ) -> (bool, Arc<tokio::sync::Notify>) {
        let mut inner = self.lock();
        let news = match inner.entries.get(name) {
            None => true,
            Some(old) => {
                old.lost
                    || old.report.pid != report.pid
                    || old.report.started_at != report.started_at
            }
        };
        inner.entries.insert(
            name.to_owned(),
            Entry {
                report,
                seen: Instant::now(),
                seen_at: reconciler::pin::now_rfc3339(),
                lost: false,
            },
        );
        let wake = inner.wake.entry(name.to_owned()).or_default().clone();
        (news, wake)
    }

    /// The orders waiting for `name`, handed over once.
    pub(super) fn take_orders(&self, name: &str) -> Vec<NodeOrder> {
        self.lock().orders.remove(name).unwrap_or_default()
    }

    /// Queues an order for `node` and wakes its waiting poll.
    pub(super) fn order(
        &self,
        node: &str,
        rollout: &str,
        server: &str,
        action: reconciler::wire::RolloutAction,
    ) {
        let mut inner = self.lock();
        inner.next += 1;
        let order = NodeOrder {
            id: format!("{rollout}.{}", inner.next),
            rollout: rollout.to_owned(),
            server: server.to_owned(),
            action,
        };
        inner.orders.entry(node.to_owned()).or_default().push(order);
        inner.wake.entry(node.to_owned()).or_default().notify_one();
    }

    /// Whether `node`'s agent polled within `timeout`; else when it last did (`None`: never
    /// since the Master started).
    pub(super) fn connected(&self, node: &str, timeout: Duration) -> Result<(), Option<String>> {
        match self.lock().entries.get(node) {
            Some(e) if e.seen.elapsed() <= timeout => Ok(()),
            Some(e) => Err(Some(e.seen_at.clone())),
            None => Err(None),
        }
    }

    /// What the connected agents see of their servers ([`reconciler::rollout::Agents`]).
    pub(super) fn agents(&self, timeout: Duration) -> reconciler::rollout::Agents {
        let inner = self.lock();
        let mut out = reconciler::rollout::Agents::new();
        for e in inner.entries.values() {
            if e.seen.elapsed() > timeout {
                continue;
            }
            for s in &e.report.servers {
                let alive = matches!(
                    s.state,
                    NodeServerState::Running | NodeServerState::Launching
                );
                out.insert(s.name.clone(), alive);
            }
        }
        out
    }

    /// Agents that just stopped polling for longer than `timeout`, each returned once per outage.
    pub(super) fn newly_lost(&self, timeout: Duration) -> Vec<String> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (n, e) in inner.entries.iter_mut() {
            if !e.lost && e.seen.elapsed() > timeout {
                e.lost = true;
                out.push(n.clone());
            }
        }
        out
    }

    /// Every configured node (in name order), then nodes that poll but are not configured.
    pub(super) fn list(&self, domain: &Domain, timeout: Duration) -> Vec<NodeView> {
        let inner = self.lock();
        let configured = configured(domain);
        // One pass over the servers, not one per node: a domain has hundreds of each.
        let mut by_node: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for (n, s) in &domain.config.servers {
            by_node.entry(s.node.as_str()).or_default().push(n);
        }
        let servers = |name: &str| by_node.get(name).cloned().unwrap_or_default();
        let mut out: Vec<NodeView> = configured
            .iter()
            .map(|(n, a)| {
                view(
                    inner.entries.get(n),
                    domain,
                    n,
                    a,
                    true,
                    servers(n),
                    timeout,
                )
            })
            .collect();
        for (n, e) in &inner.entries {
            if !configured.contains_key(n) {
                out.push(view(Some(e), domain, n, n, false, Vec::new(), timeout));
            }
        }
        out
    }

    /// `name`'s element of [`Nodes::list`], computed alone.
    pub(super) fn one(&self, domain: &Domain, name: &str, timeout: Duration) -> NodeView {
        let inner = self.lock();
        let configured = configured(domain);
        let servers = domain
            .config
            .servers
            .iter()
            .filter(|(_, s)| s.node == name)
            .map(|(n, _)| n)
            .collect();
        let address = configured.get(name).map_or(name, String::as_str);
        let e = inner.entries.get(name);
        view(
            e,
            domain,
            name,
            address,
            configured.contains_key(name),
            servers,
            timeout,
        )
    }
}

/// A node's element of `GET /v1/nodes`: `servers`, those the configuration puts on it, as its
/// agent last reported them.
fn view(
    e: Option<&Entry>,
    domain: &Domain,
    name: &str,
    address: &str,
    configured: bool,
    servers: Vec<&String>,
    timeout: Duration,
) -> NodeView {
    let servers = servers
        .into_iter()
        .map(|n| {
            e.and_then(|e| e.report.servers.iter().find(|s| s.name == *n).cloned())
                .unwrap_or(NodeServer {
                    name: n.clone(),
                    state: NodeServerState::Stopped,
                    pid: None,
                })
        })
        .collect();
    NodeView {
        name: name.to_owned(),
        address: address.to_owned(),
        connected: e.is_some_and(|e| e.seen.elapsed() <= timeout),
        last_seen: e.map(|e| e.seen_at.clone()),
        pid: e.map(|e| e.report.pid),
        started_at: e.map(|e| e.report.started_at.clone()),
        commit: e.and_then(|e| e.report.commit.clone()),
        servers,
        configured,
        declared: domain.config.nodes.contains_key(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reconciler::wire::RolloutAction;

    fn report(pid: u32) -> NodeReport {
        NodeReport {
            pid,
            started_at: "t".into(),
            commit: None,
            servers: vec![NodeServer {
                name: "s1".into(),
                state: NodeServerState::Running,
                pid: Some(9),
            }],
            wait_ms: 0,
        }
    }

    #[test]
    fn polls_orders_and_loss() {
        let n = Nodes::default();
        assert_eq!(n.connected("a", Duration::from_secs(5)), Err(None));
        assert!(n.polled("a", report(1)).0, "first poll is news");
        assert!(!n.polled("a", report(1)).0, "a plain poll");
        assert!(n.polled("a", report(2)).0, "a new run of the agent");
        assert!(n.connected("a", Duration::from_secs(5)).is_ok());
        n.order("a", "r1", "s1", RolloutAction::Stop);
        n.order("a", "r1", "s2", RolloutAction::Start);
        let orders = n.take_orders("a");
        assert_eq!(orders.len(), 2);
        assert_ne!(orders[0].id, orders[1].id);
        assert!(n.take_orders("a").is_empty(), "handed over once");
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(
            n.connected("a", Duration::from_millis(10)),
            Err(Some(_))
        ));
        assert_eq!(
            n.newly_lost(Duration::from_millis(10)),
            vec!["a".to_owned()]
        );
        assert!(
            n.newly_lost(Duration::from_millis(10)).is_empty(),
            "announced once"
        );
        assert!(n.polled("a", report(2)).0, "back after a loss is news");
    }
}
