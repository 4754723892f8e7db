use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The domain directory to run (default: the example domain built into steward, the same
    /// as the source tree's examples/domain1).
    dir: Option<PathBuf>,
    /// The domain home to run: made there if it does not exist, reused (with its pinned
    /// configuration and everything pushed to it) if it does. Default: a new directory under
    /// the system temp dir, kept after `up` ends (it says where).
    #[arg(long)]
    home: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the steward executable")?;
    let example;
    let (dir, label) = match args.dir {
        Some(dir) => {
            let label = dir.display().to_string();
            (dir, label)
        }
        None => {
            example = super::init::Example::extract()?;
            (
                example.path().to_owned(),
                super::init::EXAMPLE_LABEL.to_owned(),
            )
        }
    };
    runtime::up::run(&runtime::up::UpOptions {
        dir,
        label,
        home: args.home,
        exe,
    })?;
    Ok(ExitCode::SUCCESS)
}
