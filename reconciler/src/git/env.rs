//! The Git variables of a server hook, and the object view that lets gix read a push's
//! quarantined objects.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice;

use super::{GitError, Result, chain};

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
    pub(super) fn extra_object_dirs(&self) -> Vec<PathBuf> {
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
pub(super) struct ObjectView {
    pub(super) dir: PathBuf,
}

impl ObjectView {
    pub(super) fn create(object_dirs: &[PathBuf]) -> Result<ObjectView> {
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
                    cause: chain(&e),
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
