//! Helpers for end-to-end tests: temporary domain repositories driven with the real `git`
//! binary, and the built `steward` run as a user would run it.

pub mod http;
pub mod master;
pub mod netns;
pub mod webdriver;

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

impl Run {
    pub fn success(&self) -> bool {
        self.code == 0
    }
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

/// A `git` command in `dir`, isolated from the user's and the system's configuration (no
/// credential prompt either), with a fixed identity.
pub fn git_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(args).current_dir(dir);
    isolated_git(&mut cmd);
    cmd
}

/// The environment of [`git_cmd`], for a `git` started another way (on a simulated machine).
pub fn isolated_git(cmd: &mut Command) {
    cmd.env("GIT_AUTHOR_NAME", "Op Erator")
        .env("GIT_AUTHOR_EMAIL", "op@example.com")
        .env("GIT_COMMITTER_NAME", "Op Erator")
        .env("GIT_COMMITTER_EMAIL", "op@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
}

/// Runs git in `dir` (see [`git_cmd`]); the caller judges the outcome.
pub fn git(dir: &Path, args: &[&str]) -> Run {
    git_cmd(dir, args).output().expect("git runs").into()
}

/// Runs git in `dir`, failing the test unless it succeeds; its standard output, trimmed.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let r = git(dir, args);
    assert_eq!(r.code, 0, "git {args:?} failed:\n{}{}", r.stdout, r.stderr);
    r.stdout.trim().to_owned()
}

/// Text of process output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The built `steward`, isolated from the environment a test runs in: no credentials, no
/// readiness socket, no colour, no terminal input.
pub fn steward_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward"));
    cmd.args(args)
        .env_remove("STEWARD_USER")
        .env_remove("STEWARD_PASSWORD")
        .env_remove("NOTIFY_SOCKET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs `program` with `args`; whether it succeeded.
pub fn run_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the built `steward` in `dir`.
pub fn steward(dir: &Path, args: &[&str]) -> Run {
    steward_cmd(args)
        .current_dir(dir)
        .output()
        .expect("steward runs")
        .into()
}

pub fn copy_dir(from: &Path, to: &Path) {
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

    /// Git with a fixed clock too, so commit ids (and snapshots naming them) are stable.
    pub fn git(&self, args: &[&str]) -> Run {
        let r: Run = git_cmd(self.path(), args)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .output()
            .expect("git runs")
            .into();
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
        edit_text(&self.path().join(file), from, to);
    }

    /// Sets the value at the dotted path `keys` in `file` (see [`set_toml`]).
    pub fn set(&self, file: &str, keys: &str, value: impl Into<toml_edit::Value>) {
        set_toml(&self.path().join(file), keys, value);
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
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` free ports, none equal or next to another: a server's web engine takes its base port + 1,
/// and ports chosen one after the other could otherwise meet (the kernel hands a released port
/// out again). The listeners stay bound until all are chosen.
pub fn free_ports(n: usize) -> Vec<u16> {
    free_ports_besides(n, &[])
}

/// [`free_ports`], none equal or next to one of `taken` either.
///
/// Chosen below the kernel's ephemeral range (32768–60999 by default), not by binding port 0: a
/// port from that range can be handed to any outgoing connection or port-0 listener in the
/// meantime (a server's own timer service took one) before the server given it binds it. Each
/// test process starts at its own offset and walks the range; a port is taken only when it and
/// the next one bind.
pub fn free_ports_besides(n: usize, taken: &[u16]) -> Vec<u16> {
    const LOW: usize = 20_000;
    const SPAN: usize = 12_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = std::process::id() as usize * 7_919 % SPAN;
    let mut held = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        let i = NEXT.fetch_add(2, Ordering::Relaxed);
        let p = u16::try_from(LOW + (start + i) % SPAN).expect("below 32,000");
        if !ports.iter().chain(taken).all(|q| q.abs_diff(p) > 1) {
            continue;
        }
        let bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port));
        if let (Ok(a), Ok(b)) = (bind(p), bind(p + 1)) {
            ports.push(p);
            held.extend([a, b]);
        }
    }
    ports
}

/// Moves the example domain of `repo` onto free ports; returns them in the order master,
/// server1, server2, server3 (base ports), server1 web, server2 web.
pub fn example_on_free_ports(repo: &Repo) -> Vec<u16> {
    let ports = free_ports(6);
    let file = repo.path().join("domain.toml");
    for (server, port) in [
        "master",
        "servers.server1",
        "servers.server2",
        "servers.server3",
    ]
    .iter()
    .zip(&ports)
    {
        set_toml(
            &file,
            &format!("{server}.listen"),
            format!("127.0.0.1:{port}"),
        );
    }
    for (server, port) in ["server1", "server2"].iter().zip(&ports[4..]) {
        let key = format!("servers.{server}.web.listeners.http.port");
        set_toml(&file, &key, i64::from(*port));
    }
    ports
}

/// Sets the value at the dotted path `keys` in the TOML file at `path` through `toml_edit`, so
/// the rest of the file keeps its layout and comments (the value keeps its own comment too).
pub fn set_toml(path: &Path, keys: &str, value: impl Into<toml_edit::Value>) {
    let text = std::fs::read_to_string(path).expect("read");
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
    let (tables, last) = keys.rsplit_once('.').unwrap_or(("", keys));
    let mut item = doc.as_item_mut();
    for key in tables.split('.').filter(|k| !k.is_empty()) {
        item = &mut item[key];
    }
    let slot = &mut item[last];
    let mut value = value.into();
    if let Some(old) = slot.as_value() {
        *value.decor_mut() = old.decor().clone();
    }
    *slot = toml_edit::Item::Value(value);
    std::fs::write(path, doc.to_string()).expect("write");
}

/// Replaces `from` (which must occur) with `to` in the file at `path`: for edits that are about
/// the text itself (a typo, a broken line), where [`set_toml`] cannot say it.
pub fn edit_text(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "`{from}` is not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
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
pub fn poll<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
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

/// [`poll`]s `f` for at most `secs` seconds; fails the test naming `what` was awaited.
pub fn eventually<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    poll(secs, f).unwrap_or_else(|| panic!("waited {secs} s in vain for: {what}"))
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
