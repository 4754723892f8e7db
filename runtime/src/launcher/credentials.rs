//! The servers' credentials file, `DOMAIN_HOME/config/server-credentials`: the account the
//! launcher and the Managed Server use with the Master, kept out of command lines, `ps` and the
//! generated `bin/startServer` scripts.
//!
//! The format is the environment file systemd's `EnvironmentFile=` reads (two lines,
//! `STEWARD_USER=…` and `STEWARD_PASSWORD=…`, `#` comments), so one file serves both. The file
//! must be readable by its owner only (mode 0600): a file others can read is refused, as ssh
//! refuses a readable private key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error(
        "{path}: readable by others (mode {mode:o}); it holds a password: run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}:{line}: expected `STEWARD_USER=…` or `STEWARD_PASSWORD=…`")]
    Syntax { path: PathBuf, line: usize },
    #[error(
        "{path}: gives {given} but not the other; write both STEWARD_USER and STEWARD_PASSWORD"
    )]
    Incomplete { path: PathBuf, given: &'static str },
}

/// Where the file lives in a domain home.
pub fn path(domain_home: &Path) -> PathBuf {
    domain_home.join("config").join("server-credentials")
}

/// Reads the file; `Ok(None)` when there is none.
pub fn read(domain_home: &Path) -> Result<Option<(String, String)>, CredentialsError> {
    read_at(path(domain_home))
}

/// Reads a credentials file of this format at `path` (also the operator's file of
/// `steward admin`); `Ok(None)` when there is none.
pub fn read_at(path: PathBuf) -> Result<Option<(String, String)>, CredentialsError> {
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(CredentialsError::Io {
                path,
                what: "cannot read",
                error,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialsError::Exposed { path, mode });
    }
    let text = std::fs::read_to_string(&path).map_err(|error| CredentialsError::Io {
        path: path.clone(),
        what: "cannot read",
        error,
    })?;
    parse(&text).map_err(|e| match e {
        Parse::Syntax(line) => CredentialsError::Syntax { path, line },
        Parse::Incomplete(given) => CredentialsError::Incomplete { path, given },
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    Syntax(usize),
    Incomplete(&'static str),
}

/// The pure part of [`read`]: `Ok(None)` for a file with neither key.
fn parse(text: &str) -> Result<Option<(String, String)>, Parse> {
    let (mut user, mut password) = (None, None);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        match t.split_once('=') {
            Some(("STEWARD_USER", v)) => user = Some(v.to_owned()),
            Some(("STEWARD_PASSWORD", v)) => password = Some(v.to_owned()),
            _ => return Err(Parse::Syntax(i + 1)),
        }
    }
    match (user, password) {
        (Some(u), Some(p)) => Ok(Some((u, p))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Parse::Incomplete("STEWARD_USER")),
        (None, Some(_)) => Err(Parse::Incomplete("STEWARD_PASSWORD")),
    }
}

/// Writes the file (mode 0600 from its creation, atomically, synced).
pub fn write(domain_home: &Path, user: &str, password: &str) -> Result<PathBuf, CredentialsError> {
    let path = path(domain_home);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |what, p: &Path| {
        let p = p.to_owned();
        move |error| CredentialsError::Io {
            path: p,
            what,
            error,
        }
    };
    let text = format!(
        "# The account Steward's launchers and servers use with the Master (docs/launcher.md).\n\
         # Keep this file mode 0600. The environment (STEWARD_USER/STEWARD_PASSWORD) and -u/-p win over it.\n\
         STEWARD_USER={user}\nSTEWARD_PASSWORD={password}\n"
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    // An existing temp file keeps its old mode through open(2); make sure.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot restrict", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("cannot replace", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_environment_file() {
        assert_eq!(
            parse("# c\n\nSTEWARD_USER=srv\nSTEWARD_PASSWORD=a=b c\n"),
            Ok(Some(("srv".into(), "a=b c".into())))
        );
        assert_eq!(parse("# nothing\n"), Ok(None));
        assert_eq!(parse("USER=x\n"), Err(Parse::Syntax(1)));
        assert_eq!(
            parse("STEWARD_USER=x\n"),
            Err(Parse::Incomplete("STEWARD_USER"))
        );
    }

    #[test]
    fn writes_0600_and_refuses_a_readable_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("config")).unwrap();
        let p = write(d.path(), "srv", "pw").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read(d.path()).unwrap(), Some(("srv".into(), "pw".into())));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read(d.path()),
            Err(CredentialsError::Exposed { mode: 0o644, .. })
        ));
    }
}
