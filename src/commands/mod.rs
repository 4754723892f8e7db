//! One module per command. Each `run` returns the process exit code.

pub mod admin;
pub mod diff;
pub mod hook;
pub mod init;
pub mod launcher;
pub mod master;
pub mod node;
pub mod server;
pub mod up;
pub mod validate;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use reconciler::git::{Repo, WorkTree};
use schema::tree::Tree;

/// The exit code of a launcher's start or stop.
pub fn code(o: runtime::launcher::Outcome) -> ExitCode {
    match o {
        runtime::launcher::Outcome::Ok => ExitCode::SUCCESS,
        runtime::launcher::Outcome::Failed => ExitCode::from(1),
    }
}

/// Writes `text` to standard output. A reader that went away (`steward validate | head -1`) is
/// not an error: the rest is dropped quietly and the command's own exit code stands.
pub fn out(text: &str) -> std::io::Result<()> {
    write_all(&mut std::io::stdout().lock(), text)
}

/// Writes `text` to standard error; a closed standard error is ignored (there is nowhere left
/// to say anything).
pub fn err(text: &str) {
    let _ = write_all(&mut std::io::stderr().lock(), text);
}

fn write_all(w: &mut impl Write, text: &str) -> std::io::Result<()> {
    match w.write_all(text.as_bytes()).and_then(|()| w.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Colors only for a terminal, and never with `NO_COLOR`.
pub fn color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Opens the domain repository at `dir`.
pub fn open_repo(dir: &Path) -> anyhow::Result<Repo> {
    Repo::open(dir).with_context(|| format!("cannot open a Git repository at `{}`", dir.display()))
}

/// The tree of `rev` in `repo`; a clear error when it does not exist.
pub fn tree_at(repo: &Repo, rev: &str) -> anyhow::Result<Box<dyn Tree>> {
    let Some(id) = repo
        .resolve(rev)
        .with_context(|| format!("cannot resolve `{rev}`"))?
    else {
        bail!("`{rev}` does not name a commit in this repository");
    };
    Ok(Box::new(repo.tree(id).with_context(|| {
        format!("cannot read the tree of `{rev}`")
    })?))
}

pub fn worktree(dir: &Path) -> Box<dyn Tree> {
    Box::new(WorkTree::new(dir))
}

pub fn hash_password() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        err("Password (input is shown; pipe it in to hide it):\n");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!(
            "empty password: write the password on standard input, e.g. `printf %s 'pw' | steward hash-password`"
        );
    }
    out(&format!("{}\n", schema::security::hash_password(password)?))?;
    Ok(ExitCode::SUCCESS)
}
