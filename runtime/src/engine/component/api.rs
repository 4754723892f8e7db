//! The timer service's local API (docs/components.md), on 127.0.0.1 at `STEWARD_TIMER_URL`.
//! A component authenticates with `Authorization: Bearer $STEWARD_TIMER_TOKEN`: the token names
//! the application and carries an HMAC of its name under a secret drawn at each boot, so one
//! application can neither see nor touch another's timers. The token is checked before a body
//! is read.
//!
//! - `POST /timers` `{"id", "name"?, "info"?, one of "schedule" (+ "time-zone") / "interval" /
//!   "at", "persistent"?, "misfire"?}` → 201 and the timer, once stored; 409 if the id exists.
//! - `GET /timers` → the application's timers.
//! - `DELETE /timers/{id}` → 204; 404 if there is none; 409 for a declared timer.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;

use schema::model::Misfire;

use super::store::Spec;
use super::{ComponentEngine, TimerError};

/// Bodies larger than this are refused (a timer's `info` is meant to be small).
pub const MAX_BODY: usize = 64 << 10;

/// `POST /timers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CreateTimer {
    pub id: String,
    /// The callback path segment (`/timers/<name>`); defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub info: Option<serde_json::Value>,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
    /// `"5m"`, `"30s"`, `"500ms"`.
    #[serde(default)]
    pub interval: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub persistent: Option<bool>,
    #[serde(default)]
    pub misfire: Option<Misfire>,
}

impl CreateTimer {
    /// The timer's spec and callback name, or what is wrong with the request.
    pub fn check(&self) -> Result<(Spec, String), TimerError> {
        let bad = |m: String| TimerError::Invalid(m);
        if self.id.is_empty()
            || self.id.len() > 200
            || self.id.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(bad(
                "`id` must be 1 to 200 characters, without `/` or control characters".into(),
            ));
        }
        let name = self.name.clone().unwrap_or_else(|| self.id.clone());
        schema::values::check_ident(&name)
            .map_err(|e| bad(format!("`name` (the callback path `/timers/<name>`): {e}")))?;
        let spec = match (&self.schedule, &self.interval, &self.at) {
            (Some(s), None, None) => {
                schema::timer::Cron::parse(s).map_err(|e| bad(e.to_string()))?;
                let tz = self.time_zone.clone().unwrap_or_else(|| "UTC".into());
                schema::timer::time_zone(&tz).map_err(|e| bad(e.to_string()))?;
                Spec::Schedule {
                    schedule: s.clone(),
                    time_zone: tz,
                }
            }
            (None, Some(i), None) => {
                let d = schema::values::parse_duration(i).map_err(|e| bad(e.to_string()))?;
                if d.is_zero() {
                    return Err(bad("`interval` must be at least `1ms`".into()));
                }
                Spec::Interval {
                    every_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                }
            }
            (None, None, Some(a)) => {
                schema::timer::instant(a).map_err(|e| bad(e.to_string()))?;
                Spec::At { at: a.clone() }
            }
            _ => {
                return Err(bad(
                    "give exactly one of `schedule` (with `time-zone`), `interval`, `at`".into(),
                ));
            }
        };
        if self.time_zone.is_some() && !matches!(spec, Spec::Schedule { .. }) {
            return Err(bad("`time-zone` goes with `schedule` only".into()));
        }
        Ok((spec, name))
    }
}

/// The application a request was authenticated as.
#[derive(Debug, Clone)]
struct App(String);

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.to_string() })),
    )
        .into_response()
}

/// Before any route: the bearer token, checked before the body is read.
async fn gate(State(engine): State<ComponentEngine>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(app) = token.and_then(|t| engine.inner.token_app(t)) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer $STEWARD_TIMER_TOKEN`",
        );
    };
    if !engine.deployed(app) {
        return error(
            StatusCode::FORBIDDEN,
            format!("application {app} is not a component deployed on this server"),
        );
    }
    let app = App(app.to_owned());
    req.extensions_mut().insert(app);
    next.run(req).await
}

fn refused(e: TimerError) -> Response {
    let status = match &e {
        TimerError::Invalid(_) => StatusCode::BAD_REQUEST,
        TimerError::Exists { .. } | TimerError::Declared { .. } => StatusCode::CONFLICT,
        TimerError::NotFound { .. } => StatusCode::NOT_FOUND,
        TimerError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e)
}

async fn list(
    State(engine): State<ComponentEngine>,
    axum::Extension(App(app)): axum::Extension<App>,
) -> Response {
    axum::Json(engine.app_timers(&app)).into_response()
}

async fn create(
    State(engine): State<ComponentEngine>,
    axum::Extension(App(app)): axum::Extension<App>,
    body: axum::body::Bytes,
) -> Response {
    let req: CreateTimer = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid timer: {e}")),
    };
    // The store write (fsync) blocks: off the runtime's workers.
    let result = tokio::task::spawn_blocking(move || engine.create(&app, req)).await;
    match result {
        Ok(Ok(t)) => (StatusCode::CREATED, axum::Json(t)).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn cancel(
    State(engine): State<ComponentEngine>,
    axum::Extension(App(app)): axum::Extension<App>,
    Path(id): Path<String>,
) -> Response {
    let result = tokio::task::spawn_blocking(move || engine.cancel(&app, &id)).await;
    match result {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Serves the local API on `tcp` until the engine shuts down.
pub(super) async fn serve(engine: ComponentEngine, tcp: tokio::net::TcpListener) {
    let mut stop = engine.inner.shutdown.subscribe();
    let app = Router::new()
        .route("/timers", get(list).post(create))
        .route("/timers/{id}", delete(cancel))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(engine.clone(), gate))
        .with_state(engine);
    let _ = axum::serve(tcp, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> CreateTimer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_run_time_timer_has_exactly_one_schedule_and_a_usable_name() {
        let (spec, name) = req(r#"{"id": "order-7", "interval": "30s"}"#)
            .check()
            .unwrap();
        assert_eq!(spec, Spec::Interval { every_ms: 30_000 });
        assert_eq!(name, "order-7");
        let (spec, _) = req(r#"{"id": "n", "schedule": "0 3 * * *", "time-zone": "Asia/Seoul"}"#)
            .check()
            .unwrap();
        assert_eq!(
            spec,
            Spec::Schedule {
                schedule: "0 3 * * *".into(),
                time_zone: "Asia/Seoul".into()
            }
        );
        for (bad, says) in [
            (r#"{"id": "a"}"#, "exactly one of"),
            (
                r#"{"id": "a", "interval": "1s", "at": "2027-01-01T00:00:00Z"}"#,
                "exactly one of",
            ),
            (r#"{"id": "a/b", "interval": "1s"}"#, "without `/`"),
            (r#"{"id": "", "interval": "1s"}"#, "1 to 200"),
            (
                r#"{"id": "a", "name": "no/slash", "interval": "1s"}"#,
                "`name`",
            ),
            (r#"{"id": "a", "interval": "0ms"}"#, "at least `1ms`"),
            (r#"{"id": "a", "at": "tomorrow"}"#, "RFC 3339"),
            (
                r#"{"id": "a", "interval": "1s", "time-zone": "UTC"}"#,
                "goes with `schedule`",
            ),
        ] {
            let e = req(bad).check().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
