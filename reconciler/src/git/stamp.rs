//! A cheap fingerprint of what a Git server's ref advertisement depends on: the refs (loose and
//! packed), `HEAD`, the repository's `config` and `shallow` file. Git replaces each of these by
//! renaming a lock file into place, so every change gives the file a new inode (and usually a new
//! size and mtime): equal stamps mean an advertisement made for one is still true for the other.
//! It reads file metadata only (no ref is parsed), so checking it costs far less than the
//! `git http-backend` → `receive-pack`/`upload-pack` processes that make an advertisement.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::git::GitError;

/// What [`stamp`] returns: a hash of the metadata of every file it looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefsStamp(u64);

/// The stamp of the refs of the bare repository `git_dir`.
pub fn stamp(git_dir: &Path) -> Result<RefsStamp, GitError> {
    let mut h = schema::fasthash::Fnv::default();
    for name in ["HEAD", "packed-refs", "config", "shallow"] {
        file(&git_dir.join(name), &mut h).map_err(|e| io(git_dir, e))?;
    }
    dir(&git_dir.join("refs"), &mut h).map_err(|e| io(git_dir, e))?;
    Ok(RefsStamp(h.finish()))
}

fn io(git_dir: &Path, e: std::io::Error) -> GitError {
    GitError::Stamp {
        path: git_dir.to_owned(),
        cause: e,
    }
}

fn file(path: &Path, h: &mut impl Hasher) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => meta(&m, h),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0u8.hash(h),
        Err(e) => return Err(e),
    }
    Ok(())
}

fn meta(m: &std::fs::Metadata, h: &mut impl Hasher) {
    (m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime_nsec()).hash(h);
}

/// Every entry under `refs/`, sorted so that the directory's order does not matter.
fn dir(path: &Path, h: &mut impl Hasher) -> std::io::Result<()> {
    let mut entries = match std::fs::read_dir(path) {
        Ok(rd) => rd.collect::<std::io::Result<Vec<_>>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        e.file_name().hash(h);
        let m = e.metadata()?;
        meta(&m, h);
        if m.is_dir() {
            dir(&e.path(), h)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn changes_with_every_ref_change_and_only_then() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wc = tmp.path().join("wc");
        let bare = tmp.path().join("bare.git");
        std::fs::create_dir(&wc).expect("mkdir");
        git(&wc, &["init", "-q", "-b", "main"]);
        git(&wc, &["commit", "-q", "--allow-empty", "-m", "one"]);
        git(tmp.path(), &["clone", "-q", "--bare", "wc", "bare.git"]);
        let s0 = stamp(&bare).expect("stamp");
        assert_eq!(s0, stamp(&bare).expect("stamp"), "nothing changed");
        // Reading objects, or writing them, is not a ref change.
        git(&bare, &["cat-file", "-p", "main"]);
        assert_eq!(s0, stamp(&bare).expect("stamp"));

        git(&wc, &["commit", "-q", "--allow-empty", "-m", "two"]);
        git(&wc, &["push", "-q", bare.to_str().expect("utf-8"), "main"]);
        let s1 = stamp(&bare).expect("stamp");
        assert_ne!(s0, s1, "a pushed branch");

        git(&bare, &["update-ref", "refs/steward/pinned", "main"]);
        let s2 = stamp(&bare).expect("stamp");
        assert_ne!(s1, s2, "a new ref in a new directory");

        git(&bare, &["pack-refs", "--all"]);
        let s3 = stamp(&bare).expect("stamp");
        assert_ne!(s2, s3, "refs packed");

        git(&bare, &["config", "receive.advertisePushOptions", "false"]);
        assert_ne!(s3, stamp(&bare).expect("stamp"), "the config");
    }
}
