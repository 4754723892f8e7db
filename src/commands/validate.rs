use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// The domain repository (default: the current directory).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The commit to validate.
    #[arg(long, default_value = "HEAD", conflicts_with = "worktree")]
    rev: String,
    /// Validate the files on disk instead of a commit.
    #[arg(long)]
    worktree: bool,
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tree = if args.worktree {
        super::worktree(&args.repo)
    } else {
        let repo = super::open_repo(&args.repo)?;
        super::tree_at(&repo, &args.rev)?
    };
    let validation = schema::validate(tree.as_ref());
    let report = &validation.report;
    let out = match args.format {
        Format::Human => report.render_human(super::color(&std::io::stdout())),
        Format::Json => serde_json::to_string_pretty(&report.to_json())? + "\n",
        Format::Github => report.render_github(),
        Format::Markdown => {
            bail!("`--format markdown` is for `steward diff`; use human, json or github")
        }
    };
    // A reader that stops early (`| head -1`) is not an error of the validation.
    super::out(&out)?;
    let valid = report.is_valid();
    // A large domain takes measurable time to free, and the process is about to exit.
    std::mem::forget(validation);
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
