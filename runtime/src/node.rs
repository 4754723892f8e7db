//! `steward node`: the node agent of one machine (JEUS's Node Manager, docs/node.md).
//!
//! It dials out to the Master (no inbound port on the machine) and long-polls
//! `POST /v1/nodes/{name}/poll` with what runs here; the answer carries the pin and the Master's
//! orders, which it carries out through the launcher (`start-server`, `stop-server`), as an
//! operator on the machine would. Meanwhile it supervises the servers whose `node` is its own:
//! [`reconciler::supervise`] decides, from their pid files, whom to re-adopt, leave stopped or
//! start again. It supervises from the machine's cache (`DOMAIN_HOME/.cache`): cut off from the
//! Master it goes on with the last valid configuration, and nothing it runs depends on the link.
//!
//! Two threads: the poller (the link to the Master) and the supervisor (this module's loop),
//! which owns the supervision state; launches run on threads of their own so that a slow start
//! never holds up the others.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconciler::cache::{Cache, Remote};
use reconciler::git::Oid;
use reconciler::supervise::{Action, Policy, Seen, Supervisor, Why};
use reconciler::wire::{
    NodeDone, NodeOrder, NodeReply, NodeReport, NodeServer, NodeServerState, RolloutAction,
};
use schema::Loaded;

use crate::client::Client;
use crate::launcher::Outcome;
use crate::layout::ServerHome;
use crate::logfile::{Echo, LogFile, Logger, Rotation};
use crate::process::{self, Running};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] crate::logfile::LogError),
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("another node agent for node `{node}` already runs on {home}")]
    AlreadyRunning { node: String, home: PathBuf },
}

/// What `steward node` was told.
pub struct Options {
    pub domain_home: PathBuf,
    /// `HOST:PORT`, `http://…` or `https://…`.
    pub master_url: String,
    pub node: String,
    /// The agent's own account (a role with `nodes:register`, `domain:read`, `git:read`).
    pub credentials: Option<(String, String)>,
    /// The `steward` executable (the launchers it runs).
    pub exe: PathBuf,
    /// Also write the log to standard error.
    pub console: bool,
}

/// How often the supervisor looks at the servers.
const TICK: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the Master may hold a poll; it holds at most its heartbeat interval.
const WAIT: Duration = Duration::from_secs(2);

/// How long a pin that could not be taken (fetched, validated) waits before another try.
const RETRY_PIN: Duration = Duration::from_secs(10);

/// What the poller hands the supervisor.
enum Msg {
    Pinned(String),
    Order(NodeOrder),
    /// A launch of the agent's ended: the server, whether it worked, the order it carried out.
    Finished {
        server: String,
        ok: bool,
        order: Option<NodeOrder>,
    },
}

/// What the poller reports, kept up to date by the supervisor.
#[derive(Default)]
struct Shared {
    commit: Option<String>,
    servers: Vec<NodeServer>,
}

/// `steward node`: runs until SIGINT or SIGTERM. The servers keep running when it stops.
pub fn run(opts: Options) -> Result<Outcome, NodeError> {
    let home = std::path::absolute(&opts.domain_home).map_err(|error| NodeError::Io {
        path: opts.domain_home.clone(),
        what: "cannot make the path absolute",
        error,
    })?;
    let file = LogFile::open(&home.join("logs"), "node", Rotation::default())?;
    let echo = if opts.console {
        Echo::Stderr
    } else {
        Echo::None
    };
    let log = Logger::new(Some(file), echo, &opts.node);
    log.install();
    let _lock = lock(&home, &opts.node)?;
    crate::signals::install();
    log.info(
        "Node-0001",
        &format!(
            "The node agent of node {} starts [pid : {}]: domain home {}, Master {}.",
            opts.node,
            std::process::id(),
            home.display(),
            opts.master_url
        ),
    );
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (tx, rx) = mpsc::channel();
    let link = Link {
        master: opts.master_url.clone(),
        node: opts.node.clone(),
        credentials: opts.credentials.clone(),
        log: log.clone(),
    };
    {
        let (link, shared, tx) = (link.clone(), shared.clone(), tx.clone());
        std::thread::spawn(move || link.poll_loop(&shared, &tx));
    }
    let mut agent = Agent {
        home,
        opts,
        log,
        link,
        current: None,
        sup: Supervisor::default(),
        tx,
        refused_pin: None,
    };
    agent.load_cached();
    while !crate::signals::stop_requested() {
        match rx.recv_timeout(TICK) {
            Ok(msg) => agent.handle(msg),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        agent.supervise();
        agent.publish(&shared);
    }
    agent.log.info(
        "Node-0002",
        "The node agent stops on a signal; the servers it supervised keep running.",
    );
    Ok(Outcome::Ok)
}

/// One agent per node and domain home: an exclusive `flock` held for the life of the process.
fn lock(home: &std::path::Path, node: &str) -> Result<std::fs::File, NodeError> {
    let dir = home.join("config");
    let path = dir.join(format!("node-{node}.lock"));
    let io = |what, error| NodeError::Io {
        path: path.clone(),
        what,
        error,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", e))?;
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("cannot open", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(NodeError::AlreadyRunning {
            node: node.to_owned(),
            home: home.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io("cannot lock", e)),
    }
}

struct Agent {
    home: PathBuf,
    opts: Options,
    log: Logger,
    link: Link,
    /// The configuration it supervises with: the last valid commit of the machine's cache.
    current: Option<(Oid, Loaded)>,
    sup: Supervisor,
    tx: mpsc::Sender<Msg>,
    /// A pin that could not be taken, and when: tried again after [`RETRY_PIN`], not at every
    /// poll.
    refused_pin: Option<(String, Instant)>,
}

impl Agent {
    /// At start: the last valid configuration of this machine's cache, if any.
    fn load_cached(&mut self) {
        let cached = Cache::open(&self.home).and_then(|(cache, _)| {
            let Some(lv) = cache.last_valid()? else {
                return Ok(None);
            };
            let Ok(commit) = Oid::from_hex(&lv.commit) else {
                return Ok(None);
            };
            Ok(Some((commit, cache.tree(commit)?)))
        });
        match cached {
            Ok(Some((commit, tree))) => match schema::validate(&tree).loaded {
                Some(loaded) => self.adopt_config(commit, loaded, "the local cache"),
                None => self.log.warn(
                    "Node-0031",
                    &format!(
                        "The cached commit {} is not valid here; waiting for the Master.",
                        commit.short()
                    ),
                ),
            },
            Ok(None) => self.log.info(
                "Node-0030",
                "The local cache holds no configuration yet; waiting for the Master.",
            ),
            Err(e) => self.log.warn(
                "Node-0031",
                &format!("Cannot read the local cache ({e}); waiting for the Master."),
            ),
        }
    }

    fn adopt_config(&mut self, commit: Oid, loaded: Loaded, from: &str) {
        let cfg = &loaded.domain.config;
        if !cfg.nodes.is_empty() && !cfg.nodes.contains_key(&self.opts.node) {
            self.log.severe(
                "Node-0033",
                &format!(
                    "Commit {} declares no node `{}` in [nodes] (declared: {}): this agent supervises nothing until a commit declares it.",
                    commit.short(),
                    self.opts.node,
                    cfg.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let mine: Vec<&str> = self.mine(&loaded);
        self.log.info(
            "Node-0032",
            &format!(
                "Supervising with commit {} from {from}: servers of node {}: {}.",
                commit.short(),
                self.opts.node,
                if mine.is_empty() {
                    "none".to_owned()
                } else {
                    mine.join(", ")
                }
            ),
        );
        let gone: Vec<String> = self
            .sup
            .servers()
            .filter(|s| !mine.contains(s))
            .map(str::to_owned)
            .collect();
        for s in gone {
            self.sup.forget(&s);
        }
        self.current = Some((commit, loaded));
    }

    /// The servers of `loaded` on this node.
    fn mine<'a>(&self, loaded: &'a Loaded) -> Vec<&'a str> {
        loaded
            .domain
            .config
            .servers
            .iter()
            .filter(|(_, s)| s.node == self.opts.node)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    fn policy(&self) -> Policy {
        let node = self
            .current
            .as_ref()
            .and_then(|(_, l)| l.domain.config.nodes.get(&self.opts.node).cloned());
        Policy::of(&node.unwrap_or_else(|| schema::model::Node::implicit(&self.opts.node)))
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Pinned(commit) => {
                let new = self
                    .current
                    .as_ref()
                    .is_none_or(|(c, _)| c.to_hex() != commit);
                let wait = self
                    .refused_pin
                    .as_ref()
                    .is_some_and(|(p, at)| *p == commit && at.elapsed() < RETRY_PIN);
                if new && !wait {
                    self.follow(&commit);
                }
            }
            Msg::Order(order) => self.order(order),
            Msg::Finished { server, ok, order } => {
                self.sup.finished(&server, ok, order.is_some());
            }
        }
    }

    /// Brings the pinned commit into the machine's cache, validates it, and supervises with it.
    fn follow(&mut self, pinned: &str) {
        let fetched = (|| -> Result<(Oid, Loaded), String> {
            let commit = Oid::from_hex(pinned).map_err(|e| e.to_string())?;
            let (cache, _) = Cache::open(&self.home).map_err(|e| e.to_string())?;
            if !cache.has_complete(commit) {
                let remote = Remote {
                    url: format!("{}/git/domain.git", self.link.base()),
                    user: self.opts.credentials.as_ref().map(|c| c.0.clone()),
                    password: self.opts.credentials.as_ref().map(|c| c.1.clone()),
                    connect_timeout: CONNECT_TIMEOUT,
                };
                cache.fetch_master(&remote).map_err(|e| e.to_string())?;
            }
            let tree = cache.tree(commit).map_err(|e| e.to_string())?;
            let validation = schema::validate(&tree);
            let Some(loaded) = validation.loaded else {
                return Err(format!(
                    "it is invalid here:\n{}",
                    validation.report.render_short()
                ));
            };
            cache
                .record_valid(commit, &format!("master {}", self.opts.master_url))
                .map_err(|e| e.to_string())?;
            Ok((commit, loaded))
        })();
        match fetched {
            Ok((commit, loaded)) => {
                self.refused_pin = None;
                self.adopt_config(commit, loaded, "the Master");
            }
            Err(e) => {
                self.refused_pin = Some((pinned.to_owned(), Instant::now()));
                self.log.warn(
                "Node-0034",
                &format!("Cannot take the pinned commit {pinned}: {e}; supervising with the configuration it has."),
                );
            }
        }
    }

    /// The Master's order: carried out through the launcher on a thread of its own.
    fn order(&mut self, order: NodeOrder) {
        let known = self
            .current
            .as_ref()
            .is_some_and(|(_, l)| self.mine(l).contains(&order.server.as_str()));
        if !known {
            let why = format!(
                "server {} is not one of node {}'s in the configuration it has ({})",
                order.server,
                self.opts.node,
                self.current
                    .as_ref()
                    .map_or("none yet".to_owned(), |(c, _)| c.short())
            );
            self.log
                .warn("Node-0041", &format!("Refused an order: {why}."));
            self.link.done(&order, Err(why));
            return;
        }
        self.log.info(
            "Node-0040",
            &format!(
                "The Master orders to {} server {} (rollout {}).",
                order.action.as_str(),
                order.server,
                order.rollout
            ),
        );
        self.sup
            .ordered(&order.server, order.action != RolloutAction::Stop);
        self.launch(order.server.clone(), Some(order));
    }

    /// Runs the launcher for `server` on a thread: the order's action, or a start.
    fn launch(&self, server: String, order: Option<NodeOrder>) {
        let (exe, home, master) = (self.opts.exe.clone(), self.home.clone(), self.link.base());
        let (tx, log, link) = (self.tx.clone(), self.log.clone(), self.link.clone());
        std::thread::spawn(move || {
            let action = order.as_ref().map_or(RolloutAction::Start, |o| o.action);
            let run = |sub: &str| {
                let mut args: Vec<&std::ffi::OsStr> = vec![
                    sub.as_ref(),
                    "--domain-home".as_ref(),
                    home.as_os_str(),
                    "--server".as_ref(),
                    server.as_ref(),
                ];
                if sub == "start-server" {
                    args.extend([
                        std::ffi::OsStr::new("--master-url"),
                        std::ffi::OsStr::new(&master),
                    ]);
                }
                crate::launcher::run(&exe, &args)
            };
            let result = match action {
                RolloutAction::Start => run("start-server"),
                RolloutAction::Stop => run("stop-server"),
                RolloutAction::Restart => run("stop-server").and_then(|()| run("start-server")),
            };
            match &result {
                Ok(()) => log.info(
                    "Node-0042",
                    &format!("{} of server {server} done.", capitalized(action)),
                ),
                Err(e) => log.severe(
                    "Node-0043",
                    &format!("{} of server {server} failed: {e}", capitalized(action)),
                ),
            }
            let ok = result.is_ok();
            if let Some(o) = &order {
                link.done(o, result.map_err(|e| e.to_string()));
            }
            let _ = tx.send(Msg::Finished { server, ok, order });
        });
    }

    /// One look at every server of this node.
    fn supervise(&mut self) {
        let Some((_, loaded)) = &self.current else {
            return;
        };
        let mine: Vec<String> = self.mine(loaded).into_iter().map(str::to_owned).collect();
        let policy = self.policy();
        let now = Instant::now();
        for server in mine {
            let Ok(home) = ServerHome::new(&self.home, &server) else {
                continue;
            };
            let seen = match process::running(&home) {
                Running::Yes { pid, .. } => Seen::Alive { pid },
                Running::No => Seen::Absent,
                Running::Stale { pid } => Seen::Dead { pid },
            };
            for action in self.sup.observe(&server, seen, now, policy) {
                self.act(action, policy);
            }
        }
    }

    fn act(&mut self, action: Action, policy: Policy) {
        match action {
            Action::Adopt { server, pid } => self.log.info(
                "Node-0010",
                &format!("Supervising server {server} [pid : {pid}]."),
            ),
            Action::Stopped { server, pid } => self.log.info(
                "Node-0011",
                &format!(
                    "Server {server} [pid : {pid}] stopped gracefully (its pid file is gone); left stopped."
                ),
            ),
            Action::Died {
                server,
                pid,
                retry_in,
            } => self.log.warn(
                "Node-0012",
                &format!(
                    "Server {server}{} died; starting it again in {} ms (at most {} restarts within {} s).",
                    pid.map(|p| format!(" [pid : {p}]")).unwrap_or_default(),
                    retry_in.as_millis(),
                    policy.max,
                    policy.window.as_secs()
                ),
            ),
            Action::Start {
                server,
                why: Why::Died { attempt, .. },
            } => {
                self.log.info(
                    "Node-0013",
                    &format!(
                        "Starting server {server} through its launcher (restart {attempt} of at most {}).",
                        policy.max
                    ),
                );
                self.launch(server, None);
            }
            Action::GiveUp {
                server,
                restarts,
                window,
            } => self.log.severe(
                "Node-0014",
                &format!(
                    "Server {server} died again after {restarts} restart(s) within {} s; not starting it again. Start it with `steward admin start {server}` once the cause is fixed.",
                    window.as_secs()
                ),
            ),
        }
    }

    /// What the next poll reports.
    fn publish(&self, shared: &Mutex<Shared>) {
        let servers = match &self.current {
            Some((_, l)) => self
                .mine(l)
                .into_iter()
                .map(|name| self.report_of(name))
                .collect(),
            None => Vec::new(),
        };
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        s.commit = self.current.as_ref().map(|(c, _)| c.to_hex());
        s.servers = servers;
    }

    fn report_of(&self, name: &str) -> NodeServer {
        let home = ServerHome::new(&self.home, name);
        let running = home.as_ref().map(process::running);
        let (state, pid) = match running {
            Ok(Running::Yes { pid, .. }) => (NodeServerState::Running, Some(pid as u32)),
            _ if self.sup.gave_up(name) => (NodeServerState::GaveUp, None),
            _ if self.sup.launching(name) => (NodeServerState::Launching, None),
            Ok(Running::Stale { .. }) => (NodeServerState::Died, None),
            _ => (NodeServerState::Stopped, None),
        };
        NodeServer {
            name: name.to_owned(),
            state,
            pid,
        }
    }
}

fn capitalized(action: RolloutAction) -> &'static str {
    match action {
        RolloutAction::Start => "Start",
        RolloutAction::Stop => "Stop",
        RolloutAction::Restart => "Restart",
    }
}

/// The link to the Master.
#[derive(Clone)]
struct Link {
    master: String,
    node: String,
    credentials: Option<(String, String)>,
    log: Logger,
}

impl Link {
    /// `http(s)://HOST:PORT`.
    fn base(&self) -> String {
        let (tls, host_port) = crate::client::split(&self.master);
        format!("{}://{host_port}", if tls { "https" } else { "http" })
    }

    fn client(&self, timeout: Duration) -> Result<Client, crate::client::ClientError> {
        Client::new(
            &self.master,
            self.credentials
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.as_str())),
            CONNECT_TIMEOUT,
            timeout,
        )
    }

    /// Polls the Master for the life of the agent, handing pins and orders to the supervisor.
    /// Says once when the link is lost, and once when it is back.
    fn poll_loop(&self, shared: &Mutex<Shared>, tx: &mpsc::Sender<Msg>) {
        let started_at = reconciler::pin::now_rfc3339();
        // `None` until the first attempt: the first success and the first failure are both news.
        let mut up: Option<bool> = None;
        let mut pause = Duration::from_secs(1);
        // While connected, a poll lasts at most WAIT plus a cached password check: a link cut
        // meanwhile is noticed within `connected`'s timeout. Until the Master has answered once,
        // it may be checking this agent's password for the first time (slow on purpose, and
        // slower on a loaded machine; the Master keeps the result only if the request is still
        // there to receive it): `first` waits long enough for that.
        let (connected, first) = loop {
            match (
                self.client(WAIT + Duration::from_secs(10)),
                self.client(WAIT + Duration::from_secs(60)),
            ) {
                (Ok(c), Ok(f)) => break (c, f),
                (Err(e), _) | (_, Err(e)) => {
                    self.log
                        .severe("Node-0022", &format!("Cannot reach the Master: {e}"));
                    std::thread::sleep(pause);
                }
            }
        };
        while !crate::signals::stop_requested() {
            let report = {
                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                NodeReport {
                    pid: std::process::id(),
                    started_at: started_at.clone(),
                    commit: s.commit.clone(),
                    servers: s.servers.clone(),
                    wait_ms: WAIT.as_millis() as u64,
                }
            };
            let body = serde_json::to_vec(&report).unwrap_or_default();
            let client = if up == Some(true) { &connected } else { &first };
            let outcome = client
                .post_json(&format!("/v1/nodes/{}/poll", self.node), body)
                .map_err(|e| e.to_string())
                .and_then(|resp| match resp.status {
                    200 => serde_json::from_slice::<NodeReply>(&resp.body)
                        .map_err(|e| format!("the Master's answer is not a node reply: {e}")),
                    401 | 403 => Err(format!(
                        "the Master refused this agent's credentials ({}): give the nodes' account (a role with nodes:register, domain:read, git:read) in DOMAIN_HOME/config/node-credentials or STEWARD_USER/STEWARD_PASSWORD",
                        resp.status
                    )),
                    404 => Err(format!(
                        "the Master knows no node `{}`: declare it in [nodes] of domain.toml (or give a server `node = \"{}\"`)",
                        self.node, self.node
                    )),
                    status => Err(format!(
                        "the Master answered {status}: {}",
                        String::from_utf8_lossy(&resp.body)
                    )),
                });
            match outcome {
                Ok(reply) => {
                    if up != Some(true) {
                        self.log.info(
                            "Node-0020",
                            &format!(
                                "Connected to the Master {} as node {}; the pin is {}.",
                                self.base(),
                                self.node,
                                reply.pinned.commit.get(..7).unwrap_or(&reply.pinned.commit)
                            ),
                        );
                        up = Some(true);
                    }
                    pause = Duration::from_millis(reply.heartbeat_interval_ms.max(100));
                    if tx.send(Msg::Pinned(reply.pinned.commit)).is_err() {
                        return;
                    }
                    for o in reply.orders {
                        if tx.send(Msg::Order(o)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if up != Some(false) {
                        self.log.warn(
                            "Node-0021",
                            &format!(
                                "{} the Master ({e}); the servers keep running and this agent supervises them with the configuration it has. Retrying every {} ms.",
                                if up.is_some() { "Lost" } else { "Cannot reach" },
                                pause.as_millis()
                            ),
                        );
                        up = Some(false);
                    }
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// Tells the Master how an order ended (best effort: a Master that does not hear it times
    /// the step out).
    fn done(&self, order: &NodeOrder, result: Result<(), String>) {
        let doc = NodeDone {
            id: order.id.clone(),
            rollout: order.rollout.clone(),
            server: order.server.clone(),
            action: order.action,
            ok: result.is_ok(),
            error: result.err(),
        };
        let sent = self
            .client(Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let body = serde_json::to_vec(&doc).unwrap_or_default();
                c.post_json(&format!("/v1/nodes/{}/done", self.node), body)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = sent {
            self.log.warn(
                "Node-0023",
                &format!(
                    "Could not tell the Master how order {} ended: {e}",
                    order.id
                ),
            );
        }
    }
}
