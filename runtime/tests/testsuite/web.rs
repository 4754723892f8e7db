//! The web engine over real sockets on 127.0.0.1, real files and real child processes (python3).
//!
//! Long: the engine's features (static files, routing, proxying, pools, live changes, shutdown)
//! share one client and two small test applications written inline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use runtime::deploy::{self, Deployment};
use runtime::engine::web::{AppSpec, EngineContext, WebConfig, WebEngine, WebError};
use runtime::layout::ServerHome;
use schema::model::{AccessLog, AccessLogFormat, AppKind, Application, Listener, ThreadPool};
use schema::tree::MemTree;
use schema::values::Dur;

use crate::util::{application, git, home};

struct Reply {
    status: u16,
    version: hyper::Version,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive client connection.
struct Client {
    send: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client { send, addr }
    }

    async fn req(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        self.send.ready().await.map_err(|e| e.to_string())?;
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .send
            .send_request(b.body(Empty::new()).expect("request"))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            version,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::connect(addr)
        .await
        .req("GET", path, headers)
        .await
        .expect("request")
}

fn listener(max: u32, queue: Duration, request: Duration) -> Listener {
    Listener {
        address: "127.0.0.1".parse().expect("ip"),
        port: 0,
        thread_pool: ThreadPool { min: 1, max },
        queue_timeout: Dur(queue),
        request_timeout: Dur(request),
    }
}

/// Deploys `files` as application `name` (from an in-memory tree).
fn deploy_files(
    h: &ServerHome,
    name: &str,
    app: &Application,
    files: &[(&str, &[u8])],
) -> Deployment {
    let mut t = MemTree::new("mem");
    for (p, c) in files {
        t = t.with(&format!("{}/{p}", app.source), c.to_vec());
    }
    deploy::deploy(h, &t, name, app).expect("deploy")
}

fn config(listeners: &[(&str, Listener)], apps: Vec<(&str, AppSpec)>) -> WebConfig {
    WebConfig {
        server: "server1".to_owned(),
        listeners: listeners
            .iter()
            .map(|(n, l)| (n.to_string(), l.clone()))
            .collect(),
        access_log: AccessLog {
            enabled: true,
            format: AccessLogFormat::Common,
        },
        apps: apps.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
    }
}

fn ctx(h: &ServerHome) -> EngineContext {
    EngineContext {
        logs_dir: h.logs(),
        rotation: Default::default(),
        logger: None,
        // What a server with a messaging listener gives; an application's own `env` wins.
        env: [
            ("STEWARD_MESSAGING_URL", "stomp://127.0.0.1:61613"),
            ("GREETING", "from the engine"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        component_env: None,
    }
}

async fn start(cfg: WebConfig, h: &ServerHome) -> (WebEngine, SocketAddr) {
    let (engine, report) = WebEngine::start(cfg, ctx(h)).await.expect("start");
    assert!(report.failed.is_empty(), "{report:?}");
    let addr = *engine.local_addrs().values().next().expect("listener");
    (engine, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_static_files_with_types_ranges_and_conditionals() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let app = application(AppKind::Static, "/shop");
    let big: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let d = deploy_files(
        &h,
        "shop",
        &app,
        &[
            ("index.html", b"<h1>shop</h1>"),
            ("css/site.css", b"body{color:red}"),
            ("data/numbers.txt", b"0123456789"),
            ("img/logo.svg", b"<svg/>"),
            ("blob.bin", &big),
            ("sub/index.html", b"sub index"),
        ],
    );
    // A secret next to the image, and a link inside the image pointing at it.
    std::fs::write(h.root.join(".workspace/deployed/secret.txt"), "secret").expect("secret");
    std::os::unix::fs::symlink("../secret.txt", d.image.join("leak.txt")).expect("symlink");
    let (engine, addr) = start(
        config(
            &[(
                "http",
                listener(8, Duration::from_secs(5), Duration::from_secs(5)),
            )],
            vec![("shop", AppSpec { app, deployment: d })],
        ),
        &h,
    )
    .await;

    let r = get(addr, "/shop/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>shop</h1>"));
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    let r = get(addr, "/shop", &[]).await;
    assert_eq!((r.status, r.header("location")), (301, "/shop/"));
    let r = get(addr, "/shop/sub/", &[]).await;
    assert_eq!(r.text(), "sub index");
    let r = get(addr, "/shop/css/site.css", &[]).await;
    assert_eq!(r.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(
        get(addr, "/shop/img/logo.svg", &[])
            .await
            .header("content-type"),
        "image/svg+xml"
    );
    assert_eq!(
        get(addr, "/shop/blob.bin", &[])
            .await
            .header("content-type"),
        "application/octet-stream"
    );

    // Ranges.
    let r = get(addr, "/shop/data/numbers.txt", &[("range", "bytes=2-5")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "2345"));
    assert_eq!(r.header("content-range"), "bytes 2-5/10");
    let r = get(addr, "/shop/data/numbers.txt", &[("range", "bytes=-3")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "789"));
    let r = get(addr, "/shop/data/numbers.txt", &[("range", "bytes=10-")]).await;
    assert_eq!((r.status, r.header("content-range")), (416, "bytes */10"));
    // A large file is streamed, ranges included.
    let r = get(addr, "/shop/blob.bin", &[]).await;
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    assert_eq!(r.body, big);
    let r = get(addr, "/shop/blob.bin", &[("range", "bytes=300000-300009")]).await;
    assert_eq!((r.status, r.body.as_slice()), (206, &big[300_000..300_010]));

    // Conditional requests.
    let r = get(addr, "/shop/css/site.css", &[]).await;
    let etag = r.header("etag").to_owned();
    let modified = r.header("last-modified").to_owned();
    assert!(!etag.is_empty() && !modified.is_empty());
    let r = get(addr, "/shop/css/site.css", &[("if-none-match", &etag)]).await;
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = get(
        addr,
        "/shop/css/site.css",
        &[("if-modified-since", &modified)],
    )
    .await;
    assert_eq!(r.status, 304);
    let r = get(
        addr,
        "/shop/css/site.css",
        &[("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(
        addr,
        "/shop/css/site.css",
        &[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, 200);

    // HEAD: headers, no body.
    let mut c = Client::connect(addr).await;
    let r = c
        .req("HEAD", "/shop/data/numbers.txt", &[])
        .await
        .expect("head");
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (200, "10", 0)
    );
    let r = c
        .req("POST", "/shop/data/numbers.txt", &[])
        .await
        .expect("post");
    assert_eq!(r.status, 405);

    // Traversal, in every spelling: never the file outside.
    for path in [
        "/shop/../secret.txt",
        "/shop/%2e%2e/secret.txt",
        "/shop/%2E%2E/secret.txt",
        "/shop/..%2fsecret.txt",
        "/shop/css/%2e%2e/%2e%2e/secret.txt",
        "/shop/%2e%2e%2fsecret.txt",
        "/shop/leak.txt",
        "/shop/nope.html",
    ] {
        let r = get(addr, path, &[]).await;
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        assert!(!r.text().contains("secret"), "{path}");
    }
    assert_eq!(get(addr, "/other", &[]).await.status, 404);

    // The relay (HTTP/1.1) and hyper (an HTTP/1.0 client is handed to it) answer alike.
    let if_none = format!("If-None-Match: {etag}\r\n");
    for (path, extra) in [
        ("/shop/data/numbers.txt", "Range: bytes=2-5\r\n"),
        ("/shop/css/site.css", ""),
        ("/shop/css/site.css", if_none.as_str()),
        ("/shop/blob.bin", ""),
        ("/shop", ""),
        ("/shop/nope.html", ""),
        ("/other", ""),
    ] {
        let mut seen = Vec::new();
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let ask =
                format!("GET {path} {version}\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
            let raw = exchange_raw(addr, &[ask.as_bytes()], Duration::ZERO).await;
            let (head, body) = raw.split_once("\r\n\r\n").expect("head");
            let mut lines = head.lines();
            let status = lines
                .next()
                .and_then(|l| l.split_once(' '))
                .expect("status");
            let mut headers: Vec<String> = lines
                .map(str::to_lowercase)
                .filter(|l| !l.starts_with("date:") && !l.starts_with("connection:"))
                .collect();
            headers.sort();
            seen.push((status.1.to_owned(), headers, body.len(), body.to_owned()));
        }
        assert_eq!(seen[0], seen[1], "{path} {extra}");
    }

    engine.flush_access_log();
    let logs: Vec<_> = std::fs::read_dir(h.logs())
        .expect("logs")
        .flatten()
        .collect();
    let access = logs
        .iter()
        .find(|e| e.file_name().to_string_lossy().starts_with("access_"))
        .expect("access log");
    let name = access.file_name().to_string_lossy().into_owned();
    assert!(
        name.len() == "access_20260101.log00001".len() && name.ends_with(".log00001"),
        "{name}"
    );
    let text = std::fs::read_to_string(access.path()).expect("read");
    assert!(
        text.contains("\"GET /shop/css/site.css HTTP/1.1\" 200 15"),
        "{text}"
    );
    engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_context_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let shop = application(AppKind::Static, "/shop");
    let admin = application(AppKind::Static, "/shop/admin");
    let root = application(AppKind::Static, "/");
    let d1 = deploy_files(
        &h,
        "shop",
        &shop,
        &[("index.html", b"shop"), ("x.txt", b"shop x")],
    );
    let d2 = deploy_files(
        &h,
        "admin",
        &admin,
        &[("index.html", b"admin"), ("x.txt", b"admin x")],
    );
    let d3 = deploy_files(
        &h,
        "root",
        &root,
        &[("index.html", b"root"), ("shopping", b"not shop")],
    );
    let (engine, addr) = start(
        config(
            &[(
                "http",
                listener(8, Duration::from_secs(5), Duration::from_secs(5)),
            )],
            vec![
                (
                    "shop",
                    AppSpec {
                        app: shop,
                        deployment: d1,
                    },
                ),
                (
                    "admin",
                    AppSpec {
                        app: admin,
                        deployment: d2,
                    },
                ),
                (
                    "root",
                    AppSpec {
                        app: root,
                        deployment: d3,
                    },
                ),
            ],
        ),
        &h,
    )
    .await;
    assert_eq!(get(addr, "/shop/x.txt", &[]).await.text(), "shop x");
    assert_eq!(get(addr, "/shop/admin/x.txt", &[]).await.text(), "admin x");
    assert_eq!(get(addr, "/shop/admin/", &[]).await.text(), "admin");
    assert_eq!(get(addr, "/shopping", &[]).await.text(), "not shop");
    assert_eq!(get(addr, "/", &[]).await.text(), "root");
    engine.shutdown(Duration::from_secs(2)).await;
}

const APP_PY: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.endswith("/slow"):
            if "STARTED" in os.environ:
                open(os.environ["STARTED"], "w").close()
            time.sleep(float(os.environ.get("SLOW", "1")))
        body = json.dumps({
            "path": self.path,
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "env": dict(os.environ),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("request %s\n" % self.path)
        sys.stderr.flush()

print("listening on", os.environ["PORT"], flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Deploys the python app as process application `name` at `context`.
fn process_app(h: &ServerHome, name: &str, context: &str, env: &[(&str, &str)]) -> AppSpec {
    script_app(h, name, context, env, APP_PY)
}

/// The python app as process application `slow` whose `/slow/slow` takes `seconds`; also the
/// file it creates when such a request reaches it (made under `dir`).
fn slow_app(h: &ServerHome, dir: &Path, seconds: &str) -> (AppSpec, PathBuf) {
    let started = dir.join("started");
    let env = [
        ("SLOW", seconds),
        ("STARTED", started.to_str().expect("utf-8")),
    ];
    (process_app(h, "slow", "/slow", &env), started)
}

/// Sends `GET /slow/slow` and returns once the application has it (`started` exists).
async fn slow_request(addr: SocketAddr, started: &Path) -> tokio::task::JoinHandle<Reply> {
    let request = tokio::spawn(async move { get(addr, "/slow/slow", &[]).await });
    eventually("the slow request at the application", || {
        started.exists().then_some(())
    })
    .await;
    request
}

/// Deploys `script` as `app.py` of process application `name` at `context`.
fn script_app(
    h: &ServerHome,
    name: &str,
    context: &str,
    env: &[(&str, &str)],
    script: &str,
) -> AppSpec {
    let mut app = application(AppKind::Process, context);
    app.command = Some("app.py".to_owned());
    app.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let d = deploy_files(h, name, &app, &[("app.py", script.as_bytes())]);
    // In-memory trees carry no modes; a Git source would (see deploy.rs).
    std::fs::set_permissions(
        d.image.join("app.py"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    AppSpec { app, deployment: d }
}

/// Polls `f` every 10 ms until it returns `Some`, for at most 10 s; fails naming `what`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_a_process_app_isolated_and_restarts_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let spec = process_app(&h, "api", "/api", &[("GREETING", "hello")]);
    let (engine, addr) = start(
        config(
            &[(
                "http",
                listener(8, Duration::from_secs(5), Duration::from_secs(10)),
            )],
            vec![("api", spec)],
        ),
        &h,
    )
    .await;
    let r = get(
        addr,
        "/api/hello?x=1",
        &[("connection", "keep-alive, x-drop"), ("x-drop", "1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(
        v["path"], "/api/hello?x=1",
        "the full path, context included"
    );
    let hd = &v["headers"];
    assert_eq!(hd["x-forwarded-for"], "127.0.0.1");
    assert_eq!(hd["x-forwarded-proto"], "http");
    assert_eq!(hd["x-forwarded-prefix"], "/api");
    assert_eq!(hd["x-forwarded-host"], addr.to_string());
    assert!(
        hd.get("x-drop").is_none(),
        "a header named in Connection is hop-by-hop"
    );
    let env = v["env"].as_object().expect("env");
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["STEWARD_MESSAGING_URL"], "stomp://127.0.0.1:61613");
    assert_eq!(env["STEWARD_APP"], "api");
    let image = h.root.join(".workspace/deployed/api");
    assert_eq!(env["STEWARD_DEPLOY_DIR"], image.display().to_string());
    assert_eq!(
        v["cwd"],
        h.root.join(".workspace/tmp/api").display().to_string()
    );
    let libs = format!(
        "{}:{}:{}",
        image.join("lib").display(),
        h.root.join("lib/application").display(),
        h.domain_home.join("lib/application").display()
    );
    assert_eq!(env["STEWARD_LIBRARY_PATH"], libs);
    // Nothing of the server's environment but PATH, HOME and LANG (cargo gives this test process
    // CARGO_* variables: none may reach the app). Shell wrappers on PATH (pyenv shims) may add
    // PWD, SHLVL and their own variables; those are not the server's.
    let wrapper = |k: &str| ["PWD", "OLDPWD", "SHLVL", "_"].contains(&k) || k.starts_with("PYENV");
    for (k, _) in std::env::vars() {
        if !["PATH", "HOME", "LANG"].contains(&k.as_str()) && !wrapper(&k) {
            assert!(!env.contains_key(&k), "the app inherited {k}");
        }
    }
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));

    // Killed: the supervisor starts it again and traffic resumes.
    let pid = engine.app_pid("api").expect("pid");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(pid)));
    // SAFETY: signalling a child this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let new_pid = eventually("the application restarted and ready", || {
        engine
            .app_pid("api")
            .filter(|p| *p != pid && engine.app_ready("api"))
    })
    .await;
    let r = get(addr, "/api/again", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["pid"].as_u64(), Some(u64::from(new_pid)));

    // Its output went to its own log.
    let logs: Vec<String> = std::fs::read_dir(h.logs())
        .expect("logs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let app_log = logs
        .iter()
        .find(|n| n.starts_with("app_api_"))
        .expect("app log");
    let text = std::fs::read_to_string(h.logs().join(app_log)).expect("read");
    assert!(text.contains("request /api/hello"), "{text}");

    engine.shutdown(Duration::from_secs(2)).await;
    // SAFETY: probing whether the pid still exists.
    let alive = unsafe { libc::kill(new_pid as i32, 0) } == 0;
    assert!(!alive, "stopped on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_requests_wait_then_get_503_and_slow_ones_504() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let (spec, started) = slow_app(&h, tmp.path(), "1.5");
    let (engine, addr) = start(
        config(
            &[(
                "http",
                listener(1, Duration::from_millis(300), Duration::from_secs(10)),
            )],
            vec![("slow", spec.clone())],
        ),
        &h,
    )
    .await;
    // The one worker is taken once the application has the first request.
    let first = slow_request(addr, &started).await;
    // Queued longer than queue-timeout (300 ms) while the worker is busy for 1.5 s: 503.
    let second = get(addr, "/slow/fast", &[]).await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), "1");
    assert_eq!(first.await.expect("join").status, 200);
    // Capacity is back: the next request is served at once.
    assert_eq!(get(addr, "/slow/fast", &[]).await.status, 200);

    // A request that finds the worker busy waits for it: with a queue-timeout longer than the
    // slow request (changed live), the excess request is served, not refused.
    let mut cfg = engine.config().await.expect("config");
    if let Some(l) = cfg.listeners.get_mut("http") {
        l.queue_timeout = Dur(Duration::from_secs(30));
    }
    engine.apply(cfg).await.expect("apply");
    std::fs::remove_file(&started).expect("rm started");
    let first = slow_request(addr, &started).await;
    assert_eq!(get(addr, "/slow/fast", &[]).await.status, 200);
    assert_eq!(first.await.expect("join").status, 200);

    // request-timeout, changed live: 504.
    let mut cfg = engine.config().await.expect("config");
    if let Some(l) = cfg.listeners.get_mut("http") {
        l.request_timeout = Dur(Duration::from_millis(400));
    }
    engine.apply(cfg).await.expect("apply");
    let r = get(addr, "/slow/slow", &[]).await;
    assert_eq!(r.status, 504);
    engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_twenty_live_changes_under_load_without_a_failed_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let site = application(AppKind::Static, "/site");
    let docs = application(AppKind::Static, "/docs");
    let d1 = deploy_files(&h, "site", &site, &[("index.html", b"site")]);
    let d2 = deploy_files(&h, "docs", &docs, &[("a.txt", b"docs a")]);
    let base = config(
        &[(
            "http",
            listener(4, Duration::from_secs(5), Duration::from_secs(5)),
        )],
        vec![
            (
                "site",
                AppSpec {
                    app: site,
                    deployment: d1,
                },
            ),
            (
                "docs",
                AppSpec {
                    app: docs,
                    deployment: d2,
                },
            ),
        ],
    );
    let (engine, addr) = start(base.clone(), &h).await;

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (done, failures, stop) = (done.clone(), failures.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            // Two keep-alive connections and a fresh connection per request, alternating.
            let mut keep = Client::connect(addr).await;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) || n < 50 {
                let r = if (n + worker).is_multiple_of(3) {
                    Client::connect(addr).await.req("GET", "/site/", &[]).await
                } else {
                    keep.req("GET", "/site/", &[]).await
                };
                match r {
                    Ok(r) if r.status == 200 && r.body == b"site" => {}
                    Ok(r) => {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("{} {}", r.status, r.text()))
                    }
                    Err(e) => failures.lock().expect("lock").push(e),
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut last = base.clone();
    for i in 0..20u32 {
        let mut cfg = base.clone();
        if let Some(l) = cfg.listeners.get_mut("http") {
            l.thread_pool.max = 1 + (i % 6);
            l.queue_timeout = Dur(Duration::from_secs(5 + u64::from(i % 2)));
        }
        cfg.access_log.enabled = i % 2 == 0;
        cfg.access_log.format = [
            AccessLogFormat::Common,
            AccessLogFormat::Combined,
            AccessLogFormat::Json,
        ][(i % 3) as usize];
        if i >= 10
            && let Some(d) = cfg.apps.get_mut("docs")
        {
            d.app.context_path = Some("/manual".to_owned());
        }
        let before = done.load(Ordering::Relaxed);
        engine.apply(cfg.clone()).await.expect("apply");
        last = cfg;
        // Each change meets traffic: the next one waits until every worker could have sent one.
        eventually("requests served after a change", || {
            (done.load(Ordering::Relaxed) >= before + 4).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load");
    }
    let failures = failures.lock().expect("lock").clone();
    let total = done.load(Ordering::Relaxed);
    // The engine holds the last change, not an earlier one.
    assert_eq!(engine.config().await.as_ref(), Some(&last));
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(get(addr, "/docs/a.txt", &[]).await.status, 404);
    assert_eq!(get(addr, "/manual/a.txt", &[]).await.text(), "docs a");

    // Listener address and port are restart settings: refused, with their paths.
    let mut cfg = base.clone();
    if let Some(l) = cfg.listeners.get_mut("http") {
        l.port = 1;
    }
    cfg.listeners.insert(
        "admin".to_owned(),
        listener(1, Duration::from_secs(1), Duration::from_secs(1)),
    );
    match engine.apply(cfg).await {
        Err(WebError::RestartRequired { paths }) => assert_eq!(
            paths,
            vec![
                "servers.server1.web.listeners.http.port".to_owned(),
                "servers.server1.web.listeners.admin".to_owned(),
            ]
        ),
        other => panic!("{other:?}"),
    }
    // Nothing changed.
    assert_eq!(get(addr, "/manual/a.txt", &[]).await.status, 200);
    engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let (spec, started) = slow_app(&h, tmp.path(), "0.8");
    let (engine, addr) = start(
        config(
            &[(
                "http",
                listener(4, Duration::from_secs(1), Duration::from_secs(10)),
            )],
            vec![("slow", spec)],
        ),
        &h,
    )
    .await;
    let inflight = slow_request(addr, &started).await;
    engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(inflight.await.expect("join").status, 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_keep_the_process_and_a_redeploy_replaces_only_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let site = application(AppKind::Static, "/site");
    let d = deploy_files(&h, "site", &site, &[("index.html", b"site")]);
    let api = process_app(&h, "api", "/api", &[]);
    let base = config(
        &[(
            "http",
            listener(8, Duration::from_secs(5), Duration::from_secs(10)),
        )],
        vec![
            (
                "site",
                AppSpec {
                    app: site,
                    deployment: d,
                },
            ),
            ("api", api),
        ],
    );
    let (engine, addr) = start(base.clone(), &h).await;
    let pid = engine.app_pid("api").expect("pid");

    // Context path and health path are live: same process, new route.
    let mut cfg = base.clone();
    if let Some(a) = cfg.apps.get_mut("api") {
        a.app.context_path = Some("/v2".to_owned());
        a.app.health_path = "/v2/health".to_owned();
    }
    let report = engine.apply(cfg.clone()).await.expect("apply");
    assert!(report.started.is_empty(), "{report:?}");
    assert_eq!(engine.app_pid("api"), Some(pid));
    assert_eq!(get(addr, "/api/x", &[]).await.status, 404);
    let r = get(addr, "/v2/x", &[]).await;
    assert_eq!((r.status, json(&r)["path"].as_str()), (200, Some("/v2/x")));

    // New content for api: only api is started anew, and the old process stops.
    let mut app = cfg.apps["api"].app.clone();
    app.command = Some("app.py".to_owned());
    let script = format!("{APP_PY}\n# v2\n");
    let d2 = deploy_files(&h, "api", &app, &[("app.py", script.as_bytes())]);
    std::fs::set_permissions(
        d2.image.join("app.py"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    if let Some(a) = cfg.apps.get_mut("api") {
        a.deployment = d2;
    }
    let report = engine.apply(cfg).await.expect("redeploy");
    assert_eq!(report.started, vec!["api".to_owned()]);
    assert!(report.failed.is_empty(), "{report:?}");
    let new_pid = engine.app_pid("api").expect("new pid");
    assert_ne!(new_pid, pid);
    let r = get(addr, "/v2/y", &[]).await;
    assert_eq!(json(&r)["pid"].as_u64(), Some(u64::from(new_pid)));
    assert_eq!(get(addr, "/site/", &[]).await.text(), "site");
    eventually("the old process gone", || {
        // SAFETY: probing whether the old pid still exists.
        (unsafe { libc::kill(pid as i32, 0) } != 0).then_some(())
    })
    .await;
    engine.shutdown(Duration::from_secs(2)).await;
}

/// The whole path the server takes: a commit made with `git`, deployed on a blocking thread
/// through `GitSource` (the execute bit of `app.py` comes from Git), then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_applications_deployed_from_a_git_commit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("apps/api")).expect("mkdir");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(9);
    header.set_mode(0o644);
    tar.append_data(&mut header, "index.html", &b"from tar!"[..])
        .expect("append");
    let tgz = tar.into_inner().expect("tar").finish().expect("gz");
    std::fs::write(repo.join("site.tgz"), tgz).expect("write");
    std::fs::write(repo.join("apps/api/app.py"), APP_PY).expect("write");
    std::fs::set_permissions(
        repo.join("apps/api/app.py"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "apps"]);

    let mut site = application(AppKind::Static, "/site");
    site.source = "site.tgz".to_owned();
    let mut api = application(AppKind::Process, "/api");
    api.source = "apps/api".to_owned();
    api.command = Some("app.py".to_owned());
    let apps = vec![("site".to_owned(), site), ("api".to_owned(), api)];
    let (home2, repo2, apps2) = (h.clone(), repo.clone(), apps.clone());
    let deployed = tokio::task::spawn_blocking(move || {
        let repo = reconciler::git::Repo::open(&repo2).expect("open");
        let head = repo.resolve("HEAD").expect("resolve").expect("HEAD");
        let source = deploy::GitSource::open(&repo, head).expect("source");
        apps2
            .iter()
            .map(|(name, app)| {
                let d = deploy::deploy(&home2, &source, name, app).expect("deploy");
                (name.clone(), d)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let specs = apps
        .into_iter()
        .zip(deployed)
        .map(|((name, app), (_, deployment))| (name, AppSpec { app, deployment }))
        .collect::<BTreeMap<_, _>>();
    let mut cfg = config(
        &[(
            "http",
            listener(8, Duration::from_secs(5), Duration::from_secs(10)),
        )],
        vec![],
    );
    cfg.apps = specs;
    let (engine, addr) = start(cfg, &h).await;
    assert_eq!(get(addr, "/site/", &[]).await.text(), "from tar!");
    let r = get(addr, "/api/orders", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["path"], "/api/orders");
    engine.shutdown(Duration::from_secs(2)).await;
}

/// A keep-alive HTTP/1.1 backend that says which of its connections served each request.
/// `/…/conn`: `{"conn": id, "served": n}` (n requests before this one on that connection);
/// `/…/old`: an HTTP/1.0 answer delimited by closing the connection; `/…/stream?flag=F`: a
/// chunked body whose second chunk waits for file F to exist; `POST /…/echo`: the request body
/// (chunked or not) back; `/…/flaky`: answers only the first request of a connection and closes
/// it on any later one, as an application closing an idle connection while a request arrives.
/// `IDLE=s`: closes a connection idle for s seconds.
const KEEP_PY: &str = r#"#!/usr/bin/env python3
import itertools, json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ids = itertools.count(1)
lock = threading.Lock()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = float(os.environ.get("IDLE", "0")) or None

    def setup(self):
        super().setup()
        with lock:
            self.conn = next(ids)
        self.served = 0

    def reply(self, body, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        served, self.served = self.served, self.served + 1
        if self.path.endswith("/flaky") and served > 0:
            self.close_connection = True
            return
        if self.path.endswith("/old"):
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"no length, ")
            self.wfile.write(b"ended by close")
            self.close_connection = True
            return
        if "/stream?flag=" in self.path:
            flag = self.path.split("flag=", 1)[1]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"6\r\nfirst\n\r\n")
            self.wfile.flush()
            until = time.time() + 20
            while not os.path.exists(flag) and time.time() < until:
                time.sleep(0.01)
            self.wfile.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
            return
        if self.path.endswith("/headers"):
            self.reply(json.dumps([[k.lower(), v] for k, v in self.headers.items()]).encode())
            return
        if self.path.endswith("/bad"):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n")
            self.close_connection = True
            return
        self.reply(json.dumps({"conn": self.conn, "served": served}).encode())

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "615")
        self.end_headers()

    def do_POST(self):
        served, self.served = self.served, self.served + 1
        if self.path.endswith("/flaky") and served > 0:
            self.close_connection = True
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(body, "text/plain")

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// `KEEP_PY` deployed as process application `name` at `context`.
fn keep_app(h: &ServerHome, name: &str, context: &str, env: &[(&str, &str)]) -> AppSpec {
    script_app(h, name, context, env, KEEP_PY)
}

/// An engine with `KEEP_PY` at `/keep`.
async fn start_keep(h: &ServerHome) -> (WebEngine, SocketAddr) {
    let cfg = config(
        &[(
            "http",
            listener(8, Duration::from_secs(5), Duration::from_secs(10)),
        )],
        vec![("keep", keep_app(h, "keep", "/keep", &[]))],
    );
    start(cfg, h).await
}

/// The backend connection that served `r` (`KEEP_PY`'s `/conn`).
fn conn_of(r: &Reply) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text());
    json(r)["conn"].as_u64().expect("conn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_as_http_1_1_over_reused_upstream_connections() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let (engine, addr) = start_keep(&h).await;
    let mut client = Client::connect(addr).await;
    let mut conns = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = client.req("GET", "/keep/conn", &[]).await.expect("request");
        assert_eq!(r.version, hyper::Version::HTTP_11);
        assert_eq!(r.header("server"), "", "the application's Server header");
        conns.insert(conn_of(&r));
        // A new client connection is no reason for a new upstream one either.
        conns.insert(conn_of(&get(addr, "/keep/conn", &[]).await));
        assert_eq!(
            conns.len(),
            1,
            "request {i}: upstream connections {conns:?}"
        );
    }

    // An HTTP/1.0 application whose body ends when it closes: the client still gets HTTP/1.1
    // (chunked), and its connection stays open for the next request.
    for _ in 0..2 {
        let r = client.req("GET", "/keep/old", &[]).await.expect("request");
        assert_eq!((r.status, r.version), (200, hyper::Version::HTTP_11));
        assert_eq!(r.text(), "no length, ended by close");
        assert_eq!(r.header("transfer-encoding"), "chunked");
    }
    let r = client
        .req("GET", "/keep/conn", &[])
        .await
        .expect("same client connection");
    assert_eq!(r.status, 200);

    // The literal status line and headers, as a client reads them.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        b"POST /keep/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head");
    assert!(!head.to_lowercase().contains("\r\nserver:"), "{head}");
    assert_eq!(
        body, "hello, world",
        "a chunked request body, passed through"
    );
    engine.shutdown(Duration::from_secs(2)).await;
}

/// Writes `parts` to a new connection, `pause` apart, and reads until the engine closes it.
async fn exchange_raw(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for p in parts {
        s.write_all(p).await.expect("write");
        tokio::time::sleep(pause).await;
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("the engine closes the connection")
        .expect("read");
    String::from_utf8_lossy(&raw).into_owned()
}

/// The relay (the common case, without hyper) and what it hands to hyper, seen from a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_pipelined_requests_and_bodies_and_hands_the_rest_to_hyper() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let (engine, addr) = start_keep(&h).await;
    // Warm: the application answers.
    conn_of(&get(addr, "/keep/conn", &[]).await);

    // Pipelined in one write: a GET, a HEAD, a POST with a body, answered in order on one
    // connection; the HEAD's answer has its length and no body.
    let raw = exchange_raw(
        addr,
        &[b"GET /keep/conn HTTP/1.1\r\nHost: x\r\n\r\n\
            HEAD /keep/conn HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /keep/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"],
        Duration::ZERO,
    )
    .await;
    let answers: Vec<&str> = raw.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 3, "{raw}");
    assert!(answers[0].contains("\"conn\""), "{raw}");
    assert!(
        answers[1]
            .to_lowercase()
            .contains("content-length: 615\r\n"),
        "{raw}"
    );
    assert!(
        answers[1].ends_with("\r\n\r\n"),
        "no body after HEAD: {raw}"
    );
    assert!(answers[2].ends_with("\r\n\r\nhello"), "{raw}");
    assert!(answers[2].contains("connection: close\r\n"), "{raw}");
    assert!(!raw.to_lowercase().contains("\r\nserver:"), "{raw}");
    assert_eq!(raw.to_lowercase().matches("\r\ndate: ").count(), 3, "{raw}");

    // A body larger than any read, arriving in pieces after its head.
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!(
        "POST /keep/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let raw = exchange_raw(
        addr,
        &[
            head.as_bytes(),
            &body[..1000],
            &body[1000..200_000],
            &body[200_000..],
        ],
        Duration::from_millis(50),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        &raw[..raw.len().min(300)]
    );
    let (_, echoed) = raw.split_once("\r\n\r\n").expect("head");
    assert!(
        echoed.as_bytes() == body.as_slice(),
        "the body comes back whole"
    );

    // The headers the application sees.
    let r = get(
        addr,
        "/keep/headers",
        &[
            ("connection", "x-drop"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-prefix", "/forged"),
        ],
    )
    .await;
    let seen: std::collections::BTreeMap<String, String> = json(&r)
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("name").to_owned(),
                p[1].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    assert_eq!(seen["x-forwarded-for"], "192.0.2.1, 127.0.0.1", "{seen:?}");
    assert_eq!(seen["x-forwarded-prefix"], "/keep", "{seen:?}");
    assert_eq!(seen["x-forwarded-host"], addr.to_string(), "{seen:?}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen:?}");
    for gone in ["x-drop", "keep-alive"] {
        assert!(!seen.contains_key(gone), "{gone}: {seen:?}");
    }

    // A malformed answer is a 502, and the client connection goes on.
    let raw = exchange_raw(
        addr,
        &[b"GET /keep/bad HTTP/1.1\r\nHost: x\r\n\r\nGET /keep/conn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{raw}");
    assert!(raw.contains("HTTP/1.1 200 OK\r\n"), "{raw}");

    // Handed to hyper: `Expect: 100-continue` (hyper sends the 100), an HTTP/1.0 client, a
    // head that does not parse (hyper's 400).
    let raw = exchange_raw(
        addr,
        &[
            b"POST /keep/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            b"ok",
        ],
        Duration::from_millis(100),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{raw}"
    );
    assert!(raw.ends_with("\r\n\r\nok"), "{raw}");
    let raw = exchange_raw(addr, &[b"GET /keep/conn HTTP/1.0\r\n\r\n"], Duration::ZERO).await;
    assert!(raw.starts_with("HTTP/1.0 200 OK\r\n"), "{raw}");
    let raw = exchange_raw(
        addr,
        &[b"GET /keep/conn HTTP/1.1\r\nBad Header: 1\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw}");
    engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_chunked_response_as_the_application_sends_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let (engine, addr) = start_keep(&h).await;
    let flag = tmp.path().join("flag");
    let mut client = Client::connect(addr).await;
    let req = hyper::Request::get(format!("/keep/stream?flag={}", flag.display()))
        .header("host", "x")
        .body(Empty::new())
        .expect("request");
    let resp = client.send.send_request(req).await.expect("response");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    // The first chunk arrives while the application still waits to send the second.
    let first = body.frame().await.expect("frame").expect("ok");
    assert_eq!(first.into_data().expect("data"), "first\n");
    std::fs::write(&flag, b"").expect("flag");
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, "second\n");
    // The connection the stream used is reused afterwards.
    let a = conn_of(&client.req("GET", "/keep/conn", &[]).await.expect("req"));
    let b = conn_of(&client.req("GET", "/keep/conn", &[]).await.expect("req"));
    assert_eq!(a, b);
    engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_application_closes_cost_the_client_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let logger = runtime::logfile::Logger::new(
        Some(
            runtime::logfile::LogFile::open(&h.logs(), "server", Default::default()).expect("log"),
        ),
        runtime::logfile::Echo::None,
        "server1",
    );
    let cfg = config(
        &[(
            "http",
            listener(8, Duration::from_secs(5), Duration::from_secs(10)),
        )],
        vec![
            ("keep", keep_app(&h, "keep", "/keep", &[])),
            ("idle", keep_app(&h, "idle", "/idle", &[("IDLE", "0.2")])),
        ],
    );
    let ctx = EngineContext {
        logger: Some(logger),
        ..ctx(&h)
    };
    let (engine, report) = WebEngine::start(cfg, ctx).await.expect("start");
    assert!(report.failed.is_empty(), "{report:?}");
    let addr = *engine.local_addrs().values().next().expect("listener");
    let mut client = Client::connect(addr).await;

    // The application drops every request after the first on a connection: each GET after the
    // first meets a pooled connection that fails, and is sent again on a new one.
    let mut conns = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let r = client
            .req("GET", "/keep/flaky", &[])
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(json(&r)["served"], 0);
        conns.insert(conn_of(&r));
    }
    assert_eq!(conns.len(), 5, "each on a connection of its own: {conns:?}");
    // A POST is not sent twice: the client learns it failed.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        b"POST /keep/flaky HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    assert!(raw.starts_with("HTTP/1.1 502 "), "{raw}");

    // Closed while idle (after 0.2 s): noticed, and a new connection is opened.
    let mut conns = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let r = client.req("GET", "/idle/conn", &[]).await.expect("request");
        conns.insert(conn_of(&r));
        // Waiting out the application's idle close (IDLE=0.2) is what is tested here.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(conns.len(), 3, "{conns:?}");

    engine.shutdown(Duration::from_secs(2)).await;
    let log = runtime::logfile::tail(&h.logs(), "server", 1000).join("\n");
    assert!(
        log.contains("[WEB-0211] Application keep: GET /keep/flaky"),
        "the retry at debug: {log}"
    );
    assert!(
        log.contains("[WEB-0212] Application keep: POST /keep/flaky")
            && log.contains("answered 502"),
        "the 502 as a warning: {log}"
    );
}
