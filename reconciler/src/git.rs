//! Reading the domain repository: commits, their trees, and working directories. (One file for
//! every way Steward reads Git, so gix's API is learnt in one place; hence its length.)
//!
//! Everything Steward validates or diffs is a [`Tree`]: a commit's tree ([`CommitTree`]) or a plain
//! directory ([`WorkTree`], for `steward validate --worktree`). Both report Git object ids as entry
//! fingerprints, so "unchanged" means the same thing whether the content came from a commit or
//! from disk.
//!
//! [`Repo`] is deliberately read-only. It also works inside a Git server hook, where the pushed
//! objects are not yet in the repository but in a quarantine directory: see
//! [`Repo::open_from_env`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;

use gix::bstr::ByteSlice;
use gix::objs::WriteTo;
use gix::objs::tree::{EntryKind as GitEntryKind, EntryMode};
use schema::tree::{Entry, EntryKind, Tree, TreeError};

/// Errors of this module. Messages are self-contained (they include the underlying cause), so a
/// caller can print them with `{}` alone.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{path}: cannot open Git repository: {cause}")]
    Open { path: PathBuf, cause: String },
    #[error("{path}: cannot prepare the object view for the hook environment: {cause}")]
    ObjectView { path: PathBuf, cause: String },
    #[error("cannot determine the current directory: {0}")]
    CurrentDir(std::io::Error),
    #[error("revision {rev:?}: {cause}")]
    Revision { rev: String, cause: String },
    #[error("revision {rev:?} names a {kind}, not a commit")]
    NotACommit { rev: String, kind: String },
    #[error("object {id}: cannot read {what}: {cause}")]
    Object {
        id: String,
        what: &'static str,
        cause: String,
    },
    #[error("{input:?} is not a full hexadecimal object id")]
    InvalidId { input: String },
    #[error("cannot write a commit: {cause}")]
    WriteCommit { cause: String },
}

/// A commit to write with [`Repo::write_commit`]. Identities are `(name, email)`.
#[derive(Debug, Clone)]
pub struct NewCommit<'a> {
    pub tree: Oid,
    pub parents: Vec<Oid>,
    pub author: (&'a str, &'a str),
    pub committer: (&'a str, &'a str),
    pub message: String,
}

type Result<T, E = GitError> = std::result::Result<T, E>;

/// Render an error with its whole `source()` chain: gix errors put the useful detail in sources.
fn cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// A Git object id (commit, tree, blob or tag), printed as full lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(gix::ObjectId);

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

/// The Git variables a server hook runs with. Captured as data (rather than read deep inside
/// [`Repo`]) so the hook path can be tested without mutating the test process's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitEnv {
    /// `GIT_DIR`: the repository. During hooks git sets it (often to `.`, the bare repository).
    pub git_dir: Option<PathBuf>,
    /// `GIT_OBJECT_DIRECTORY`: where new objects go. During `git push` this is the quarantine.
    pub object_directory: Option<PathBuf>,
    /// `GIT_ALTERNATE_OBJECT_DIRECTORIES`: further object directories to read from (during a push,
    /// the repository's own `objects/`).
    pub alternate_object_directories: Vec<PathBuf>,
    /// `GIT_QUARANTINE_PATH`: the quarantine directory (normally equal to `object_directory`).
    pub quarantine_path: Option<PathBuf>,
}

impl GitEnv {
    /// The variables of this process, relative paths taken against its current directory.
    pub fn from_process() -> Result<GitEnv> {
        let cwd = std::env::current_dir().map_err(GitError::CurrentDir)?;
        Ok(GitEnv::from_vars(std::env::vars_os(), &cwd))
    }

    /// The relevant variables out of `vars` (other names are ignored); relative paths are resolved
    /// against `cwd`, the directory the variables were meant for, as git would.
    pub fn from_vars<I, K, V>(vars: I, cwd: &Path) -> GitEnv
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut env = GitEnv::default();
        let path = |v: &OsStr| (!v.is_empty()).then(|| cwd.join(v));
        for (k, v) in vars {
            let v = v.as_ref();
            match k.as_ref().to_str() {
                Some("GIT_DIR") => env.git_dir = path(v),
                Some("GIT_OBJECT_DIRECTORY") => env.object_directory = path(v),
                Some("GIT_QUARANTINE_PATH") => env.quarantine_path = path(v),
                Some("GIT_ALTERNATE_OBJECT_DIRECTORIES") => {
                    env.alternate_object_directories = split_alternates(v)
                        .into_iter()
                        .map(|p| cwd.join(p))
                        .collect();
                }
                _ => {}
            }
        }
        env
    }

    /// Object directories to read from besides the repository's own, in git's search order.
    fn extra_object_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let candidates = self
            .object_directory
            .iter()
            .chain(self.quarantine_path.iter())
            .chain(self.alternate_object_directories.iter());
        for dir in candidates {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        dirs
    }
}

/// Split `GIT_ALTERNATE_OBJECT_DIRECTORIES` as git does: entries separated by the platform's path
/// separator, an entry starting with `"` being C-quoted (so it may contain the separator).
fn split_alternates(value: &OsStr) -> Vec<PathBuf> {
    let sep = if cfg!(windows) { b';' } else { b':' };
    let Ok(bytes) = gix::path::os_str_into_bstr(value) else {
        return std::env::split_paths(value).collect();
    };
    let mut rest: &[u8] = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (entry, consumed) = if rest.starts_with(b"\"") {
            match gix::quote::ansi_c::undo(rest.as_bstr()) {
                Ok((unquoted, consumed)) => (unquoted.into_owned(), consumed),
                Err(_) => {
                    let end = rest.find_byte(sep).unwrap_or(rest.len());
                    (rest[..end].into(), end)
                }
            }
        } else {
            let end = rest.find_byte(sep).unwrap_or(rest.len());
            (rest[..end].into(), end)
        };
        if !entry.is_empty()
            && let Ok(path) = gix::path::from_bstring(entry)
        {
            out.push(path);
        }
        rest = rest.get(consumed..).unwrap_or_default();
        if rest.first() == Some(&sep) {
            rest = &rest[1..];
        }
    }
    out
}

/// A throw-away object directory whose only content is `info/alternates`, listing the hook's
/// object directories and the repository's own. gix builds its object store from one directory
/// plus that directory's alternates file and ignores `GIT_OBJECT_DIRECTORY` and
/// `GIT_ALTERNATE_OBJECT_DIRECTORIES`; pointing it at this directory gives it exactly the view git
/// has inside the hook, without writing into the repository or the quarantine (git would migrate
/// anything written there into the repository when the push is accepted). Removed on drop; if the
/// process is killed, a few bytes stay behind in the temp directory.
struct ObjectView {
    dir: PathBuf,
}

impl ObjectView {
    fn create(object_dirs: &[PathBuf]) -> Result<ObjectView> {
        let base = std::env::temp_dir();
        let err = |path: &Path, e: std::io::Error| GitError::ObjectView {
            path: path.to_owned(),
            cause: e.to_string(),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut attempt = 0u32;
        let dir = loop {
            let dir = base.join(format!(
                "steward-objects-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(err(&dir, e)),
            }
        };
        // From here on, dropping `view` cleans up on every error path.
        let view = ObjectView { dir };
        let info = view.dir.join("info");
        std::fs::create_dir(&info).map_err(|e| err(&info, e))?;
        let mut content = Vec::new();
        for d in object_dirs {
            let bytes =
                gix::path::os_str_into_bstr(d.as_os_str()).map_err(|e| GitError::ObjectView {
                    path: d.clone(),
                    cause: cause(&e),
                })?;
            // C-quoting keeps paths with newlines or leading quotes intact.
            content.extend_from_slice(&gix::quote::ansi_c::quote(bytes));
            content.push(b'\n');
        }
        let file = info.join("alternates");
        std::fs::write(&file, content).map_err(|e| err(&file, e))?;
        Ok(view)
    }
}

impl Drop for ObjectView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
                cause: cause(&e),
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
        let mut repo =
            gix::ThreadSafeRepository::open_opts(path, opts).map_err(|e| GitError::Open {
                path: path.to_owned(),
                cause: cause(&e),
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

    /// The repository directory (`.git` or the bare repository).
    pub fn git_dir(&self) -> &Path {
        self.repo.git_dir()
    }

    /// The underlying gix repository, for operations this wrapper does not offer.
    pub fn gix(&self) -> &gix::Repository {
        &self.repo
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
            cause: cause(e),
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
        Ok(CommitTree {
            repo: self.repo.clone(),
            _view: self.view.clone(),
            commit,
            root,
            dirs: RefCell::new(HashMap::new()),
        })
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
            .map_err(|e| GitError::WriteCommit { cause: cause(&e) })?
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
        cause: cause(e),
    }
}

/// One trailing navigation step of a revision: `~n` (`n`th first-parent ancestor) or `^n`
/// (`n`th parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ancestor(usize),
    Parent(usize),
}

/// Split trailing `~n`/`^n` steps (`~` and `^` alone mean 1) off `rev`, in application order.
/// Spellings with `:` (paths, `:/message` searches) are left whole, since `~` or `^` there is
/// not navigation; ref names cannot contain either character, so elsewhere the split is exact.
fn split_navigation(rev: &str) -> (&str, Vec<Step>) {
    if rev.contains(':') {
        return (rev, Vec::new());
    }
    let mut base = rev;
    let mut steps = Vec::new();
    loop {
        let digits = base.len() - base.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (head, number) = base.split_at(base.len() - digits);
        let n = if number.is_empty() {
            Some(1)
        } else {
            number.parse::<usize>().ok()
        };
        let step = match (head.chars().next_back(), n) {
            (Some('~'), Some(n)) => Step::Ancestor(n),
            (Some('^'), Some(n)) => Step::Parent(n),
            _ => break,
        };
        let rest = &head[..head.len() - 1];
        if rest.is_empty() {
            break;
        }
        steps.push(step);
        base = rest;
    }
    steps.reverse();
    (base, steps)
}

/// Split a [`Tree`] path into its components. `""` and `"."` are the root; empty and `.`
/// components are ignored. `None` when a component is `..`: nothing in a revision is named that,
/// and a working tree must not be escaped through it.
fn components(path: &str) -> Option<Vec<&str>> {
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
    repo: gix::Repository,
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
    /// The commit this tree belongs to.
    pub fn commit(&self) -> CommitId {
        self.commit
    }

    fn tree_err(&self, path: &str, e: &gix::Error) -> TreeError {
        TreeError {
            path: path.to_owned(),
            message: format!("commit {}: {}", self.commit.short(), cause(e)),
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
    fn locate(&self, path: &str) -> Result<Option<(EntryMode, gix::ObjectId)>, TreeError> {
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
            message: cause(&e),
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
                message: cause(&e),
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
                message: cause(&e),
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
                message: cause(&e),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_trailing_navigation() {
        use Step::*;
        assert_eq!(split_navigation("HEAD"), ("HEAD", vec![]));
        assert_eq!(split_navigation("HEAD~"), ("HEAD", vec![Ancestor(1)]));
        assert_eq!(split_navigation("HEAD~12"), ("HEAD", vec![Ancestor(12)]));
        assert_eq!(
            split_navigation("main^2~3^"),
            ("main", vec![Parent(2), Ancestor(3), Parent(1)])
        );
        assert_eq!(split_navigation("v1^{}~1"), ("v1^{}", vec![Ancestor(1)]));
        assert_eq!(
            split_navigation("HEAD@{2}^0"),
            ("HEAD@{2}", vec![Parent(0)])
        );
        assert_eq!(split_navigation("~1"), ("~1", vec![]));
        assert_eq!(split_navigation("HEAD:a~1"), ("HEAD:a~1", vec![]));
        assert_eq!(split_navigation("abc123"), ("abc123", vec![]));
    }
}
