//! Mirror mode: the domain repository lives elsewhere (GitHub, GitLab, a bare path); the Master
//! fetches the followed branch into its own `domain.git` (with gix, under `spawn_blocking`) on a
//! poll interval and on webhook calls, then decides on the new head exactly as for a push.
//!
//! An unreachable upstream never unpins: the fetch fails, the pin stays, and the status says since
//! when the mirror is stale.

use reconciler::cache::redact;
use reconciler::git::fetch::FetchError;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{KeyInit, Mac};

use reconciler::git::Oid;

/// How long a connection to an HTTP upstream may take before the fetch counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to mirror from.
#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    /// Branch name upstream (and of the local copy), e.g. `main`.
    pub branch: String,
    pub poll_interval: Duration,
    /// Shared secret of webhook calls (GitHub HMAC, GitLab token); `None`: webhooks need Basic auth.
    pub secret: Option<String>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, nor a password in the URL.
        f.debug_struct("Upstream")
            .field("url", &redact(&self.url))
            .field("branch", &self.branch)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// `upstream` of `GET /v1/domain`.
pub use reconciler::wire::UpstreamStatus as Status;

pub struct Mirror {
    pub upstream: Upstream,
    status: Mutex<Status>,
}

impl Mirror {
    pub fn new(upstream: Upstream) -> Mirror {
        let status = Status {
            url: redact(&upstream.url),
            branch: upstream.branch.clone(),
            poll_interval_ms: upstream.poll_interval.as_millis() as u64,
            ..Status::default()
        };
        Mirror {
            upstream,
            status: Mutex::new(status),
        }
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records a successful fetch; returns whether the mirror was stale until now.
    pub fn succeeded(&self, head: Oid) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let now = reconciler::pin::now_rfc3339();
        let was_stale = s.stale;
        s.head = Some(head.to_hex());
        s.last_attempt = Some(now.clone());
        s.last_success = Some(now);
        s.stale = false;
        s.stale_since = None;
        s.last_error = None;
        was_stale
    }

    /// Records a failed fetch; returns whether the mirror just became stale.
    pub fn failed(&self, error: &str) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let now = reconciler::pin::now_rfc3339();
        let became = !s.stale;
        s.last_attempt = Some(now.clone());
        s.stale = true;
        s.stale_since.get_or_insert(now);
        s.last_error = Some(error.to_owned());
        became
    }
}

/// Fetches `refs/heads/<branch>` of `url` into the same ref of the bare repository `git_dir`
/// (forced: the upstream is the truth, rewritten history included) and returns its new value.
/// Blocking.
pub fn fetch(git_dir: &Path, url: &str, branch: &str) -> Result<Oid, FetchError> {
    let remote = reconciler::cache::Remote {
        url: url.to_owned(),
        user: None,
        password: None,
        connect_timeout: CONNECT_TIMEOUT,
    };
    reconciler::git::fetch::fetch_branch(git_dir, &remote, branch)
}

/// Why a mirror sync got no new head.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the fetch task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Whether a webhook call carries the shared secret: GitHub's `X-Hub-Signature-256`
/// (HMAC-SHA256 of the body) or GitLab's `X-Gitlab-Token`. `None` when it carries neither.
/// Whether a webhook call carries a signature or token (checked by [`verify_webhook`]).
pub fn signed(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("x-hub-signature-256") || headers.contains_key("x-gitlab-token")
}

pub fn verify_webhook(headers: &axum::http::HeaderMap, body: &[u8], secret: &str) -> Option<bool> {
    if let Some(sig) = headers.get("x-hub-signature-256") {
        let hex = sig.to_str().ok().and_then(|s| s.strip_prefix("sha256="));
        let Some(expected) = hex.and_then(decode_hex) else {
            return Some(false);
        };
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return Some(false);
        };
        mac.update(body);
        // `verify_slice` compares in constant time.
        return Some(mac.verify_slice(&expected).is_ok());
    }
    if let Some(token) = headers.get("x-gitlab-token") {
        return Some(constant_time_eq(token.as_bytes(), secret.as_bytes()));
    }
    None
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The branch a push payload (GitHub or GitLab) is about: its `ref` field.
pub fn payload_ref(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("ref")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn github_signature() {
        // RFC 4231, test case 2.
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            HeaderValue::from_static(
                "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
        );
        assert_eq!(
            verify_webhook(&h, b"what do ya want for nothing?", "Jefe"),
            Some(true)
        );
        assert_eq!(
            verify_webhook(&h, b"what do ya want for nothing!", "Jefe"),
            Some(false)
        );
        assert_eq!(
            verify_webhook(&h, b"what do ya want for nothing?", "jefe"),
            Some(false)
        );
        h.insert("x-hub-signature-256", HeaderValue::from_static("sha1=00"));
        assert_eq!(verify_webhook(&h, b"", "Jefe"), Some(false));
    }

    #[test]
    fn gitlab_token_and_none() {
        let mut h = HeaderMap::new();
        assert_eq!(verify_webhook(&h, b"{}", "s3cret"), None);
        h.insert("x-gitlab-token", HeaderValue::from_static("s3cret"));
        assert_eq!(verify_webhook(&h, b"{}", "s3cret"), Some(true));
        assert_eq!(verify_webhook(&h, b"{}", "s3cre"), Some(false));
    }

    #[test]
    fn reads_the_ref() {
        assert_eq!(
            payload_ref(br#"{"ref":"refs/heads/main","after":"x"}"#).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(payload_ref(b"{}"), None);
        assert_eq!(payload_ref(b"nope"), None);
    }

    #[test]
    fn staleness() {
        let m = Mirror::new(Upstream {
            url: "http://u:pw@example.com/d.git".into(),
            branch: "main".into(),
            poll_interval: Duration::from_secs(30),
            secret: None,
        });
        assert!(!m.status().url.contains("pw"));
        assert!(m.failed("down"));
        let since = m.status().stale_since;
        assert!(!m.failed("still down"));
        assert_eq!(m.status().stale_since, since, "since the first failure");
        let id = Oid::from_hex("1111111111111111111111111111111111111111").expect("id");
        assert!(m.succeeded(id));
        let s = m.status();
        assert!(!s.stale && s.stale_since.is_none() && s.last_error.is_none());
        assert_eq!(s.head.as_deref(), Some(id.to_hex().as_str()));
    }
}
