//! Checking the cache: every object a commit needs is present and hashes to its id.

use std::collections::HashSet;
use std::path::Path;
use std::sync::PoisonError;

use super::verified::Verified;
use super::{Cache, CacheError, Result};
use crate::git::{Oid, chain};

impl Cache {
    /// True when `commit` and everything its tree needs are in the cache and intact.
    pub fn has_complete(&self, commit: Oid) -> bool {
        self.verify(commit).is_ok()
    }

    /// Reads `commit`, its tree and every object below it, checking each object's hash, except
    /// those already checked in files unchanged since. A missing or damaged object is
    /// [`CacheError::Corrupt`].
    pub fn verify(&self, commit: Oid) -> Result<()> {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.refresh(&self.git_dir, self.repo.object_hash());
        let mut checked = HashSet::new();
        verify_commit(
            &self.repo,
            commit.as_gix().to_owned(),
            verified.ids(),
            &mut checked,
        )
        .map_err(|problem| CacheError::Corrupt {
            path: self.git_dir.clone(),
            problem: problem.to_string(),
        })?;
        if !checked.is_empty() {
            verified.extend(checked);
            // Under the shared lock another reader may be writing it; the launcher saves it.
            if self.exclusive {
                // A record not saved costs a full read next time, nothing else.
                let _ = verified.save(&self.git_dir);
            }
        }
        Ok(())
    }
}

/// Reads every ref under `refs/` and verifies each tip fully (objects `verified` holds only for
/// their presence), then records what it checked.
pub(super) fn check(repo: &gix::Repository, git_dir: &Path, verified: &mut Verified) -> Result<()> {
    let corrupt = |problem: String| CacheError::Corrupt {
        path: git_dir.to_owned(),
        problem,
    };
    verified.refresh(git_dir, repo.object_hash());
    let mut checked = HashSet::new();
    let platform = repo
        .references()
        .map_err(|e| corrupt(format!("cannot list refs: {}", chain(&e))))?;
    let all = platform
        .all()
        .map_err(|e| corrupt(format!("cannot list refs: {}", chain(&e))))?;
    for r in all {
        let mut r = r.map_err(|e| corrupt(format!("a ref cannot be read: {}", chain(&e))))?;
        let name = r.name().as_bstr().to_string();
        let id = r
            .peel_to_id()
            .map_err(|e| corrupt(format!("{name} does not resolve: {}", chain(&e))))?
            .detach();
        verify_commit(repo, id, verified.ids(), &mut checked)
            .map_err(|p| corrupt(format!("{name}: {p}")))?;
    }
    if !checked.is_empty() {
        verified.extend(checked);
        // A record not saved costs a full read next time, nothing else.
        let _ = verified.save(git_dir);
    }
    Ok(())
}

/// What is wrong with an object of the cache.
#[derive(Debug, thiserror::Error)]
enum Damage {
    #[error("{kind} {id} is missing")]
    Missing {
        kind: gix::objs::Kind,
        id: gix::ObjectId,
    },
    #[error("{kind} {id} cannot be read: {cause}")]
    Unreadable {
        kind: gix::objs::Kind,
        id: gix::ObjectId,
        cause: String,
    },
    #[error("{id} is a {found}, expected a {kind}")]
    WrongKind {
        kind: gix::objs::Kind,
        id: gix::ObjectId,
        found: gix::objs::Kind,
    },
    #[error("{kind} {id} is damaged (its content hashes to {actual})")]
    Hash {
        kind: gix::objs::Kind,
        id: gix::ObjectId,
        actual: String,
    },
}

/// Reads `id` (a commit), its tree and everything below, checking each object's hash. What
/// `known` holds was checked before: a known commit is only looked up, a known tree is skipped
/// with everything below it (it was recorded only once all of that was checked), a known blob is
/// skipped. `checked` receives what was checked now.
fn verify_commit(
    repo: &gix::Repository,
    id: gix::ObjectId,
    known: &HashSet<gix::ObjectId>,
    checked: &mut HashSet<gix::ObjectId>,
) -> std::result::Result<(), Damage> {
    let done =
        |id: &gix::ObjectId, checked: &HashSet<_>| known.contains(id) || checked.contains(id);
    if done(&id, checked) {
        return match repo.has_object(id) {
            true => Ok(()),
            false => Err(Damage::Missing {
                kind: gix::objs::Kind::Commit,
                id,
            }),
        };
    }
    let data = read_checked(repo, id, gix::objs::Kind::Commit)?;
    let mut found = vec![id];
    let commit = gix::objs::CommitRef::from_bytes(&data, repo.object_hash()).map_err(|e| {
        Damage::Unreadable {
            kind: gix::objs::Kind::Commit,
            id,
            cause: e.to_string(),
        }
    })?;
    let tree = commit.tree();
    let mut stack = vec![tree];
    while let Some(tree_id) = stack.pop() {
        if done(&tree_id, checked) {
            continue;
        }
        let data = read_checked(repo, tree_id, gix::objs::Kind::Tree)?;
        found.push(tree_id);
        let tree = gix::objs::TreeRef::from_bytes(&data, repo.object_hash()).map_err(|e| {
            Damage::Unreadable {
                kind: gix::objs::Kind::Tree,
                id: tree_id,
                cause: e.to_string(),
            }
        })?;
        for entry in tree.entries {
            let oid = entry.oid.to_owned();
            match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => stack.push(oid),
                gix::objs::tree::EntryKind::Commit => {}
                _ if done(&oid, checked) => {}
                _ => {
                    read_checked(repo, oid, gix::objs::Kind::Blob)?;
                    found.push(oid);
                }
            }
        }
    }
    // Only a commit read whole counts: a tree is skipped later on the strength of what is below.
    checked.extend(found);
    Ok(())
}

fn read_checked(
    repo: &gix::Repository,
    id: gix::ObjectId,
    kind: gix::objs::Kind,
) -> std::result::Result<Vec<u8>, Damage> {
    let unreadable = |cause: String| Damage::Unreadable { kind, id, cause };
    let obj = match repo.try_find_object(id) {
        Ok(Some(o)) => o,
        Ok(None) => return Err(Damage::Missing { kind, id }),
        Err(e) => return Err(unreadable(chain(&e))),
    };
    if obj.kind != kind {
        return Err(Damage::WrongKind {
            kind,
            id,
            found: obj.kind,
        });
    }
    let actual = gix::objs::compute_hash(repo.object_hash(), obj.kind, &obj.data)
        .map_err(|e| unreadable(chain(&e)))?;
    if actual != id {
        return Err(Damage::Hash {
            kind,
            id,
            actual: actual.to_string(),
        });
    }
    Ok(obj.detach().data)
}
