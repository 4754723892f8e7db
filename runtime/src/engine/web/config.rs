//! What the engine is given: the web part of a server's configuration, the deployed
//! applications, the server's context; and what an apply reports back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use schema::model::{AccessLog as AccessLogSettings, Application, Listener, Server};

use crate::deploy::Deployment;
use crate::logfile::{Logger, Rotation};

/// The web engine's part of a server's configuration, with the applications deployed to it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// The server's name: setting paths in errors are `servers.<server>.web…`.
    pub server: String,
    pub listeners: BTreeMap<String, Listener>,
    pub access_log: AccessLogSettings,
    pub apps: BTreeMap<String, AppSpec>,
}

impl WebConfig {
    /// The web configuration of `server` (named `name`) with `apps` deployed.
    pub fn new(name: &str, server: &Server, apps: BTreeMap<String, AppSpec>) -> WebConfig {
        WebConfig {
            server: name.to_owned(),
            listeners: server.web.listeners.clone(),
            access_log: server.web.access_log.clone(),
            apps,
        }
    }
}

/// One deployed application: its settings and where its deployment put it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    pub app: Application,
    pub deployment: Deployment,
}

/// What the engine needs from the server process.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// `SERVER_HOME/logs`: the access log and the applications' output logs.
    pub logs_dir: PathBuf,
    pub rotation: Rotation,
    /// The server log, for application lifecycle lines (`WEB-02xx`).
    pub logger: Option<Logger>,
    /// Environment every process application gets, fixed for the engine's life (the messaging
    /// engine's `STEWARD_MESSAGING_URL`); an application's own `env` wins.
    pub env: BTreeMap<String, String>,
    /// What a `component` application gets besides `env` (the component engine's timer service
    /// address and the application's token); Steward's values win over its own `env`.
    pub component_env: Option<ComponentEnv>,
}

/// The environment of one `component` application, given its name.
pub type EnvOf = dyn Fn(&str) -> BTreeMap<String, String> + Send + Sync;

/// [`EnvOf`], shared.
#[derive(Clone)]
pub struct ComponentEnv(pub Arc<EnvOf>);

impl std::fmt::Debug for ComponentEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The values include a token: never printed.
        f.write_str("ComponentEnv(..)")
    }
}

/// What [`WebEngine::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Process applications started (new or redeployed) and healthy.
    pub started: Vec<String>,
    /// Applications no longer served.
    pub removed: Vec<String>,
    /// Applications that could not be (re)started: `(app, why)`. A redeployed application that
    /// failed keeps its previous process serving; a new one is routed and answers 503 while its
    /// supervisor keeps retrying.
    pub failed: Vec<(String, String)>,
}
