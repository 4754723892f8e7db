//! The content of one domain revision: a commit's tree or a working directory.
//!
//! The schema crate never touches Git itself; the reconciler implements [`Tree`] over gix, and
//! tests use [`MemTree`]. Paths are always `/`-separated and relative to the repository root.

use std::collections::BTreeMap;
use std::hash::Hasher;

/// What a path names in a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// A content fingerprint: equal fingerprints mean equal content. Implementations over Git use
    /// the object id, so a commit and a working tree give the same id for the same content.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// Errors reading a revision (I/O, a broken object store). Distinct from "not present".
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TreeError {
    pub path: String,
    pub message: String,
}

/// Read access to one revision of the domain repository.
pub trait Tree {
    /// The bytes of a file, or `None` when no file is at `path`.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError>;
    /// What is at `path` (file, directory, link) with its fingerprint, or `None`.
    fn entry(&self, path: &str) -> Result<Option<Entry>, TreeError>;
    /// A short human name of the revision (`1a2b3c4`, `working tree`).
    fn label(&self) -> String;
}

/// An in-memory tree: files by path. Directories are implied by file paths.
#[derive(Debug, Clone, Default)]
pub struct MemTree {
    pub files: BTreeMap<String, Vec<u8>>,
    pub name: String,
}

impl MemTree {
    pub fn new(name: &str) -> Self {
        MemTree {
            files: BTreeMap::new(),
            name: name.to_owned(),
        }
    }

    pub fn with(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.to_owned(), content.into());
        self
    }
}

impl Tree for MemTree {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        Ok(self.files.get(path).cloned())
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, TreeError> {
        if let Some(content) = self.files.get(path) {
            return Ok(Some(Entry {
                kind: EntryKind::File,
                id: fingerprint(content),
            }));
        }
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut h = crate::fasthash::Fnv::default();
        let mut any = false;
        for (p, c) in self.files.range(prefix.clone()..) {
            if !p.starts_with(&prefix) {
                break;
            }
            any = true;
            h.write(p.as_bytes());
            h.write(c);
        }
        Ok(any.then(|| Entry {
            kind: EntryKind::Dir,
            id: format!("{:016x}", h.finish()),
        }))
    }

    fn label(&self) -> String {
        self.name.clone()
    }
}

/// A fingerprint for in-memory test trees only (Git trees use object ids).
fn fingerprint(bytes: &[u8]) -> String {
    format!("{:016x}", crate::fasthash::fnv1a(bytes))
}
