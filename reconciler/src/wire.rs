//! The wire API between the Master and the Managed Servers (and `steward up`, and anything that
//! reads `/v1/servers`): one typed definition per document, used by both ends, instead of JSON
//! indexed by string. docs/api.md describes each.

use serde::{Deserialize, Serialize};

/// A server's state, one spelling everywhere (JEUS's upper-case words): what a Managed Server
/// reports at its `GET /v1/status` and to the Master (`STARTING`, `RUNNING`, `STOPPING`), and what
/// the Master concludes on its own (`UNREACHABLE`: heartbeats stopped; `UNKNOWN`: never heard
/// from since the Master started). Lower-case spellings are read too, never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    #[serde(rename = "STARTING", alias = "starting")]
    Starting,
    #[serde(rename = "RUNNING", alias = "running")]
    Running,
    #[serde(rename = "STOPPING", alias = "stopping")]
    Stopping,
    #[serde(rename = "UNREACHABLE", alias = "unreachable")]
    Unreachable,
    #[serde(rename = "UNKNOWN", alias = "unknown")]
    Unknown,
}

impl ServerState {
    pub const ALL: [ServerState; 5] = [
        ServerState::Starting,
        ServerState::Running,
        ServerState::Stopping,
        ServerState::Unreachable,
        ServerState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "STARTING",
            ServerState::Running => "RUNNING",
            ServerState::Stopping => "STOPPING",
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
#[error("{0:?} is not a server state (STARTING, RUNNING, STOPPING, UNREACHABLE, UNKNOWN)")]
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

/// What a server reports (its element of `GET /v1/servers`, as served by its own `/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Report {
    /// Informational; the name in the URL is the one that counts.
    #[serde(default)]
    pub name: Option<String>,
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
    #[serde(default)]
    pub last_error: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}
