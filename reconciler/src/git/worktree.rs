//! A plain directory read as if it were committed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice;
use gix::objs::WriteTo;
use gix::objs::tree::EntryKind as GitEntryKind;
use schema::tree::{Entry, EntryKind, Tree, TreeError};

use super::chain;
use super::tree::components;

/// A plain directory read as if it were committed: what `steward validate --worktree` checks.
///
/// Entry ids are the object ids `git add -A && git commit` would produce, so a working tree and a
/// commit compare equal when their content is equal: files hash as blobs, symbolic links as blobs
/// of their target (never followed, also not inside a path), directories as tree objects with
/// git's modes (`100644`, `100755` when the owner may execute, `120000`, `40000`) and ordering,
/// and directories without files are omitted, as Git cannot record them.
///
/// Deliberately ignored: `.gitignore` (every file counts, ignored or not; a domain repository has
/// no reason to carry ignored files next to its configuration), `.gitattributes` filters and line
/// ending conversion (content is hashed as it is on disk), and nested repositories (their `.git`
/// is skipped and their files count as ordinary content, where git would record a submodule).
/// `.git` is skipped at every level. Entry ids are computed once per path and remembered for the
/// life of this value: it is a snapshot for one validation, not a watcher.
pub struct WorkTree {
    root: PathBuf,
    hash: gix::hash::Kind,
    /// Computed entries by absolute path (unique even for names that are not UTF-8).
    ids: RefCell<HashMap<PathBuf, Option<(EntryKind, gix::ObjectId)>>>,
}

impl fmt::Debug for WorkTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkTree")
            .field("root", &self.root)
            .finish()
    }
}

impl WorkTree {
    /// The directory at `root`, hashed with SHA-1 like a default Git repository.
    pub fn new(root: impl Into<PathBuf>) -> WorkTree {
        WorkTree {
            root: root.into(),
            hash: gix::hash::Kind::Sha1,
            ids: RefCell::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every file and symbolic link under the root (`.git` skipped), by `/`-separated path, with
    /// the object id `git add` would give it: what [`CommitTree::files`] lists for a commit.
    pub fn files(&self) -> Result<std::collections::BTreeMap<String, String>, TreeError> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let read =
                std::fs::read_dir(&dir).map_err(|e| Self::io_err(&prefix, "cannot list", &e))?;
            for item in read {
                let item = item.map_err(|e| Self::io_err(&prefix, "cannot list", &e))?;
                let name = item.file_name();
                if name == ".git" {
                    continue;
                }
                let path = format!("{prefix}{}", name.to_string_lossy());
                let meta = std::fs::symlink_metadata(item.path())
                    .map_err(|e| Self::io_err(&path, "cannot inspect", &e))?;
                if meta.is_dir() {
                    stack.push((item.path(), format!("{path}/")));
                } else if let Some(Entry { id, .. }) = self.entry(&path)? {
                    out.insert(path, id);
                }
            }
        }
        Ok(out)
    }

    fn io_err(path: &str, what: &str, e: &std::io::Error) -> TreeError {
        TreeError {
            path: path.to_owned(),
            message: format!("{what}: {e}"),
        }
    }

    /// The absolute path of `path` and what is there, without following symbolic links anywhere
    /// along the way; `None` when nothing is there (or the path crosses a link or `.git`).
    fn locate(&self, path: &str) -> Result<Option<(PathBuf, std::fs::Metadata)>, TreeError> {
        let Some(parts) = components(path) else {
            return Ok(None);
        };
        let mut abs = self.root.clone();
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            if part == ".git" {
                return Ok(None);
            }
            abs.push(part);
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(Self::io_err(path, "cannot inspect", &e)),
            };
            if i + 1 < count && !meta.is_dir() {
                return Ok(None);
            }
            if i + 1 == count {
                return Ok(Some((abs, meta)));
            }
        }
        // The root itself may be reached through a link (a checkout under a linked home); only
        // links inside the tree are content.
        let meta = std::fs::metadata(&abs).map_err(|e| TreeError {
            path: abs.display().to_string(),
            message: format!("cannot read the working tree: {e}"),
        })?;
        Ok(Some((abs, meta)))
    }

    fn blob_id(&self, bytes: &[u8], path: &str) -> Result<gix::ObjectId, TreeError> {
        gix::objs::compute_hash(self.hash, gix::objs::Kind::Blob, bytes).map_err(|e| TreeError {
            path: path.to_owned(),
            message: chain(&e),
        })
    }

    /// Kind and id of the entry at `abs` (known by `rel`), `None` for what git would not record:
    /// special files, and directories without any file below them.
    fn compute(
        &self,
        abs: &Path,
        rel: &str,
        meta: &std::fs::Metadata,
    ) -> Result<Option<(EntryKind, gix::ObjectId)>, TreeError> {
        if let Some(known) = self.ids.borrow().get(abs) {
            return Ok(*known);
        }
        let ft = meta.file_type();
        let found = if ft.is_symlink() {
            let target =
                std::fs::read_link(abs).map_err(|e| Self::io_err(rel, "cannot read link", &e))?;
            let bytes = gix::path::os_str_into_bstr(target.as_os_str()).map_err(|e| TreeError {
                path: rel.to_owned(),
                message: chain(&e),
            })?;
            Some((EntryKind::Symlink, self.blob_id(bytes, rel)?))
        } else if ft.is_file() {
            let bytes = std::fs::read(abs).map_err(|e| Self::io_err(rel, "cannot read", &e))?;
            Some((EntryKind::File, self.blob_id(&bytes, rel)?))
        } else if ft.is_dir() {
            self.tree_id(abs, rel)?
                .map(|id| (EntryKind::Dir, id))
                // The root always exists: a commit of nothing has the empty tree.
                .or_else(|| (abs == self.root).then(|| (EntryKind::Dir, self.hash.empty_tree())))
        } else {
            None
        };
        self.ids.borrow_mut().insert(abs.to_owned(), found);
        Ok(found)
    }

    /// Git's tree object id for the directory at `abs`, `None` if it holds no file at any depth.
    fn tree_id(&self, abs: &Path, rel: &str) -> Result<Option<gix::ObjectId>, TreeError> {
        let read = std::fs::read_dir(abs).map_err(|e| Self::io_err(rel, "cannot list", &e))?;
        let mut tree = gix::objs::Tree::empty();
        for item in read {
            let item = item.map_err(|e| Self::io_err(rel, "cannot list", &e))?;
            let name = item.file_name();
            if name == ".git" {
                continue;
            }
            let filename = gix::path::os_str_into_bstr(&name).map_err(|e| TreeError {
                path: rel.to_owned(),
                message: chain(&e),
            })?;
            // Only for messages: a name that is not UTF-8 is still content.
            let name_str = filename.to_str_lossy();
            let child_rel = if rel.is_empty() {
                name_str.into_owned()
            } else {
                format!("{rel}/{name_str}")
            };
            let child_abs = item.path();
            let meta = std::fs::symlink_metadata(&child_abs)
                .map_err(|e| Self::io_err(&child_rel, "cannot inspect", &e))?;
            let Some((kind, oid)) = self.compute(&child_abs, &child_rel, &meta)? else {
                continue;
            };
            let mode = match kind {
                EntryKind::Dir => GitEntryKind::Tree,
                EntryKind::Symlink => GitEntryKind::Link,
                EntryKind::File if is_executable(&meta) => GitEntryKind::BlobExecutable,
                EntryKind::File => GitEntryKind::Blob,
            };
            tree.entries.push(gix::objs::tree::Entry {
                mode: mode.into(),
                filename: filename.to_owned(),
                oid,
            });
        }
        if tree.entries.is_empty() {
            return Ok(None);
        }
        tree.entries.sort();
        let mut buf = Vec::with_capacity(tree.size() as usize);
        tree.write_to(&mut buf).map_err(|e| TreeError {
            path: rel.to_owned(),
            message: format!("cannot encode tree: {e}"),
        })?;
        gix::objs::compute_hash(self.hash, gix::objs::Kind::Tree, &buf)
            .map(Some)
            .map_err(|e| TreeError {
                path: rel.to_owned(),
                message: chain(&e),
            })
    }
}

/// Missing, or a path through something that is not a directory: both mean "not there".
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

#[cfg(unix)]
pub(crate) fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // Git records 100755 exactly when the owner's execute bit is set.
    meta.permissions().mode() & 0o100 != 0
}

#[cfg(not(unix))]
pub(crate) fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

impl Tree for WorkTree {
    /// The bytes of a regular file; `None` for directories, symbolic links and special files.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        match self.locate(path)? {
            Some((abs, meta)) if meta.is_file() => match std::fs::read(&abs) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(Self::io_err(path, "cannot read", &e)),
            },
            _ => Ok(None),
        }
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, TreeError> {
        let Some((abs, meta)) = self.locate(path)? else {
            return Ok(None);
        };
        let rel = components(path).map(|p| p.join("/")).unwrap_or_default();
        Ok(self.compute(&abs, &rel, &meta)?.map(|(kind, id)| Entry {
            kind,
            id: id.to_string(),
        }))
    }

    fn label(&self) -> String {
        "working tree".to_owned()
    }
}
