//! Writing an image from a revision: a source directory copied with its execute bits, or an
//! archive unpacked; symbolic links created last and checked to stay inside.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use schema::model::{AppKind, Application};
use schema::tree::EntryKind;

use super::archive::archive_kind;
use super::{DeployError, Deployer};

/// A symbolic link to create once every file is in place (so no write can go through one).
pub(super) struct PendingLink {
    pub(super) rel: PathBuf,
    pub(super) target: PathBuf,
}

impl Deployer<'_> {
    fn source_missing(&self, app: &Application) -> DeployError {
        DeployError::SourceMissing {
            app: self.app.clone(),
            path: app.source.clone(),
            revision: self.tree.label(),
        }
    }

    pub(super) fn fingerprint(&self, app: &Application) -> Result<String, DeployError> {
        let src = self
            .entry(&app.source)?
            .ok_or_else(|| self.source_missing(app))?;
        let kind = match app.kind {
            AppKind::Static => "static",
            AppKind::Process => "process",
            AppKind::Component => "component",
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
    pub(super) fn materialize(&self, app: &Application, dest: &Path) -> Result<(), DeployError> {
        let mut links = Vec::new();
        let src = self
            .entry(&app.source)?
            .ok_or_else(|| self.source_missing(app))?;
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
                    .ok_or_else(|| self.source_missing(app))?;
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
    pub(super) fn copy_dir(
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
    /// Creates the pending links, then checks each resolves inside `dest` (following chains of
    /// links, as a reader would).
    pub(super) fn create_links(
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
}

/// Writes a file (replacing any earlier one of that name: archives may repeat entries) with mode
/// 0755 or 0644; returns how many bytes it holds.
pub(super) fn write_file(
    path: &Path,
    content: &mut dyn Read,
    executable: bool,
) -> std::io::Result<u64> {
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
