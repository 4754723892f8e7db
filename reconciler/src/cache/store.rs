//! Opening the cache: creating it, locking it, sharing the Master's objects on its machine, and
//! moving a corrupt one aside.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::check::check;
use super::verified::Verified;
use super::{Cache, CacheError, Result, git_err, io};
use crate::git::{CommitTree, Oid, Repo, chain};

/// What [`Cache::open`] found wrong and did about it.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub problem: String,
    /// Where the corrupt repository was moved.
    pub moved_to: PathBuf,
}

/// The seed: a server on the Master's machine needs no configuration transfer. When this domain
/// home also holds the Master's repository (`config/domain.git`), the cache reads the Master's
/// objects in place through Git's alternates mechanism (as `git clone --shared` does), so a new
/// pin is usable at once instead of after an HTTP fetch. If that repository goes away, the
/// cache's integrity check fails and it is rebuilt from a reachable source, as for any damage.
fn share_local_master(domain_home: &Path, git_dir: &Path) -> Result<()> {
    let master = domain_home.join("config/domain.git/objects");
    let Ok(master) = master.canonicalize() else {
        return Ok(());
    };
    let info = git_dir.join("objects/info");
    let file = info.join("alternates");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    let line = master.display().to_string();
    if current.lines().any(|l| l == line) {
        return Ok(());
    }
    std::fs::create_dir_all(&info).map_err(io(&info, "cannot create"))?;
    let tmp = info.join(format!("alternates.tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{current}{line}\n")).map_err(io(&tmp, "cannot write"))?;
    std::fs::rename(&tmp, &file).map_err(io(&file, "cannot replace"))?;
    Ok(())
}

/// `DOMAIN_HOME/.cache/domain.git`.
pub fn git_dir(domain_home: &Path) -> PathBuf {
    domain_home.join(".cache").join("domain.git")
}

fn lock_file(domain_home: &Path) -> Result<File> {
    let dir = domain_home.join(".cache");
    std::fs::create_dir_all(&dir).map_err(io(&dir, "cannot create the cache directory"))?;
    let path = dir.join("lock");
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path, "cannot open the cache lock"))
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cache {
    /// Opens the cache for changes (creating it if needed) under the exclusive lock, and checks
    /// it. A corrupt cache is moved aside and replaced by an empty one; the returned
    /// [`Repaired`] says so, for the caller to report.
    pub fn open(domain_home: &Path) -> Result<(Cache, Option<Repaired>)> {
        let lock = lock_file(domain_home)?;
        let lock_path = domain_home.join(".cache/lock");
        lock.lock()
            .map_err(io(&lock_path, "cannot lock the cache"))?;
        let git_dir = git_dir(domain_home);
        let opened = if git_dir.exists() {
            share_local_master(domain_home, &git_dir)?;
            open_repo(&git_dir).and_then(|repo| {
                let mut verified = Verified::load(&git_dir);
                check(&repo, &git_dir, &mut verified)?;
                Ok((repo, verified))
            })
        } else {
            // A new cache on the Master's machine shares its objects from the start.
            init_repo(&git_dir).and_then(|_| {
                share_local_master(domain_home, &git_dir)?;
                Ok((open_repo(&git_dir)?, Verified::default()))
            })
        };
        let cache = |repo, verified| Cache {
            git_dir: git_dir.clone(),
            repo,
            verified: Mutex::new(verified),
            exclusive: true,
            _lock: lock,
        };
        match opened {
            Ok((repo, verified)) => Ok((cache(repo, verified), None)),
            Err(CacheError::Corrupt { problem, .. }) => {
                let moved_to = move_aside(&git_dir)?;
                let repo = init_repo(&git_dir)?;
                Ok((
                    cache(repo, Verified::default()),
                    Some(Repaired { problem, moved_to }),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens an existing cache to read a known commit, under the shared lock (so no launcher
    /// moves it aside meanwhile). No check: the caller verifies the commit it reads.
    pub fn open_shared(domain_home: &Path) -> Result<Cache> {
        let lock = lock_file(domain_home)?;
        let lock_path = domain_home.join(".cache/lock");
        lock.lock_shared()
            .map_err(io(&lock_path, "cannot lock the cache"))?;
        let git_dir = git_dir(domain_home);
        let repo = open_repo(&git_dir)?;
        Ok(Cache {
            verified: Mutex::new(Verified::load(&git_dir)),
            exclusive: false,
            git_dir,
            repo,
            _lock: lock,
        })
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The cache as a read-only [`Repo`], for reading trees to validate.
    pub fn repo(&self) -> Result<Repo> {
        Ok(Repo::open(&self.git_dir)?)
    }

    /// The tree of `commit`, after reading it fully ([`Cache::verify`]).
    pub fn tree(&self, commit: Oid) -> Result<CommitTree> {
        self.verify(commit)?;
        Ok(self.repo()?.tree(commit)?)
    }
}

fn open_repo(git_dir: &Path) -> Result<gix::Repository> {
    let opts = gix::open::Options::isolated().open_path_as_is(true);
    gix::open_opts(git_dir, opts).map_err(|e| CacheError::Corrupt {
        path: git_dir.to_owned(),
        problem: format!("cannot open the repository: {}", chain(&e)),
    })
}

fn init_repo(git_dir: &Path) -> Result<gix::Repository> {
    gix::init_bare(git_dir).map_err(git_err("cannot create the local cache"))?;
    open_repo(git_dir)
}

/// Renames the corrupt repository to `domain.git.corrupt-<unix time>[-n]` beside it.
fn move_aside(git_dir: &Path) -> Result<PathBuf> {
    let base = format!("domain.git.corrupt-{}", now());
    let parent = git_dir.parent().unwrap_or(Path::new("."));
    let mut target = parent.join(&base);
    let mut n = 1;
    while target.exists() {
        target = parent.join(format!("{base}-{n}"));
        n += 1;
    }
    std::fs::rename(git_dir, &target)
        .map_err(io(git_dir, "cannot move the corrupt cache aside"))?;
    Ok(target)
}
