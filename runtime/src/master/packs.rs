//! Fetches (`POST /git/domain.git/git-upload-pack`) that ask exactly what another one asked, with
//! the refs as they were, share one run of the backend.
//!
//! When a pin lands, every machine's cache fetches it at once, and they all send the same request:
//! the same wants (the new pin), the same haves (the previous one), the same capabilities. Each
//! used to start `git http-backend` and `upload-pack` (and `pack-objects`): hundreds of processes
//! making the same bytes (benches/push_applied.py; docs/node.md). The first request of a kind runs
//! the backend; requests with the same body, headers and [`stamp`] of the refs that arrive while it
//! runs wait for it and get the same answer, and so do those that come soon after (the answer is
//! kept, bounded). An upload-pack answer is a function of the request and the repository: objects
//! never change for an id, and the refs stamp (taken before the backend ran) covers what depends on
//! refs (`ls-refs`, protocol v0 negotiation). Only complete `200` answers of a bounded size are
//! shared; anything else is passed on as the backend gave it, and a request that waited for such
//! an answer runs the backend itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use reconciler::git::stamp::{RefsStamp, stamp};
use tokio::sync::OnceCell;

/// A request body larger than this is not shared (a fetch of a pin sends a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;
/// An answer larger than this is not shared.
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// Answers kept at once, at most (with [`MAX_ANSWER`]: 64 MiB); all are dropped when the refs
/// change or this is full.
const MAX_KEYS: usize = 16;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `Content-Type`, `Content-Encoding`, `Git-Protocol`: they change what the body means.
    headers: [Option<String>; 3],
    body: Bytes,
}

#[derive(Clone)]
struct Kept {
    headers: HeaderMap,
    body: Bytes,
}

type Slot = Arc<OnceCell<Option<Kept>>>;

/// The slots of one refs stamp.
#[derive(Default)]
struct Slots {
    stamp: Option<RefsStamp>,
    slots: HashMap<Key, Slot>,
}

#[derive(Default)]
pub(super) struct Packs {
    slots: Mutex<Slots>,
}

/// A request body: read whole when it is small enough to share, else as it comes.
pub(super) enum Read {
    Small(Bytes),
    Large(Body),
}

/// Reads `body` up to [`MAX_REQUEST`]; a larger one is given back whole, as a stream.
pub(super) async fn read(body: Body) -> Read {
    match gather(body, MAX_REQUEST).await {
        Ok(bytes) => Read::Small(bytes),
        Err(body) => Read::Large(body),
    }
}

/// `body` whole if it ends within `max` bytes; else (or if it breaks) what came and what follows,
/// as a stream to pass on unchanged.
async fn gather(body: Body, max: usize) -> Result<Bytes, Body> {
    let mut stream = body.into_data_stream();
    let mut got: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if len + c.len() <= max => {
                len += c.len();
                got.push(c);
            }
            first => {
                let head = futures_util::stream::iter(got.into_iter().map(Ok).chain([first]));
                return Err(Body::from_stream(head.chain(stream)));
            }
        }
    }
    Ok(got.concat().into())
}

impl Packs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to an upload-pack request with `headers` and `body`: shared with identical
    /// requests, or made by `backend` (which gets the body back). `git_dir` gives the refs stamp.
    pub(super) async fn answer<F, Fut>(
        &self,
        git_dir: &Path,
        headers: &HeaderMap,
        body: Bytes,
        backend: F,
    ) -> Response
    where
        F: Fn(Body) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let Ok(stamp) = stamp(git_dir) else {
            return backend(Body::from(body)).await;
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let key = Key {
            headers: [
                header("content-type"),
                header("content-encoding"),
                header("git-protocol"),
            ],
            body: body.clone(),
        };
        let slot = {
            let mut s = self.lock();
            // New refs make every kept answer useless. Requests waiting on a dropped slot keep it
            // alive until its run ends.
            if s.stamp.as_ref() != Some(&stamp) || s.slots.len() >= MAX_KEYS {
                s.slots.clear();
                s.stamp = Some(stamp);
            }
            s.slots.entry(key).or_default().clone()
        };
        let mut ran: Option<Response> = None;
        let (ran_here, run, sent) = (&mut ran, &backend, body.clone());
        let kept = slot
            .get_or_init(|| async move {
                let (kept, whole) = collect(run(Body::from(sent)).await).await;
                *ran_here = Some(whole);
                kept
            })
            .await
            .clone();
        if let Some(r) = ran {
            return r;
        }
        match kept {
            Some(k) => {
                let mut r = Body::from(k.body).into_response();
                *r.headers_mut() = k.headers;
                r
            }
            // The shared run did not end with an answer to share: run it for this one.
            None => backend(Body::from(body)).await,
        }
    }
}

/// Reads `response` whole if it is a `200` of at most [`MAX_ANSWER`] bytes: returns what to keep
/// and the response to pass on (the same bytes, or, when it could not be kept, what came and
/// what follows, streamed).
async fn collect(response: Response) -> (Option<Kept>, Response) {
    if response.status() != StatusCode::OK {
        return (None, response);
    }
    let (parts, body) = response.into_parts();
    match gather(body, MAX_ANSWER).await {
        Ok(body) => {
            let kept = Kept {
                headers: parts.headers.clone(),
                body: body.clone(),
            };
            (Some(kept), Response::from_parts(parts, Body::from(body)))
        }
        Err(body) => (None, Response::from_parts(parts, body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in for `git http-backend`: counts its runs, answers `status` with `body` after a
    /// pause (so that requests overlap).
    async fn backend(runs: &AtomicUsize, status: StatusCode, body: &'static str) -> Response {
        runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        (status, body).into_response()
    }

    async fn text(r: Response) -> (StatusCode, Bytes) {
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, body)
    }

    #[tokio::test]
    async fn identical_fetches_share_one_run_until_the_refs_change() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let git_dir = dir.path();
        std::fs::create_dir_all(git_dir.join("refs/heads")).expect("refs");
        std::fs::write(git_dir.join("refs/heads/main"), "a\n").expect("a ref");
        let packs = Packs::default();
        let runs = AtomicUsize::new(0);
        let headers = HeaderMap::new();
        let ask = |body: &'static str| {
            packs.answer(git_dir, &headers, Bytes::from(body), |_| {
                backend(&runs, StatusCode::OK, "PACK-1")
            })
        };
        // Ten at once, and one after: one run of the backend, the same answer for all.
        let answers = futures_util::future::join_all((0..10).map(|_| ask("want b"))).await;
        for a in answers {
            assert_eq!(text(a).await, (StatusCode::OK, Bytes::from("PACK-1")));
        }
        text(ask("want b").await).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another request runs it again.
        text(ask("want c").await).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // So does the same request once a ref moved (git renames a new file into place).
        std::fs::write(git_dir.join("refs/heads/main.lock"), "b\n").expect("a ref");
        std::fs::rename(
            git_dir.join("refs/heads/main.lock"),
            git_dir.join("refs/heads/main"),
        )
        .expect("rename");
        text(ask("want b").await).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_answer_is_not_shared() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let packs = Packs::default();
        let runs = AtomicUsize::new(0);
        let headers = HeaderMap::new();
        let ask = || {
            packs.answer(dir.path(), &headers, Bytes::from("want b"), |_| {
                backend(&runs, StatusCode::INTERNAL_SERVER_ERROR, "no")
            })
        };
        let (a, b) = tokio::join!(ask(), ask());
        assert_eq!(text(a).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(text(b).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        // Each ran the backend: the one that waited for the first ran its own.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
