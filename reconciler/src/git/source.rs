//! A commit read as a deployment's source: what deployment needs beyond [`Tree`], listing a
//! directory with modes and reading a symbolic link's target. Here rather than in the schema
//! crate because only deployment copies whole directories; here rather than in the runtime
//! because reading Git trees is this crate's business.

use std::collections::BTreeSet;
use std::fmt;

use gix::objs::tree::{EntryKind as GitEntryKind, EntryMode};
use schema::tree::{EntryKind, MemTree, Tree, TreeError};

use super::{CommitId, CommitTree, Repo, Result};

/// One entry of a directory in a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub name: String,
    pub kind: EntryKind,
    /// The owner-execute bit as Git records it (`100755`).
    pub executable: bool,
}

/// What deployment needs from a revision beyond [`Tree`].
pub trait SourceTree: Tree {
    /// The entries of the directory at `dir` (`""` is the root), `None` if it is not a directory.
    fn list(&self, dir: &str) -> Result<Option<Vec<SourceEntry>>, TreeError>;
    /// The target of the symbolic link at `path`, `None` if it is not a link.
    fn link_target(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError>;
}

/// A commit of a repository, readable as a [`SourceTree`]. Not `Send`: create it on the
/// blocking thread that deploys.
pub type GitSource = CommitTree;

impl CommitTree {
    /// The tree of `commit` in `repo`, as a deployment's source ([`Repo::tree`]).
    pub fn open(repo: &Repo, commit: CommitId) -> Result<GitSource> {
        repo.tree(commit)
    }

    /// The id of what `path` names when its mode passes `is`.
    fn object(
        &self,
        path: &str,
        is: fn(&EntryMode) -> bool,
    ) -> Result<Option<gix::ObjectId>, TreeError> {
        Ok(self
            .locate(path)?
            .filter(|(mode, _)| is(mode))
            .map(|(_, id)| id))
    }

    fn source_err(&self, path: &str, e: impl fmt::Display) -> TreeError {
        TreeError {
            path: path.to_owned(),
            message: format!("commit {}: {e}", self.commit().short()),
        }
    }
}

impl SourceTree for CommitTree {
    fn list(&self, dir: &str) -> Result<Option<Vec<SourceEntry>>, TreeError> {
        let Some(id) = self.object(dir, EntryMode::is_tree)? else {
            return Ok(None);
        };
        let tree = self
            .repo
            .find_tree(id)
            .map_err(|e| self.source_err(dir, e))?;
        let mut out = Vec::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&tree.data, id.kind()) {
            let entry = entry.map_err(|e| self.source_err(dir, e))?;
            let (kind, executable) = match entry.mode.kind() {
                GitEntryKind::Tree => (EntryKind::Dir, false),
                GitEntryKind::Blob => (EntryKind::File, false),
                GitEntryKind::BlobExecutable => (EntryKind::File, true),
                GitEntryKind::Link => (EntryKind::Symlink, false),
                // A submodule's content is not in this repository.
                GitEntryKind::Commit => continue,
            };
            let name = String::from_utf8(entry.filename.to_vec())
                .map_err(|_| self.source_err(dir, "a file name is not UTF-8"))?;
            out.push(SourceEntry {
                name,
                kind,
                executable,
            });
        }
        Ok(Some(out))
    }

    fn link_target(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        let Some(id) = self.object(path, EntryMode::is_link)? else {
            return Ok(None);
        };
        let blob = self
            .repo
            .find_blob(id)
            .map_err(|e| self.source_err(path, e))?;
        Ok(Some(blob.data.clone()))
    }
}

/// In-memory trees (tests): directories are implied by file paths; nothing is executable.
impl SourceTree for MemTree {
    fn list(&self, dir: &str) -> Result<Option<Vec<SourceEntry>>, TreeError> {
        let dir = dir.trim_matches('/');
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for path in self.files.keys() {
            let Some(rest) = path.strip_prefix(&prefix) else {
                continue;
            };
            let (name, kind) = match rest.split_once('/') {
                Some((name, _)) => (name, EntryKind::Dir),
                None => (rest, EntryKind::File),
            };
            if seen.insert(name.to_owned()) {
                out.push(SourceEntry {
                    name: name.to_owned(),
                    kind,
                    executable: false,
                });
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn link_target(&self, _path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        Ok(None)
    }
}
