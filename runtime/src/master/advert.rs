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
use std::path::{Path, PathBuf};
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

#[derive(Default, Clone)]
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

    /// Makes again, in the background, every kept answer that the refs of `git_dir` no longer
    /// match: called when a decision moved a ref (a push, a pin), so that the next push's and
    /// every launcher's next fetch's advertisement is answered from memory too, where each would
    /// otherwise wait for the backend's two processes (about 12 ms of a 35 ms plain push here).
    pub(super) fn refresh(&self, project_root: PathBuf, git_dir: &Path) {
        let Ok(now) = stamp(git_dir) else {
            return;
        };
        let stale: Vec<Key> = self
            .lock()
            .iter()
            .filter(|(_, k)| k.stamp != now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            let (adverts, root) = (self.clone(), project_root.clone());
            // `now` was taken before the backend runs, as `keep` requires of a stamp.
            let ask = Ask {
                key,
                stamp: Some(now),
            };
            tokio::spawn(async move { adverts.remake(&root, ask).await });
        }
    }

    /// One kept answer made again: the backend run as for a request of `ask`'s key, its answer
    /// kept as [`Adverts::keep`] keeps a client's.
    async fn remake(&self, project_root: &Path, ask: Ask) {
        let mut headers = HeaderMap::new();
        if let Some(p) = ask.key.protocol.as_deref().and_then(|p| p.parse().ok()) {
            headers.insert("git-protocol", p);
        }
        let req = info_refs(project_root, &ask.key.query, headers);
        let Ok((response, mut child)) = super::cgi::run(req, Body::empty()).await else {
            return;
        };
        let mut body = self.keep(ask, response).into_body().into_data_stream();
        // Read to the end, which keeps it; bounded like any backend run.
        let read = async {
            while let Some(Ok(_)) = body.next().await {}
            let _ = child.wait().await;
        };
        if tokio::time::timeout(super::cgi::BACKEND_TIMEOUT, read)
            .await
            .is_err()
        {
            super::cgi::kill_group(&child);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Kept>> {
        lock(&self.kept)
    }
}

/// The backend request of a ref advertisement: what the Git route sends for `GET info/refs`.
fn info_refs<'a>(
    project_root: &'a Path,
    query: &str,
    headers: HeaderMap,
) -> super::cgi::CgiRequest<'a> {
    super::cgi::CgiRequest {
        project_root,
        path_info: "/domain.git/info/refs".to_owned(),
        query: query.to_owned(),
        method: axum::http::Method::GET,
        headers,
        user: "steward".to_owned(),
        remote: None,
        background: true,
    }
}

fn lock(kept: &Mutex<HashMap<Key, Kept>>) -> std::sync::MutexGuard<'_, HashMap<Key, Kept>> {
    kept.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// What `answer` gives: the kept body, or `None` when the backend would have to run.
    async fn kept(adverts: &Adverts, git_dir: &Path, query: &str) -> Option<Vec<u8>> {
        let response = adverts.answer(git_dir, query, &HeaderMap::new()).ok()?;
        let body = axum::body::to_bytes(response.into_body(), MAX_KEPT)
            .await
            .expect("body");
        Some(body.to_vec())
    }

    #[tokio::test]
    async fn a_refresh_makes_stale_answers_again_before_anyone_asks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let git_dir = root.join("domain.git");
        git(&root, &["init", "-q", "--bare", "domain.git"]);
        let work = root.join("work");
        std::fs::create_dir(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        let commit = |n: &str| {
            std::fs::write(work.join("f"), n).expect("write");
            git(&work, &["add", "f"]);
            git(
                &work,
                &[
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "commit",
                    "-qm",
                    n,
                ],
            );
            git(
                &work,
                &["push", "-q", git_dir.to_str().expect("utf-8"), "main"],
            );
            git(&work, &["rev-parse", "HEAD"])
        };
        let first = commit("1");
        let query = "service=git-upload-pack";
        let adverts = Adverts::default();

        // Nothing kept yet; the first request's answer is kept, then served from memory.
        let Err(ask) = adverts.answer(&git_dir, query, &HeaderMap::new()) else {
            panic!("nothing is kept before the first request");
        };
        let req = info_refs(&root, query, HeaderMap::new());
        let (response, mut child) = super::super::cgi::run(req, Body::empty())
            .await
            .expect("backend");
        let body = axum::body::to_bytes(adverts.keep(ask, response).into_body(), MAX_KEPT)
            .await
            .expect("body");
        child.wait().await.expect("backend ends");
        assert!(String::from_utf8_lossy(&body).contains(&first));
        assert_eq!(kept(&adverts, &git_dir, query).await, Some(body.to_vec()));

        // A ref moves: the kept answer is stale, and a refresh makes it again with the new ref.
        let second = commit("2");
        assert_eq!(kept(&adverts, &git_dir, query).await, None, "stale");
        adverts.refresh(root.clone(), &git_dir);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let fresh = loop {
            if let Some(body) = kept(&adverts, &git_dir, query).await {
                break body;
            }
            assert!(std::time::Instant::now() < deadline, "not made again");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let fresh = String::from_utf8_lossy(&fresh);
        assert!(fresh.contains(&second), "{fresh}");
        assert!(!fresh.contains(&first), "{fresh}");
    }
}
