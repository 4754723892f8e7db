//! Git smart HTTP by running `git http-backend` as a CGI program (gix has no server side).
//!
//! The request body is streamed to the backend's standard input and its standard output streamed
//! back after the CGI header block, so a large clone or push never sits in memory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A CGI header block larger than this is a broken backend, not a response.
const MAX_HEADER: usize = 64 * 1024;

/// A push or fetch that has not finished after this long is killed (and a push's lock released).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What a push said and was answered, kept for [`super::sniff`]: the start of the request, the
/// start of the response, a signal when the backend's whole output has been read (`eof`; also fired
/// when the client went away), and a gate the response waits on before its last byte, so that
/// `git push` returns only after the Master has decided on the pin (open it by sending or dropping
/// `release`).
pub struct Captured {
    pub request: Arc<Mutex<Vec<u8>>>,
    pub response: Arc<Mutex<Vec<u8>>>,
    pub eof: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

/// How long a finished response waits for the pin decision before ending anyway.
const GATE_TIMEOUT: Duration = Duration::from_secs(60);

fn keep(buf: &Mutex<Vec<u8>>, bytes: &[u8], limit: usize) {
    if let Ok(mut b) = buf.lock() {
        let room = limit.saturating_sub(b.len());
        b.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// One request for the backend.
pub struct CgiRequest<'a> {
    pub project_root: &'a Path,
    /// `/domain.git/…`
    pub path_info: String,
    pub query: String,
    pub method: Method,
    pub headers: HeaderMap,
    pub user: String,
    pub remote: Option<SocketAddr>,
}

/// Starts `git http-backend` for `req`, feeding it `body`. Returns the HTTP response (its body
/// streams the backend's output) and the child, which the caller waits for.
pub async fn run(
    req: CgiRequest<'_>,
    body: Body,
    capture: bool,
) -> Result<(Response, Child, Option<Captured>), String> {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend");
    // A clean environment: an inherited GIT_DIR or similar would make the backend serve the wrong
    // repository. PATH finds git's helpers (and the pre-receive hook's interpreter).
    cmd.env_clear();
    for var in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    cmd.env("GIT_PROJECT_ROOT", req.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // Receiving is off by default for unauthenticated backends; we authenticate in front.
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        // Only the Master moves the pin: a push to refs/steward/* would bypass validation of the
        // decision, its compare-and-swap and its history. Hidden refs refuse pushes; fetching
        // them (what launchers do) still works.
        .env("GIT_CONFIG_KEY_1", "receive.hideRefs")
        .env("GIT_CONFIG_VALUE_1", "refs/steward")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("PATH_INFO", &req.path_info)
        .env("QUERY_STRING", &req.query)
        .env("REQUEST_METHOD", req.method.as_str())
        .env("REMOTE_USER", &req.user)
        .env(
            "REMOTE_ADDR",
            req.remote.map(|a| a.ip().to_string()).unwrap_or_default(),
        );
    if let Some(v) = header("content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header("content-length") {
        cmd.env("CONTENT_LENGTH", v);
    }
    if let Some(v) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `git http-backend`: {e}"))?;
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("git http-backend: pipes missing".into());
    };

    // The body goes in from its own task: the backend may start answering before it has read
    // everything, and waiting for one before the other could deadlock on full pipes.
    let request_copy = Arc::new(Mutex::new(Vec::new()));
    let response_copy = Arc::new(Mutex::new(Vec::new()));
    let (eof_tx, eof_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let keep_request = capture.then(|| request_copy.clone());
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Some(buf) = &keep_request {
                        keep(buf, &bytes, super::sniff::REQUEST_LIMIT);
                    }
                    if stdin.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Err(_) => break, // client went away: closing stdin makes the backend fail cleanly
            }
        }
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(log_stderr(stderr));

    let (status, headers, rest) = read_headers(&mut stdout).await?;
    let sink = capture.then(|| Sink {
        copy: response_copy.clone(),
        eof: Some(eof_tx),
        gate: Some(release_rx),
    });
    let mut response = Response::new(Body::from_stream(stream_out(rest, stdout, sink)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    let captured = capture.then_some(Captured {
        request: request_copy,
        response: response_copy,
        eof: eof_rx,
        release: release_tx,
    });
    Ok((response, child, captured))
}

/// The backend's own complaints (a missing repository, a bad request) belong in the Master's log.
async fn log_stderr(mut stderr: impl AsyncRead + Unpin) {
    let mut text = Vec::new();
    let _ = stderr.read_to_end(&mut text).await;
    let text = String::from_utf8_lossy(&text);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        super::log::warning("Master-0030", &format!("git http-backend: {line}"));
    }
}

/// Reads the CGI header block; returns the status, headers and any body bytes read past it.
async fn read_headers(
    out: &mut (impl AsyncRead + Unpin),
) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (end, sep) = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break (i, 4);
        }
        if let Some(i) = find(&buf, b"\n\n") {
            break (i, 2);
        }
        if buf.len() > MAX_HEADER {
            return Err("git http-backend: header block too large".into());
        }
        let n = out
            .read(&mut chunk)
            .await
            .map_err(|e| format!("git http-backend: {e}"))?;
        if n == 0 {
            return Err("git http-backend ended without a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end + sep);
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    Ok((status, headers, rest))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where a captured response is copied. `eof` fires when the backend's output ends, or when the
/// stream is dropped (a client that went away drops the body, and with it the sender).
struct Sink {
    copy: Arc<Mutex<Vec<u8>>>,
    eof: Option<oneshot::Sender<()>>,
    gate: Option<oneshot::Receiver<()>>,
}

impl Sink {
    fn keep(&self, bytes: &[u8]) {
        keep(&self.copy, bytes, super::sniff::RESPONSE_LIMIT);
    }
    /// Reports the end of the output, then holds the end of the response until released.
    async fn finish(&mut self) {
        if let Some(tx) = self.eof.take() {
            let _ = tx.send(());
        }
        if let Some(gate) = self.gate.take() {
            let _ = tokio::time::timeout(GATE_TIMEOUT, gate).await;
        }
    }
}

fn stream_out<R: AsyncRead + Unpin + Send + 'static>(
    first: Vec<u8>,
    out: R,
    sink: Option<Sink>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let init = (Some(first), Some(out), sink);
    futures_util::stream::unfold(init, |(first, out, mut sink)| async move {
        if let Some(f) = first.filter(|f| !f.is_empty()) {
            if let Some(s) = &sink {
                s.keep(&f);
            }
            return Some((Ok(Bytes::from(f)), (None, out, sink)));
        }
        let mut out = out?;
        let mut buf = vec![0u8; 64 * 1024];
        match out.read(&mut buf).await {
            Ok(0) => {
                if let Some(s) = &mut sink {
                    s.finish().await;
                }
                None
            }
            Ok(n) => {
                buf.truncate(n);
                if let Some(s) = &sink {
                    s.keep(&buf);
                }
                Some((Ok(Bytes::from(buf)), (None, Some(out), sink)))
            }
            Err(e) => Some((Err(e), (None, None, sink))),
        }
    })
}

/// A 502 for a backend that could not be started or answered nonsense.
pub fn bad_gateway(message: &str) -> Response {
    super::log::severe("Master-0030", message);
    (StatusCode::BAD_GATEWAY, "the Git backend failed\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_cgi_headers() {
        let raw: &[u8] =
            b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\nExpires: x\r\n\r\nbody";
        let mut r = raw;
        let (status, headers, rest) = read_headers(&mut r).await.expect("headers");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(rest, b"body");
        let raw: &[u8] = b"Content-Type: application/x-git\n\nPACK";
        let mut r = raw;
        let (status, _, rest) = read_headers(&mut r).await.expect("headers");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rest, b"PACK");
        let mut r: &[u8] = b"Content-Type: x";
        assert!(read_headers(&mut r).await.is_err());
    }
}
