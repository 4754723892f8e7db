//! `GET /v1/events`: Server-Sent Events (pins, rejections, server state changes).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::broadcast;

use super::require;

use crate::master::state::State;

pub(super) async fn events(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = require(&state, &headers, "events:read").await {
        return r;
    }
    let rx = state.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let sse = match rx.recv().await {
            Ok(ev) => {
                let e = SseEvent::default().event(ev.name).data(ev.data.clone());
                match &ev.id {
                    Some(id) => e.id(id.clone()),
                    None => e,
                }
            }
            // Tell the client it missed events so it can re-read /v1/domain.
            Err(broadcast::error::RecvError::Lagged(n)) => {
                SseEvent::default().event("lagged").data(n.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(sse), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
