//! End to end, the Master under attack and faults (issue 8): password floods, unauthenticated
//! probing, idle-connection floods, slow clients, hanging or abandoned pushes, a history that
//! cannot be written, rejections with many problems. Real `steward master`, real `git`, real
//! sockets on 127.0.0.1; every flood is bounded in count and stops by itself.

use crate::util::http::*;
use crate::util::master::*;
use crate::util::{TempDir, free_port, git, git_ok};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A work tree cloned from the Master as `admin`.
fn clone(tmp: &TempDir, master: &Master) -> PathBuf {
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
    wc
}

/// Commits a valid change (server1's port) and returns its id.
fn commit_valid(wc: &Path, port: u16) -> String {
    let listen = format!("127.0.0.1:{port}");
    crate::util::set_toml(&wc.join("domain.toml"), "servers.server1.listen", listen);
    git_ok(wc, &["commit", "-qam", &format!("server1 on {port}")]);
    git_ok(wc, &["rev-parse", "HEAD"])
}

fn bare_main(home: &Path) -> String {
    git_ok(
        &home.join("config/domain.git"),
        &["rev-parse", "refs/heads/main"],
    )
}

fn resident_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[test]
fn a_password_flood_stays_bounded_and_valid_users_stay_served() {
    let tmp = TempDir::new("pwflood");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let pid = master.child.id();
    // A user who logged in before the flood (servers do, at registration).
    assert_eq!(master.get("/v1/domain").status, 200);

    let port = master.port;
    let flood: Vec<_> = (0..300)
        .map(|i| {
            std::thread::spawn(move || {
                let pw = format!("wrong{i}");
                let r = request(port, "GET", "/v1/domain", Some(("admin", pw.as_str())));
                r.map(|r| (r.status, r.head.to_lowercase().contains("retry-after:")))
            })
        })
        .collect();
    // Throughout the flood: /healthz and the valid user are served, memory stays bounded.
    let mut peak = resident_kb(pid);
    let mut rounds = 0;
    while flood.iter().any(|t| !t.is_finished()) || rounds < 3 {
        let h = request(port, "GET", "/healthz", None).expect("healthz");
        assert_eq!(h.status, 200);
        assert_eq!(master.get("/v1/domain").status, 200, "the valid user");
        peak = peak.max(resident_kb(pid));
        rounds += 1;
    }
    let mut statuses = std::collections::BTreeMap::new();
    for t in flood {
        let (status, retry_after) = t.join().expect("thread").expect("an answer");
        assert!(
            matches!(status, 401 | 429 | 503),
            "a wrong password got {status}"
        );
        if status != 401 {
            assert!(retry_after, "{status} without Retry-After");
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&401).copied().unwrap_or(0) < 300,
        "nothing was bounded: {statuses:?}"
    );
    assert!(peak < 100 * 1024, "peak RSS {peak} kB; {statuses:?}");
    // Failing on: uncached attempts from this address are soon slowed down (429), however many
    // of the flood's were verified; valid sessions are not.
    let throttled = (0..12).find_map(|_| {
        let r = request(port, "GET", "/v1/domain", Some(("reader", "nope"))).expect("request");
        (r.status == 429).then_some(r)
    });
    let r = throttled.expect("no back-off after repeated failures");
    assert!(r.head.to_lowercase().contains("retry-after:"), "{}", r.head);
    assert_eq!(master.get("/v1/domain").status, 200);
}

#[test]
fn without_credentials_nothing_is_revealed_and_no_body_is_read() {
    let tmp = TempDir::new("unauth");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let port = master.port;
    for (method, path) in [
        ("PUT", "/v1/domain"),
        ("DELETE", "/v1/domain/history"),
        ("PATCH", "/v1/servers/server1/heartbeat"),
        ("GET", "/v1/domain/pin"),
        ("OPTIONS", "/git/domain.git/info/refs"),
        ("PUT", "/nope"),
    ] {
        let r = request(port, method, path, None).expect("request");
        assert_eq!(r.status, 401, "{method} {path}");
        assert!(r.body.is_empty(), "{method} {path}: {:?}", r.body);
    }
    // A 2 MiB body without credentials: answered 401 after the head alone. Only the first 64 KiB
    // are sent; a Master waiting for the rest (reading it first) would never answer.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "POST /v1/domain/pin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&vec![b' '; 64 * 1024])
        .expect("part of the body");
    let r = read_response(s).expect("an answer before the body ends");
    assert_eq!(r.status, 401, "{}", r.head);

    // The push service needs `git:push`, however its name is spelt in the query.
    for q in [
        "service=git-receive-pack",
        "service=git%2dreceive-pack",
        "service=git%2Dreceive%2Dpack",
    ] {
        let path = format!("/git/domain.git/info/refs?{q}");
        let r = request(port, "GET", &path, Some(("reader", "reader"))).expect("request");
        assert_eq!(r.status, 403, "{q}");
        assert!(!r.body.contains("report-status"), "{q}: advertised");
    }
    let r = request(
        port,
        "GET",
        "/git/domain.git/info/refs?service=git-upload-pack",
        Some(("reader", "reader")),
    )
    .expect("request");
    assert_eq!(r.status, 200);
}

#[test]
fn idle_connections_beyond_the_cap_starve_nothing_and_slow_clients_are_closed() {
    let tmp = TempDir::new("connflood");
    let home = init_home(&tmp);
    // A small descriptor limit makes a small cap: (600 - 256) / 2 = 172 connections.
    let log = tmp.path().join("master.log");
    let port = free_port();
    let log_file = std::fs::File::create(&log).expect("log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 600 && exec "$0" master --domain-home "$1" --listen "$2""#)
        .arg(env!("CARGO_BIN_EXE_steward"))
        .arg(&home)
        .arg(format!("127.0.0.1:{port}"))
        .stdout(log_file.try_clone().expect("clone"))
        .stderr(log_file)
        .spawn()
        .expect("start");
    let master = Master {
        child,
        port,
        log: log.clone(),
    };
    crate::util::poll(20, || {
        request(port, "GET", "/healthz", None)
            .ok()
            .filter(|r| r.status == 200)
    })
    .unwrap_or_else(|| panic!("not ready:\n{}", master.log()));
    let cap = json(&master.get("/v1/domain"))["master"]["connections"]["cap"]
        .as_u64()
        .expect("cap");
    assert_eq!(cap, 172);

    let wc = clone(&tmp, &master);
    let pinned = master.pinned();
    // Twice the cap in idle connections, held open.
    let idle: Vec<TcpStream> = (0..2 * cap)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    assert_eq!(
        request(port, "GET", "/healthz", None)
            .expect("healthz")
            .status,
        200
    );
    let status = format!(
        r#"{{"name":"server1","state":"running","mode":"DEPENDENT","applied_commit":"{pinned}","pending_restart":[],"failed_applications":[],"last_error":null}}"#
    );
    let r = post(
        port,
        "/v1/servers/server1/heartbeat",
        ("admin", "admin"),
        &status,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let pushed = commit_valid(&wc, 9800);
    let out = git(&wc, &["push", "-q", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), pushed);
    let open = json(&master.get("/v1/domain"))["master"]["connections"]["open"]
        .as_u64()
        .expect("open");
    assert!(open <= cap, "{open} open, cap {cap}");
    drop(idle);

    // A client that never finishes its request head is closed (after the header timeout).
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("part of a head");
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    // The flood is in the log at most once per message id and minute.
    let log_text = master.log();
    assert!(log_text.matches("Master-0061").count() <= 1, "{log_text}");
}

#[test]
fn a_push_that_cannot_be_recorded_is_refused_and_main_does_not_move() {
    let tmp = TempDir::new("unpinnable");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let wc = clone(&tmp, &master);
    let (main0, pinned0) = (bare_main(&home), master.pinned());

    // A real fault: the history's path is taken by a directory, so no record can be appended.
    let history = home.join("config/pins.jsonl");
    let saved = std::fs::read(&history).expect("history");
    std::fs::remove_file(&history).expect("remove");
    std::fs::create_dir(&history).expect("dir in its place");
    let refused = commit_valid(&wc, 9801);
    let out = git(&wc, &["push", "origin", "main"]);
    let err = out.stderr.clone();
    assert!(!out.success(), "acknowledged:\n{err}");
    assert!(err.contains("could not pin it"), "{err}");
    assert_eq!(bare_main(&home), main0, "main moved");
    assert_eq!(master.pinned(), pinned0);
    assert!(master.log().contains("Master-0013"), "{}", master.log());

    // The fault repaired, the same commit is pushed and pinned.
    std::fs::remove_dir(&history).expect("rmdir");
    std::fs::write(&history, saved).expect("restore");
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), refused);
    assert_eq!(bare_main(&home), refused);

    // A pin ref that cannot be written (its path taken by a directory holding a file) is refused
    // too.
    let next = commit_valid(&wc, 9802);
    let blocker = home.join("config/domain.git/refs/steward/pins").join(&next);
    std::fs::create_dir_all(&blocker).expect("blocker");
    std::fs::write(blocker.join("in-the-way"), "not a ref\n").expect("blocker");
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(!out.success(), "{}", out.stderr.clone());
    assert_eq!(bare_main(&home), refused);
    assert_eq!(master.pinned(), refused);
}

/// Replaces the repository's pre-receive hook with one that hangs; returns the script's path (in
/// the command line of the hanging process) and the original hook, to put back.
fn hanging_hook(tmp: &TempDir, home: &Path) -> (String, Vec<u8>) {
    let script = tmp.path().join("hang.sh");
    let started = tmp.path().join("hook-started");
    std::fs::write(
        &script,
        format!("touch '{}'\nsleep 300\n", started.to_str().expect("utf-8")),
    )
    .expect("script");
    let hook = home.join("config/domain.git/hooks/pre-receive");
    let original = std::fs::read(&hook).expect("hook");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\nexec /bin/sh '{}'\n", script.display()),
    )
    .expect("hook");
    (script.to_str().expect("utf-8").to_owned(), original)
}

#[test]
fn a_hanging_pre_receive_is_stopped_when_the_client_leaves_and_at_its_deadline() {
    let tmp = TempDir::new("hang");
    let home = init_home(&tmp);
    let mut master = Master::start_with(
        &home,
        tmp.path().join("master.log"),
        &["--pre-receive-timeout", "120s"],
    );
    let wc = clone(&tmp, &master);
    let main0 = bare_main(&home);
    let (script, original) = hanging_hook(&tmp, &home);
    let hook = home.join("config/domain.git/hooks/pre-receive");

    // The client goes away while the hook runs: the hook is stopped, the lock released.
    commit_valid(&wc, 9803);
    let mut push = Command::new("git")
        .args(["push", "-q", "origin", "main"])
        .current_dir(&wc)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("git push");
    let started = tmp.path().join("hook-started");
    crate::util::eventually("the hook runs", 30, || started.exists().then_some(()));
    let killed = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", push.id())])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = push.wait();
    crate::util::eventually("the hanging hook was stopped", 20, || {
        crate::util::processes_with(&script)
            .is_empty()
            .then_some(())
    });
    assert_eq!(bare_main(&home), main0);
    std::fs::write(&hook, &original).expect("restore the hook");
    let pushed = commit_valid(&wc, 9804);
    let out = git(&wc, &["push", "-q", "origin", "main"]);
    assert!(out.success(), "the lock is free: {}", out.stderr.clone());
    assert_eq!(master.pinned(), pushed);
    assert!(master.log().contains("Master-0032"), "{}", master.log());
    master.kill9();

    // A deadline: the push is refused with the reason, the hook stopped, the next push served.
    let master = Master::start_with(
        &home,
        tmp.path().join("master2.log"),
        &["--pre-receive-timeout", "2s"],
    );
    std::fs::remove_file(&started).expect("reset");
    git_ok(
        &wc,
        &["remote", "set-url", "origin", &master.url("admin", "admin")],
    );
    let (script, original) = hanging_hook(&tmp, &home);
    let last = commit_valid(&wc, 9805);
    let out = git(&wc, &["push", "origin", "main"]);
    let err = out.stderr.clone();
    assert!(!out.success(), "{err}");
    assert!(err.contains("deadline of the pre-receive step"), "{err}");
    crate::util::eventually("the hanging hook was stopped", 20, || {
        crate::util::processes_with(&script)
            .is_empty()
            .then_some(())
    });
    assert_eq!(bare_main(&home), pushed);
    std::fs::write(&hook, &original).expect("restore the hook");
    let out = git(&wc, &["push", "-q", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), last);
}

#[test]
fn rejections_are_recorded_bounded_and_announced() {
    let tmp = TempDir::new("rejects");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let wc = clone(&tmp, &master);
    let events = Events::subscribe(master.port);
    // Several hundred problems: an unknown key per line.
    let path = wc.join("domain.toml");
    let mut text_ = std::fs::read_to_string(&path).expect("read");
    for i in 0..400 {
        text_.push_str(&format!("bogus{i} = {i}\n"));
    }
    std::fs::write(&path, text_).expect("write");
    git_ok(&wc, &["commit", "-qam", "many problems"]);
    let refused = git_ok(&wc, &["rev-parse", "HEAD"]);
    let out = git(&wc, &["push", "origin", "main"]);
    assert!(!out.success());

    let (name, data) = events.next(Duration::from_secs(30));
    assert_eq!(name, "rejected");
    assert_eq!(data["commit"], refused.as_str());
    let history = master.history();
    let rec = &history[0];
    assert_eq!(rec["outcome"], "rejected");
    assert_eq!(rec["commit"], refused.as_str());
    let kept = rec["problems"].as_array().expect("problems").len();
    let more = rec["more_problems"].as_u64().unwrap_or(0);
    // However many the hook reports, the record keeps at most 100 and counts the rest.
    assert!((1..=100).contains(&kept), "{kept} (+{more})");
    let line = std::fs::read_to_string(home.join("config/pins.jsonl"))
        .expect("history")
        .lines()
        .last()
        .expect("a line")
        .len();
    assert!(line < 64 * 1024, "a {line}-byte record");
    // The history answer is bounded too.
    let r = master.get("/v1/domain/history?limit=1");
    assert_eq!(json(&r).as_array().map(Vec::len), Some(1));
}

#[test]
fn reads_do_not_wake_the_ref_watcher_and_pushes_do() {
    let tmp = TempDir::new("wakeups");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let wakeups = || {
        json(&master.get("/v1/domain"))["master"]["watch_wakeups"]
            .as_u64()
            .expect("a count")
    };
    let before = wakeups();
    // Reads of the repository (a clone opens every ref) and of the API.
    let wc = clone(&tmp, &master);
    git_ok(&wc, &["fetch", "-q", "origin"]);
    for _ in 0..5 {
        master.history();
    }
    assert_eq!(wakeups(), before, "reads woke the watcher");
    let pushed = commit_valid(&wc, 9806);
    let out = git(&wc, &["push", "-q", "origin", "main"]);
    assert!(out.success(), "{}", out.stderr.clone());
    assert_eq!(master.pinned(), pushed);
    crate::util::eventually("a push wakes it", 10, || (wakeups() > before).then_some(()));
}
