//! `steward admin`: the console tool (jeusadmin). Each subcommand parses its flags here and calls
//! `runtime::admin`; the shared flags (`--master`, `--format`) come first.

use std::process::ExitCode;

use runtime::admin::Connection;

#[derive(clap::Args)]
pub struct Args {
    /// The Master: `http://HOST:PORT` or `https://HOST:PORT` (default: STEWARD_MASTER, else
    /// http://127.0.0.1:9736). Credentials come from STEWARD_USER/STEWARD_PASSWORD or the
    /// 0600 file ~/.config/steward/credentials, never from the command line.
    #[arg(long, global = true)]
    master: Option<String>,
    /// Output: for people, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    format: Format,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Format {
    Human,
    Json,
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conn = Connection::resolve(args.master.as_deref())?;
    let _ = (conn, args.format);
    match args.command {}
}
