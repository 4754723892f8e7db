//! `/v1/rollouts` and `POST /v1/servers/{name}/{restart,stop,start}`: an operator's restarts,
//! stops and starts, carried out by [`crate::master::rollouts`].

use std::sync::Arc;

use axum::extract::Path as UrlPath;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{error, require};
use crate::master::state::State;
use reconciler::rollout::{SelectError, select};
use reconciler::wire::{RolloutAction, RolloutRequest};

/// `POST /v1/rollouts`.
pub(super) async fn create(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let user = match require(&state, &headers, "servers:control").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let req: RolloutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"action\": \"restart\"|\"stop\"|\"start\", \"servers\": [...] | \"cluster\": \"C\" | \"pending\": true, \"max_unavailable\": N}}: {e}"
                ),
            );
        }
    };
    start(&state, &req, user)
}

pub(super) async fn restart(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    one(st, name, headers, RolloutAction::Restart).await
}

pub(super) async fn stop(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    one(st, name, headers, RolloutAction::Stop).await
}

pub(super) async fn start_one(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    one(st, name, headers, RolloutAction::Start).await
}

/// `POST /v1/servers/{name}/restart` (and `stop`, `start`): a rollout of one server.
async fn one(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    action: RolloutAction,
) -> Response {
    let user = match require(&state, &headers, "servers:control").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let req = RolloutRequest {
        action: Some(action),
        servers: vec![name],
        ..RolloutRequest::default()
    };
    start(&state, &req, user)
}

fn start(state: &Arc<State>, req: &RolloutRequest, user: String) -> Response {
    let c = state.current();
    let views = state.servers.list(
        c.domain.config.servers.keys(),
        c.domain.config.master.heartbeat_timeout.0,
    );
    match select(req, &c.domain, &views) {
        Ok((action, servers, max)) => {
            let doc = state.rollouts.start(state, action, servers, max, user);
            (StatusCode::ACCEPTED, axum::Json(doc)).into_response()
        }
        Err(e @ (SelectError::UnknownServer { .. } | SelectError::UnknownCluster { .. })) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `GET /v1/rollouts`: newest first.
pub(super) async fn list(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    match require(&state, &headers, "servers:read").await {
        Ok(_) => axum::Json(state.rollouts.list()).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/rollouts/{id}`.
pub(super) async fn get(
    AxState(state): AxState<Arc<State>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require(&state, &headers, "servers:read").await {
        return r;
    }
    match state.rollouts.get(&id) {
        Some(doc) => axum::Json(doc).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such rollout"),
    }
}
