//! Filling the cache from the Master or a Git URL, through the one fetch ([`crate::git::fetch`]).

use super::{Cache, CacheError, GIT_BRANCH, GIT_PINNED, MASTER_PINNED, Remote, Result, Transfer};
use crate::git::Oid;
use crate::git::fetch::{Depth, fetch, redact};

/// The result of a fetch from a Git URL: the commit chosen and the remote ref it came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub commit: Oid,
    pub remote_ref: String,
    pub transfer: Transfer,
}

impl Cache {
    /// Fetches the Master's `refs/steward/pinned` into [`MASTER_PINNED`]: only the objects the
    /// cache lacks travel (the cache's refs are the negotiation's "haves").
    pub fn fetch_master(&self, remote: &Remote) -> Result<(Oid, Transfer)> {
        let (_, transfer) =
            self.fetch(remote, &[format!("+refs/steward/pinned:{MASTER_PINNED}")])?;
        self.ref_commit(MASTER_PINNED)?
            .map(|c| (c, transfer))
            .ok_or_else(|| CacheError::NothingToFetch {
                url: redact(&remote.url),
                branch: "main".into(),
            })
    }

    /// Fetches `refs/steward/pinned` and `refs/heads/<branch>` from a Git URL; the pinned ref
    /// wins when the remote has it (it is what a Master there validated), else the branch.
    pub fn fetch_git(&self, remote: &Remote, branch: &str) -> Result<Fetched> {
        let (outcome, transfer) = self.fetch(
            remote,
            &[
                format!("+refs/steward/pinned:{GIT_PINNED}"),
                format!("+refs/heads/{branch}:{GIT_BRANCH}"),
            ],
        )?;
        // The refs the remote advertised decide, not what older fetches left behind.
        let has = |name: &str| outcome.iter().any(|r| r == name);
        if has("refs/steward/pinned")
            && let Some(c) = self.ref_commit(GIT_PINNED)?
        {
            return Ok(Fetched {
                commit: c,
                remote_ref: "refs/steward/pinned".into(),
                transfer,
            });
        }
        let branch_ref = format!("refs/heads/{branch}");
        if has(&branch_ref)
            && let Some(c) = self.ref_commit(GIT_BRANCH)?
        {
            return Ok(Fetched {
                commit: c,
                remote_ref: branch_ref,
                transfer,
            });
        }
        Err(CacheError::NothingToFetch {
            url: redact(&remote.url),
            branch: branch.to_owned(),
        })
    }

    /// Runs one fetch with `specs`; returns the names of the remote refs that matched.
    fn fetch(&self, remote: &Remote, specs: &[String]) -> Result<(Vec<String>, Transfer)> {
        let received = fetch(&self.repo, remote, specs, Depth::TipsWhenEmpty)?;
        Ok((received.matched, received.transfer))
    }
}
