//! `steward up`: the quick start. A whole domain on this machine, in the foreground: a domain
//! home made from a directory, the Master, and every server through its launcher, with one
//! combined log; Ctrl-C stops everything in order (servers first, then the Master).
//!
//! Each part runs as the same `steward` subcommand an operator would run (`master`,
//! `start-server`, `stop-server`), so the quick start exercises exactly the production paths.
//! Servers restart on their own (`restart-policy` auto or rolling) or by hand, each time as a new
//! process started by a new launcher; so `up` follows each server by what outlives a process —
//! its pid file and its log files — never by a child handle, and stops whatever pid each one has
//! at the end. Every child runs in a process group of its own: the terminal's Ctrl-C reaches only
//! `up`, which then stops the servers and, after them, the Master.
//!
//! Over 600 lines with its tests: one flow, start to stop, that reads best top to bottom; the
//! log following is its own module ([`follow`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reconciler::git::{Repo, WorkTree};
use reconciler::pin::PinStore;
use schema::Loaded;
use schema::model::Domain;

mod follow;

use follow::{Log, Tracked};

use crate::background::{self, Boot};
use crate::launcher::credentials;
use crate::layout::ServerHome;
use crate::process::{self, Running};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{dir}: the domain is invalid; fix it and run `steward up` again:\n{problems}")]
    Invalid { dir: PathBuf, problems: String },
    #[error(
        "{home}: the domain home's pinned configuration cannot be used ({cause}); give another --home"
    )]
    Home { home: PathBuf, cause: String },
    #[error(transparent)]
    Init(#[from] reconciler::init::InitError),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(transparent)]
    Background(#[from] background::BackgroundError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    #[error(
        "nothing was started: {}. Is another `steward up` (or a server of this domain) running? \
         Stop it, or move the domain to free ports",
        .0.join("; ")
    )]
    Busy(Vec<String>),
    #[error("cannot start `steward {what}`: {error}")]
    Spawn { what: String, error: std::io::Error },
    #[error("the Master did not report READY within {secs} s; see its lines above")]
    MasterNotReady { secs: u64 },
    #[error("the Master exited ({status}); see its lines above")]
    MasterExited { status: String },
    #[error(
        "{} did not start (see the lines above); stopped everything that was started",
        .0.join(", ")
    )]
    ServersFailed(Vec<String>),
    #[error("stopped by a signal while starting; stopped everything that was started")]
    Interrupted,
}

pub struct UpOptions {
    /// The domain directory (a checkout of a domain repository).
    pub dir: PathBuf,
    /// How the first commit names where the domain came from.
    pub label: String,
    /// Where the domain home goes; reused when it already is one. Default: a new directory
    /// under the system temp dir.
    pub home: Option<PathBuf>,
    /// The `steward` executable.
    pub exe: PathBuf,
}

const MASTER_READY: Duration = Duration::from_secs(30);
/// Servers get their own `stop-timeout`; this bounds the Master's stop and each wait for a
/// launcher that is still starting a server.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(100);

/// The example domain's account for servers, and its documented password (security/accounts.toml).
pub const EXAMPLE_SERVER_USER: &str = "steward-server";
pub const EXAMPLE_SERVER_PASSWORD: &str = "server";

/// Every address the domain's processes will listen on, with what listens there.
fn listen_addresses(domain: &Domain) -> Vec<(SocketAddr, String)> {
    let cfg = &domain.config;
    let mut out = vec![(cfg.master.listen, "the Master's listen".to_owned())];
    for (name, server) in &cfg.servers {
        out.push((server.listen, format!("{name}'s base port")));
        for (l, listener) in &server.web.listeners {
            out.push((
                SocketAddr::new(listener.address, listener.port),
                format!("{name}'s web listener {l}"),
            ));
        }
    }
    out
}

/// The addresses of [`listen_addresses`] that cannot be bound now, each named.
fn busy(domain: &Domain) -> Vec<String> {
    listen_addresses(domain)
        .into_iter()
        .filter_map(|(addr, what)| match TcpListener::bind(addr) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Some(format!("port {} ({what}) is in use", addr.port()))
            }
            Err(e) => Some(format!("{addr} ({what}) cannot be bound: {e}")),
        })
        .collect()
}

/// The pinned configuration of an existing domain home.
/// The pinned configuration of a domain home.
pub(crate) fn load_home(home: &Path) -> Result<Loaded, UpError> {
    let err = |cause: String| UpError::Home {
        home: home.to_owned(),
        cause,
    };
    let store = PinStore::for_home(home);
    let pinned = store
        .pinned()
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("nothing is pinned".into()))?;
    let repo = Repo::open(store.git_dir()).map_err(|e| err(e.to_string()))?;
    let tree = repo.tree(pinned).map_err(|e| err(e.to_string()))?;
    schema::validate(&tree)
        .loaded
        .ok_or_else(|| err(format!("commit {} is invalid", pinned.short())))
}

/// The example's server account, while its password is still the documented one.
pub fn example_server_credentials(domain: &Domain) -> Option<(String, String)> {
    let user = domain.accounts.users.get(EXAMPLE_SERVER_USER)?;
    schema::security::verify_password(EXAMPLE_SERVER_PASSWORD, &user.password).then(|| {
        (
            EXAMPLE_SERVER_USER.to_owned(),
            EXAMPLE_SERVER_PASSWORD.to_owned(),
        )
    })
}

/// Runs the quick start until SIGINT/SIGTERM (then `Ok`) or a failure (everything started is
/// stopped first).
pub fn run(opts: &UpOptions) -> Result<(), UpError> {
    crate::signals::install();
    let default_home = opts.home.is_none();
    let existing = opts
        .home
        .as_ref()
        .is_some_and(|h| h.join("config/domain.git").is_dir());
    let loaded = match &opts.home {
        Some(h) if existing => load_home(h)?,
        _ => {
            let validation = schema::validate(&WorkTree::new(&opts.dir));
            validation.loaded.ok_or_else(|| UpError::Invalid {
                dir: opts.dir.clone(),
                problems: validation.report.render_human(false),
            })?
        }
    };
    let domain = &loaded.domain;
    let name = domain.config.domain.name.clone();
    // Before anything is created or started: a second `up` must not half-start.
    let mut busy = busy(domain);
    if let Some(h) = opts.home.as_ref().filter(|_| existing) {
        // Left over from an earlier `up` that did not stop them (killed, say): say how to stop.
        for server in domain.config.servers.keys() {
            if let Running::Yes { pid, .. } = process::running(&ServerHome::new(h, server)?) {
                busy.push(format!(
                    "{server} of this domain home still runs [pid : {pid}]: `steward stop-server --domain-home {} --server {server}`",
                    h.display()
                ));
            }
        }
    }
    if !busy.is_empty() {
        return Err(UpError::Busy(busy));
    }
    let home = opts.home.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("steward-up-{name}-{}", std::process::id()))
    });
    let home = std::path::absolute(&home).unwrap_or(home);
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
    if existing {
        log.line(
            "up",
            &format!(
                "using the existing domain home {} (its pinned configuration; the domain directory is not read)",
                home.display()
            ),
        );
    } else {
        let made = reconciler::init::init(&home, &opts.dir, &opts.label, &opts.exe)?;
        log.line(
            "up",
            &format!(
                "created domain home {} ({} pinned at {}); it is kept when `up` ends",
                home.display(),
                made.domain.config.domain.name,
                made.commit.short()
            ),
        );
    }
    let server_credentials = server_credentials(domain, &home, &log)?;

    let master_addr = reachable(domain.config.master.listen);
    let mut master = start_master(&opts.exe, &home, &log)?;
    let mut servers: Vec<Tracked> = Vec::new();
    for server in domain.config.servers.keys() {
        let h = ServerHome::new(&home, server)?;
        servers.push(Tracked::new(h));
    }
    let outcome = start_servers(
        &opts.exe,
        &home,
        master_addr,
        &mut servers,
        &mut master,
        &log,
    );
    if let Err(e) = outcome {
        stop_all(&opts.exe, &home, &mut servers, &mut master, &log);
        say_home(&home, default_home, &log);
        return Err(e);
    }
    banner(domain, &home, master_addr, server_credentials, &log);

    let mut result = Ok(());
    while !crate::signals::stop_requested() {
        std::thread::sleep(POLL);
        for s in &mut servers {
            s.poll(&log);
        }
        if let Ok(Some(status)) = master.child.try_wait() {
            result = Err(UpError::MasterExited {
                status: status.to_string(),
            });
            break;
        }
    }
    stop_all(&opts.exe, &home, &mut servers, &mut master, &log);
    say_home(&home, default_home, &log);
    result
}

/// The credentials file the launchers read: kept if there is one (refused if others can read
/// it), else written for the example's documented server account. Returns what the banner shows.
fn server_credentials(domain: &Domain, home: &Path, log: &Log) -> Result<Credentials, UpError> {
    // Read (and refused if others can read it) even when the environment wins over it.
    let file = credentials::read(home)?;
    // The launchers inherit this environment, and it wins over the file.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(user), Some(_)) = (env("STEWARD_USER"), env("STEWARD_PASSWORD")) {
        return Ok(Credentials::Env(user));
    }
    if let Some((user, _)) = file {
        return Ok(Credentials::File(user));
    }
    if let Some((u, p)) = example_server_credentials(domain) {
        let path = credentials::write(home, &u, &p)?;
        log.line(
            "up",
            &format!(
                "wrote the servers' credentials ({u}) to {} (mode 0600)",
                path.display()
            ),
        );
        return Ok(Credentials::File(u));
    }
    Ok(Credentials::None(credentials::path(home)))
}

enum Credentials {
    /// The user of `STEWARD_USER`.
    Env(String),
    /// The user of the credentials file.
    File(String),
    /// No file; where one would go.
    None(PathBuf),
}

/// The Master's process and the readers of its output.
struct Master {
    child: Child,
    output: Vec<mpsc::Receiver<()>>,
    /// Kept open: the Master also says STOPPING=1 on it when it stops.
    _notify: crate::notify::Listener,
}

/// `steward COMMAND --server NAME --domain-home HOME EXTRA…` outside the terminal's process
/// group (Ctrl-C is for `up`, which stops servers in order). Its log lines are in the launcher
/// log, which is followed; what it says before it has a log (a bad credentials file) comes on
/// standard error, followed here under the server's name.
fn launcher(
    exe: &Path,
    home: &Path,
    command: &str,
    name: &str,
    extra: &[&str],
    log: &Log,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(exe)
        .args([command, "--server", name])
        .args(extra)
        .arg("--domain-home")
        .arg(home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    if let Some(e) = child.stderr.take() {
        log.follow(name, e);
    }
    Ok(child)
}

/// The Master in its own session (the terminal's Ctrl-C is for `up`), ready when it says so.
fn start_master(exe: &Path, home: &Path, log: &Log) -> Result<Master, UpError> {
    let listener = crate::notify::Listener::bind(&home.join("config"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("master")
        .arg("--domain-home")
        .arg(home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = background::spawn_detached(&mut cmd, &listener)?;
    let mut output = Vec::new();
    if let Some(o) = child.stdout.take() {
        output.push(log.follow("master", o));
    }
    if let Some(e) = child.stderr.take() {
        output.push(log.follow("master", e));
    }
    let failure = match background::wait_ready(&listener, &mut child, MASTER_READY)? {
        Boot::Ready(_) => {
            return Ok(Master {
                child,
                output,
                _notify: listener,
            });
        }
        Boot::Exited(status) => UpError::MasterExited {
            status: status.to_string(),
        },
        Boot::TimedOut => {
            let _ = process::stop_pid(child.id() as i32, Duration::from_secs(5));
            UpError::MasterNotReady {
                secs: MASTER_READY.as_secs(),
            }
        }
    };
    let _ = child.wait();
    for ended in output {
        let _ = ended.recv_timeout(Duration::from_secs(2));
    }
    Err(failure)
}

/// One launcher per server, all at once, each in its own process group; waits until every one
/// has exited. Any failure is fatal: the caller stops what was started.
fn start_servers(
    exe: &Path,
    home: &Path,
    master_addr: SocketAddr,
    servers: &mut [Tracked],
    master: &mut Master,
    log: &Log,
) -> Result<(), UpError> {
    if crate::signals::stop_requested() {
        // Ctrl-C while the Master was starting: start no server.
        return Err(UpError::Interrupted);
    }
    let master_url = master_addr.to_string();
    let mut launchers = Vec::new();
    for s in servers.iter() {
        let name = &s.home.name;
        let child = launcher(
            exe,
            home,
            "start-server",
            name,
            &["--master-url", &master_url],
            log,
        )
        .map_err(|error| UpError::Spawn {
            what: format!("start-server --server {name}"),
            error,
        })?;
        launchers.push((name.clone(), child, None));
    }
    loop {
        for s in servers.iter_mut() {
            s.poll(log);
        }
        for (_, child, status) in &mut launchers {
            if status.is_none()
                && let Ok(Some(st)) = child.try_wait()
            {
                *status = Some(st);
            }
        }
        if launchers.iter().all(|(_, _, st)| st.is_some()) {
            break;
        }
        if let Ok(Some(status)) = master.child.try_wait() {
            return Err(UpError::MasterExited {
                status: status.to_string(),
            });
        }
        std::thread::sleep(POLL);
    }
    for s in servers.iter_mut() {
        s.poll(log);
    }
    let failed: Vec<String> = launchers
        .into_iter()
        .filter(|(_, _, st)| !st.is_some_and(|s| s.success()))
        .map(|(n, _, _)| n)
        .collect();
    if !failed.is_empty() {
        return Err(UpError::ServersFailed(failed));
    }
    if crate::signals::stop_requested() {
        return Err(UpError::Interrupted);
    }
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

fn banner(domain: &Domain, home: &Path, master: SocketAddr, servers: Credentials, log: &Log) {
    let cfg = &domain.config;
    let mut lines = vec![
        format!(
            "domain {} is up; domain home {}",
            cfg.domain.name,
            home.display()
        ),
        format!(
            "WebAdmin      http://{master}/   (the domain in a browser: servers live, history, plans, restarts)"
        ),
        format!(
            "Master        http://{master}/v1/domain   events: http://{master}/v1/events   metrics: http://{master}/metrics"
        ),
    ];
    // The example's documented administrator, offered only while its password is still `admin`.
    let admin = domain
        .accounts
        .users
        .get("admin")
        .is_some_and(|a| schema::security::verify_password("admin", &a.password));
    if admin {
        lines.push(format!(
            "push URL      http://admin:admin@{master}/git/domain.git"
        ));
        lines.push(
            "credentials   admin / admin (the example's administrator: change the password before exposing the Master); every URL here asks for a user of security/accounts.toml".into(),
        );
    } else {
        lines.push(format!(
            "push URL      http://USER:PASSWORD@{master}/git/domain.git (a user of security/accounts.toml)"
        ));
    }
    match servers {
        Credentials::Env(user) => lines.push(format!(
            "servers       log in as {user} (from STEWARD_USER / STEWARD_PASSWORD)"
        )),
        Credentials::File(user) => lines.push(format!(
            "servers       log in as {user} (from {})",
            credentials::path(home).display()
        )),
        Credentials::None(path) => lines.push(format!(
            "servers       no credentials file: write {} (mode 0600) or set STEWARD_USER/STEWARD_PASSWORD (docs/launcher.md)",
            path.display()
        )),
    }
    let deployments = domain.deployments();
    for (name, server) in &cfg.servers {
        let status = reachable(server.listen);
        let mut web = Vec::new();
        for l in server.web.listeners.values() {
            let at = reachable(SocketAddr::new(l.address, l.port));
            for app in deployments.get(name.as_str()).into_iter().flatten() {
                if let Some(ctx) = &cfg.applications[*app].context_path {
                    web.push(format!("http://{at}{ctx}"));
                }
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

/// Where the domain home stays, and how to reuse or remove it.
fn say_home(home: &Path, default_home: bool, log: &Log) {
    let h = home.display();
    let made_here = if default_home {
        " (made under the system temp dir)"
    } else {
        ""
    };
    log.line(
        "up",
        &format!(
            "the domain home stays at {h}{made_here}: `steward up --home {h}` runs it again with everything pushed to it; `rm -rf {h}` removes it"
        ),
    );
}

/// Servers first — whatever pid each has now, through `stop-server` (which stops its process
/// applications with it) — then the Master. A launcher still starting a server (a restart in
/// progress) is waited for, then that server is stopped too.
fn stop_all(exe: &Path, home: &Path, servers: &mut [Tracked], master: &mut Master, log: &Log) {
    log.line("up", "stopping: the servers first, then the Master");
    for s in servers.iter_mut() {
        s.stopping = true;
    }
    stop_servers(exe, home, servers, log);
    let _ = process::signal(master.child.id() as i32, libc::SIGTERM);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    loop {
        match master.child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= deadline => {
                log.line("up", "the Master did not stop in time: killing it");
                let _ = master.child.kill();
                let _ = master.child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // A restart that was between its stop-server and its start-server when the servers were
    // stopped has started its launcher by now (which boots the server INDEPENDENT without the
    // Master): one more look, so nothing is left running.
    stop_servers(exe, home, servers, log);
    // The Master's last lines are still in its pipes: print them before saying so.
    for ended in master.output.drain(..) {
        let _ = ended.recv_timeout(Duration::from_secs(2));
    }
    log.line("up", "stopped");
}

/// Stops every server that runs, waiting first for launchers that are starting one.
fn stop_servers(exe: &Path, home: &Path, servers: &mut [Tracked], log: &Log) {
    // Each round stops what runs; a launcher that was mid-start is then done and its server is
    // caught by the next round. Restarts are one launcher at a time, so three rounds suffice.
    for _ in 0..3 {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while servers.iter().any(Tracked::starting) && Instant::now() < deadline {
            for s in servers.iter_mut() {
                s.poll(log);
            }
            std::thread::sleep(POLL);
        }
        let running: Vec<String> = servers
            .iter()
            .filter(|s| matches!(process::running(&s.home), Running::Yes { .. }))
            .map(|s| s.home.name.clone())
            .collect();
        if running.is_empty() {
            break;
        }
        let mut stops: Vec<Child> = Vec::new();
        for name in &running {
            match launcher(exe, home, "stop-server", name, &[], log) {
                Ok(c) => stops.push(c),
                Err(e) => log.line("up", &format!("cannot run stop-server for {name}: {e}")),
            }
        }
        // stop-server bounds itself: SIGTERM, the server's stop-timeout, then SIGKILL.
        while !stops.is_empty() {
            stops.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            for s in servers.iter_mut() {
                s.poll(log);
            }
            std::thread::sleep(POLL);
        }
    }
    for s in servers.iter_mut() {
        s.poll(log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::settings::FileKind;
    use schema::tree::MemTree;

    fn example() -> Loaded {
        let tree = MemTree::new("t")
            .with(
                FileKind::Domain.path(),
                include_str!("../../examples/domain1/domain.toml"),
            )
            .with(
                FileKind::Accounts.path(),
                include_str!("../../examples/domain1/security/accounts.toml"),
            )
            .with(
                FileKind::Policies.path(),
                include_str!("../../examples/domain1/security/policies.toml"),
            )
            .with("apps/shop/index.html", "x")
            .with("apps/api/bin/api", "x")
            .with("libs/common/README.txt", "x");
        schema::validate(&tree).loaded.expect("valid")
    }

    #[test]
    fn every_listen_address_is_checked_with_its_owner() {
        let got: Vec<String> = listen_addresses(&example().domain)
            .into_iter()
            // Ports only: the default listener's address is the engine's business.
            .map(|(a, w)| format!("{} {w}", a.port()))
            .collect();
        assert_eq!(
            got,
            [
                "9736 the Master's listen",
                "9741 server1's base port",
                "8088 server1's web listener http",
                "9751 server2's base port",
                "8089 server2's web listener http",
                "9761 server3's base port",
                // server3 has no listener: the default one, base port + 1.
                "9762 server3's web listener http",
            ]
        );
    }

    #[test]
    fn the_example_server_account_is_offered_only_with_its_documented_password() {
        let mut loaded = example();
        assert_eq!(
            example_server_credentials(&loaded.domain),
            Some(("steward-server".into(), "server".into()))
        );
        let admin = loaded.domain.accounts.users["admin"].password.clone();
        loaded
            .domain
            .accounts
            .users
            .get_mut("steward-server")
            .expect("the account")
            .password = admin;
        assert_eq!(example_server_credentials(&loaded.domain), None);
    }
}
