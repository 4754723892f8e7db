//! The Managed Server serves its applications through a real `steward start-server`: static and
//! process applications over HTTP, live changes under load with no failed request and no restart,
//! restart changes reported as pending, failing deployments that fail alone and are fixed by a
//! push or retried when the Master returns, the library override warning, and archives that try
//! to escape their image.
//!
//! Long: each test starts a real Master and server, so related checks share one scenario.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::util::http::{ADMIN, HttpConn, HttpResponse, get, request, status};
use crate::util::master::{
    Master, Servers, commit_and_push, pid_of, push_edits, server_log, start_server, stop_server,
};
use crate::util::{Guard, Repo, TempDir, eventually, git};

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

/// Edits `domain.toml` in the clone, commits and pushes; returns the new commit.
fn push(clone: &Path, edits: &[(&str, &str)]) -> String {
    push_edits(clone, "domain.toml", edits)
}

/// A domain home initialized from `repo`, with its Master running and a clone to push from.
struct Domain {
    tmp: TempDir,
    home: PathBuf,
    clone: PathBuf,
    mport: u16,
    master: Option<Master>,
}

impl Domain {
    fn new(repo: &Repo, mport: u16, name: &str) -> Domain {
        let tmp = TempDir::new(name);
        let home = tmp.path().join("domain1");
        let r = crate::util::steward(
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
        self.master = Some(Master::start_on(&self.home, self.mport));
    }
}

#[test]
fn applications_serve_and_live_changes_drop_no_request() {
    let repo = Repo::example("serve-domain");
    let ports = crate::util::example_on_free_ports(&repo);
    // Manual restarts: this test watches a restart stay pending.
    repo.set("domain.toml", "servers.server1.restart-policy", "manual");
    repo.commit("manual restarts for server1");
    let (mport, s1, s3, web1) = (ports[0], ports[1], ports[3], ports[4]);
    let d = Domain::new(&repo, mport, "serve-home");
    let home = d.home.clone();
    let _servers = Servers(&home, &["server1", "server3"]);
    start_server(&home, "server1", mport);
    start_server(&home, "server3", mport);

    // The static application: its index, a stylesheet with its content type.
    let index = std::fs::read(crate::util::example_dir().join("apps/shop/index.html")).unwrap();
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
                let mut fetch = |path: &str| -> Result<HttpResponse, String> {
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
        eventually("server1 applies the commit", 20, || {
            Some(status(s1)).filter(|s| s["applied_commit"] == commit)
        })
    };
    let served_before = |n: usize| {
        eventually("the load loop makes progress", 20, || {
            (ok.load(Ordering::Relaxed) > n).then_some(())
        })
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
    // The writer thread may still be catching up with requests served before the change, and
    // nothing says when it has: a pause, not an assertion on time.
    std::thread::sleep(Duration::from_millis(500));
    let logged = access_log_size(&home, "server1");
    served_before(ok.load(Ordering::Relaxed) + 200);
    // What is tested is that nothing is written: the writer gets time it would need if it were on.
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
    let new_port = crate::util::free_ports_besides(1, &ports)[0];
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
    // The whole path: another domain's api (a `steward up` elsewhere) is not this one.
    let api_image = home.join("servers/server3/.workspace/deployed/api");
    let api_image = api_image.to_str().unwrap();
    assert!(
        !crate::util::processes_with(api_image).is_empty(),
        "the api runs"
    );
    stop_server(&home, "server3");
    eventually("the api process stopped with its server", 10, || {
        crate::util::processes_with(api_image)
            .is_empty()
            .then_some(())
    });
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
    let ports = crate::util::example_on_free_ports(&repo);
    let text = repo.read("domain.toml");
    repo.write("domain.toml", &format!("{text}{BAD_APPS}"));
    repo.write("apps/broken.tar.gz", "this is not gzip data at all");
    let evil = crate::util::tar_with(&[
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
    eventually("the Master lists the failed applications", 20, || {
        request(mport, "GET", "/v1/servers/server1", ADMIN)
            .ok()
            .filter(|r| {
                r.body
                    .contains(r#""failed_applications":["broken","crash","evil"]"#)
            })
    });
    // The others serve.
    let mut c = HttpConn::connect(web1).unwrap();
    assert_eq!(c.get("/shop/").unwrap().status, 200);
    // Nothing was written outside the image.
    assert_eq!(
        crate::util::find_named(d.tmp.path(), "escape.txt"),
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
    let st = eventually("server1 applies the fix", 30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == fixed.as_str())
    });
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
    let ports = crate::util::example_on_free_ports(&repo);
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
    assert!(get(web1, "/shop/").map(|r| r.status).ok() == Some(404));

    // The Master goes away; the obstacle is removed meanwhile; the Master returns: the server
    // resyncs, redeploys what failed, and becomes DEPENDENT.
    drop(d.master.take());
    eventually("INDEPENDENT", 30, || {
        Some(status(s1)).filter(|s| s["mode"] == "INDEPENDENT")
    });
    std::fs::remove_file(&blocker).unwrap();
    d.start_master();
    // The retry of the failed deployment runs in the background on its own schedule (backoff
    // since the first failure), so it may finish just before or just after the server reports
    // DEPENDENT: wait for both.
    let st = eventually("DEPENDENT again, the shop redeployed", 60, || {
        Some(status(s1)).filter(|s| {
            s["mode"] == "DEPENDENT" && s["failed_applications"] == serde_json::json!([])
        })
    });
    assert_eq!(st["last_error"], serde_json::Value::Null);
    assert!(get(web1, "/shop/").map(|r| r.status).ok() == Some(200));
    let log = server_log(&home, "server1");
    assert!(
        log.contains("[SERVER-0506] Retrying application(s) that failed at commit "),
        "{log}"
    );
}

/// A process application that answers `/slow/wait` after 1.5 s, creating the file `STARTED` names
/// when such a request arrives.
const SLOW_APP: &str = r#"#!/usr/bin/env python3
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow/wait":
            open(os.environ["STARTED"], "w").close()
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
    let ports = crate::util::example_on_free_ports(&repo);
    let started = repo.path().join("started");
    let text = repo.read("domain.toml");
    repo.write(
        "domain.toml",
        &format!(
            "{text}\n[applications.slow]\nkind = \"process\"\nsource = \"apps/slow\"\ncontext-path = \"/slow\"\ntargets = [\"server1\"]\ncommand = \"bin/slow\"\nenv = {{ STARTED = \"{}\" }}\n",
            started.display()
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
    let image = home.join("servers/server1/.workspace/deployed/slow");
    let image = image.to_str().unwrap();
    assert!(
        !crate::util::processes_with(image).is_empty(),
        "the slow app runs"
    );

    let slow = std::thread::spawn(move || {
        let mut c = HttpConn::connect(web1).unwrap();
        c.get("/slow/wait")
    });
    eventually("the slow request at the application", 20, || {
        started.exists().then_some(())
    });
    stop_server(&home, "server1");
    let r = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!((r.status, r.body.as_slice()), (200, b"done".as_slice()));
    assert!(HttpConn::connect(web1).is_err(), "the listener is closed");
    eventually(
        "the process application stopped with the server",
        10,
        || crate::util::processes_with(image).is_empty().then_some(()),
    );
    let log = server_log(&home, "server1");
    assert!(log.contains("[SERVER-0301] The server stopped."), "{log}");
}

/// A zip of one stored entry whose recorded CRC-32 (0xdeadbeef) does not match its data, as a
/// damaged download would be. Written by hand: the format is small, and no tool writes it wrong.
fn zip_with_bad_crc(name: &str, data: &[u8]) -> Vec<u8> {
    let (n, len) = (name.len() as u16, data.len() as u32);
    let mut out = Vec::new();
    // Local file header: version 2.0, no flags, stored, no time, the (wrong) CRC, sizes.
    out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    out.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    let central = out.len() as u32;
    // Central directory entry: made by Unix, a regular file 0644, at offset 0.
    out.extend_from_slice(b"PK\x01\x02\x1e\x03\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    out.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    let size = out.len() as u32 - central;
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&central.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The part of `text` after the first occurrence of `mark`.
fn after<'a>(text: &'a str, mark: &str) -> &'a str {
    let at = text
        .find(mark)
        .unwrap_or_else(|| panic!("`{mark}` not in:\n{text}"));
    &text[at..]
}

const ARCHT_APP: &str = r#"
[applications.archt]
kind = "static"
source = "apps/archt.zip"
context-path = "/archt"
targets = ["server1"]
"#;

#[test]
fn a_failing_application_neither_delays_pins_nor_hides_an_older_image() {
    let repo = Repo::example("retry-bg-domain");
    let ports = crate::util::example_on_free_ports(&repo);
    let text = repo.read("domain.toml");
    repo.write("domain.toml", &format!("{text}{ARCHT_APP}"));
    let bad = zip_with_bad_crc("page.html", b"damaged in transit");
    std::fs::write(repo.path().join("apps/archt.zip"), &bad).unwrap();
    repo.commit("an application whose archive is damaged");
    let (mport, s1, web1) = (ports[0], ports[1], ports[4]);
    let d = Domain::new(&repo, mport, "retry-bg-home");
    let home = d.home.clone();
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);

    // The damaged archive is refused, naming the entry; nothing of it is served.
    let st = status(s1);
    let c1 = st["applied_commit"].as_str().unwrap_or_default().to_owned();
    assert_eq!(st["failed_applications"], serde_json::json!(["archt"]));
    assert_eq!(st["older_images"], serde_json::json!({}));
    let why = st["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains("application archt: ")
            && why.contains("entry \"page.html\" refused: corrupt data"),
        "{why}"
    );
    assert!(get(web1, "/archt/page.html").map(|r| r.status).ok() == Some(404));

    // c2 points the shop at the damaged archive: its redeployment fails, and it keeps serving
    // its image of c1, which the status and the log say.
    std::fs::copy(
        repo.path().join("apps/archt.zip"),
        d.clone.join("apps/shop.zip"),
    )
    .unwrap();
    let c2 = push(
        &d.clone,
        &[("source = \"apps/shop\"", "source = \"apps/shop.zip\"")],
    );
    let st = eventually("server1 applies c2", 30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == c2.as_str())
    });
    assert_eq!(
        st["failed_applications"],
        serde_json::json!(["archt", "shop"]),
        "{st}"
    );
    assert_eq!(
        st["older_images"],
        serde_json::json!({ "shop": c1 }),
        "{st}"
    );
    let why = st["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains(&format!("still serving its image from commit {}", &c1[..7])),
        "{why}"
    );
    let index = std::fs::read(crate::util::example_dir().join("apps/shop/index.html")).unwrap();
    let mut c = HttpConn::connect(web1).unwrap();
    let r = c.get("/shop/").unwrap();
    assert_eq!((r.status, &r.body), (200, &index));
    let log = server_log(&home, "server1");
    let line = format!(
        "[SERVER-0511] Serving 1 application(s) at commit {}: shop (/shop) with its older image from commit {}; failed: archt (not served), shop (its deployment failed; the older image serves)",
        &c2[..7],
        &c1[..7]
    );
    assert!(log.contains(&line), "{line} missing:\n{log}");

    // c3 changes a live setting only: applied at once, the failed applications retried after
    // it, in the background (under the old behaviour the retry came first, on the pin's path).
    let c3 = push(
        &d.clone,
        &[(
            "description = \"Static shop front\"",
            "description = \"Shop\"",
        )],
    );
    let retry = format!(
        "[SERVER-0506] Retrying application(s) that failed at commit {} in the background",
        &c3[..7]
    );
    let log = eventually("the failed applications are retried at c3", 60, || {
        Some(server_log(&home, "server1")).filter(|l| l.contains(&retry))
    });
    let since_c3 = after(&log, &format!("Applied commit {}", &c3[..7]));
    assert!(
        since_c3.contains(&retry),
        "the retry preceded the pin:\n{log}"
    );
    assert!(after(&log, &retry).contains("archt, shop"), "{log}");
    assert_eq!(
        status(s1)["older_images"],
        serde_json::json!({ "shop": c1 })
    );

    // c4 repairs both: a newer pin supersedes the retry, and nothing is failed or older.
    std::fs::remove_file(d.clone.join("apps/shop.zip")).unwrap();
    std::fs::remove_file(d.clone.join("apps/archt.zip")).unwrap();
    let p = d.clone.join("domain.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text[..text.find("[applications.archt]").unwrap()]
        .replace("source = \"apps/shop.zip\"", "source = \"apps/shop\"");
    std::fs::write(&p, text).unwrap();
    let c4 = commit_and_push(&d.clone);
    let st = eventually("server1 applies c4", 30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == c4.as_str())
    });
    assert_eq!(st["failed_applications"], serde_json::json!([]), "{st}");
    assert_eq!(st["older_images"], serde_json::json!({}), "{st}");
    assert_eq!(st["last_error"], serde_json::Value::Null);
    let r = c.get("/shop/").unwrap();
    assert_eq!((r.status, &r.body), (200, &index));
}

/// A `.staging-shop-<pid>-<n>` directory with 1 MiB in it, as a killed deployment leaves one.
fn plant_staging(tmp: &Path, pid: u32, n: u32) -> PathBuf {
    let dir = tmp.join(format!(".staging-shop-{pid}-{n}"));
    std::fs::create_dir_all(dir.join("css")).unwrap();
    std::fs::write(dir.join("css/big.bin"), vec![7u8; 1 << 20]).unwrap();
    dir
}

#[test]
fn stale_staging_is_removed_at_start_and_debug_logs_each_step() {
    let repo = Repo::example("debug-domain");
    let ports = crate::util::example_on_free_ports(&repo);
    // server1 logs at debug and runs the process application too.
    repo.set("domain.toml", "servers.server1.logging.level", "debug");
    repo.set(
        "domain.toml",
        "applications.api.targets",
        toml_edit::Array::from_iter(["server1"]),
    );
    repo.commit("server1 at debug, with the api");
    let (mport, s1, web1) = (ports[0], ports[1], ports[4]);
    let d = Domain::new(&repo, mport, "debug-home");
    let home = d.home.clone();

    // What deployments killed with -9 leave: one of a dead process, one whose pid is now
    // another (non-steward) program; and one of a live steward process, which stays.
    let tmp = home.join("servers/server1/.workspace/tmp");
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let other = Guard(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let master_pid = d.master.as_ref().unwrap().child.id();
    let stale = [
        plant_staging(&tmp, dead, 0),
        plant_staging(&tmp, other.0.id(), 1),
    ];
    let live = plant_staging(&tmp, master_pid, 2);

    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);
    for dir in &stale {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert!(
        live.is_dir(),
        "a live steward's staging directory was removed"
    );
    let log = server_log(&home, "server1");
    assert!(
        log.contains("[SERVER-0008] Removed 2 staging directories left by interrupted deployments (2.0 MiB): "),
        "{log}"
    );
    for dir in &stale {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            after(&log, "[SERVER-0008]")
                .lines()
                .next()
                .unwrap()
                .contains(&name)
        );
    }
    drop(other);

    // At debug: each deploy step, each process application step.
    for id in [
        "[SERVER-0530] Deploying 2 application(s) from commit",
        "[SERVER-0521] Application shop: writing the image from apps/shop",
        "[SERVER-0522] Application shop: content written",
        "[SERVER-0523] Application api: copying the libraries libs/common",
        "[SERVER-0524] Application api: new image swapped in",
        "[WEB-0206] Application api: starting \"bin/api\"",
        "[WEB-0207] Application api: health path /api/health answered on port",
    ] {
        assert!(
            log.contains(&format!("][4] [server1] {id}")),
            "{id} missing:\n{log}"
        );
    }
    assert!(get(web1, "/api/x").map(|r| r.status).ok() == Some(200));

    // A resync at debug: its apply steps, and the replaced process stopping.
    let c2 = push(
        &d.clone,
        &[(
            "GREETING = \"hello from the api\"",
            "GREETING = \"hello from the api\", A = \"1\"",
        )],
    );
    eventually("c2 applied", 30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == c2.as_str())
    });
    let log = eventually("the replaced process stops", 30, || {
        Some(server_log(&home, "server1")).filter(|l| l.contains("[WEB-0209]"))
    });
    for id in [
        "[SERVER-0330] Resync to commit",
        "[SERVER-0331] Commit ",
        "[SERVER-0531] Applying the web configuration of commit",
        "[SERVER-0520] Application api: image unchanged",
        "[SERVER-0332] Applied the settings outside the web engine",
        "[WEB-0208] Application api: stopping pid",
        "[WEB-0209] Application api: pid ",
    ] {
        assert!(
            log.contains(&format!("][4] [server1] {id}")),
            "{id} missing:\n{log}"
        );
    }

    // Back at info (live): a resync with a redeployment and a process restart logs nothing at
    // debug.
    let c3 = push(&d.clone, &[("level = \"debug\"", "level = \"info\"")]);
    eventually("c3 applied", 30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == c3.as_str())
    });
    let before = server_log(&home, "server1").len();
    let c4 = push(&d.clone, &[("A = \"1\"", "A = \"2\"")]);
    eventually("c4 applied", 30, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == c4.as_str())
    });
    let log = eventually("the new process is healthy", 30, || {
        Some(server_log(&home, "server1")).filter(|l| l[before..].contains("[WEB-0202]"))
    });
    let since = &log[before..];
    assert!(since.contains("[SERVER-0309] Applied commit"), "{since}");
    assert!(!since.contains("][4] ["), "debug lines at info:\n{since}");
}
