use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The domain home made by `steward init`.
    #[arg(long)]
    pub domain_home: PathBuf,
    /// Listen here instead of `[master] listen` of the pinned commit.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The branch whose head is validated and pinned.
    #[arg(long, default_value = "main")]
    pub branch: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut opts = reconciler::master::Options::new(args.domain_home);
    opts.listen = args.listen;
    opts.branch = if args.branch.starts_with("refs/") {
        args.branch
    } else {
        format!("refs/heads/{}", args.branch)
    };
    reconciler::master::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
