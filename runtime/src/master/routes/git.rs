//! `/git/domain.git/…`: Git smart HTTP through `git http-backend`; pushes go through
//! [`crate::master::push`], which holds the decision lock and answers once the pin is decided.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State as AxState;
use axum::extract::{ConnectInfo, Path as UrlPath, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error;
use super::require;
use crate::master::conn::Conn;
use crate::master::metrics::GitOutcome;
use crate::master::state::State;
use crate::master::{cgi, packs, push};

/// `%XX` escapes and `+` decoded, as CGI programs (`git http-backend` among them) read a query.
/// Invalid escapes stay as they are.
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' => {
                match (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a request with this query string asks for the push service. Decoded first: the
/// backend decodes it too, so `service=git%2dreceive-pack` is a push. Any `service` other than
/// fetching counts as a push, the safe side.
pub(super) fn asks_to_push(query: &str) -> bool {
    query.split('&').any(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        percent_decode(k) == "service" && percent_decode(v) != "git-upload-pack"
    })
}

/// Git smart HTTP. Fetching needs `git:read`, pushing `git:push`.
pub(super) async fn git(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(conn): Extension<Arc<Conn>>,
    UrlPath(rest): UrlPath<String>,
    request: Request,
) -> Response {
    let query = request.uri().query().unwrap_or("").to_owned();
    let push = rest == "git-receive-pack" || asks_to_push(&query);
    let response = serve(&state, remote, conn, rest, query, push, request).await;
    let service = if push {
        "git-receive-pack"
    } else {
        "git-upload-pack"
    };
    state
        .metrics
        .git_request(service, GitOutcome::of(response.status().as_u16()));
    response
}

async fn serve(
    state: &Arc<State>,
    remote: SocketAddr,
    conn: Arc<Conn>,
    rest: String,
    query: String,
    push: bool,
    request: Request,
) -> Response {
    let permission = if push { "git:push" } else { "git:read" };
    let user = match require(state, request.headers(), permission).await {
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
    // The ref advertisement that starts every clone, fetch and push, from memory while the refs
    // stay as they were (see `master::advert`).
    let ask = if rest == "info/refs" && request.method() == axum::http::Method::GET {
        match state
            .adverts
            .answer(state.store.git_dir(), &query, request.headers())
        {
            Ok(kept) => return kept,
            Err(ask) => Some(ask),
        }
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
        user,
        remote: Some(remote),
        background: false,
    };
    // Only the POST that carries the pack changes refs; the ref advertisement is a read.
    if rest == "git-receive-pack" {
        return push::receive(state.clone(), conn, req, body).await;
    }
    // Fetches asking what another asked share its answer (see `master::packs`).
    if rest == "git-upload-pack" && req.method == axum::http::Method::POST {
        match packs::read(body).await {
            packs::Read::Small(bytes) => {
                let headers = req.headers.clone();
                return state
                    .packs
                    .answer(state.store.git_dir(), &headers, bytes, |body| {
                        backend(req.clone(), body)
                    })
                    .await;
            }
            packs::Read::Large(body) => return backend(req, body).await,
        }
    }
    let response = backend(req, body).await;
    match ask {
        Some(ask) => state.adverts.keep(ask, response),
        None => response,
    }
}

/// Runs `git http-backend` for `req`; a backend that outlives [`cgi::BACKEND_TIMEOUT`] is killed.
async fn backend(req: cgi::CgiRequest<'_>, body: axum::body::Body) -> Response {
    let (response, mut child) = match cgi::run(req, body).await {
        Ok(x) => x,
        Err(e) => return cgi::bad_gateway(&e),
    };
    tokio::spawn(async move {
        if tokio::time::timeout(cgi::BACKEND_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            cgi::kill_group(&child);
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_before_deciding_what_is_a_push() {
        assert!(asks_to_push("service=git-receive-pack"));
        assert!(asks_to_push("service=git%2dreceive-pack"));
        assert!(asks_to_push("service=git%2Dreceive%2Dpack"));
        assert!(asks_to_push("x=1&%73ervice=git-receive-pack"));
        assert!(asks_to_push("service=something-else"));
        assert!(!asks_to_push("service=git-upload-pack"));
        assert!(!asks_to_push("service=git%2Dupload-pack"));
        assert!(!asks_to_push(""));
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+%41"), "%zz A");
    }
}
