//! Rollouts: an operator's restart, stop or start of servers through the Master
//! (`steward admin restart|stop|start`, the WebAdmin buttons). A rollout takes its servers one
//! step at a time, at most `max_unavailable` at once, and a server's step is over only when the
//! server is back RUNNING on the pinned commit with every application deployed (a restart or a
//! start), or has said goodbye (a stop). A step that fails or takes longer than
//! [`STEP_TIMEOUT`] fails the rollout: the remaining servers are left alone and the rollout says
//! why.
//!
//! Restarts and stops travel as orders in the answer to the server's report (announced on the
//! event stream, so the server asks at once); the server does them itself through its launcher.
//! A start is a launch of the server's launcher: [`Command::Launch`] does not say where
//! ([`route`] does: the node agent of the server's machine, or the Master's own). What the
//! connected agents see ([`Agents`]) lets a server that does not report be stopped or restarted
//! through its agent.
//!
//! [`select`] and [`Rollout::advance`] are pure: the Master's runtime feeds them the servers'
//! views and carries out the [`Command`]s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use schema::model::Domain;

use crate::wire::{
    OrderAction, Rollout as Doc, RolloutAction, RolloutRequest, RolloutState, RolloutStep,
    ServerState, StepState, View,
};

/// What the connected node agents see of their servers: `true` when its process runs (or the
/// agent is starting it), `false` when it does not. A server missing here has no connected agent.
/// It is how the Master knows about a server that does not report (hung, or cut off from the
/// Master but not from its agent's link).
pub type Agents = BTreeMap<String, bool>;

/// How long one server's step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// What the Master must do now for a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Pass an order to `server` in the answer to its next report.
    Order { server: String, action: OrderAction },
    /// Start `server` through its launcher (on its machine).
    Launch { server: String },
}

/// Where a [`Command`] is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By the node agent of the server's machine, through the launcher there.
    Node,
    /// By the server itself (an order in the answer to its report): it runs and reports, and no
    /// agent of its machine is connected.
    Server,
    /// By the launcher on the Master's own machine.
    Here,
    /// Nowhere: the server's machine has no connected node agent. The step fails saying so.
    NotConnected,
}

/// Where `command` goes: the node agent of the server's machine when one is connected (it
/// supervises the server, so it must be the one that stops it), else the server itself for an
/// order, else the Master's own launcher for a server of the Master's machine.
pub fn route(command: &Command, node_connected: bool, on_master_machine: bool) -> Route {
    match command {
        _ if node_connected => Route::Node,
        Command::Order { .. } => Route::Server,
        Command::Launch { .. } if on_master_machine => Route::Here,
        Command::Launch { .. } => Route::NotConnected,
    }
}

/// A request that names no server it can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("give the servers: a list, a cluster, or pending restarts (exactly one)")]
    Selection,
    #[error("no action: give \"action\": \"restart\", \"stop\" or \"start\"")]
    NoAction,
    #[error("no server `{name}` in the pinned domain.toml{}", hint(.suggestion))]
    UnknownServer {
        name: String,
        suggestion: Option<String>,
    },
    #[error("no cluster `{name}` in the pinned domain.toml{}", hint(.suggestion))]
    UnknownCluster {
        name: String,
        suggestion: Option<String>,
    },
    #[error("max_unavailable must be at least 1")]
    MaxUnavailable,
}

fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

/// The servers a request names, in the order they will be taken: as listed (each once), a
/// cluster's in its order, or every server with pending restarts, cluster by cluster.
pub fn select(
    req: &RolloutRequest,
    domain: &Domain,
    views: &[View],
) -> Result<(RolloutAction, Vec<String>, usize), SelectError> {
    let action = req.action.ok_or(SelectError::NoAction)?;
    let max = req.max_unavailable.unwrap_or(1);
    if max == 0 {
        return Err(SelectError::MaxUnavailable);
    }
    let servers = &domain.config.servers;
    let chosen = [!req.servers.is_empty(), req.cluster.is_some(), req.pending];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(SelectError::Selection);
    }
    let mut out: Vec<String> = Vec::new();
    if let Some(c) = &req.cluster {
        let cluster = domain
            .config
            .clusters
            .get(c)
            .ok_or_else(|| SelectError::UnknownCluster {
                name: c.clone(),
                suggestion: schema::values::did_you_mean(
                    c,
                    domain.config.clusters.keys().map(String::as_str),
                )
                .map(str::to_owned),
            })?;
        out = cluster.servers.clone();
    } else if req.pending {
        let mut pending: Vec<&View> = views
            .iter()
            .filter(|v| v.configured && !v.pending_restart.is_empty())
            .collect();
        // Cluster by cluster, then the servers in no cluster.
        pending.sort_by_key(|v| {
            let cluster = domain.cluster_of(&v.name);
            (cluster.is_none(), cluster.map(str::to_owned), &v.name)
        });
        out = pending.into_iter().map(|v| v.name.clone()).collect();
    } else {
        for name in &req.servers {
            if !servers.contains_key(name) {
                return Err(SelectError::UnknownServer {
                    name: name.clone(),
                    suggestion: schema::values::did_you_mean(
                        name,
                        servers.keys().map(String::as_str),
                    )
                    .map(str::to_owned),
                });
            }
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok((action, out, max))
}

/// One run of a server process: a restart is over when another run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    pid: Option<u32>,
    started_at: Option<String>,
}

impl Run {
    fn of(v: &View) -> Run {
        Run {
            pid: v.pid,
            started_at: v.started_at.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Track {
    begun: Option<Instant>,
    /// The run the step began with (`None`: the server was not running).
    before: Option<Run>,
    /// Since when the step waits for an `UNKNOWN` server's first report.
    asked: Option<Instant>,
    /// Whether only its node agent saw it running when the step began: a stop is then over when
    /// the agent sees it gone (the server itself cannot say goodbye to a Master it cannot reach).
    via_agent: bool,
}

/// A rollout in progress: its document and what the steps began with.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub doc: Doc,
    track: Vec<Track>,
    /// How long a step waits for a server the Master has not heard from since it started
    /// (`UNKNOWN`: it may run and not have reported yet) before taking it for not running: the
    /// heartbeat timeout.
    patience: Duration,
}

/// Whether `v` serves: reporting, RUNNING on `pinned`, every application deployed.
fn healthy(v: &View, pinned: &str) -> bool {
    v.reachable
        && v.state == ServerState::Running
        && v.applied_commit.as_deref() == Some(pinned)
        && v.failed_applications.is_empty()
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// What an operator needs to know about a server that did not get where it should.
fn seen(v: Option<&View>) -> String {
    match v {
        None => "it never reported".into(),
        Some(v) => {
            let mut s = format!(
                "last seen {} on {}",
                v.state,
                v.applied_commit.as_deref().map_or("no commit", short)
            );
            if !v.failed_applications.is_empty() {
                s += &format!(
                    ", failed applications: {}",
                    v.failed_applications.join(", ")
                );
            }
            if let Some(e) = &v.last_error {
                s += &format!(", last error: {e}");
            }
            s
        }
    }
}

impl Rollout {
    pub fn new(
        id: String,
        action: RolloutAction,
        servers: Vec<String>,
        max_unavailable: usize,
        requested_by: String,
        at: String,
        patience: Duration,
    ) -> Rollout {
        let track = vec![Track::default(); servers.len()];
        let steps = servers
            .into_iter()
            .map(|server| RolloutStep {
                server,
                state: StepState::Waiting,
                detail: None,
                error: None,
            })
            .collect();
        Rollout {
            doc: Doc {
                id,
                action,
                state: RolloutState::Running,
                requested_by,
                started_at: at,
                finished_at: None,
                max_unavailable: max_unavailable.max(1),
                steps,
                error: None,
            },
            track,
            patience,
        }
    }

    /// The step of `server` could not be carried out (`why`: its launcher failed, its node is
    /// not connected, …).
    pub fn step_failed(&mut self, server: &str, why: &str, at: &str) {
        if let Some(i) = self.doc.steps.iter().position(|s| {
            s.server == server && s.state == StepState::InProgress && self.doc.state.is_running()
        }) {
            self.fail(i, why.to_owned(), at);
        }
    }

    fn fail(&mut self, i: usize, why: String, at: &str) {
        let server = self.doc.steps[i].server.clone();
        self.doc.steps[i].state = StepState::Failed;
        self.doc.steps[i].error = Some(why.clone());
        for s in &mut self.doc.steps {
            if s.state == StepState::Waiting {
                s.state = StepState::Skipped;
            }
        }
        self.doc.state = RolloutState::Failed;
        self.doc.error = Some(format!(
            "{} of {server} failed, so the rollout stopped: {why}",
            self.doc.action.as_str()
        ));
        self.doc.finished_at = Some(at.to_owned());
    }

    fn done(&mut self, i: usize, detail: String) {
        self.doc.steps[i].state = StepState::Done;
        self.doc.steps[i].detail = Some(detail);
    }

    /// Moves the rollout on, given what the servers report now and what the connected node agents
    /// see of them: finishes the steps whose servers got there, fails those that timed out, begins
    /// the next ones. Returns what to do. `at` is `now` as RFC 3339, for the document.
    pub fn advance(
        &mut self,
        views: &[View],
        agents: &Agents,
        pinned: &str,
        now: Instant,
        at: &str,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        if !self.doc.state.is_running() {
            return commands;
        }
        let view = |name: &str| views.iter().find(|v| v.name == name);
        // Steps in progress: over, failed, or still going.
        for i in 0..self.doc.steps.len() {
            if self.doc.steps[i].state != StepState::InProgress {
                continue;
            }
            let v = view(&self.doc.steps[i].server);
            let track = &self.track[i];
            let over = match self.doc.action {
                RolloutAction::Restart | RolloutAction::Start => v.is_some_and(|v| {
                    healthy(v, pinned) && track.before.as_ref().is_none_or(|b| *b != Run::of(v))
                }),
                RolloutAction::Stop if track.via_agent => {
                    agents.get(&self.doc.steps[i].server) == Some(&false)
                }
                RolloutAction::Stop => v.is_some_and(|v| {
                    matches!(v.state, ServerState::Shutdown | ServerState::Unreachable)
                }),
            };
            if over {
                let detail = match self.doc.action {
                    RolloutAction::Stop if track.via_agent => {
                        "stopped by its node agent".to_owned()
                    }
                    RolloutAction::Stop => {
                        format!("stopped ({})", v.map_or(ServerState::Unknown, |v| v.state))
                    }
                    _ => format!(
                        "RUNNING on {}{}",
                        short(pinned),
                        v.and_then(|v| v.pid)
                            .map(|p| format!(", pid {p}"))
                            .unwrap_or_default()
                    ),
                };
                self.done(i, detail);
            } else if track
                .begun
                .is_some_and(|b| now.duration_since(b) > STEP_TIMEOUT)
            {
                let goal = match self.doc.action {
                    RolloutAction::Stop => "did not stop".to_owned(),
                    _ => format!("did not come back RUNNING on {}", short(pinned)),
                };
                self.fail(
                    i,
                    format!("{goal} within {} s ({})", STEP_TIMEOUT.as_secs(), seen(v)),
                    at,
                );
                return commands;
            }
        }
        // Begin the next steps while fewer than `max_unavailable` are under way.
        let mut busy = self
            .doc
            .steps
            .iter()
            .filter(|s| s.state == StepState::InProgress)
            .count();
        for i in 0..self.doc.steps.len() {
            if busy >= self.doc.max_unavailable {
                break;
            }
            if self.doc.steps[i].state != StepState::Waiting {
                continue;
            }
            let server = self.doc.steps[i].server.clone();
            let v = view(&server);
            let agent = agents.get(&server).copied();
            // An UNKNOWN server may run and not have reported yet: give it until `patience`
            // (unless its node agent says whether it runs).
            if agent.is_none() && v.is_none_or(|v| v.state == ServerState::Unknown) {
                let asked = *self.track[i].asked.get_or_insert(now);
                if now.duration_since(asked) < self.patience {
                    self.doc.steps[i].detail =
                        Some("waiting for its first report to the Master".into());
                    busy += 1;
                    continue;
                }
            }
            let reporting = v.is_some_and(|v| {
                v.reachable && matches!(v.state, ServerState::Running | ServerState::Starting)
            });
            let via_agent = !reporting && agent == Some(true);
            let running = reporting || via_agent;
            let mut begin = |cmd: Command, detail: &str, me: &mut Rollout| {
                me.doc.steps[i].state = StepState::InProgress;
                me.doc.steps[i].detail = Some(detail.to_owned());
                me.track[i].begun = Some(now);
                me.track[i].before = v.filter(|_| running).map(Run::of);
                me.track[i].via_agent = via_agent;
                commands.push(cmd);
            };
            match self.doc.action {
                RolloutAction::Restart if running => begin(
                    Command::Order {
                        server,
                        action: OrderAction::Restart,
                    },
                    if via_agent {
                        "ordered to restart (through its node agent: the server does not report)"
                    } else {
                        "ordered to restart"
                    },
                    self,
                ),
                RolloutAction::Stop if running => begin(
                    Command::Order {
                        server,
                        action: OrderAction::Stop,
                    },
                    if via_agent {
                        "ordered to stop (through its node agent: the server does not report)"
                    } else {
                        "ordered to stop"
                    },
                    self,
                ),
                RolloutAction::Stop => {
                    let state = v.map_or(ServerState::Unknown, |v| v.state);
                    if agent == Some(false) {
                        self.done(i, "not running (its node agent sees no process)".into());
                        continue;
                    }
                    if state == ServerState::Unreachable {
                        self.fail(
                            i,
                            "it is UNREACHABLE and no node agent of its machine is connected: nothing can order it to stop".into(),
                            at,
                        );
                        return commands;
                    }
                    self.done(i, format!("not running ({state})"));
                    continue;
                }
                RolloutAction::Start if v.is_some_and(|v| healthy(v, pinned)) => {
                    self.done(i, "already RUNNING".into());
                    continue;
                }
                // A restart of a server that does not run starts it.
                RolloutAction::Start | RolloutAction::Restart => begin(
                    Command::Launch { server },
                    "starting through its launcher",
                    self,
                ),
            }
            busy += 1;
        }
        if self.doc.steps.iter().all(|s| s.state == StepState::Done) {
            self.doc.state = RolloutState::Succeeded;
            self.doc.finished_at = Some(at.to_owned());
        }
        commands
    }
}

impl RolloutState {
    pub fn is_running(self) -> bool {
        self == RolloutState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Mode;
    use schema::model::{Cluster, Server};

    const PIN: &str = "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5";

    #[test]
    fn commands_go_to_the_node_agent_when_one_is_connected() {
        let order = Command::Order {
            server: "s1".into(),
            action: OrderAction::Stop,
        };
        let launch = Command::Launch {
            server: "s1".into(),
        };
        assert_eq!(route(&order, true, false), Route::Node);
        assert_eq!(route(&launch, true, true), Route::Node);
        assert_eq!(route(&order, false, false), Route::Server);
        assert_eq!(route(&launch, false, true), Route::Here);
        assert_eq!(route(&launch, false, false), Route::NotConnected);
    }

    fn domain() -> Domain {
        let mut d = Domain::default();
        for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
            let server: Server = serde_json::from_value(
                serde_json::json!({ "listen": format!("127.0.0.1:{}", 9000 + i) }),
            )
            .expect("a server");
            d.config.servers.insert((*name).to_owned(), server);
        }
        d.config.clusters.insert(
            "c1".into(),
            Cluster {
                servers: vec!["s2".into(), "s1".into()],
                description: String::new(),
            },
        );
        d
    }

    fn view(name: &str, state: ServerState, pid: u32, commit: &str) -> View {
        View {
            name: name.into(),
            state,
            mode: Some(Mode::Dependent),
            applied_commit: Some(commit.into()),
            pending_restart: Vec::new(),
            failed_applications: Vec::new(),
            last_error: None,
            last_heartbeat: None,
            reachable: !matches!(state, ServerState::Unreachable | ServerState::Shutdown),
            configured: true,
            pid: Some(pid),
            started_at: Some(format!("t{pid}")),
        }
    }

    fn req(f: impl FnOnce(&mut RolloutRequest)) -> RolloutRequest {
        let mut r = RolloutRequest {
            action: Some(RolloutAction::Restart),
            ..RolloutRequest::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn selects_named_cluster_and_pending_servers() {
        let d = domain();
        let mut views = vec![
            view("s1", ServerState::Running, 1, PIN),
            view("s2", ServerState::Running, 2, PIN),
            view("s3", ServerState::Running, 3, PIN),
        ];
        let named = select(
            &req(|r| r.servers = vec!["s3".into(), "s1".into(), "s3".into()]),
            &d,
            &views,
        );
        assert_eq!(named.expect("named").1, ["s3", "s1"]);
        let cluster = select(&req(|r| r.cluster = Some("c1".into())), &d, &views);
        assert_eq!(cluster.expect("cluster").1, ["s2", "s1"]);
        views[2].pending_restart = vec!["servers.s3.listen".into()];
        views[0].pending_restart = vec!["servers.s1.listen".into()];
        let pending = select(&req(|r| r.pending = true), &d, &views).expect("pending");
        // Cluster members first (by cluster), then servers in no cluster.
        assert_eq!(pending.1, ["s1", "s3"]);
    }

    #[test]
    fn refuses_unknown_names_with_a_suggestion_and_ambiguous_requests() {
        let d = domain();
        let e = select(
            &req(|r| r.servers = vec!["s4x".into(), "sever1".into()]),
            &d,
            &[],
        );
        assert!(matches!(e, Err(SelectError::UnknownServer { ref name, .. }) if name == "s4x"));
        let e = select(&req(|r| r.servers = vec!["sl".into()]), &d, &[]).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "no server `sl` in the pinned domain.toml; did you mean `s1`?"
        );
        let e = select(&req(|r| r.cluster = Some("c2".into())), &d, &[]).expect_err("cluster");
        assert!(e.to_string().contains("did you mean `c1`?"), "{e}");
        let both = req(|r| {
            r.cluster = Some("c1".into());
            r.pending = true;
        });
        assert_eq!(select(&both, &d, &[]), Err(SelectError::Selection));
        assert_eq!(
            select(&req(|r| r.max_unavailable = Some(0)), &d, &[]),
            Err(SelectError::MaxUnavailable)
        );
    }

    fn none() -> Agents {
        Agents::new()
    }

    fn rollout(action: RolloutAction, servers: &[&str], max: usize) -> Rollout {
        Rollout::new(
            "r1".into(),
            action,
            servers.iter().map(|s| (*s).to_owned()).collect(),
            max,
            "admin".into(),
            "t0".into(),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn restarts_one_at_a_time_each_after_the_previous_is_back() {
        let t0 = Instant::now();
        let mut r = rollout(RolloutAction::Restart, &["s1", "s2"], 1);
        let mut views = vec![
            view("s1", ServerState::Running, 1, PIN),
            view("s2", ServerState::Running, 2, PIN),
        ];
        let c = r.advance(&views, &none(), PIN, t0, "t1");
        assert_eq!(
            c,
            [Command::Order {
                server: "s1".into(),
                action: OrderAction::Restart
            }]
        );
        // Still the old run: nothing new, s2 waits.
        assert!(r.advance(&views, &none(), PIN, t0, "t1").is_empty());
        assert_eq!(r.doc.steps[1].state, StepState::Waiting);
        // Down, then back on the pin but still applying: not yet.
        views[0] = view("s1", ServerState::Unreachable, 1, PIN);
        assert!(r.advance(&views, &none(), PIN, t0, "t1").is_empty());
        views[0] = view("s1", ServerState::Running, 11, PIN);
        views[0].failed_applications = vec!["shop".into()];
        assert!(r.advance(&views, &none(), PIN, t0, "t1").is_empty());
        // Healthy with a new run: s1 is done and s2 is ordered.
        views[0].failed_applications.clear();
        let c = r.advance(&views, &none(), PIN, t0, "t2");
        assert_eq!(r.doc.steps[0].state, StepState::Done);
        assert_eq!(
            c,
            [Command::Order {
                server: "s2".into(),
                action: OrderAction::Restart
            }]
        );
        views[1] = view("s2", ServerState::Running, 22, PIN);
        assert!(r.advance(&views, &none(), PIN, t0, "t3").is_empty());
        assert_eq!(r.doc.state, RolloutState::Succeeded);
        assert_eq!(r.doc.finished_at.as_deref(), Some("t3"));
    }

    #[test]
    fn max_unavailable_lets_several_go_at_once() {
        let t0 = Instant::now();
        let mut r = rollout(RolloutAction::Restart, &["s1", "s2", "s3"], 2);
        let views = vec![
            view("s1", ServerState::Running, 1, PIN),
            view("s2", ServerState::Running, 2, PIN),
            view("s3", ServerState::Running, 3, PIN),
        ];
        assert_eq!(r.advance(&views, &none(), PIN, t0, "t").len(), 2);
        assert_eq!(r.doc.steps[2].state, StepState::Waiting);
    }

    #[test]
    fn a_step_that_times_out_fails_the_rollout_and_skips_the_rest() {
        let t0 = Instant::now();
        let mut r = rollout(RolloutAction::Restart, &["s1", "s2"], 1);
        let mut views = vec![
            view("s1", ServerState::Running, 1, PIN),
            view("s2", ServerState::Running, 2, PIN),
        ];
        r.advance(&views, &none(), PIN, t0, "t");
        views[0] = view("s1", ServerState::Running, 9, "0ld");
        let later = t0 + STEP_TIMEOUT + Duration::from_secs(1);
        assert!(r.advance(&views, &none(), PIN, later, "t9").is_empty());
        assert_eq!(r.doc.state, RolloutState::Failed);
        assert_eq!(r.doc.steps[0].state, StepState::Failed);
        assert_eq!(r.doc.steps[1].state, StepState::Skipped);
        let e = r.doc.error.as_deref().expect("why");
        assert!(
            e.contains("s1") && e.contains("0ld") && e.contains("a413986"),
            "{e}"
        );
        // A failed rollout does nothing more.
        assert!(r.advance(&views, &none(), PIN, later, "t9").is_empty());
    }

    #[test]
    fn starts_launch_and_skip_running_servers_stops_wait_for_the_goodbye() {
        let t0 = Instant::now();
        let mut views = vec![
            view("s1", ServerState::Running, 1, PIN),
            view("s2", ServerState::Shutdown, 2, PIN),
        ];
        let mut r = rollout(RolloutAction::Start, &["s1", "s2"], 1);
        assert_eq!(
            r.advance(&views, &none(), PIN, t0, "t"),
            [Command::Launch {
                server: "s2".into()
            }]
        );
        assert_eq!(r.doc.steps[0].detail.as_deref(), Some("already RUNNING"));
        r.step_failed("s2", "its launcher failed: port 9751 is busy", "t1");
        assert_eq!(r.doc.state, RolloutState::Failed);
        assert!(
            r.doc
                .error
                .as_deref()
                .is_some_and(|e| e.contains("port 9751 is busy"))
        );

        let mut r = rollout(RolloutAction::Stop, &["s1", "s2"], 1);
        assert_eq!(
            r.advance(&views, &none(), PIN, t0, "t"),
            [Command::Order {
                server: "s1".into(),
                action: OrderAction::Stop
            }]
        );
        views[0] = view("s1", ServerState::Shutdown, 1, PIN);
        assert!(r.advance(&views, &none(), PIN, t0, "t").is_empty());
        assert_eq!(r.doc.state, RolloutState::Succeeded);
        assert_eq!(
            r.doc.steps[1].detail.as_deref(),
            Some("not running (SHUTDOWN)")
        );
    }

    #[test]
    fn an_unknown_server_gets_until_the_heartbeat_timeout_to_report() {
        let t0 = Instant::now();
        let mut r = rollout(RolloutAction::Stop, &["s1"], 1);
        let unknown = View {
            state: ServerState::Unknown,
            reachable: false,
            ..view("s1", ServerState::Running, 1, PIN)
        };
        assert!(
            r.advance(std::slice::from_ref(&unknown), &none(), PIN, t0, "t")
                .is_empty()
        );
        assert_eq!(r.doc.steps[0].state, StepState::Waiting);
        // It reports: it runs, so it is ordered to stop.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            r.advance(
                &[view("s1", ServerState::Running, 1, PIN)],
                &none(),
                PIN,
                later,
                "t"
            ),
            [Command::Order {
                server: "s1".into(),
                action: OrderAction::Stop
            }]
        );
        // One that stays silent is taken for not running.
        let mut r = rollout(RolloutAction::Restart, &["s1"], 1);
        assert!(
            r.advance(std::slice::from_ref(&unknown), &none(), PIN, t0, "t")
                .is_empty()
        );
        let after = t0 + Duration::from_secs(11);
        assert_eq!(
            r.advance(&[unknown], &none(), PIN, after, "t"),
            [Command::Launch {
                server: "s1".into()
            }]
        );
    }

    #[test]
    fn restarting_a_stopped_server_starts_it() {
        let mut r = rollout(RolloutAction::Restart, &["s2"], 1);
        let views = vec![view("s2", ServerState::Shutdown, 2, PIN)];
        assert_eq!(
            r.advance(&views, &none(), PIN, Instant::now(), "t"),
            [Command::Launch {
                server: "s2".into()
            }]
        );
    }

    #[test]
    fn a_server_that_does_not_report_is_stopped_through_its_node_agent() {
        let t0 = Instant::now();
        let hung = view("s1", ServerState::Unreachable, 1, PIN);
        // No agent: nothing can reach it, and the rollout says so.
        let mut r = rollout(RolloutAction::Stop, &["s1"], 1);
        assert!(
            r.advance(std::slice::from_ref(&hung), &none(), PIN, t0, "t")
                .is_empty()
        );
        assert_eq!(r.doc.state, RolloutState::Failed);
        let e = r.doc.error.as_deref().expect("why");
        assert!(e.contains("no node agent"), "{e}");

        // Its agent sees it running: ordered (the Master routes it to the agent), and over only
        // when the agent sees it gone, whatever the Master's view says meanwhile.
        let mut agents = Agents::from([("s1".to_owned(), true)]);
        let mut r = rollout(RolloutAction::Stop, &["s1"], 1);
        assert_eq!(
            r.advance(std::slice::from_ref(&hung), &agents, PIN, t0, "t"),
            [Command::Order {
                server: "s1".into(),
                action: OrderAction::Stop
            }]
        );
        assert!(
            r.doc.steps[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("through its node agent")),
            "{:?}",
            r.doc.steps[0].detail
        );
        assert!(
            r.advance(std::slice::from_ref(&hung), &agents, PIN, t0, "t")
                .is_empty()
        );
        assert_eq!(r.doc.state, RolloutState::Running);
        agents.insert("s1".into(), false);
        r.advance(std::slice::from_ref(&hung), &agents, PIN, t0, "t2");
        assert_eq!(r.doc.state, RolloutState::Succeeded);
        assert_eq!(
            r.doc.steps[0].detail.as_deref(),
            Some("stopped by its node agent")
        );

        // An agent that sees no process: nothing to stop, no waiting for a first report.
        let unknown = View {
            state: ServerState::Unknown,
            reachable: false,
            ..view("s1", ServerState::Running, 1, PIN)
        };
        let mut r = rollout(RolloutAction::Stop, &["s1"], 1);
        r.advance(&[unknown], &agents, PIN, t0, "t");
        assert_eq!(r.doc.state, RolloutState::Succeeded);

        // A restart of a hung server goes to its agent too, and is over once it reports again.
        agents.insert("s1".into(), true);
        let mut r = rollout(RolloutAction::Restart, &["s1"], 1);
        assert_eq!(
            r.advance(std::slice::from_ref(&hung), &agents, PIN, t0, "t"),
            [Command::Order {
                server: "s1".into(),
                action: OrderAction::Restart
            }]
        );
        r.advance(
            &[view("s1", ServerState::Running, 2, PIN)],
            &agents,
            PIN,
            t0,
            "t",
        );
        assert_eq!(r.doc.state, RolloutState::Succeeded);
    }
}
