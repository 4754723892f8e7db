//! `steward server`: the Managed Server process. Hidden from `--help`: the launcher starts it
//! (or systemd, see docs/systemd.md).

use std::path::PathBuf;
use std::process::ExitCode;

use runtime::server::{self, Mode};

#[derive(Clone, Copy, clap::ValueEnum, Debug)]
pub enum ModeArg {
    Dependent,
    Independent,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_name = "DIR")]
    pub domain_home: PathBuf,
    #[arg(long, value_name = "NAME")]
    pub server: String,
    /// The commit to run; it must be in DOMAIN_HOME/.cache/domain.git.
    #[arg(long, value_name = "ID")]
    pub commit: String,
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// Also print log lines on stderr.
    #[arg(long)]
    pub console: bool,
    /// The Master to report to and follow (`HOST:PORT`); credentials from STEWARD_USER and
    /// STEWARD_PASSWORD.
    #[arg(long, value_name = "HOST:PORT")]
    pub master_url: Option<String>,
    /// `process.args` of the configuration.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    server::run(server::Options {
        domain_home: args.domain_home,
        name: args.server,
        commit: args.commit,
        mode: match args.mode {
            ModeArg::Dependent => Mode::Dependent,
            ModeArg::Independent => Mode::Independent,
        },
        console: args.console,
        args: args.args,
        master_url: args.master_url,
        credentials: std::env::var("STEWARD_USER")
            .ok()
            .zip(std::env::var("STEWARD_PASSWORD").ok()),
    })?;
    Ok(ExitCode::SUCCESS)
}
