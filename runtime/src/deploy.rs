//! Deployment and isolation: an application's content, taken from one commit, becomes its deploy
//! image at `SERVER_HOME/.workspace/deployed/<app-id>/` (the seed's "deploy image"), with its
//! generated files in `deployed/_generated_/<app-id>/`, its working directory in
//! `.workspace/tmp/<app-id>/`, and its library path resolved as the seed resolves
//! `lib/application`.
//!
//! Replacement is atomic: the new image is written into a staging directory under
//! `.workspace/tmp/` and exchanged with the live one in one `renameat2(RENAME_EXCHANGE)`, so a
//! reader sees either the whole old image or the whole new one; when anything fails before that
//! step, the old image is untouched and the error says why. The replaced image is kept as
//! `.workspace/tmp/.previous-<app-id>/` until the next deployment of that application (a process
//! application still running from it keeps working until the engine switches over).
//!
//! Archives (`.tar`, `.tar.gz`/`.tgz`, `.zip`) are unpacked with every escape refused: absolute
//! paths, `..`, hard links, device files, and symbolic links that resolve outside the image. Their
//! integrity is checked too: each zip entry's CRC-32 and declared size, each tar entry's length,
//! the gzip trailer (CRC and length) of a `.tar.gz`, and the total against the application's
//! `max-unpacked-size`. A refused archive fails that application only, and the error names the
//! entry.
//!
//! A staging directory is named `.staging-<app>-<pid>-<n>`: one left by a process that was
//! killed mid-deployment is removed at the next start ([`clean_stale_staging`]).
//!
//! Everything here is blocking file-system work; the server runs it under `spawn_blocking`
//! (a [`GitSource`] is not `Send` and must be created on that thread).
//!
//! One file, long: directory copies, the three archive formats, the checks and the swap share
//! one `Deployer` and one error type, and splitting them would spread one invariant (nothing
//! reaches the live image unchecked) over several files.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reconciler::git::{CommitId, CommitTree, Repo};
use schema::model::{AppKind, Application};
use schema::tree::{Entry, EntryKind, MemTree, Tree, TreeError};

use crate::layout::ServerHome;
use crate::logfile::{Level, Logger};

/// Errors of deployment. Each names the application and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{app:?} is not a usable application id (a letter, then letters, digits, `-` or `_`)")]
    BadName { app: String },
    #[error("application {app}: source {path:?} is not in revision {revision}")]
    SourceMissing {
        app: String,
        path: String,
        revision: String,
    },
    #[error(
        "application {app}: source {path:?} is a file but not an archive (`.tar`, `.tar.gz`, `.tgz`, `.zip`)"
    )]
    NotAnArchive { app: String, path: String },
    #[error("application {app}: library {path:?} is not a directory in revision {revision}")]
    LibraryMissing {
        app: String,
        path: String,
        revision: String,
    },
    #[error(
        "application {app}: library file lib/{file} is provided twice (by {first} and by {second}); rename one"
    )]
    LibraryConflict {
        app: String,
        file: String,
        first: String,
        second: String,
    },
    #[error("application {app}: archive {archive}: entry {entry:?} refused: {reason}")]
    Refused {
        app: String,
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("application {app}: archive {archive}: {cause}")]
    Archive {
        app: String,
        archive: String,
        cause: String,
    },
    #[error("application {app}: symbolic link {link} in {origin} points outside the deploy image")]
    LinkOutside {
        app: String,
        link: String,
        origin: String,
    },
    #[error("application {app}: reading the revision: {error}")]
    Tree { app: String, error: TreeError },
    #[error("application {app}: {path}: {what}: {error}")]
    Io {
        app: String,
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("cannot read commit {commit}: {cause}")]
    Git { commit: String, cause: String },
    #[error("application {app}: deployment cancelled (superseded)")]
    Cancelled { app: String },
}

/// Most entries an archive may hold.
pub const MAX_ENTRIES: usize = 200_000;

/// How a deployment runs: what may stop it early, and where its steps are logged (at the `debug`
/// level).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployContext<'a> {
    /// Set from another thread to stop the deployment soon ([`DeployError::Cancelled`]); the
    /// live image is then untouched and the staging directory removed.
    pub cancel: Option<&'a AtomicBool>,
    pub log: Option<&'a Logger>,
}

impl DeployContext<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// One entry of a directory in a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub name: String,
    pub kind: EntryKind,
    /// The owner-execute bit as Git records it (`100755`).
    pub executable: bool,
}

/// What deployment needs from a revision beyond [`Tree`]: listing a directory with modes, and the
/// target of a symbolic link. An extension here rather than in the schema crate because only
/// deployment copies whole directories.
pub trait SourceTree: Tree {
    /// The entries of the directory at `dir` (`""` is the root), `None` if it is not a directory.
    fn list(&self, dir: &str) -> Result<Option<Vec<SourceEntry>>, TreeError>;
    /// The target of the symbolic link at `path`, `None` if it is not a link.
    fn link_target(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError>;
}

/// A commit of a repository, readable as a [`SourceTree`]. Not `Send` (nor is [`CommitTree`]):
/// create it on the blocking thread that deploys.
pub struct GitSource {
    tree: CommitTree,
    repo: gix::Repository,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("commit", &self.tree.commit())
            .finish()
    }
}

impl GitSource {
    pub fn open(repo: &Repo, commit: CommitId) -> Result<GitSource, DeployError> {
        let tree = repo.tree(commit).map_err(|e| DeployError::Git {
            commit: commit.to_hex(),
            cause: e.to_string(),
        })?;
        Ok(GitSource {
            tree,
            repo: repo.gix().clone(),
        })
    }

    pub fn commit(&self) -> CommitId {
        self.tree.commit()
    }

    fn err(&self, path: &str, e: impl fmt::Display) -> TreeError {
        TreeError {
            path: path.to_owned(),
            message: format!("commit {}: {e}", self.tree.commit().short()),
        }
    }

    /// The object id of what `path` names, with its kind.
    fn object(&self, path: &str) -> Result<Option<(EntryKind, gix::ObjectId)>, TreeError> {
        let Some(entry) = self.tree.entry(path)? else {
            return Ok(None);
        };
        let id = gix::ObjectId::from_hex(entry.id.as_bytes()).map_err(|e| self.err(path, e))?;
        Ok(Some((entry.kind, id)))
    }
}

impl Tree for GitSource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        self.tree.read(path)
    }
    fn entry(&self, path: &str) -> Result<Option<Entry>, TreeError> {
        self.tree.entry(path)
    }
    fn label(&self) -> String {
        self.tree.label()
    }
}

impl SourceTree for GitSource {
    fn list(&self, dir: &str) -> Result<Option<Vec<SourceEntry>>, TreeError> {
        use gix::objs::tree::EntryKind as K;
        let Some((EntryKind::Dir, id)) = self.object(dir)? else {
            return Ok(None);
        };
        let tree = self.repo.find_tree(id).map_err(|e| self.err(dir, e))?;
        let mut out = Vec::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&tree.data, id.kind()) {
            let entry = entry.map_err(|e| self.err(dir, e))?;
            let (kind, executable) = match entry.mode.kind() {
                K::Tree => (EntryKind::Dir, false),
                K::Blob => (EntryKind::File, false),
                K::BlobExecutable => (EntryKind::File, true),
                K::Link => (EntryKind::Symlink, false),
                // A submodule's content is not in this repository.
                K::Commit => continue,
            };
            let name = String::from_utf8(entry.filename.to_vec())
                .map_err(|_| self.err(dir, "a file name is not UTF-8"))?;
            out.push(SourceEntry {
                name,
                kind,
                executable,
            });
        }
        Ok(Some(out))
    }

    fn link_target(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        let Some((EntryKind::Symlink, id)) = self.object(path)? else {
            return Ok(None);
        };
        let blob = self.repo.find_blob(id).map_err(|e| self.err(path, e))?;
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

/// The result of deploying one application: where everything is, for the engine and the
/// supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The application id (its name in `domain.toml`).
    pub app: String,
    /// `.workspace/deployed/<app-id>/`: the deploy image (read-only by convention).
    pub image: PathBuf,
    /// `.workspace/deployed/_generated_/<app-id>/`: files written at deploy time.
    pub generated: PathBuf,
    /// `.workspace/tmp/<app-id>/`: the application's working directory (writable, kept across
    /// redeployments, removed on undeploy).
    pub work_dir: PathBuf,
    /// The library path, first match wins: `<image>/lib`, `SERVER_HOME/lib/application`,
    /// `DOMAIN_HOME/lib/application`.
    pub library_path: Vec<PathBuf>,
    /// Server libraries that shadow domain libraries: the caller logs each.
    pub warnings: Vec<LibraryWarning>,
    /// Identifies the deployed content (kind, source and library object ids): equal fingerprints
    /// mean nothing to redeploy.
    pub fingerprint: String,
    /// True when the image on disk already had this fingerprint and was kept as it was.
    pub reused: bool,
}

impl Deployment {
    /// `STEWARD_LIBRARY_PATH`: the library path joined with `:`.
    pub fn library_path_var(&self) -> String {
        self.library_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A server library that shadows a domain library of the same relative path: the server's is
/// used and the domain's is ignored on this server (the seed's `lib/application` rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryWarning {
    /// The path both share, relative to their `lib/application`.
    pub name: PathBuf,
    /// The server library, which is used.
    pub used: PathBuf,
    /// The domain library, which is ignored.
    pub shadowed: PathBuf,
}

impl fmt::Display for LibraryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server library {} overrides domain library {}; the domain's is ignored on this server",
            self.used.display(),
            self.shadowed.display()
        )
    }
}

/// Whether `name` can be an application id: it becomes a directory name, so it must not be able
/// to name anything else (`..`, `_generated_`, a hidden staging directory).
pub fn valid_app_id(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The directories of one application in `home`, whether deployed or not.
pub fn paths(home: &ServerHome, app: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        home.deployed().join(app),
        home.deployed().join("_generated_").join(app),
        home.tmp().join(app),
    )
}

/// Deploys application `name` from `tree` into `home`. See the module documentation.
pub fn deploy(
    home: &ServerHome,
    tree: &dyn SourceTree,
    name: &str,
    app: &Application,
) -> Result<Deployment, DeployError> {
    deploy_with(home, tree, name, app, DeployContext::default())
}

/// [`deploy`], cancellable and logging its steps.
pub fn deploy_with(
    home: &ServerHome,
    tree: &dyn SourceTree,
    name: &str,
    app: &Application,
    ctx: DeployContext<'_>,
) -> Result<Deployment, DeployError> {
    if !valid_app_id(name) {
        return Err(DeployError::BadName {
            app: name.to_owned(),
        });
    }
    let d = Deployer {
        app: name.to_owned(),
        tree,
        ctx,
        limit: app.max_unpacked_size.0,
    };
    let (image, generated, work_dir) = paths(home, name);
    for dir in [home.deployed(), home.tmp(), work_dir.clone()] {
        std::fs::create_dir_all(&dir).map_err(|e| d.io(&dir, "cannot create", e))?;
    }
    let fingerprint = d.fingerprint(app)?;
    let record = generated.join("deployment.json");
    let previous = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("fingerprint")?.as_str().map(str::to_owned));
    let reused = previous.as_deref() == Some(fingerprint.as_str()) && image.is_dir();
    if reused {
        d.debug(
            "SERVER-0520",
            &format!("image unchanged ({fingerprint}); kept as it is"),
        );
    } else {
        let staging = Staging::create(home, name).map_err(|(p, e)| d.io(&p, "cannot create", e))?;
        d.debug(
            "SERVER-0521",
            &format!(
                "writing the image from {} of {} into {}",
                app.source,
                tree.label(),
                staging.path.display()
            ),
        );
        let started = std::time::Instant::now();
        d.materialize(app, &staging.path)?;
        // Counting walks the whole image: only when the line is written.
        if d.ctx.log.is_some_and(|l| l.enables(Level::Fine)) {
            d.debug(
                "SERVER-0522",
                &format!(
                    "content written ({} file(s)) in {} ms",
                    relative_files(&staging.path).len(),
                    started.elapsed().as_millis()
                ),
            );
        }
        d.check_cancel()?;
        swap_in(home, name, &staging.path, &image).map_err(|(p, w, e)| d.io(&p, w, e))?;
        d.debug(
            "SERVER-0524",
            &format!(
                "new image swapped in at {}; the replaced one (if any) is kept at {}",
                image.display(),
                home.tmp().join(format!(".previous-{name}")).display()
            ),
        );
        std::fs::create_dir_all(&generated).map_err(|e| d.io(&generated, "cannot create", e))?;
        let body = serde_json::json!({
            "app": name,
            "revision": tree.label(),
            "source": app.source,
            "libraries": app.libraries,
            "fingerprint": fingerprint,
        });
        let tmp = generated.join(".deployment.json.tmp");
        std::fs::write(&tmp, format!("{body:#}\n"))
            .and_then(|()| std::fs::rename(&tmp, &record))
            .map_err(|e| d.io(&record, "cannot write", e))?;
    }
    let (library_path, warnings) = library_path(home, &image);
    Ok(Deployment {
        app: name.to_owned(),
        image,
        generated,
        work_dir,
        library_path,
        warnings,
        fingerprint,
        reused,
    })
}

/// Removes an application's image, generated files, previous image and working directory.
pub fn undeploy(home: &ServerHome, name: &str) -> Result<(), DeployError> {
    if !valid_app_id(name) {
        return Err(DeployError::BadName {
            app: name.to_owned(),
        });
    }
    let (image, generated, work_dir) = paths(home, name);
    let previous = home.tmp().join(format!(".previous-{name}"));
    for dir in [image, generated, work_dir, previous] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(DeployError::Io {
                    app: name.to_owned(),
                    path: dir,
                    what: "cannot remove",
                    error,
                });
            }
        }
    }
    Ok(())
}

/// The library path of an application whose image is `image`, and the shadowing warnings:
/// `<image>/lib`, then `SERVER_HOME/lib/application`, then `DOMAIN_HOME/lib/application`. All
/// three are listed whether they exist or not (a library added later is found without a
/// redeploy).
pub fn library_path(home: &ServerHome, image: &Path) -> (Vec<PathBuf>, Vec<LibraryWarning>) {
    let server = home.lib_application();
    let domain = home.domain_home.join("lib").join("application");
    let mut warnings = Vec::new();
    let server_files = relative_files(&server);
    let domain_files = relative_files(&domain);
    for name in server_files.intersection(&domain_files) {
        warnings.push(LibraryWarning {
            name: name.clone(),
            used: server.join(name),
            shadowed: domain.join(name),
        });
    }
    (vec![image.join("lib"), server, domain], warnings)
}

/// Every file (or link) below `dir`, relative to it; nothing if `dir` does not exist.
fn relative_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(read) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in read.flatten() {
            let child = rel.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(child),
                Ok(_) => {
                    out.insert(child);
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// A staging directory under `.workspace/tmp/`, removed on drop unless it was swapped in (then
/// the name holds the old image, or nothing).
struct Staging {
    path: PathBuf,
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Staging {
    fn create(home: &ServerHome, app: &str) -> Result<Staging, (PathBuf, std::io::Error)> {
        let n = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = home
            .tmp()
            .join(format!(".staging-{app}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| (path.clone(), e))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Puts `staging` at `image` in one step, leaving the old image (if any) at
/// `.workspace/tmp/.previous-<app>` and `staging` empty.
fn swap_in(
    home: &ServerHome,
    app: &str,
    staging: &Path,
    image: &Path,
) -> Result<(), (PathBuf, &'static str, std::io::Error)> {
    let previous = home.tmp().join(format!(".previous-{app}"));
    match std::fs::remove_dir_all(&previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err((previous, "cannot remove the previous image", e)),
    }
    if !image.exists() {
        return std::fs::rename(staging, image)
            .map_err(|e| (image.to_owned(), "cannot move the new image in place", e));
    }
    match exchange(staging, image) {
        Ok(()) => {}
        // Some file systems lack RENAME_EXCHANGE: two renames, with a window in which the image
        // is absent (requests then get 404, never a mix of versions).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            std::fs::rename(image, &previous)
                .map_err(|e| (image.to_owned(), "cannot move the old image aside", e))?;
            if let Err(e) = std::fs::rename(staging, image) {
                let _ = std::fs::rename(&previous, image);
                return Err((image.to_owned(), "cannot move the new image in place", e));
            }
            return Ok(());
        }
        Err(e) => return Err((image.to_owned(), "cannot exchange the images", e)),
    }
    // `staging` now holds the old image.
    std::fs::rename(staging, &previous).map_err(|e| (previous, "cannot keep the old image", e))
}

/// The pid in a staging directory's name (`.staging-<app>-<pid>-<n>`); `None` for any other name.
pub fn staging_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(".staging-")?;
    let (head, n) = rest.rsplit_once('-')?;
    let (app, pid) = head.rsplit_once('-')?;
    if !valid_app_id(app) || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

/// Removes the staging directories in `.workspace/tmp/` left by processes that no longer run
/// (a kill during a deployment); one whose pid is a live process running `exe` (another
/// `steward` deploying now) is left alone, and so is any live process's when `exe` is unknown.
/// Returns the removed paths with their size in bytes.
pub fn clean_stale_staging(home: &ServerHome, exe: Option<&Path>) -> Vec<(PathBuf, u64)> {
    let Ok(read) = std::fs::read_dir(home.tmp()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in read.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(staging_pid) else {
            continue;
        };
        if pid == std::process::id() as i32 || runs(pid, exe) {
            continue;
        }
        let path = e.path();
        let size = tree_size(&path);
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push((path, size));
        }
    }
    removed
}

/// Whether `pid` is a live process running the executable `exe` (any live process when `exe` is
/// unknown: then nothing live is taken for stale).
fn runs(pid: i32, exe: Option<&Path>) -> bool {
    let Some(exe) = exe else {
        return crate::process::alive(pid);
    };
    crate::process::alive(pid)
        && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
            // A rebuilt binary shows as `<path> (deleted)`: still the same program.
            p == exe
                || p.to_string_lossy().strip_suffix(" (deleted)") == Some(&exe.to_string_lossy())
        })
}

/// Bytes of the files below `dir`, links not followed.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in read.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Atomically exchanges two directories (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

/// One deployment in progress.
struct Deployer<'a> {
    app: String,
    tree: &'a dyn SourceTree,
    ctx: DeployContext<'a>,
    /// `max-unpacked-size`: most bytes an archive may unpack to.
    limit: u64,
}

/// A reader that fails once the deployment is cancelled, so a long unpack stops within one
/// buffer.
struct Cancellable<'a, R> {
    inner: R,
    cancel: Option<&'a AtomicBool>,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(std::io::Error::other("deployment cancelled"));
        }
        self.inner.read(buf)
    }
}

impl<R: std::io::Seek> std::io::Seek for Cancellable<'_, R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// What an archive is, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Tar,
    TarGz,
    Zip,
}

fn archive_kind(path: &str) -> Option<ArchiveKind> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        Some(ArchiveKind::TarGz)
    } else if lower.ends_with(".tar") {
        Some(ArchiveKind::Tar)
    } else if lower.ends_with(".zip") {
        Some(ArchiveKind::Zip)
    } else {
        None
    }
}

/// A symbolic link to create once every file is in place (so no write can go through one).
struct PendingLink {
    rel: PathBuf,
    target: PathBuf,
}

impl Deployer<'_> {
    fn io(&self, path: &Path, what: &'static str, error: std::io::Error) -> DeployError {
        if self.ctx.cancelled() {
            return DeployError::Cancelled {
                app: self.app.clone(),
            };
        }
        DeployError::Io {
            app: self.app.clone(),
            path: path.to_owned(),
            what,
            error,
        }
    }

    fn check_cancel(&self) -> Result<(), DeployError> {
        if self.ctx.cancelled() {
            return Err(DeployError::Cancelled {
                app: self.app.clone(),
            });
        }
        Ok(())
    }

    /// A deployment step, logged at the `debug` level.
    fn debug(&self, id: &str, step: &str) {
        if let Some(log) = self.ctx.log {
            log.debug(id, &format!("Application {}: {step}.", self.app));
        }
    }

    fn too_large(&self, archive: &str) -> DeployError {
        self.archive_err(
            archive,
            format!(
                "unpacks to more than {} (applications.{}.max-unpacked-size)",
                schema::values::ByteSize(self.limit),
                self.app
            ),
        )
    }

    fn tree_err(&self, error: TreeError) -> DeployError {
        DeployError::Tree {
            app: self.app.clone(),
            error,
        }
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, DeployError> {
        self.tree.entry(path).map_err(|e| self.tree_err(e))
    }

    fn fingerprint(&self, app: &Application) -> Result<String, DeployError> {
        let src = self
            .entry(&app.source)?
            .ok_or_else(|| DeployError::SourceMissing {
                app: self.app.clone(),
                path: app.source.clone(),
                revision: self.tree.label(),
            })?;
        let kind = match app.kind {
            AppKind::Static => "static",
            AppKind::Process => "process",
        };
        let mut fp = format!("{kind}:{}", src.id);
        for lib in &app.libraries {
            match self.entry(lib)? {
                Some(e) if e.kind == EntryKind::Dir => {
                    fp.push(',');
                    fp.push_str(&e.id);
                }
                _ => {
                    return Err(DeployError::LibraryMissing {
                        app: self.app.clone(),
                        path: lib.clone(),
                        revision: self.tree.label(),
                    });
                }
            }
        }
        Ok(fp)
    }

    /// Writes the whole image into `dest` (an empty directory).
    fn materialize(&self, app: &Application, dest: &Path) -> Result<(), DeployError> {
        let mut links = Vec::new();
        let src = self
            .entry(&app.source)?
            .ok_or_else(|| DeployError::SourceMissing {
                app: self.app.clone(),
                path: app.source.clone(),
                revision: self.tree.label(),
            })?;
        match src.kind {
            EntryKind::Dir => self.copy_dir(&app.source, dest, &mut links)?,
            EntryKind::File => {
                let kind = archive_kind(&app.source).ok_or_else(|| DeployError::NotAnArchive {
                    app: self.app.clone(),
                    path: app.source.clone(),
                })?;
                let bytes = self
                    .tree
                    .read(&app.source)
                    .map_err(|e| self.tree_err(e))?
                    .ok_or_else(|| DeployError::SourceMissing {
                        app: self.app.clone(),
                        path: app.source.clone(),
                        revision: self.tree.label(),
                    })?;
                self.unpack(kind, &app.source, &bytes, dest, &mut links)?;
            }
            EntryKind::Symlink => {
                return Err(DeployError::NotAnArchive {
                    app: self.app.clone(),
                    path: app.source.clone(),
                });
            }
        }
        self.create_links(dest, &links, &app.source)?;
        self.copy_libraries(app, dest)?;
        Ok(())
    }

    /// Copies the directory `src` of the revision into `dest`, files with their execute bit.
    fn copy_dir(
        &self,
        src: &str,
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        let mut stack = vec![(src.trim_end_matches('/').to_owned(), PathBuf::new())];
        while let Some((dir, rel)) = stack.pop() {
            self.check_cancel()?;
            let entries = self
                .tree
                .list(&dir)
                .map_err(|e| self.tree_err(e))?
                .unwrap_or_default();
            for e in entries {
                let path = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                let child = rel.join(&e.name);
                let abs = dest.join(&child);
                match e.kind {
                    EntryKind::Dir => {
                        std::fs::create_dir_all(&abs)
                            .map_err(|err| self.io(&abs, "cannot create", err))?;
                        stack.push((path, child));
                    }
                    EntryKind::File => {
                        let bytes = self
                            .tree
                            .read(&path)
                            .map_err(|err| self.tree_err(err))?
                            .unwrap_or_default();
                        write_file(&abs, &mut bytes.as_slice(), e.executable)
                            .map_err(|err| self.io(&abs, "cannot write", err))?;
                    }
                    EntryKind::Symlink => {
                        let target = self
                            .tree
                            .link_target(&path)
                            .map_err(|err| self.tree_err(err))?
                            .unwrap_or_default();
                        let target =
                            String::from_utf8(target).map_err(|_| DeployError::LinkOutside {
                                app: self.app.clone(),
                                link: path.clone(),
                                origin: src.to_owned(),
                            })?;
                        links.push(PendingLink {
                            rel: child,
                            target: PathBuf::from(target),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies each library directory into `<dest>/lib/`, refusing a file provided twice.
    fn copy_libraries(&self, app: &Application, dest: &Path) -> Result<(), DeployError> {
        if app.libraries.is_empty() {
            return Ok(());
        }
        let lib = dest.join("lib");
        std::fs::create_dir_all(&lib).map_err(|e| self.io(&lib, "cannot create", e))?;
        // Who provided each file so far: the image itself, or a library directory.
        let mut owners: std::collections::BTreeMap<PathBuf, String> = relative_files(&lib)
            .into_iter()
            .map(|p| (p, format!("{}/lib", app.source)))
            .collect();
        self.debug(
            "SERVER-0523",
            &format!(
                "copying the libraries {} into lib/",
                app.libraries.join(", ")
            ),
        );
        for src in &app.libraries {
            let staging = tempdir_in(dest, ".lib-staging")
                .map_err(|(p, e)| self.io(&p, "cannot create", e))?;
            let mut links = Vec::new();
            self.copy_dir(src, &staging, &mut links)?;
            self.create_links(&staging, &links, src)?;
            for rel in relative_files(&staging) {
                if let Some(first) = owners.get(&rel) {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(DeployError::LibraryConflict {
                        app: self.app.clone(),
                        file: rel.display().to_string(),
                        first: first.clone(),
                        second: src.clone(),
                    });
                }
                owners.insert(rel, src.clone());
            }
            merge_into(&staging, &lib).map_err(|(p, e)| self.io(&p, "cannot move", e))?;
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok(())
    }

    /// Creates the pending links, then checks each resolves inside `dest` (following chains of
    /// links, as a reader would).
    fn create_links(
        &self,
        dest: &Path,
        links: &[PendingLink],
        origin: &str,
    ) -> Result<(), DeployError> {
        let outside = |rel: &Path| DeployError::LinkOutside {
            app: self.app.clone(),
            link: rel.display().to_string(),
            origin: origin.to_owned(),
        };
        for l in links {
            if l.target.is_absolute() {
                return Err(outside(&l.rel));
            }
            let abs = dest.join(&l.rel);
            if let Some(parent) = abs.parent() {
                std::fs::create_dir_all(parent).map_err(|e| self.io(parent, "cannot create", e))?;
            }
            std::os::unix::fs::symlink(&l.target, &abs)
                .map_err(|e| self.io(&abs, "cannot create link", e))?;
        }
        let root = dest
            .canonicalize()
            .map_err(|e| self.io(dest, "cannot resolve", e))?;
        for l in links {
            match dest.join(&l.rel).canonicalize() {
                Ok(real) if real.starts_with(&root) => {}
                // Dangling or outside: either way not something the image may hold.
                _ => return Err(outside(&l.rel)),
            }
        }
        Ok(())
    }

    fn unpack(
        &self,
        kind: ArchiveKind,
        archive: &str,
        bytes: &[u8],
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        match kind {
            ArchiveKind::Tar => self.unpack_tar(archive, bytes, dest, links),
            ArchiveKind::TarGz => {
                // The decoder checks the gzip trailer (CRC-32 and length) when it reaches the end
                // of the stream: `unpack_tar` reads to that end.
                let gz = flate2::read::MultiGzDecoder::new(bytes);
                self.unpack_tar(archive, gz, dest, links)
            }
            ArchiveKind::Zip => self.unpack_zip(archive, bytes, dest, links),
        }
    }

    fn refused(&self, archive: &str, entry: &str, reason: &str) -> DeployError {
        DeployError::Refused {
            app: self.app.clone(),
            archive: archive.to_owned(),
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn archive_err(&self, archive: &str, cause: impl fmt::Display) -> DeployError {
        DeployError::Archive {
            app: self.app.clone(),
            archive: archive.to_owned(),
            cause: cause.to_string(),
        }
    }

    fn unpack_tar(
        &self,
        archive: &str,
        reader: impl Read,
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        use tar::EntryType as T;
        // Checked on the unpacked side: a small compressed input is read in one go, and the time
        // goes into inflating it.
        let mut ar = tar::Archive::new(Cancellable {
            inner: reader,
            cancel: self.ctx.cancel,
        });
        let mut budget = self.limit;
        let entries = ar.entries().map_err(|e| self.archive_err(archive, e))?;
        for (count, entry) in entries.enumerate() {
            if count >= MAX_ENTRIES {
                return Err(self.archive_err(archive, format!("more than {MAX_ENTRIES} entries")));
            }
            self.check_cancel()?;
            let mut entry = entry.map_err(|e| self.archive_err(archive, e))?;
            let raw = entry
                .path()
                .map_err(|e| self.archive_err(archive, e))?
                .into_owned();
            let shown = raw.display().to_string();
            let kind = entry.header().entry_type();
            if matches!(kind, T::XGlobalHeader | T::XHeader | T::GNULongName) {
                continue;
            }
            let rel = safe_relative(&raw).map_err(|r| self.refused(archive, &shown, r))?;
            let Some(rel) = rel else { continue };
            let abs = dest.join(&rel);
            match kind {
                T::Regular | T::Continuous => {
                    let size = entry.size();
                    if size > budget {
                        return Err(self.too_large(archive));
                    }
                    budget -= size;
                    let exec = entry
                        .header()
                        .mode()
                        .map(|m| m & 0o111 != 0)
                        .unwrap_or(false);
                    if let Some(parent) = abs.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| self.io(parent, "cannot create", e))?;
                    }
                    let written = write_file(&abs, &mut (&mut entry).take(size), exec)
                        .map_err(|e| self.entry_err(archive, &shown, &abs, e))?;
                    if written != size {
                        return Err(self.refused(
                            archive,
                            &shown,
                            &format!(
                                "the archive ends inside this entry ({written} of its {size} bytes)"
                            ),
                        ));
                    }
                }
                T::Directory => {
                    std::fs::create_dir_all(&abs).map_err(|e| self.io(&abs, "cannot create", e))?
                }
                T::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.archive_err(archive, e))?
                        .ok_or_else(|| self.refused(archive, &shown, "link without target"))?
                        .into_owned();
                    if target.is_absolute() {
                        return Err(self.refused(
                            archive,
                            &shown,
                            "symbolic link to an absolute path",
                        ));
                    }
                    links.push(PendingLink { rel, target });
                }
                T::Link => return Err(self.refused(archive, &shown, "hard links are not allowed")),
                other => {
                    return Err(self.refused(
                        archive,
                        &shown,
                        &format!(
                            "entry type {other:?} is not allowed (only files, directories, links)"
                        ),
                    ));
                }
            }
        }
        // Read to the end of the stream: a compressed archive's trailer (its checksum and length)
        // is checked only there. What follows the last entry counts against the limit too.
        let mut rest = ar.into_inner().take(budget.saturating_add(1));
        let trailing = std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| {
            if self.ctx.cancelled() {
                DeployError::Cancelled {
                    app: self.app.clone(),
                }
            } else {
                self.archive_err(archive, format!("corrupt after the last entry: {e}"))
            }
        })?;
        if trailing > budget {
            return Err(self.too_large(archive));
        }
        Ok(())
    }

    /// A failure while unpacking entry `entry` to `abs`: corrupt data (a checksum or the
    /// compressed stream) names the entry; anything else is a write failure.
    fn entry_err(&self, archive: &str, entry: &str, abs: &Path, e: std::io::Error) -> DeployError {
        if self.ctx.cancelled() {
            return DeployError::Cancelled {
                app: self.app.clone(),
            };
        }
        match e.kind() {
            std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::UnexpectedEof => {
                self.refused(archive, entry, &format!("corrupt data: {e}"))
            }
            _ => self.io(abs, "cannot write", e),
        }
    }

    fn unpack_zip(
        &self,
        archive: &str,
        bytes: &[u8],
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        let reader = Cancellable {
            inner: std::io::Cursor::new(bytes),
            cancel: self.ctx.cancel,
        };
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| self.archive_err(archive, e))?;
        if zip.len() > MAX_ENTRIES {
            return Err(self.archive_err(archive, format!("more than {MAX_ENTRIES} entries")));
        }
        let mut budget = self.limit;
        for i in 0..zip.len() {
            self.check_cancel()?;
            let mut file = zip.by_index(i).map_err(|e| self.archive_err(archive, e))?;
            let name = file.name().to_owned();
            if name.contains('\\') {
                return Err(self.refused(archive, &name, "backslash in a path"));
            }
            let rel =
                safe_relative(Path::new(&name)).map_err(|r| self.refused(archive, &name, r))?;
            let Some(rel) = rel else { continue };
            let abs = dest.join(&rel);
            let mode = file.unix_mode();
            let is_link = mode.is_some_and(|m| m & 0o170000 == 0o120000);
            if file.is_dir() {
                std::fs::create_dir_all(&abs).map_err(|e| self.io(&abs, "cannot create", e))?;
                continue;
            }
            let size = file.size();
            if size > budget {
                return Err(self.too_large(archive));
            }
            budget -= size;
            if is_link {
                let mut target = String::new();
                (&mut file)
                    .take(4096)
                    .read_to_string(&mut target)
                    .map_err(|e| self.entry_err(archive, &name, &abs, e))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    return Err(self.refused(archive, &name, "symbolic link to an absolute path"));
                }
                links.push(PendingLink { rel, target });
                continue;
            }
            if let Some(m) = mode
                && m & 0o170000 != 0
                && m & 0o170000 != 0o100000
            {
                return Err(self.refused(
                    archive,
                    &name,
                    "only files, directories and links are allowed",
                ));
            }
            if let Some(parent) = abs.parent() {
                std::fs::create_dir_all(parent).map_err(|e| self.io(parent, "cannot create", e))?;
            }
            let exec = mode.is_some_and(|m| m & 0o111 != 0);
            // One byte more than declared: a stream longer than its size field is caught (and
            // bounded), and the reader reaches the entry's end, where it checks the CRC-32.
            let mut data = Cancellable {
                inner: (&mut file).take(size + 1),
                cancel: self.ctx.cancel,
            };
            let written = write_file(&abs, &mut data, exec)
                .map_err(|e| self.entry_err(archive, &name, &abs, e))?;
            if written != size {
                return Err(self.refused(
                    archive,
                    &name,
                    &if written > size {
                        format!("its data is longer than its declared size of {size} bytes")
                    } else {
                        format!("its data ends after {written} of its declared {size} bytes")
                    },
                ));
            }
        }
        Ok(())
    }
}

/// The path of an archive entry as a plain relative path: `None` for the root itself, an error
/// for anything that could leave the image.
fn safe_relative(path: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in a path"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Writes a file (replacing any earlier one of that name: archives may repeat entries) with mode
/// 0755 or 0644; returns how many bytes it holds.
fn write_file(path: &Path, content: &mut dyn Read, executable: bool) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(path)?;
    let n = std::io::copy(content, &mut f)?;
    f.flush()?;
    Ok(n)
}

/// Creates a fresh directory `<parent>/<prefix>-<n>`.
fn tempdir_in(parent: &Path, prefix: &str) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let n = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
    let path = parent.join(format!("{prefix}-{n}"));
    std::fs::create_dir(&path).map_err(|e| (path.clone(), e))?;
    Ok(path)
}

/// Moves everything below `from` into `to` (directories merged), by renaming.
fn merge_into(from: &Path, to: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let read = std::fs::read_dir(from).map_err(|e| (from.to_owned(), e))?;
    for e in read {
        let e = e.map_err(|err| (from.to_owned(), err))?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && dst.is_dir() {
            merge_into(&src, &dst)?;
        } else {
            std::fs::rename(&src, &dst).map_err(|err| (dst.clone(), err))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_cannot_escape() {
        assert_eq!(
            safe_relative(Path::new("./a/b")).ok().flatten(),
            Some(PathBuf::from("a/b"))
        );
        assert!(safe_relative(Path::new("a/../../b")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
        assert_eq!(safe_relative(Path::new("./")).ok().flatten(), None);
    }

    #[test]
    fn staging_names_carry_their_pid() {
        assert_eq!(staging_pid(".staging-shop-1234-0"), Some(1234));
        assert_eq!(staging_pid(".staging-my-app-77-12"), Some(77));
        for other in [
            ".previous-shop",
            "shop",
            ".staging-shop-x-0",
            ".staging-shop-12",
            ".staging--12-0",
            ".staging-shop-0-1",
        ] {
            assert_eq!(staging_pid(other), None, "{other}");
        }
    }

    #[test]
    fn app_ids() {
        assert!(valid_app_id("shop-1"));
        for bad in ["", "_generated_", "..", ".x", "a/b", "1a"] {
            assert!(!valid_app_id(bad), "{bad}");
        }
    }
}
