use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The domain home to create (config/domain.git, lib/application/, servers/, .cache/). Must
    /// not exist, or be an empty directory.
    pub domain_home: PathBuf,
    /// The domain directory whose files become the first commit. Relative paths are taken from the
    /// current directory, so the default only works from the top of the steward source tree.
    #[arg(long, default_value = "examples/domain1")]
    pub from: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the steward executable")?;
    match reconciler::init::init(&args.domain_home, &args.from, &exe) {
        Ok(done) => {
            if !done.warnings.is_empty() {
                super::err(&done.warnings);
            }
            super::out(&format!(
                "created domain home {} for domain {}: {}/config/domain.git, main pinned at {}\n",
                done.home.display(),
                done.domain,
                done.home.display(),
                done.commit.short()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(reconciler::init::InitError::Invalid { dir, report }) => {
            super::err(&report.render_human(super::color(&std::io::stderr())));
            super::err(&format!(
                "error: {} is not a valid domain; nothing was created\n",
                dir.display()
            ));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}
