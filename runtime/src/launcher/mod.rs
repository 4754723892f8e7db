//! The launcher: `steward start-server` and `steward stop-server`.
//!
//! Start: create or repair SERVER_HOME, resolve the configuration ([`source`]), spawn
//! `steward server` detached (own session, stdin closed, stdout/stderr into the launcher log so a
//! crash before the server's logger is up is still on record), wait for `READY=1` on a notify
//! socket of its own, print the boot log, and exit — or stay attached with `--verbose`.

pub mod credentials;
pub mod source;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reconciler::cache::Cache;

use crate::layout::ServerHome;
use crate::logfile::{self, Echo, Level, LogFile, Logger, Rotation};
use crate::notify;
use crate::process::{self, Running, Stopped};
use source::Sources;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    #[error(transparent)]
    Log(#[from] crate::logfile::LogError),
    #[error(transparent)]
    Cache(#[from] reconciler::cache::CacheError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("cannot start {exe}: {error}")]
    Spawn { exe: PathBuf, error: std::io::Error },
}

/// What `start-server` was told.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub domain_home: PathBuf,
    pub server: String,
    pub sources: Sources,
    /// How long the server may take to signal READY.
    pub boot_timeout: Duration,
    pub verbose: bool,
    /// The `steward` executable (the server runs it; the scripts name it).
    pub exe: PathBuf,
}

/// How a start or stop ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// RUNNING (or, with `--verbose`, ran and stopped cleanly).
    Ok,
    /// Not started (or not stopped); the log says why.
    Failed,
}

/// Why a launcher run by another process (the Master, a node agent) did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run the launcher: {0}")]
    Spawn(std::io::Error),
    /// It exited non-zero: its last lines, or its exit status.
    #[error("{0}")]
    Failed(String),
}

/// Runs `exe` with `args` (`start-server …`, `stop-server …`) in a session of its own, so the
/// server it starts outlives the caller, and waits for it. Its credentials are the domain home's
/// servers' file, never the caller's environment (the caller's account is not the servers').
pub fn run(exe: &std::path::Path, args: &[&std::ffi::OsStr]) -> Result<(), RunError> {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().map_err(RunError::Spawn)?;
    let err = out.try_clone().map_err(RunError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_remove("STEWARD_USER")
        .env_remove("STEWARD_PASSWORD")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    process::detach(&mut cmd);
    let status = cmd
        .spawn()
        .and_then(|mut child| child.wait())
        .map_err(RunError::Spawn)?;
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = out
        .rewind()
        .and_then(|()| out.read_to_string(&mut text).map(drop));
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(RunError::Failed(if tail.is_empty() {
        format!("the launcher exited with {status}")
    } else {
        tail.join(" | ")
    }))
}

fn launcher_log(home: &ServerHome, echo: Echo) -> Result<Logger, LaunchError> {
    let file = LogFile::open(&home.logs(), "launcher", Rotation::default())?;
    let log = Logger::new(Some(file), echo, "launcher");
    log.install();
    Ok(log)
}

/// `steward start-server`.
pub fn start(opts: &StartOptions) -> Result<Outcome, LaunchError> {
    let t0 = Instant::now();
    if opts.verbose {
        // Before the spawn: a Ctrl-C while the server boots must stop it once it is ready, not
        // kill the launcher and leave the server running on its own.
        crate::signals::install();
    }
    let home = ServerHome::new(&opts.domain_home, &opts.server)?;
    home.create()?;
    let log = launcher_log(&home, Echo::Stdout)?;
    log.info(
        "Launcher-0001",
        &format!(
            "Starting the server[{}] of the domain home {}.",
            home.name,
            home.domain_home.display()
        ),
    );
    // One launcher per server at a time: two racing starts would both spawn, and the loser's
    // pid file would hide the winner from stop-server.
    let lock_path = home.start_lock();
    let start_lock = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|error| LaunchError::Io {
            path: lock_path.clone(),
            what: "cannot open the start lock",
            error,
        })?;
    match start_lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            log.severe(
                "Launcher-0062",
                &format!(
                    "Another launcher is starting the server[{}] right now.",
                    home.name
                ),
            );
            return Ok(Outcome::Failed);
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(LaunchError::Io {
                path: lock_path,
                what: "cannot lock",
                error,
            });
        }
    }
    match process::running(&home) {
        Running::Yes { pid, .. } => {
            log.severe(
                "Launcher-0062",
                &format!(
                    "The server[{}] is already running [pid : {pid}]; stop it first with stop-server.",
                    home.name
                ),
            );
            return Ok(Outcome::Failed);
        }
        Running::Stale { pid } => {
            log.info(
                "Launcher-0094",
                &format!("Removed a stale pid file (pid {pid} is not this server)."),
            );
            // A server just killed may still be closing its files (its stores' locks).
            process::wait_released(pid, Duration::from_secs(10));
            let _ = std::fs::remove_file(home.pid_file());
        }
        Running::No => {}
    }

    // The cache's exclusive lock is held only while resolving (this block); the server takes
    // the shared lock to read its commit, so it waits out another launcher's fetch.
    let resolved = {
        let (cache, repaired) = match Cache::open(&home.domain_home) {
            Ok(c) => c,
            Err(e) => {
                log.severe("Launcher-0065", &format!("Cannot use the local cache: {e}"));
                return Ok(Outcome::Failed);
            }
        };
        if let Some(r) = repaired {
            log.severe(
                "Launcher-0061",
                &format!(
                    "The local cache was corrupt ({}); moved it aside to {} and started a new one. \
                     It is rebuilt from the first reachable source.",
                    r.problem,
                    r.moved_to.display()
                ),
            );
        }
        match source::resolve(&cache, &home.name, &opts.sources, &log) {
            Ok(r) => r,
            Err(refused) => {
                log.severe(
                    "Launcher-0060",
                    &format!(
                        "Cannot start the server[{}]: no usable configuration. Tried:\n{}",
                        home.name,
                        refused.describe()
                    ),
                );
                return Ok(Outcome::Failed);
            }
        }
    };
    let Some(server) = resolved.loaded.domain.config.servers.get(&home.name) else {
        // resolve() checked this; kept as a clear failure rather than a panic.
        log.severe(
            "Launcher-0060",
            &format!("The configuration defines no server named {}.", home.name),
        );
        return Ok(Outcome::Failed);
    };

    let mut script_args = Vec::new();
    if let Some(m) = &opts.sources.master_url {
        script_args.extend(["--master-url".to_owned(), m.clone()]);
    }
    if let Some(g) = &opts.sources.git_url {
        script_args.extend(["--git-url".to_owned(), g.clone()]);
    }
    home.write_scripts(&opts.exe, &script_args)?;

    let listener = notify::Listener::bind(&home.tmp())?;
    let server_mark = logfile::mark(&home.logs(), "server");
    let launcher_mark = logfile::mark(&home.logs(), "launcher");
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("server")
        .arg("--domain-home")
        .arg(&home.domain_home)
        .args(["--server", &home.name])
        .args(["--commit", &resolved.commit.to_hex()])
        .args(["--mode", resolved.mode.arg()]);
    if opts.verbose {
        cmd.arg("--console");
    }
    if let Some(m) = &opts.sources.master_url {
        // The server follows the Master even when it boots without it (INDEPENDENT).
        cmd.args(["--master-url", m]);
    }
    if let (Some(u), Some(p)) = (&opts.sources.user, &opts.sources.password) {
        cmd.env("STEWARD_USER", u).env("STEWARD_PASSWORD", p);
    }
    if !server.process.args.is_empty() {
        cmd.arg("--").args(&server.process.args);
    }
    cmd.envs(&server.process.env)
        .env("NOTIFY_SOCKET", listener.name())
        .current_dir(&home.root)
        .stdin(Stdio::null());
    if opts.verbose {
        // Attached: the server's console lines go to this terminal.
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else if let Some(f) = log.clone_file() {
        let f2 = f.try_clone().map_err(|error| LaunchError::Spawn {
            exe: opts.exe.clone(),
            error,
        })?;
        cmd.stdout(f).stderr(f2);
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    // A new session: the server outlives this shell and a Ctrl-C meant for the launcher does
    // not reach it.
    process::detach(&mut cmd);
    let mut child = cmd.spawn().map_err(|error| LaunchError::Spawn {
        exe: opts.exe.clone(),
        error,
    })?;
    let pid = child.id();
    process::write_pid(&home, pid)?;
    log.info(
        "Launcher-0050",
        &format!(
            "Spawned the server process [pid : {pid}] with commit {} ({}, from {}).",
            resolved.commit.short(),
            resolved.mode.as_str(),
            resolved.origin
        ),
    );

    let deadline = Instant::now() + opts.boot_timeout;
    let ready = loop {
        if let Some(msg) = listener.recv(Duration::from_millis(20))?
            && notify::field(&msg, "READY") == Some("1")
        {
            break true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            process::remove_pid(&home, pid);
            log.severe(
                "Launcher-0063",
                &format!("The server exited during boot ({status})."),
            );
            break false;
        }
        if Instant::now() >= deadline {
            log.severe(
                "Launcher-0064",
                &format!(
                    "The server did not report READY within {} ms; stopping it.",
                    opts.boot_timeout.as_millis()
                ),
            );
            let _ = process::stop_pid(pid as i32, Duration::from_secs(5));
            let _ = child.wait();
            process::remove_pid(&home, pid);
            break false;
        }
    };
    if !ready {
        print_last_lines(&home, &log, &server_mark, &launcher_mark);
        return Ok(Outcome::Failed);
    }
    if !opts.verbose {
        // Copy the server's boot lines into the launcher log and onto the console, as JEUS does.
        let (text, _) = logfile::read_since(&home.logs(), "server", &server_mark);
        for line in text.lines() {
            log.raw(Level::Info, line);
        }
    }
    log.info(
        "Launcher-0034",
        &format!(
            "The server[{}] initialization completed successfully[pid : {pid}].",
            home.name
        ),
    );
    log.info(
        "Launcher-0040",
        &format!(
            "Successfully started the server. The server state is now RUNNING ({} ms).",
            t0.elapsed().as_millis()
        ),
    );
    // RUNNING, with its pid file: from here on a second start sees it running.
    drop(start_lock);
    // Under systemd (Type=notify) the launcher is the main process in --verbose: pass readiness on.
    let _ = notify::notify("READY=1\nSTATUS=RUNNING");
    if !opts.verbose {
        // The server runs on in its own session; the child handle is dropped without waiting.
        return Ok(Outcome::Ok);
    }
    Ok(attend(&home, &log, child, server.stop_timeout.0))
}

/// `--verbose`: stay until the server stops; SIGINT/SIGTERM stop it gracefully.
fn attend(home: &ServerHome, log: &Logger, mut child: Child, stop_timeout: Duration) -> Outcome {
    let pid = child.id();
    crate::signals::install();
    let mut stopping = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                process::remove_pid(home, pid);
                log.info("Launcher-0041", &format!("The server stopped ({status})."));
                return if status.success() {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                };
            }
            Ok(None) => {}
            Err(_) => return Outcome::Failed,
        }
        if !stopping && crate::signals::stop_requested() {
            stopping = true;
            // `stop-timeout` is live: the running server's current value, not the boot one.
            let argv = process::cmdline(pid as i32).unwrap_or_default();
            let stop_timeout = crate::server::stop_timeout_of(home, &argv).unwrap_or(stop_timeout);
            log.info(
                "Launcher-0080",
                &format!(
                    "Stopping the server[{}] [pid : {pid}] gracefully (up to {} ms).",
                    home.name,
                    stop_timeout.as_millis()
                ),
            );
            let _ = process::signal(pid as i32, libc::SIGTERM);
            let deadline = Instant::now() + stop_timeout;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    log.warn(
                        "Launcher-0092",
                        "The server did not stop within stop-timeout; killed it (SIGKILL).",
                    );
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The servers a domain home knows: those with a SERVER_HOME, and those of the pinned
/// configuration when this is the Master's domain home.
fn known_servers(domain_home: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut known: std::collections::BTreeSet<String> =
        std::fs::read_dir(domain_home.join("servers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    if let Ok(loaded) = crate::up::load_home(domain_home) {
        known.extend(loaded.domain.config.servers.into_keys());
    }
    known
}

fn print_last_lines(
    home: &ServerHome,
    log: &Logger,
    server_mark: &logfile::Mark,
    launcher_mark: &logfile::Mark,
) {
    let (server, _) = logfile::read_since(&home.logs(), "server", server_mark);
    let (console, _) = logfile::read_since(&home.logs(), "launcher", launcher_mark);
    // The launcher's own lines are in `console` too; keep the child's (not ours: no `[launcher]`).
    let console: Vec<&str> = console
        .lines()
        .filter(|l| !l.contains("] [launcher] [") && !l.starts_with("    "))
        .collect();
    let mut lines: Vec<&str> = server.lines().collect();
    let skip = lines.len().saturating_sub(20);
    lines.drain(..skip);
    let mut text = String::from("The server's last log lines:");
    for l in lines.iter().chain(console.iter().rev().take(20).rev()) {
        text.push_str("\n  ");
        text.push_str(l);
    }
    if lines.is_empty() && console.is_empty() {
        text.push_str("\n  (none)");
    }
    log.severe("Launcher-0066", &text);
}

/// `steward stop-server`: graceful, idempotent, not fooled by a stale pid file.
pub fn stop(domain_home: &std::path::Path, name: &str) -> Result<Outcome, LaunchError> {
    let home = ServerHome::new(domain_home, name)?;
    // Logging into SERVER_HOME only if it exists: stopping must not create a home.
    let log = if home.logs().is_dir() {
        launcher_log(&home, Echo::Stdout)?
    } else {
        Logger::new(None, Echo::Stdout, "launcher")
    };
    match process::running(&home) {
        Running::No => {
            // Never started here: a server of the domain, or a misspelt name?
            let known = known_servers(&home.domain_home);
            if !home.root.is_dir() && !known.contains(name) {
                let known = if known.is_empty() {
                    "none: no server was ever started here and nothing is pinned".to_owned()
                } else {
                    known.into_iter().collect::<Vec<_>>().join(", ")
                };
                log.severe(
                    "Launcher-0095",
                    &format!(
                        "There is no server named {name} in the domain home {} (known servers: {known}).",
                        home.domain_home.display()
                    ),
                );
                return Ok(Outcome::Failed);
            }
            log.info(
                "Launcher-0093",
                &format!("The server[{name}] is not running (no pid file)."),
            );
            Ok(Outcome::Ok)
        }
        Running::Stale { pid } => {
            let _ = std::fs::remove_file(home.pid_file());
            log.info(
                "Launcher-0093",
                &format!(
                    "The server[{name}] is not running: the pid file named pid {pid}, which is not \
                     this server (removed the stale pid file)."
                ),
            );
            Ok(Outcome::Ok)
        }
        Running::Yes { pid, argv } => {
            let timeout =
                crate::server::stop_timeout_of(&home, &argv).unwrap_or(Duration::from_secs(30));
            log.info(
                "Launcher-0090",
                &format!(
                    "Stopping the server[{name}] [pid : {pid}]: SIGTERM, waiting up to {} ms.",
                    timeout.as_millis()
                ),
            );
            match process::stop_pid(pid, timeout)? {
                Stopped::Gracefully { elapsed, .. } => log.info(
                    "Launcher-0091",
                    &format!(
                        "The server[{name}] stopped gracefully in {} ms.",
                        elapsed.as_millis()
                    ),
                ),
                Stopped::Killed { .. } => log.warn(
                    "Launcher-0092",
                    &format!(
                        "The server[{name}] did not stop within {} ms; killed it (SIGKILL).",
                        timeout.as_millis()
                    ),
                ),
            }
            // The server removes its pid file on a clean stop; after SIGKILL nobody did.
            process::remove_pid(&home, pid as u32);
            Ok(Outcome::Ok)
        }
    }
}
