//! `steward up`: the quick start. A whole domain on this machine, in the foreground: a domain
//! home made from a directory, the Master, and every server through its launcher, with one
//! combined log; Ctrl-C stops everything in order (servers first, then the Master).
//!
//! Each part runs as the same `steward` subcommand an operator would run (`master`,
//! `start-server --verbose`), so the quick start exercises exactly the production paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconciler::git::WorkTree;
use schema::model::Domain;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{dir}: the domain is invalid; fix it and run `steward up` again:\n{problems}")]
    Invalid { dir: PathBuf, problems: String },
    #[error(transparent)]
    Init(#[from] reconciler::init::InitError),
    #[error("cannot start `steward {what}`: {error}")]
    Spawn { what: String, error: std::io::Error },
    #[error("the Master did not become ready at {addr} within {secs} s; see its lines above")]
    MasterNotReady { addr: SocketAddr, secs: u64 },
    #[error("the Master exited during start-up ({status}); see its lines above")]
    MasterExited { status: String },
}

pub struct UpOptions {
    /// The domain directory (a checkout of a domain repository).
    pub dir: PathBuf,
    /// Where the domain home goes; reused when it already is one. Default: a new directory
    /// under the system temp dir.
    pub home: Option<PathBuf>,
    /// The `steward` executable.
    pub exe: PathBuf,
}

const MASTER_READY: Duration = Duration::from_secs(30);
const SERVERS_READY: Duration = Duration::from_secs(60);
/// Servers get their own `stop-timeout`; this bounds the whole shutdown on top of it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(45);

/// One child process and the name its lines are prefixed with.
struct Part {
    name: String,
    child: Child,
    done: bool,
}

/// Serializes the children's lines into one log.
#[derive(Clone)]
struct Log {
    out: Arc<Mutex<std::io::Stdout>>,
    width: usize,
}

impl Log {
    fn line(&self, who: &str, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{who:>w$} | {text}", w = self.width);
        let _ = out.flush();
    }

    fn follow(&self, who: &str, stream: impl Read + Send + 'static) {
        let (log, who) = (self.clone(), who.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(l) => log.line(&who, &l),
                    Err(_) => break,
                }
            }
        });
    }
}

/// Runs the quick start until SIGINT/SIGTERM or the Master's exit.
pub fn run(opts: &UpOptions) -> Result<(), UpError> {
    crate::signals::install();
    let validation = schema::validate(&WorkTree::new(&opts.dir));
    let Some(loaded) = validation.loaded else {
        return Err(UpError::Invalid {
            dir: opts.dir.clone(),
            problems: validation.report.render_human(false),
        });
    };
    let domain = &loaded.domain;
    let name = domain.config.domain.name.clone();
    let home = opts.home.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("steward-up-{name}-{}", std::process::id()))
    });
    let width = domain
        .config
        .servers
        .keys()
        .map(String::len)
        .chain([6])
        .max()
        .unwrap_or(6);
    let log = Log {
        out: Arc::new(Mutex::new(std::io::stdout())),
        width,
    };
    if home.join("config/domain.git").is_dir() {
        log.line(
            "up",
            &format!("using the existing domain home {}", home.display()),
        );
    } else {
        let made = reconciler::init::init(&home, &opts.dir, &opts.exe)?;
        log.line(
            "up",
            &format!(
                "created domain home {} ({} pinned at {})",
                home.display(),
                made.domain,
                made.commit.short()
            ),
        );
    }

    let master_addr = reachable(domain.config.master.listen);
    let mut parts = Vec::new();
    let master = spawn(
        &opts.exe,
        &["master", "--domain-home"],
        &home,
        &[],
        "master",
        &log,
    )?;
    parts.push(master);
    if let Err(e) = wait_master(&mut parts[0], master_addr) {
        stop_all(&mut parts, &log);
        return Err(e);
    }

    let credentials = quick_start_credentials(domain);
    let env: Vec<(&str, String)> = match &credentials {
        Some((u, p)) => vec![("STEWARD_USER", u.clone()), ("STEWARD_PASSWORD", p.clone())],
        None => Vec::new(),
    };
    let master_url = master_addr.to_string();
    for server in domain.config.servers.keys() {
        let args = [
            "start-server",
            "--server",
            server,
            "--master-url",
            &master_url,
            "--verbose",
            "--domain-home",
        ];
        match spawn(&opts.exe, &args, &home, &env, server, &log) {
            Ok(p) => parts.push(p),
            Err(e) => log.line("up", &e.to_string()),
        }
    }
    wait_servers(domain, &mut parts);
    banner(domain, &home, master_addr, credentials.as_ref(), &log);

    while !crate::signals::stop_requested() {
        std::thread::sleep(Duration::from_millis(100));
        for part in parts.iter_mut().filter(|p| !p.done) {
            if let Ok(Some(status)) = part.child.try_wait() {
                part.done = true;
                log.line("up", &format!("{} exited ({status})", part.name));
            }
        }
        if parts[0].done {
            log.line("up", "the Master is gone: stopping the servers");
            break;
        }
    }
    stop_all(&mut parts, &log);
    Ok(())
}

/// Where to reach a listen address from this machine (`0.0.0.0` → loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() => {
            let lo = if ip.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(lo, addr.port())
        }
        _ => addr,
    }
}

fn spawn(
    exe: &Path,
    args: &[&str],
    home: &Path,
    env: &[(&str, String)],
    name: &str,
    log: &Log,
) -> Result<Part, UpError> {
    let mut child = Command::new(exe)
        .args(args)
        .arg(home)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| UpError::Spawn {
            what: args.first().copied().unwrap_or("").to_owned(),
            error,
        })?;
    if let Some(o) = child.stdout.take() {
        log.follow(name, o);
    }
    if let Some(e) = child.stderr.take() {
        log.follow(name, e);
    }
    Ok(Part {
        name: name.to_owned(),
        child,
        done: false,
    })
}

/// A plain HTTP GET on loopback; `Some(status)` when anything answered.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn wait_master(master: &mut Part, addr: SocketAddr) -> Result<(), UpError> {
    let t0 = Instant::now();
    while t0.elapsed() < MASTER_READY {
        if let Ok(Some(status)) = master.child.try_wait() {
            master.done = true;
            return Err(UpError::MasterExited {
                status: status.to_string(),
            });
        }
        if http_status(addr, "/healthz") == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(UpError::MasterNotReady {
        addr,
        secs: MASTER_READY.as_secs(),
    })
}

/// Waits until every server answers its status route (or its launcher gave up).
fn wait_servers(domain: &Domain, parts: &mut [Part]) {
    let t0 = Instant::now();
    for (name, server) in &domain.config.servers {
        let addr = reachable(server.listen);
        while t0.elapsed() < SERVERS_READY && !crate::signals::stop_requested() {
            let launcher_gone = parts
                .iter_mut()
                .find(|p| &p.name == name)
                .is_none_or(|p| matches!(p.child.try_wait(), Ok(Some(_))));
            if launcher_gone || http_status(addr, "/v1/status") == Some(200) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The example's documented administrator, offered only while its password is still `admin`,
/// else the operator's own from `STEWARD_USER`/`STEWARD_PASSWORD`.
fn quick_start_credentials(domain: &Domain) -> Option<(String, String)> {
    if let (Ok(u), Ok(p)) = (
        std::env::var("STEWARD_USER"),
        std::env::var("STEWARD_PASSWORD"),
    ) {
        return Some((u, p));
    }
    let admin = domain.accounts.users.get("admin")?;
    schema::security::verify_password("admin", &admin.password)
        .then(|| ("admin".to_owned(), "admin".to_owned()))
}

fn banner(
    domain: &Domain,
    home: &Path,
    master: SocketAddr,
    credentials: Option<&(String, String)>,
    log: &Log,
) {
    let cfg = &domain.config;
    let mut lines = vec![
        format!(
            "domain {} is up; domain home {}",
            cfg.domain.name,
            home.display()
        ),
        format!("Master        http://{master}/v1/domain   events: http://{master}/v1/events"),
    ];
    match credentials {
        Some((u, p)) => {
            lines.push(format!(
                "push URL      http://{u}:{p}@{master}/git/domain.git"
            ));
            let origin = if u == "admin" && p == "admin" {
                " (the example's administrator: change the password before exposing the Master)"
            } else {
                " (from STEWARD_USER / STEWARD_PASSWORD)"
            };
            lines.push(format!("credentials   {u} / {p}{origin}"));
        }
        None => {
            lines.push(format!(
                "push URL      http://USER:PASSWORD@{master}/git/domain.git"
            ));
            lines.push(
                "credentials   a user of security/accounts.toml; set STEWARD_USER and STEWARD_PASSWORD so the servers can reach the Master".into(),
            );
        }
    }
    let deployments = domain.deployments();
    for (name, server) in &cfg.servers {
        let status = reachable(server.listen);
        let mut web = Vec::new();
        for l in server.web.listeners.values() {
            let at = reachable(SocketAddr::new(l.address, l.port));
            for app in deployments.get(name.as_str()).into_iter().flatten() {
                web.push(format!(
                    "http://{at}{}",
                    cfg.applications[*app].context_path
                ));
            }
        }
        let web = if web.is_empty() {
            String::new()
        } else {
            format!("   web: {}", web.join(" "))
        };
        lines.push(format!("{name:<13} http://{status}/v1/status{web}"));
    }
    lines.push("Ctrl-C stops everything.".into());
    for l in lines {
        log.line("up", &l);
    }
}

/// Servers first (their launchers stop them gracefully on SIGINT), then the Master.
fn stop_all(parts: &mut [Part], log: &Log) {
    log.line("up", "stopping");
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let (master, servers) = parts.split_at_mut(1);
    for group in [servers, master] {
        for p in group.iter_mut().filter(|p| !p.done) {
            let sig = if p.name == "master" {
                libc::SIGTERM
            } else {
                libc::SIGINT
            };
            let _ = crate::process::signal(p.child.id() as i32, sig);
        }
        for p in group.iter_mut().filter(|p| !p.done) {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        log.line(
                            "up",
                            &format!("{} did not stop in time: killing it", p.name),
                        );
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            p.done = true;
        }
    }
    log.line("up", "stopped");
}
