//! `GET /v1/commits/{rev}/plan`: what a commit of the domain repository changes.

use std::sync::Arc;

use axum::extract::Path as UrlPath;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{error, internal, require};
use crate::master::state::State;
use reconciler::commit_plan::{CommitPlan, commit_plan};
use reconciler::git::Repo;

/// The plan of `rev` against its parent, as `steward diff --format json` gives it, with the human
/// rendering in `text`. A commit that does not validate has no plan: 422 with its problems.
pub(super) async fn plan(
    AxState(state): AxState<Arc<State>>,
    UrlPath(rev): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require(&state, &headers, "domain:read").await {
        return r;
    }
    let git_dir = state.store.git_dir().to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        let repo = Repo::open(&git_dir)?;
        commit_plan(&repo, &rev)
    })
    .await;
    match outcome {
        Ok(Ok(CommitPlan::Plan(plan))) => {
            let mut doc = plan.to_json();
            doc["text"] = plan.render_human().into();
            axum::Json(doc).into_response()
        }
        Ok(Ok(CommitPlan::NotFound)) => error(
            StatusCode::NOT_FOUND,
            "no such commit in the domain repository",
        ),
        Ok(Ok(CommitPlan::Invalid(problems))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({
                "error": "the commit does not validate: it has no plan",
                "problems": problems,
            })),
        )
            .into_response(),
        Ok(Err(e)) => internal(&e.to_string()),
        Err(e) => internal(&e.to_string()),
    }
}
