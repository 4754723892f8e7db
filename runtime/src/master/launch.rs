//! `steward master` in the foreground, `steward start-master` (in the background, through the same
//! machinery as `start-server`: detached, ready on sd_notify) and `steward stop-master`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{MasterError, Options};
use crate::background::{self, Attending, BackgroundError, Boot};
use crate::launcher::Outcome;
use crate::logfile::{self, Echo, Level, LogError, LogFile, Logger, Rotation};
use crate::notify::{self, NotifyError};
use crate::process::{self, ProcessError, Stopped};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: not a domain home (no config/domain.git); create one with `steward init {0}`")]
    NotADomainHome(PathBuf),
    #[error("a Master holds the lock of {0} but wrote no pid")]
    NoPid(PathBuf),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    Background(#[from] BackgroundError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where the foreground Master logs: a rotating file under `dir` (and, with `console`, standard
/// error too), else standard error only.
pub struct LogTo {
    pub dir: PathBuf,
    pub console: bool,
}

/// `steward master`: runs the Master in this process until it is stopped.
pub fn run(opts: Options, log: Option<LogTo>) -> Result<Outcome, LaunchError> {
    let logged = log.is_some();
    // One subscriber for the whole process: the Master's tasks log through `super::log`.
    let logger = match log {
        Some(to) => {
            let file = LogFile::open(&to.dir, "master", Rotation::default())?;
            let echo = if to.console { Echo::Stderr } else { Echo::None };
            Logger::new(Some(file), echo, "master")
        }
        None => Logger::new(None, Echo::Stderr, "master"),
    };
    logger.set_level(Level::Info);
    logger.install();
    match super::run(opts) {
        Ok(()) => Ok(Outcome::Ok),
        // With a log file, the reason the Master stopped belongs in it, with an id, once.
        Err(e) if logged => {
            super::log::severe("Master-0006", &format!("The Master cannot run: {e}"));
            Ok(Outcome::Failed)
        }
        Err(e) => Err(e.into()),
    }
}

/// What `start-master` was told.
pub struct StartOptions {
    /// The `steward` executable (the Master runs it).
    pub exe: PathBuf,
    pub domain_home: PathBuf,
    /// Default: `DOMAIN_HOME/logs`.
    pub log_dir: Option<PathBuf>,
    /// The options passed on to `steward master` (all but `--domain-home` and `--log-dir`).
    pub master_args: Vec<String>,
    pub verbose: bool,
    pub boot_timeout: Duration,
}

/// The log of `start-master` and `stop-master`: their own lines go into the Master's log
/// (`DOMAIN_HOME/logs/master_*`, thread `launcher`) and onto standard output.
fn launcher_log(logs: &Path) -> Result<Logger, LaunchError> {
    let file = LogFile::open(logs, "master", Rotation::default())?;
    let log = Logger::new(Some(file), Echo::Stdout, "launcher");
    log.install();
    Ok(log)
}

/// Lines the Master wrote to its log since `mark` (not the launcher's own).
fn master_lines(logs: &Path, mark: &logfile::Mark) -> Vec<String> {
    let (text, _) = logfile::read_since(logs, "master", mark);
    let mut out: Vec<String> = Vec::new();
    let mut ours = false;
    for line in text.lines() {
        // Continuation lines (indented) belong to the line before them.
        if !line.starts_with("    ") {
            ours = !line.contains("] [launcher] [");
        }
        if ours {
            out.push(line.to_owned());
        }
    }
    out
}

/// `steward start-master`.
pub fn start(opts: &StartOptions) -> Result<Outcome, LaunchError> {
    let t0 = Instant::now();
    let home = std::path::absolute(&opts.domain_home)?;
    if !home.join("config/domain.git/HEAD").is_file() {
        return Err(LaunchError::NotADomainHome(home));
    }
    let logs = match &opts.log_dir {
        Some(d) => std::path::absolute(d).unwrap_or(d.clone()),
        None => home.join("logs"),
    };
    let log = launcher_log(&logs)?;
    log.info(
        "Master-0050",
        &format!("Starting the Master of the domain home {}.", home.display()),
    );
    if let Some(pid) = super::running(&home)? {
        log.severe(
            "Master-0053",
            &format!(
                "The Master is already running{}; stop it first with stop-master.",
                pid.map(|p| format!(" [pid : {p}]")).unwrap_or_default()
            ),
        );
        return Ok(Outcome::Failed);
    }

    let mut cmd = Command::new(&opts.exe);
    cmd.arg("master")
        .arg("--domain-home")
        .arg(&home)
        .arg("--log-dir")
        .arg(&logs)
        .args(&opts.master_args);
    if opts.verbose {
        cmd.arg("--console")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else if let Some(f) = log.clone_file() {
        // What the Master prints outside its logger (an error that stops its start, a panic) is
        // kept in the same log.
        cmd.stdout(f.try_clone()?).stderr(f);
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd.current_dir(&home);
    let mark = logfile::mark(&logs, "master");
    // The notify socket lives beside the Master's lock; the listener removes it when dropped.
    let listener = notify::Listener::bind(&home.join("config"))?;
    if opts.verbose {
        // Before the spawn: a stop asked for while the Master boots must stop it once it is
        // ready, not kill this process and leave the Master running on its own.
        crate::signals::install();
    }
    let mut child = background::spawn_detached(&mut cmd, &listener)?;
    let pid = child.id();
    log.info(
        "Master-0051",
        &format!("Spawned the Master process [pid : {pid}]."),
    );
    let status = match background::wait_ready(&listener, &mut child, opts.boot_timeout)? {
        Boot::Ready(msg) => notify::field(&msg, "STATUS").unwrap_or("ready").to_owned(),
        Boot::Exited(status) => {
            let lines = master_lines(&logs, &mark);
            log.severe(
                "Master-0054",
                &format!(
                    "The Master exited during its start ({status}). Its last lines:\n{}",
                    tail(&lines)
                ),
            );
            return Ok(Outcome::Failed);
        }
        Boot::TimedOut => {
            log.severe(
                "Master-0055",
                &format!(
                    "The Master did not report READY within {} ms; stopping it. Its last lines:\n{}",
                    opts.boot_timeout.as_millis(),
                    tail(&master_lines(&logs, &mark))
                ),
            );
            let _ = process::stop_pid(pid as i32, Duration::from_secs(5));
            let _ = child.wait();
            return Ok(Outcome::Failed);
        }
    };
    if !opts.verbose {
        // The Master's start lines on the console, as the server launcher shows the boot log.
        // A reader that went away (`| head`) only ends the listing.
        let mut out = std::io::stdout().lock();
        for line in master_lines(&logs, &mark) {
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    }
    log.info(
        "Master-0052",
        &format!(
            "The Master is RUNNING [pid : {pid}] ({status}), started in {} ms. Log: {}",
            t0.elapsed().as_millis(),
            log.path()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    );
    // Under systemd (Type=notify) with --verbose, this process is the main one: pass it on.
    let _ = notify::notify("READY=1\nSTATUS=RUNNING");
    if !opts.verbose {
        // The Master runs on in its own session; the child handle is dropped without waiting.
        return Ok(Outcome::Ok);
    }
    let stop_timeout = Duration::from_secs(30);
    let status = background::attend(&mut child, stop_timeout, |step| match step {
        Attending::Stopping => log.info(
            "Master-0056",
            &format!(
                "Stopping the Master [pid : {pid}]: SIGTERM, waiting up to {} ms.",
                stop_timeout.as_millis()
            ),
        ),
        Attending::Killed => log.warn(
            "Master-0059",
            &format!(
                "The Master did not stop within {} ms; killed it (SIGKILL).",
                stop_timeout.as_millis()
            ),
        ),
    })?;
    log.info("Master-0057", &format!("The Master stopped ({status})."));
    Ok(if status.success() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// The last lines of a start, indented, or `(none)`.
fn tail(lines: &[String]) -> String {
    let skip = lines.len().saturating_sub(20);
    let shown: Vec<&str> = lines[skip..].iter().map(String::as_str).collect();
    if shown.is_empty() {
        "  (none)".to_owned()
    } else {
        format!("  {}", shown.join("\n  "))
    }
}

/// `steward stop-master`: graceful (SIGTERM, then SIGKILL after `timeout`), idempotent, and only
/// ever signals the process that holds the domain home's Master lock.
pub fn stop(domain_home: &Path, timeout: Duration) -> Result<Outcome, LaunchError> {
    let home = std::path::absolute(domain_home)?;
    let logs = home.join("logs");
    // Stopping must not create a domain home's directories.
    let log = if logs.is_dir() {
        launcher_log(&logs)?
    } else {
        Logger::new(None, Echo::Stdout, "launcher")
    };
    // A Master that just took its lock writes its pid right after: wait a moment for it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let pid = loop {
        match super::running(&home)? {
            None => {
                log.info("Master-0058", "The Master is not running.");
                return Ok(Outcome::Ok);
            }
            Some(Some(pid)) => break pid,
            Some(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(None) => return Err(LaunchError::NoPid(home)),
        }
    };
    log.info(
        "Master-0056",
        &format!(
            "Stopping the Master [pid : {pid}]: SIGTERM, waiting up to {} ms.",
            timeout.as_millis()
        ),
    );
    match process::stop_pid(pid as i32, timeout)? {
        Stopped::Gracefully { elapsed, .. } => log.info(
            "Master-0057",
            &format!(
                "The Master stopped gracefully in {} ms.",
                elapsed.as_millis()
            ),
        ),
        Stopped::Killed { .. } => log.warn(
            "Master-0059",
            &format!(
                "The Master did not stop within {} ms; killed it (SIGKILL).",
                timeout.as_millis()
            ),
        ),
    }
    Ok(Outcome::Ok)
}
