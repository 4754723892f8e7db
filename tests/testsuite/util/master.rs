//! The Master and server harness: a small domain with users `admin` and `reader`, `steward
//! init`, a running `steward master` (on a free port or the one its domain names), and servers
//! started with `steward start-server`.

use super::http::{Response, get, request};
use super::{TempDir, edit_text, git_ok, steward_cmd, text};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

pub fn hash(password: &str) -> String {
    let mut child = steward_cmd(&["hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run steward hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("hash-password");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Argon2 hashes are slow to make: one per password for the whole test binary.
pub fn hashes() -> &'static (String, String) {
    static H: OnceLock<(String, String)> = OnceLock::new();
    H.get_or_init(|| (hash("admin"), hash("reader")))
}

pub const DOMAIN_TOML: &str = r#"[domain]
name = "domain1"

[master]
listen = "127.0.0.1:9736"

[servers.server1]
node = "localhost"
listen = "127.0.0.1:9741"
"#;

/// A small valid domain: users `admin` (everything) and `reader` (may read, may not push).
pub fn write_domain(dir: &Path) {
    let (admin, reader) = hashes();
    std::fs::create_dir_all(dir.join("security")).expect("mkdir");
    std::fs::write(dir.join("domain.toml"), DOMAIN_TOML).expect("write");
    std::fs::write(
        dir.join("security/accounts.toml"),
        format!(
            "[users.admin]\npassword = \"{admin}\"\n\n[users.reader]\npassword = \"{reader}\"\n"
        ),
    )
    .expect("write");
    std::fs::write(
        dir.join("security/policies.toml"),
        "[roles.admin]\npermissions = [\"*\"]\nusers = [\"admin\"]\n\n\
         [roles.reader]\npermissions = [\"domain:read\", \"git:read\", \"events:read\"]\nusers = [\"reader\"]\n",
    )
    .expect("write");
}

/// Runs the built `steward` with `envs`; its output.
pub fn steward_output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    steward_cmd(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run steward")
}

/// The port a Master reports in its `Master-0001` line (`… is listening on http://127.0.0.1:PORT: …`).
fn bound_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("[Master-0001]"))?;
    let (_, rest) = line.split_once("is listening on ")?;
    let (_, addr) = rest.split_once("://")?;
    let addr = addr.split([' ', ',']).next()?.trim_end_matches(':');
    addr.rsplit_once(':')?.1.parse().ok()
}

/// A running `steward master`, killed (SIGKILL) on drop.
pub struct Master {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Master {
    pub fn start(home: &Path, log: PathBuf) -> Master {
        Master::start_with(home, log, &[])
    }

    /// With extra command-line arguments; `TEST_WEBHOOK_SECRET` is set to `s3cret`.
    pub fn start_with(home: &Path, log: PathBuf, extra: &[&str]) -> Master {
        Master::start_checked(home, log, extra, &[], healthy)
    }

    /// With extra arguments and environment; ready once `ready(port)` holds.
    pub fn start_checked(
        home: &Path,
        log: PathBuf,
        extra: &[&str],
        envs: &[(&str, &Path)],
        ready: impl Fn(u16) -> bool,
    ) -> Master {
        // Port 0: the Master binds a free port and says which (Master-0001), so no other process
        // can take the port between choosing and binding it.
        Master::spawn(home, 0, log, extra, envs, ready)
    }

    /// On `port`, the one the domain's files name (its servers and clones find it there); the
    /// log next to `home`.
    pub fn start_on(home: &Path, port: u16) -> Master {
        Master::start_on_checked(home, port, healthy)
    }

    /// On `port`, ready once `ready(port)` holds (an HTTPS Master does not answer plain HTTP).
    pub fn start_on_checked(home: &Path, port: u16, ready: impl Fn(u16) -> bool) -> Master {
        let log = home.with_extension(format!("master-{port}.log"));
        Master::spawn(home, port, log, &[], &[], ready)
    }

    fn spawn(
        home: &Path,
        port: u16,
        log: PathBuf,
        extra: &[&str],
        envs: &[(&str, &Path)],
        ready: impl Fn(u16) -> bool,
    ) -> Master {
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = steward_cmd(&["master", "--domain-home"])
            .arg(home)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("TEST_WEBHOOK_SECRET", "s3cret")
            .envs(envs.iter().copied())
            .stdout(log_file.try_clone().expect("clone"))
            .stderr(log_file)
            .spawn()
            .expect("start master");
        let mut m = Master { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if m.port == 0 {
                m.port = bound_port(&m.log()).unwrap_or(0);
            }
            if m.port != 0 && ready(m.port) {
                return m;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("master exited with {status}:\n{}", m.log());
            }
            assert!(Instant::now() < deadline, "master not ready:\n{}", m.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "http://{user}:{password}@127.0.0.1:{}/git/domain.git",
            self.port
        )
    }

    /// `host:port`, as `--master-url` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.port, "GET", path, Some(("admin", "admin"))).expect("request")
    }

    pub fn pinned(&self) -> String {
        let r = self.get("/v1/domain");
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        v["pinned"]["commit"].as_str().expect("commit").to_owned()
    }

    pub fn history(&self) -> Vec<serde_json::Value> {
        let r = self.get("/v1/domain/history");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("json array")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether the Master on `port` answers `GET /healthz` with 200.
fn healthy(port: u16) -> bool {
    get(port, "/healthz").is_ok_and(|r| r.status == 200)
}

/// `steward init home --from from`, which must succeed.
pub fn init(home: &Path, from: &Path) {
    let out = steward_output(
        &[
            "init",
            home.to_str().expect("utf-8"),
            "--from",
            from.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(out.status.success(), "init: {}", text(&out.stderr));
}

/// A domain home made by `steward init` from a fresh small domain.
pub fn init_home(tmp: &TempDir) -> PathBuf {
    let src = tmp.path().join("src");
    write_domain(&src);
    let home = tmp.path().join("home");
    init(&home, &src);
    home
}

// ---------------------------------------------------------------- servers

/// Several edits of `file` in the clone (see [`edit_text`]), committed and pushed; returns the
/// new commit.
pub fn push_edits(clone: &Path, file: &str, edits: &[(&str, &str)]) -> String {
    for (from, to) in edits {
        edit_text(&clone.join(file), from, to);
    }
    commit_and_push(clone)
}

/// Commits everything in the clone and pushes it; returns the new commit.
/// Clones the domain repository of the Master on `port` (as `admin`) into `dir`; returns `dir`.
pub fn clone_domain(port: u16, dir: PathBuf) -> PathBuf {
    let url = format!("http://admin:admin@127.0.0.1:{port}/git/domain.git");
    let parent = dir.parent().expect("a directory inside the test's own");
    git_ok(parent, &["clone", "-q", &url, dir.to_str().expect("utf-8")]);
    dir
}

pub fn commit_and_push(clone: &Path) -> String {
    git_ok(clone, &["add", "-A"]);
    git_ok(clone, &["commit", "-qm", "change"]);
    git_ok(clone, &["push", "-q", "origin", "main"]);
    git_ok(clone, &["rev-parse", "HEAD"])
}

/// Starts server `name` of `home` in the background, following the Master on `master_port`.
pub fn start_server(home: &Path, name: &str, master_port: u16) {
    let out = steward_cmd(&["start-server", "--server", name, "--master-url"])
        .arg(format!("127.0.0.1:{master_port}"))
        .arg("--domain-home")
        .arg(home)
        .env("STEWARD_USER", "admin")
        .env("STEWARD_PASSWORD", "admin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// kill -9 of server `name` of `home`, then waits until its base port `port` stops answering.
pub fn kill9(home: &Path, name: &str, port: u16) {
    let pid = pid_of(home, name);
    let out = std::process::Command::new("kill")
        .args(["-9", &pid])
        .output()
        .unwrap();
    assert!(out.status.success());
    super::eventually(&format!("{name} is down"), 20, || {
        request(port, "GET", "/v1/status", super::http::ADMIN)
            .is_err()
            .then_some(())
    });
}

/// Starts server `name` and waits until its `GET /v1/status` on `port` says RUNNING.
pub fn start_running(home: &Path, name: &str, master_port: u16, port: u16) {
    start_server(home, name, master_port);
    super::eventually(&format!("{name} runs"), 60, || {
        request(port, "GET", "/v1/status", super::http::ADMIN)
            .ok()
            .filter(|r| r.body.contains("\"state\":\"RUNNING\""))
    });
}

/// Adds the user `viewer` (password `reader`, the example's read-only `viewers` group) to the
/// accounts of `repo`, uncommitted.
pub fn add_viewer(repo: &super::Repo) {
    let accounts = repo.read("security/accounts.toml");
    repo.write(
        "security/accounts.toml",
        &format!(
            "{accounts}\n[users.viewer]\npassword = \"{}\"\ngroups = [\"viewers\"]\n",
            hashes().1
        ),
    );
}

pub fn stop_server(home: &Path, name: &str) {
    let _ = steward_cmd(&["stop-server", "--server", name, "--domain-home"])
        .arg(home)
        .output();
}

/// Stops the named servers of a domain home when the test ends, however it ends.
pub struct Servers<'a>(pub &'a Path, pub &'a [&'a str]);
impl Drop for Servers<'_> {
    fn drop(&mut self) {
        for s in self.1 {
            stop_server(self.0, s);
        }
    }
}

pub fn server_log(home: &Path, name: &str) -> String {
    let dir = home.join("servers").join(name).join("logs");
    let mut all = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("server_") {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    all
}

/// The pid in a server's pid file.
pub fn pid_of(home: &Path, server: &str) -> String {
    std::fs::read_to_string(
        home.join("servers")
            .join(server)
            .join(".workspace/server.pid"),
    )
    .expect("a pid file")
    .trim()
    .to_owned()
}

/// A bare "upstream" repository (no steward hook, like GitHub) and a work tree pushing to it.
pub fn upstream(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let bare = tmp.path().join("upstream.git");
    let work = tmp.path().join("upstream-work");
    git_ok(
        tmp.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            bare.to_str().expect("utf-8"),
        ],
    );
    std::fs::create_dir_all(&work).expect("mkdir");
    git_ok(&work, &["init", "-q", "-b", "main"]);
    write_domain(&work);
    git_ok(&work, &["add", "-A"]);
    git_ok(&work, &["commit", "-qm", "upstream: first"]);
    git_ok(
        &work,
        &["remote", "add", "origin", bare.to_str().expect("utf-8")],
    );
    git_ok(&work, &["push", "-q", "origin", "main"]);
    (bare, work)
}

/// The start most end-to-end tests share: `steward init HOME --from REPO`, the Master on
/// `mport`, then each of `servers` started (and stopped when the returned guard drops).
pub fn init_and_start<'a>(
    repo: &Path,
    home: &'a Path,
    mport: u16,
    servers: &'a [&'a str],
) -> (Master, Servers<'a>) {
    let r = super::steward(repo, &["init", home.to_str().unwrap(), "--from", "."]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let master = Master::start_on(home, mport);
    let guard = Servers(home, servers);
    for s in servers {
        start_server(home, s, mport);
    }
    (master, guard)
}
