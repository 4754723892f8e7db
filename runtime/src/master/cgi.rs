//! Git smart HTTP by running `git http-backend` as a CGI program (gix has no server side), and a
//! push's upload by running `git receive-pack` itself when the backend would only pass it on.
//!
//! The request body is streamed to the backend's standard input and its standard output streamed
//! back after the CGI header block, so a large clone or push never sits in memory. Pushes go
//! through [`super::push`], which drives the same backend under the decision lock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// A CGI header block larger than this is a broken backend, not a response.
const MAX_HEADER: usize = 64 * 1024;

/// A fetch that has not finished after this long is killed.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One request for the backend.
#[derive(Clone)]
pub struct CgiRequest<'a> {
    pub project_root: &'a Path,
    /// `/domain.git/…`
    pub path_info: String,
    pub query: String,
    pub method: Method,
    pub headers: HeaderMap,
    pub user: String,
    pub remote: Option<SocketAddr>,
    /// Nobody waits for the answer (see [`start`]).
    pub background: bool,
}

/// Why the Git backend could not serve a request (answered 502 and logged).
#[derive(Debug, thiserror::Error)]
pub enum CgiError {
    #[error("cannot run `{program}`: {error}")]
    Spawn {
        program: &'static str,
        error: std::io::Error,
    },
    #[error("git http-backend: pipes missing")]
    Pipes,
    #[error("git http-backend: header block too large")]
    HeaderTooLarge,
    #[error("git http-backend: {0}")]
    Read(std::io::Error),
    #[error("git http-backend ended without a response")]
    NoResponse,
}

/// Starts `git http-backend` for `req`, in a process group of its own so that it can be stopped
/// with everything it started (`receive-pack`, the pre-receive hook and its children): see
/// [`kill_group`].
pub fn spawn(req: &CgiRequest<'_>) -> Result<Child, CgiError> {
    let mut cmd = match backend() {
        Some(exe) => Command::new(exe),
        None => {
            let mut c = git();
            c.arg("http-backend");
            c
        }
    };
    environment(&mut cmd, req, &[]);
    cmd.env("GIT_PROJECT_ROOT", req.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("PATH_INFO", &req.path_info)
        .env("QUERY_STRING", &req.query)
        .env("REQUEST_METHOD", req.method.as_str());
    if let Some(v) = header(req, "content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header(req, "content-length") {
        cmd.env("CONTENT_LENGTH", v);
    }
    if let Some(v) = header(req, "content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    start(cmd, BACKEND, req.background)
}

/// The program named in logs and errors for `git http-backend`.
const BACKEND: &str = "git http-backend";

/// What takes a push's `POST git-receive-pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// `git receive-pack` with hooks off: the Master checks the push itself
    /// ([`super::precheck`]), which it does while the repository's one hook is Steward's.
    Checked,
    /// `git receive-pack` itself ([`spawn_receive_pack`]), running the repository's hooks: what
    /// the backend would only pass on.
    ReceivePack,
    /// `git http-backend`, for what only it can take: a compressed body (stock git does not
    /// compress pushes; other clients may), which it inflates, or another content type, which it
    /// refuses as it always did.
    Backend,
}

impl Receiver {
    /// What takes `req` on the repository `git_dir`.
    pub fn of(req: &CgiRequest<'_>, git_dir: &Path) -> Receiver {
        let direct = req.method == Method::POST
            && header(req, "content-type").as_deref() == Some(RECEIVE_REQUEST)
            && header(req, "content-encoding").is_none_or(|e| e.eq_ignore_ascii_case("identity"));
        if !direct {
            Receiver::Backend
        } else if reconciler::hook::only_stewards_hook(git_dir) {
            Receiver::Checked
        } else {
            Receiver::ReceivePack
        }
    }

    /// The program, as logs and errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Receiver::Checked | Receiver::ReceivePack => "git receive-pack",
            Receiver::Backend => BACKEND,
        }
    }

    /// Starts it for `req` on the repository `git_dir`.
    pub fn spawn(self, req: &CgiRequest<'_>, git_dir: &Path) -> Result<Child, CgiError> {
        match self {
            Receiver::Checked => spawn_receive_pack(req, git_dir, false),
            Receiver::ReceivePack => spawn_receive_pack(req, git_dir, true),
            Receiver::Backend => spawn(req),
        }
    }

    /// Whether its answer starts with a CGI header block.
    pub fn is_cgi(self) -> bool {
        self == Receiver::Backend
    }
}

const RECEIVE_REQUEST: &str = "application/x-git-receive-pack-request";

/// Starts `git receive-pack --stateless-rpc` on `git_dir` for a push it takes
/// ([`Receiver::ReceivePack`]), with the environment `git http-backend` would give it: one process
/// fewer on the path of every push (the backend only checks the request, starts `receive-pack`
/// and copies its output). Its answer has no CGI header block: [`receive_pack_head`] is it.
fn spawn_receive_pack(
    req: &CgiRequest<'_>,
    git_dir: &Path,
    hooks: bool,
) -> Result<Child, CgiError> {
    let mut cmd = git();
    cmd.args(["receive-pack", "--stateless-rpc"]).arg(git_dir);
    // No hook at all: there is none at `/dev/null/<name>`.
    let no_hooks: &[(&str, &str)] = &[("core.hooksPath", "/dev/null")];
    environment(&mut cmd, req, if hooks { &[] } else { no_hooks });
    // What `git http-backend` sets for the reflog of a push (`run_service` in http-backend.c).
    let host = req.remote.map(|a| a.ip().to_string());
    if !req.user.is_empty() {
        cmd.env("GIT_COMMITTER_NAME", &req.user).env(
            "GIT_COMMITTER_EMAIL",
            format!("{}@http.{}", req.user, host.as_deref().unwrap_or("(none)")),
        );
    }
    start(cmd, Receiver::ReceivePack.name(), req.background)
}

/// The status and headers `git http-backend` answers a push with (`service_rpc` and
/// `hdr_nocache` in http-backend.c).
pub fn receive_pack_head() -> (StatusCode, HeaderMap) {
    let mut h = HeaderMap::new();
    let mut set = |name: &'static str, value: &'static str| {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    };
    set("expires", "Fri, 01 Jan 1980 00:00:00 GMT");
    set("pragma", "no-cache");
    set("cache-control", "no-cache, max-age=0, must-revalidate");
    set("content-type", "application/x-git-receive-pack-result");
    (StatusCode::OK, h)
}

/// The environment every Git process the Master starts for a request gets, with the settings
/// `config` on top.
fn environment(cmd: &mut Command, req: &CgiRequest<'_>, config: &[(&str, &str)]) {
    // A clean environment: an inherited GIT_DIR or similar would make the backend serve the wrong
    // repository. PATH finds git's helpers (and the pre-receive hook's interpreter).
    cmd.env_clear();
    for var in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let settings = [
        // Receiving is off by default for unauthenticated backends; we authenticate in front.
        ("http.receivepack", "true"),
        // Only the Master moves the pin: a push to refs/steward/* would bypass validation of the
        // decision, its compare-and-swap and its history. Hidden refs refuse pushes; fetching
        // them (what launchers do) still works.
        ("receive.hideRefs", "refs/steward"),
        // Not `git maintenance run --auto` inside every push: the client would wait for it. The
        // Master runs it after the push is answered ([`maintain`]).
        ("receive.autogc", "false"),
    ];
    let all = settings.iter().chain(config);
    for (i, (key, value)) in all.clone().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), key)
            .env(format!("GIT_CONFIG_VALUE_{i}"), value);
    }
    cmd.env("GIT_CONFIG_COUNT", all.count().to_string())
        .env("REMOTE_USER", &req.user)
        .env(
            "REMOTE_ADDR",
            req.remote.map(|a| a.ip().to_string()).unwrap_or_default(),
        );
    if let Some(v) = header(req, "git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
}

fn header(req: &CgiRequest<'_>, name: &str) -> Option<String> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Starts `cmd` with its three pipes, in a process group of its own. A `background` run (one no
/// client waits for) runs at a lower priority: on a small machine its processes would otherwise
/// take the CPU from the push or fetch being answered.
fn start(mut cmd: Command, program: &'static str, background: bool) -> Result<Child, CgiError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|error| CgiError::Spawn { program, error })?;
    if background {
        lower_priority(&child);
    }
    Ok(child)
}

/// Niceness of the Git processes the Master starts for itself (housekeeping, the advertisement
/// refresh): they yield to those a client waits for.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the priority of a child just started, before it has had time to start its own
/// (which inherit it). Set from here rather than in the child before `exec`: a `pre_exec`
/// step makes the standard library `fork` the whole Master instead of using `posix_spawn`,
/// which costs more than the niceness saves.
fn lower_priority(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: a plain system call on a process this Master just started.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, BACKGROUND_NICE) };
    }
}

/// `git-http-backend` in git's exec path, found once: started directly, it saves the `git`
/// process that would only find and start it (one per request). `None`: `git http-backend` it is.
fn backend() -> Option<&'static Path> {
    static BACKEND: OnceLock<Option<PathBuf>> = OnceLock::new();
    BACKEND
        .get_or_init(|| in_exec_path("git-http-backend"))
        .as_deref()
}

/// `git` by its full path in git's exec path when it is there, else `git` (found on `PATH`).
/// By its path, the standard library starts it with `posix_spawn`; a bare name with `PATH` set
/// in a cleared environment (as every request's is) makes it `fork` the whole Master instead.
fn git() -> Command {
    static GIT: OnceLock<Option<PathBuf>> = OnceLock::new();
    match GIT.get_or_init(|| in_exec_path("git")) {
        Some(exe) => Command::new(exe),
        None => Command::new("git"),
    }
}

/// `name` in git's exec path, if it is a file there.
fn in_exec_path(name: &str) -> Option<PathBuf> {
    // `git --exec-path`, asked once.
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let out = std::process::Command::new("git")
            .arg("--exec-path")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let dir = String::from_utf8(out.stdout).ok()?;
        Some(PathBuf::from(dir.trim_end()))
    });
    let exe = dir.as_ref()?.join(name);
    exe.is_file().then_some(exe)
}

/// Git's housekeeping of the repository `git_dir` (packing loose objects and refs when there are
/// enough of them: `git maintenance run --auto`), in the background after a push was answered,
/// instead of inside `receive-pack` while the client waits. One at a time; a push that finds one
/// running leaves the next check to the next push.
pub fn maintain(git_dir: &std::path::Path) {
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["maintenance", "run", "--auto", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    match cmd.spawn() {
        Ok(mut child) => {
            lower_priority(&child);
            let stderr = child.stderr.take();
            tokio::spawn(async move {
                if let Some(e) = stderr {
                    log_stderr("git maintenance", e).await;
                }
                let _ = child.wait().await;
                RUNNING.store(false, Ordering::Release);
            });
        }
        Err(e) => {
            RUNNING.store(false, Ordering::Release);
            super::log::warning(
                "Master-0030",
                &format!("cannot run `git maintenance run --auto`: {e}"),
            );
        }
    }
}

/// Stops the backend `child` and every process of its group (see [`spawn`]).
pub fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: a signal to the process group this Master created for the backend.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
    }
}

/// The backend's pipes.
pub fn pipes(child: &mut Child) -> Result<(ChildStdin, ChildStdout, ChildStderr), CgiError> {
    match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => Ok((i, o, e)),
        _ => Err(CgiError::Pipes),
    }
}

/// Serves a read (clone, fetch, ref advertisement) through the backend: `body` is streamed to its
/// input, its output streamed back. Returns the response and the child, which the caller waits for.
pub async fn run(req: CgiRequest<'_>, body: Body) -> Result<(Response, Child), CgiError> {
    let mut child = spawn(&req)?;
    let (mut stdin, mut stdout, stderr) = pipes(&mut child)?;
    // The body goes in from its own task: the backend may start answering before it has read
    // everything, and waiting for one before the other could deadlock on full pipes.
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(Ok(bytes)) = stream.next().await {
            if stdin.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // Client gone or body done: closing stdin makes the backend finish or fail cleanly.
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(log_stderr(BACKEND, stderr));
    let (status, headers, rest) = read_headers(&mut stdout).await?;
    let mut response = Response::new(Body::from_stream(stream_out(rest, stdout)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok((response, child))
}

/// A Git process's own complaints (a missing repository, a bad request) belong in the Master's
/// log, each line prefixed with `what` ran.
pub async fn log_stderr(what: &str, mut stderr: impl AsyncRead + Unpin) {
    let mut text = Vec::new();
    let _ = stderr.read_to_end(&mut text).await;
    let text = String::from_utf8_lossy(&text);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        super::log::warning("Master-0030", &format!("{what}: {line}"));
    }
}

/// Reads the CGI header block; returns the status, headers and any body bytes read past it.
pub async fn read_headers(
    out: &mut (impl AsyncRead + Unpin),
) -> Result<(StatusCode, HeaderMap, Vec<u8>), CgiError> {
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
            return Err(CgiError::HeaderTooLarge);
        }
        let n = out.read(&mut chunk).await.map_err(CgiError::Read)?;
        if n == 0 {
            return Err(CgiError::NoResponse);
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

fn stream_out<R: AsyncRead + Unpin + Send + 'static>(
    first: Vec<u8>,
    out: R,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold((Some(first), Some(out)), |(first, out)| async move {
        if let Some(f) = first.filter(|f| !f.is_empty()) {
            return Some((Ok(Bytes::from(f)), (None, out)));
        }
        let mut out = out?;
        let mut buf = vec![0u8; 64 * 1024];
        match out.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (None, Some(out))))
            }
            Err(e) => Some((Err(e), (None, None))),
        }
    })
}

/// A 502 for a backend that could not be started or answered nonsense.
pub fn bad_gateway(error: &CgiError) -> Response {
    super::log::severe("Master-0030", &error.to_string());
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
