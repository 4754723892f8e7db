//! Reading the domain repository: commits, their trees, and working directories; and the one
//! fetch that brings commits from a remote (the launcher's cache and the Master's mirror).
//!
//! Everything Steward validates or diffs is a [`Tree`](schema::tree::Tree): a commit's tree
//! ([`CommitTree`]) or a plain directory ([`WorkTree`], for `steward validate --worktree`). Both
//! report Git object ids as entry fingerprints, so "unchanged" means the same thing whether the
//! content came from a commit or from disk.
//!
//! [`Repo`] is deliberately read-only. It also works inside a Git server hook, where the pushed
//! objects are not yet in the repository but in a quarantine directory: see
//! [`Repo::open_from_env`].

mod env;
pub mod fetch;
mod oid;
mod repo;
mod revision;
mod source;
pub mod stamp;
mod tree;
mod worktree;

use std::path::PathBuf;

pub use env::GitEnv;
pub use oid::{CommitId, Oid};
pub use repo::{CommitInfo, NewCommit, Repo};
pub use source::{GitSource, SourceEntry, SourceTree};
pub use tree::CommitTree;
pub use worktree::WorkTree;
pub(crate) use worktree::is_executable;

/// Errors of this module. Messages are self-contained (they include the underlying cause), so a
/// caller can print them with `{}` alone.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{path}: cannot open Git repository: {cause}")]
    Open { path: PathBuf, cause: String },
    #[error("{path}: cannot prepare the object view for the hook environment: {cause}")]
    ObjectView { path: PathBuf, cause: String },
    #[error("cannot read the pushed pack: {cause}")]
    Pack { cause: String },
    #[error("cannot determine the current directory: {0}")]
    CurrentDir(std::io::Error),
    #[error("revision {rev:?}: {cause}")]
    Revision { rev: String, cause: String },
    #[error("revision {rev:?} names a {kind}, not a commit")]
    NotACommit { rev: String, kind: String },
    #[error("object {id}: cannot read {what}: {cause}")]
    Object {
        id: String,
        what: &'static str,
        cause: String,
    },
    #[error("{input:?} is not a full hexadecimal object id")]
    InvalidId { input: String },
    #[error("cannot write a commit: {cause}")]
    WriteCommit { cause: String },
    #[error("{path}: cannot read the refs' metadata: {cause}")]
    Stamp {
        path: PathBuf,
        cause: std::io::Error,
    },
}

type Result<T, E = GitError> = std::result::Result<T, E>;

/// Render an error with its whole `source()` chain: gix errors put the useful detail in sources.
/// A source whose text the message already holds is not repeated.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}
