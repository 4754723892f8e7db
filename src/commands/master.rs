use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

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
    /// Mirror mode: fetch the branch from this Git URL (a bare path, file://, http://) instead of
    /// hosting the repository. Default: `[master.upstream] url` of the pinned commit, if any.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Mirror mode: how often to fetch, e.g. `30s`, `500ms`.
    #[arg(long, value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// Mirror mode: the environment variable holding the webhook secret.
    #[arg(long, value_name = "VAR")]
    pub webhook_secret_env: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
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
    if let Some(var) = &args.webhook_secret_env {
        let secret = std::env::var(var)
            .with_context(|| format!("--webhook-secret-env: ${var} is not set"))?;
        opts.webhook_secret = Some(secret);
    }
    reconciler::master::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
