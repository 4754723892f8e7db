//! The Master's HTTP API (docs/api.md), one module per concern; what they share: the router,
//! error answers, and the routes that need no state of their own.

mod commits;
mod domain;
mod events;
mod git;
mod hooks;
mod nodes;
mod rollouts;
mod scrape;
mod servers;
mod timers;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

use super::conn::Peer;
use super::log;
use super::state::State;
use crate::auth;

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(super::webadmin::page))
        .route("/webadmin.js", get(super::webadmin::script))
        .route("/webadmin.css", get(super::webadmin::style))
        .route("/v1/me", get(super::webadmin::me))
        .route("/v1/commits/{rev}/plan", get(commits::plan))
        .route("/v1/domain", get(domain::domain))
        .route("/v1/domain/history", get(domain::history))
        .route("/v1/domain/pin", post(domain::pin))
        .route("/v1/domain/hold", post(domain::hold))
        .route("/v1/domain/resume", post(domain::resume))
        .route("/v1/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/v1/rollouts/{id}", get(rollouts::get))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{name}/poll", post(nodes::poll))
        .route("/v1/nodes/{name}/done", post(nodes::done))
        .route("/v1/servers/{name}/register", post(servers::register))
        .route("/v1/servers/{name}/heartbeat", post(servers::heartbeat))
        .route("/v1/servers/{name}/restart", post(rollouts::restart))
        .route("/v1/servers/{name}/stop", post(rollouts::stop))
        .route("/v1/servers/{name}/start", post(rollouts::start_one))
        .route("/v1/servers/{name}/timers/cancel", post(timers::cancel))
        .route("/v1/timers", get(timers::list))
        .route("/v1/hooks/git", post(hooks::webhook))
        .route("/v1/events", get(events::events))
        .route("/v1/servers", get(servers::list_servers))
        .route("/v1/servers/{name}", get(servers::one_server))
        .route("/git/domain.git/{*rest}", any(git::git))
        .route("/metrics", get(scrape::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// In front of every route: marks the connection busy until the response is sent (see
/// [`super::conn`]), and authenticates before anything else happens. Without valid credentials
/// every method and path but `/healthz` gets the same 401: no route, method or body size is
/// revealed, and no body is read. A webhook call carrying a signature is let through to its route,
/// which verifies the signature over the body (bounded by the default body limit).
async fn gate(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let busy = peer.conn.begin();
    let path = req.uri().path();
    let open = path == "/healthz"
        || (path == "/v1/hooks/git"
            && state.mirror.is_some()
            && super::mirror::signed(req.headers()));
    let user = if open {
        Ok(None)
    } else {
        authenticate(&state, req.headers(), Some(peer.addr.ip()))
            .await
            .map(Some)
    };
    let response = match user {
        Err(refused) => {
            servers::refused_report(&state, req.method(), req.uri().path(), refused.status());
            refused
        }
        // A signed webhook is proven by its signature, not by credentials a browser could send.
        Ok(ref user)
            if !open && let Err(refused) = super::csrf::check(req.method(), req.headers()) =>
        {
            csrf_refusal(refused, &req, user.as_deref().unwrap_or(""))
        }
        Ok(user) => {
            req.extensions_mut().insert(ConnectInfo(peer.addr));
            req.extensions_mut().insert(peer.conn.clone());
            // The routes' permission checks use this user instead of verifying the credentials
            // again ([`State::require`]).
            AUTHENTICATED.scope(user, next.run(req)).await
        }
    };
    response.map(|body| Body::new(Held { body, _busy: busy }))
}

tokio::task_local! {
    /// The user the gate authenticated for the request being handled (`None` on open routes).
    pub(super) static AUTHENTICATED: Option<String>;
}

/// A response body that keeps its connection marked busy until it is sent or dropped.
struct Held {
    body: Body,
    _busy: super::conn::Busy,
}

impl axum::body::HttpBody for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    // Forwarded, so that a body of known length keeps its `Content-Length`.
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Unknown routes need credentials too, so probing does not map the API.
pub(super) async fn not_found(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    match require(&state, &headers, "domain:read").await {
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(r) => r,
    }
}

/// The authenticated user, or the response to send instead: 401 without valid credentials,
/// 503 or 429 (with `Retry-After`) while verifications are bounded (see [`auth`]). `from`: the
/// client's address, whose failures count. The router checks this before any route is
/// chosen or any body read; routes then call [`require`].
pub(super) async fn authenticate(
    state: &State,
    headers: &HeaderMap,
    from: Option<std::net::IpAddr>,
) -> Result<String, Response> {
    auth::authenticate(&state.auth, &state.current().domain, headers, from).await
}

/// The authenticated user, or the response to send instead: the user the router's gate
/// authenticated (else, on a route the gate leaves open, as [`authenticate`]), and 403
/// when the user lacks `permission`. Neither says which part was wrong.
pub(super) async fn require(
    state: &Arc<State>,
    headers: &HeaderMap,
    permission: &str,
) -> Result<String, Response> {
    let gated = AUTHENTICATED.try_with(Clone::clone).ok().flatten();
    let user = match gated {
        Some(user) => user,
        None => authenticate(state, headers, None).await?,
    };
    if !state.current().domain.permits(&user, permission) {
        return Err(StatusCode::FORBIDDEN.into_response());
    }
    Ok(user)
}

pub(super) use crate::auth::unauthorized;

fn csrf_refusal(refused: super::csrf::Refused, req: &Request, user: &str) -> Response {
    let status = match refused {
        super::csrf::Refused::CrossSite => {
            // Someone's page tried to use a logged-in browser: worth an operator's attention.
            log::limited(
                log::Level::Warning,
                "Master-0080",
                &format!(
                    "Refused a cross-site {} {} with the credentials of {user}: a page of another site made a logged-in browser send it.",
                    req.method(),
                    req.uri().path()
                ),
            );
            StatusCode::FORBIDDEN
        }
        super::csrf::Refused::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
    };
    error(status, &refused.to_string())
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
