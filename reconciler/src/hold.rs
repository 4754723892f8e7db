//! The hold of a mirrored domain (`DOMAIN_HOME/config/hold.json`): while it is set, new upstream
//! heads are validated and recorded as held instead of pinned, so a rollback is not undone by
//! the next upstream commit. Set by a rollback in mirror mode or by an operator, cleared by
//! `resume`. Kept in a file so that a Master restart keeps holding.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::wire::Hold;

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("{path}: not a hold record ({error}); remove the file to resume following upstream")]
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// Where the hold of domain home `home` is kept.
pub fn path(home: &Path) -> PathBuf {
    home.join("config").join("hold.json")
}

/// The hold, `None` when the domain follows its upstream.
pub fn read(home: &Path) -> Result<Option<Hold>, HoldError> {
    let path = path(home);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| HoldError::Corrupt { path, error }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(HoldError::Io {
            path,
            what: "cannot read",
            error,
        }),
    }
}

/// Sets (`Some`) or clears the hold, durably: written to a temporary file, synced, renamed.
pub fn write(home: &Path, hold: Option<&Hold>) -> Result<(), HoldError> {
    let path = path(home);
    let io = |what: &'static str, p: &Path| {
        let p = p.to_owned();
        move |error| HoldError::Io {
            path: p,
            what,
            error,
        }
    };
    let Some(hold) = hold else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("cannot remove", &path)(e))
            }
            _ => sync_dir(&path).map_err(io("cannot sync the directory of", &path)),
        };
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let body = serde_json::to_vec_pretty(hold)
        .map_err(|e| io("cannot encode", &path)(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("cannot replace", &path))?;
    sync_dir(&path).map_err(io("cannot sync the directory of", &path))
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_across_reads_and_clears() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(d.path().join("config")).expect("config");
        assert_eq!(read(d.path()).expect("none"), None);
        let hold = Hold {
            since: "2026-12-01T10:00:00Z".into(),
            by: "admin".into(),
            reason: "rollback".into(),
            held_head: None,
        };
        write(d.path(), Some(&hold)).expect("write");
        assert_eq!(read(d.path()).expect("read"), Some(hold));
        write(d.path(), None).expect("clear");
        write(d.path(), None).expect("clearing twice is fine");
        assert_eq!(read(d.path()).expect("none"), None);
        std::fs::write(path(d.path()), "{").expect("torn");
        let e = read(d.path()).expect_err("corrupt");
        assert!(e.to_string().contains("remove the file"), "{e}");
    }
}
