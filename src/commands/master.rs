//! `steward master`, `start-master` and `stop-master`: their command lines. The work is in
//! `runtime::master::launch`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::code;
use runtime::master::Options;
use runtime::master::launch::{self, LogTo, StartOptions};

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
    /// How long a push's pre-receive step (git's receive and the hooks it runs, holding the
    /// decision lock) may run, from the end of its upload, before the push is stopped and
    /// refused, e.g. `60s`.
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
    let log = args.log_dir.clone().map(|dir| LogTo {
        dir,
        console: args.console,
    });
    Ok(code(launch::run(options(args)?, log)?))
}

/// The Master's options from the command line.
fn options(args: Args) -> anyhow::Result<Options> {
    let mut opts = Options::new(args.domain_home);
    opts.listen = args.listen;
    opts.branch = if args.branch.starts_with("refs/") {
        args.branch
    } else {
        format!("refs/heads/{}", args.branch)
    };
    opts.upstream = args.upstream;
    if let Some(p) = &args.poll_interval {
        let d = schema::values::parse_duration(p)?;
        if d.is_zero() {
            bail!("--poll-interval must be longer than 0");
        }
        opts.poll_interval = Some(d);
    }
    let d = schema::values::parse_duration(&args.pre_receive_timeout)?;
    if d.is_zero() {
        bail!("--pre-receive-timeout must be longer than 0");
    }
    opts.pre_receive_timeout = d;
    if let Some(var) = &args.webhook_secret_env {
        let secret = std::env::var(var)
            .with_context(|| format!("--webhook-secret-env: ${var} is not set"))?;
        opts.webhook_secret = Some(secret);
    }
    Ok(opts)
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

/// `steward start-master`.
pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let boot_timeout = schema::values::parse_duration(&args.boot_timeout)?;
    let m = args.master;
    let mut master_args = vec![
        "--branch".to_owned(),
        m.branch,
        "--pre-receive-timeout".to_owned(),
        m.pre_receive_timeout,
    ];
    let given = [
        ("--listen", m.listen.map(|l| l.to_string())),
        ("--upstream", m.upstream),
        ("--poll-interval", m.poll_interval),
        ("--webhook-secret-env", m.webhook_secret_env),
    ];
    for (flag, value) in given {
        if let Some(v) = value {
            master_args.extend([flag.to_owned(), v]);
        }
    }
    let opts = StartOptions {
        exe: std::env::current_exe().context("cannot find the steward executable")?,
        domain_home: m.domain_home,
        log_dir: m.log_dir,
        master_args,
        verbose: args.verbose,
        boot_timeout,
    };
    Ok(code(launch::start(&opts)?))
}

/// `steward stop-master`.
pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let timeout = schema::values::parse_duration(&args.timeout)?;
    Ok(code(launch::stop(&args.domain_home, timeout)?))
}
