use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The domain directory to run (default: the example domain, `examples/domain1`).
    #[arg(default_value = "examples/domain1")]
    dir: PathBuf,
    /// Where to make the domain home (reused if it is one already). Default: a new directory
    /// under the system temp dir.
    #[arg(long)]
    home: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the steward executable")?;
    runtime::up::run(&runtime::up::UpOptions {
        dir: args.dir,
        home: args.home,
        exe,
    })?;
    Ok(ExitCode::SUCCESS)
}
