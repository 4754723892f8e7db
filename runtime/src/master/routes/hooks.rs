//! `POST /v1/hooks/git`: push notifications from GitHub and GitLab in mirror mode.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::require;
use super::{error, unauthorized};
use crate::master::mirror;
use crate::master::state::State;
use reconciler::pin::Source;

/// Mirror mode: a push notification from GitHub or GitLab (or anything that POSTs). Verified by
/// the shared secret (GitHub's HMAC signature, GitLab's token) when the call carries one, else by
/// HTTP Basic with `git:push`. A push to another branch is acknowledged and ignored; otherwise the
/// Master fetches and decides before answering.
pub(super) async fn webhook(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(mirror) = &state.mirror else {
        if let Err(r) = require(&state, &headers, "git:push").await {
            return r;
        }
        return error(
            StatusCode::NOT_FOUND,
            "this Master hosts the repository; webhooks are for mirror mode",
        );
    };
    let signed = mirror
        .upstream
        .secret
        .as_deref()
        .and_then(|secret| mirror::verify_webhook(&headers, &body, secret));
    match signed {
        Some(true) => {}
        Some(false) => return unauthorized(),
        None => {
            if let Err(r) = require(&state, &headers, "git:push").await {
                return r;
            }
        }
    }
    let branch = format!("refs/heads/{}", mirror.upstream.branch);
    if let Some(r) = mirror::payload_ref(&body)
        && r != branch
    {
        return axum::Json(serde_json::json!({ "outcome": "ignored", "ref": r })).into_response();
    }
    axum::Json(state.sync(Source::Webhook).await).into_response()
}
