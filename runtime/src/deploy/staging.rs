//! Replacing an image atomically: the staging directory, the exchange, the previous image kept
//! aside, and the staging directories a killed deployment leaves behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::valid_app_id;
use crate::layout::ServerHome;

/// A staging directory under `.workspace/tmp/`, removed on drop unless it was swapped in (then
/// the name holds the old image, or nothing).
pub(super) struct Staging {
    pub(super) path: PathBuf,
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Staging {
    pub(super) fn create(
        home: &ServerHome,
        app: &str,
    ) -> Result<Staging, (PathBuf, std::io::Error)> {
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
pub(super) fn swap_in(
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
pub(super) fn runs(pid: i32, exe: Option<&Path>) -> bool {
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
pub(super) fn tree_size(dir: &Path) -> u64 {
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
pub(super) fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
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
pub(super) fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Creates a fresh directory `<parent>/<prefix>-<n>`.
pub(super) fn tempdir_in(
    parent: &Path,
    prefix: &str,
) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let n = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
    let path = parent.join(format!("{prefix}-{n}"));
    std::fs::create_dir(&path).map_err(|e| (path.clone(), e))?;
    Ok(path)
}

/// Moves everything below `from` into `to` (directories merged), by renaming.
pub(super) fn merge_into(from: &Path, to: &Path) -> Result<(), (PathBuf, std::io::Error)> {
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
}
