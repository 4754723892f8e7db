//! The Master's API as `steward admin` uses it: one typed call per route (docs/api.md), with the
//! Master's refusals told apart so the command can say what to do about them.

use std::time::Duration;

use reconciler::pin::Record;
use reconciler::wire::{Domain, PinReply, Rollout, RolloutRequest, View};
use serde::de::DeserializeOwned;

use super::{Connection, ConnectionError};
use crate::client::{Client, ClientError, Events};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error(
        "the Master refused the credentials of user `{user}` (401): check STEWARD_USER/STEWARD_PASSWORD or the credentials file"
    )]
    Unauthorized { user: String },
    #[error(
        "user `{user}` lacks the permission `{permission}` (403): an administrator can grant it to one of the user's roles in security/policies.toml"
    )]
    Forbidden {
        user: String,
        permission: &'static str,
    },
    #[error("{what}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
        /// Validation problems, when the Master sent them (a rollback to an invalid commit).
        problems: Vec<serde_json::Value>,
    },
    #[error("the Master's answer to {what} is not what this steward expects: {error}")]
    Decode {
        what: String,
        error: serde_json::Error,
    },
}

/// A Master, for `steward admin`.
pub struct Api {
    conn: Connection,
    client: Client,
}

impl Api {
    pub fn new(conn: Connection) -> Result<Api, ApiError> {
        let client = conn.client(Duration::from_secs(30))?;
        Ok(Api { conn, client })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn answer<T: DeserializeOwned>(
        &self,
        what: &str,
        permission: &'static str,
        resp: crate::client::Response,
    ) -> Result<T, ApiError> {
        match resp.status {
            200..=299 => serde_json::from_slice(&resp.body).map_err(|error| ApiError::Decode {
                what: what.to_owned(),
                error,
            }),
            _ => Err(self.refusal(what, permission, &resp)),
        }
    }

    /// The error for an answer that is not a success.
    fn refusal(
        &self,
        what: &str,
        permission: &'static str,
        resp: &crate::client::Response,
    ) -> ApiError {
        match resp.status {
            401 => ApiError::Unauthorized {
                user: self.conn.user.clone(),
            },
            403 => ApiError::Forbidden {
                user: self.conn.user.clone(),
                permission,
            },
            status => {
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
                ApiError::Refused {
                    what: what.to_owned(),
                    status,
                    message: body["error"]
                        .as_str()
                        .map_or_else(|| format!("the Master answered {status}"), str::to_owned),
                    problems: body["problems"].as_array().cloned().unwrap_or_default(),
                }
            }
        }
    }

    /// Whether this user may fetch (`git:read`) or, with `push`, push (`git:push`) the domain
    /// repository: the service's ref advertisement, which the Master authorizes as the service.
    pub fn git_access(&self, push: bool) -> Result<(), ApiError> {
        let (service, permission) = match push {
            true => ("git-receive-pack", "git:push"),
            false => ("git-upload-pack", "git:read"),
        };
        let path = format!("/git/domain.git/info/refs?service={service}");
        let resp = self.client.get(&path)?;
        match resp.status {
            200..=299 => Ok(()),
            _ => Err(self.refusal(&format!("GET {path}"), permission, &resp)),
        }
    }

    fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        permission: &'static str,
    ) -> Result<T, ApiError> {
        let resp = self.client.get(path)?;
        self.answer(&format!("GET {path}"), permission, resp)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        permission: &'static str,
    ) -> Result<T, ApiError> {
        let json = serde_json::to_vec(body).map_err(|error| ApiError::Decode {
            what: format!("POST {path}"),
            error,
        })?;
        let resp = self.client.post_json(path, json)?;
        self.answer(&format!("POST {path}"), permission, resp)
    }

    pub fn domain(&self) -> Result<Domain, ApiError> {
        self.get("/v1/domain", "domain:read")
    }

    pub fn servers(&self) -> Result<Vec<View>, ApiError> {
        self.get("/v1/servers", "servers:read")
    }

    pub fn nodes(&self) -> Result<Vec<reconciler::wire::NodeView>, ApiError> {
        self.get("/v1/nodes", "servers:read")
    }

    /// Newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Record>, ApiError> {
        self.get(&format!("/v1/domain/history?limit={limit}"), "domain:read")
    }

    /// The plan of `rev` (against its parent), as `steward diff --format json` gives it.
    pub fn plan(&self, rev: &str) -> Result<serde_json::Value, ApiError> {
        self.get(&format!("/v1/commits/{rev}/plan"), "domain:read")
    }

    pub fn start_rollout(&self, req: &RolloutRequest) -> Result<Rollout, ApiError> {
        self.post("/v1/rollouts", req, "servers:control")
    }

    pub fn rollout(&self, id: &str) -> Result<Rollout, ApiError> {
        self.get(&format!("/v1/rollouts/{id}"), "servers:read")
    }

    pub fn pin(&self, commit: &str) -> Result<PinReply, ApiError> {
        self.post(
            "/v1/domain/pin",
            &serde_json::json!({ "commit": commit }),
            "domain:pin",
        )
    }

    pub fn hold(&self) -> Result<Domain, ApiError> {
        self.post("/v1/domain/hold", &serde_json::json!({}), "domain:pin")
    }

    pub fn resume(&self) -> Result<Domain, ApiError> {
        self.post("/v1/domain/resume", &serde_json::json!({}), "domain:pin")
    }

    /// `GET /v1/timers`: the domain's timers, asked of the running servers through the Master.
    pub fn timers(
        &self,
        server: Option<&str>,
        application: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let mut query = Vec::new();
        if let Some(s) = server {
            query.push(format!("server={s}"));
        }
        if let Some(a) = application {
            query.push(format!("application={a}"));
        }
        let path = match query.is_empty() {
            true => "/v1/timers".to_owned(),
            false => format!("/v1/timers?{}", query.join("&")),
        };
        self.get(&path, "servers:read")
    }

    /// Cancels timer `id` of `application` on `server`; answered once the server committed it.
    pub fn cancel_timer(
        &self,
        server: &str,
        application: &str,
        id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        self.post(
            &format!("/v1/servers/{server}/timers/cancel"),
            &serde_json::json!({ "application": application, "id": id }),
            "servers:control",
        )
    }

    /// The event stream; each read waits up to `idle` before saying nothing came.
    pub fn events(&self, idle: Duration) -> Result<Events, ApiError> {
        let c = self.conn.client(idle)?;
        match c.events("/v1/events") {
            Ok(e) => Ok(e),
            Err(ClientError::Status { status: 401, .. }) => Err(ApiError::Unauthorized {
                user: self.conn.user.clone(),
            }),
            Err(ClientError::Status { status: 403, .. }) => Err(ApiError::Forbidden {
                user: self.conn.user.clone(),
                permission: "events:read",
            }),
            Err(e) => Err(e.into()),
        }
    }
}
