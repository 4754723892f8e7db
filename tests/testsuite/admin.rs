//! `steward admin` (the console tool) end to end: the real binary against a real Master and real
//! servers: status, restarts ordered through the Master under load, stop and start, rollbacks in
//! both modes with hold and resume, and the errors an operator gets for bad input.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::util::master::{
    Master, Servers, commit_and_push, init_home, pid_of, start_server, upstream,
};
use crate::util::{Repo, Run, TempDir, eventually, git, git_ok, set_toml, steward_cmd, text};

/// `steward admin ARGS` against the Master on `port` as `user` (password: `password`), with no
/// credentials file to fall back on.
pub(crate) fn admin_as(port: u16, user: &str, password: &str, args: &[&str]) -> Run {
    let out = steward_cmd(&["admin"])
        .args(args)
        .env("STEWARD_MASTER", format!("http://127.0.0.1:{port}"))
        .env("STEWARD_USER", user)
        .env("STEWARD_PASSWORD", password)
        .env("STEWARD_CREDENTIALS", "/nonexistent/steward-credentials")
        .output()
        .expect("run steward admin");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

pub(crate) fn admin(port: u16, args: &[&str]) -> Run {
    admin_as(port, "admin", "admin", args)
}

fn json(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// The example domain on free ports, cluster1's members waiting for an operator
/// (`restart-policy = "manual"`), with a read-only `viewer`; initialised and its Master started.
pub(crate) fn example_domain(name: &str, tmp: &TempDir) -> (Master, PathBuf, Vec<u16>) {
    let repo = Repo::example(name);
    for s in ["server1", "server2"] {
        repo.set(
            "domain.toml",
            &format!("servers.{s}.restart-policy"),
            "manual",
        );
    }
    let ports = crate::util::example_on_free_ports(&repo);
    crate::util::master::add_viewer(&repo);
    repo.commit("manual restarts, a viewer");
    let home = tmp.path().join("domain1");
    let r = crate::util::steward(
        repo.path(),
        &["init", home.to_str().unwrap(), "--from", "."],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let master = Master::start_on(&home, ports[0]);
    (master, home, ports)
}

/// GETs `/shop/` on one of `ports` as a load balancer does (nginx's default `proxy_next_upstream
/// error timeout`): a server that refuses the connection or closes it before answering anything
/// (it is stopping) is skipped for the next; an answer that is not a 200 is a failure, and so is
/// no server answering at all. `Err`: what went wrong, for the assertion's message.
fn balanced_get(ports: &[u16], turn: usize) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut skipped = Vec::new();
    for k in 0..ports.len() {
        let port = ports[(turn + k) % ports.len()];
        let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(format!(":{port} connect: {e}"));
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        if let Err(e) = s.write_all(b"GET /shop/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        {
            skipped.push(format!(":{port} write: {e}"));
            continue;
        }
        let mut body = Vec::new();
        let read = s.read_to_end(&mut body);
        if body.is_empty() {
            skipped.push(format!(":{port} closed without an answer ({read:?})"));
            continue;
        }
        if body.starts_with(b"HTTP/1.1 200") {
            return Ok(());
        }
        let head = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!(":{port} answered {head:?}"));
    }
    Err(format!("no server answered: {skipped:?}"))
}

#[test]
fn status_and_a_restart_of_pending_servers_through_the_master_drop_no_request() {
    let tmp = TempDir::new("admin-restart");
    let (master, home, ports) = example_domain("admin-restart-repo", &tmp);
    let mport = master.port;
    let _servers = Servers(&home, &["server1", "server2"]);
    start_server(&home, "server1", mport);
    start_server(&home, "server2", mport);
    let (p1, p2) = (pid_of(&home, "server1"), pid_of(&home, "server2"));

    // Status, for people and for scripts.
    let s = eventually("both servers reported", 20, || {
        let r = admin(mport, &["status"]);
        (r.code == 0 && r.stdout.matches("RUNNING").count() == 2).then_some(r)
    });
    assert!(
        s.stdout.starts_with("Domain domain1 (hosted), pinned "),
        "{}",
        s.stdout
    );
    for (name, pid) in [("server1", &p1), ("server2", &p2)] {
        let line = s
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in\n{}", s.stdout));
        assert!(
            line.contains("DEPENDENT") && line.contains(pid.as_str()),
            "{line}"
        );
    }
    let v = json(&admin(mport, &["status", "--format", "json"]));
    let server1 = &v["servers"][0];
    assert_eq!(server1["name"], "server1");
    assert_eq!(server1["pid"].to_string(), p1);
    assert!(server1["started_at"].is_string(), "{server1}");
    assert_eq!(v["domain"]["pinned"]["commit"], server1["applied_commit"]);

    // A restart-class change pends on both (manual).
    let clone = tmp.path().join("clone");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &format!("http://admin:admin@127.0.0.1:{mport}/git/domain.git"),
            clone.to_str().unwrap(),
        ],
    );
    for s in ["server1", "server2"] {
        set_toml(
            &clone.join("domain.toml"),
            &format!("servers.{s}.process.env.RESTARTED"),
            "yes",
        );
    }
    let pin = commit_and_push(&clone);
    eventually("both report pending restarts", 30, || {
        let v = json(&admin(mport, &["status", "--format", "json"]));
        let servers = v["servers"].as_array()?;
        servers[..2]
            .iter()
            .all(|s| {
                s["applied_commit"] == pin.as_str()
                    && s["pending_restart"]
                        .as_array()
                        .is_some_and(|p| !p.is_empty())
            })
            .then_some(())
    });

    // Under load through both members (as a load balancer would spread it), restart what pends.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let web = [ports[4], ports[5]];
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let first_failure = first_failure.clone();
        std::thread::spawn(move || {
            let mut turn = 0;
            // Bounded: stops by itself after 3 minutes whatever happens.
            let end = std::time::Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < end {
                match balanced_get(&web, turn) {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(why) => {
                        first_failure.lock().unwrap().get_or_insert(why);
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                turn += 1;
            }
        })
    };
    let r = admin(mport, &["restart", "--pending"]);
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert_eq!(r.code, 0, "{}{}\n{}", r.stdout, r.stderr, master.log());
    assert!(r.stdout.contains("server1: done"), "{}", r.stdout);
    assert!(r.stdout.contains("server2: done"), "{}", r.stdout);
    assert!(r.stdout.contains("succeeded"), "{}", r.stdout);
    assert_ne!(pid_of(&home, "server1"), p1);
    assert_ne!(pid_of(&home, "server2"), p2);
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(ok > 20, "the load ran: {ok} requests");
    assert_eq!(
        failed,
        0,
        "failed requests during the restart ({ok} ok); the first: {:?}",
        first_failure.lock().unwrap()
    );
    let v = json(&admin(mport, &["status", "--format", "json"]));
    for s in &v["servers"].as_array().unwrap()[..2] {
        assert_eq!(s["pending_restart"], serde_json::json!([]), "{s}");
        assert_eq!(s["state"], "RUNNING", "{s}");
    }
    // One at a time: the second order came after the first server was back.
    let log = master.log();
    let order = |s: &str| log.find(&format!("Ordering {s} to restart")).unwrap();
    assert!(order("server1") < order("server2"), "{log}");
}

#[test]
fn stop_and_start_through_the_master_and_clear_errors() {
    let tmp = TempDir::new("admin-stop");
    let (master, home, _) = example_domain("admin-stop-repo", &tmp);
    let mport = master.port;
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);
    let p1 = pid_of(&home, "server1");

    let r = admin(mport, &["stop", "server1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = json(&admin(mport, &["status", "--format", "json"]));
    assert_eq!(v["servers"][0]["state"], "SHUTDOWN", "{v}");
    assert!(!home.join("servers/server1/.workspace/server.pid").exists());

    // Started again by the Master, through the launcher, with the domain home's credentials.
    let r = admin(mport, &["start", "server1"]);
    assert_eq!(r.code, 0, "{}{}\n{}", r.stdout, r.stderr, master.log());
    let v = json(&admin(mport, &["status", "--format", "json"]));
    assert_eq!(v["servers"][0]["state"], "RUNNING", "{v}");
    assert_ne!(pid_of(&home, "server1"), p1);
    // Starting a running server changes nothing.
    let r = admin(mport, &["start", "server1", "--format", "json"]);
    assert_eq!(json(&r)["steps"][0]["detail"], "already RUNNING");

    // Bad input: unknown server, nothing named, no permission, wrong password.
    let r = admin(mport, &["restart", "sever1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no server `sever1`") && r.stderr.contains("did you mean `server1`?"),
        "{}",
        r.stderr
    );
    let r = admin(mport, &["restart"]);
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);
    let r = admin_as(mport, "viewer", "reader", &["restart", "server1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("user `viewer` lacks the permission `servers:control` (403)"),
        "{}",
        r.stderr
    );
    assert_eq!(admin_as(mport, "viewer", "reader", &["status"]).code, 0);
    let r = admin_as(mport, "admin", "wrong", &["status"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("refused the credentials"), "{}", r.stderr);
    assert!(!r.stderr.contains("wrong"), "the password is never printed");
    // In hosted mode there is nothing to hold.
    let r = admin(mport, &["hold"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("hosts this domain's repository"),
        "{}",
        r.stderr
    );
    drop(master);
}

#[test]
fn credentials_come_from_a_0600_file_never_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("admin-creds");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let file = tmp.path().join("credentials");
    std::fs::write(&file, "STEWARD_USER=admin\nSTEWARD_PASSWORD=admin\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = || {
        let out = steward_cmd(&["admin", "status"])
            .env("STEWARD_MASTER", format!("127.0.0.1:{}", master.port))
            .env_remove("STEWARD_USER")
            .env_remove("STEWARD_PASSWORD")
            .env("STEWARD_CREDENTIALS", &file)
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, _, err) = run();
    assert_eq!(code, Some(1));
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = run();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Domain domain1"), "{out}");
    std::fs::remove_file(&file).unwrap();
    let (code, _, err) = run();
    assert_eq!(code, Some(1));
    assert!(err.contains("STEWARD_USER and STEWARD_PASSWORD"), "{err}");
}

#[test]
fn hosted_rollback_history_and_show() {
    let tmp = TempDir::new("admin-rollback");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let port = master.port;
    let first = master.pinned();
    let clone = tmp.path().join("clone");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &master.url("admin", "admin"),
            clone.to_str().unwrap(),
        ],
    );
    // `status --watch` sees the push without asking again.
    let mut watch = steward_cmd(&["admin", "status", "--watch", "--format", "json"])
        .env("STEWARD_MASTER", format!("http://127.0.0.1:{port}"))
        .env("STEWARD_USER", "admin")
        .env("STEWARD_PASSWORD", "admin")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first_line: serde_json::Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
    assert_eq!(first_line["event"], "status", "{first_line}");
    set_toml(
        &clone.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9799",
    );
    let second = commit_and_push(&clone);
    assert_eq!(master.pinned(), second);
    let seen = eventually("the watch prints the pin", 20, || {
        let line = lines.recv_timeout(Duration::from_secs(1)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        (v["event"] == "pinned").then_some(v)
    });
    assert_eq!(seen["data"]["commit"], second.as_str());
    let _ = watch.kill();
    let _ = watch.wait();

    // An invalid push is refused; `show` prints every problem as validate does.
    std::fs::write(
        clone.join("domain.toml"),
        std::fs::read_to_string(clone.join("domain.toml")).unwrap() + "bogus = 1\n",
    )
    .unwrap();
    git_ok(&clone, &["commit", "-qam", "broken"]);
    assert!(!git(&clone, &["push", "-q", "origin", "main"]).success());
    let broken = git_ok(&clone, &["rev-parse", "HEAD"]);
    git_ok(&clone, &["reset", "-q", "--hard", "HEAD~1"]);
    let r = admin(port, &["show", &broken[..10]]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("REJECTED"), "{}", r.stdout);
    assert!(r.stdout.contains("domain.toml:"), "{}", r.stdout);
    assert!(
        r.stdout.contains("error[unknown-key]: unknown key `bogus`"),
        "{}",
        r.stdout
    );

    // Rollback (default: the pin before): a revert commit on the branch, pinned.
    let r = admin(port, &["rollback"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let pinned = master.pinned();
    assert_ne!(pinned, second);
    assert!(
        r.stdout
            .contains(&format!("Rolled back to {}", &first[..7])),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("pull before your next push"),
        "{}",
        r.stdout
    );
    let h = admin(port, &["history"]);
    let newest = h.stdout.lines().nth(1).unwrap();
    assert!(
        newest.contains("PINNED") && newest.contains("rollback"),
        "{}",
        h.stdout
    );
    assert!(h.stdout.contains("REJECTED"), "{}", h.stdout);

    // The stale clone cannot bring the rolled-back change back; after a pull it can push.
    set_toml(
        &clone.join("domain.toml"),
        "servers.server1.listen",
        "127.0.0.1:9798",
    );
    git_ok(&clone, &["commit", "-qam", "on the old head"]);
    assert!(!git(&clone, &["push", "-q", "origin", "main"]).success());
    git_ok(
        &clone,
        &["pull", "-q", "--rebase", "-X", "theirs", "origin", "main"],
    );
    let third = {
        git_ok(&clone, &["push", "-q", "origin", "main"]);
        git_ok(&clone, &["rev-parse", "HEAD"])
    };
    assert_eq!(master.pinned(), third);
    // Rolling back to a rejected commit is refused with its problems.
    let r = admin(port, &["rollback", &broken]);
    assert_eq!(r.code, 1);
}

#[test]
fn mirror_rollback_holds_new_upstream_heads_until_resume() {
    let tmp = TempDir::new("admin-mirror");
    let (bare, work) = upstream(&tmp);
    let home = init_home(&tmp);
    let master = Master::start_with(
        &home,
        tmp.path().join("master.log"),
        &[
            "--upstream",
            bare.to_str().unwrap(),
            "--poll-interval",
            "200ms",
        ],
    );
    let port = master.port;
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    let upstream_commit = |listen: &str, msg: &str| {
        set_toml(&work.join("domain.toml"), "servers.server1.listen", listen);
        git_ok(&work, &["commit", "-qam", msg]);
        git_ok(&work, &["push", "-q", "origin", "main"]);
        git_ok(&work, &["rev-parse", "HEAD"])
    };
    eventually("first pinned", 15, || {
        (master.pinned() == first).then_some(())
    });
    let second = upstream_commit("127.0.0.1:9751", "upstream: second");
    eventually("second pinned", 15, || {
        (master.pinned() == second).then_some(())
    });

    let r = admin(port, &["rollback", &first]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("The domain is held"), "{}", r.stdout);
    assert_eq!(master.pinned(), first);
    let v = json(&admin(port, &["status", "--format", "json"]));
    assert_eq!(v["domain"]["hold"]["reason"], "rollback", "{v}");
    assert_eq!(v["domain"]["hold"]["by"], "admin", "{v}");

    // A new upstream head is validated and recorded as held; the pin stays.
    let third = upstream_commit("127.0.0.1:9752", "upstream: third");
    eventually("third held", 15, || {
        let h = master.history();
        (h[0]["outcome"] == "held" && h[0]["commit"] == third.as_str()).then_some(())
    });
    assert_eq!(master.pinned(), first);
    // The hold names it (written right after the record).
    eventually("the hold names the held head", 15, || {
        let s = admin(port, &["status"]);
        (s.stdout.contains("HELD since")
            && s.stdout.contains(&format!("newest held: {}", &third[..7])))
        .then_some(())
    });
    // A Master restart keeps holding.
    drop(master);
    let master = Master::start_with(
        &home,
        tmp.path().join("master2.log"),
        &[
            "--upstream",
            bare.to_str().unwrap(),
            "--poll-interval",
            "200ms",
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(master.pinned(), first);

    let r = admin(master.port, &["resume"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(master.pinned(), third, "{}", master.log());
    let v = json(&admin(master.port, &["status", "--format", "json"]));
    assert!(v["domain"]["hold"].is_null(), "{v}");
    assert_eq!(master.history()[0]["source"], "resume");
    // Holding by hand works too.
    let r = admin(master.port, &["hold"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&admin(master.port, &["status", "--format", "json"]));
    assert_eq!(v["domain"]["hold"]["reason"], "hold", "{v}");
}
