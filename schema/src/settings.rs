//! The classification table: every setting of the domain format, its type, its effect and a
//! one-line description. It is the one place that says what a key means; the loader checks keys
//! and types against it, the planner takes effects from it, and `docs/settings.md` is generated
//! from it (`steward schema --markdown`).
//!
//! Long because the table is data, one entry per setting, kept in one place so that a new setting
//! is added once.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

/// What applying a changed setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Applied in place by the running process; no request fails.
    Live,
    /// Applied by redeploying the one application it belongs to.
    Redeploy,
    /// Needs the server (or Master) process restarted.
    Restart,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Live => "live",
            Effect::Redeploy => "redeploy",
            Effect::Restart => "restart",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The file a setting lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    Domain,
    Accounts,
    Policies,
}

impl FileKind {
    pub const ALL: [FileKind; 3] = [FileKind::Domain, FileKind::Accounts, FileKind::Policies];

    pub fn path(self) -> &'static str {
        match self {
            FileKind::Domain => "domain.toml",
            FileKind::Accounts => "security/accounts.toml",
            FileKind::Policies => "security/policies.toml",
        }
    }
}

/// The type of a setting's value, as the loader checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A name: a letter, then letters, digits, `-` or `_`; at most 63 characters.
    Ident,
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Port,
    /// `host:port`, host an IP address.
    SocketAddr,
    IpAddr,
    /// A host name or IP address.
    Host,
    /// `500ms`, `30s`, `5m`, `1h`.
    Duration,
    /// `512KiB`, `10MiB`, `1GiB`, or a number of bytes.
    ByteSize,
    Enum(&'static [&'static str]),
    IdentList,
    StrList,
    /// A table of string values with free keys (environment variables).
    StrMap,
    /// A `/`-separated path inside the repository, no `..`.
    RepoPath,
    RepoPathList,
    /// `/` or `/segment[/segment…]`.
    ContextPath,
    /// A path on the machine running the Master.
    FsPath,
    /// The name of an environment variable.
    EnvName,
    /// A PHC-format Argon2 hash (`$argon2id$v=19$…`).
    PasswordHash,
    /// A 5-field cron expression (`0 3 * * *`).
    Cron,
    /// An IANA time zone name (`Asia/Seoul`).
    TimeZone,
    /// An RFC 3339 instant (`2027-01-01T00:00:00Z`).
    Instant,
    PermissionList,
    /// An array of `queue:NAME` / `topic:NAME` (what a component consumes).
    ConsumeList,
}

impl Kind {
    /// How the type is named in messages and docs.
    pub fn describe(self) -> String {
        match self {
            Kind::Str => "string".into(),
            Kind::Ident => "name".into(),
            Kind::Bool => "boolean".into(),
            Kind::Int { min, max } => format!("integer {min}..={max}"),
            Kind::Port => "port 1..=65535".into(),
            Kind::SocketAddr => "address `ip:port`".into(),
            Kind::IpAddr => "IP address".into(),
            Kind::Host => "host name or IP address".into(),
            Kind::Duration => "duration (`500ms`, `30s`, `5m`, `1h`)".into(),
            Kind::ByteSize => "size (`64KiB`, `10MiB`, `1GiB`)".into(),
            Kind::Enum(values) => {
                let v: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                format!("one of {}", v.join(", "))
            }
            Kind::IdentList => "array of names".into(),
            Kind::StrList => "array of strings".into(),
            Kind::StrMap => "table of strings".into(),
            Kind::RepoPath => "path in the repository".into(),
            Kind::RepoPathList => "array of paths in the repository".into(),
            Kind::ContextPath => "context path (`/` or `/shop`)".into(),
            Kind::FsPath => "file path".into(),
            Kind::EnvName => "environment variable name".into(),
            Kind::PasswordHash => "Argon2 PHC hash (`$argon2id$…`)".into(),
            Kind::Cron => "cron expression (`0 3 * * *`)".into(),
            Kind::TimeZone => "time zone (`UTC`, `Asia/Seoul`)".into(),
            Kind::Instant => "RFC 3339 instant (`2027-01-01T00:00:00Z`)".into(),
            Kind::PermissionList => "array of permissions".into(),
            Kind::ConsumeList => "array of `queue:NAME` or `topic:NAME`".into(),
        }
    }
}

/// Permissions a role can grant. `*` grants all.
pub const PERMISSIONS: &[&str] = &[
    "*",
    "domain:read",
    "domain:pin",
    "git:read",
    "git:push",
    "servers:read",
    "servers:control",
    "servers:register",
    "nodes:register",
    "events:read",
    "metrics:read",
];

/// Whether a role may grant `s`: one of [`PERMISSIONS`], or a messaging permission
/// (docs/messaging.md): `messaging:*`, `messaging:send:*`, `messaging:receive:*`, or
/// `messaging:send:` / `messaging:receive:` and a destination, `/queue/NAME` or `/topic/NAME`,
/// whose name may end in `*` (every name with that prefix).
pub fn is_permission(s: &str) -> bool {
    if PERMISSIONS.contains(&s) {
        return true;
    }
    let Some(rest) = s.strip_prefix("messaging:") else {
        return false;
    };
    if rest == "*" {
        return true;
    }
    let Some(dest) = rest
        .strip_prefix("send:")
        .or_else(|| rest.strip_prefix("receive:"))
    else {
        return false;
    };
    if dest == "*" {
        return true;
    }
    let Some(name) = dest
        .strip_prefix("/queue/")
        .or_else(|| dest.strip_prefix("/topic/"))
    else {
        return false;
    };
    let stem = name.strip_suffix('*').unwrap_or(name);
    (!stem.is_empty() || name == "*")
        && !stem.contains(['*', '/'])
        && !stem.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod permission_tests {
    use super::is_permission;

    #[test]
    fn messaging_permissions_name_an_action_and_a_destination() {
        for ok in [
            "git:push",
            "messaging:*",
            "messaging:send:*",
            "messaging:receive:/queue/orders",
            "messaging:send:/topic/news",
            "messaging:send:/queue/orders.*",
            "messaging:receive:/queue/*",
        ] {
            assert!(is_permission(ok), "{ok}");
        }
        for bad in [
            "git:*",
            "messaging:",
            "messaging:read:/queue/a",
            "messaging:send:/queue/",
            "messaging:send:/exchange/a",
            "messaging:send:/queue/a*b",
            "messaging:send:/queue/a/b",
            "messaging:send:queue/a",
        ] {
            assert!(!is_permission(bad), "{bad}");
        }
    }
}

pub const RESTART_POLICIES: &[&str] = &["manual", "auto", "rolling"];
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
pub const APP_KINDS: &[&str] = &["static", "process", "component"];
pub const MISFIRE_POLICIES: &[&str] = &["fire-once", "skip", "fire-all"];
pub const ACCESS_LOG_FORMATS: &[&str] = &["common", "combined", "json"];
pub const LOG_FORMATS: &[&str] = &["jeus", "json"];

/// One row of the table. `path` is relative to `file`; `*` stands for a name the user chooses.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub file: FileKind,
    pub path: &'static str,
    pub kind: Kind,
    pub effect: Effect,
    /// Never printed: diffs say `(secret changed)`.
    pub secret: bool,
    /// The default, as written in TOML, or "" when the key is required or has no default.
    pub default: &'static str,
    pub doc: &'static str,
    /// Must be written whenever its table is.
    pub required: bool,
}

const fn s(
    file: FileKind,
    path: &'static str,
    kind: Kind,
    effect: Effect,
    default: &'static str,
    doc: &'static str,
) -> Setting {
    Setting {
        file,
        path,
        kind,
        effect,
        secret: false,
        default,
        doc,
        required: false,
    }
}

/// Marks a setting as required in its table.
const fn req(setting: Setting) -> Setting {
    Setting {
        required: true,
        ..setting
    }
}

use Effect::{Live, Redeploy, Restart};
use FileKind::{Accounts, Domain, Policies};

const POOL: Kind = Kind::Int {
    min: 1,
    max: 10_000,
};

/// Every setting. Order is the order of the reference page.
pub static SETTINGS: &[Setting] = &[
    // [domain]
    req(s(
        Domain,
        "domain.name",
        Kind::Ident,
        Live,
        "",
        "Name of the domain; shown by the Master and in logs.",
    )),
    s(
        Domain,
        "domain.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    // [master]
    s(
        Domain,
        "master.node",
        Kind::Host,
        Restart,
        "\"localhost\"",
        "Host the Master runs on (for port-conflict checks and defaults).",
    ),
    s(
        Domain,
        "master.listen",
        Kind::SocketAddr,
        Restart,
        "\"0.0.0.0:9736\"",
        "Base address of the Master: HTTP API, Git smart HTTP, events. The socket is bound at start.",
    ),
    s(
        Domain,
        "master.tls.certificate",
        Kind::FsPath,
        Restart,
        "",
        "PEM certificate chain, the Master's own first; with `key`, the Master serves HTTPS only. A relative path is taken from DOMAIN_HOME. Loaded at start.",
    ),
    s(
        Domain,
        "master.tls.key",
        Kind::FsPath,
        Restart,
        "",
        "PEM private key of `certificate` (PKCS#8, PKCS#1 or SEC1). A relative path is taken from DOMAIN_HOME. Loaded at start.",
    ),
    s(
        Domain,
        "master.heartbeat-interval",
        Kind::Duration,
        Live,
        "\"2s\"",
        "How often Managed Servers report to the Master.",
    ),
    s(
        Domain,
        "master.heartbeat-timeout",
        Kind::Duration,
        Live,
        "\"10s\"",
        "A server silent this long is shown as unreachable.",
    ),
    s(
        Domain,
        "master.upstream.url",
        Kind::Str,
        Restart,
        "",
        "Mirror mode: the upstream repository to follow: a path, or an http(s) URL (credentials in the URL; extra CAs from GIT_SSL_CAINFO). The Master reads the mirror settings at start.",
    ),
    s(
        Domain,
        "master.upstream.branch",
        Kind::Str,
        Restart,
        "\"main\"",
        "Mirror mode: the branch whose head is validated and pinned.",
    ),
    s(
        Domain,
        "master.upstream.poll-interval",
        Kind::Duration,
        Restart,
        "\"1m\"",
        "Mirror mode: how often the upstream is fetched besides webhooks.",
    ),
    s(
        Domain,
        "master.upstream.webhook-secret-env",
        Kind::EnvName,
        Restart,
        "",
        "Mirror mode: environment variable holding the webhook HMAC secret or token.",
    ),
    // [nodes.<name>]
    req(s(
        Domain,
        "nodes.*.address",
        Kind::Host,
        Live,
        "",
        "The machine's host name or address. Declaring any node makes every server's `node` name one of them (docs/node.md).",
    )),
    s(
        Domain,
        "nodes.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    s(
        Domain,
        "nodes.*.restart-max",
        Kind::Int { min: 0, max: 1_000 },
        Live,
        "3",
        "The node agent restarts a server that died at most this many times within `restart-window`, then leaves it stopped and says so; 0 never restarts.",
    ),
    s(
        Domain,
        "nodes.*.restart-window",
        Kind::Duration,
        Live,
        "\"5m\"",
        "The window `restart-max` counts restarts in.",
    ),
    s(
        Domain,
        "nodes.*.restart-backoff",
        Kind::Duration,
        Live,
        "\"1s\"",
        "The wait before restarting a server that died; doubled for each further restart within the window.",
    ),
    // [servers.<name>]
    s(
        Domain,
        "servers.*.node",
        Kind::Host,
        Restart,
        "\"localhost\"",
        "The machine the server runs on: its launcher and node agent run there. With `[nodes]`, the name of a declared node.",
    ),
    req(s(
        Domain,
        "servers.*.listen",
        Kind::SocketAddr,
        Restart,
        "",
        "Base address: the server's management API (`/v1/status`). Bound at start.",
    )),
    s(
        Domain,
        "servers.*.restart-policy",
        Kind::Enum(RESTART_POLICIES),
        Live,
        "\"manual\"",
        "What happens when a change needs a restart: wait for an operator, restart itself, or let the Master restart a cluster one server at a time.",
    ),
    s(
        Domain,
        "servers.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    s(
        Domain,
        "servers.*.stop-timeout",
        Kind::Duration,
        Live,
        "\"30s\"",
        "Graceful stop: how long in-flight requests may finish before the process is killed.",
    ),
    s(
        Domain,
        "servers.*.process.env",
        Kind::StrMap,
        Restart,
        "{}",
        "Environment of the server process (the JVM-options analog). Fixed at exec.",
    ),
    s(
        Domain,
        "servers.*.process.args",
        Kind::StrList,
        Restart,
        "[]",
        "Extra arguments of the server process. Fixed at exec.",
    ),
    s(
        Domain,
        "servers.*.process.runtime-threads",
        Kind::Int { min: 1, max: 1024 },
        Restart,
        "2",
        "Worker threads of the server's async runtime; the runtime is built at start.",
    ),
    // web engine
    s(
        Domain,
        "servers.*.web.listeners.*.address",
        Kind::IpAddr,
        Restart,
        "\"0.0.0.0\"",
        "Address the listener binds. Without listeners, the web engine listens on `http` at the base port + 1, on the server's base address (`listen`).",
    ),
    req(s(
        Domain,
        "servers.*.web.listeners.*.port",
        Kind::Port,
        Restart,
        "",
        "Port the listener binds; bound once at start.",
    )),
    s(
        Domain,
        "servers.*.web.listeners.*.thread-pool.min",
        POOL,
        Live,
        "2",
        "Accepted for JEUS compatibility and checked against `max`; the asynchronous web engine keeps no idle threads, so only `max` bounds requests.",
    ),
    s(
        Domain,
        "servers.*.web.listeners.*.thread-pool.max",
        POOL,
        Live,
        "64",
        "Most requests served at once; excess requests wait `queue-timeout`, then get 503.",
    ),
    s(
        Domain,
        "servers.*.web.listeners.*.queue-timeout",
        Kind::Duration,
        Live,
        "\"5s\"",
        "How long a request waits for capacity before 503.",
    ),
    s(
        Domain,
        "servers.*.web.listeners.*.request-timeout",
        Kind::Duration,
        Live,
        "\"1m\"",
        "Longest a request may take before the listener answers 504.",
    ),
    s(
        Domain,
        "servers.*.web.access-log.enabled",
        Kind::Bool,
        Live,
        "true",
        "Write `logs/access_<date>.log<NNNNN>`.",
    ),
    s(
        Domain,
        "servers.*.web.access-log.format",
        Kind::Enum(ACCESS_LOG_FORMATS),
        Live,
        "\"common\"",
        "Access log line format.",
    ),
    // component engine (EJB analog)
    s(
        Domain,
        "servers.*.component.thread-pool.min",
        POOL,
        Live,
        "2",
        "Accepted for JEUS compatibility and checked against `max`; the asynchronous component engine keeps no idle workers.",
    ),
    s(
        Domain,
        "servers.*.component.thread-pool.max",
        POOL,
        Live,
        "32",
        "Most timer callbacks and message deliveries to message-driven components in flight at once; more wait for a slot.",
    ),
    s(
        Domain,
        "servers.*.component.timer-service.enabled",
        Kind::Bool,
        Live,
        "true",
        "Fire timers (stored in `.workspace/ejbtimerdb`); `false` pauses firing, timers are kept.",
    ),
    s(
        Domain,
        "servers.*.component.timer-service.max-retries",
        Kind::Int { min: 0, max: 100 },
        Live,
        "3",
        "Retries of a failed timer callback before it is recorded as failed.",
    ),
    s(
        Domain,
        "servers.*.component.timer-service.retry-delay",
        Kind::Duration,
        Live,
        "\"5s\"",
        "Delay between timer retries.",
    ),
    s(
        Domain,
        "servers.*.component.message-timeout",
        Kind::Duration,
        Live,
        "\"30s\"",
        "How long a message-driven component may take to answer a delivered message; no 2xx answer within it NACKs the message.",
    ),
    // messaging engine (JMS analog)
    s(
        Domain,
        "servers.*.messaging.listener.address",
        Kind::IpAddr,
        Restart,
        "\"0.0.0.0\"",
        "Address the messaging listener binds.",
    ),
    req(s(
        Domain,
        "servers.*.messaging.listener.port",
        Kind::Port,
        Restart,
        "",
        "Port of the STOMP 1.2 listener (docs/messaging.md); without it, messaging is in-process only: the engine runs, no client can connect.",
    )),
    s(
        Domain,
        "servers.*.messaging.queues.*.max-depth",
        Kind::Int {
            min: 1,
            max: 100_000_000,
        },
        Live,
        "10000",
        "Messages a queue holds before senders are refused.",
    ),
    s(
        Domain,
        "servers.*.messaging.queues.*.persistent",
        Kind::Bool,
        Live,
        "true",
        "Keep the queue's messages across restarts and kill -9, in `SERVER_HOME/.workspace/tmlog/messages.redb`; a SEND with a receipt is answered once the message is on disk (docs/messaging.md). Switched live: `false` drops the records and keeps the messages in memory, `true` writes the messages held.",
    ),
    s(
        Domain,
        "servers.*.messaging.queues.*.max-redeliveries",
        Kind::Int { min: 0, max: 1000 },
        Live,
        "5",
        "Redeliveries of a message (NACK, or its consumer gone without ACK) before it moves to the dead-letter queue `NAME.dlq`.",
    ),
    s(
        Domain,
        "servers.*.messaging.topics.*.max-subscribers",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        Live,
        "1000",
        "Subscribers a topic accepts, durable subscriptions included.",
    ),
    s(
        Domain,
        "servers.*.messaging.topics.*.persistent",
        Kind::Bool,
        Live,
        "true",
        "Keep the messages of the topic's durable subscriptions (and the subscriptions) across restarts, in `.workspace/tmlog` like a persistent queue's.",
    ),
    s(
        Domain,
        "servers.*.messaging.topics.*.durable-max-depth",
        Kind::Int {
            min: 1,
            max: 100_000_000,
        },
        Live,
        "100000",
        "Messages each durable subscription of the topic keeps for its subscriber, delivered or not (a queue's `max-depth`); later ones are not kept for it and are counted `discarded`. Lowered live, what it holds is kept.",
    ),
    // logging
    s(
        Domain,
        "servers.*.logging.level",
        Kind::Enum(LOG_LEVELS),
        Live,
        "\"info\"",
        "Server log level.",
    ),
    s(
        Domain,
        "servers.*.logging.format",
        Kind::Enum(LOG_FORMATS),
        Live,
        "\"jeus\"",
        "Server log line format: `jeus` (`[time][level] [server] [ID] message`) or `json` (one object per line, for log shippers).",
    ),
    s(
        Domain,
        "servers.*.logging.rotation.max-size",
        Kind::ByteSize,
        Live,
        "\"10MiB\"",
        "Start the next `log<NNNNN>` file at this size.",
    ),
    s(
        Domain,
        "servers.*.logging.rotation.daily",
        Kind::Bool,
        Live,
        "true",
        "Start a new file each day (`<log>_<YYYYMMDD>`).",
    ),
    s(
        Domain,
        "servers.*.logging.rotation.keep",
        Kind::Int {
            min: 1,
            max: 99_999,
        },
        Live,
        "30",
        "Log files kept per log; older ones are deleted.",
    ),
    // [clusters.<name>]
    s(
        Domain,
        "clusters.*.servers",
        Kind::IdentList,
        Live,
        "[]",
        "Member servers. Applications targeting the cluster deploy to each; a server is in at most one cluster.",
    ),
    s(
        Domain,
        "clusters.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    // [applications.<name>]
    req(s(
        Domain,
        "applications.*.kind",
        Kind::Enum(APP_KINDS),
        Redeploy,
        "",
        "`static`: files served by the web engine; `process`: a supervised child process behind the web engine; `component`: a supervised child process run by the component engine, with timers, routed only when it has a `context-path` (docs/components.md).",
    )),
    req(s(
        Domain,
        "applications.*.source",
        Kind::RepoPath,
        Redeploy,
        "",
        "Directory or archive (`.tar`, `.tar.gz`, `.zip`) in this repository; its content is the deploy image.",
    )),
    s(
        Domain,
        "applications.*.context-path",
        Kind::ContextPath,
        Live,
        "",
        "URL prefix the web engine routes to the application. Required for `static` and `process`; a `component` without one gets no route.",
    ),
    s(
        Domain,
        "applications.*.targets",
        Kind::IdentList,
        Live,
        "[]",
        "Servers and clusters the application is deployed to.",
    ),
    s(
        Domain,
        "applications.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    s(
        Domain,
        "applications.*.env",
        Kind::StrMap,
        Redeploy,
        "{}",
        "Environment of a `process` or `component` application.",
    ),
    s(
        Domain,
        "applications.*.command",
        Kind::Str,
        Redeploy,
        "",
        "`process`, `component`: program to run, relative to the deploy image (required for them).",
    ),
    s(
        Domain,
        "applications.*.args",
        Kind::StrList,
        Redeploy,
        "[]",
        "`process`: its arguments.",
    ),
    s(
        Domain,
        "applications.*.libraries",
        Kind::RepoPathList,
        Redeploy,
        "[]",
        "Library directories in this repository, first on the application's library path.",
    ),
    s(
        Domain,
        "applications.*.index",
        Kind::Str,
        Live,
        "\"index.html\"",
        "`static`: file served for a directory.",
    ),
    s(
        Domain,
        "applications.*.health-path",
        Kind::Str,
        Live,
        "\"/\"",
        "`process`: path probed before the application receives traffic.",
    ),
    s(
        Domain,
        "applications.*.start-timeout",
        Kind::Duration,
        Live,
        "\"30s\"",
        "`process`: how long it may take to answer its health path.",
    ),
    s(
        Domain,
        "applications.*.max-unpacked-size",
        Kind::ByteSize,
        Redeploy,
        "\"2GiB\"",
        "Archive sources: most bytes the archive may unpack to; a larger one is refused.",
    ),
    s(
        Domain,
        "applications.*.consumes",
        Kind::ConsumeList,
        Live,
        "[]",
        "`component`: destinations it consumes (`queue:NAME`, `topic:NAME`), each declared on every server it is deployed to; each message is POSTed to it (docs/components.md#message-driven-components).",
    ),
    // [applications.<name>.timers.<name>] (component applications)
    s(
        Domain,
        "applications.*.timers.*.schedule",
        Kind::Cron,
        Live,
        "",
        "`component`: fire on this 5-field cron schedule (minute hour day-of-month month day-of-week) in `time-zone`. Exactly one of `schedule`, `interval`, `at`.",
    ),
    s(
        Domain,
        "applications.*.timers.*.time-zone",
        Kind::TimeZone,
        Live,
        "\"UTC\"",
        "Time zone `schedule` is read in.",
    ),
    s(
        Domain,
        "applications.*.timers.*.interval",
        Kind::Duration,
        Live,
        "",
        "`component`: fire every this long, counted from when the timer was created.",
    ),
    s(
        Domain,
        "applications.*.timers.*.at",
        Kind::Instant,
        Live,
        "",
        "`component`: fire once, at this instant.",
    ),
    s(
        Domain,
        "applications.*.timers.*.persistent",
        Kind::Bool,
        Live,
        "true",
        "Keep the timer's schedule in `.workspace/ejbtimerdb` across restarts, so firings missed while the server was down are handled by `misfire`.",
    ),
    s(
        Domain,
        "applications.*.timers.*.misfire",
        Kind::Enum(MISFIRE_POLICIES),
        Live,
        "\"fire-once\"",
        "Firings that came due while the server was down: `fire-once` fires once for all, `skip` fires none, `fire-all` fires each (at most 1000).",
    ),
    // security/accounts.toml
    Setting {
        file: Accounts,
        path: "users.*.password",
        kind: Kind::PasswordHash,
        effect: Live,
        secret: true,
        default: "",
        doc: "Argon2 hash of the password (`steward hash-password`). Plain text is refused.",
        required: true,
    },
    s(
        Accounts,
        "users.*.groups",
        Kind::IdentList,
        Live,
        "[]",
        "Groups the user belongs to.",
    ),
    s(
        Accounts,
        "users.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    s(
        Accounts,
        "groups.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
    // security/policies.toml
    s(
        Policies,
        "roles.*.permissions",
        Kind::PermissionList,
        Live,
        "[]",
        "What the role may do: `*` or any of `domain:read`, `domain:pin`, `git:read`, `git:push`, `servers:read`, `servers:control`, `servers:register`, `events:read`, `metrics:read`.",
    ),
    s(
        Policies,
        "roles.*.groups",
        Kind::IdentList,
        Live,
        "[]",
        "Groups granted the role.",
    ),
    s(
        Policies,
        "roles.*.users",
        Kind::IdentList,
        Live,
        "[]",
        "Users granted the role.",
    ),
    s(
        Policies,
        "roles.*.description",
        Kind::Str,
        Live,
        "\"\"",
        "Free text for operators.",
    ),
];

/// A node of the key tree built from [`SETTINGS`]: what may stand at a table path.
#[derive(Debug, Default)]
pub struct Node {
    pub children: BTreeMap<&'static str, Node>,
    /// Present when the keys at this level are names the user chooses (`servers.<name>`).
    pub any: Option<Box<Node>>,
    pub setting: Option<&'static Setting>,
}

impl Node {
    /// The node for key `key` under this one.
    pub fn child(&self, key: &str) -> Option<&Node> {
        self.children.get(key).or(self.any.as_deref())
    }
}

/// The key tree of one file.
pub fn tree(file: FileKind) -> &'static Node {
    static TREES: OnceLock<[Node; 3]> = OnceLock::new();
    let trees = TREES.get_or_init(|| {
        FileKind::ALL.map(|f| {
            let mut root = Node::default();
            for setting in SETTINGS.iter().filter(|s| s.file == f) {
                let mut node = &mut root;
                for seg in setting.path.split('.') {
                    node = if seg == "*" {
                        node.any.get_or_insert_with(Default::default)
                    } else {
                        node.children.entry(seg).or_default()
                    };
                }
                node.setting = Some(setting);
            }
            root
        })
    });
    &trees[file as usize]
}

/// The setting a concrete path (`servers.s1.web.listeners.http.port`) is an instance of. Keys
/// under a [`Kind::StrMap`] setting (`servers.s1.process.env.RUST_LOG`) resolve to the map.
pub fn lookup(file: FileKind, path: &str) -> Option<&'static Setting> {
    let mut node = tree(file);
    for seg in path.split('.') {
        if let Some(s) = node.setting
            && s.kind == Kind::StrMap
        {
            return Some(s);
        }
        node = node.child(seg)?;
    }
    node.setting
}

/// The reference page, `docs/settings.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Settings reference\n\n\
         Generated by `steward schema --markdown` from the classification table in\n\
         `schema/src/settings.rs`; do not edit by hand (a test fails when this page is stale).\n\n\
         Every setting has exactly one effect when it changes:\n\n\
         - **live**: the running server applies it in place; no connection is dropped.\n\
         - **redeploy**: the one application it belongs to is redeployed; others keep serving.\n\
         - **restart**: the process must restart; the server reports it in `pending_restart` and its\n  \
           `restart-policy` decides when.\n\n\
         `<name>` stands for a name you choose: a letter, then letters, digits, `-` or `_` (at most 63).\n",
    );
    for file in FileKind::ALL {
        out.push_str(&format!(
            "\n## `{}`\n\n| setting | type | default | effect | description |\n|---|---|---|---|---|\n",
            file.path()
        ));
        for st in SETTINGS.iter().filter(|s| s.file == file) {
            let default = if st.default.is_empty() {
                "—".to_owned()
            } else {
                format!("`{}`", st.default)
            };
            let secret = if st.secret { " (secret)" } else { "" };
            out.push_str(&format!(
                "| `{}` | {} | {} | {}{} | {} |\n",
                st.path.replace('*', "<name>"),
                st.kind.describe().replace('|', "\\|"),
                default,
                st.effect,
                secret,
                st.doc
            ));
        }
    }
    out
}
