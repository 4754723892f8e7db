//! The cache's refs, and the record of the last commit that passed validation.

use gix::refs::transaction::PreviousValue;
use serde::{Deserialize, Serialize};

use super::store::now;
use super::{Cache, CacheError, LAST_VALID, Result, git_err, io};
use crate::git::{Oid, chain};

const RECORD: &str = "steward-last-valid";

/// What `refs/steward/last-valid` is, and when and from where it was validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastValid {
    pub commit: String,
    /// Unix seconds of the validation; `None` when the record is missing or out of step.
    pub at: Option<u64>,
    /// `master URL`, `git URL`, …: a human-readable origin.
    pub source: Option<String>,
}

impl Cache {
    /// The commit a local ref names, if the ref exists.
    pub fn ref_commit(&self, name: &str) -> Result<Option<Oid>> {
        let found = self
            .repo
            .try_find_reference(name)
            .map_err(|e| CacheError::Corrupt {
                path: self.git_dir.clone(),
                problem: format!("cannot read {name}: {}", chain(&e)),
            })?;
        let Some(mut r) = found else {
            return Ok(None);
        };
        let id = r.peel_to_id().map_err(|e| CacheError::Corrupt {
            path: self.git_dir.clone(),
            problem: format!("{name} does not resolve: {}", chain(&e)),
        })?;
        Ok(Some(Oid::from(id.detach())))
    }

    /// Points `name` at `commit` (atomically: lock file, then rename).
    pub fn set_ref(&self, name: &str, commit: Oid, message: &str) -> Result<()> {
        self.repo
            .reference(
                name,
                commit.as_gix().to_owned(),
                PreviousValue::Any,
                message,
            )
            .map_err(git_err("cannot update a ref of the cache"))?;
        Ok(())
    }

    /// The last commit that passed validation, with when and from where.
    pub fn last_valid(&self) -> Result<Option<LastValid>> {
        let Some(commit) = self.ref_commit(LAST_VALID)? else {
            return Ok(None);
        };
        let record: Option<LastValid> = std::fs::read(self.git_dir.join(RECORD))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let hex = commit.to_hex();
        Ok(Some(match record {
            Some(r) if r.commit == hex => r,
            // The ref moved without its record (a crash between the two writes): the commit is
            // still right, only the time is unknown.
            _ => LastValid {
                commit: hex,
                at: None,
                source: None,
            },
        }))
    }

    /// Records that `commit` passed validation now, having come from `source`.
    pub fn record_valid(&self, commit: Oid, source: &str) -> Result<()> {
        self.set_ref(LAST_VALID, commit, &format!("validated, from {source}"))?;
        let record = LastValid {
            commit: commit.to_hex(),
            at: Some(now()),
            source: Some(source.to_owned()),
        };
        let path = self.git_dir.join(RECORD);
        let tmp = self
            .git_dir
            .join(format!("{RECORD}.tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| CacheError::Io {
            path: path.clone(),
            what: "cannot encode the record",
            error: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp, "cannot write"))?;
        std::fs::rename(&tmp, &path).map_err(io(&path, "cannot replace"))?;
        Ok(())
    }
}
