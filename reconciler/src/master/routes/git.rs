//! `/git/domain.git/…`: Git smart HTTP through `git http-backend`; pushes hold the decision lock.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path as UrlPath, Request};

use crate::master::cgi;
use crate::master::state::State;
use crate::pin::Source;

/// Git smart HTTP. Fetching needs `git:read`, pushing `git:push`; a push holds the decision lock
/// until its commit is pinned or rejected.
pub(super) async fn git(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    UrlPath(rest): UrlPath<String>,
    request: Request,
) -> Response {
    let query = request.uri().query().unwrap_or("").to_owned();
    let push =
        rest == "git-receive-pack" || query.split('&').any(|p| p == "service=git-receive-pack");
    let permission = if push { "git:push" } else { "git:read" };
    let user = match state.require(request.headers(), permission).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if push && state.mirror.is_some() {
        // The upstream is the source of truth; a push here would be overwritten by the next fetch.
        return error(
            StatusCode::FORBIDDEN,
            "this Master mirrors an upstream repository: push there",
        );
    }
    // The backend serves the whole project root (`DOMAIN_HOME/config`); keep requests inside
    // domain.git.
    if rest.split('/').any(|c| c == ".." || c == ".") || rest.starts_with('/') {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Only the POST that carries the pack changes refs; the ref advertisement is a read.
    let guard = if rest == "git-receive-pack" {
        Some(state.decided.clone().lock_owned().await)
    } else {
        None
    };
    let (parts, body) = request.into_parts();
    let config = state.home.join("config");
    let req = cgi::CgiRequest {
        project_root: &config,
        path_info: format!("/domain.git/{rest}"),
        query,
        method: parts.method,
        headers: parts.headers,
        user: user.clone(),
        remote: Some(remote),
    };
    let (response, mut child, captured) = match cgi::run(req, body, guard.is_some()).await {
        Ok(x) => x,
        Err(e) => return cgi::bad_gateway(&e),
    };
    match guard {
        None => {
            tokio::spawn(async move {
                if tokio::time::timeout(cgi::BACKEND_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            });
        }
        Some(guard) => {
            let st = state.clone();
            tokio::spawn(async move {
                let done = tokio::time::timeout(cgi::BACKEND_TIMEOUT, child.wait()).await;
                if done.is_err() {
                    let _ = child.kill().await;
                }
                let Some(c) = captured else {
                    st.reconcile(Source::Push, Some(user), Some(guard)).await;
                    return;
                };
                // The whole answer is needed to see what the hook refused. Bounded: a client that
                // stops reading must not hold the push lock for long.
                let _ = tokio::time::timeout(Duration::from_secs(60), c.eof).await;
                st.reconcile(Source::Push, Some(user.clone()), Some(guard))
                    .await;
                let request = c.request.lock().map(|b| b.clone()).unwrap_or_default();
                let response = c.response.lock().map(|b| b.clone()).unwrap_or_default();
                st.record_refusal(&request, &response, user).await;
                // Only now may `git push` return: the pin (or the rejection) is already public.
                let _ = c.release.send(());
            });
        }
    }
    response
}
