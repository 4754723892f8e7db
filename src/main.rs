//! `steward`: the one binary. Parses the command line and hands off to `commands::*`; all domain
//! logic lives in the `schema`, `reconciler` and `runtime` crates.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "steward",
    version,
    about = "Run a domain of application servers from a Git repository"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate one commit (default HEAD) or the working tree of a domain repository.
    Validate(commands::validate::Args),
    /// Dry run: what a change does to each server (exit 0 no change, 2 changes, 1 error).
    Diff(commands::diff::Args),
    /// Git server hooks.
    #[command(subcommand)]
    Hook(commands::hook::HookCommand),
    /// Print the settings reference.
    Schema {
        /// Markdown, as in docs/settings.md.
        #[arg(long)]
        markdown: bool,
    },
    /// Hash a password read from standard input, for security/accounts.toml.
    HashPassword,
    /// Create a domain home whose config/domain.git holds the first commit of a domain directory.
    Init(commands::init::Args),
    /// Run the Master Server in the foreground.
    Master(commands::master::Args),
    /// Start the Master in the background and exit once it is ready (`--verbose`: stay attached).
    StartMaster(commands::master::StartArgs),
    /// Stop the Master of a domain home gracefully (SIGTERM, then SIGKILL after --timeout).
    StopMaster(commands::master::StopArgs),
    /// The launcher: receive the configuration (Master, else Git URL, else the local cache),
    /// start the server in the background, wait until it is RUNNING.
    StartServer(commands::launcher::StartArgs),
    /// Stop a server gracefully (SIGTERM, then SIGKILL after its stop-timeout).
    StopServer(commands::launcher::StopArgs),
    /// The node agent of this machine (Node Manager): dials out to the Master, starts, stops and
    /// restarts the servers of its node through the launcher, restarts those that die.
    Node(commands::node::Args),
    /// The quick start: the Master and every server of a domain directory on this machine, in
    /// the foreground, with one combined log; Ctrl-C stops everything.
    Up(commands::up::Args),
    /// The console tool (jeusadmin): status, restarts, rollbacks and configuration edits
    /// through a Master.
    Admin(commands::admin::Args),
    /// The Managed Server process (started by the launcher).
    #[command(hide = true)]
    Server(commands::server::Args),
}

/// Output formats shared by commands that report problems.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Github,
    Markdown,
}

/// Every command writes through [`commands::out`] and [`commands::err`], which treat a reader
/// that went away (`steward validate | head -1`) as the end of the output, not as an error: the
/// command's own exit code stands and nothing panics.
fn main() -> ExitCode {
    // Before anything builds an HTTP client: reqwest (under gix) panics without a TLS provider.
    reconciler::tls::install_provider();
    let cli = Cli::parse_from(commands::launcher::rewrite_jeus(
        commands::hook::from_hook_line(std::env::args_os().collect()),
    ));
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Hook(cmd) => commands::hook::run(cmd),
        Command::Schema { markdown: _ } => commands::out(&schema::settings::markdown())
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::HashPassword => commands::hash_password(),
        Command::Init(args) => commands::init::run(args),
        Command::Master(args) => commands::master::run(args),
        Command::StartMaster(args) => commands::master::start(args),
        Command::StopMaster(args) => commands::master::stop(args),
        Command::StartServer(args) => commands::launcher::start(args),
        Command::StopServer(args) => commands::launcher::stop(args),
        Command::Server(args) => commands::server::run(args),
        Command::Node(args) => commands::node::run(args),
        Command::Up(args) => commands::up::run(args),
        Command::Admin(args) => commands::admin::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            commands::err(&format!("error: {e:#}\n"));
            ExitCode::from(1)
        }
    }
}
