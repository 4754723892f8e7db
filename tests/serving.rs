//! The Managed Server serves its applications through a real `steward start-server`: static and
//! process applications over HTTP, live changes under load with no failed request and no restart,
//! restart changes reported as pending, failing deployments that fail alone and are fixed by a
//! push or retried when the Master returns, the library override warning, and archives that try
//! to escape their image.

mod util;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use util::{
    Guard, HttpConn, Repo, Servers, TempDir, eventually, git, http_get, master, pid_of, server_log,
    start_server, status, stop_server,
};

/// Bytes in the server's access logs.
fn access_log_size(home: &Path, server: &str) -> u64 {
    let dir = home.join("servers").join(server).join("logs");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("access_"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Edits `file` in the clone (replacing `from`, which must occur), commits and pushes; returns
/// the new commit.
fn push(clone: &Path, edits: &[(&str, &str)]) -> String {
    let p = clone.join("domain.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "`{from}` not in domain.toml");
        text = text.replacen(from, to, 1);
    }
    std::fs::write(&p, text).unwrap();
    commit_and_push(clone)
}

fn commit_and_push(clone: &Path) -> String {
    assert_eq!(git(clone, &["add", "-A"]).code, 0);
    assert_eq!(git(clone, &["commit", "-qm", "change"]).code, 0);
    let r = git(clone, &["push", "-q", "origin", "main"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    git(clone, &["rev-parse", "HEAD"]).stdout.trim().to_owned()
}

/// A domain home initialized from `repo`, with its Master running and a clone to push from.
struct Domain {
    tmp: TempDir,
    home: PathBuf,
    clone: PathBuf,
    mport: u16,
    master: Option<Guard>,
}

impl Domain {
    fn new(repo: &Repo, mport: u16, name: &str) -> Domain {
        let tmp = TempDir::new(name);
        let home = tmp.path().join("domain1");
        let r = util::steward(
            repo.path(),
            &["init", home.to_str().unwrap(), "--from", "."],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut d = Domain {
            clone: tmp.path().join("clone"),
            tmp,
            home,
            mport,
            master: None,
        };
        d.start_master();
        let url = format!("http://admin:admin@127.0.0.1:{mport}/git/domain.git");
        let clone = d.clone.to_str().unwrap().to_owned();
        assert_eq!(git(d.tmp.path(), &["clone", "-q", &url, &clone]).code, 0);
        d
    }

    fn start_master(&mut self) {
        self.master = Some(master(&self.home));
        let port = self.mport;
        eventually(20, || {
            http_get(port, "/healthz", None).filter(|r| r.contains(" 200 "))
        })
        .expect("master up");
    }
}

#[test]
fn applications_serve_and_live_changes_drop_no_request() {
    let repo = Repo::example("serve-domain");
    let ports = util::example_on_free_ports(&repo);
    // Manual restarts: this test watches a restart stay pending.
    repo.edit(
        "domain.toml",
        "restart-policy = \"rolling\"",
        "restart-policy = \"manual\"",
    );
    repo.commit("manual restarts for server1");
    let (mport, s1, s3, web1) = (ports[0], ports[1], ports[3], ports[4]);
    let d = Domain::new(&repo, mport, "serve-home");
    let home = d.home.clone();
    let _servers = Servers(&home, &["server1", "server3"]);
    start_server(&home, "server1", mport);
    start_server(&home, "server3", mport);

    // The static application: its index, a stylesheet with its content type.
    let index = std::fs::read(util::example_dir().join("apps/shop/index.html")).unwrap();
    let mut c = HttpConn::connect(web1).unwrap();
    let r = c.get("/shop/").unwrap();
    assert_eq!((r.status, &r.body), (200, &index));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let css = c.get("/shop/css/shop.css").unwrap();
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .unwrap_or("")
            .starts_with("text/css")
    );
    // The process application, on server3's default listener (base port + 1), proxied with
    // the full path and its own environment.
    let mut api = HttpConn::connect(s3 + 1).unwrap();
    let r = api.get("/api/orders?x=1").unwrap();
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["path"], "/api/orders?x=1");
    assert_eq!(v["greeting"], "hello from the api");
    assert_eq!(status(s3)["failed_applications"], serde_json::json!([]));

    // A load loop: two keep-alive connections and two connecting anew for each request. The
    // shop is renamed to /store on the way: a 404 at /shop/ must then be served at /store/.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut loaders = Vec::new();
    for t in 0..4 {
        let (stop, ok, failures, index) =
            (stop.clone(), ok.clone(), failures.clone(), index.clone());
        loaders.push(std::thread::spawn(move || {
            let keep_alive = t % 2 == 0;
            let mut conn: Option<HttpConn> = None;
            // Bounded: the loop ends at `stop`, or after this many requests at the latest.
            for _ in 0..200_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut fetch = |path: &str| -> Result<util::HttpResponse, String> {
                    let c = match conn.as_mut() {
                        Some(c) if keep_alive => c,
                        _ => conn.insert(HttpConn::connect(web1).map_err(|e| e.to_string())?),
                    };
                    c.get(path)
                };
                let outcome = match fetch("/shop/") {
                    Ok(r) if r.status == 404 => fetch("/store/"),
                    other => other,
                };
                match outcome {
                    Ok(r) if r.status == 200 && r.body == index => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        conn = None;
                    }
                }
            }
        }));
    }
    let pid = pid_of(&home, "server1");
    let applied = |commit: &str| {
        eventually(20, || {
            Some(status(s1)).filter(|s| s["applied_commit"] == commit)
        })
        .expect("server1 applies the commit")
    };
    let served_before = |n: usize| {
        eventually(20, || (ok.load(Ordering::Relaxed) > n).then_some(()))
            .expect("the load loop makes progress")
    };
    served_before(50);

    // Live: the pool, then the access log, then the context path.
    let st = applied(&push(
        &d.clone,
        &[(
            "thread-pool = { min = 2, max = 64 }",
            "thread-pool = { min = 2, max = 8 }",
        )],
    ));
    assert_eq!(st["pending_restart"], serde_json::json!([]));
    served_before(ok.load(Ordering::Relaxed) + 50);
    applied(&push(
        &d.clone,
        &[(
            "[servers.server1.web.access-log]\nenabled = true",
            "[servers.server1.web.access-log]\nenabled = false",
        )],
    ));
    // The writer thread may still be catching up with requests served before the change.
    std::thread::sleep(Duration::from_millis(500));
    let logged = access_log_size(&home, "server1");
    served_before(ok.load(Ordering::Relaxed) + 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        logged,
        access_log_size(&home, "server1"),
        "access log is off"
    );
    let st = applied(&push(
        &d.clone,
        &[("context-path = \"/shop\"", "context-path = \"/store\"")],
    ));
    assert_eq!(st["pending_restart"], serde_json::json!([]));
    served_before(ok.load(Ordering::Relaxed) + 200);
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    eprintln!("load loop: {} requests served", ok.load(Ordering::Relaxed));
    assert_eq!(pid, pid_of(&home, "server1"), "no restart for live changes");
    let mut c = HttpConn::connect(web1).unwrap();
    assert_eq!(c.get("/shop/").unwrap().status, 404);
    assert_eq!(c.get("/store/").unwrap().body, index);
    let log = server_log(&home, "server1");
    for applied in [
        "Applied live: servers.server1.web.listeners.http.thread-pool.max 64 → 8",
        "Applied live: servers.server1.web.access-log.enabled true → false",
    ] {
        assert!(log.contains(applied), "{applied} missing:\n{log}");
    }

    // A restart setting (the listener port) with a live one in the same commit: the live one
    // applies, the port pends (listed once), and the old port keeps serving.
    let new_port = util::free_pair();
    let st = applied(&push(
        &d.clone,
        &[
            (&format!("port = {web1}\n"), &format!("port = {new_port}\n")),
            (
                "thread-pool = { min = 2, max = 8 }",
                "thread-pool = { min = 2, max = 16 }",
            ),
        ],
    ));
    assert_eq!(
        st["pending_restart"],
        serde_json::json!(["servers.server1.web.listeners.http.port"])
    );
    assert!(server_log(&home, "server1").contains("thread-pool.max 8 → 16"));
    assert_eq!(
        c.get("/store/").unwrap().body,
        index,
        "same connection, same port"
    );
    assert!(
        HttpConn::connect(new_port).is_err(),
        "not bound before a restart"
    );
    assert_eq!(pid, pid_of(&home, "server1"));

    // A graceful stop stops the process applications too.
    let api_image = "servers/server3/.workspace/deployed/api";
    assert!(!util::processes_with(api_image).is_empty(), "the api runs");
    stop_server(&home, "server3");
    assert!(
        eventually(10, || util::processes_with(api_image)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the api process stopped with its server"
    );
}

/// Domain text for the failing-deployment test: server1 only, with three bad applications.
const BAD_APPS: &str = r#"
[applications.broken]
kind = "static"
source = "apps/broken.tar.gz"
context-path = "/broken"
targets = ["server1"]

[applications.crash]
kind = "process"
source = "apps/api"
context-path = "/crash"
targets = ["server1"]
command = "sh"
args = ["-c", "exit 3"]
start-timeout = "5s"

[applications.evil]
kind = "static"
source = "apps/evil.tar"
context-path = "/evil"
targets = ["server1"]
"#;

#[test]
fn failing_deployments_fail_alone_and_are_fixed_by_a_push() {
    let repo = Repo::example("fail-domain");
    let ports = util::example_on_free_ports(&repo);
    let text = repo.read("domain.toml");
    repo.write("domain.toml", &format!("{text}{BAD_APPS}"));
    repo.write("apps/broken.tar.gz", "this is not gzip data at all");
    let evil = util::tar_with(&[
        ("index.html", b"fine"),
        ("../../../../../escape.txt", b"escaped"),
    ]);
    std::fs::write(repo.path().join("apps/evil.tar"), evil).unwrap();
    repo.commit("three bad applications");
    let (mport, s1, web1) = (ports[0], ports[1], ports[4]);
    let d = Domain::new(&repo, mport, "fail-home");
    let home = d.home.clone();
    // A server library with the name of a domain library: the server's wins, with a warning.
    let server_lib = home.join("servers/server1/lib/application");
    let domain_lib = home.join("lib/application");
    for dir in [&server_lib, &domain_lib] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("common.jar"), "lib").unwrap();
    }
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);

    let st = status(s1);
    assert_eq!(st["state"], "RUNNING");
    assert_eq!(
        st["failed_applications"],
        serde_json::json!(["broken", "crash", "evil"])
    );
    let why = st["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("application broken: "), "{why}");
    assert!(why.contains("application crash: "), "{why}");
    assert!(
        why.contains("application evil: ") && why.contains("`..` in a path"),
        "{why}"
    );
    // Reported to the Master.
    eventually(20, || {
        http_get(mport, "/v1/servers/server1", Some("YWRtaW46YWRtaW4="))
            .filter(|r| r.contains(r#""failed_applications":["broken","crash","evil"]"#))
    })
    .expect("the Master lists the failed applications");
    // The others serve.
    let mut c = HttpConn::connect(web1).unwrap();
    assert_eq!(c.get("/shop/").unwrap().status, 200);
    // Nothing was written outside the image.
    assert_eq!(
        util::find_named(d.tmp.path(), "escape.txt"),
        Vec::<PathBuf>::new()
    );
    let log = server_log(&home, "server1");
    assert!(
        log.contains("[SERVER-0501] Deployment of application broken failed"),
        "{log}"
    );
    assert!(
        log.contains("[SERVER-0501] Deployment of application evil failed"),
        "{log}"
    );
    assert!(
        log.contains("[SERVER-0505] Application crash failed to start"),
        "{log}"
    );
    let warning = format!(
        "[SERVER-0502] Application shop: server library {} overrides domain library {}",
        server_lib.join("common.jar").display(),
        domain_lib.join("common.jar").display()
    );
    assert!(log.contains(&warning), "{warning} missing:\n{log}");

    // Fixed by a push: a real directory for broken, a command that runs for crash, and evil
    // removed.
    std::fs::create_dir_all(d.clone.join("apps/broken")).unwrap();
    std::fs::write(d.clone.join("apps/broken/index.html"), "repaired").unwrap();
    let p = d.clone.join("domain.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(
            "source = \"apps/broken.tar.gz\"",
            "source = \"apps/broken\"",
        )
        .replace(
            "command = \"sh\"\nargs = [\"-c\", \"exit 3\"]",
            "command = \"bin/api\"",
        );
    let text = &text[..text.find("[applications.evil]").unwrap()];
    std::fs::write(&p, text).unwrap();
    std::fs::remove_file(d.clone.join("apps/evil.tar")).unwrap();
    let fixed = commit_and_push(&d.clone);
    let st = eventually(30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == fixed.as_str())
    })
    .expect("server1 applies the fix");
    assert_eq!(st["failed_applications"], serde_json::json!([]), "{st}");
    assert_eq!(st["last_error"], serde_json::Value::Null);
    let r = c.get("/broken/").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"repaired".as_slice()));
    let r = c.get("/crash/x").unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("\"path\": \"/crash/x\""));
    assert_eq!(c.get("/evil/").unwrap().status, 404);
    for gone in ["deployed/evil", "deployed/_generated_/evil", "tmp/evil"] {
        let p = home.join("servers/server1/.workspace").join(gone);
        assert!(!p.exists(), "{} is left", p.display());
    }
}

#[test]
fn a_failed_application_is_redeployed_when_the_master_returns() {
    let repo = Repo::example("retry-domain");
    let ports = util::example_on_free_ports(&repo);
    let (mport, s1, web1) = (ports[0], ports[1], ports[4]);
    let mut d = Domain::new(&repo, mport, "retry-home");
    let home = d.home.clone();
    // A file where the shop's working directory belongs: its deployment fails.
    let blocker = home.join("servers/server1/.workspace/tmp/shop");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "in the way").unwrap();
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);
    let st = status(s1);
    assert_eq!(st["failed_applications"], serde_json::json!(["shop"]));
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("application shop: "),
        "{st}"
    );
    assert!(
        http_get(web1, "/shop/", None)
            .unwrap_or_default()
            .contains(" 404 ")
    );

    // The Master goes away; the obstacle is removed meanwhile; the Master returns: the server
    // resyncs, redeploys what failed, and becomes DEPENDENT.
    drop(d.master.take());
    eventually(30, || {
        Some(status(s1)).filter(|s| s["mode"] == "INDEPENDENT")
    })
    .expect("INDEPENDENT");
    std::fs::remove_file(&blocker).unwrap();
    d.start_master();
    let st = eventually(60, || Some(status(s1)).filter(|s| s["mode"] == "DEPENDENT"))
        .expect("DEPENDENT again");
    assert_eq!(st["failed_applications"], serde_json::json!([]), "{st}");
    assert_eq!(st["last_error"], serde_json::Value::Null);
    assert!(
        http_get(web1, "/shop/", None)
            .unwrap_or_default()
            .contains(" 200 ")
    );
    let log = server_log(&home, "server1");
    assert!(
        log.contains("[SERVER-0506] Retrying application(s) that failed: shop."),
        "{log}"
    );
}

/// A process application that answers `/slow/wait` after 1.5 s.
const SLOW_APP: &str = r#"#!/usr/bin/env python3
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow/wait":
            time.sleep(1.5)
        body = b"done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[test]
fn a_graceful_stop_finishes_requests_in_flight_then_stops_the_applications() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::example("drain-domain");
    let ports = util::example_on_free_ports(&repo);
    let text = repo.read("domain.toml");
    repo.write(
        "domain.toml",
        &format!(
            "{text}\n[applications.slow]\nkind = \"process\"\nsource = \"apps/slow\"\ncontext-path = \"/slow\"\ntargets = [\"server1\"]\ncommand = \"bin/slow\"\n"
        ),
    );
    repo.write("apps/slow/bin/slow", SLOW_APP);
    let script = repo.path().join("apps/slow/bin/slow");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    repo.commit("a slow application");
    let (mport, web1) = (ports[0], ports[4]);
    let d = Domain::new(&repo, mport, "drain-home");
    let home = d.home.clone();
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);
    let image = "servers/server1/.workspace/deployed/slow";
    assert!(!util::processes_with(image).is_empty(), "the slow app runs");

    let slow = std::thread::spawn(move || {
        let mut c = HttpConn::connect(web1).unwrap();
        c.get("/slow/wait")
    });
    std::thread::sleep(Duration::from_millis(300));
    stop_server(&home, "server1");
    let r = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!((r.status, r.body.as_slice()), (200, b"done".as_slice()));
    assert!(HttpConn::connect(web1).is_err(), "the listener is closed");
    assert!(
        eventually(10, || util::processes_with(image).is_empty().then_some(())).is_some(),
        "the process application stopped with the server"
    );
    let log = server_log(&home, "server1");
    assert!(log.contains("[SERVER-0301] The server stopped."), "{log}");
}
