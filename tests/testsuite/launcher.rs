//! End to end: the launcher (`steward start-server`, `stop-server`, the JEUS spellings) with real
//! processes — a real Master, bare repositories driven by the real `git`, and real servers whose
//! `GET /v1/status` is read over TCP. Every process started here is killed by a drop guard.
//!
//! Long: one concept (booting a server), many ways it can go; each test is a scenario with real
//! processes, and their few helpers are specific to the launcher.

use crate::util::http::{get, status};
use crate::util::master::{Master, init, steward_output as steward};
use crate::util::{
    TempDir, copy_dir, example_dir, free_port, free_ports, free_ports_besides, git_ok as git,
    set_toml, steward_cmd, text,
};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// The example domain (users admin/admin) in `dir`, its server1 listening on `port` and its web
/// listeners on free ports, committed on `main`.
fn domain_repo(dir: &Path, port: u16) -> PathBuf {
    domain_repo_besides(dir, port, &[])
}

/// [`domain_repo`], its web listeners also away from the ports in `taken`.
fn domain_repo_besides(dir: &Path, port: u16, taken: &[u16]) -> PathBuf {
    let src = dir.join("src");
    copy_dir(&example_dir(), &src);
    let file = src.join("domain.toml");
    set_toml(&file, "servers.server1.listen", format!("127.0.0.1:{port}"));
    // Web listeners on free ports too: servers bind them, and tests run in parallel.
    let mut avoid = vec![port];
    avoid.extend_from_slice(taken);
    let web = free_ports_besides(2, &avoid);
    for (server, web) in ["server1", "server2"].iter().zip(web) {
        let key = format!("servers.{server}.web.listeners.http.port");
        set_toml(&file, &key, i64::from(web));
    }
    git(&src, &["init", "-q", "-b", "main"]);
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "the example domain"]);
    src
}

/// A bare clone of `src` (the "Git URL").
fn bare(dir: &Path, src: &Path) -> PathBuf {
    let b = dir.join("bare.git");
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            &src.to_string_lossy(),
            &b.to_string_lossy(),
        ],
    );
    b
}

fn kill(pid: &str, sig: &str) {
    let _ = Command::new("kill").args([sig, pid]).output();
}

/// Kills the server of a domain home on drop (by its pid file), whatever the test did.
struct ServerGuard {
    pid_file: PathBuf,
}

impl ServerGuard {
    fn new(home: &Path, server: &str) -> ServerGuard {
        ServerGuard {
            pid_file: home
                .join("servers")
                .join(server)
                .join(".workspace/server.pid"),
        }
    }
    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            kill(&pid, "-9");
        }
    }
}

/// A running `steward master` over a domain home made by `steward init` from `from`.
fn hosted_master(home: &Path, from: &Path) -> Master {
    init(home, from);
    Master::start(home, home.with_extension("log"))
}

fn assert_ok(out: &Output) -> String {
    let s = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{s}\nstderr:\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    s
}

fn start(home: &Path, extra: &[&str]) -> Output {
    let h = home.to_string_lossy();
    let mut args = vec!["start-server", "--domain-home", &h, "--server", "server1"];
    args.extend_from_slice(extra);
    steward(&args, &[])
}

fn stop(home: &Path) -> Output {
    let h = home.to_string_lossy();
    steward(
        &["stop-server", "--domain-home", &h, "--server", "server1"],
        &[],
    )
}

// ---------------------------------------------------------------- tests

#[test]
fn boots_dependent_from_a_running_master_and_stops() {
    let tmp = TempDir::new("dep");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let master = hosted_master(&tmp.path().join("master"), &src);
    let home = tmp.path().join("home");
    let guard = ServerGuard::new(&home, "server1");

    let out = start(
        &home,
        &["--master-url", &master.addr(), "-u", "admin", "-p", "admin"],
    );
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("[Launcher-0012] Received the configuration"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[SERVER-0248] The server is RUNNING."),
        "{stdout}"
    );
    assert!(
        stdout.contains("[Launcher-0040] Successfully started the server."),
        "{stdout}"
    );
    let s = status(port);
    assert_eq!(s["mode"], "DEPENDENT");
    assert_eq!(s["state"], "RUNNING");
    assert_eq!(s["name"], "server1");
    let (_, domain) = {
        let mut st = TcpStream::connect(("127.0.0.1", master.port)).expect("connect");
        write!(
            st,
            "GET /v1/domain HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut raw = String::new();
        st.read_to_string(&mut raw).expect("read");
        let (h, b) = raw.split_once("\r\n\r\n").expect("http");
        (h.to_owned(), b.to_owned())
    };
    let domain: serde_json::Value = serde_json::from_str(&domain).expect("json");
    assert_eq!(s["applied_commit"], domain["pinned"]["commit"]);
    assert_eq!(s["pending_restart"], serde_json::json!([]));
    assert_eq!(s["failed_applications"], serde_json::json!([]));
    assert!(s["last_error"].is_null());

    // The server runs with `process.env` of the configuration (the example sets one).
    let pid = guard.pid().expect("pid file");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"STEWARD_EXAMPLE=server1"),
        "process.env not applied"
    );
    // The server's boot lines are in the launcher log too (JEUS: the launcher logs the boot).
    let launcher_log = std::fs::read_dir(home.join("servers/server1/logs"))
        .expect("logs")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("launcher_"))
        })
        .expect("launcher log");
    let launcher_log = std::fs::read_to_string(launcher_log).expect("read");
    assert!(launcher_log.contains("[SERVER-0248]"), "{launcher_log}");

    // SERVER_HOME, exactly as DESIGN.md §7 has it, and the logs' names.
    let sh = home.join("servers/server1");
    for d in [
        ".workspace/deployed",
        ".workspace/ejbtimerdb",
        ".workspace/session",
        ".workspace/tmlog",
        ".workspace/tmp",
        "bin",
        "lib/application",
        "logs",
    ] {
        assert!(sh.join(d).is_dir(), "{d} missing");
    }
    let logs: Vec<String> = std::fs::read_dir(sh.join("logs"))
        .expect("logs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for base in ["launcher", "server"] {
        assert!(
            logs.iter().any(|n| {
                n.strip_prefix(&format!("{base}_")).is_some_and(|r| {
                    r.len() == 8 + 4 + 5
                        && r[..8].bytes().all(|b| b.is_ascii_digit())
                        && &r[8..12] == ".log"
                        && &r[12..] == "00001"
                })
            }),
            "{base} log in {logs:?}"
        );
    }

    // Already running: refused, and the running server is untouched.
    let again = start(
        &home,
        &["--master-url", &master.addr(), "-u", "admin", "-p", "admin"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stdout).contains("[Launcher-0062]"));
    assert_eq!(status(port)["state"], "RUNNING");

    // Graceful stop, then idempotent.
    let stdout = assert_ok(&stop(&home));
    assert!(stdout.contains("stopped gracefully"), "{stdout}");
    assert!(get(port, "/v1/status").is_err(), "still answering");
    assert!(guard.pid().is_none(), "pid file left behind");
    let stdout = assert_ok(&stop(&home));
    assert!(
        stdout.contains("[Launcher-0093]") && stdout.contains("not running"),
        "{stdout}"
    );

    // Warm cache, Master up: no Git round trip; measured for the report.
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = start(
            &home,
            &["--master-url", &master.addr(), "-u", "admin", "-p", "admin"],
        );
        times.push(t.elapsed());
        let stdout = assert_ok(&out);
        assert!(
            stdout.contains("it is already in the local cache"),
            "{stdout}"
        );
        assert_ok(&stop(&home));
    }
    times.sort();
    eprintln!(
        "warm start to RUNNING (launcher wall time): median {:?}, all {times:?}",
        times[2]
    );
}

#[test]
fn master_down_boots_independent_from_the_git_url_then_from_the_cache() {
    let tmp = TempDir::new("git");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let head = git(&src, &["rev-parse", "HEAD"]);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let refused = format!("127.0.0.1:{}", free_port());

    let out = start(
        &home,
        &[
            "--master-url",
            &refused,
            "--git-url",
            &bare.to_string_lossy(),
        ],
    );
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains(
            "[Launcher-0052] Receiving the configuration failed. Attempting to start as INDEPENDENT."
        ),
        "{stdout}"
    );
    // Refused, not waited out: the launcher went on at once (no timeout message).
    assert!(stdout.contains("connection refused"), "{stdout}");
    assert!(!stdout.contains(" within "), "{stdout}");
    assert!(stdout.contains("[Launcher-0021]"), "{stdout}");
    let s = status(port);
    assert_eq!(s["mode"], "INDEPENDENT");
    assert_eq!(s["applied_commit"], head.as_str());

    // The scripts in SERVER_HOME/bin stop and start this server without naming it.
    let bin = home.join("servers/server1/bin");
    let out = Command::new(bin.join("stopServer"))
        .output()
        .expect("stopServer");
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(get(port, "/v1/status").is_err());

    // Both sources unreachable: the warm cache, INDEPENDENT, flagged as possibly stale.
    let out = start(
        &home,
        &[
            "--master-url",
            &refused,
            "--git-url",
            &tmp.path().join("gone.git").to_string_lossy(),
        ],
    );
    let stdout = assert_ok(&out);
    assert!(stdout.contains("[Launcher-0030]"), "{stdout}");
    assert!(stdout.contains("may be stale"), "{stdout}");
    let s = status(port);
    assert_eq!(s["mode"], "INDEPENDENT");
    assert_eq!(s["applied_commit"], head.as_str());
    assert_ok(&stop(&home));

    // startServer repeats the last start's sources (the bare repository is still there).
    let out = Command::new("sh")
        .arg(bin.join("startServer"))
        .stdin(Stdio::null())
        .output()
        .expect("startServer");
    let stdout = assert_ok(&out);
    assert!(stdout.contains("[Launcher-0040]"), "{stdout}");
    assert_ok(&stop(&home));
}

#[test]
fn nothing_reachable_and_no_cache_refuses_to_boot() {
    let tmp = TempDir::new("none");
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let refused = format!("127.0.0.1:{}", free_port());
    let out = start(
        &home,
        &[
            "--master-url",
            &refused,
            "--git-url",
            &format!("http://127.0.0.1:{}/domain.git", free_port()),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[Launcher-0060] Cannot start the server[server1]"),
        "{stdout}"
    );
    assert!(stdout.contains("the Master at"), "{stdout}");
    assert!(stdout.contains("the Git URL"), "{stdout}");
    assert!(
        stdout.contains("no validated configuration is cached on this machine"),
        "{stdout}"
    );
    // Refused connections fail fast: refused is the reason given, no timeout was waited out.
    assert!(stdout.contains("connection refused"), "{stdout}");
    assert!(!stdout.contains(" within "), "{stdout}");
    assert!(!home.join("servers/server1/.workspace/server.pid").exists());
}

#[test]
fn an_unanswering_master_waits_at_most_the_connect_timeout() {
    let tmp = TempDir::new("slow");
    let home = tmp.path().join("home");
    // Accepts connections (the kernel's backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let out = start(
        &home,
        &[
            "--master-url",
            &addr.to_string(),
            "--response-timeout",
            "500ms",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    // The timeout given is the one applied (and said).
    assert!(stdout.contains("did not answer within 500 ms"), "{stdout}");
    drop(silent);
}

#[test]
fn an_invalid_head_at_the_git_url_is_not_booted_the_cache_is() {
    let tmp = TempDir::new("invalid");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let good = git(&src, &["rev-parse", "HEAD"]);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let url = bare.to_string_lossy().into_owned();

    assert_ok(&start(&home, &["--git-url", &url]));
    assert_ok(&stop(&home));

    // An invalid commit reaches the Git URL (no Master validated it).
    let toml = std::fs::read_to_string(src.join("domain.toml")).expect("read");
    std::fs::write(
        src.join("domain.toml"),
        toml.replace(
            "restart-policy = \"rolling\"",
            "restart-policy = \"sometimes\"",
        ),
    )
    .expect("write");
    git(&src, &["commit", "-qam", "an invalid policy"]);
    git(&src, &["push", "-q", &url, "main"]);

    let out = start(&home, &["--git-url", &url]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("[Launcher-0022]"), "{stdout}");
    assert!(
        stdout.contains("is not valid; not starting from it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("domain.toml:"),
        "problems are listed: {stdout}"
    );
    assert!(stdout.contains("[Launcher-0030]"), "{stdout}");
    assert_eq!(status(port)["applied_commit"], good.as_str());
    assert_ok(&stop(&home));
}

#[test]
fn a_corrupt_cache_is_detected_moved_aside_and_rebuilt() {
    let tmp = TempDir::new("corrupt");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let url = bare.to_string_lossy().into_owned();
    assert_ok(&start(&home, &["--git-url", &url]));
    assert_ok(&stop(&home));

    // Lose the objects (packs and loose ones); the refs still name them.
    let objects = home.join(".cache/domain.git/objects");
    for entry in walk(&objects) {
        let name = entry
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".pack") || (name.len() == 38 && !entry.starts_with(objects.join("info")))
        {
            std::fs::remove_file(&entry).expect("remove object");
        }
    }

    // Nothing else reachable: the corrupt cache is not used.
    let out = start(&home, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[Launcher-0061] The local cache was corrupt"),
        "{stdout}"
    );
    assert!(stdout.contains("[Launcher-0060]"), "{stdout}");

    // The next start with a reachable source fills the new cache.
    assert_ok(&start(&home, &["--git-url", &url]));
    assert_eq!(status(port)["mode"], "INDEPENDENT");
    let aside = std::fs::read_dir(home.join(".cache"))
        .expect("cache dir")
        .filter(|e| {
            e.as_ref()
                .map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("domain.git.corrupt-")
                })
                .unwrap_or(false)
        })
        .count();
    assert!(aside >= 1, "the corrupt cache was moved aside");
    assert_ok(&stop(&home));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn verbose_stays_attached_and_ctrl_c_stops_the_server() {
    let tmp = TempDir::new("verbose");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    // As under systemd `Type=notify`: the launcher passes READY=1 on to its own NOTIFY_SOCKET.
    let sock_path = tmp.path().join("systemd-notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify");
    let mut launcher = steward_cmd(&["start-server", "--domain-home", &home.to_string_lossy()])
        .args(["--server", "server1", "--git-url", &bare.to_string_lossy()])
        .arg("--verbose")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("launcher");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(port, "/v1/status").is_err() {
        assert!(
            launcher.try_wait().expect("wait").is_none(),
            "launcher exited"
        );
        assert!(Instant::now() < deadline, "server not up");
        std::thread::sleep(Duration::from_millis(20));
    }
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).expect("READY forwarded");
    assert!(
        text(&buf[..n]).lines().any(|l| l == "READY=1"),
        "{}",
        text(&buf[..n])
    );
    // Still attached while the server runs: a launcher that detaches does so right after READY,
    // so this waits a moment on purpose (no event marks "did not detach").
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        launcher.try_wait().expect("wait").is_none(),
        "launcher detached"
    );
    kill(&launcher.id().to_string(), "-INT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = launcher.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = launcher.kill();
            panic!("launcher did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = launcher.wait_with_output().expect("output");
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(status.success(), "{all}");
    assert!(
        all.contains("[SERVER-0248] The server is RUNNING."),
        "{all}"
    );
    assert!(all.contains("[Launcher-0080]"), "{all}");
    assert!(all.contains("[SERVER-0300] Received SIGTERM"), "{all}");
    assert!(all.contains("[Launcher-0041] The server stopped"), "{all}");
    assert!(get(port, "/v1/status").is_err());
}

#[test]
fn a_stale_pid_file_does_not_fool_stop_or_start() {
    let tmp = TempDir::new("stale");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let ws = home.join("servers/server1/.workspace");
    std::fs::create_dir_all(&ws).expect("mkdir");
    // A live process that is not the server: this test.
    std::fs::write(ws.join("server.pid"), format!("{}\n", std::process::id())).expect("write");
    let stdout = assert_ok(&stop(&home));
    assert!(stdout.contains("not running"), "{stdout}");
    assert!(!ws.join("server.pid").exists());

    std::fs::write(ws.join("server.pid"), "999999\n").expect("write");
    let stdout = assert_ok(&start(&home, &["--git-url", &bare.to_string_lossy()]));
    assert!(stdout.contains("[Launcher-0094]"), "{stdout}");
    assert_eq!(status(port)["state"], "RUNNING");
    assert_ok(&stop(&home));
}

#[test]
fn a_server_that_fails_to_boot_is_reported_with_its_last_lines() {
    let tmp = TempDir::new("fail");
    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = blocker.local_addr().expect("addr").port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let out = start(&home, &["--git-url", &bare.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[Launcher-0063] The server exited during boot"),
        "{stdout}"
    );
    assert!(stdout.contains("cannot listen on"), "{stdout}");
    assert!(!home.join("servers/server1/.workspace/server.pid").exists());
    drop(blocker);
}

#[test]
fn the_jeus_spelling_starts_and_stops() {
    let tmp = TempDir::new("jeus");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let master = hosted_master(&tmp.path().join("master"), &src);
    let steward_home = tmp.path().join("sh");
    let home = steward_home.join("domains/domain1");
    let _guard = ServerGuard::new(&home, "server1");
    let sh = steward_home.to_string_lossy().into_owned();
    let out = steward(
        &[
            "startManagedServer",
            "-domain",
            "domain1",
            "-server",
            "server1",
            "-u",
            "admin",
            "-p",
            "admin",
            "-masterurl",
            &master.addr(),
        ],
        &[("STEWARD_HOME", &sh)],
    );
    let stdout = assert_ok(&out);
    assert!(stdout.contains("[Launcher-0040]"), "{stdout}");
    assert_eq!(status(port)["mode"], "DEPENDENT");
    assert!(home.join("servers/server1/bin/startServer").exists());
    let out = steward(
        &["stopServer", "-domain", "domain1", "-server", "server1"],
        &[("STEWARD_HOME", &sh)],
    );
    assert_ok(&out);
    assert!(get(port, "/v1/status").is_err());
}

#[test]
fn credentials_from_the_environment_and_wrong_ones() {
    let tmp = TempDir::new("creds");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let master = hosted_master(&tmp.path().join("master"), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    let h = home.to_string_lossy().into_owned();
    let args = [
        "start-server",
        "--domain-home",
        &h,
        "--server",
        "server1",
        "--master-url",
        &master.addr(),
    ];
    let out = steward(
        &args,
        &[("STEWARD_USER", "admin"), ("STEWARD_PASSWORD", "nope")],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("refused the credentials"),
        "{}",
        text(&out.stdout)
    );
    let out = steward(
        &args,
        &[("STEWARD_USER", "admin"), ("STEWARD_PASSWORD", "admin")],
    );
    assert_ok(&out);
    assert_eq!(status(port)["mode"], "DEPENDENT");
    assert_ok(&stop(&home));
}

#[test]
fn two_launchers_share_one_cache() {
    let tmp = TempDir::new("shared");
    let ports = free_ports(2);
    let (p1, p2) = (ports[0], ports[1]);
    let src = domain_repo_besides(tmp.path(), p1, &[p2]);
    let toml = std::fs::read_to_string(src.join("domain.toml")).expect("read");
    std::fs::write(
        src.join("domain.toml"),
        toml.replace("127.0.0.1:9751", &format!("127.0.0.1:{p2}")),
    )
    .expect("write");
    git(&src, &["commit", "-qam", "server2 port"]);
    let bare = bare(tmp.path(), &src);
    let home = tmp.path().join("home");
    let _g1 = ServerGuard::new(&home, "server1");
    let _g2 = ServerGuard::new(&home, "server2");
    let h = home.to_string_lossy().into_owned();
    let url = bare.to_string_lossy().into_owned();
    let threads: Vec<_> = ["server1", "server2"]
        .into_iter()
        .map(|name| {
            let (h, url) = (h.clone(), url.clone());
            std::thread::spawn(move || {
                steward(
                    &[
                        "start-server",
                        "--domain-home",
                        &h,
                        "--server",
                        name,
                        "--git-url",
                        &url,
                    ],
                    &[],
                )
            })
        })
        .collect();
    for t in threads {
        assert_ok(&t.join().expect("thread"));
    }
    assert_eq!(status(p1)["name"], "server1");
    assert_eq!(status(p2)["name"], "server2");
    for name in ["server1", "server2"] {
        assert_ok(&steward(
            &["stop-server", "--domain-home", &h, "--server", name],
            &[],
        ));
    }
}

/// `(objects, bytes)` from a `Launcher-0021` line: `(refs/heads/main, N objects, B bytes)`.
fn transfer(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.contains("[Launcher-0021]"))
        .unwrap_or_else(|| panic!("no Launcher-0021 in {stdout}"));
    let nums: Vec<u64> = line
        .split(", ")
        .filter_map(|part| {
            let mut w = part.split_whitespace();
            let n = w.next()?.parse().ok()?;
            matches!(w.next(), Some("objects") | Some("bytes") | Some("bytes)")).then_some(n)
        })
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    (nums[0], nums[1])
}

#[test]
fn a_new_commit_on_a_long_history_fetches_only_its_objects() {
    let tmp = TempDir::new("history");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    // 1,000 commits of history, each changing a 2 KiB file, written in one `git fast-import`.
    let mut stream = String::new();
    for i in 1..=1000 {
        let content: String = (0..64)
            .map(|j| format!("commit {i:04} line {j:02} ........\n"))
            .collect();
        let msg = format!("history {i}");
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter Op <op@example.com> {} +0000\ndata {}\n{msg}\n",
            1_700_000_000 + i,
            msg.len()
        ));
        if i == 1 {
            stream.push_str("from refs/heads/main^0\n");
        }
        stream.push_str(&format!(
            "M 644 inline notes/history.txt\ndata {}\n{content}\n",
            content.len()
        ));
    }
    let mut fi = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&src)
        .stdin(Stdio::piped())
        .spawn()
        .expect("fast-import");
    fi.stdin
        .take()
        .expect("stdin")
        .write_all(stream.as_bytes())
        .expect("write stream");
    assert!(fi.wait().expect("wait").success());
    git(&src, &["reset", "-q", "--hard", "main"]);
    let bare = bare(tmp.path(), &src);
    let url = bare.to_string_lossy().into_owned();
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");

    // What a full clone would carry.
    let history_objects = git(&bare, &["rev-list", "--objects", "--all"])
        .lines()
        .count();
    let history_kib: u64 = git(&bare, &["count-objects", "-v"])
        .lines()
        .find_map(|l| l.strip_prefix("size-pack: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("size-pack");

    // A cold cache fetches the tip only (depth 1): one commit's tree, not the history.
    let out = start(&home, &["--git-url", &url]);
    let (first_objects, first_bytes) = transfer(&assert_ok(&out));
    assert_ok(&stop(&home));

    let toml = std::fs::read_to_string(src.join("domain.toml")).expect("read");
    std::fs::write(
        src.join("domain.toml"),
        toml.replace("Example domain:", "Example domain, edited:"),
    )
    .expect("write");
    git(&src, &["commit", "-qam", "one more"]);
    git(&src, &["push", "-q", &url, "main"]);
    let out = start(&home, &["--git-url", &url]);
    let (objects, bytes) = transfer(&assert_ok(&out));
    assert_ok(&stop(&home));
    eprintln!(
        "history of 1,001 commits: {history_objects} objects, pack {history_kib} KiB; \
         cold cache fetch: {first_objects} objects, {first_bytes} bytes; \
         one new commit: {objects} objects, {bytes} bytes"
    );
    assert!(
        (first_objects as usize) * 20 < history_objects,
        "{first_objects} objects for a cold fetch"
    );
    assert!(
        first_bytes * 20 < history_kib * 1024,
        "{first_bytes} bytes for a cold fetch"
    );
    // The commit, its root tree and the changed domain.toml travel (as deltas); the stored pack
    // also counts the local bases gix appends to complete a thin pack. Nothing of the history.
    assert!(objects <= 5, "{objects} objects fetched for one commit");
    assert!(
        bytes * 50 < history_kib * 1024,
        "{bytes} bytes for one commit"
    );

    // A rollback to an old commit (beyond the shallow tip) still boots: it is fetched on demand.
    let old = git(&src, &["rev-parse", "HEAD~500"]);
    git(
        &src,
        &[
            "push",
            "-q",
            "--force",
            &url,
            &format!("{old}:refs/heads/main"),
        ],
    );
    let out = start(&home, &["--git-url", &url]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("[Launcher-0021]"), "{stdout}");
    assert_eq!(status(port)["applied_commit"], old.as_str());
    assert_ok(&stop(&home));
}

#[test]
fn two_starts_of_one_server_race_and_one_wins() {
    let tmp = TempDir::new("race");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let home = tmp.path().join("home");
    let guard = ServerGuard::new(&home, "server1");
    // Warm the cache first, so both launchers reach the spawn at about the same time.
    let url = bare.to_string_lossy().into_owned();
    assert_ok(&start(&home, &["--git-url", &url]));
    assert_ok(&stop(&home));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let home = home.clone();
            std::thread::spawn(move || start(&home, &[]))
        })
        .collect();
    let outs: Vec<Output> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        outs.iter().map(|o| text(&o.stdout)).collect::<Vec<_>>()
    );
    // The pid file names the server that runs, so stop-server finds it.
    let pid = guard.pid().expect("pid file");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(status(port)["state"], "RUNNING");
    let stdout = assert_ok(&stop(&home));
    assert!(stdout.contains("stopped gracefully"), "{stdout}");
    assert!(get(port, "/v1/status").is_err());
}

#[test]
fn the_git_url_over_http_prefers_the_pinned_ref() {
    let tmp = TempDir::new("githttp");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let master = hosted_master(&tmp.path().join("master"), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    // The Master's repository as a plain Git URL (no --master-url): INDEPENDENT, from its pin.
    let url = format!("http://{}/git/domain.git", master.addr());
    let out = start(&home, &["--git-url", &url, "-u", "admin", "-p", "admin"]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("(refs/steward/pinned,"), "{stdout}");
    assert_eq!(status(port)["mode"], "INDEPENDENT");
    assert_ok(&stop(&home));
    // Without credentials the Git server says 401, and the launcher says what to do.
    let out = start(&tmp.path().join("home2"), &["--git-url", &url]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[Launcher-0023]"), "{stdout}");
}

#[test]
fn a_server_removed_from_the_domain_is_not_booted_from_an_older_cache() {
    let tmp = TempDir::new("removed");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let bare = bare(tmp.path(), &src);
    let url = bare.to_string_lossy().into_owned();
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    assert_ok(&start(&home, &["--git-url", &url]));
    assert_ok(&stop(&home));

    // A valid commit in which server1 is gone (renamed).
    let toml = std::fs::read_to_string(src.join("domain.toml")).expect("read");
    std::fs::write(src.join("domain.toml"), toml.replace("server1", "server9")).expect("write");
    git(&src, &["commit", "-qam", "server1 leaves the domain"]);
    git(&src, &["push", "-q", &url, "main"]);

    let out = start(&home, &["--git-url", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[Launcher-0067]"), "{stdout}");
    assert!(
        stdout.contains("defines no server named server1"),
        "{stdout}"
    );
    assert!(!stdout.contains("[Launcher-0030]"), "{stdout}");
    assert!(get(port, "/v1/status").is_err());
}

#[test]
fn a_master_that_refuses_is_an_error_and_the_credentials_file_is_used() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("refuse");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let master = hosted_master(&tmp.path().join("master"), &src);
    let home = tmp.path().join("home");
    let _guard = ServerGuard::new(&home, "server1");
    // A first start warms the cache: what used to boot INDEPENDENT from it after a refusal.
    assert_ok(&start(
        &home,
        &["--master-url", &master.addr(), "-u", "admin", "-p", "admin"],
    ));
    assert_ok(&stop(&home));

    for (extra, says) in [
        (
            vec!["--master-url", &master.addr()],
            "it asks for credentials and none were given (401)",
        ),
        (
            vec!["--master-url", &master.addr(), "-u", "admin", "-p", "nope"],
            "it refused the credentials of user admin (401)",
        ),
    ] {
        let out = start(&home, &extra);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("[Launcher-0068]"), "{stdout}");
        assert!(stdout.contains(says), "{stdout}");
        assert!(stdout.contains("Not starting as INDEPENDENT"), "{stdout}");
        assert!(stdout.contains("config/server-credentials"), "{stdout}");
        assert!(!stdout.contains("Launcher-0030"), "{stdout}");
        assert!(get(port, "/v1/status").is_err(), "no server runs");
    }

    // The servers' own account, from a credentials file: refused while others can read it.
    std::fs::create_dir_all(home.join("config")).expect("mkdir");
    let file = home.join("config/server-credentials");
    std::fs::write(
        &file,
        "STEWARD_USER=steward-server\nSTEWARD_PASSWORD=server\n",
    )
    .expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = start(&home, &["--master-url", &master.addr()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("readable by others (mode 644)"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_ok(&start(&home, &["--master-url", &master.addr()]));
    assert_eq!(status(port)["mode"], "DEPENDENT");
    let script =
        std::fs::read_to_string(home.join("servers/server1/bin/startServer")).expect("startServer");
    assert!(
        !script.contains("PASSWORD=") && !script.contains(" -p ") && !script.contains("--password"),
        "{script}"
    );
    let pid =
        std::fs::read_to_string(home.join("servers/server1/.workspace/server.pid")).expect("pid");
    let argv = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
    assert!(!text(&argv).contains("PASSWORD"), "{}", text(&argv));

    // The servers' password changes under the running server: its status and the Master say why.
    let url = format!(
        "http://admin:admin@127.0.0.1:{}/git/domain.git",
        master.port
    );
    let clone = tmp.path().join("clone");
    git(tmp.path(), &["clone", "-q", &url, &clone.to_string_lossy()]);
    let accounts = std::fs::read_to_string(clone.join("security/accounts.toml")).expect("read");
    let admin_hash = accounts
        .lines()
        .find(|l| l.starts_with("password = "))
        .expect("admin's hash")
        .to_owned();
    let mut lines: Vec<String> = accounts.lines().map(str::to_owned).collect();
    let at = lines
        .iter()
        .position(|l| l == "[users.steward-server]")
        .expect("the server account");
    lines[at + 1] = admin_hash;
    std::fs::write(
        clone.join("security/accounts.toml"),
        lines.join("\n") + "\n",
    )
    .expect("write");
    git(
        &clone,
        &["commit", "-qam", "a new password for the servers"],
    );
    git(&clone, &["push", "-q", "origin", "main"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mine = status(port)["last_error"].as_str().unwrap_or("").to_owned();
        let seen =
            serde_json::from_str::<serde_json::Value>(&master.get("/v1/servers/server1").body)
                .unwrap_or_default()["last_error"]
                .as_str()
                .unwrap_or("")
                .to_owned();
        if mine.contains("refused this server's credentials")
            && seen.contains("refused this server's report")
        {
            assert!(mine.contains("server-credentials"), "{mine}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server: {mine:?}; Master: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ok(&stop(&home));
}

#[test]
fn stopping_an_unknown_server_is_an_error_naming_the_known_ones() {
    let tmp = TempDir::new("unknown");
    let port = free_port();
    let src = domain_repo(tmp.path(), port);
    let master_home = tmp.path().join("master");
    let _master = hosted_master(&master_home, &src);
    let h = master_home.to_string_lossy().into_owned();
    let out = steward(
        &["stop-server", "--domain-home", &h, "--server", "nosuch"],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[Launcher-0095]"), "{stdout}");
    assert!(
        stdout.contains("known servers: server1, server2, server3"),
        "{stdout}"
    );
    // A server of the domain that is not running is no error.
    let out = steward(
        &["stop-server", "--domain-home", &h, "--server", "server2"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("[Launcher-0093]"));
}
