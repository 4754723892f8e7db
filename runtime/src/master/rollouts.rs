//! The Master's rollouts (docs/api.md, `/v1/rollouts`): it keeps them, drives each with the pure
//! [`reconciler::rollout`] step whenever a server reports (and every half second, for timeouts),
//! and carries out what the step says: an order waits for its server's next report (and an
//! `order` event asks the server to report at once); a start runs the server's launcher on this
//! machine. Where the server's machine has a connected node agent, every command goes to that
//! agent instead ([`reconciler::rollout::route`]); a start on a machine without one fails the
//! step, saying so.
//!
//! Rollouts live in memory: a Master that restarts forgets the ones in flight (the servers
//! already ordered still do what they were told; nothing is ordered again).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconciler::rollout::{Command, Rollout, Route, route};
use reconciler::wire::{self, Order, OrderAction, RolloutAction};

use super::log;
use super::state::{Event, State};

/// Rollouts kept for `GET /v1/rollouts`, the newest last.
const KEEP: usize = 50;
/// How often running rollouts are looked at without any report (for their timeouts).
const TICK: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Inner {
    next: u64,
    rollouts: VecDeque<Rollout>,
    /// Orders not yet delivered, by server.
    orders: BTreeMap<String, Order>,
}

pub(super) struct Rollouts {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
    /// Ids begin with the Master's start time, so an id never names two rollouts.
    epoch: u64,
}

impl Default for Rollouts {
    fn default() -> Self {
        Rollouts {
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl Rollouts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a rollout of `servers`; returns its first document (after its first step).
    pub(super) fn start(
        &self,
        state: &Arc<State>,
        action: RolloutAction,
        servers: Vec<String>,
        max_unavailable: usize,
        user: String,
    ) -> wire::Rollout {
        let id = {
            let mut inner = self.lock();
            inner.next += 1;
            format!("{}-{}", self.epoch, inner.next)
        };
        log::info(
            "Master-0070",
            &format!(
                "Rollout {id} by {user}: {} {} (at most {max_unavailable} at a time).",
                action.as_str(),
                if servers.is_empty() {
                    "no server".to_owned()
                } else {
                    servers.join(", ")
                }
            ),
        );
        let rollout = Rollout::new(
            id.clone(),
            action,
            servers,
            max_unavailable,
            user,
            reconciler::pin::now_rfc3339(),
            state.current().domain.config.master.heartbeat_timeout.0,
        );
        {
            let mut inner = self.lock();
            inner.rollouts.push_back(rollout);
            while inner.rollouts.len() > KEEP {
                // Forget the oldest finished one; running ones stay.
                match inner
                    .rollouts
                    .iter()
                    .position(|r| !r.doc.state.is_running())
                {
                    Some(i) => {
                        inner.rollouts.remove(i);
                    }
                    None => break,
                }
            }
        }
        advance(state);
        self.get(&id).unwrap_or_else(|| unreachable_doc(&id))
    }

    pub(super) fn get(&self, id: &str) -> Option<wire::Rollout> {
        self.lock()
            .rollouts
            .iter()
            .find(|r| r.doc.id == id)
            .map(|r| r.doc.clone())
    }

    /// Newest first.
    pub(super) fn list(&self) -> Vec<wire::Rollout> {
        self.lock()
            .rollouts
            .iter()
            .rev()
            .map(|r| r.doc.clone())
            .collect()
    }

    /// The order waiting for `server`, handed over once (in the answer to its report).
    pub(super) fn take_order(&self, server: &str) -> Option<Order> {
        self.lock().orders.remove(server)
    }

    /// Something changed (a server reported): look at the running rollouts now.
    pub(super) fn poke(&self) {
        self.wake.notify_one();
    }
}

/// Never shown: a rollout just added is found again unless 50 newer ones ran meanwhile.
fn unreachable_doc(id: &str) -> wire::Rollout {
    wire::Rollout {
        id: id.to_owned(),
        action: RolloutAction::Restart,
        state: wire::RolloutState::Failed,
        requested_by: String::new(),
        started_at: String::new(),
        finished_at: None,
        max_unavailable: 1,
        steps: Vec::new(),
        error: Some("forgotten".into()),
    }
}

/// Drives the running rollouts for the life of the Master.
pub(super) async fn drive(state: Arc<State>) {
    loop {
        let _ = tokio::time::timeout(TICK, state.rollouts.wake.notified()).await;
        advance(&state);
    }
}

/// One look at every running rollout: advances it, publishes what changed, carries out its
/// commands.
fn advance(state: &Arc<State>) {
    // Called at every report that changed something: nothing to look at without a running
    // rollout (the views of a thousand servers are not free).
    if !state
        .rollouts
        .lock()
        .rollouts
        .iter()
        .any(|r| r.doc.state.is_running())
    {
        return;
    }
    let c = state.current();
    let pinned = c.commit.to_hex();
    let views = state.servers.list(
        c.domain.config.servers.keys(),
        c.domain.config.master.heartbeat_timeout.0,
    );
    let (now, at) = (Instant::now(), reconciler::pin::now_rfc3339());
    let mut changed = Vec::new();
    let mut launches = Vec::new();
    let mut refused = Vec::new();
    let timeout = c.domain.config.master.heartbeat_timeout.0;
    let agents = state.nodes.agents(timeout);
    {
        let mut inner = state.rollouts.lock();
        let mut orders = Vec::new();
        for r in inner
            .rollouts
            .iter_mut()
            .filter(|r| r.doc.state.is_running())
        {
            let before = r.doc.clone();
            for cmd in r.advance(&views, &agents, &pinned, now, &at) {
                let server = match &cmd {
                    Command::Order { server, .. } | Command::Launch { server } => server.clone(),
                };
                let node = c
                    .domain
                    .config
                    .servers
                    .get(&server)
                    .map_or(String::new(), |s| s.node.clone());
                let connected = state.nodes.connected(&node, timeout);
                let here = node == c.domain.config.master.node;
                match (route(&cmd, connected.is_ok(), here), cmd) {
                    (Route::Node, cmd) => {
                        let action = match cmd {
                            Command::Order {
                                action: OrderAction::Restart,
                                ..
                            } => RolloutAction::Restart,
                            Command::Order {
                                action: OrderAction::Stop,
                                ..
                            } => RolloutAction::Stop,
                            Command::Launch { .. } => RolloutAction::Start,
                        };
                        state.nodes.order(&node, &r.doc.id, &server, action);
                    }
                    (Route::Server, Command::Order { server, action }) => orders.push((
                        server,
                        Order {
                            rollout: r.doc.id.clone(),
                            action,
                        },
                    )),
                    (Route::Here, _) => launches.push((r.doc.id.clone(), server)),
                    (_, _) => refused.push((
                        r.doc.id.clone(),
                        server,
                        format!(
                            "its node `{node}` is not connected: no node agent polled the Master {} (start `steward node --node {node}` on that machine)",
                            match connected {
                                Err(Some(at)) => format!("since {at}"),
                                _ => "since the Master started".to_owned(),
                            }
                        ),
                    )),
                }
            }
            if r.doc != before {
                changed.push(r.doc.clone());
            }
        }
        for (server, order) in orders {
            state.events.send(Event::new(
                "order",
                Some(server.clone()),
                &serde_json::json!({ "server": server, "rollout": order.rollout, "action": order.action }),
            ));
            inner.orders.insert(server, order);
        }
    }
    for doc in changed {
        announce(state, &doc);
    }
    for (id, server, why) in refused {
        failed(state, &id, &server, &why);
    }
    for (id, server) in launches {
        let state = state.clone();
        tokio::spawn(async move {
            let st = state.clone();
            let who = server.clone();
            let outcome = tokio::task::spawn_blocking(move || launch(&st, &who))
                .await
                .unwrap_or_else(|e| Err(LaunchError::Exe(std::io::Error::other(e))));
            if let Err(e) = outcome {
                failed(&state, &id, &server, &format!("its launcher failed: {e}"));
            }
            state.rollouts.poke();
        });
    }
}

/// The step of `server` in rollout `id` failed (`why`): the rollout stops and says so.
pub(super) fn failed(state: &State, id: &str, server: &str, why: &str) {
    let doc = {
        let mut inner = state.rollouts.lock();
        let r = inner.rollouts.iter_mut().find(|r| r.doc.id == id);
        r.map(|r| {
            r.step_failed(server, why, &reconciler::pin::now_rfc3339());
            r.doc.clone()
        })
    };
    if let Some(doc) = doc {
        announce(state, &doc);
    }
}

/// The log line and the `rollout` event of a rollout that changed.
fn announce(state: &State, doc: &wire::Rollout) {
    match doc.state {
        wire::RolloutState::Succeeded => log::info(
            "Master-0071",
            &format!(
                "Rollout {} succeeded: {} {}.",
                doc.id,
                doc.action.as_str(),
                doc.steps.len()
            ),
        ),
        wire::RolloutState::Failed => log::warning(
            "Master-0072",
            &format!(
                "Rollout {} failed: {}",
                doc.id,
                doc.error.as_deref().unwrap_or("")
            ),
        ),
        wire::RolloutState::Running => {}
    }
    state
        .events
        .send(Event::new("rollout", Some(doc.id.clone()), doc));
}

#[derive(Debug, thiserror::Error)]
pub(super) enum LaunchError {
    #[error(
        "it belongs to node `{node}`, not the Master's (`{master}`): starting servers on other machines needs a node agent there"
    )]
    OtherNode { node: String, master: String },
    #[error("no server `{0}` in the pinned domain.toml")]
    Unknown(String),
    #[error("cannot find the steward executable: {0}")]
    Exe(std::io::Error),
    #[error(transparent)]
    Run(#[from] crate::launcher::RunError),
}

/// Runs `steward start-server` for `server` on this machine and waits for it: it exits 0 once
/// the server is RUNNING. Its own session, so the server outlives the Master; its credentials are
/// the domain home's servers' file, never the Master's environment.
fn launch(state: &State, server: &str) -> Result<(), LaunchError> {
    let c = state.current();
    let master_node = &c.domain.config.master.node;
    let node = &c
        .domain
        .config
        .servers
        .get(server)
        .ok_or_else(|| LaunchError::Unknown(server.to_owned()))?
        .node;
    if node != master_node {
        return Err(LaunchError::OtherNode {
            node: node.clone(),
            master: master_node.clone(),
        });
    }
    log::info(
        "Master-0073",
        &format!("Starting {server} through its launcher."),
    );
    let exe = std::env::current_exe().map_err(LaunchError::Exe)?;
    let url = state.url.get().map_or("127.0.0.1:9736", String::as_str);
    crate::launcher::run(
        &exe,
        &[
            "start-server".as_ref(),
            "--domain-home".as_ref(),
            state.home.as_os_str(),
            "--server".as_ref(),
            server.as_ref(),
            "--master-url".as_ref(),
            url.as_ref(),
        ],
    )?;
    Ok(())
}

/// The URL servers started here use to reach this Master: its own address, with an unspecified
/// address (`0.0.0.0`) replaced by loopback (`localhost` with TLS).
pub(super) fn self_url(local: std::net::SocketAddr, tls: bool) -> String {
    // A certificate names hosts, not loopback addresses.
    let host = if local.ip().is_unspecified() && tls {
        "localhost".to_owned()
    } else if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    format!(
        "{}://{host}:{}",
        if tls { "https" } else { "http" },
        local.port()
    )
}
