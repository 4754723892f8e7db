//! The Master's HTTP API (docs/api.md), one module per concern; what they share: the router,
//! error answers, and the routes that need no state of their own.

mod domain;
mod events;
mod git;
mod hooks;
mod servers;

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

use super::log;
use super::state::State;

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/domain", get(domain::domain))
        .route("/v1/domain/history", get(domain::history))
        .route("/v1/domain/pin", post(domain::pin))
        .route("/v1/hooks/git", post(hooks::webhook))
        .route("/v1/events", get(events::events))
        .route("/v1/servers", get(servers::list_servers))
        .route("/v1/servers/{name}", get(servers::one_server))
        .route("/v1/servers/{name}/register", post(servers::register))
        .route("/v1/servers/{name}/heartbeat", post(servers::heartbeat))
        .route("/git/domain.git/{*rest}", any(git::git))
        .fallback(not_found)
        .with_state(state)
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Unknown routes need credentials too, so probing does not map the API.
pub(super) async fn not_found(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    match state.require(&headers, "domain:read").await {
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(r) => r,
    }
}

pub(super) fn unauthorized() -> Response {
    let mut r = StatusCode::UNAUTHORIZED.into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"steward\""),
    );
    r
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

pub(super) fn internal(message: &str) -> Response {
    log::severe("Master-0031", message);
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": "internal error; see the Master's log" })),
    )
        .into_response()
}
