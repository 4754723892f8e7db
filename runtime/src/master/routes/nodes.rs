//! `/v1/nodes`: the node agents' long poll and order outcomes, and the list of nodes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path as UrlPath;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{error, require};
use crate::master::log;
use crate::master::state::State;
use reconciler::wire::{NodeDone, NodeReply, NodeReport, Pinned};

/// The longest a poll is held, whatever the agent asks: a held request ties a connection.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// `GET /v1/nodes`.
pub(super) async fn list(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = require(&state, &headers, "servers:read").await {
        return r;
    }
    let c = state.current();
    let timeout = c.domain.config.master.heartbeat_timeout.0;
    axum::Json(state.nodes.list(&c.domain, timeout)).into_response()
}

/// `POST /v1/nodes/{name}/poll`: records the agent's report, then answers with the orders for
/// its node as soon as there are any, or empty after `wait_ms` (at most the heartbeat interval,
/// so that a live agent is seen that often).
pub(super) async fn poll(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let report: NodeReport = match agent_body(&state, &headers, &body, "a node report").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let c = state.current();
    if !crate::master::nodes::configured(&c.domain).contains_key(&name) {
        return error(
            StatusCode::NOT_FOUND,
            "no such node in the pinned domain.toml (a `[nodes.NAME]`, or the `node` of a server)",
        );
    }
    let m = &c.domain.config.master;
    let wait = Duration::from_millis(report.wait_ms)
        .min(m.heartbeat_interval.0)
        .min(MAX_WAIT);
    let (pid, commit) = (report.pid, report.commit.clone());
    let (news, wake) = state.nodes.polled(&name, report);
    if news {
        log::info(
            "Master-0090",
            &format!(
                "Node {name} connected: its agent [pid : {pid}] supervises with {}.",
                commit
                    .as_deref()
                    .map_or("no configuration yet", |c| c.get(..7).unwrap_or(c))
            ),
        );
        crate::master::nodes::announce(&state, &c.domain, &name);
    }
    let mut orders = state.nodes.take_orders(&name);
    if orders.is_empty() && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, wake.notified()).await;
        orders = state.nodes.take_orders(&name);
    }
    for o in &orders {
        log::info(
            "Master-0091",
            &format!(
                "Ordering node {name} to {} {} (rollout {}).",
                o.action.as_str(),
                o.server,
                o.rollout
            ),
        );
    }
    let c = state.current();
    axum::Json(NodeReply {
        orders,
        pinned: Pinned {
            commit: c.commit.to_hex(),
            at: c.at.clone(),
        },
        heartbeat_interval_ms: c.domain.config.master.heartbeat_interval.0.as_millis() as u64,
    })
    .into_response()
}

/// What a node agent sends: `nodes:register` first, then the body as `T` (`400` naming `what`
/// otherwise).
async fn agent_body<T: serde::de::DeserializeOwned>(
    state: &Arc<State>,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<T, Response> {
    require(state, headers, "nodes:register").await?;
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("not {what}: {e}")))
}

/// `POST /v1/nodes/{name}/done`: how an order ended. A failure fails its rollout's step with the
/// agent's reason; a success lets the rollout look again (the server's own report finishes it).
pub(super) async fn done(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let done: NodeDone = match agent_body(&state, &headers, &body, "an order outcome").await {
        Ok(d) => d,
        Err(r) => return r,
    };
    if done.ok {
        state.rollouts.poke();
    } else {
        let why = format!(
            "node {name} could not {} it: {}",
            done.action.as_str(),
            done.error.as_deref().unwrap_or("no reason given")
        );
        log::warning(
            "Master-0092",
            &format!(
                "Node {name}: {} of {} failed: {why}",
                done.action.as_str(),
                done.server
            ),
        );
        crate::master::rollouts::failed(&state, &done.rollout, &done.server, &why);
    }
    StatusCode::NO_CONTENT.into_response()
}
