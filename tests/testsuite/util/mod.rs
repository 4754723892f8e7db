//! Helpers for end-to-end tests: temporary domain repositories driven with the real `git`
//! binary, and the built `steward` run as a user would run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository's example domain.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/domain1")
}

/// A fresh directory under the system temp dir (short paths: unix socket names are limited),
/// unique per call, removed on drop unless STEWARD_KEEP_TMP is set (for debugging).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("steward-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("STEWARD_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The result of running a command, with text output.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Git with a fixed identity and clock, so commit ids (and snapshots naming them) are stable.
pub fn git(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Op Erator")
        .env("GIT_AUTHOR_EMAIL", "op@example.com")
        .env("GIT_COMMITTER_NAME", "Op Erator")
        .env("GIT_COMMITTER_EMAIL", "op@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    out.into()
}

/// Runs the built `steward` in `dir`.
pub fn steward(dir: &Path, args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("steward runs")
        .into()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A working repository holding the example domain, committed once.
pub struct Repo {
    pub tmp: TempDir,
}

impl Repo {
    pub fn example(name: &str) -> Repo {
        let tmp = TempDir::new(name);
        copy_dir(&example_dir(), tmp.path());
        let r = Repo { tmp };
        r.git(&["init", "-q", "-b", "main"]);
        r.commit("the example domain");
        r
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn git(&self, args: &[&str]) -> Run {
        let r = git(self.path(), args);
        assert_eq!(r.code, 0, "git {args:?} failed: {}", r.stderr);
        r
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path().join(file)).unwrap()
    }

    pub fn write(&self, file: &str, content: &str) {
        let p = self.path().join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Replaces `from` (which must occur) with `to` in `file`.
    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let text = self.read(file);
        assert!(text.contains(from), "`{from}` is not in {file}");
        self.write(file, &text.replacen(from, to, 1));
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"]).stdout.trim().to_owned()
    }

    pub fn steward(&self, args: &[&str]) -> Run {
        steward(self.path(), args)
    }
}

/// A port nothing listens on now, whose next port is free too (a server without web listeners
/// takes its base port + 1).
pub fn free_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Moves the example domain of `repo` onto free ports; returns them in the order master,
/// server1, server2, server3 (base ports), server1 web, server2 web.
pub fn example_on_free_ports(repo: &Repo) -> Vec<u16> {
    let ports: Vec<u16> = (0..6).map(|_| free_pair()).collect();
    for (from, to) in ["9736", "9741", "9751", "9761", "8088", "8089"]
        .iter()
        .zip(&ports)
    {
        let text = repo
            .read("domain.toml")
            .replace(&format!(":{from}\""), &format!(":{to}\""))
            .replace(&format!("port = {from}\n"), &format!("port = {to}\n"));
        repo.write("domain.toml", &text);
    }
    ports
}

/// `GET path` on 127.0.0.1:`port` with optional Basic credentials; the whole response.
pub fn http_get(port: u16, path: &str, basic: Option<&str>) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let auth = basic
        .map(|b| format!("Authorization: Basic {b}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\n{auth}\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A child process killed when the test ends, however it ends.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs` seconds.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 client on one connection: keep-alive (`Connection: close` is not sent),
/// so consecutive requests reuse it; for load loops that must notice a dropped connection.
pub struct HttpConn {
    reader: std::io::BufReader<std::net::TcpStream>,
}

/// One response: status code, headers (lower-cased names), body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl HttpConn {
    pub fn connect(port: u16) -> std::io::Result<HttpConn> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            reader: std::io::BufReader::new(s),
        })
    }

    /// `GET path`; the response must carry a `Content-Length` (the engine's do).
    pub fn get(&mut self, path: &str) -> Result<HttpResponse, String> {
        use std::io::{BufRead, Read, Write};
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read status: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader
                .read_line(&mut h)
                .map_err(|e| format!("read header: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or("no content-length")?;
        let mut body = vec![0; len];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// A tar archive holding `entries` (name, content) as regular files, names written as given:
/// for archives a well-behaved tool would refuse to make (`../x`).
pub fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, content.len() as u64);
        octal(&mut h, 136, 12, 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Every file under `dir` named `name`, at any depth.
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            out.extend(find_named(&p, name));
        } else if e.file_name() == name {
            out.push(p);
        }
    }
    out
}

/// A test CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` binary:
/// `(ca.pem, master.crt, master.key)` in `dir`. The leaf is not a CA (rustls refuses a CA
/// certificate used as a server's own).
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl binary is needed to make test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=steward test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", "master.key", "-out", "master.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("write");
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "master.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "leaf.ext",
        "-out",
        "master.crt",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("master.crt"),
        dir.join("master.key"),
    )
}

// ---------------------------------------------------------------- Master and servers

pub fn master(home: &std::path::Path) -> Guard {
    Guard(
        std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
            .args(["master", "--domain-home"])
            .arg(home)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

pub fn start_server(home: &std::path::Path, name: &str, master_port: u16) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["start-server", "--server", name, "--master-url"])
        .arg(format!("127.0.0.1:{master_port}"))
        .arg("--domain-home")
        .arg(home)
        .env("STEWARD_USER", "admin")
        .env("STEWARD_PASSWORD", "admin")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

pub fn stop_server(home: &std::path::Path, name: &str) {
    let _ = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["stop-server", "--server", name, "--domain-home"])
        .arg(home)
        .output();
}

pub struct Servers<'a>(pub &'a std::path::Path, pub &'a [&'a str]);
impl Drop for Servers<'_> {
    fn drop(&mut self) {
        for s in self.1 {
            stop_server(self.0, s);
        }
    }
}

pub fn status(port: u16) -> serde_json::Value {
    let raw = http_get(port, "/v1/status", None).unwrap_or_default();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("null");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

pub fn server_log(home: &std::path::Path, name: &str) -> String {
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
pub fn pid_of(home: &std::path::Path, server: &str) -> String {
    std::fs::read_to_string(
        home.join("servers")
            .join(server)
            .join(".workspace/server.pid"),
    )
    .expect("a pid file")
    .trim()
    .to_owned()
}
pub mod master;
