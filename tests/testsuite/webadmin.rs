//! The WebAdmin page (docs/webadmin.md): its routes and headers over plain HTTP, the cross-site
//! refusal, and the page itself in a real headless Chromium driven through its WebDriver.

use serde_json::json;

use crate::util::http::{request, request_with};
use crate::util::master::{Master, Servers, commit_and_push, init_home, pid_of, start_server};
use crate::util::webdriver::WebDriver;
use crate::util::{TempDir, git_ok, set_toml, steward_cmd, text};

const ADMIN: Option<(&str, &str)> = Some(("admin", "admin"));
const READER: Option<(&str, &str)> = Some(("reader", "reader"));

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_page_me_and_a_commits_plan_over_http() {
    let tmp = TempDir::new("webadmin-http");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let port = master.port;

    // `/v1/me`: the user and what it may do, for any valid credentials.
    let me = json(&request(port, "GET", "/v1/me", ADMIN).unwrap().body);
    assert_eq!(me["user"], "admin");
    for p in ["domain:pin", "servers:control", "servers:read", "git:push"] {
        assert!(
            me["permissions"].as_array().unwrap().contains(&p.into()),
            "{me}"
        );
    }
    let me = json(&request(port, "GET", "/v1/me", READER).unwrap().body);
    assert_eq!(
        me["permissions"],
        serde_json::json!(["domain:read", "git:read", "events:read"])
    );
    assert_eq!(request(port, "GET", "/v1/me", None).unwrap().status, 401);

    // The page: the browser's log-in prompt without credentials, then the servers and the
    // buttons the user may use, with the security headers.
    let r = request(port, "GET", "/", None).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"steward\"")
    );
    let r = request(port, "GET", "/", ADMIN).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(r.body.contains("<tr data-server=\"server1\""), "{}", r.body);
    assert!(r.body.contains("class=\"restart\" data-server=\"server1\""));
    assert!(!r.body.contains("<script>"), "no inline script");
    // `reader` has no `servers:read`: no servers, no buttons.
    let r = request(port, "GET", "/", READER).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("data-server=") && !r.body.contains("<button"),
        "{}",
        r.body
    );
    let js = request(port, "GET", "/webadmin.js", READER).unwrap();
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.body.contains("new EventSource(at(\"/v1/events\"))"));
    let css = request(port, "GET", "/webadmin.css", ADMIN).unwrap();
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(
        request(port, "GET", "/webadmin.js", None).unwrap().status,
        401
    );

    // A commit's plan against its parent, pushed with git (whose POSTs pass the CSRF rule).
    let wc = tmp.path().join("wc");
    let url = master.url("admin", "admin");
    git_ok(tmp.path(), &["clone", "-q", &url, wc.to_str().unwrap()]);
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9751",
    );
    git_ok(&wc, &["commit", "-qam", "move server1"]);
    git_ok(&wc, &["push", "-q", "origin", "main"]);
    let head = git_ok(&wc, &["rev-parse", "HEAD"]);
    assert_eq!(master.pinned(), head);
    let r = request(port, "GET", &format!("/v1/commits/{head}/plan"), READER).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = json(&r.body);
    assert_eq!(
        plan["to"].as_str().map(|t| t.contains(&head[..7])),
        Some(true),
        "{plan}"
    );
    assert!(
        plan["text"]
            .as_str()
            .unwrap()
            .contains("servers.server1.listen"),
        "{plan}"
    );
    assert!(
        plan["restart"]
            .as_array()
            .unwrap()
            .contains(&"server1".into()),
        "{plan}"
    );
    let r = request(
        port,
        "GET",
        "/v1/commits/0123456789abcdef0123456789abcdef01234567/plan",
        ADMIN,
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        request(port, "GET", &format!("/v1/commits/{head}/plan"), None)
            .unwrap()
            .status,
        401
    );

    // `steward admin show` gets the same plan.
    let out = steward_cmd(&["admin", "show", &head])
        .env("STEWARD_MASTER", format!("http://127.0.0.1:{port}"))
        .env("STEWARD_USER", "admin")
        .env("STEWARD_PASSWORD", "admin")
        .env("STEWARD_CREDENTIALS", "/nonexistent/steward-credentials")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("Plan (against its parent):"), "{stdout}");
    assert!(stdout.contains("servers.server1.listen"), "{stdout}");
}

#[test]
fn requests_from_other_sites_and_simple_content_types_are_refused() {
    let tmp = TempDir::new("webadmin-csrf");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let port = master.port;
    let pinned = master.pinned();
    let body = format!("{{\"commit\": \"{pinned}\"}}");
    let own = format!("http://127.0.0.1:{port}");
    let pin = |headers: &[(&str, &str)]| {
        request_with(port, "POST", "/v1/domain/pin", ADMIN, headers, &body)
    };
    const JSON: (&str, &str) = ("Content-Type", "application/json");

    // What another site's page can make a logged-in browser send: refused, nothing done.
    for headers in [
        vec![JSON, ("Origin", "https://evil.example")],
        vec![JSON, ("Origin", "http://127.0.0.1:1")],
        vec![JSON, ("Origin", "null")],
        vec![JSON, ("Sec-Fetch-Site", "cross-site")],
        vec![JSON, ("Sec-Fetch-Site", "same-site")],
    ] {
        let r = pin(&headers);
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
        assert!(r.body.contains("cross-site"), "{}", r.body);
    }
    for headers in [
        vec![("Content-Type", "text/plain")],
        vec![("Content-Type", "application/x-www-form-urlencoded")],
        vec![("Content-Type", "multipart/form-data; boundary=x")],
        vec![],
    ] {
        let r = pin(&headers);
        assert_eq!(r.status, 415, "{headers:?}: {}", r.body);
    }
    // Credentials still come first: without them, the same 401 as ever.
    let r = request_with(
        port,
        "POST",
        "/v1/domain/pin",
        None,
        &[("Origin", "https://evil.example")],
        &body,
    );
    assert_eq!(r.status, 401);
    // Reading is not refused: a cross-site page cannot read the answer.
    let r = request_with(
        port,
        "GET",
        "/v1/domain",
        ADMIN,
        &[("Origin", "https://evil.example")],
        "",
    );
    assert_eq!(r.status, 200);

    // The page's own requests, and clients that are no browser, pass.
    let r = pin(&[JSON, ("Origin", &own), ("Sec-Fetch-Site", "same-origin")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["changed"], false);
    assert!(master.log().contains("[Master-0080]"), "{}", master.log());
    let r = pin(&[("Content-Type", "application/json; charset=utf-8")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(master.pinned(), pinned);
}

/// Logs in through the URL, as a person would type it: Chromium sends the credentials on the
/// navigation and keeps them for the origin, so the page's script and event stream get them too.
fn open_as(port: u16, user: &str, password: &str) -> WebDriver {
    let browser = WebDriver::start();
    browser.goto(&format!("http://{user}:{password}@127.0.0.1:{port}/"));
    browser.wait("the page's script to start", 30, |b| {
        (b.script("return document.body.dataset.ready || null;", json!([])) == "true").then_some(())
    });
    browser
}

/// The text of `server`'s `cell` in the servers table.
fn cell(b: &WebDriver, server: &str, cell: &str) -> String {
    b.text(&format!("tr[data-server=\"{server}\"] td.{cell}"))
        .unwrap_or_default()
}

#[test]
fn in_a_real_browser_pushes_appear_live_and_a_restart_comes_back() {
    let tmp = TempDir::new("webadmin-browser");
    let (master, home, ports) = crate::admin::example_domain("webadmin-browser-repo", &tmp);
    let port = master.port;
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", port);

    let b = open_as(port, "admin", "admin");
    b.wait("server1 RUNNING and the stream live", 30, |b| {
        (cell(b, "server1", "state") == "RUNNING" && b.text("#live")? == "live").then_some(())
    });
    let marks = b.script(
        "return performance.getEntriesByName('steward:servers-rendered').length;",
        json!([]),
    );
    assert_eq!(marks, 1);
    // The stylesheet applies under the page's Content-Security-Policy.
    let header = b.script(
        "return getComputedStyle(document.querySelector('header')).backgroundColor;",
        json!([]),
    );
    assert_eq!(header, "rgb(29, 36, 48)");
    // Set in this page: still there later means the page was never reloaded.
    b.script("window.stewardMarker = 'kept'; return null;", json!([]));

    // A push (with git) shows without reloading: the new pin, then server1 on it, its restart
    // pending (restart-policy manual).
    let wc = tmp.path().join("wc");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &master.url("admin", "admin"),
            wc.to_str().unwrap(),
        ],
    );
    set_toml(
        &wc.join("domain.toml"),
        "servers.server1.process.env.RESTARTED",
        "yes",
    );
    let pin = commit_and_push(&wc);
    let short = &pin[..7];
    b.wait("the new pin on the page", 30, |b| {
        (b.text("#pinned")? == short).then_some(())
    });
    b.wait("server1 applying the new pin", 60, |b| {
        (cell(b, "server1", "applied") == short && !cell(b, "server1", "pending").is_empty())
            .then_some(())
    });
    b.wait("the push in the history", 10, |b| {
        b.text("#history-list li:first-child .commit")
            .filter(|c| c == short)
    });
    assert_eq!(
        b.script("return window.stewardMarker || null;", json!([])),
        "kept"
    );

    // The commit's plan, from its history entry.
    b.click("#history-list li:first-child button.plan");
    b.wait("the plan", 20, |b| {
        b.text("#plan-text").filter(|t| t.contains("RESTARTED"))
    });
    // Older pins can be rolled back to, by this user.
    assert!(b.count("#history-list button.rollback") >= 1);

    // Restart server1 from the page: it goes down and comes back RUNNING, its restart done.
    let before = pid_of(&home, "server1");
    b.script(
        "const cell = document.querySelector('tr[data-server=\"server1\"] td.state');
         window.stewardStates = [];
         new MutationObserver(() => window.stewardStates.push(cell.textContent))
           .observe(cell, { childList: true, characterData: true, subtree: true });
         return null;",
        json!([]),
    );
    b.click("tr[data-server=\"server1\"] button.restart");
    b.accept_alert();
    b.wait("server1 back RUNNING after a restart", 90, |b| {
        let seen = b.script("return window.stewardStates;", json!([]));
        let seen: Vec<&str> = seen.as_array()?.iter().filter_map(|s| s.as_str()).collect();
        (seen.iter().any(|s| *s != "RUNNING")
            && seen.last() == Some(&"RUNNING")
            && cell(b, "server1", "pending").is_empty())
        .then_some(())
    });
    b.wait("the rollout reported done", 30, |b| {
        b.text("#message").filter(|m| m.contains("succeeded"))
    });
    assert_ne!(pid_of(&home, "server1"), before);
    assert_eq!(
        b.script("return window.stewardMarker || null;", json!([])),
        "kept"
    );

    // Another site's page — here the shop server1 serves, on another port of the same host — makes
    // this logged-in browser POST to the Master as a form could: the browser sends the cached
    // credentials (the Master authenticates them, and says so), and the Master refuses it.
    let rollouts = || json(&request(port, "GET", "/v1/rollouts", ADMIN).unwrap().body);
    let before = rollouts();
    b.goto(&format!("http://127.0.0.1:{}/shop/", ports[4]));
    b.script(
        "fetch(arguments[0], { method: 'POST', mode: 'no-cors', credentials: 'include',
                               body: '{\"action\": \"restart\", \"servers\": [\"server1\"]}' });
         return null;",
        json!([format!("http://127.0.0.1:{port}/v1/rollouts")]),
    );
    crate::util::eventually("the cross-site POST refused", 20, || {
        master.log().contains("[Master-0080]").then_some(())
    });
    assert_eq!(rollouts(), before, "no rollout was started");
    drop(b);

    // A read-only user sees the domain and its servers, and no button to change anything.
    let v = open_as(port, "viewer", "reader");
    v.wait("server1 RUNNING for the viewer", 30, |b| {
        (cell(b, "server1", "state") == "RUNNING").then_some(())
    });
    v.wait("the history for the viewer", 20, |b| {
        (b.count("#history-list > li") >= 2).then_some(())
    });
    assert_eq!(v.count("button.restart"), 0);
    assert_eq!(v.count("button.restart-cluster"), 0);
    assert_eq!(v.count("#restart-pending"), 0);
    assert_eq!(v.count("button.rollback"), 0);
    assert!(v.count("button.plan") >= 2, "plans are for reading");
}

/// The text of `timer`'s `cell` in server1's timers table.
fn timer_cell(b: &WebDriver, timer: &str, cell: &str) -> Option<String> {
    b.text(&format!(
        "table.timers[data-server=\"server1\"] tr[data-id=\"{timer}\"] td.{cell}"
    ))
}

#[test]
fn in_a_real_browser_timers_are_listed_and_cancelled() {
    let jobs = crate::admin_timers::Jobs::start("webadmin-timers");
    jobs.create("id=rt-far&at=2099-01-01T00%3A00%3A00Z");
    jobs.create("id=rt-tick&interval=300ms");
    let port = jobs.mport;

    // server1's table: each timer, the cancel button on run-time timers only (the declared one
    // lives in domain.toml).
    let b = open_as(port, "admin", "admin");
    b.wait("server1's timers", 30, |b| {
        (timer_cell(b, "rt-far", "next")? == "2099-01-01T00:00:00Z").then_some(())
    });
    assert_eq!(
        timer_cell(&b, "newyear", "kind").as_deref(),
        Some("declared")
    );
    assert_eq!(
        timer_cell(&b, "rt-far", "kind").as_deref(),
        Some("run-time")
    );
    let buttons = |b: &WebDriver, id: &str| {
        b.count(&format!(
            "table.timers[data-server=\"server1\"] tr[data-id=\"{id}\"] button.cancel-timer"
        ))
    };
    assert_eq!(buttons(&b, "newyear"), 0);
    assert_eq!(buttons(&b, "rt-far"), 1);
    // Cancel from the page: confirmed, committed by server1, gone from the table.
    b.click("table.timers[data-server=\"server1\"] tr[data-id=\"rt-far\"] button.cancel-timer");
    b.accept_alert();
    b.wait("the cancel reported", 30, |b| {
        b.text("#message")
            .filter(|m| m.contains("Timer jobs/rt-far on server1 is cancelled"))
    });
    b.wait("rt-far gone from the table", 30, |b| {
        (b.count("tr[data-id=\"rt-far\"]") == 0).then_some(())
    });
    let r = request(jobs.s1, "GET", "/v1/components", ADMIN).unwrap();
    assert!(!r.body.contains("rt-far"), "{}", r.body);
    assert!(
        jobs.master
            .log()
            .contains("Timer jobs/rt-far on server1 was cancelled by admin.")
    );
    // The last result shows once the timer fired (the page reloads its timers on demand;
    // clicked last, as a reload replaces the rows).
    b.wait("rt-tick fired, shown after a reload", 30, |b| {
        b.click("#timers-reload");
        timer_cell(b, "rt-tick", "last").filter(|l| l.starts_with("ok "))
    });

    drop(b);

    // A read-only user sees the timers and no button to cancel them.
    let v = open_as(port, "viewer", "reader");
    v.wait("server1's timers for the viewer", 30, |b| {
        timer_cell(b, "rt-tick", "kind").filter(|k| k == "run-time")
    });
    assert_eq!(v.count("button.cancel-timer"), 0);
}
