//! `steward start-server`, `steward stop-server`, and the JEUS spellings
//! (`startManagedServer -domain d -server s -u U -p P -masterurl H:P -giturl URL -verbose`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use runtime::launcher::{self, StartOptions, source::Sources};

use super::code;

/// Which domain home: a directory, or a domain name under `$STEWARD_HOME/domains/`.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The domain home (DOMAIN_HOME).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "domain",
        conflicts_with = "domain"
    )]
    pub domain_home: Option<PathBuf>,
    /// A domain name: DOMAIN_HOME is $STEWARD_HOME/domains/NAME (JEUS `-domain`).
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// The server to start or stop.
    #[arg(long, value_name = "NAME")]
    pub server: String,
}

impl Target {
    fn domain_home(&self) -> anyhow::Result<PathBuf> {
        match (&self.domain_home, &self.domain) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(name)) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    bail!("`{name}` is not a domain name");
                }
                Ok(steward_home()?.join("domains").join(name))
            }
            (None, None) => bail!("give --domain-home DIR or --domain NAME"),
        }
    }
}

/// `$STEWARD_HOME`, else `steward` in the user's data directory as the `directories` crate names
/// it (`$XDG_DATA_HOME/steward`, else `~/.local/share/steward` on Linux).
pub fn steward_home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("STEWARD_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let dirs = directories::BaseDirs::new()
        .context("STEWARD_HOME is not set and this user has no home directory")?;
    Ok(dirs.data_dir().join("steward"))
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub target: Target,
    /// The Master to receive the configuration from (DEPENDENT boot).
    #[arg(long, value_name = "HOST:PORT")]
    pub master_url: Option<String>,
    /// A Git repository to fetch the configuration from when the Master cannot give it
    /// (INDEPENDENT boot): its refs/steward/pinned, else --branch.
    #[arg(long, value_name = "URL")]
    pub git_url: Option<String>,
    /// The branch of --git-url used when it has no refs/steward/pinned.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// User for the Master and the Git URL (default: $STEWARD_USER).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Password (default: $STEWARD_PASSWORD).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// How long to wait for a host that does not answer (a refused connection fails at once).
    #[arg(long, default_value = "3s", value_parser = schema::values::parse_duration)]
    pub connect_timeout: Duration,
    /// How long a connected Master may take to answer (checking a password is deliberately slow).
    #[arg(long, default_value = "15s", value_parser = schema::values::parse_duration)]
    pub response_timeout: Duration,
    /// How long the server may take to report READY.
    #[arg(long, default_value = "60s", value_parser = schema::values::parse_duration)]
    pub boot_timeout: Duration,
    /// Stay attached, printing the server's log until it stops; Ctrl-C stops it gracefully.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: Target,
}

pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let domain_home = args.target.domain_home()?;
    // -u/-p, else the environment, else the domain home's credentials file.
    let (user, password) = match (
        args.user.or_else(|| env("STEWARD_USER")),
        args.password.or_else(|| env("STEWARD_PASSWORD")),
    ) {
        (None, None) => match launcher::credentials::read(&domain_home)? {
            Some((u, p)) => (Some(u), Some(p)),
            None => (None, None),
        },
        given => given,
    };
    let opts = StartOptions {
        domain_home,
        server: args.target.server,
        sources: Sources {
            master_url: args.master_url,
            git_url: args.git_url,
            branch: args.branch,
            user,
            password,
            connect_timeout: args.connect_timeout,
            response_timeout: args.response_timeout,
        },
        boot_timeout: args.boot_timeout,
        verbose: args.verbose,
        exe: std::env::current_exe().context("cannot find the steward executable")?,
    };
    Ok(code(launcher::start(&opts)?))
}

pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let home = args.target.domain_home()?;
    Ok(code(launcher::stop(&home, &args.target.server)?))
}

/// Rewrites the JEUS spellings into ours before clap sees them: `startManagedServer` →
/// `start-server`, `stopServer` → `stop-server`, and their single-dash long options.
pub fn rewrite_jeus(mut argv: Vec<OsString>) -> Vec<OsString> {
    let sub = argv.get(1).and_then(|s| s.to_str()).map(str::to_owned);
    let new_sub = match sub.as_deref() {
        Some("startManagedServer") => "start-server",
        Some("stopServer") | Some("stopManagedServer") => "stop-server",
        _ => return argv,
    };
    argv[1] = new_sub.into();
    for a in argv.iter_mut().skip(2) {
        let mapped = match a.to_str() {
            Some("-domain") => "--domain",
            Some("-domainhome") => "--domain-home",
            Some("-server") => "--server",
            Some("-masterurl") => "--master-url",
            Some("-giturl") => "--git-url",
            Some("-verbose") => "--verbose",
            _ => continue,
        };
        *a = mapped.into();
    }
    argv
}
