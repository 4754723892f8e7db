//! The tree of one commit, read as a [`Tree`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use gix::bstr::ByteSlice;
use gix::objs::tree::{EntryKind as GitEntryKind, EntryMode};
use schema::tree::{Entry, EntryKind, Tree, TreeError};

use super::env::ObjectView;
use super::{CommitId, chain};

/// Split a [`Tree`] path into its components. `""` and `"."` are the root; empty and `.`
/// components are ignored. `None` when a component is `..`: nothing in a revision is named that,
/// and a working tree must not be escaped through it.
pub(super) fn components(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// One decoded tree object: entry name to mode and id.
type Dir = HashMap<Vec<u8>, (EntryMode, gix::ObjectId)>;

/// The tree of one commit.
///
/// Lookups decode each tree object once and keep it (a domain with thousands of applications
/// asks for thousands of entries in the same few directories); the cache lives as long as this
/// value, which is one validation or diff. Submodule entries (gitlinks) are reported as absent:
/// their content is not in this repository.
pub struct CommitTree {
    pub(super) repo: gix::Repository,
    _view: Option<Rc<ObjectView>>,
    commit: CommitId,
    root: gix::ObjectId,
    dirs: RefCell<HashMap<gix::ObjectId, Rc<Dir>>>,
}

impl fmt::Debug for CommitTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitTree")
            .field("commit", &self.commit)
            .field("root", &self.root)
            .finish()
    }
}

impl CommitTree {
    pub(super) fn new(
        repo: gix::Repository,
        view: Option<Rc<ObjectView>>,
        commit: CommitId,
        root: gix::ObjectId,
    ) -> CommitTree {
        CommitTree {
            repo,
            _view: view,
            commit,
            root,
            dirs: RefCell::new(HashMap::new()),
        }
    }

    /// The commit this tree belongs to.
    pub fn commit(&self) -> CommitId {
        self.commit
    }

    fn tree_err(&self, path: &str, e: &gix::Error) -> TreeError {
        TreeError {
            path: path.to_owned(),
            message: format!("commit {}: {}", self.commit.short(), chain(e)),
        }
    }

    fn dir(&self, id: gix::ObjectId, path: &str) -> Result<Rc<Dir>, TreeError> {
        if let Some(d) = self.dirs.borrow().get(&id) {
            return Ok(Rc::clone(d));
        }
        let tree = self
            .repo
            .find_tree(id)
            .map_err(|e| self.tree_err(path, &e))?;
        let mut dir = Dir::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&tree.data, id.kind()) {
            let entry = entry.map_err(|e| self.tree_err(path, &e))?;
            dir.insert(entry.filename.to_vec(), (entry.mode, entry.oid.to_owned()));
        }
        let dir = Rc::new(dir);
        self.dirs.borrow_mut().insert(id, Rc::clone(&dir));
        Ok(dir)
    }

    /// Every file and symbolic link of the commit, by path, with its object id (submodules are
    /// left out, as [`Tree::entry`] leaves them out).
    pub fn files(&self) -> Result<std::collections::BTreeMap<String, String>, TreeError> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![(self.root, String::new())];
        while let Some((id, prefix)) = stack.pop() {
            for (name, (mode, oid)) in self.dir(id, &prefix)?.iter() {
                let path = format!("{prefix}{}", name.to_str_lossy());
                if mode.is_tree() {
                    stack.push((*oid, format!("{path}/")));
                } else if mode.is_blob() || mode.is_link() {
                    out.insert(path, oid.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Mode and id of what `path` names, walking from the root tree.
    pub(super) fn locate(
        &self,
        path: &str,
    ) -> Result<Option<(EntryMode, gix::ObjectId)>, TreeError> {
        let Some(parts) = components(path) else {
            return Ok(None);
        };
        let mut current = (EntryMode::from(GitEntryKind::Tree), self.root);
        for part in parts {
            if !current.0.is_tree() {
                return Ok(None);
            }
            let dir = self.dir(current.1, path)?;
            match dir.get(part.as_bytes()) {
                Some(found) => current = *found,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }
}

impl Tree for CommitTree {
    /// The bytes of a regular (possibly executable) file; `None` for directories, symbolic links
    /// and submodules.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        match self.locate(path)? {
            Some((mode, id)) if mode.is_blob() => {
                let blob = self
                    .repo
                    .find_blob(id)
                    .map_err(|e| self.tree_err(path, &e))?;
                Ok(Some(blob.detach().data))
            }
            _ => Ok(None),
        }
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, TreeError> {
        Ok(self.locate(path)?.and_then(|(mode, id)| {
            let kind = match mode.kind() {
                GitEntryKind::Tree => EntryKind::Dir,
                GitEntryKind::Blob | GitEntryKind::BlobExecutable => EntryKind::File,
                GitEntryKind::Link => EntryKind::Symlink,
                GitEntryKind::Commit => return None,
            };
            Some(Entry {
                kind,
                id: id.to_string(),
            })
        }))
    }

    fn label(&self) -> String {
        self.commit.short()
    }
}
