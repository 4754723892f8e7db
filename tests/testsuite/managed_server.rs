//! The Managed Server follows the Master: live changes apply in place, restart changes are
//! reported as pending (derived, so reverting clears them), `restart-policy = "auto"` restarts
//! through the launcher, and losing the Master makes a server INDEPENDENT until it returns.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::http::{ADMIN, request, status};
use crate::util::master::{
    Master, Servers, clone_domain, init_and_start, push_edits, server_log, start_server,
};
use crate::util::{Repo, TempDir, eventually, git};

/// Edits `file` in the clone, commits and pushes; returns the new commit.
fn push(clone: &Path, file: &str, from: &str, to: &str) -> String {
    push_edits(clone, file, &[(from, to)])
}

#[test]
fn servers_follow_the_master() {
    let repo = Repo::example("ms-domain");
    // server1 waits for an operator (manual): its restart stays pending.
    repo.set("domain.toml", "servers.server1.restart-policy", "manual");
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1, s3) = (ports[0], ports[1], ports[3]);
    let tmp = TempDir::new("ms-home");
    let home = tmp.path().join("domain1");
    let r = crate::util::steward(
        repo.path(),
        &["init", home.to_str().unwrap(), "--from", "."],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut m = Master::start_on(&home, mport);
    let _servers = Servers(&home, &["server1", "server3"]);
    start_server(&home, "server1", mport);
    start_server(&home, "server3", mport);

    // Registered with the Master.
    eventually("server1 registers", 20, || {
        request(mport, "GET", "/v1/servers/server1", ADMIN)
            .ok()
            .filter(|r| r.body.contains("\"reachable\":true"))
    });

    let clone = clone_domain(mport, tmp.path().join("clone"));

    // A live change: applied in place, nothing pending.
    let live = push(
        &clone,
        "domain.toml",
        "level = \"info\"\nrotation",
        "level = \"debug\"\nrotation",
    );
    let st = eventually("server1 applies the live change", 20, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == live.as_str())
    });
    assert_eq!(st["pending_restart"], serde_json::json!([]));
    assert!(server_log(&home, "server1").contains("Applied live: servers.server1.logging.level"));

    // A restart change under restart-policy manual: applied_commit moves, the restart pends.
    let pid_of = |s: &str| {
        std::fs::read_to_string(home.join("servers").join(s).join(".workspace/server.pid"))
            .expect("a pid file")
            .trim()
            .to_owned()
    };
    let pid_before = pid_of("server1");
    let restart = push(
        &clone,
        "domain.toml",
        "STEWARD_EXAMPLE = \"server1\"",
        "STEWARD_EXAMPLE = \"one\"",
    );
    let st = eventually("server1 takes the restart change", 20, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == restart.as_str())
    });
    assert_eq!(
        st["pending_restart"],
        serde_json::json!(["servers.server1.process.env.STEWARD_EXAMPLE"])
    );
    assert_eq!(pid_before, pid_of("server1"), "no restart under manual");

    // Reverting it clears the pending restart: derived from the diff, never sticky.
    let revert = push(
        &clone,
        "domain.toml",
        "STEWARD_EXAMPLE = \"one\"",
        "STEWARD_EXAMPLE = \"server1\"",
    );
    let st = eventually("server1 takes the revert", 20, || {
        Some(status(s1)).filter(|s| s["applied_commit"] == revert.as_str())
    });
    assert_eq!(st["pending_restart"], serde_json::json!([]));

    // restart-policy auto: server3 restarts itself through the launcher and boots the new pin.
    let pid3 = pid_of("server3");
    let auto = push(
        &clone,
        "domain.toml",
        "[servers.server3.component.timer-service]",
        "[servers.server3.process]\nenv = { MODE = \"restarted\" }\n\n[servers.server3.component.timer-service]",
    );
    eventually(
        "server3 restarted on the new commit with nothing pending",
        60,
        || {
            Some(status(s3)).filter(|s| {
                s["applied_commit"] == auto.as_str()
                    && s["pending_restart"] == serde_json::json!([])
                    && s["state"] == "RUNNING"
            })
        },
    );
    assert!(server_log(&home, "server3").contains("[SERVER-0320]"));
    assert_ne!(pid3, pid_of("server3"), "server3 is a new process");

    // The Master goes away: servers keep serving, INDEPENDENT.
    m.kill9();
    eventually("INDEPENDENT", 30, || {
        Some(status(s1)).filter(|s| s["mode"] == "INDEPENDENT")
    });
    assert_eq!(status(s1)["state"], "RUNNING");

    // It comes back: resynchronized, DEPENDENT again.
    m = Master::start_on(&home, mport);
    eventually("DEPENDENT again", 60, || {
        Some(status(s1)).filter(|s| s["mode"] == "DEPENDENT")
    });
    let log = server_log(&home, "server1");
    for id in [
        "[SERVER-0210]",
        "[Domain-0101]",
        "[SERVER-0201]",
        "[SERVER-0308]",
    ] {
        assert!(log.contains(id), "{id} missing:\n{log}");
    }
    drop(m);
}

/// Timestamps (`2026.11.24 05:58:36`) of the log lines with `id`, in order.
fn stamps(log: &str, id: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(id))
        .filter_map(|l| l.get(1..20).map(str::to_owned))
        .collect()
}

#[test]
fn rolling_restarts_one_server_of_a_cluster_at_a_time() {
    let repo = Repo::example("rolling-domain");
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1, s2) = (ports[0], ports[1], ports[2]);
    let tmp = TempDir::new("rolling-home");
    let home = tmp.path().join("domain1");
    let r = crate::util::steward(
        repo.path(),
        &["init", home.to_str().unwrap(), "--from", "."],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let _m = Master::start_on(&home, mport);
    let _servers = Servers(&home, &["server1", "server2"]);
    start_server(&home, "server1", mport);
    start_server(&home, "server2", mport);
    let pid_of = |s: &str| {
        std::fs::read_to_string(home.join("servers").join(s).join(".workspace/server.pid"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let (p1, p2) = (pid_of("server1"), pid_of("server2"));

    let clone = clone_domain(mport, tmp.path().join("clone"));
    // One commit that needs both members of cluster1 (restart-policy rolling) restarted.
    let pin = push_edits(
        &clone,
        "domain.toml",
        &[
            (
                "[servers.server2.web.listeners.http]",
                "[servers.server2.process]\nenv = { ROLLED = \"yes\" }\n\n[servers.server2.web.listeners.http]",
            ),
            (
                "STEWARD_EXAMPLE = \"server1\"",
                "STEWARD_EXAMPLE = \"rolled\"",
            ),
        ],
    );
    let settled = |port: u16| {
        let s = status(port);
        s["applied_commit"] == pin.as_str()
            && s["pending_restart"] == serde_json::json!([])
            && s["state"] == "RUNNING"
    };
    eventually("both servers restarted onto the pin", 120, || {
        (settled(s1) && settled(s2) && pid_of("server1") != p1 && pid_of("server2") != p2)
            .then_some(())
    });

    // The second restart was ordered only after the first server was RUNNING again.
    let (l1, l2) = (server_log(&home, "server1"), server_log(&home, "server2"));
    let (o1, o2) = (stamps(&l1, "[SERVER-0322]"), stamps(&l2, "[SERVER-0322]"));
    assert_eq!(
        (o1.len(), o2.len()),
        (1, 1),
        "each ordered once:\n{l1}\n{l2}"
    );
    let (first_log, second_order) = if o1[0] <= o2[0] {
        (&l1, &o2[0])
    } else {
        (&l2, &o1[0])
    };
    let running_again = stamps(first_log, "[SERVER-0248]");
    assert_eq!(running_again.len(), 2, "booted twice:\n{first_log}");
    assert!(
        *second_order >= running_again[1],
        "the second server was ordered at {second_order}, before the first was RUNNING again at {}",
        running_again[1]
    );
}

#[test]
fn servers_follow_a_master_over_https() {
    let repo = Repo::example("https-domain");
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1) = (ports[0], ports[1]);
    // The Master serves HTTPS only, with a certificate from a test CA.
    let tls = [("certificate", "tls/master.crt"), ("key", "tls/master.key")];
    repo.set(
        "domain.toml",
        "master.tls",
        toml_edit::InlineTable::from_iter(tls),
    );
    let tmp = TempDir::new("https-home");
    let (ca, crt, key) = crate::util::make_certificates(&tmp.path().join("pki"));
    let home = tmp.path().join("domain1");
    let r = crate::util::steward(
        repo.path(),
        &["init", home.to_str().unwrap(), "--from", "."],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::create_dir_all(home.join("tls")).unwrap();
    std::fs::copy(&crt, home.join("tls/master.crt")).unwrap();
    std::fs::copy(&key, home.join("tls/master.key")).unwrap();
    // Plain HTTP gets nothing from it: ready once it accepts connections.
    let _m = Master::start_on_checked(&home, mport, |port| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let _servers = Servers(&home, &["server1"]);
    let launch = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward"));
        cmd.args(["start-server", "--server", "server1", "--master-url"])
            .arg(format!("https://127.0.0.1:{mport}"))
            .arg("--domain-home")
            .arg(&home)
            .env("STEWARD_USER", "admin")
            .env("STEWARD_PASSWORD", "admin")
            .env_remove("GIT_SSL_CAINFO")
            .stdin(Stdio::null());
        if let Some(ca) = ca {
            cmd.env("GIT_SSL_CAINFO", ca);
        }
        cmd.output().unwrap()
    };
    // Without the CA the Master's certificate is not trusted: nothing else to boot from.
    let out = launch(None);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TLS") || text.contains("certificate"),
        "{text}"
    );

    let out = launch(Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let st = status(s1);
    assert_eq!(st["mode"], "DEPENDENT", "{st}");

    // It follows pins over HTTPS too.
    let clone = tmp.path().join("clone");
    let url = format!("https://admin:admin@127.0.0.1:{mport}/git/domain.git");
    // git trusts the test CA through GIT_SSL_CAINFO, as the launcher does.
    let git_ca = |dir: &Path, args: &[&str]| {
        let out = crate::util::git_cmd(dir, args)
            .env("GIT_SSL_CAINFO", &ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git_ca(tmp.path(), &["clone", "-q", &url, clone.to_str().unwrap()]);
    let toml = clone.join("domain.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replacen(
            "level = \"info\"\nrotation",
            "level = \"debug\"\nrotation",
            1,
        ),
    )
    .unwrap();
    git_ca(&clone, &["commit", "-qam", "debug logging"]);
    git_ca(&clone, &["push", "-q", "origin", "main"]);
    let live = git(&clone, &["rev-parse", "HEAD"]).stdout.trim().to_owned();
    eventually("server1 applies a pin received over HTTPS", 20, || {
        Some(status(s1))
            .filter(|s| s["applied_commit"] == live.as_str() && s["mode"] == "DEPENDENT")
    });
}

/// The example domain on free ports with its Master and server1 running and an admin clone:
/// `body(home, clone, server1's port)`, then everything stopped.
fn with_server1(name: &str, body: impl FnOnce(&Path, &Path, u16)) {
    let repo = Repo::example(&format!("{name}-domain"));
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1) = (ports[0], ports[1]);
    let tmp = TempDir::new(&format!("{name}-home"));
    let home = tmp.path().join("domain1");
    let (_m, _servers) = init_and_start(repo.path(), &home, mport, &["server1"]);
    let clone = clone_domain(mport, tmp.path().join("clone"));
    body(&home, &clone, s1);
}

#[test]
fn stop_timeout_is_live() {
    with_server1("stoptimeout", |home, clone, s1| {
        let pin = push(
            clone,
            "domain.toml",
            "restart-policy = \"rolling\"",
            "restart-policy = \"rolling\"\nstop-timeout = \"7s\"",
        );
        let st = eventually("applied", 20, || {
            Some(status(s1)).filter(|s| s["applied_commit"] == pin.as_str())
        });
        assert_eq!(
            st["pending_restart"],
            serde_json::json!([]),
            "stop-timeout is live"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
            .args(["stop-server", "--server", "server1", "--domain-home"])
            .arg(home)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("waiting up to 7000 ms"), "{text}");
        assert!(server_log(home, "server1").contains("in-flight requests get up to 7000 ms"));
    });
}

#[test]
fn log_level_and_format_are_live() {
    with_server1("livelog", |home, clone, s1| {
        let applied = |pin: &str| {
            let pin = pin.to_owned();
            eventually("the commit applied", 20, move || {
                Some(status(s1)).filter(|s| s["applied_commit"] == pin.as_str())
            })
        };
        let debug_line = |pin: &str| {
            format!(
                "[SERVER-0332] Applied the settings outside the web engine (log level, rotation, stop-timeout) of commit {}.",
                &pin[..7]
            )
        };

        // At `info`, a resync writes no debug line.
        let quiet = push(clone, "domain.toml", "keep = 30", "keep = 31");
        applied(&quiet);
        assert!(!server_log(home, "server1").contains("[SERVER-0332]"));

        // `debug`, pushed: the same resync that applies it writes its debug line, no restart.
        let pid = || {
            std::fs::read_to_string(home.join("servers/server1/.workspace/server.pid"))
                .expect("pid")
        };
        let pid_before = pid();
        let loud = push(
            clone,
            "domain.toml",
            "level = \"info\"\nrotation",
            "level = \"debug\"\nrotation",
        );
        let line = debug_line(&loud);
        eventually("a debug line after the live level change", 20, || {
            Some(()).filter(|_| server_log(home, "server1").contains(&line))
        });
        assert_eq!(pid(), pid_before, "no restart");

        // `json`, pushed: from then on, one JSON object per line.
        let json = push(
            clone,
            "domain.toml",
            "level = \"debug\"\nrotation",
            "level = \"debug\"\nformat = \"json\"\nrotation",
        );
        let object = eventually("a JSON line after the live format change", 20, || {
            server_log(home, "server1")
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|o| o["id"] == "SERVER-0332")
        });
        assert_eq!(object["level"], "DEBUG");
        assert_eq!(object["thread"], "server1");
        assert_eq!(
            object["message"],
            debug_line(&json).trim_start_matches("[SERVER-0332] ")
        );
    });
}
