use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The domain home to create (config/domain.git, lib/application/, servers/, .cache/). Must
    /// not exist, or be an empty directory.
    pub domain_home: PathBuf,
    /// The domain directory whose files become the first commit (default: the example domain
    /// built into steward, the same as the source tree's examples/domain1).
    #[arg(long)]
    pub from: Option<PathBuf>,
}

/// The example domain (`examples/domain1`), embedded by build.rs: relative path, content, and
/// whether the file is executable.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/example_domain.rs"));
}

/// How the first commit names the embedded example.
pub const EXAMPLE_LABEL: &str = "the example domain built into steward (examples/domain1)";

/// The embedded example written out to a temporary directory, removed when dropped.
pub struct Example(PathBuf);

impl Example {
    pub fn extract() -> anyhow::Result<Example> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("steward-example-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let example = Example(dir);
        for (rel, bytes, exec) in embedded::FILES {
            let path = example.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("{}: cannot create", parent.display()))?;
            }
            std::fs::write(&path, bytes)
                .with_context(|| format!("{}: cannot write", path.display()))?;
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("{}: cannot set its mode", path.display()))?;
        }
        Ok(example)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the steward executable")?;
    let example;
    let (from, label) = match &args.from {
        Some(dir) => (dir.as_path(), dir.display().to_string()),
        None => {
            example = Example::extract()?;
            (example.path(), EXAMPLE_LABEL.to_owned())
        }
    };
    match reconciler::init::init(&args.domain_home, from, &label, &exe) {
        Ok(done) => {
            if !done.warnings.is_empty() {
                super::err(&done.warnings);
            }
            super::out(&format!(
                "created domain home {} for domain {}: {}/config/domain.git, main pinned at {}\n",
                done.home.display(),
                done.domain.config.domain.name,
                done.home.display(),
                done.commit.short()
            ))?;
            server_credentials(&done.home, &done.domain)?;
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

/// Writes the servers' credentials file when the domain is the example with its documented
/// server account; otherwise says how to give the servers their credentials.
fn server_credentials(home: &Path, domain: &schema::model::Domain) -> anyhow::Result<()> {
    use runtime::launcher::credentials;
    match runtime::up::example_server_credentials(domain) {
        Some((user, password)) => {
            let path = credentials::write(home, &user, &password)?;
            println!(
                "wrote the servers' credentials ({user}, the example's server account) to {} (mode 0600)",
                path.display()
            );
        }
        None => println!(
            "servers log in to the Master with an account of security/accounts.toml: write \
             STEWARD_USER=… and STEWARD_PASSWORD=… to {} (mode 0600), or set them in the \
             launchers' environment (docs/launcher.md)",
            credentials::path(home).display()
        ),
    }
    Ok(())
}
