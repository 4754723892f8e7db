//! The machine's local clone of the domain repository, `DOMAIN_HOME/.cache/domain.git`: what the
//! launchers fetch into and boot from, and what lets a server boot while the Master is down.
//!
//! Rules this module keeps:
//! - One process at a time changes the cache: [`Cache::open`] takes an exclusive `flock` on
//!   `DOMAIN_HOME/.cache/lock` held until the [`Cache`] is dropped. Readers that only need a commit
//!   they were told about (the server process) take the shared lock ([`Cache::open_shared`]).
//! - Ref updates go through gix's lock files (write then rename), so a crash never leaves a
//!   half-written ref.
//! - `refs/steward/last-valid` moves only after a commit passed validation; with it, a small
//!   record (`steward-last-valid` inside the repository) says when and from where.
//! - A corrupt cache (unreadable repository, broken ref, missing or damaged object) is detected by
//!   reading every tip fully, moved aside (never deleted: an operator may want to look) and
//!   replaced by an empty repository that the next fetch fills again. It is never booted from.
//!   Objects already read with their hash checked are not read again while the files holding
//!   them are unchanged ([`verified`]), so an open costs what is new.
//!
//! The parts: `store` opens, locks and repairs the cache, `check` reads commits fully, `refs` keeps
//! the refs and the last-valid record, `fetch` fills the cache through [`crate::git::fetch`].

mod check;
mod fetch;
mod refs;
mod store;
#[cfg(test)]
mod tests;
mod verified;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use crate::git::fetch::{FetchError, Remote, Transfer, redact};
pub use fetch::Fetched;
pub use refs::LastValid;
pub use store::{Repaired, git_dir};
use verified::Verified;

/// The ref that names the last commit of the cache that passed validation.
pub const LAST_VALID: &str = "refs/steward/last-valid";
/// Where a fetch from the Master lands (the Master's `refs/steward/pinned`).
pub const MASTER_PINNED: &str = "refs/steward/master/pinned";
/// Where a fetch from a Git URL lands: its `refs/steward/pinned`, if it has one.
pub const GIT_PINNED: &str = "refs/steward/git/pinned";
/// Where a fetch from a Git URL lands: its branch.
pub const GIT_BRANCH: &str = "refs/steward/git/branch";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    /// The cache exists but cannot be trusted; the message says what is wrong.
    #[error("the local cache {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{what}: {}", crate::git::chain(.cause))]
    Git {
        what: &'static str,
        cause: Box<gix::Error>,
    },
    #[error(transparent)]
    Repo(#[from] crate::git::GitError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} has neither refs/steward/pinned nor refs/heads/{branch}")]
    NothingToFetch { url: String, branch: String },
}

type Result<T, E = CacheError> = std::result::Result<T, E>;

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |error| CacheError::Io {
        path: path.to_owned(),
        what,
        error,
    }
}

fn git_err(what: &'static str) -> impl FnOnce(gix::Error) -> CacheError {
    move |e| CacheError::Git {
        what,
        cause: Box::new(e),
    }
}

/// An open, locked cache.
pub struct Cache {
    git_dir: PathBuf,
    repo: gix::Repository,
    /// The objects already checked; saved only under the exclusive lock.
    verified: Mutex<Verified>,
    exclusive: bool,
    // Released on drop (flock is tied to the open file description).
    _lock: File,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}
