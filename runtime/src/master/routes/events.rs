//! `GET /v1/events`: Server-Sent Events (pins, rejections, server state changes).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};

use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::broadcast;

use super::require;

use crate::master::state::State;

/// `?events=pinned,order`: only those kinds (and `lagged`). A Managed Server needs pins and its
/// orders, not every other server's state change: without the filter, a pin on a domain of N
/// servers sends N² `server` events, one per server to each. The filter is the channel itself
/// ([`crate::master::bus`]), so such a stream is not even woken by other kinds.
pub(super) async fn events(
    AxState(state): AxState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require(&state, &headers, "events:read").await {
        return r;
    }
    let rx = state.events.subscribe(uri.query().and_then(kinds));
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

/// The kinds `?events=a,b` asks for (`None`: every kind).
fn kinds(query: &str) -> Option<Vec<String>> {
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == "events").then(|| {
            super::git::percent_decode(v)
                .split(',')
                .map(|k| k.trim().to_owned())
                .collect()
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_kinds_asked_for() {
        assert_eq!(
            super::kinds("x=1&events=pinned%2Corder"),
            Some(vec!["pinned".to_owned(), "order".to_owned()])
        );
        assert_eq!(super::kinds("x=1"), None);
    }
}
