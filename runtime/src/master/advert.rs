//! Ref advertisements (`GET /git/domain.git/info/refs?service=…`) answered from memory while the
//! refs stay as they were.
//!
//! Every clone, fetch and push starts with one, and `git http-backend` makes it by starting
//! `receive-pack` or `upload-pack`: two processes for a few hundred bytes that change only when a
//! ref does. The first answer for a (query, `Git-Protocol`) pair is kept with the
//! [`stamp`](reconciler::git::stamp) of the refs taken *before* the backend ran; a later request
//! whose stamp is the same gets the same bytes. A ref that moved while the backend ran changes
//! the stamp, so that answer is replaced at the next request: a kept answer is never older than
//! what the refs were when its stamp was taken. Only complete `200` answers of a bounded size are
//! kept; anything else is passed on as the backend gave it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use reconciler::git::stamp::{RefsStamp, stamp};

/// An advertisement larger than this is not kept (a domain repository has a handful of refs).
const MAX_KEPT: usize = 256 * 1024;
/// Distinct (query, protocol) pairs kept; clients use a few.
const MAX_KEYS: usize = 16;

#[derive(Default)]
pub(super) struct Adverts {
    kept: Arc<Mutex<HashMap<Key, Kept>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    query: String,
    protocol: Option<String>,
}

#[derive(Clone)]
struct Kept {
    stamp: RefsStamp,
    headers: HeaderMap,
    body: Bytes,
}

/// The part of a request that decides its advertisement.
pub(super) struct Ask {
    key: Key,
    stamp: Option<RefsStamp>,
}

impl Adverts {
    /// The kept answer to `query` with `headers`, if the refs of `git_dir` have not changed since;
    /// otherwise what [`Adverts::keep`] needs to keep the backend's answer.
    pub(super) fn answer(
        &self,
        git_dir: &Path,
        query: &str,
        headers: &HeaderMap,
    ) -> Result<Response, Ask> {
        let key = Key {
            query: query.to_owned(),
            protocol: headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        // Without a stamp nothing is kept or served: the backend answers as before.
        let stamp = stamp(git_dir).ok();
        let kept = self.lock().get(&key).cloned();
        match (stamp, kept) {
            (Some(now), Some(k)) if k.stamp == now => {
                let mut r = Body::from(k.body).into_response();
                *r.headers_mut() = k.headers;
                Ok(r)
            }
            _ => Err(Ask { key, stamp }),
        }
    }

    /// Passes the backend's `response` to `ask` on, and keeps it once it has been read whole if it
    /// is a `200` of at most [`MAX_KEPT`] bytes.
    pub(super) fn keep(&self, ask: Ask, response: Response) -> Response {
        let Some(stamp) = ask.stamp else {
            return response;
        };
        if response.status() != StatusCode::OK {
            return response;
        }
        let (parts, body) = response.into_parts();
        let kept = self.kept.clone();
        let headers = parts.headers.clone();
        let key = ask.key;
        // Streamed as it comes, copied aside while it fits; kept only when the backend ended well.
        let stream = futures_util::stream::unfold(
            (body.into_data_stream(), Some(Vec::new())),
            move |(mut body, mut copy)| {
                let (kept, headers, key) = (kept.clone(), headers.clone(), key.clone());
                async move {
                    match body.next().await {
                        Some(Ok(chunk)) => {
                            copy = copy.filter(|c| c.len() + chunk.len() <= MAX_KEPT);
                            if let Some(c) = copy.as_mut() {
                                c.extend_from_slice(&chunk);
                            }
                            Some((Ok(chunk), (body, copy)))
                        }
                        Some(Err(e)) => Some((Err(e), (body, None))),
                        None => {
                            if let Some(c) = copy.take() {
                                let mut kept = lock(&kept);
                                if kept.len() >= MAX_KEYS && !kept.contains_key(&key) {
                                    kept.clear();
                                }
                                let body = Bytes::from(c);
                                kept.insert(
                                    key,
                                    Kept {
                                        stamp,
                                        headers,
                                        body,
                                    },
                                );
                            }
                            None
                        }
                    }
                }
            },
        );
        Response::from_parts(parts, Body::from_stream(stream))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Kept>> {
        lock(&self.kept)
    }
}

fn lock(kept: &Mutex<HashMap<Key, Kept>>) -> std::sync::MutexGuard<'_, HashMap<Key, Kept>> {
    kept.lock().unwrap_or_else(|p| p.into_inner())
}
