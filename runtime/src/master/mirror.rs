//! Mirror mode: the domain repository lives elsewhere (GitHub, GitLab, a bare path); the Master
//! fetches the followed branch into its own `domain.git` (with gix, under `spawn_blocking`) on a
//! poll interval and on webhook calls, then decides on the new head exactly as for a push.
//!
//! An unreachable upstream never unpins: the fetch fails, the pin stays, and the status says since
//! when the mirror is stale.

use reconciler::cache::{chain, redact};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gix::bstr::ByteSlice;
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
/// Blocking. Errors are one line for the status and the log.
pub fn fetch(git_dir: &Path, url: &str, branch: &str) -> Result<Oid, String> {
    let shown = redact(url);
    let err = |e: gix::Error| format!("fetching {shown}: {}", chain(&e));
    let opts = gix::open::Options::isolated().open_path_as_is(true);
    let repo = gix::open_opts(git_dir, opts).map_err(|e| chain(&e))?;
    let mut parsed = gix::url::parse(url.as_bytes().as_bstr())
        .map_err(|e| format!("{shown} is not a Git URL: {}", chain(&e)))?;
    if parsed.scheme == gix::url::Scheme::File {
        let exists = gix::path::from_bstr(parsed.path.as_bstr()).is_ok_and(|p| p.exists());
        if !exists {
            return Err(format!("fetching {shown}: no such repository"));
        }
    }
    let is_http = matches!(
        parsed.scheme,
        gix::url::Scheme::Http | gix::url::Scheme::Https
    );
    // Credentials in an http(s) URL go out as a Basic header: gix would otherwise ask a credential
    // helper (never run unattended). A configured header also makes gix refuse redirects, so the
    // password never travels to another host.
    let mut extra_headers = Vec::new();
    if is_http && let (Some(user), Some(password)) = (parsed.user(), parsed.password()) {
        use base64ct::Encoding;
        let token = base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes());
        extra_headers.push(format!("Authorization: Basic {token}"));
        parsed.set_user(None);
        parsed.set_password(None);
    }
    let local = format!("refs/heads/{branch}");
    let spec = format!("+{local}:{local}");
    let remote = repo
        .remote_at(parsed)
        .map_err(err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs([spec.as_bytes().as_bstr()], gix::remote::Direction::Fetch)
        .map_err(err)?;
    let connection = remote.connect(gix::remote::Direction::Fetch).map_err(err)?;
    // Unattended: never prompt, never run credential helpers.
    let mut connection = connection.with_credentials(|action| match action {
        gix::credentials::helper::Action::Get(_) => Err(gix::Error::from_error(
            gix::error::validation("the upstream asks for credentials".to_owned()),
        )),
        _ => Ok(None),
    });
    if is_http {
        use gix::protocol::transport::client::blocking_io::http;
        reconciler::tls::install_provider();
        // Trust anchors beyond the system's (a private CA, a self-signed upstream), named as
        // git names them, so one `GIT_SSL_CAINFO` serves git and the Master.
        let extra = reconciler::tls::reqwest_extra_roots()?;
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(move |b| {
                Ok(b.connect_timeout(CONNECT_TIMEOUT)
                    .tls_certs_merge(extra.clone()))
            })),
            configure_request: None,
        };
        connection.set_transport_options(Box::new(http::Options {
            connect_timeout: Some(CONNECT_TIMEOUT),
            extra_headers,
            backend: Some(std::sync::Arc::new(std::sync::Mutex::new(backend))),
            ..Default::default()
        }));
    }
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(err)?;
    let found = prepare
        .ref_map()
        .mappings
        .iter()
        .any(|m| matches!(&m.remote, gix::remote::fetch::refmap::Source::Ref(_)));
    if !found {
        return Err(format!("{shown} has no branch {branch}"));
    }
    let interrupt = AtomicBool::new(false);
    let outcome = prepare
        .receive(gix::progress::Discard, &interrupt)
        .map_err(err)?;
    if let gix::remote::fetch::Status::Change {
        mut write_pack_bundle,
        ..
    } = outcome.status
        && let Some(keep) = write_pack_bundle.keep_path.take()
    {
        // The pack is reachable from the updated ref; the .keep file would only block gc.
        let _ = std::fs::remove_file(keep);
    }
    let repo = gix::open_opts(git_dir, gix::open::Options::isolated()).map_err(|e| chain(&e))?;
    let head = repo
        .try_find_reference(local.as_str())
        .map_err(|e| chain(&e))?
        .and_then(|r| r.target().try_id().map(|id| Oid::from(id.to_owned())))
        .ok_or_else(|| format!("{local} is missing after the fetch"))?;
    Ok(head)
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

fn decode_hex(s: &str) -> Option<Vec<u8>> {
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
