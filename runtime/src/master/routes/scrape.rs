//! `GET /metrics`: the Master's metrics in the Prometheus text format (docs/metrics.md), for a
//! user with `metrics:read`.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::require;
use crate::master::state::State;

pub(super) async fn metrics(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = require(&state, &headers, "metrics:read").await {
        return r;
    }
    let c = state.current();
    let timeout = c.domain.config.master.heartbeat_timeout.0;
    let servers = state.servers.list(c.domain.config.servers.keys(), timeout);
    let body = state
        .metrics
        .render(&servers, state.events.receiver_count());
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}
