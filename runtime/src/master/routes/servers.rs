//! `/v1/servers`: the list, one server, and what Managed Servers send: registration and heartbeats.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error;
use super::require;
use axum::extract::Path as UrlPath;

use crate::master::state::{Event, State};
use crate::master::{log, servers};
use reconciler::rolling;
use reconciler::rollout::{Command, Route, route};
use reconciler::wire::{Pinned, ReportReply};

/// The rollout an agent's order for a rolling restart names: rolling restarts are no rollout of
/// `/v1/rollouts` (the Master starts them, per cluster, as servers report pending restarts).
pub(crate) const ROLLING: &str = "rolling";

pub(super) async fn list_servers(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> Response {
    match views(&state, &headers).await {
        Ok(views) => axum::Json(views).into_response(),
        Err(r) => r,
    }
}

/// Every server's view, for a user with `servers:read`.
async fn views(state: &Arc<State>, headers: &HeaderMap) -> Result<Vec<servers::View>, Response> {
    require(state, headers, "servers:read").await?;
    let c = state.current();
    let timeout = c.domain.config.master.heartbeat_timeout.0;
    Ok(state.servers.list(c.domain.config.servers.keys(), timeout))
}

pub(super) async fn one_server(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let views = match views(&state, &headers).await {
        Ok(views) => views,
        Err(r) => return r,
    };
    match views.into_iter().find(|v| v.name == name) {
        Some(v) => axum::Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such server"),
    }
}

pub(super) async fn register(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    report(st, name, headers, body, true).await
}

pub(super) async fn heartbeat(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    report(st, name, headers, body, false).await
}

/// A report by `name` that the Master refused (its credentials, or their permission): shown as the
/// registered server's `last_error`, since the server itself cannot tell the Master.
fn refused(state: &State, name: &str, status: StatusCode) {
    state.servers.refused(
        name,
        format!(
            "the Master refused this server's report at {} ({}): check the credentials its launcher was given",
            reconciler::pin::now_rfc3339(),
            status.as_u16()
        ),
    );
}

/// Called by the authentication gate when a request failed authentication (401): if it was a
/// server's register or heartbeat, the registered server shows why.
pub(super) fn refused_report(
    state: &State,
    method: &axum::http::Method,
    path: &str,
    status: StatusCode,
) {
    if status != StatusCode::UNAUTHORIZED || method != axum::http::Method::POST {
        return;
    }
    let Some(rest) = path.strip_prefix("/v1/servers/") else {
        return;
    };
    let name = rest
        .strip_suffix("/heartbeat")
        .or_else(|| rest.strip_suffix("/register"));
    if let Some(name) = name.filter(|n| !n.contains('/')) {
        refused(state, name, status);
    }
}

/// Registration and heartbeat take the same document and answer the same: what the server needs
/// to stay in step (the pin, and how often to report). A heartbeat from a server the Master does
/// not know (the Master restarted) simply registers it again.
pub(super) async fn report(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    registering: bool,
) -> Response {
    if let Err(r) = require(&state, &headers, "servers:register").await {
        refused(&state, &name, r.status());
        return r;
    }
    let report: servers::Status = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("not a server status: {e}"),
            );
        }
    };
    let c = state.current();
    let configured = c.domain.config.servers.contains_key(&name);
    if registering && !configured {
        return error(
            StatusCode::NOT_FOUND,
            "no such server in the pinned domain.toml",
        );
    }
    if let Some(view) = state.servers.report(&name, report, configured) {
        if registering {
            log::info(
                "Master-0020",
                &format!(
                    "Server {name} registered: {}, {}, running {}",
                    view.state,
                    view.mode.map_or("?", |m| m.as_str()),
                    view.applied_commit.as_deref().unwrap_or("?")
                ),
            );
        }
        state.events.send(Event::new("server", None, &view));
        state.rollouts.poke();
    }
    let m = &c.domain.config.master;
    let pinned = c.commit.to_hex();
    // Every server's view only for a rolling server with pending restarts (its turn depends on
    // the others'): a heartbeat of a thousand servers' domain should not cost a thousand views.
    let me = state.servers.one(&name, configured, m.heartbeat_timeout.0);
    let may_roll = !me.pending_restart.is_empty()
        && c.domain
            .config
            .servers
            .get(&name)
            .is_some_and(|s| s.restart_policy == schema::model::RestartPolicy::Rolling);
    let all;
    let views = if may_roll {
        all = state
            .servers
            .list(c.domain.config.servers.keys(), m.heartbeat_timeout.0);
        &all[..]
    } else {
        std::slice::from_ref(&me)
    };
    let restart = state.rolling.decide(&c.domain, &me, views, &pinned) == rolling::Step::Order
        && rolling_turn(&state, &c.domain, &me);
    let order = state.rollouts.take_order(&name);
    if let Some(o) = &order {
        log::info(
            "Master-0074",
            &format!(
                "Ordering {name} to {} (rollout {}).",
                match o.action {
                    reconciler::wire::OrderAction::Restart => "restart",
                    reconciler::wire::OrderAction::Stop => "stop",
                },
                o.rollout
            ),
        );
    }
    axum::Json(ReportReply {
        restart: restart && order.is_none(),
        order,
        pinned: Pinned {
            commit: pinned,
            at: c.at.clone(),
        },
        heartbeat_interval_ms: m.heartbeat_interval.0.as_millis() as u64,
        heartbeat_timeout_ms: m.heartbeat_timeout.0.as_millis() as u64,
    })
    .into_response()
}

/// A rolling restart's turn for `me`: routed as an operator's restart is
/// ([`reconciler::rollout::route`]): to the node agent of its machine when one is connected (it
/// supervises the server, so it restarts it), else to the server itself, which restarts through
/// its own launcher. Returns whether the server itself is ordered (`restart` in its answer).
fn rolling_turn(state: &State, domain: &schema::model::Domain, me: &servers::View) -> bool {
    let name = &me.name;
    let node = domain
        .config
        .servers
        .get(name)
        .map_or("", |s| s.node.as_str());
    let connected = state
        .nodes
        .connected(node, domain.config.master.heartbeat_timeout.0);
    let command = Command::Order {
        server: name.clone(),
        action: reconciler::wire::OrderAction::Restart,
    };
    let here = node == domain.config.master.node;
    let route = route(&command, connected.is_ok(), here);
    let through = match (&route, &connected) {
        (Route::Node, _) => format!("through the node agent of {node}"),
        // A domain that declares nodes expects an agent there: say that none is connected.
        (_, Err(since)) if domain.config.nodes.contains_key(node) => format!(
            "by the server itself: its node `{node}` is not connected (no agent polled {})",
            since
                .as_deref()
                .map_or("since the Master started".to_owned(), |at| format!(
                    "since {at}"
                ))
        ),
        _ => "by the server itself".to_owned(),
    };
    log::info(
        "Master-0022",
        &format!(
            "Ordering {name} to restart to apply {} (rolling: one server of {} at a time), {through}.",
            me.pending_restart.join(", "),
            rolling::group_of(domain, name)
        ),
    );
    if route == Route::Node {
        state.nodes.order(
            node,
            ROLLING,
            name,
            reconciler::wire::RolloutAction::Restart,
        );
        return false;
    }
    true
}
