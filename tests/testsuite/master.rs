//! End to end: `steward init` and `steward master` as real processes, driven by the real `git`
//! binary and a minimal HTTP client over `TcpStream`.
//!
//! Long: the Master's modes (hosted, mirror, HTTPS, start/stop) share its harness and scenarios;
//! sections below keep them apart.

use crate::util::http::*;
use crate::util::master::*;

use crate::util::{TempDir, edit_text, free_port, git, git_ok, set_toml, steward_cmd, text};

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- tests

#[test]
fn init_creates_a_pinned_domain_home() {
    let tmp = TempDir::new("init");
    let home = init_home(&tmp);
    for dir in ["config/domain.git", "lib/application", "servers", ".cache"] {
        assert!(home.join(dir).is_dir(), "{dir}");
    }
    let bare = home.join("config/domain.git");
    let main = git_ok(&bare, &["rev-parse", "refs/heads/main"]);
    let pinned = git_ok(&bare, &["rev-parse", "refs/steward/pinned"]);
    assert_eq!(main, pinned);
    assert_eq!(git_ok(&bare, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    let files = git_ok(&bare, &["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(
        files,
        "domain.toml\nsecurity/accounts.toml\nsecurity/policies.toml"
    );
    git_ok(&bare, &["fsck", "--strict"]);
    let hook = std::fs::read_to_string(bare.join("hooks/pre-receive")).expect("hook");
    assert!(
        hook.contains("Installed by `steward hook install`"),
        "{hook}"
    );
    let history = std::fs::read_to_string(home.join("config/pins.jsonl")).expect("history");
    let rec: serde_json::Value = serde_json::from_str(history.trim()).expect("one record");
    assert_eq!(rec["commit"], pinned.as_str());
    assert_eq!(rec["source"], "init");
    assert_eq!(rec["outcome"], "pinned");

    // A second init never overwrites.
    let src = tmp.path().join("src");
    let out = steward_output(
        &[
            "init",
            home.to_str().expect("utf-8"),
            "--from",
            src.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("refusing to overwrite"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(git_ok(&bare, &["rev-parse", "refs/steward/pinned"]), pinned);
}

#[test]
fn init_refuses_an_invalid_domain_and_leaves_nothing() {
    let tmp = TempDir::new("init-invalid");
    let src = tmp.path().join("src");
    write_domain(&src);
    edit_text(
        &src.join("domain.toml"),
        "node = \"localhost\"",
        "node = \"localhost\"\nbogus = 1",
    );
    let home = tmp.path().join("home");
    let out = steward_output(
        &[
            "init",
            home.to_str().expect("utf-8"),
            "--from",
            src.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("domain.toml:9:1"), "{err}");
    assert!(!home.exists(), "nothing is created");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("src")],
        "no staging directory left"
    );
}

/// Commits an invalid `restart-policy` (line 10 of domain.toml) in `wc` and pushes it: the push is
/// refused and the pusher sees the problem with its place. The refused commit.
fn push_bad_policy(wc: &Path) -> String {
    std::fs::write(
        wc.join("domain.toml"),
        format!("{DOMAIN_TOML}restart-policy = \"sometimes\"\n"),
    )
    .expect("write");
    git_ok(wc, &["commit", "-qam", "bad policy"]);
    let refused = git_ok(wc, &["rev-parse", "HEAD"]);
    let out = git(wc, &["push", "origin", "main"]);
    let err = out.stderr.clone();
    assert!(!out.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("remote:") && l.contains("domain.toml:10:")),
        "{err}"
    );
    assert!(err.contains("pre-receive hook declined"), "{err}");
    refused
}

#[test]
fn hosted_master_end_to_end() {
    let tmp = TempDir::new("hosted");
    let home = init_home(&tmp);
    let mut master = Master::start(&home, tmp.path().join("master.log"));
    let initial = master.pinned();

    // /healthz needs no credentials; everything else does, and a 401 says nothing.
    let r = request(master.port, "GET", "/healthz", None).expect("healthz");
    assert_eq!(r.status, 200);
    for auth in [None, Some(("admin", "wrong")), Some(("nobody", "admin"))] {
        for path in [
            "/v1/domain",
            "/v1/domain/history",
            "/git/domain.git/info/refs?service=git-upload-pack",
            "/nope",
        ] {
            let r = request(master.port, "GET", path, auth).expect("request");
            assert_eq!(r.status, 401, "{path} {auth:?}");
            assert!(
                r.head
                    .to_lowercase()
                    .contains("www-authenticate: basic realm=\"steward\""),
                "{}",
                r.head
            );
            assert!(r.body.is_empty(), "{path}: body {:?}", r.body);
        }
    }
    let v: serde_json::Value = serde_json::from_str(&master.get("/v1/domain").body).expect("json");
    assert_eq!(v["name"], "domain1");
    assert_eq!(v["mode"], "hosted");
    assert!(v["upstream"].is_null());
    assert!(v["pinned"]["at"].as_str().is_some_and(|s| s.ends_with('Z')));

    // Clone with stock git.
    let wc = tmp.path().join("wc");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &master.url("admin", "admin"),
            wc.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(git_ok(&wc, &["rev-parse", "HEAD"]), initial);

    // A valid push is pinned, and subscribers hear about it.
    let events = Events::subscribe(master.port);
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9751",
    );
    git_ok(&wc, &["commit", "-qam", "move server1"]);
    let pushed = git_ok(&wc, &["rev-parse", "HEAD"]);
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    // `git push` returns only once the pin is decided: no polling needed.
    assert_eq!(master.pinned(), pushed);
    let (name, data) = events.next(Duration::from_secs(10));
    assert_eq!(name, "pinned", "{data}");
    assert_eq!(data["commit"], pushed.as_str());
    assert_eq!(data["source"], "push");
    assert_eq!(data["pusher"], "admin");
    assert_eq!(data["previous"], initial.as_str());
    assert_eq!(data["summary"], "move server1");
    assert_eq!(master.pinned(), pushed);
    assert_eq!(
        git_ok(
            &home.join("config/domain.git"),
            &["rev-parse", "refs/steward/pinned"]
        ),
        pushed
    );

    // An invalid push is refused; the pusher sees each problem with file:line:col; the pin stays.
    let refused = push_bad_policy(&wc);
    assert_eq!(master.pinned(), pushed);
    // The refusal is recorded and announced, with the problems the pusher saw.
    let (name, data) = events.next(Duration::from_secs(10));
    assert_eq!(name, "rejected", "{data}");
    assert_eq!(data["commit"], refused.as_str());
    assert_eq!(data["pusher"], "admin");
    assert_eq!(data["previous"], pushed.as_str());
    let problems = data["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["file"] == "domain.toml" && p["line"] == 10 && p["severity"] == "error"),
        "{data}"
    );

    // Nobody pushes the pin itself: only the Master moves it.
    let out = git(&wc, &["push", "origin", "HEAD~1:refs/steward/pinned"]);
    assert!(!out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), pushed);
    assert_eq!(
        git_ok(
            &home.join("config/domain.git"),
            &["rev-parse", "refs/steward/pinned"]
        ),
        pushed
    );
    // Requests stay inside domain.git.
    let r = master.get("/git/domain.git/../pins.jsonl");
    assert_ne!(r.status, 200);
    assert!(!r.body.contains("outcome"), "{}", r.body);

    // A reader may fetch but not push.
    git_ok(&wc, &["fetch", "-q", &master.url("reader", "reader")]);
    let out = git(
        &wc,
        &[
            "push",
            &master.url("reader", "reader"),
            "HEAD:refs/heads/other",
        ],
    );
    assert!(!out.success());
    assert!(out.stderr.clone().contains("403"), "{}", out.stderr.clone());

    // kill -9 and restart: same pin, same history.
    let history = master.history();
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(history[0]["outcome"], "rejected", "newest first");
    assert_eq!(history[0]["commit"], refused.as_str());
    assert_eq!(history[1]["commit"], pushed.as_str());
    assert_eq!(history[1]["outcome"], "pinned");
    assert_eq!(history[2]["source"], "init");
    master.kill9();
    let master = Master::start(&home, tmp.path().join("master2.log"));
    assert_eq!(master.pinned(), pushed);
    assert_eq!(master.history(), history);
}

#[test]
fn commits_arriving_another_way_are_validated_and_pinned_or_rejected() {
    let tmp = TempDir::new("watch");
    let home = init_home(&tmp);
    let bare = home.join("config/domain.git");
    let master = Master::start(&home, tmp.path().join("master.log"));
    let events = Events::subscribe(master.port);
    let initial = master.pinned();
    // What HTTP clients are told the branch is: the Master answers ref advertisements from memory
    // while the refs stay as they were (runtime::master::advert), so this also checks that moves
    // made behind its back reach them.
    let url = master.url("admin", "admin");
    let advertised = |service: &str| {
        let out = git_ok(
            tmp.path(),
            &[
                "-c",
                &format!("protocol.version={service}"),
                "ls-remote",
                &url,
                "refs/heads/main",
            ],
        );
        out.split_whitespace().next().unwrap_or_default().to_owned()
    };
    assert_eq!(advertised("0"), initial);
    assert_eq!(advertised("0"), initial, "answered again, from memory");

    // A push by file path goes through the same hook; the Master notices the ref and pins.
    let wc = tmp.path().join("wc");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            bare.to_str().expect("utf-8"),
            wc.to_str().expect("utf-8"),
        ],
    );
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9761",
    );
    git_ok(&wc, &["commit", "-qam", "by file path"]);
    let good = git_ok(&wc, &["rev-parse", "HEAD"]);
    git_ok(&wc, &["push", "-q", "origin", "main"]);
    let (name, data) = events.next(Duration::from_secs(10));
    assert_eq!(
        (name.as_str(), data["commit"].as_str()),
        ("pinned", Some(good.as_str())),
        "{data}"
    );
    // The ref watcher pinned it (not the safety poll): no clock needed to tell.
    assert_eq!(data["source"], "watch");
    assert_eq!(master.pinned(), good);
    assert_eq!(
        advertised("0"),
        good,
        "protocol v0 after a push by file path"
    );
    assert_eq!(advertised("2"), good, "protocol v2");
    // The pin ref is hidden from pushes by file path too.
    let out = git(&wc, &["push", "origin", "HEAD~1:refs/steward/pinned"]);
    assert!(!out.success(), "{}", out.stderr.clone());
    assert_eq!(git_ok(&bare, &["rev-parse", "refs/steward/pinned"]), good);

    // A ref moved behind the hook's back to an invalid commit is rejected, never pinned.
    std::fs::write(wc.join("domain.toml"), "[domain]\nname = 3\n").expect("write");
    git_ok(&wc, &["commit", "-qam", "broken"]);
    let bad = git_ok(&wc, &["rev-parse", "HEAD"]);
    // Objects reach the bare repository without touching main, then main is moved directly.
    git_ok(
        &bare,
        &[
            "fetch",
            "-q",
            wc.to_str().expect("utf-8"),
            "+main:refs/incoming/x",
        ],
    );
    git_ok(&bare, &["update-ref", "refs/heads/main", &bad]);
    assert_eq!(advertised("0"), bad, "a ref moved directly");
    let (name, data) = events.next(Duration::from_secs(10));
    assert_eq!(name, "rejected", "{data}");
    assert_eq!(data["commit"], bad.as_str());
    let problems = data["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["file"] == "domain.toml" && p["line"] == 2),
        "{data}"
    );
    assert_eq!(master.pinned(), good);
    assert_ne!(good, initial);
    let history = master.history();
    assert_eq!(history[0]["outcome"], "rejected");
    assert_eq!(history[0]["previous"], good.as_str());
}

#[test]
fn rollback_holds_until_the_next_commit_and_racing_pushes_pin_once() {
    let tmp = TempDir::new("rollback");
    let home = init_home(&tmp);
    let mut master = Master::start(&home, tmp.path().join("master.log"));
    let initial = master.pinned();
    let wc = tmp.path().join("wc");
    let url = master.url("admin", "admin");
    git_ok(
        tmp.path(),
        &["clone", "-q", &url, wc.to_str().expect("utf-8")],
    );
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9751",
    );
    git_ok(&wc, &["commit", "-qam", "a"]);
    git_ok(&wc, &["push", "-q", "origin", "main"]);
    let a = git_ok(&wc, &["rev-parse", "HEAD"]);
    assert_eq!(master.pinned(), a);

    // Only `domain:pin` may pin; bad requests say why.
    let body = format!("{{\"commit\": \"{initial}\"}}");
    assert_eq!(
        post(master.port, "/v1/domain/pin", ("reader", "reader"), &body).status,
        403
    );
    assert_eq!(
        post(master.port, "/v1/domain/pin", ("admin", "admin"), "{").status,
        400
    );
    let r = post(
        master.port,
        "/v1/domain/pin",
        ("admin", "admin"),
        r#"{"commit": "nope"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    let events = Events::subscribe(master.port);
    let r = post(master.port, "/v1/domain/pin", ("admin", "admin"), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    // Hosted mode: the rollback is a commit on the branch with the initial commit's tree.
    let rollback = v["pinned"]["commit"].as_str().expect("commit").to_owned();
    assert_eq!(v["changed"], true);
    assert_eq!(v["branch_head"], rollback.as_str());
    let (name, data) = events.next(Duration::from_secs(10));
    assert_eq!(
        (name.as_str(), data["source"].as_str()),
        ("pinned", Some("rollback"))
    );
    assert_eq!(data["pusher"], "admin");
    assert_eq!(data["previous"], a.as_str());
    // The safety poll (2 s) must not undo the rollback, nor a restart.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(master.pinned(), rollback);
    master.kill9();
    let master = Master::start(&home, tmp.path().join("master2.log"));
    assert_eq!(master.pinned(), rollback);

    // The next commit on the branch is pinned as usual (the restarted Master has a new port).
    git_ok(
        &wc,
        &["remote", "set-url", "origin", &master.url("admin", "admin")],
    );
    git_ok(&wc, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(
        git_ok(&wc, &["rev-parse", "HEAD^{tree}"]),
        git_ok(&wc, &["rev-parse", &format!("{initial}^{{tree}}")])
    );
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9761",
    );
    git_ok(&wc, &["commit", "-qam", "b"]);
    git_ok(&wc, &["push", "-q", "origin", "main"]);
    let b = git_ok(&wc, &["rev-parse", "HEAD"]);
    assert_eq!(master.pinned(), b);

    // Two clones push different valid commits at once: exactly one wins, and only it is pinned.
    let url = master.url("admin", "admin");
    let clones: Vec<PathBuf> = (0..2)
        .map(|i| {
            let dir = tmp.path().join(format!("race{i}"));
            git_ok(
                tmp.path(),
                &["clone", "-q", &url, dir.to_str().expect("utf-8")],
            );
            set_toml(
                &dir.join("domain.toml"),
                "servers.server1.listen",
                format!("127.0.0.1:977{i}"),
            );
            git_ok(&dir, &["commit", "-qam", &format!("race {i}")]);
            dir
        })
        .collect();
    let before = master.history().len();
    let handles: Vec<_> = clones
        .iter()
        .cloned()
        .map(|dir| std::thread::spawn(move || (git(&dir, &["push", "origin", "main"]), dir)))
        .collect();
    let results: Vec<(crate::util::Run, PathBuf)> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let winners: Vec<&PathBuf> = results
        .iter()
        .filter(|(o, _)| o.success())
        .map(|(_, d)| d)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one push wins");
    let winner = git_ok(winners[0], &["rev-parse", "HEAD"]);
    assert_eq!(master.pinned(), winner);
    let history = master.history();
    assert_eq!(history.len(), before + 1, "{history:?}");
    assert_eq!(history[0]["commit"], winner.as_str());
}

#[test]
fn servers_register_heartbeat_and_become_unreachable() {
    let tmp = TempDir::new("servers");
    let src = tmp.path().join("src");
    write_domain(&src);
    let file = src.join("domain.toml");
    set_toml(&file, "master.heartbeat-interval", "200ms");
    set_toml(&file, "master.heartbeat-timeout", "2s");
    let home = tmp.path().join("home");
    init(&home, &src);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let pinned = master.pinned();
    let status = |state: &str| {
        format!(
            r#"{{"name":"server1","state":"{state}","mode":"DEPENDENT","applied_commit":"{pinned}","pending_restart":["servers.server1.listen"],"failed_applications":[],"last_error":null}}"#
        )
    };

    // Before any report the server is unknown.
    let list: serde_json::Value =
        serde_json::from_str(&master.get("/v1/servers").body).expect("json");
    assert_eq!(list[0]["name"], "server1");
    assert_eq!(list[0]["state"], "UNKNOWN");

    // Servers authenticate; readers may not register; unknown servers and bad bodies are refused.
    let r = post(
        master.port,
        "/v1/servers/server1/register",
        ("reader", "reader"),
        &status("RUNNING"),
    );
    assert_eq!(r.status, 403);
    let r = post(
        master.port,
        "/v1/servers/nosuch/register",
        ("admin", "admin"),
        &status("RUNNING"),
    );
    assert_eq!(r.status, 404);
    let r = post(
        master.port,
        "/v1/servers/server1/register",
        ("admin", "admin"),
        r#"{"state":"x","mode":"MAYBE"}"#,
    );
    assert_eq!(r.status, 400);

    let events = Events::subscribe(master.port);
    let r = post(
        master.port,
        "/v1/servers/server1/register",
        ("admin", "admin"),
        &status("RUNNING"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(answer["pinned"]["commit"], pinned.as_str());
    assert_eq!(answer["heartbeat_interval_ms"], 200);
    let (name, data) = events.next(Duration::from_secs(5));
    assert_eq!(
        (name.as_str(), data["state"].as_str()),
        ("server", Some("RUNNING"))
    );

    let one: serde_json::Value =
        serde_json::from_str(&master.get("/v1/servers/server1").body).expect("json");
    assert_eq!(one["state"], "RUNNING");
    assert_eq!(one["mode"], "DEPENDENT");
    assert_eq!(one["applied_commit"], pinned.as_str());
    assert_eq!(one["pending_restart"][0], "servers.server1.listen");
    assert_eq!(one["reachable"], true);

    // Heartbeats keep it reachable; silence makes it unreachable, announced once.
    for _ in 0..5 {
        let r = post(
            master.port,
            "/v1/servers/server1/heartbeat",
            ("admin", "admin"),
            &status("RUNNING"),
        );
        assert_eq!(r.status, 200);
        // Heartbeats spread over a second are the thing tested: they keep the server reachable.
        std::thread::sleep(Duration::from_millis(200));
    }
    let one: serde_json::Value =
        serde_json::from_str(&master.get("/v1/servers/server1").body).expect("json");
    assert_eq!(one["state"], "RUNNING");
    let (name, data) = events.next(Duration::from_secs(5));
    assert_eq!(
        (name.as_str(), data["state"].as_str()),
        ("server", Some("UNREACHABLE"))
    );
    assert_eq!(data["reachable"], false);
    let one: serde_json::Value =
        serde_json::from_str(&master.get("/v1/servers/server1").body).expect("json");
    assert_eq!(one["state"], "UNREACHABLE");
    assert_eq!(
        one["applied_commit"],
        pinned.as_str(),
        "the last report is kept"
    );

    // A heartbeat brings it back.
    let r = post(
        master.port,
        "/v1/servers/server1/heartbeat",
        ("admin", "admin"),
        &status("RUNNING"),
    );
    assert_eq!(r.status, 200);
    let (name, data) = events.next(Duration::from_secs(5));
    assert_eq!(
        (name.as_str(), data["state"].as_str()),
        ("server", Some("RUNNING"))
    );
}

fn domain_json(master: &Master) -> serde_json::Value {
    serde_json::from_str(&master.get("/v1/domain").body).expect("json")
}

/// Polls `/v1/domain` until `check` holds (or fails after 15 s).
fn wait_domain(
    master: &Master,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = domain_json(master);
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}\n{}", master.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mirror_mode_with_webhooks() {
    let tmp = TempDir::new("mirror-hook");
    let (bare, work) = upstream(&tmp);
    let home = init_home(&tmp);
    let master = Master::start_with(
        &home,
        tmp.path().join("master.log"),
        &[
            "--upstream",
            bare.to_str().expect("utf-8"),
            "--poll-interval",
            "1h",
            "--webhook-secret-env",
            "TEST_WEBHOOK_SECRET",
        ],
    );
    // The first fetch happens at start: the upstream's head is pinned.
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    let v = wait_domain(&master, "upstream head pinned", |v| {
        v["pinned"]["commit"] == first.as_str()
    });
    assert_eq!(v["mode"], "mirror");
    assert_eq!(v["upstream"]["url"], bare.to_str().expect("utf-8"));
    assert_eq!(v["upstream"]["stale"], false);
    assert_eq!(v["upstream"]["head"], first.as_str());
    assert_eq!(master.history()[0]["source"], "poll");

    // Pushing to a mirror is refused: the upstream is the truth.
    let wc = tmp.path().join("wc");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &master.url("admin", "admin"),
            wc.to_str().expect("utf-8"),
        ],
    );
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9799",
    );
    git_ok(&wc, &["commit", "-qam", "to the mirror"]);
    assert!(!git(&wc, &["push", "origin", "main"]).success());

    // A change upstream, announced by a webhook (GitLab's token), is pinned before the answer.
    set_toml(
        &work.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9751",
    );
    git_ok(&work, &["commit", "-qam", "upstream: second"]);
    git_ok(&work, &["push", "-q", "origin", "main"]);
    let second = git_ok(&work, &["rev-parse", "HEAD"]);
    let payload = r#"{"ref": "refs/heads/main", "after": "x"}"#;
    let r = post_with_header(
        master.port,
        "/v1/hooks/git",
        "X-Gitlab-Token: wrong",
        payload,
    );
    assert_eq!(r.status, 401);
    assert_eq!(master.pinned(), first);
    let r = post_with_header(
        master.port,
        "/v1/hooks/git",
        "X-Gitlab-Token: s3cret",
        r#"{"ref": "refs/heads/other"}"#,
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("ignored"), "{}", r.body);
    let r = post_with_header(
        master.port,
        "/v1/hooks/git",
        "X-Gitlab-Token: s3cret",
        payload,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(answer["outcome"], "pinned", "{answer}");
    assert_eq!(answer["commit"], second.as_str());
    assert_eq!(master.pinned(), second);
    assert_eq!(master.history()[0]["source"], "webhook");

    // An invalid upstream commit is recorded as rejected, with its problems; the pin stays.
    std::fs::write(
        work.join("domain.toml"),
        format!("{DOMAIN_TOML}restart-policy = \"sometimes\"\n"),
    )
    .expect("write");
    git_ok(&work, &["commit", "-qam", "upstream: broken"]);
    git_ok(&work, &["push", "-q", "origin", "main"]);
    let broken = git_ok(&work, &["rev-parse", "HEAD"]);
    // Without a token, Basic credentials with git:push do.
    let r = post(master.port, "/v1/hooks/git", ("admin", "admin"), payload);
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(answer["outcome"], "rejected", "{answer}");
    assert_eq!(answer["commit"], broken.as_str());
    assert!(
        answer["problems"].as_array().is_some_and(|p| !p.is_empty()),
        "{answer}"
    );
    assert_eq!(master.pinned(), second);
    // A second call finds nothing new to decide.
    let r = post(master.port, "/v1/hooks/git", ("admin", "admin"), payload);
    assert!(r.body.contains("unchanged"), "{}", r.body);
    assert_eq!(
        post(master.port, "/v1/hooks/git", ("reader", "reader"), payload).status,
        403
    );
}

#[test]
fn mirror_mode_polls_and_survives_an_unreachable_upstream() {
    let tmp = TempDir::new("mirror-poll");
    let (bare, work) = upstream(&tmp);
    let home = init_home(&tmp);
    let master = Master::start_with(
        &home,
        tmp.path().join("master.log"),
        &[
            "--upstream",
            bare.to_str().expect("utf-8"),
            "--poll-interval",
            "200ms",
        ],
    );
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    wait_domain(&master, "first pinned", |v| {
        v["pinned"]["commit"] == first.as_str()
    });

    // Polling picks up a new upstream commit.
    set_toml(
        &work.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9751",
    );
    git_ok(&work, &["commit", "-qam", "upstream: second"]);
    git_ok(&work, &["push", "-q", "origin", "main"]);
    let second = git_ok(&work, &["rev-parse", "HEAD"]);
    wait_domain(&master, "second pinned by polling", |v| {
        v["pinned"]["commit"] == second.as_str()
    });
    assert_eq!(master.history()[0]["source"], "poll");

    // The upstream goes away: still pinned, and the status says stale since when.
    let away = tmp.path().join("upstream-away.git");
    std::fs::rename(&bare, &away).expect("rename");
    let v = wait_domain(&master, "stale", |v| v["upstream"]["stale"] == true);
    assert_eq!(v["pinned"]["commit"], second.as_str());
    assert!(
        v["upstream"]["stale_since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{v}"
    );
    assert!(v["upstream"]["last_error"].as_str().is_some(), "{v}");
    assert!(master.log().contains("Master-0040"), "{}", master.log());
    // Polls go on failing (every 200 ms here): waiting through some is what is tested.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        master.pinned(),
        second,
        "an unreachable upstream never unpins"
    );

    // It comes back.
    std::fs::rename(&away, &bare).expect("rename back");
    let v = wait_domain(&master, "fresh again", |v| v["upstream"]["stale"] == false);
    assert!(v["upstream"]["stale_since"].is_null());
    assert_eq!(v["pinned"]["commit"], second.as_str());

    // A rollback in mirror mode pins the older commit itself; the upstream owns the branch, and
    // its head counts as decided: the polls do not re-pin it.
    let r = post(
        master.port,
        "/v1/domain/pin",
        ("admin", "admin"),
        &format!("{{\"commit\": \"{first}\"}}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(master.pinned(), first);
    assert_eq!(git_ok(&bare, &["rev-parse", "main"]), second);
    // Waiting through polls is what is tested: they must not re-pin the upstream's head.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(master.pinned(), first);
}

#[test]
fn master_notifies_readiness() {
    use std::os::unix::net::UnixDatagram;
    let tmp = TempDir::new("notify");
    let home = init_home(&tmp);
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let port = free_port();
    let log = std::fs::File::create(tmp.path().join("master.log")).expect("log");
    let child = steward_cmd(&["master", "--domain-home"])
        .arg(&home)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(log)
        .spawn()
        .expect("start master");
    let mut master = Master {
        child,
        port,
        log: tmp.path().join("master.log"),
    };
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = text(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means serving.
    let r = request(port, "GET", "/healthz", None).expect("healthz right after READY");
    assert_eq!(r.status, 200);
    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = master.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let n = sock.recv(&mut buf).expect("a notification");
    assert_eq!(text(&buf[..n]), "STOPPING=1");
    let status = master.child.wait().expect("wait");
    assert!(status.success(), "{status}: {}", master.log());
}

/// `steward master` over `home`, which must refuse to start (exit 1); its error output.
fn master_refused(home: &Path) -> String {
    let home = home.to_str().expect("utf-8");
    let args = ["master", "--domain-home", home, "--listen", "127.0.0.1:0"];
    let out = steward_output(&args, &[]);
    assert_eq!(out.status.code(), Some(1));
    text(&out.stderr)
}

#[test]
fn one_master_per_domain_home() {
    let tmp = TempDir::new("lock");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let err = master_refused(&home);
    assert!(
        err.contains(&format!(
            "another Master already runs on this domain home (pid {})",
            master.child.id()
        )),
        "{err}"
    );
    assert_eq!(master.pinned().len(), 40, "the first one still serves");
}

// ---------------------------------------------------------------- HTTPS

/// `curl` over HTTPS trusting `ca`: (status, body); status 0 when the connection failed.
fn curl(ca: &Path, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A domain home whose pinned `domain.toml` sets `[master.tls]` to `tls/master.crt` and
/// `tls/master.key`, relative to the domain home, and those files in place.
fn init_tls_home(tmp: &TempDir, name: &str, certs: &(PathBuf, PathBuf, PathBuf)) -> PathBuf {
    let src = tmp.path().join(format!("{name}-src"));
    write_domain(&src);
    edit_text(
        &src.join("domain.toml"),
        "listen = \"127.0.0.1:9736\"\n",
        "listen = \"127.0.0.1:9736\"\n\n[master.tls]\ncertificate = \"tls/master.crt\"\nkey = \"tls/master.key\"\n",
    );
    let home = tmp.path().join(name);
    init(&home, &src);
    std::fs::create_dir_all(home.join("tls")).expect("mkdir");
    std::fs::copy(&certs.1, home.join("tls/master.crt")).expect("copy");
    std::fs::copy(&certs.2, home.join("tls/master.key")).expect("copy");
    home
}

#[test]
fn https_master_serves_git_and_a_mirror_follows_it_over_https() {
    let tmp = TempDir::new("https");
    let certs = crate::util::make_certificates(&tmp.path().join("pki"));
    let ca = certs.0.clone();
    let home = init_tls_home(&tmp, "home", &certs);
    let ready = |port: u16| curl(&ca, &format!("https://127.0.0.1:{port}/healthz")).0 == 200;
    let master = Master::start_checked(&home, tmp.path().join("master.log"), &[], &[], ready);
    let base = format!("https://127.0.0.1:{}", master.port);
    assert!(
        master.log().contains(&format!("listening on {base}")),
        "{}",
        master.log()
    );

    // /healthz over TLS; everything else still needs credentials; plain HTTP gets no answer.
    assert_eq!(
        curl(&ca, &format!("{base}/healthz")),
        (200, "ok\n".to_owned())
    );
    assert_eq!(curl(&ca, &format!("{base}/v1/domain")).0, 401);
    let (status, body) = curl(
        &ca,
        &format!("https://admin:admin@127.0.0.1:{}/v1/domain", master.port),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        request(master.port, "GET", "/healthz", None).map_or(true, |r| r.status != 200),
        "plain HTTP on the HTTPS port must not be served"
    );

    // Stock git: clone and push over HTTPS, trusting the test CA through GIT_SSL_CAINFO.
    let url = format!(
        "https://admin:admin@127.0.0.1:{}/git/domain.git",
        master.port
    );
    let wc = tmp.path().join("wc");
    let with_ca = |dir: &Path, args: &[&str]| {
        let out = crate::util::git_cmd(dir, args)
            .env("GIT_SSL_CAINFO", &ca)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}:\n{}{}",
            text(&out.stderr),
            master.log()
        );
    };
    with_ca(
        tmp.path(),
        &["clone", "-q", &url, wc.to_str().expect("utf-8")],
    );
    // Without the CA, git refuses the certificate.
    let refused = git(tmp.path(), &["ls-remote", &url]);
    assert!(!refused.success());
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9751",
    );
    git_ok(&wc, &["commit", "-qam", "over https"]);
    with_ca(&wc, &["push", "-q", "origin", "main"]);
    let pushed = git_ok(&wc, &["rev-parse", "HEAD"]);
    let (_, body) = curl(
        &ca,
        &format!("https://admin:admin@127.0.0.1:{}/v1/domain", master.port),
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["pinned"]["commit"], pushed.as_str(), "{v}");

    // A second Master mirrors the first over HTTPS (gix + rustls), trusting the CA through the
    // same GIT_SSL_CAINFO, with the credentials in the URL.
    let mirror_home = init_tls_home(&tmp, "mirror", &certs);
    let mirror = Master::start_checked(
        &mirror_home,
        tmp.path().join("mirror.log"),
        &["--upstream", &url, "--poll-interval", "200ms"],
        &[("GIT_SSL_CAINFO", ca.as_path())],
        ready,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        let (_, body) = curl(
            &ca,
            &format!("https://admin:admin@127.0.0.1:{}/v1/domain", mirror.port),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["pinned"]["commit"] == pushed.as_str() {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}\n{}", mirror.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["mode"], "mirror");
    assert_eq!(v["upstream"]["stale"], false, "{v}");
    let shown = v["upstream"]["url"].as_str().expect("url");
    assert!(
        !shown.contains("admin:admin"),
        "the password is not shown: {shown}"
    );

    // Without the CA the upstream's certificate is not trusted: nothing is fetched, the mirror
    // is stale and says why.
    let untrusting_home = init_tls_home(&tmp, "untrusting", &certs);
    let untrusting = Master::start_checked(
        &untrusting_home,
        tmp.path().join("untrusting.log"),
        &["--upstream", &url, "--poll-interval", "1h"],
        &[],
        ready,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = curl(
            &ca,
            &format!(
                "https://admin:admin@127.0.0.1:{}/v1/domain",
                untrusting.port
            ),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["upstream"]["stale"] == true {
            assert_ne!(v["pinned"]["commit"], pushed.as_str(), "{v}");
            let error = v["upstream"]["last_error"].as_str().unwrap_or_default();
            assert!(error.to_lowercase().contains("certificate"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}\n{}", untrusting.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_tls_files_stop_the_start_naming_the_file() {
    let tmp = TempDir::new("tls-bad");
    let certs = crate::util::make_certificates(&tmp.path().join("pki"));
    let home = init_tls_home(&tmp, "home", &certs);
    let start = || master_refused(&home);
    // A missing key file.
    std::fs::remove_file(home.join("tls/master.key")).expect("rm");
    let err = start();
    assert!(err.contains("[master.tls] of the pinned commit"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: cannot read the private key: No such file",
            home.join("tls/master.key").display()
        )),
        "{err}"
    );
    // A key that is not the certificate's (the CA's key).
    std::fs::copy(tmp.path().join("pki/ca.key"), home.join("tls/master.key")).expect("copy");
    let err = start();
    assert!(err.contains("cannot be used together"), "{err}");
    // Not PEM at all.
    std::fs::write(home.join("tls/master.crt"), "hello\n").expect("write");
    let err = start();
    assert!(
        err.contains(&format!(
            "{}: no `-----BEGIN CERTIFICATE-----` block",
            home.join("tls/master.crt").display()
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------- start-master, stop-master

/// Stops the domain home's Master on drop, however the test ended.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = steward_output(
            &[
                "stop-master",
                "--domain-home",
                self.0.to_str().unwrap_or_default(),
                "--timeout",
                "5s",
            ],
            &[],
        );
    }
}

#[test]
fn start_master_runs_it_in_the_background_until_stop_master() {
    let tmp = TempDir::new("start-master");
    let home = init_home(&tmp);
    let home_s = home.to_str().expect("utf-8");
    let _guard = StopOnDrop(home.clone());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");

    let out = steward_output(
        &["start-master", "--domain-home", home_s, "--listen", &listen],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // The Master's own start lines are shown, then RUNNING.
    assert!(stdout.contains("[master] [Master-0001]"), "{stdout}");
    assert!(
        stdout.contains("[Master-0052] The Master is RUNNING"),
        "{stdout}"
    );
    // Ready means serving, at once.
    let r = request(port, "GET", "/healthz", None).expect("healthz after start-master");
    assert_eq!(r.status, 200);

    // The log: DOMAIN_HOME/logs/master_<YYYYMMDD>.log00001, with both sides' lines.
    let logs: Vec<PathBuf> = std::fs::read_dir(home.join("logs"))
        .expect("logs dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let name = logs[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("master_") && name.ends_with(".log00001") && name.len() == 24,
        "{name}"
    );
    let log = std::fs::read_to_string(&logs[0]).expect("read log");
    assert!(log.contains("[launcher] [Master-0050]"), "{log}");
    assert!(log.contains("[master] [Master-0001]"), "{log}");

    // One Master per domain home.
    let out = steward_output(
        &["start-master", "--domain-home", home_s, "--listen", &listen],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("already running [pid : "),
        "{}",
        text(&out.stdout)
    );

    // stop-master: graceful (the Master logs its own stop), then idempotent.
    let out = steward_output(&["stop-master", "--domain-home", home_s], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("[Master-0057] The Master stopped gracefully"),
        "{stdout}"
    );
    assert!(request(port, "GET", "/healthz", None).is_err());
    let log = std::fs::read_to_string(&logs[0]).expect("read log");
    assert!(
        log.contains("[master] [Master-0002] Stopping on a signal."),
        "{log}"
    );
    let out = steward_output(&["stop-master", "--domain-home", home_s], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("[Master-0058] The Master is not running."));

    // A start that fails (the port is taken) says why, with the Master's own message, and fails.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").to_string();
    let out = steward_output(
        &["start-master", "--domain-home", home_s, "--listen", &busy],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[Master-0054] The Master exited during its start"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "[Master-0006] The Master cannot run: cannot listen on {busy}"
        )),
        "{stdout}"
    );
}

#[test]
fn start_master_verbose_stays_attached_and_stops_on_sigterm() {
    let tmp = TempDir::new("start-master-v");
    let home = init_home(&tmp);
    let _guard = StopOnDrop(home.clone());
    let port = free_port();
    let mut launcher = steward_cmd(&["start-master", "--verbose", "--domain-home"])
        .arg(&home)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start-master --verbose");
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(port, "GET", "/healthz", None).is_err() {
        assert!(Instant::now() < deadline, "the Master did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        launcher.try_wait().expect("try_wait").is_none(),
        "still attached"
    );
    let pid = launcher.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out = launcher.wait_with_output().expect("wait");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("[Master-0056] Stopping the Master"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[Master-0057] The Master stopped"),
        "{stdout}"
    );
    // Attached: the Master's lines were on the terminal too.
    assert!(stderr.contains("[master] [Master-0002]"), "{stderr}");
    assert!(request(port, "GET", "/healthz", None).is_err());
}

/// A push request as git sends it: the command line, a flush, then the pack of `new` over `old`
/// (made by `git pack-objects`).
fn receive_pack_request(wc: &Path, old: &str, new: &str) -> Vec<u8> {
    let cmd = format!("{old} {new} refs/heads/main\0report-status agent=steward-test\n");
    let mut body = format!("{:04x}{cmd}0000", cmd.len() + 4).into_bytes();
    let mut pack = Command::new("git")
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .current_dir(wc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git pack-objects");
    let mut stdin = pack.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{new}\n^{old}\n").as_bytes())
        .expect("revisions");
    drop(stdin);
    let out = pack.wait_with_output().expect("pack");
    assert!(out.status.success());
    body.extend_from_slice(&out.stdout);
    body
}

/// `POST git-receive-pack` as `admin` with `body` and these headers; the raw answer.
fn post_receive_pack(port: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "POST /git/domain.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Connection: close\r\nAuthorization: Basic {}\r\nContent-Length: {}\r\n",
        basic("admin", "admin"),
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    read_response(s).expect("response")
}

#[test]
fn pushes_go_to_receive_pack_directly_and_to_the_backend_when_only_it_can_take_them() {
    let tmp = TempDir::new("push-paths");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let wc = clone_domain(master.port, tmp.path().join("wc"));
    let commit = |n: u32| {
        edit_text(
            &wc.join("domain.toml"),
            "\n",
            &format!("\n# push path {n}\n"),
        );
        git_ok(&wc, &["commit", "-qam", &format!("push path {n}")]);
        git_ok(&wc, &["rev-parse", "HEAD"])
    };
    const TYPE: (&str, &str) = ("Content-Type", "application/x-git-receive-pack-request");

    // What stock git sends: straight to `git receive-pack`, answered as the backend would.
    let old = master.pinned();
    let new = commit(1);
    let r = post_receive_pack(master.port, &[TYPE], &receive_pack_request(&wc, &old, &new));
    assert_eq!(r.status, 200, "{}\n{}", r.head, master.log());
    let head = r.head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/x-git-receive-pack-result"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(r.body.contains("ok refs/heads/main"), "{:?}", r.body);
    assert_eq!(master.pinned(), new);

    // A compressed upload (other clients send them): the backend inflates it; pinned all the same.
    let old = new;
    let new = commit(2);
    let plain = receive_pack_request(&wc, &old, &new);
    let mut gzip = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = gzip.stdin.take().expect("stdin");
    stdin.write_all(&plain).expect("gzip input");
    drop(stdin);
    let gzipped = gzip.wait_with_output().expect("gzip").stdout;
    let r = post_receive_pack(master.port, &[TYPE, ("Content-Encoding", "gzip")], &gzipped);
    assert_eq!(r.status, 200, "{}\n{}", r.head, master.log());
    assert!(r.body.contains("ok refs/heads/main"), "{:?}", r.body);
    assert_eq!(master.pinned(), new);

    // A content type git's backend does not take is refused by it, as before; nothing moves.
    let old = new;
    let new = commit(3);
    let r = post_receive_pack(
        master.port,
        &[(
            "Content-Type",
            "application/x-git-receive-pack-request; charset=utf-8",
        )],
        &receive_pack_request(&wc, &old, &new),
    );
    assert_eq!(r.status, 415, "{}", r.head);
    assert_eq!(master.pinned(), old);
    assert_eq!(
        git_ok(&home.join("config/domain.git"), &["rev-parse", "main"]),
        old
    );
}

#[test]
fn the_master_checks_pushes_itself_while_the_only_hook_is_its_own() {
    let tmp = TempDir::new("push-checked");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let wc = clone_domain(master.port, tmp.path().join("wc"));
    let bare = home.join("config/domain.git");
    let hooks = bare.join("hooks");
    let original = std::fs::read(hooks.join("pre-receive")).expect("hook");
    // Steward's hook, but one that cannot run: a push that worked did not run it.
    std::fs::write(
        hooks.join("pre-receive"),
        "#!/nonexistent/steward hook\n# Installed by `steward hook install`\n",
    )
    .expect("hook");
    let commit = |n: u32| {
        edit_text(&wc.join("domain.toml"), "\n", &format!("\n# checked {n}\n"));
        git_ok(&wc, &["commit", "-qam", &format!("checked {n}")]);
        git_ok(&wc, &["rev-parse", "HEAD"])
    };

    // Valid: pinned, and the pusher hears what the hook would have said.
    let pushed = commit(1);
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert!(
        out.stderr.contains(&format!(
            "remote: steward: refs/heads/main {} is valid",
            &pushed[..7]
        )),
        "{}",
        out.stderr.clone()
    );
    assert_eq!(master.pinned(), pushed);

    // An annotated tag is checked as its commit; a tag of a tree is refused; deleting needs no
    // pack and is let through.
    git_ok(&wc, &["tag", "-a", "v1", "-m", "v1"]);
    let out = git(&wc, &["push", "origin", "v1"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert!(
        out.stderr.contains("refs/tags/v1"),
        "{}",
        out.stderr.clone()
    );
    git_ok(&wc, &["tag", "tree", "HEAD^{tree}"]);
    let out = git(&wc, &["push", "origin", "tree"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("names a tree, not a commit"),
        "{}",
        out.stderr.clone()
    );
    let out = git(&wc, &["push", "origin", ":v1"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert_eq!(git(&bare, &["rev-parse", "-q", "--verify", "v1"]).code, 1);

    // Invalid: refused with its problems, nothing moved, the refusal recorded with them.
    push_bad_policy(&wc);
    assert_eq!(master.pinned(), pushed);
    assert_eq!(git_ok(&bare, &["rev-parse", "main"]), pushed);
    let last = &master.history()[0];
    assert_eq!(last["outcome"], "rejected", "{last}");
    assert!(
        last["problems"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["line"] == 10)),
        "{last}"
    );
    git_ok(&wc, &["reset", "-q", "--hard", "HEAD~1"]);

    // A pack the Master cannot read is refused, and it says why.
    let old = pushed.clone();
    let new = commit(2);
    let mut body = receive_pack_request(&wc, &old, &new);
    let at = body.windows(4).position(|w| w == b"PACK").expect("pack");
    body.truncate(at + 12);
    body.extend_from_slice(&[0xff; 64]);
    let r = post_receive_pack(
        master.port,
        &[("Content-Type", "application/x-git-receive-pack-request")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.body
            .contains("ng refs/heads/main pre-receive hook declined"),
        "{:?}",
        r.body
    );
    assert_eq!(git_ok(&bare, &["rev-parse", "main"]), old);
    assert!(master.log().contains("Master-0033"), "{}", master.log());

    // With a hook of the operator's beside it, git runs the hooks again: the broken one fails.
    let ran = tmp.path().join("post-receive-ran");
    std::fs::write(
        hooks.join("post-receive"),
        format!("#!/bin/sh\ntouch '{}'\n", ran.display()),
    )
    .expect("hook");
    std::fs::set_permissions(
        hooks.join("post-receive"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(!out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), old);
    std::fs::write(hooks.join("pre-receive"), &original).expect("restore");
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), new);
    assert!(ran.exists(), "the operator's hook ran");
}
