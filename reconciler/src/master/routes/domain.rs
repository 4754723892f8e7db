//! `GET /v1/domain`, `GET /v1/domain/history`, `POST /v1/domain/pin` (rollback).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{error, internal};
use crate::git::{NewCommit, Oid, Repo};
use crate::master::MasterError;
use crate::master::state::{Current, Rollback, State, describe, rollback_target};
use crate::pin::{Outcome, Source};

pub(super) async fn domain(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = state.require(&headers, "domain:read").await {
        return r;
    }
    let c = state.current();
    axum::Json(serde_json::json!({
        "name": c.domain.config.domain.name,
        "pinned": { "commit": c.commit.to_hex(), "at": c.at },
        "branch": state.branch,
        "mode": if state.mirror.is_some() { "mirror" } else { "hosted" },
        "upstream": state.mirror.as_ref().map(|m| m.status()),
        "master": state.vitals(),
    }))
    .into_response()
}

/// Records a history answer holds by default, and at most (`?limit=`).
const HISTORY_DEFAULT: usize = 100;
const HISTORY_MAX: usize = 1000;

pub(super) async fn history(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if let Err(r) = state.require(&headers, "domain:read").await {
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
/// Mirror mode: the upstream owns the branch, so the older commit itself is pinned and the branch
/// head at that moment counts as decided; the pin holds until the next commit arrives upstream.
pub(super) async fn pin(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let user = match state.require(&headers, "domain:pin").await {
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
    let hosted = state.mirror.is_none();
    let outcome = tokio::task::spawn_blocking(move || {
        if hosted {
            revert(&st, &req.commit, user)
        } else {
            st.rollback(&req.commit, user)
        }
    })
    .await;
    let (head, record, current) = match outcome {
        Ok(Ok(Rollback::Done(done))) => *done,
        Ok(Ok(Rollback::Unchanged(commit))) => {
            let c = state.current();
            return axum::Json(serde_json::json!({
                "pinned": { "commit": commit.to_hex(), "at": c.at },
                "changed": false,
            }))
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
        Ok(Err(MasterError::Pin(crate::pin::PinError::Conflict { .. }))) => {
            return error(StatusCode::CONFLICT, "the pin moved meanwhile; try again");
        }
        Ok(Err(MasterError::Pin(crate::pin::PinError::BranchMoved { .. }))) => {
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
    let body = serde_json::json!({
        "pinned": { "commit": record.commit, "at": record.at },
        "changed": true,
        "branch_head": record.branch_head,
    });
    state.publish(record, Some(current));
    axum::Json(body).into_response()
}

/// The committer of rollback commits.
const COMMITTER: (&str, &str) = ("Steward Master", "steward@localhost");
/// How many rolled-back commits a rollback's message lists one by one.
const LISTED: usize = 50;

/// Hosted mode's rollback: a commit on the branch whose tree is `rev`'s, authored by the
/// operator, naming the rolled-back range in its message; the branch and the pin move to it in
/// one ref transaction, each compared with what was read (a push in between fails it cleanly).
fn revert(state: &State, rev: &str, user: String) -> Result<Rollback, MasterError> {
    let git = |e: crate::git::GitError| MasterError::Git(e.to_string());
    let repo = Repo::open(state.store.git_dir()).map_err(git)?;
    let Ok(Some(target)) = repo.resolve(rev) else {
        return Ok(Rollback::NotFound);
    };
    let Some(head) = repo.resolve(&state.branch).map_err(git)? else {
        // No branch to write on (it was deleted): pin the commit itself.
        return state.rollback(rev, user);
    };
    let pinned = state.store.pinned()?;
    let tree = repo.tree_id(target).map_err(git)?;
    if pinned == Some(head) && repo.tree_id(head).map_err(git)? == tree {
        return Ok(Rollback::Unchanged(head));
    }
    let loaded = match rollback_target(&repo.tree(target).map_err(git)?) {
        Ok(loaded) => loaded,
        Err(invalid) => return Ok(invalid),
    };
    let message = message(&repo, target, head, &user).map_err(git)?;
    let commit = repo
        .write_commit(&NewCommit {
            tree,
            parents: vec![head],
            // The operator's account has no e-mail address; git accepts an empty one.
            author: (&user, ""),
            committer: COMMITTER,
            message,
        })
        .map_err(git)?;
    let mut record = describe(&repo, commit, Outcome::Pinned, Source::Rollback);
    record.pusher = Some(user);
    record.previous = pinned.map(|p| p.to_hex());
    record.branch_head = Some(commit.to_hex());
    state
        .store
        .set_with_branch(commit, pinned, &state.branch, head)?;
    state.store.append(&record)?;
    let current = Current {
        commit,
        at: record.at.clone(),
        domain: loaded.domain,
    };
    Ok(Rollback::Done(Box::new((Some(commit), record, current))))
}

/// The rollback commit's message: what it restores, who did it, and the commits it undoes.
fn message(
    repo: &Repo,
    target: Oid,
    head: Oid,
    user: &str,
) -> Result<String, crate::git::GitError> {
    let info = repo.commit_info(target)?;
    let (undone, reached) = repo.first_parents(head, target, LISTED)?;
    let mut out = format!(
        "Roll back to {}: {}\n\n{user} rolled the domain back through the Master \
         (POST /v1/domain/pin). This commit restores the configuration of\n{}.\n",
        target.short(),
        info.summary,
        target.to_hex()
    );
    if reached {
        out.push_str(&format!(
            "\nRolled back: {}..{}\n\n",
            target.short(),
            head.short()
        ));
    } else {
        out.push_str(&format!(
            "\nReplaced: the branch head {} (not a descendant of {} within {LISTED} commits), \
             most recent first:\n\n",
            head.short(),
            target.short()
        ));
    }
    for c in &undone {
        let i = repo.commit_info(*c)?;
        out.push_str(&format!("  {} {}\n", i.short_id, i.summary));
    }
    if !reached && undone.len() == LISTED {
        out.push_str("  …\n");
    }
    Ok(out)
}
