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
//! The parts: [`image`] writes an image from a revision's source, [`archive`] unpacks the three
//! archive formats with their checks, [`libraries`] copies library directories and resolves the
//! library path, [`staging`] swaps a finished image in and cleans up after killed deployments.
//! They share one `Deployer` and one error type, so nothing reaches the live image unchecked.

mod archive;
mod image;
mod libraries;
mod staging;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub use reconciler::git::{GitSource, SourceEntry, SourceTree};
use schema::model::Application;
use schema::tree::{Entry, TreeError};

use crate::layout::ServerHome;
use crate::logfile::{Level, Logger};
use libraries::relative_files;
pub use libraries::{LibraryWarning, library_path};
use staging::{Staging, swap_in};
pub use staging::{clean_stale_staging, staging_pid};

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

/// One deployment in progress.
struct Deployer<'a> {
    app: String,
    tree: &'a dyn SourceTree,
    ctx: DeployContext<'a>,
    /// `max-unpacked-size`: most bytes an archive may unpack to.
    limit: u64,
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

    fn tree_err(&self, error: TreeError) -> DeployError {
        DeployError::Tree {
            app: self.app.clone(),
            error,
        }
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, DeployError> {
        self.tree.entry(path).map_err(|e| self.tree_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        assert!(valid_app_id("shop-1"));
        for bad in ["", "_generated_", "..", ".x", "a/b", "1a"] {
            assert!(!valid_app_id(bad), "{bad}");
        }
    }
}
