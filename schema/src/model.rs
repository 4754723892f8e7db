//! The typed domain model: `domain.toml`, `security/accounts.toml`, `security/policies.toml`.
//!
//! Values reach these types only after the loader has checked every key and type against the
//! classification table, so deserialization here does not fail on user input in practice; the
//! table and these structs are kept in step by tests in `settings_coverage.rs`.
//!
//! Long because every section of the three files is a struct here, with its defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::values::{ByteSize, Dur};

/// One revision of a domain, all three files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Domain {
    pub config: DomainFile,
    pub accounts: AccountsFile,
    pub policies: PoliciesFile,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DomainFile {
    pub domain: DomainSection,
    #[serde(default)]
    pub master: Master,
    /// The machines of the domain (`[nodes.NAME]`). Empty: every server's `node` names its
    /// machine by itself, as before nodes were declared (docs/node.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, Node>,
    #[serde(default)]
    pub servers: BTreeMap<String, Server>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub applications: BTreeMap<String, Application>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DomainSection {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Master {
    pub node: String,
    pub listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    pub heartbeat_interval: Dur,
    pub heartbeat_timeout: Dur,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

impl Default for Master {
    fn default() -> Self {
        Master {
            node: "localhost".into(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9736),
            tls: None,
            heartbeat_interval: Dur::secs(2),
            heartbeat_timeout: Dur::secs(10),
            upstream: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tls {
    pub certificate: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Upstream {
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default = "default_poll")]
    pub poll_interval: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
}

fn default_branch() -> String {
    "main".into()
}
fn default_poll() -> Dur {
    Dur::secs(60)
}

/// A machine of the domain, where one node agent (`steward node`) starts and supervises the
/// servers whose `node` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Node {
    /// The machine's host name or address, as the Master and operators reach it.
    pub address: String,
    #[serde(default)]
    pub description: String,
    /// How many times the agent restarts a server that died within `restart-window`.
    #[serde(default = "default_restart_max")]
    pub restart_max: u32,
    #[serde(default = "default_restart_window")]
    pub restart_window: Dur,
    /// The wait before the first restart of a dead server; doubled for each further one.
    #[serde(default = "default_restart_backoff")]
    pub restart_backoff: Dur,
}

impl Node {
    /// The node an agent runs as when the domain declares no `[nodes]`: its name is the host
    /// name servers give in `node`, and supervision takes the defaults.
    pub fn implicit(name: &str) -> Node {
        Node {
            address: name.to_owned(),
            description: String::new(),
            restart_max: default_restart_max(),
            restart_window: default_restart_window(),
            restart_backoff: default_restart_backoff(),
        }
    }
}

fn default_restart_max() -> u32 {
    3
}
fn default_restart_window() -> Dur {
    Dur::secs(300)
}
fn default_restart_backoff() -> Dur {
    Dur::secs(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Manual,
    Auto,
    Rolling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Server {
    #[serde(default = "localhost")]
    pub node: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Dur,
    #[serde(default)]
    pub process: Process,
    #[serde(default)]
    pub web: Web,
    #[serde(default)]
    pub component: Component,
    #[serde(default)]
    pub messaging: Messaging,
    #[serde(default)]
    pub logging: Logging,
}

fn localhost() -> String {
    "localhost".into()
}
fn default_stop_timeout() -> Dur {
    Dur::secs(30)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Process {
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub runtime_threads: u16,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            env: BTreeMap::new(),
            args: Vec::new(),
            runtime_threads: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Web {
    pub listeners: BTreeMap<String, Listener>,
    pub access_log: AccessLog,
}

/// The listener the web engine gets when none is configured.
pub const DEFAULT_LISTENER: &str = "http";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Listener {
    #[serde(default = "unspecified")]
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub thread_pool: ThreadPool,
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
}

impl Listener {
    pub fn on_port(port: u16) -> Listener {
        Listener {
            address: unspecified(),
            port,
            thread_pool: ThreadPool::default(),
            queue_timeout: default_queue_timeout(),
            request_timeout: default_request_timeout(),
        }
    }
}

fn unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_queue_timeout() -> Dur {
    Dur::secs(5)
}
fn default_request_timeout() -> Dur {
    Dur::secs(60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ThreadPool {
    pub min: u32,
    pub max: u32,
}

impl Default for ThreadPool {
    fn default() -> Self {
        ThreadPool { min: 2, max: 64 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLogFormat {
    #[default]
    Common,
    Combined,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AccessLog {
    pub enabled: bool,
    pub format: AccessLogFormat,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            enabled: true,
            format: AccessLogFormat::Common,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Component {
    pub thread_pool: ThreadPool,
    pub timer_service: TimerService,
    /// How long a message-driven component may take to answer a delivered message.
    pub message_timeout: Dur,
}

impl Default for Component {
    fn default() -> Self {
        Component {
            thread_pool: ThreadPool { min: 2, max: 32 },
            timer_service: TimerService::default(),
            message_timeout: Dur::secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TimerService {
    pub enabled: bool,
    pub max_retries: u32,
    pub retry_delay: Dur,
}

impl Default for TimerService {
    fn default() -> Self {
        TimerService {
            enabled: true,
            max_retries: 3,
            retry_delay: Dur::secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Messaging {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<MessagingListener>,
    pub queues: BTreeMap<String, Queue>,
    pub topics: BTreeMap<String, Topic>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MessagingListener {
    #[serde(default = "unspecified")]
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Queue {
    pub max_depth: u64,
    pub persistent: bool,
    pub max_redeliveries: u32,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            max_depth: 10_000,
            persistent: true,
            max_redeliveries: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Topic {
    pub max_subscribers: u64,
    pub persistent: bool,
    /// Messages each durable subscription keeps for its subscriber (`max-depth` of a queue).
    pub durable_max_depth: u64,
}

impl Default for Topic {
    fn default() -> Self {
        Topic {
            max_subscribers: 1_000,
            persistent: true,
            durable_max_depth: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Logging {
    pub level: LogLevel,
    pub format: LogFormat,
    pub rotation: Rotation,
}

/// How server log lines look: JEUS lines for people, JSON lines for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Jeus,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Rotation {
    pub max_size: ByteSize,
    pub daily: bool,
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: ByteSize(10 << 20),
            daily: true,
            keep: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Cluster {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppKind {
    Static,
    Process,
    /// A supervised process like `process`, run by the component engine: routed only when it
    /// has a `context-path`, and the one kind that may have timers (docs/components.md).
    Component,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Application {
    pub kind: AppKind,
    pub source: String,
    /// Required for `static` and `process` (the loader checks it); a `component` without one
    /// is not routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_path: Option<String>,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub libraries: Vec<String>,
    #[serde(default = "default_index")]
    pub index: String,
    #[serde(default = "default_health")]
    pub health_path: String,
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Dur,
    #[serde(default = "default_max_unpacked_size")]
    pub max_unpacked_size: ByteSize,
    /// Declared timers of a `component` application, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timers: BTreeMap<String, Timer>,
    /// Destinations a `component` application consumes (message-driven), `queue:NAME` or
    /// `topic:NAME` (the loader checks them; [`Consume::parse`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumes: Vec<String>,
}

/// One entry of `consumes`: a queue or a topic of the server's messaging engine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Consume {
    Queue(String),
    Topic(String),
}

impl Consume {
    /// `queue:NAME` or `topic:NAME`; the name non-empty, without `/` or white space.
    pub fn parse(s: &str) -> Result<Consume, crate::values::ValueError> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("`{s}` names no kind of destination; write `queue:{s}` or `topic:{s}`")
        })?;
        if name.is_empty()
            || name.contains('/')
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "`{s}`: `{name}` is not a destination name (non-empty, no `/`, no spaces)"
            )
            .into());
        }
        match kind {
            "queue" => Ok(Consume::Queue(name.to_owned())),
            "topic" => Ok(Consume::Topic(name.to_owned())),
            _ => Err(format!(
                "`{s}` starts with `{kind}:`; a component consumes `queue:NAME` or `topic:NAME`"
            )
            .into()),
        }
    }

    /// The destination as STOMP clients name it: `/queue/NAME`, `/topic/NAME`.
    pub fn destination(&self) -> String {
        match self {
            Consume::Queue(n) => format!("/queue/{n}"),
            Consume::Topic(n) => format!("/topic/{n}"),
        }
    }
}

/// `[applications.X.timers.NAME]`: exactly one of `schedule`, `interval`, `at` (the loader
/// checks it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Timer {
    /// A 5-field cron expression read in `time-zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// An RFC 3339 instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default = "yes")]
    pub persistent: bool,
    #[serde(default)]
    pub misfire: Misfire,
}

fn utc() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}

/// What a timer does about firings that came due while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Misfire {
    /// Fire once for all of them.
    #[default]
    FireOnce,
    /// Fire none; wait for the next.
    Skip,
    /// Fire each (up to a bound).
    FireAll,
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::FireOnce => "fire-once",
            Misfire::Skip => "skip",
            Misfire::FireAll => "fire-all",
        }
    }
}

impl Timer {
    /// The schedule of a declared timer created at `anchor` (intervals count from it). Errors
    /// only for values the loader would have refused.
    pub fn schedule(
        &self,
        anchor: jiff::Timestamp,
    ) -> Result<crate::timer::Schedule, crate::values::ValueError> {
        use crate::timer::Schedule;
        match (&self.schedule, self.interval, &self.at) {
            (Some(expr), None, None) => Ok(Schedule::Cron {
                cron: crate::timer::Cron::parse(expr)?,
                tz: crate::timer::time_zone(&self.time_zone)?,
            }),
            (None, Some(every), None) => Ok(Schedule::Every {
                anchor,
                every: every.0,
            }),
            (None, None, Some(at)) => Ok(Schedule::At(crate::timer::instant(at)?)),
            _ => Err("write exactly one of `schedule`, `interval`, `at`".into()),
        }
    }
}

fn default_index() -> String {
    "index.html".into()
}
fn default_health() -> String {
    "/".into()
}
fn default_start_timeout() -> Dur {
    Dur::secs(30)
}
/// An archive source unpacking to more is refused (a guard against compression bombs).
pub fn default_max_unpacked_size() -> ByteSize {
    ByteSize(2 << 30)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AccountsFile {
    pub users: BTreeMap<String, User>,
    pub groups: BTreeMap<String, Group>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct User {
    pub password: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Group {
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PoliciesFile {
    pub roles: BTreeMap<String, Role>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Role {
    pub permissions: Vec<String>,
    pub groups: Vec<String>,
    pub users: Vec<String>,
    pub description: String,
}

impl Server {
    /// Fills in what "engines always exist with defaults" means for the web engine: without any
    /// listener, one named `http` on the base port + 1, bound to the base address (a server
    /// kept on loopback keeps its web engine there too).
    pub(crate) fn apply_engine_defaults(&mut self) {
        if self.web.listeners.is_empty() {
            let port = self.listen.port().saturating_add(1);
            let listener = Listener {
                address: self.listen.ip(),
                ..Listener::on_port(port)
            };
            self.web
                .listeners
                .insert(DEFAULT_LISTENER.to_owned(), listener);
        }
    }
}

impl Domain {
    /// The cluster a server restarts in turn with (the first naming it), for the Master's rolling
    /// restarts and the plan that announces them.
    pub fn cluster_of(&self, server: &str) -> Option<&str> {
        self.config
            .clusters
            .iter()
            .find(|(_, c)| c.servers.iter().any(|s| s == server))
            .map(|(name, _)| name.as_str())
    }

    /// Servers an application is deployed to, through clusters, in name order.
    pub fn app_servers<'a>(&'a self, app: &'a Application) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for t in &app.targets {
            if let Some(c) = self.config.clusters.get(t) {
                out.extend(c.servers.iter().map(String::as_str));
            } else if self.config.servers.contains_key(t) {
                out.push(t);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Applications deployed to each server (in name order), for every server.
    pub fn deployments(&self) -> crate::fasthash::FastMap<&str, Vec<&str>> {
        let mut out: crate::fasthash::FastMap<&str, Vec<&str>> = self
            .config
            .servers
            .keys()
            .map(|s| (s.as_str(), Vec::new()))
            .collect();
        for (name, app) in &self.config.applications {
            for s in self.app_servers(app) {
                if let Some(v) = out.get_mut(s) {
                    v.push(name);
                }
            }
        }
        out
    }

    /// Whether `user` holds `permission` through a role (directly or by a group). A granted
    /// permission ending in `*` covers every permission it is a prefix of
    /// (`messaging:send:/queue/orders.*`, `messaging:*`); `*` alone covers everything.
    pub fn permits(&self, user: &str, permission: &str) -> bool {
        let Some(u) = self.accounts.users.get(user) else {
            return false;
        };
        self.policies.roles.values().any(|role| {
            let holds = role.users.iter().any(|x| x == user)
                || role.groups.iter().any(|g| u.groups.contains(g));
            holds && role.permissions.iter().any(|p| grants(p, permission))
        })
    }
}

/// Whether granted permission `granted` covers `wanted`.
fn grants(granted: &str, wanted: &str) -> bool {
    match granted.strip_suffix('*') {
        Some(prefix) => wanted.starts_with(prefix),
        None => granted == wanted,
    }
}

#[cfg(test)]
mod permission_tests {
    use super::grants;

    #[test]
    fn a_trailing_star_grants_by_prefix() {
        assert!(grants("*", "git:push"));
        assert!(grants("messaging:send:/queue/a", "messaging:send:/queue/a"));
        assert!(!grants(
            "messaging:send:/queue/a",
            "messaging:send:/queue/ab"
        ));
        assert!(grants(
            "messaging:send:/queue/a*",
            "messaging:send:/queue/ab"
        ));
        assert!(grants("messaging:*", "messaging:receive:/topic/t"));
        assert!(!grants("messaging:send:*", "messaging:receive:/queue/a"));
        assert!(!grants("git:read", "git:*"));
    }
}
