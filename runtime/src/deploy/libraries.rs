//! Libraries: the library directories an application names, copied into its image's `lib/`,
//! and the library path it runs with (the seed's `lib/application` rule).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use schema::model::Application;

use super::staging::{merge_into, tempdir_in};
use super::{DeployError, Deployer};
use crate::layout::ServerHome;

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
pub(super) fn relative_files(dir: &Path) -> BTreeSet<PathBuf> {
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

impl Deployer<'_> {
    pub(super) fn copy_libraries(&self, app: &Application, dest: &Path) -> Result<(), DeployError> {
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
}
