//! The wire API between the Master and the Managed Servers (and `steward up`, and anything that
//! reads `/v1/servers`): one typed definition per document, used by both ends, instead of JSON
//! indexed by string. docs/api.md describes each.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A server's state, one spelling everywhere (JEUS's upper-case words): what a Managed Server
/// reports at its `GET /v1/status` and to the Master (`STARTING`, `RUNNING`, `STOPPING`, and
/// `SHUTDOWN` in its last report after a graceful stop), and what the Master concludes on its own
/// (`UNREACHABLE`: heartbeats stopped without a goodbye; `UNKNOWN`: never heard from since the
/// Master started). Lower-case spellings are read too, never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    #[serde(rename = "STARTING", alias = "starting")]
    Starting,
    #[serde(rename = "RUNNING", alias = "running")]
    Running,
    #[serde(rename = "STOPPING", alias = "stopping")]
    Stopping,
    /// Stopped on purpose (its last report said so); not an outage.
    #[serde(rename = "SHUTDOWN", alias = "shutdown")]
    Shutdown,
    #[serde(rename = "UNREACHABLE", alias = "unreachable")]
    Unreachable,
    #[serde(rename = "UNKNOWN", alias = "unknown")]
    Unknown,
}

impl ServerState {
    pub const ALL: [ServerState; 6] = [
        ServerState::Starting,
        ServerState::Running,
        ServerState::Stopping,
        ServerState::Shutdown,
        ServerState::Unreachable,
        ServerState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "STARTING",
            ServerState::Running => "RUNNING",
            ServerState::Stopping => "STOPPING",
            ServerState::Shutdown => "SHUTDOWN",
            ServerState::Unreachable => "UNREACHABLE",
            ServerState::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a server state.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a server state (STARTING, RUNNING, STOPPING, SHUTDOWN, UNREACHABLE, UNKNOWN)"
)]
pub struct NotAState(String);

impl std::str::FromStr for ServerState {
    type Err = NotAState;
    fn from_str(s: &str) -> Result<Self, NotAState> {
        ServerState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| NotAState(s.to_owned()))
    }
}

/// A Managed Server's status: what it serves at its own `GET /v1/status`, and the body of its
/// `register` and `heartbeat` reports to the Master (which reads it leniently: only `state` and
/// `mode` are required, the rest default to empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Informational; the name in the URL is the one that counts.
    #[serde(default)]
    pub name: String,
    /// The server's own state (`STARTING`, `RUNNING`, `STOPPING`).
    pub state: ServerState,
    /// `DEPENDENT` or `INDEPENDENT`.
    pub mode: Mode,
    /// The commit the server runs.
    #[serde(default)]
    pub applied_commit: Option<String>,
    /// Setting paths that need a restart (the server computes them from diff(running, pinned)).
    #[serde(default)]
    pub pending_restart: Vec<String>,
    #[serde(default)]
    pub failed_applications: Vec<String>,
    /// Applications serving an image older than `applied_commit`'s (their deployment from it
    /// failed), with the commit their image comes from.
    #[serde(default)]
    pub older_images: BTreeMap<String, String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The server process's id; with `started_at`, tells one run of the server from the next.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When this process started (RFC 3339, UTC).
    #[serde(default)]
    pub started_at: Option<String>,
}

/// The Master's answer to a `register` or a `heartbeat`: what the server needs to stay in step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportReply {
    /// Rolling restarts: this server's turn to restart.
    #[serde(default)]
    pub restart: bool,
    /// An operator's order for this server (a step of a rollout), delivered once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    pub pinned: Pinned,
    /// `[master] heartbeat-interval` of the pinned configuration.
    pub heartbeat_interval_ms: u64,
    /// `[master] heartbeat-timeout` of the pinned configuration.
    pub heartbeat_timeout_ms: u64,
}

/// An order the Master passes to a server in the answer to its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The rollout it belongs to.
    pub rollout: String,
    pub action: OrderAction,
}

/// What a server is ordered to do to itself. (Starting is done by a launcher, not ordered.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderAction {
    Restart,
    Stop,
}

/// What a rollout does to each of its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    Restart,
    Stop,
    Start,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Restart => "restart",
            RolloutAction::Stop => "stop",
            RolloutAction::Start => "start",
        }
    }
}

/// `POST /v1/rollouts`: which servers, named or selected (exactly one of `servers`, `cluster`,
/// `pending`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub action: Option<RolloutAction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Every server with pending restarts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// How many of the rollout's servers may be down at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<usize>,
}

/// A rollout: `GET /v1/rollouts/{id}`, and the `rollout` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub action: RolloutAction,
    pub state: RolloutState,
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub max_unavailable: usize,
    pub steps: Vec<RolloutStep>,
    /// Why it failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    Succeeded,
    Failed,
}

/// One server of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStep {
    pub server: String,
    pub state: StepState,
    /// What happens now, or happened (`ordered to restart`, `back RUNNING on 1a2b3c4`, …).
    pub detail: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Waiting,
    InProgress,
    Done,
    Failed,
    /// Not attempted: an earlier step failed.
    Skipped,
}

/// A hold (mirror mode): new upstream heads are validated and recorded as held, not pinned,
/// until an operator resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// RFC 3339, UTC.
    pub since: String,
    /// The user who held the domain (or rolled it back).
    pub by: String,
    /// Why: `rollback` or `hold`.
    pub reason: String,
    /// The newest upstream head recorded as held, if any.
    pub held_head: Option<String>,
}

/// The pin: the commit the domain runs and when it was pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// Full commit id.
    pub commit: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The answer of `POST /v1/domain/pin` (a rollback, or a pin that was already there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinReply {
    pub pinned: Pinned,
    /// False when the commit was pinned already.
    pub changed: bool,
    /// Rollbacks only: the branch head after the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_head: Option<String>,
}

/// `GET /v1/domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    pub pinned: Pinned,
    /// The branch whose valid heads are pinned.
    pub branch: String,
    pub mode: RepositoryMode,
    /// Mirror mode only.
    pub upstream: Option<UpstreamStatus>,
    /// Mirror mode: set while the domain is held (after a rollback, or by an operator).
    #[serde(default)]
    pub hold: Option<Hold>,
    pub master: Vitals,
}

/// Whether the Master hosts the domain repository or mirrors an upstream one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepositoryMode {
    Hosted,
    Mirror,
}

/// `upstream` of `GET /v1/domain`: how mirroring goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// With any password shown as `***`.
    pub url: String,
    pub branch: String,
    pub poll_interval_ms: u64,
    /// The upstream head at the last successful fetch.
    pub head: Option<String>,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    /// True while fetches fail; the pin stays what it was.
    pub stale: bool,
    /// When fetches started failing.
    pub stale_since: Option<String>,
    pub last_error: Option<String>,
}

/// `master` of `GET /v1/domain`: how the Master itself is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vitals {
    /// How many times a ref change woke the decision procedure.
    pub watch_wakeups: u64,
    pub connections: Connections,
}

/// Open client connections against the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    pub open: usize,
    pub cap: usize,
}

/// How a server was booted: with the Master's configuration (DEPENDENT), or without it
/// (INDEPENDENT: from its cache or a Git URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "DEPENDENT", alias = "dependent")]
    Dependent,
    #[serde(rename = "INDEPENDENT", alias = "independent")]
    Independent,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dependent => "DEPENDENT",
            Mode::Independent => "INDEPENDENT",
        }
    }
    /// The spelling of `steward server --mode`.
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Dependent => "dependent",
            Mode::Independent => "independent",
        }
    }
}

/// One element of `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub name: String,
    /// The reported state; `UNREACHABLE` when heartbeats stopped; `UNKNOWN` when never heard from.
    pub state: ServerState,
    pub mode: Option<Mode>,
    pub applied_commit: Option<String>,
    pub pending_restart: Vec<String>,
    pub failed_applications: Vec<String>,
    pub last_error: Option<String>,
    /// RFC 3339 time of the last heartbeat.
    pub last_heartbeat: Option<String>,
    pub reachable: bool,
    /// Whether the pinned `domain.toml` defines this server (a removed server that still reports
    /// shows `false`).
    pub configured: bool,
    /// As last reported (see [`Status`]).
    pub pid: Option<u32>,
    pub started_at: Option<String>,
}

/// What a node agent sees of one server of its machine (`GET /v1/nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeServerState {
    /// Its process runs.
    #[serde(rename = "RUNNING")]
    Running,
    /// Stopped on purpose, or never started here.
    #[serde(rename = "STOPPED")]
    Stopped,
    /// It died and the agent is starting it again (after the backoff).
    #[serde(rename = "DIED")]
    Died,
    /// The agent's launcher is starting (or stopping) it now.
    #[serde(rename = "LAUNCHING")]
    Launching,
    /// It died more than `restart-max` times within `restart-window`: left stopped.
    #[serde(rename = "GAVE_UP")]
    GaveUp,
}

/// One server in a node's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeServer {
    pub name: String,
    pub state: NodeServerState,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// `POST /v1/nodes/{name}/poll`: a node agent announces itself and what runs on its machine, and
/// waits (up to `wait_ms`) for orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The agent's process id and start time (RFC 3339): one run of the agent from the next.
    pub pid: u32,
    pub started_at: String,
    /// The commit whose configuration the agent supervises with (its cache's), if any.
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub servers: Vec<NodeServer>,
    /// How long the Master may hold the request waiting for an order.
    #[serde(default)]
    pub wait_ms: u64,
}

/// An order for a node agent: start, stop or restart one server of its machine through the
/// launcher there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOrder {
    pub id: String,
    /// The rollout it belongs to.
    pub rollout: String,
    pub server: String,
    pub action: RolloutAction,
}

/// The Master's answer to a node's poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReply {
    #[serde(default)]
    pub orders: Vec<NodeOrder>,
    pub pinned: Pinned,
    /// `[master] heartbeat-interval`: how long the agent waits between polls when one fails.
    pub heartbeat_interval_ms: u64,
}

/// `POST /v1/nodes/{name}/done`: how an order ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDone {
    pub id: String,
    pub rollout: String,
    pub server: String,
    pub action: RolloutAction,
    pub ok: bool,
    /// Why it failed (the launcher's last lines).
    #[serde(default)]
    pub error: Option<String>,
}

/// One element of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// `[nodes.NAME] address`; for an undeclared node, its name.
    pub address: String,
    /// Whether its agent polled within `[master] heartbeat-timeout`.
    pub connected: bool,
    /// RFC 3339 time of its last poll.
    pub last_seen: Option<String>,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub commit: Option<String>,
    /// The servers of the pinned configuration on this node, as its agent last reported them.
    pub servers: Vec<NodeServer>,
    /// Whether the pinned `domain.toml` has this node.
    pub configured: bool,
    /// Whether it is a `[nodes.NAME]` (not only the `node` of a server).
    pub declared: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Reads `doc` as `T` and writes it back: the same document, field for field.
    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(doc: Value) {
        let typed: T = serde_json::from_value(doc.clone()).expect("reads");
        assert_eq!(serde_json::to_value(&typed).expect("writes"), doc);
    }

    #[test]
    fn the_domain_document_is_spelled_as_documented() {
        // docs/api.md, `GET /v1/domain`, in both modes.
        round_trip::<Domain>(json!({
            "name": "domain1",
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
            "branch": "refs/heads/main",
            "mode": "hosted",
            "upstream": null,
            "hold": null,
            "master": { "watch_wakeups": 3, "connections": { "open": 2, "cap": 4096 } }
        }));
        round_trip::<Domain>(json!({
            "name": "domain1",
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
            "branch": "refs/heads/main",
            "mode": "mirror",
            "upstream": {
                "url": "https://git.example.com/ops/domain1.git",
                "branch": "main",
                "poll_interval_ms": 30000,
                "head": "fe89f6efbe345a4b4e9d2fffcf3aa58297a6dc27",
                "last_attempt": "2026-11-24T05:41:57Z",
                "last_success": "2026-11-24T05:41:57Z",
                "stale": false,
                "stale_since": null,
                "last_error": null
            },
            "hold": { "since": "2026-11-24T05:45:00Z", "by": "admin", "reason": "rollback", "held_head": null },
            "master": { "watch_wakeups": 0, "connections": { "open": 0, "cap": 64 } }
        }));
    }

    #[test]
    fn reports_and_replies_are_spelled_as_documented() {
        round_trip::<Status>(json!({
            "name": "server1", "state": "RUNNING", "mode": "DEPENDENT",
            "applied_commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5",
            "pending_restart": ["servers.server1.web.listeners.http.port"],
            "failed_applications": ["shop"],
            "older_images": {"shop": "5027355f3c8d8e2f9f1f1b9c2c1d3e4f5a6b7c8d"},
            "last_error": "application shop: …",
            "pid": 4242,
            "started_at": "2026-11-24T05:19:50Z"
        }));
        round_trip::<ReportReply>(json!({
            "restart": true,
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
            "heartbeat_interval_ms": 5000,
            "heartbeat_timeout_ms": 15000
        }));
        round_trip::<ReportReply>(json!({
            "restart": false,
            "order": { "rollout": "r3", "action": "stop" },
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
            "heartbeat_interval_ms": 5000,
            "heartbeat_timeout_ms": 15000
        }));
        round_trip::<Rollout>(json!({
            "id": "r3", "action": "restart", "state": "running", "requested_by": "admin",
            "started_at": "2026-11-24T05:19:52Z", "finished_at": null, "max_unavailable": 1,
            "steps": [
                { "server": "server1", "state": "done", "detail": "back RUNNING on a413986", "error": null },
                { "server": "server2", "state": "in_progress", "detail": "ordered to restart", "error": null },
                { "server": "server3", "state": "waiting", "detail": null, "error": null }
            ],
            "error": null
        }));
        round_trip::<RolloutRequest>(
            json!({ "action": "restart", "cluster": "cluster1", "max_unavailable": 2 }),
        );
        round_trip::<PinReply>(json!({
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
            "changed": true,
            "branch_head": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5"
        }));
        round_trip::<PinReply>(json!({
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
            "changed": false
        }));
        // The Master reads a minimal report; lower-case words too.
        let minimal: Status =
            serde_json::from_value(json!({"state": "running", "mode": "independent"}))
                .expect("minimal");
        assert_eq!(
            (minimal.state, minimal.mode, minimal.applied_commit),
            (ServerState::Running, Mode::Independent, None)
        );
    }
}
