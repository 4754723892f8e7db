//! `steward node --domain-home DIR --master-url URL --node NAME`: the node agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use runtime::launcher::credentials;

use super::code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// This machine's domain home (its cache, and the SERVER_HOMEs of its servers).
    #[arg(long, value_name = "DIR")]
    pub domain_home: PathBuf,
    /// The Master (`HOST:PORT`, `http://…` or `https://…`).
    #[arg(long, value_name = "URL")]
    pub master_url: String,
    /// Which node this machine is: a `[nodes.NAME]` of domain.toml (or, without `[nodes]`, the
    /// `node` its servers give).
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// User for the Master (default: $STEWARD_USER, else DOMAIN_HOME/config/node-credentials).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Password (default: $STEWARD_PASSWORD, else the credentials file).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Also write the log to standard error (under systemd, into the journal).
    #[arg(long)]
    pub console: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // -u/-p, else the environment, else the domain home's node credentials file.
    let credentials = match (
        args.user.or_else(|| env("STEWARD_USER")),
        args.password.or_else(|| env("STEWARD_PASSWORD")),
    ) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => {
            credentials::read_at(args.domain_home.join("config").join("node-credentials"))?
        }
        _ => anyhow::bail!(
            "give both a user and a password (-u/-p or STEWARD_USER/STEWARD_PASSWORD)"
        ),
    };
    let opts = runtime::node::Options {
        domain_home: args.domain_home,
        master_url: args.master_url,
        node: args.node,
        credentials,
        exe: std::env::current_exe().context("cannot find the steward executable")?,
        console: args.console,
    };
    Ok(code(runtime::node::run(opts)?))
}
