//! What the end-to-end tests of the Master share: a small domain with users `admin` and
//! `reader`, `steward init`, a running `steward master`, and a minimal HTTP client over
//! `TcpStream` (Basic auth, raw requests, SSE).

use super::TempDir;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

// ---------------------------------------------------------------- helpers

pub fn hash(password: &str) -> String {
    let mut child = Command::new(STEWARD)
        .arg("hash-password")
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

pub fn steward(args: &[&str]) -> Output {
    Command::new(STEWARD)
        .args(args)
        .output()
        .expect("run steward")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs git isolated from the user's and system's configuration.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_COMMITTER_NAME", "Alice")
        .env("GIT_COMMITTER_EMAIL", "alice@example.com")
        .output()
        .expect("run git")
}

pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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
        Master::start_checked(home, log, extra, &[], |port| {
            request(port, "GET", "/healthz", None).is_ok_and(|r| r.status == 200)
        })
    }

    /// With extra arguments and environment; ready once `ready(port)` holds.
    pub fn start_checked(
        home: &Path,
        log: PathBuf,
        extra: &[&str],
        envs: &[(&str, &Path)],
        ready: impl Fn(u16) -> bool,
    ) -> Master {
        let port = free_port();
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(STEWARD)
            .args(["master", "--domain-home"])
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
            if ready(port) {
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

pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

pub fn basic(user: &str, password: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn send_request(
    stream: &mut TcpStream,
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> std::io::Result<()> {
    send_request_body(stream, port, method, path, auth, None)
}

pub fn send_request_body(
    stream: &mut TcpStream,
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> std::io::Result<()> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        req.push_str(&format!("Authorization: Basic {}\r\n", basic(u, p)));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes())
}

/// `POST path` with a JSON body.
pub fn post(port: u16, path: &str, auth: (&str, &str), body: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    send_request_body(&mut stream, port, "POST", path, Some(auth), Some(body)).expect("send");
    read_response(stream).expect("response")
}

/// `POST path` with a JSON body and one extra header, without Basic credentials.
pub fn post_with_header(port: u16, path: &str, header: &str, body: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{header}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send");
    read_response(stream).expect("response")
}

/// One HTTP/1.1 request with `Connection: close`; the body is read to the end (the Master answers
/// these routes with a content length, so no chunked decoding is needed).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    send_request(&mut stream, port, method, path, auth)?;
    read_response(stream)
}

pub fn read_response(mut stream: TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// An SSE subscriber: a thread reads `event:`/`data:` blocks into a channel.
pub struct Events {
    pub rx: mpsc::Receiver<(String, serde_json::Value)>,
}

impl Events {
    pub fn subscribe(port: u16) -> Events {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        send_request(
            &mut stream,
            port,
            "GET",
            "/v1/events",
            Some(("admin", "admin")),
        )
        .expect("send");
        let mut reader = BufReader::new(stream);
        // Wait for the response head: once it arrives, the subscription exists.
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.contains(" 200 "), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The body is chunked; SSE lines are what matter, chunk-size lines are skipped below.
            let (mut event, mut data) = (String::new(), String::new());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let l = line.trim_end_matches(['\r', '\n']);
                if let Some(v) = l.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = l.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if l.is_empty() && !data.is_empty() {
                    let v = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                    if tx.send((std::mem::take(&mut event), v)).is_err() {
                        return;
                    }
                    data.clear();
                }
                line.clear();
            }
        });
        Events { rx }
    }

    pub fn next(&self, within: Duration) -> (String, serde_json::Value) {
        self.rx.recv_timeout(within).expect("an event in time")
    }
}

/// A domain home made by `steward init` from a fresh small domain.
pub fn init_home(tmp: &TempDir) -> PathBuf {
    let src = tmp.path().join("src");
    write_domain(&src);
    let home = tmp.path().join("home");
    let out = steward(&[
        "init",
        home.to_str().expect("utf-8"),
        "--from",
        src.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home
}

pub fn edit(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).expect("read");
    assert!(s.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).expect("write");
}
