//! An opened repository: resolving revisions, reading commits, writing the Master's rollback
//! commit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use gix::bstr::ByteSlice;

use super::env::ObjectView;
use super::revision::{Step, split_navigation};
use super::{CommitId, CommitTree, GitEnv, GitError, Oid, Result, chain};

/// The largest object [`Repo::open_with_pack`] takes from a pushed pack (1 GiB).
pub const PACK_OBJECT_LIMIT: usize = 1 << 30;

/// A commit to write with [`Repo::write_commit`]. Identities are `(name, email)`.
#[derive(Debug, Clone)]
pub struct NewCommit<'a> {
    pub tree: Oid,
    pub parents: Vec<Oid>,
    pub author: (&'a str, &'a str),
    pub committer: (&'a str, &'a str),
    pub message: String,
}

/// What people want to see about a commit (pins, events, `steward diff` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: String,
    pub short_id: String,
    pub author_name: String,
    pub author_email: String,
    /// Author time, Unix seconds: when the change was written, which is what a reviewer means by
    /// "the commit from Tuesday".
    pub time: i64,
    /// Committer time, Unix seconds: when the commit entered history (differs after rebases).
    pub commit_time: i64,
    /// The first paragraph of the message, folded onto one line.
    pub summary: String,
}

/// A Git repository (bare or not), opened for reading. The one write is
/// [`Repo::write_commit`], a commit object for the Master's rollback; it moves no ref.
pub struct Repo {
    repo: gix::Repository,
    /// Keeps the hook's object view alive as long as anything reads through it.
    view: Option<Rc<ObjectView>>,
}

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("git_dir", &self.repo.git_dir())
            .field("hook_object_view", &self.view.as_ref().map(|v| &v.dir))
            .finish()
    }
}

impl Repo {
    /// Open the repository at `path`: a bare repository, a `.git` directory, or a work tree
    /// containing `.git`. Git environment variables (`GIT_DIR`, …) are ignored; see
    /// [`Repo::open_from_env`] for hooks.
    pub fn open(path: &Path) -> Result<Repo> {
        let repo = gix::ThreadSafeRepository::open_opts(path, gix::open::Options::default())
            .map_err(|e| GitError::Open {
                path: path.to_owned(),
                cause: chain(&e),
            })?;
        Ok(Repo {
            repo: repo.to_thread_local(),
            view: None,
        })
    }

    /// Open the repository a Git hook runs for. Git runs hooks with the current directory in the
    /// repository (for a bare one, the repository itself) and with `GIT_DIR` set; during
    /// `git push` the pushed objects sit in a quarantine named by `GIT_OBJECT_DIRECTORY`, with the
    /// repository's objects in `GIT_ALTERNATE_OBJECT_DIRECTORIES`, and become part of the
    /// repository only if the hook accepts. gix does not read those object variables, so this
    /// adds them itself; that is what makes the pushed commits readable from `pre-receive`.
    pub fn open_from_env() -> Result<Repo> {
        let env = GitEnv::from_process()?;
        let cwd = std::env::current_dir().map_err(GitError::CurrentDir)?;
        Repo::open_with_env(&env, &cwd)
    }

    /// [`Repo::open_from_env`] with explicit variables: opens `env.git_dir`, else `fallback`, and
    /// reads objects from the repository plus every object directory `env` names. Reading sees a
    /// superset of what git sees (the repository's own objects are always included), which is
    /// harmless for a reader. Objects written through [`Repo::gix`] of such a `Repo` would land
    /// in a throw-away directory: it is for reading only (refs are unaffected).
    pub fn open_with_env(env: &GitEnv, fallback: &Path) -> Result<Repo> {
        let path = env.git_dir.as_deref().unwrap_or(fallback);
        // `open_path_as_is`: with GIT_DIR git uses that directory itself, never `GIT_DIR/.git`.
        let opts = gix::open::Options::default().open_path_as_is(env.git_dir.is_some());
        let repo =
            gix::ThreadSafeRepository::open_opts(path, opts).map_err(|e| GitError::Open {
                path: path.to_owned(),
                cause: chain(&e),
            })?;
        let extra = env.extra_object_dirs();
        if extra.is_empty() {
            return Ok(Repo {
                repo: repo.to_thread_local(),
                view: None,
            });
        }
        let own = repo.objects_dir().to_owned();
        // Like git, skip directories that do not exist rather than failing on them.
        let mut dirs: Vec<PathBuf> = extra.into_iter().filter(|d| d.is_dir()).collect();
        if !dirs.contains(&own) {
            dirs.push(own);
        }
        let view = ObjectView::create(&dirs)?;
        Repo::reading_through(repo, view)
    }

    /// Open the bare repository `git_dir` with the objects of a pack as a push sends it (`pack`
    /// starts at its `PACK` signature), before git has them: the Master validates a push this
    /// way without a hook process. The pack is indexed into a throw-away object directory (a
    /// thin pack is completed from the repository's objects), which lives as long as the `Repo`;
    /// the repository itself is not written to.
    pub fn open_with_pack(git_dir: &Path, pack: &mut dyn std::io::BufRead) -> Result<Repo> {
        let opts = gix::open::Options::default().open_path_as_is(true);
        let repo =
            gix::ThreadSafeRepository::open_opts(git_dir, opts).map_err(|e| GitError::Open {
                path: git_dir.to_owned(),
                cause: chain(&e),
            })?;
        let view = ObjectView::create(&[repo.objects_dir().to_owned()])?;
        let packs = view.dir.join("pack");
        std::fs::create_dir(&packs).map_err(|e| GitError::ObjectView {
            path: packs.clone(),
            cause: e.to_string(),
        })?;
        let local = repo.to_thread_local();
        let options = gix::odb::pack::bundle::write::Options {
            // One push's pack is small; threads would cost more to start than they save.
            thread_limit: Some(1),
            // An object's size comes from the pack's own header: a pusher cannot make the Master
            // allocate more than this for one object.
            alloc_limit_bytes: Some(PACK_OBJECT_LIMIT),
            ..Default::default()
        };
        gix::odb::pack::Bundle::write_to_directory(
            pack,
            Some(&packs),
            &mut gix::progress::Discard,
            &std::sync::atomic::AtomicBool::new(false),
            Some(local.objects.clone()),
            local.object_hash(),
            options,
        )
        .map_err(|e| GitError::Pack { cause: chain(&e) })?;
        Repo::reading_through(repo, view)
    }

    /// `repo` reading its objects through `view` (and whatever `view` names as alternates).
    fn reading_through(mut repo: gix::ThreadSafeRepository, view: ObjectView) -> Result<Repo> {
        let object_hash = repo.to_thread_local().object_hash();
        let store = gix::odb::Store::at_opts(
            view.dir.clone(),
            object_hash,
            &mut std::iter::empty(),
            gix::odb::store::init::Options::default(),
        )
        .map_err(|e| GitError::ObjectView {
            path: view.dir.clone(),
            cause: e.to_string(),
        })?;
        repo.objects = gix::parallel::OwnShared::new(store);
        Ok(Repo {
            repo: repo.to_thread_local(),
            view: Some(Rc::new(view)),
        })
    }

    /// The gix handle, for the pin store's reads and writes within one decision.
    pub(crate) fn gix(&self) -> &gix::Repository {
        &self.repo
    }

    /// The repository directory (`.git` or the bare repository).
    pub fn git_dir(&self) -> &Path {
        self.repo.git_dir()
    }

    /// Resolve any `git rev-parse` spelling (`HEAD`, `HEAD~1`, `main^2`, a full or abbreviated
    /// hex id, a tag, which is peeled) to a commit. `None` when the name does not exist: an unknown
    /// ref, an unborn `HEAD`, an id not in the repository, an ancestor or parent beyond the
    /// history. An error when it exists but is not a commit, or when the syntax is invalid.
    pub fn resolve(&self, rev: &str) -> Result<Option<CommitId>> {
        // gix reports "HEAD~5 is beyond the root" as an unclassified error, indistinguishable from
        // a broken repository; trailing `~N`/`^N` steps are therefore walked here, where running
        // out of parents simply means "no such commit".
        let (base, steps) = split_navigation(rev);
        let Some(mut id) = self.resolve_base(base, rev)? else {
            return Ok(None);
        };
        for step in steps {
            let next = match step {
                Step::Ancestor(n) => {
                    let mut at = Some(id);
                    for _ in 0..n {
                        at = match at {
                            Some(c) => self.nth_parent(c, 1)?,
                            None => break,
                        };
                    }
                    at
                }
                Step::Parent(n) => self.nth_parent(id, n)?,
            };
            match next {
                Some(n) => id = n,
                None => return Ok(None),
            }
        }
        Ok(Some(id))
    }

    /// [`Repo::resolve`] without trailing navigation; `rev` is the whole spelling, for messages.
    fn resolve_base(&self, base: &str, rev: &str) -> Result<Option<CommitId>> {
        let spec_err = |e: &gix::Error| GitError::Revision {
            rev: rev.to_owned(),
            cause: chain(e),
        };
        let id = match self.repo.rev_parse_single(base.as_bytes().as_bstr()) {
            Ok(id) => id.detach(),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(spec_err(&e)),
        };
        // A full hex id parses without the object existing; existence is checked here.
        let object = match self.repo.try_find_object(id) {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(None),
            Err(e) => return Err(spec_err(&e)),
        };
        let kind = object.kind;
        match kind {
            gix::object::Kind::Commit => Ok(Some(Oid(id))),
            gix::object::Kind::Tag => match object.peel_to_kind(gix::object::Kind::Commit) {
                Ok(commit) => Ok(Some(Oid(commit.id))),
                Err(e) if e.is_not_found() => Ok(None),
                Err(_) => Err(GitError::NotACommit {
                    rev: rev.to_owned(),
                    kind: "tag of a non-commit".to_owned(),
                }),
            },
            other => Err(GitError::NotACommit {
                rev: rev.to_owned(),
                kind: other.to_string(),
            }),
        }
    }

    /// The `n`th parent (1-based, as in `^n`; `0` is the commit itself).
    fn nth_parent(&self, commit: CommitId, n: usize) -> Result<Option<CommitId>> {
        if n == 0 {
            return Ok(Some(commit));
        }
        let c = self.find_commit(commit)?;
        Ok(c.parent_ids().nth(n - 1).map(|id| Oid(id.detach())))
    }

    fn find_commit(&self, commit: CommitId) -> Result<gix::Commit<'_>> {
        self.repo
            .find_commit(commit.0)
            .map_err(|e| object_err(commit.0, "commit", &e))
    }

    /// The first parent, `None` for a root commit. The first parent is the mainline: the pinned
    /// history a merge was made on.
    pub fn parent(&self, commit: CommitId) -> Result<Option<CommitId>> {
        let c = self.find_commit(commit)?;
        Ok(c.parent_ids().next().map(|id| Oid(id.detach())))
    }

    /// The content of `commit`, for validation and diffs.
    pub fn tree(&self, commit: CommitId) -> Result<CommitTree> {
        let c = self.find_commit(commit)?;
        let root = c
            .tree_id()
            .map_err(|e| object_err(commit.0, "commit", &e))?
            .detach();
        Ok(CommitTree::new(
            self.repo.clone(),
            self.view.clone(),
            commit,
            root,
        ))
    }

    /// The Master's pinned commit as this repository knows it, with the ref it was read from:
    /// `refs/steward/pinned` in the Master's own repository (or a mirror of it), else a clone's
    /// remote-tracking copy `refs/remotes/REMOTE/steward/pinned` (`origin` first). A normal
    /// clone fetches branches only; docs/ci.md shows the refspec that brings the pin along.
    /// `None` when no such ref exists.
    pub fn pinned(&self) -> Result<Option<(String, CommitId)>> {
        let mut remotes: Vec<String> = self
            .repo
            .remote_names()
            .iter()
            .map(|n| n.to_str_lossy().into_owned())
            .collect();
        // `origin` first, the others in name order.
        remotes.sort_by_key(|n| (n != "origin", n.clone()));
        let candidates = std::iter::once(crate::pin::PINNED_REF.to_owned()).chain(
            remotes
                .iter()
                .map(|r| format!("refs/remotes/{r}/steward/pinned")),
        );
        for name in candidates {
            if let Some(id) = self.resolve(&name)? {
                return Ok(Some((name, id)));
            }
        }
        Ok(None)
    }

    /// The root tree of `commit`.
    pub fn tree_id(&self, commit: CommitId) -> Result<Oid> {
        let c = self.find_commit(commit)?;
        Ok(Oid(c
            .tree_id()
            .map_err(|e| object_err(commit.0, "commit", &e))?
            .detach()))
    }

    /// Writes the commit object `commit`, dated now, and returns its id. No ref moves: the
    /// caller moves refs, together with others if need be.
    pub fn write_commit(&self, commit: &NewCommit<'_>) -> Result<CommitId> {
        let time = gix::date::Time::now_local_or_utc();
        let sig = |(name, email): (&str, &str)| gix::actor::Signature {
            name: name.into(),
            email: email.into(),
            time,
        };
        let object = gix::objs::Commit {
            tree: commit.tree.0,
            parents: commit.parents.iter().map(|p| p.0).collect(),
            author: sig(commit.author),
            committer: sig(commit.committer),
            encoding: None,
            message: commit.message.clone().into(),
            extra_headers: Vec::new(),
        };
        let id = self
            .repo
            .write_object(&object)
            .map_err(|e| GitError::WriteCommit { cause: chain(&e) })?
            .detach();
        // On disk before a ref names it: a crash must not leave a ref to a missing object.
        let hex = id.to_string();
        let dir = self.repo.git_dir().join("objects").join(&hex[..2]);
        let sync = |path: &Path| std::fs::File::open(path).and_then(|f| f.sync_all());
        match sync(&dir.join(&hex[2..])).and_then(|()| sync(&dir)) {
            Ok(()) => Ok(Oid(id)),
            // Not written because already stored (in a pack): durable already.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Oid(id)),
            Err(e) => Err(GitError::WriteCommit {
                cause: format!("{}: cannot sync: {e}", dir.join(&hex[2..]).display()),
            }),
        }
    }

    /// The first-parent history from `from` back to `until` (excluded), newest first, at most
    /// `limit` commits. The flag says whether `until` was reached: `false` when it is not a
    /// first-parent ancestor of `from` within `limit` commits.
    pub fn first_parents(
        &self,
        from: CommitId,
        until: CommitId,
        limit: usize,
    ) -> Result<(Vec<CommitId>, bool)> {
        let mut out = Vec::new();
        let mut at = Some(from);
        while let Some(c) = at {
            if c == until {
                return Ok((out, true));
            }
            if out.len() == limit {
                break;
            }
            out.push(c);
            at = self.parent(c)?;
        }
        Ok((out, false))
    }

    /// Author, time and summary of `commit`.
    pub fn commit_info(&self, commit: CommitId) -> Result<CommitInfo> {
        let c = self.find_commit(commit)?;
        let err = |e: &gix::Error| object_err(commit.0, "commit", e);
        let author = c.author().map_err(|e| err(&e))?;
        let time = author.time().map_err(|e| err(&e))?.seconds;
        let commit_time = c.time().map_err(|e| err(&e))?.seconds;
        let summary = c
            .message()
            .map(|m| m.summary().to_str_lossy().into_owned())
            .map_err(|e| err(&e))?;
        Ok(CommitInfo {
            id: commit.to_hex(),
            short_id: commit.short(),
            author_name: author.name.to_str_lossy().into_owned(),
            author_email: author.email.to_str_lossy().into_owned(),
            time,
            commit_time,
            summary,
        })
    }
}

fn object_err(id: gix::ObjectId, what: &'static str, e: &gix::Error) -> GitError {
    GitError::Object {
        id: id.to_string(),
        what,
        cause: chain(e),
    }
}
