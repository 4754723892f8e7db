//! `GET /v1/timers` and `POST /v1/servers/{name}/timers/cancel` (docs/api.md): the timers of the
//! domain's component engines, for `steward admin timers` and the WebAdmin page. Servers push
//! their status to the Master but not their timers (a server may hold 100,000 of them), so
//! these routes ask the servers, on their base address, with the operator's own credentials:
//! each server authenticates them and checks the permission again against its applied commit.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path as UrlPath;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{error, require};
use crate::auth::parse_basic;
use crate::client::{Client, ClientError};
use crate::master::log;
use crate::master::servers::ServerState;
use crate::master::state::{Event, State};

/// How long a server may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest cancel body read (`{"application", "id"}`).
const MAX_BODY: usize = 4096;

/// `GET /v1/timers`.
#[derive(Debug, Serialize)]
struct Listing {
    timers: Vec<Value>,
    /// Servers that were asked and did not answer, or were not asked (not running).
    unavailable: Vec<Unavailable>,
}

#[derive(Debug, Serialize)]
struct Unavailable {
    server: String,
    /// Whether the server was asked (it is running); a stopped one is not.
    asked: bool,
    error: String,
}

/// `POST /v1/servers/{name}/timers/cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cancel {
    application: String,
    id: String,
}

/// The event and the answer of a cancel.
#[derive(Debug, Serialize)]
struct Cancelled {
    server: String,
    application: String,
    id: String,
    by: String,
    at: String,
    timer: Value,
}

/// The base address of `server`'s management API as the Master reaches it: its `listen`
/// address, or (when it listens on every address) its node's address.
fn server_base(domain: &schema::model::Domain, server: &str) -> Option<String> {
    let s = domain.config.servers.get(server)?;
    let ip = s.listen.ip();
    let host = if !ip.is_unspecified() {
        ip.to_string()
    } else {
        let address = domain
            .config
            .nodes
            .get(&s.node)
            .map_or(s.node.as_str(), |n| n.address.as_str());
        match address {
            "localhost" if ip.is_ipv4() => "127.0.0.1".to_owned(),
            "localhost" => "::1".to_owned(),
            a => a.to_owned(),
        }
    };
    Some(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("http://[{v6}]:{}", s.listen.port()),
        _ => format!("http://{host}:{}", s.listen.port()),
    })
}

/// A path segment, percent-encoded (a timer id may hold any character but `/`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A client for `server` with the request's own Basic credentials.
fn client_for(base: &str, headers: &HeaderMap) -> Result<Client, ClientError> {
    let creds = parse_basic(headers);
    Client::new(
        base,
        creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        Duration::from_secs(5),
        TIMEOUT,
    )
}

/// What a server's refusal says, for the operator.
fn message(server: &str, status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (status, v["error"].as_str()) {
        (_, Some(e)) => e.to_owned(),
        (401, None) => format!(
            "{server} refused these credentials (401): it checks them against the commit it applied"
        ),
        (403, None) => format!("{server} refused: the user lacks the permission there (403)"),
        (s, None) => format!("{server} answered {s}"),
    }
}

/// The state an operator reads first: `orphaned`, `failed` (the last firing failed), `retrying`,
/// `ok` (the last firing succeeded) or `waiting` (none yet).
fn state_of(t: &Value, orphaned: bool) -> &'static str {
    if orphaned {
        return "orphaned";
    }
    match t["last"]["result"].as_str() {
        Some("failed") => "failed",
        Some("retrying") => "retrying",
        Some(_) => "ok",
        None => "waiting",
    }
}

/// The timers of one server's `GET /v1/components`, each with `server`, `state` and (for
/// timers of a component) `component_state`.
fn rows(server: &str, report: &Value, app: Option<&str>) -> Vec<Value> {
    let wanted = |t: &Value| app.is_none_or(|a| t["app"] == a);
    let mut out = Vec::new();
    let mut push = |t: &Value, orphaned: bool, component: Option<&Value>| {
        if !wanted(t) {
            return;
        }
        let mut t = t.clone();
        let state = state_of(&t, orphaned);
        if let Some(o) = t.as_object_mut() {
            o.insert("server".into(), server.into());
            o.insert("state".into(), state.into());
            if let Some(c) = component {
                o.insert("component_state".into(), c.clone());
            }
        }
        out.push(t);
    };
    for c in report["components"].as_array().into_iter().flatten() {
        for t in c["timers"].as_array().into_iter().flatten() {
            push(t, false, Some(&c["state"]));
        }
    }
    for t in report["orphaned"].as_array().into_iter().flatten() {
        push(t, true, None);
    }
    out
}

/// The configured servers, for an error naming them.
fn known(domain: &schema::model::Domain) -> String {
    domain
        .config
        .servers
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /v1/timers[?server=NAME][&application=APP]` (`servers:read`).
pub(super) async fn list(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if let Err(r) = require(&state, &headers, "servers:read").await {
        return r;
    }
    let param = |name: &str| {
        query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let (server, app) = (param("server"), param("application"));
    let c = state.current();
    let domain = &c.domain;
    if let Some(s) = &server
        && !domain.config.servers.contains_key(s)
    {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "no server {s} in the domain; its servers: {}",
                known(domain)
            ),
        );
    }
    let views = state.servers.list(
        domain.config.servers.keys(),
        domain.config.master.heartbeat_timeout.0,
    );
    let mut asked = Vec::new();
    let mut unavailable = Vec::new();
    for v in views {
        if server.as_ref().is_some_and(|s| *s != v.name) {
            continue;
        }
        let base = server_base(domain, &v.name);
        match (v.state, base) {
            (ServerState::Running | ServerState::Starting, Some(base)) => {
                asked.push((v.name.clone(), base))
            }
            (st, _) => unavailable.push(Unavailable {
                server: v.name.clone(),
                asked: false,
                error: format!("not running ({})", st.as_str()),
            }),
        }
    }
    // The servers are asked at once, each on a blocking thread of its own (their client is).
    let tasks: Vec<_> = asked
        .into_iter()
        .map(|(name, base)| {
            let headers = headers.clone();
            tokio::task::spawn_blocking(move || {
                let resp = client_for(&base, &headers).and_then(|c| c.get("/v1/components"));
                (name, resp)
            })
        })
        .collect();
    let mut timers = Vec::new();
    for t in tasks {
        let Ok((name, resp)) = t.await else { continue };
        match resp {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<Value>(&r.body) {
                Ok(report) => timers.extend(rows(&name, &report, app.as_deref())),
                Err(e) => unavailable.push(Unavailable {
                    server: name,
                    asked: true,
                    error: format!("its answer is not the expected document: {e}"),
                }),
            },
            Ok(r) => unavailable.push(Unavailable {
                asked: true,
                error: message(&name, r.status, &r.body),
                server: name,
            }),
            Err(e) => unavailable.push(Unavailable {
                server: name,
                asked: true,
                error: e.to_string(),
            }),
        }
    }
    axum::Json(Listing {
        timers,
        unavailable,
    })
    .into_response()
}

/// `POST /v1/servers/{name}/timers/cancel` with `{"application", "id"}` (`servers:control`,
/// checked before the body is read): forwarded to the server, which answers once the removal
/// is committed to its timer store; audited in the Master's log and as a `timer` event.
pub(super) async fn cancel(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let user = match require(&state, &headers, "servers:control").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let req: Cancel = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"application\": \"APP\", \"id\": \"TIMER-ID\"}}: {e}"),
            );
        }
    };
    let c = state.current();
    let Some(base) = server_base(&c.domain, &name) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "no server {name} in the domain; its servers: {}",
                known(&c.domain)
            ),
        );
    };
    let path = format!(
        "/v1/components/{}/timers/{}",
        segment(&req.application),
        segment(&req.id)
    );
    let forwarded = {
        let headers = headers.clone();
        tokio::task::spawn_blocking(move || client_for(&base, &headers)?.delete(&path)).await
    };
    let resp = match forwarded {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_GATEWAY,
                &format!("cannot reach {name}: {e}"),
            );
        }
        Err(e) => return super::internal(&format!("cancelling a timer: {e}")),
    };
    if resp.status != 200 {
        // The Master accepted these credentials: the server refusing them is no 401 of ours.
        let status = match resp.status {
            401 => StatusCode::BAD_GATEWAY,
            s => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
        };
        return error(status, &message(&name, resp.status, &resp.body));
    }
    let doc = Cancelled {
        server: name,
        application: req.application,
        id: req.id,
        by: user,
        at: reconciler::pin::now_rfc3339(),
        timer: serde_json::from_slice(&resp.body).unwrap_or(Value::Null),
    };
    log::info(
        "Master-0075",
        &format!(
            "Timer {}/{} on {} was cancelled by {}.",
            doc.application, doc.id, doc.server, doc.by
        ),
    );
    state.events.send(Event::new("timer", None, &doc));
    axum::Json(doc).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(segment("order-42"), "order-42");
        assert_eq!(segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(segment("주문"), "%EC%A3%BC%EB%AC%B8");
    }

    #[test]
    fn rows_carry_their_server_and_state_and_follow_the_filter() {
        let report = json!({
            "components": [{"name": "jobs", "state": "ready", "timers": [
                {"app": "jobs", "id": "a", "last": {"result": "failed"}},
                {"app": "jobs", "id": "b", "last": null}]}],
            "orphaned": [{"app": "old", "id": "c", "renamed_to": "jobs"}]
        });
        let all = rows("s1", &report, None);
        let states: Vec<(&str, &str)> = all
            .iter()
            .map(|t| (t["id"].as_str().unwrap(), t["state"].as_str().unwrap()))
            .collect();
        assert_eq!(
            states,
            [("a", "failed"), ("b", "waiting"), ("c", "orphaned")]
        );
        assert!(all.iter().all(|t| t["server"] == "s1"));
        assert_eq!(all[0]["component_state"], "ready");
        assert_eq!(rows("s1", &report, Some("old")).len(), 1);
    }
}
