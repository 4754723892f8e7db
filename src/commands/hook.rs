use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum HookCommand {
    /// Run as a Git pre-receive hook: validate every pushed commit, refuse the push if any is invalid.
    PreReceive,
    /// Install the pre-receive hook into a bare repository.
    Install {
        #[arg(long)]
        repo: PathBuf,
    },
}

/// `steward hook PATH/pre-receive`, as a hook's `#!` line starts it (see
/// [`reconciler::hook::install`]), becomes `steward hook pre-receive`.
pub fn from_hook_line(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let started = argv.len() == 3
        && argv[1] == reconciler::hook::SHEBANG_ARG
        && reconciler::hook::started_by_hook_line(std::path::Path::new(&argv[2]));
    if started {
        argv[2] = "pre-receive".into();
    }
    argv
}

pub fn run(cmd: HookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HookCommand::Install { repo } => {
            let exe = std::env::current_exe().context("cannot find the steward executable")?;
            let hook = reconciler::hook::install(&repo, &exe)?;
            super::out(&format!("installed {}\n", hook.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        HookCommand::PreReceive => pre_receive(),
    }
}

fn pre_receive() -> anyhow::Result<ExitCode> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let updates = reconciler::hook::parse_pre_receive(&input)?;
    let repo = reconciler::git::Repo::open_from_env()
        .context("cannot open the repository the hook runs in")?;
    let verdict = reconciler::hook::check(&repo, &updates)?;
    // Git shows the hook's stderr to the pusher, each line prefixed `remote:`.
    super::err(&verdict.messages);
    Ok(if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
