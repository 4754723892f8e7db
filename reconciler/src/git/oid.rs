//! Git object ids.

use std::fmt;
use std::str::FromStr;

use super::{GitError, Result};

/// A Git object id (commit, tree, blob or tag), printed as full lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(pub(super) gix::ObjectId);

/// An [`Oid`] known to name a commit. An alias rather than a new type: ids from a pre-receive hook
/// arrive before anyone knows what they name.
pub type CommitId = Oid;

impl Oid {
    /// Parse a full hex id (40 digits for SHA-1, 64 for SHA-256). Abbreviations are refused: use
    /// [`Repo::resolve`] for those.
    pub fn from_hex(hex: &str) -> Result<Oid> {
        gix::ObjectId::from_hex(hex.as_bytes())
            .map(Oid)
            .map_err(|_| GitError::InvalidId {
                input: hex.to_owned(),
            })
    }

    /// The full hex spelling.
    pub fn to_hex(&self) -> String {
        self.0.to_string()
    }

    /// The first 7 hex digits, as `git log --oneline` shows in small repositories.
    pub fn short(&self) -> String {
        self.0.to_hex_with_len(7).to_string()
    }

    /// True for the all-zeros id Git uses for "no object" (a created or deleted ref).
    pub fn is_null(&self) -> bool {
        self.0.is_null()
    }

    /// The gix id, for callers that need gix APIs directly.
    pub fn as_gix(&self) -> &gix::oid {
        &self.0
    }
}

impl From<gix::ObjectId> for Oid {
    fn from(id: gix::ObjectId) -> Self {
        Oid(id)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

impl FromStr for Oid {
    type Err = GitError;
    fn from_str(s: &str) -> Result<Self> {
        Oid::from_hex(s)
    }
}
