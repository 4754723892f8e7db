//! `steward master` (foreground), `steward start-master` (in the background, through the same
//! launcher machinery as `start-server`: detached, ready on sd_notify) and `steward stop-master`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use runtime::background::{self, Attending, Boot};
use runtime::logfile::{self, Echo, Level, LogFile, Logger, Rotation};

#[derive(clap::Args)]
pub struct Args {
    /// The domain home made by `steward init`.
    #[arg(long)]
    pub domain_home: PathBuf,
    /// Listen here instead of `[master] listen` of the pinned commit.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The branch whose head is validated and pinned (in mirror mode: the upstream's branch).
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Mirror mode: fetch the branch from this Git URL (a bare path, file://, http://, https://)
    /// instead of hosting the repository. Default: `[master.upstream] url` of the pinned commit, if any.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Mirror mode: how often to fetch, e.g. `30s`, `500ms`.
    #[arg(long, value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// Mirror mode: the environment variable holding the webhook secret.
    #[arg(long, value_name = "VAR")]
    pub webhook_secret_env: Option<String>,
    /// How long a push's pre-receive step (validation) may run, from the end of its upload, before
    /// the push is stopped and refused, e.g. `60s`.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub pre_receive_timeout: String,
    /// Write the log to DIR/master_<YYYYMMDD>.log<NNNNN> (rotated daily and by size) instead of
    /// standard error.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// With --log-dir: also print log lines on standard error.
    #[arg(long, hide = true)]
    pub console: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.log_dir {
        let file = LogFile::open(dir, "master", Rotation::default())?;
        let echo = if args.console {
            Echo::Stderr
        } else {
            Echo::None
        };
        let logger = Logger::new(Some(file), echo, "master");
        reconciler::master::log::set_sink(Box::new(move |level, line| {
            use reconciler::master::log::Level as L;
            let level = match level {
                L::Severe => Level::Severe,
                L::Warning => Level::Warning,
                L::Info => Level::Info,
            };
            logger.raw(level, line);
        }));
    }
    let mut opts = reconciler::master::Options::new(args.domain_home);
    opts.listen = args.listen;
    opts.branch = if args.branch.starts_with("refs/") {
        args.branch
    } else {
        format!("refs/heads/{}", args.branch)
    };
    opts.upstream = args.upstream;
    if let Some(p) = &args.poll_interval {
        let d = schema::values::parse_duration(p).map_err(anyhow::Error::msg)?;
        if d.is_zero() {
            bail!("--poll-interval must be longer than 0");
        }
        opts.poll_interval = Some(d);
    }
    let d =
        schema::values::parse_duration(&args.pre_receive_timeout).map_err(anyhow::Error::msg)?;
    if d.is_zero() {
        bail!("--pre-receive-timeout must be longer than 0");
    }
    opts.pre_receive_timeout = d;
    if let Some(var) = &args.webhook_secret_env {
        let secret = std::env::var(var)
            .with_context(|| format!("--webhook-secret-env: ${var} is not set"))?;
        opts.webhook_secret = Some(secret);
    }
    match reconciler::master::run(opts) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // With a log file, the reason the Master stopped belongs in it, with an id, once.
        Err(e) if args.log_dir.is_some() => {
            reconciler::master::log::severe("Master-0006", &format!("The Master cannot run: {e}"));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub master: Args,
    /// Stay attached: the Master's log on this terminal; Ctrl-C stops it gracefully.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// How long the Master may take to become ready before it is stopped and the start fails.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub boot_timeout: String,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// The domain home whose Master to stop.
    #[arg(long)]
    pub domain_home: PathBuf,
    /// How long to wait after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: String,
}

/// The log of `start-master` and `stop-master`: their own lines go into the Master's log
/// (`DOMAIN_HOME/logs/master_*`, thread `launcher`) and onto standard output.
fn launcher_log(logs: &Path) -> anyhow::Result<Logger> {
    let file = LogFile::open(logs, "master", Rotation::default())?;
    Ok(Logger::new(Some(file), Echo::Stdout, "launcher"))
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
pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let exe = std::env::current_exe().context("cannot find the steward executable")?;
    let home = std::path::absolute(&args.master.domain_home)
        .with_context(|| format!("{}", args.master.domain_home.display()))?;
    if !home.join("config/domain.git/HEAD").is_file() {
        bail!(
            "{}: not a domain home (no config/domain.git); create one with `steward init {0}`",
            home.display()
        );
    }
    let boot_timeout =
        schema::values::parse_duration(&args.boot_timeout).map_err(anyhow::Error::msg)?;
    let logs = match &args.master.log_dir {
        Some(d) => std::path::absolute(d).unwrap_or(d.clone()),
        None => home.join("logs"),
    };
    let log = launcher_log(&logs)?;
    log.info(
        "Master-0050",
        &format!("Starting the Master of the domain home {}.", home.display()),
    );
    if let Some(pid) = reconciler::master::running(&home)? {
        log.severe(
            "Master-0053",
            &format!(
                "The Master is already running{}; stop it first with stop-master.",
                pid.map(|p| format!(" [pid : {p}]")).unwrap_or_default()
            ),
        );
        return Ok(ExitCode::from(1));
    }

    let m = &args.master;
    let mut cmd = Command::new(&exe);
    cmd.arg("master")
        .arg("--domain-home")
        .arg(&home)
        .arg("--log-dir")
        .arg(&logs)
        .args(["--branch", &m.branch])
        .args(["--pre-receive-timeout", &m.pre_receive_timeout]);
    if let Some(l) = m.listen {
        cmd.args(["--listen", &l.to_string()]);
    }
    if let Some(u) = &m.upstream {
        cmd.args(["--upstream", u]);
    }
    if let Some(p) = &m.poll_interval {
        cmd.args(["--poll-interval", p]);
    }
    if let Some(v) = &m.webhook_secret_env {
        cmd.args(["--webhook-secret-env", v]);
    }
    if args.verbose {
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
    let listener = runtime::notify::Listener::bind(&home.join("config"))?;
    if args.verbose {
        // Before the spawn: a stop asked for while the Master boots must stop it once it is
        // ready, not kill this process and leave the Master running on its own.
        runtime::signals::install();
    }
    let mut child = background::spawn_detached(&mut cmd, &listener)?;
    let pid = child.id();
    log.info(
        "Master-0051",
        &format!("Spawned the Master process [pid : {pid}]."),
    );
    let status = match background::wait_ready(&listener, &mut child, boot_timeout)? {
        Boot::Ready(msg) => runtime::notify::field(&msg, "STATUS")
            .unwrap_or("ready")
            .to_owned(),
        Boot::Exited(status) => {
            let lines = master_lines(&logs, &mark);
            log.severe(
                "Master-0054",
                &format!(
                    "The Master exited during its start ({status}). Its last lines:\n{}",
                    tail(&lines)
                ),
            );
            return Ok(ExitCode::from(1));
        }
        Boot::TimedOut => {
            log.severe(
                "Master-0055",
                &format!(
                    "The Master did not report READY within {} ms; stopping it. Its last lines:\n{}",
                    boot_timeout.as_millis(),
                    tail(&master_lines(&logs, &mark))
                ),
            );
            let _ = runtime::process::stop_pid(pid as i32, Duration::from_secs(5));
            let _ = child.wait();
            return Ok(ExitCode::from(1));
        }
    };
    if !args.verbose {
        // The Master's start lines on the console, as the server launcher shows the boot log.
        for line in master_lines(&logs, &mark) {
            super::out(&format!("{line}\n"))?;
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
    let _ = runtime::notify::notify("READY=1\nSTATUS=RUNNING");
    if !args.verbose {
        // The Master runs on in its own session; the child handle is dropped without waiting.
        return Ok(ExitCode::SUCCESS);
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
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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

/// `steward stop-master`: graceful (SIGTERM, then SIGKILL after --timeout), idempotent, and only
/// ever signals the process that holds the domain home's Master lock.
pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let home = std::path::absolute(&args.domain_home)
        .with_context(|| format!("{}", args.domain_home.display()))?;
    let timeout = schema::values::parse_duration(&args.timeout).map_err(anyhow::Error::msg)?;
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
        match reconciler::master::running(&home)? {
            None => {
                log.info("Master-0058", "The Master is not running.");
                return Ok(ExitCode::SUCCESS);
            }
            Some(Some(pid)) => break pid,
            Some(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(None) => bail!(
                "a Master holds the lock of {} but wrote no pid",
                home.display()
            ),
        }
    };
    log.info(
        "Master-0056",
        &format!(
            "Stopping the Master [pid : {pid}]: SIGTERM, waiting up to {} ms.",
            timeout.as_millis()
        ),
    );
    match runtime::process::stop_pid(pid as i32, timeout)? {
        runtime::process::Stopped::Gracefully { elapsed, .. } => log.info(
            "Master-0057",
            &format!(
                "The Master stopped gracefully in {} ms.",
                elapsed.as_millis()
            ),
        ),
        runtime::process::Stopped::Killed { .. } => log.warn(
            "Master-0059",
            &format!(
                "The Master did not stop within {} ms; killed it (SIGKILL).",
                timeout.as_millis()
            ),
        ),
    }
    Ok(ExitCode::SUCCESS)
}
