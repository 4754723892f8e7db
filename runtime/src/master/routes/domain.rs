//! `GET /v1/domain`, `GET /v1/domain/history`, `POST /v1/domain/pin` (rollback).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::require;
use super::{error, internal};
use crate::master::MasterError;
use crate::master::state::{Rollback, State};
use reconciler::decide::DecideError;
use reconciler::pin::PinError;
use reconciler::wire::{Hold, PinReply, Pinned};

pub(super) async fn domain(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = require(&state, &headers, "domain:read").await {
        return r;
    }
    axum::Json(state.domain_doc()).into_response()
}

/// Records a history answer holds by default, and at most (`?limit=`).
const HISTORY_DEFAULT: usize = 100;
const HISTORY_MAX: usize = 1000;

pub(super) async fn history(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if let Err(r) = require(&state, &headers, "domain:read").await {
        return r;
    }
    let limit = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("limit="))
        .map_or(Ok(HISTORY_DEFAULT), str::parse::<usize>);
    let Ok(limit) = limit else {
        return error(
            StatusCode::BAD_REQUEST,
            "limit: expected a number of records",
        );
    };
    let limit = limit.clamp(1, HISTORY_MAX);
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.history()).await {
        Ok(Ok(records)) => {
            // Newest first.
            let newest: Vec<_> = records.into_iter().rev().take(limit).collect();
            axum::Json(newest).into_response()
        }
        Ok(Err(e)) => internal(&e.to_string()),
        Err(e) => internal(&e.to_string()),
    }
}

/// Body of `POST /v1/domain/pin`.
#[derive(serde::Deserialize)]
pub(super) struct PinRequest {
    /// Any revision Git understands; usually a full commit id from the history.
    commit: String,
}

/// Rollback (or roll forward) to a commit of the repository that validates.
///
/// Hosted mode ([`revert`]): the Master owns the branch, so the rollback is a new commit on it,
/// with the older commit's tree, and that commit is pinned: the branch and the pin agree, and the
/// next push builds on the rollback instead of silently bringing the rolled-back change back.
/// Mirror mode: the upstream owns the branch, so the older commit itself is pinned, the branch
/// head at that moment counts as decided, and the domain is held: later upstream heads are
/// recorded as held, not pinned, until an operator resumes.
pub(super) async fn pin(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let user = match require(&state, &headers, "domain:pin").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let req: PinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"commit\": \"<id>\"}}: {e}"),
            );
        }
    };
    let mut decided = state.decided.clone().lock_owned().await;
    let st = state.clone();
    let outcome = tokio::task::spawn_blocking(move || st.rollback(&req.commit, user)).await;
    let (head, record, current) = match outcome {
        Ok(Ok(Rollback::Done(done))) => *done,
        Ok(Ok(Rollback::Unchanged(commit))) => {
            let c = state.current();
            return axum::Json(PinReply {
                pinned: Pinned {
                    commit: commit.to_hex(),
                    at: c.at.clone(),
                },
                changed: false,
                branch_head: None,
            })
            .into_response();
        }
        Ok(Ok(Rollback::NotFound)) => {
            return error(
                StatusCode::NOT_FOUND,
                "no such commit in the domain repository",
            );
        }
        Ok(Ok(Rollback::Invalid(problems))) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(serde_json::json!({
                    "error": "the commit does not validate; it was not pinned",
                    "problems": problems,
                })),
            )
                .into_response();
        }
        Ok(Err(MasterError::Decide(DecideError::Pin(PinError::Conflict { .. })))) => {
            return error(StatusCode::CONFLICT, "the pin moved meanwhile; try again");
        }
        Ok(Err(MasterError::Decide(DecideError::Pin(PinError::BranchMoved { .. })))) => {
            return error(
                StatusCode::CONFLICT,
                "a push moved the branch meanwhile; nothing was rolled back, try again",
            );
        }
        Ok(Err(e)) => return internal(&e.to_string()),
        Err(e) => return internal(&e.to_string()),
    };
    *decided = head;
    drop(decided);
    if state.mirror.is_some() {
        let hold = Hold {
            since: record.at.clone(),
            by: record.pusher.clone().unwrap_or_default(),
            reason: "rollback".into(),
            held_head: None,
        };
        if let Err(e) = state.set_hold(Some(hold)) {
            // The rollback itself stands; say that the hold did not.
            return internal(&format!(
                "rolled back to {}, but the hold could not be kept: {e}",
                record.commit
            ));
        }
        state.announce_domain();
    }
    let body = PinReply {
        pinned: Pinned {
            commit: record.commit.clone(),
            at: record.at.clone(),
        },
        changed: true,
        branch_head: record.branch_head.clone(),
    };
    state.publish(record, Some(current));
    axum::Json(body).into_response()
}

/// `POST /v1/domain/hold` (mirror mode): stop pinning new upstream heads; they are validated and
/// recorded as held.
pub(super) async fn hold(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    let user = match require(&state, &headers, "domain:pin").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if state.mirror.is_none() {
        return hosted_conflict();
    }
    if state.hold().is_none() {
        let hold = Hold {
            since: reconciler::pin::now_rfc3339(),
            by: user.clone(),
            reason: "hold".into(),
            held_head: None,
        };
        // Under the decision lock, so no decision in flight pins past the hold.
        let guard = state.decided.clone().lock_owned().await;
        let set = state.set_hold(Some(hold));
        drop(guard);
        if let Err(e) = set {
            return internal(&e.to_string());
        }
        crate::master::log::info(
            "Master-0016",
            &format!(
                "The domain is held by {user}: new upstream heads are recorded as held, not pinned."
            ),
        );
        state.announce_domain();
    }
    axum::Json(state.domain_doc()).into_response()
}

/// `POST /v1/domain/resume` (mirror mode): clear the hold and decide on the upstream head now
/// (pinned if valid, whatever was decided about it before).
pub(super) async fn resume(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    let user = match require(&state, &headers, "domain:pin").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if state.mirror.is_none() {
        return hosted_conflict();
    }
    let mut guard = state.decided.clone().lock_owned().await;
    match state.set_hold(None) {
        Ok(false) => {
            drop(guard);
            return axum::Json(state.domain_doc()).into_response();
        }
        Ok(true) => {}
        Err(e) => return internal(&e.to_string()),
    }
    crate::master::log::info(
        "Master-0017",
        &format!("{user} resumed following the upstream."),
    );
    // Whatever was decided about the upstream head before (the head a rollback left), it is
    // decided again now, after a fetch of the newest.
    *guard = None;
    drop(guard);
    state.sync(reconciler::pin::Source::Resume).await;
    state.announce_domain();
    axum::Json(state.domain_doc()).into_response()
}

fn hosted_conflict() -> Response {
    error(
        StatusCode::CONFLICT,
        "the Master hosts this domain's repository: nothing arrives on its own to hold; a rollback already writes a commit on the branch",
    )
}
