//! `SERVER_HOME = DOMAIN_HOME/servers/<name>` (DESIGN.md §7, normative), created or repaired on
//! every start, and its `bin/startServer` / `bin/stopServer` scripts.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("{0:?} is not a usable server name (letters, digits, `-`, `_`, `.`; no `/`)")]
    BadName(String),
}

/// The `.workspace` subdirectories, as the seed lists them.
pub const WORKSPACE_DIRS: [&str; 5] = ["deployed", "ejbtimerdb", "session", "tmlog", "tmp"];

/// One server's home directory and the well-known paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHome {
    pub domain_home: PathBuf,
    pub name: String,
    pub root: PathBuf,
}

impl ServerHome {
    /// The home of server `name` in `domain_home` (made absolute: scripts and pid checks embed it).
    pub fn new(domain_home: &Path, name: &str) -> Result<ServerHome, LayoutError> {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(LayoutError::BadName(name.to_owned()));
        }
        let domain_home = std::path::absolute(domain_home).map_err(|error| LayoutError::Io {
            path: domain_home.to_owned(),
            what: "cannot make the path absolute",
            error,
        })?;
        let root = domain_home.join("servers").join(name);
        Ok(ServerHome {
            domain_home,
            name: name.to_owned(),
            root,
        })
    }

    pub fn workspace(&self) -> PathBuf {
        self.root.join(".workspace")
    }
    pub fn deployed(&self) -> PathBuf {
        self.workspace().join("deployed")
    }
    /// `.workspace/ejbtimerdb`: the component engine's timer store.
    pub fn ejbtimerdb(&self) -> PathBuf {
        self.workspace().join("ejbtimerdb")
    }
    pub fn tmp(&self) -> PathBuf {
        self.workspace().join("tmp")
    }
    pub fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }
    pub fn lib_application(&self) -> PathBuf {
        self.root.join("lib").join("application")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The server's pid while it runs.
    pub fn pid_file(&self) -> PathBuf {
        self.workspace().join("server.pid")
    }
    /// Locked by the launcher that is starting the server (one at a time).
    pub fn start_lock(&self) -> PathBuf {
        self.workspace().join("start.lock")
    }

    /// Creates every directory of the layout that is missing (and `deployed/_generated_`).
    /// Existing content is left alone; a file where a directory belongs is an error, not
    /// something to delete.
    pub fn create(&self) -> Result<(), LayoutError> {
        let mut dirs: Vec<PathBuf> = WORKSPACE_DIRS
            .iter()
            .map(|d| self.workspace().join(d))
            .collect();
        dirs.push(self.deployed().join("_generated_"));
        dirs.push(self.bin());
        dirs.push(self.lib_application());
        dirs.push(self.logs());
        for d in dirs {
            std::fs::create_dir_all(&d).map_err(|error| LayoutError::Io {
                path: d.clone(),
                what: "cannot create",
                error,
            })?;
        }
        Ok(())
    }

    /// Writes `bin/startServer` and `bin/stopServer`: they run `steward` (at `exe`) for this
    /// domain home and server, so neither needs naming. `start_args` are the source options of
    /// this start (`--master-url …`, `--git-url …`; never credentials), so the script repeats it;
    /// extra arguments given to a script are passed on.
    pub fn write_scripts(&self, exe: &Path, start_args: &[String]) -> Result<(), LayoutError> {
        let q = |s: &str| shell_quote(s);
        let exe = q(&exe.to_string_lossy());
        let home = q(&self.domain_home.to_string_lossy());
        let name = q(&self.name);
        let extra: String = start_args.iter().map(|a| format!(" {}", q(a))).collect();
        let start = format!(
            "#!/bin/sh\n\
             # Starts server {n} of {h}. Written by `steward start-server` on every start;\n\
             # credentials: -u/-p, STEWARD_USER / STEWARD_PASSWORD, else\n\
             # DOMAIN_HOME/config/server-credentials (mode 0600); never written here.\n\
             exec {exe} start-server --domain-home {home} --server {name}{extra} \"$@\"\n",
            n = self.name,
            h = self.domain_home.display(),
        );
        let stop = format!(
            "#!/bin/sh\n\
             # Stops server {n} of {h} gracefully. Written by `steward start-server`.\n\
             exec {exe} stop-server --domain-home {home} --server {name} \"$@\"\n",
            n = self.name,
            h = self.domain_home.display(),
        );
        write_executable(&self.bin().join("startServer"), &start)?;
        write_executable(&self.bin().join("stopServer"), &stop)?;
        Ok(())
    }
}

/// Single-quotes `s` for sh.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '@' | '=')
        })
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes `content` to `path` (atomically, mode 0755), only if it changed.
fn write_executable(path: &Path, content: &str) -> Result<(), LayoutError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |what, error| LayoutError::Io {
        path: path.to_owned(),
        what,
        error,
    };
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, content).map_err(|e| err("cannot write", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err("cannot make executable", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("cannot replace", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_repairs_the_layout() {
        let d = std::env::temp_dir().join(format!("steward-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let home = ServerHome::new(&d, "server1").unwrap();
        home.create().unwrap();
        for sub in [
            ".workspace/deployed/_generated_",
            ".workspace/ejbtimerdb",
            ".workspace/session",
            ".workspace/tmlog",
            ".workspace/tmp",
            "bin",
            "lib/application",
            "logs",
        ] {
            assert!(d.join("servers/server1").join(sub).is_dir(), "{sub}");
        }
        std::fs::remove_dir_all(d.join("servers/server1/.workspace/tmlog")).unwrap();
        home.create().unwrap();
        assert!(d.join("servers/server1/.workspace/tmlog").is_dir());
        home.write_scripts(
            Path::new("/usr/bin/steward"),
            &["--git-url".into(), "a b".into()],
        )
        .unwrap();
        let s = std::fs::read_to_string(d.join("servers/server1/bin/startServer")).unwrap();
        assert!(s.contains("start-server --domain-home"), "{s}");
        assert!(s.contains("--server server1 --git-url 'a b' \"$@\""), "{s}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn refuses_path_like_names() {
        for bad in ["", "..", "a/b", "a b"] {
            assert!(ServerHome::new(Path::new("/tmp"), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
