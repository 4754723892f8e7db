//! Unpacking `.tar`, `.tar.gz`/`.tgz` and `.zip` with every escape refused and every checksum
//! and size checked.

use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::image::{PendingLink, write_file};
use super::{DeployError, Deployer, MAX_ENTRIES};

/// A reader that fails once the deployment is cancelled, so a long unpack stops within one
/// buffer.
pub(super) struct Cancellable<'a, R> {
    inner: R,
    cancel: Option<&'a AtomicBool>,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(std::io::Error::other("deployment cancelled"));
        }
        self.inner.read(buf)
    }
}

impl<R: std::io::Seek> std::io::Seek for Cancellable<'_, R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// What an archive is, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArchiveKind {
    Tar,
    TarGz,
    Zip,
}

pub(super) fn archive_kind(path: &str) -> Option<ArchiveKind> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        Some(ArchiveKind::TarGz)
    } else if lower.ends_with(".tar") {
        Some(ArchiveKind::Tar)
    } else if lower.ends_with(".zip") {
        Some(ArchiveKind::Zip)
    } else {
        None
    }
}

impl Deployer<'_> {
    pub(super) fn too_large(&self, archive: &str) -> DeployError {
        self.archive_err(
            archive,
            format!(
                "unpacks to more than {} (applications.{}.max-unpacked-size)",
                schema::values::ByteSize(self.limit),
                self.app
            ),
        )
    }

    pub(super) fn unpack(
        &self,
        kind: ArchiveKind,
        archive: &str,
        bytes: &[u8],
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        match kind {
            ArchiveKind::Tar => self.unpack_tar(archive, bytes, dest, links),
            ArchiveKind::TarGz => {
                // The decoder checks the gzip trailer (CRC-32 and length) when it reaches the end
                // of the stream: `unpack_tar` reads to that end.
                let gz = flate2::read::MultiGzDecoder::new(bytes);
                self.unpack_tar(archive, gz, dest, links)
            }
            ArchiveKind::Zip => self.unpack_zip(archive, bytes, dest, links),
        }
    }

    pub(super) fn refused(&self, archive: &str, entry: &str, reason: &str) -> DeployError {
        DeployError::Refused {
            app: self.app.clone(),
            archive: archive.to_owned(),
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        }
    }

    pub(super) fn archive_err(&self, archive: &str, cause: impl fmt::Display) -> DeployError {
        DeployError::Archive {
            app: self.app.clone(),
            archive: archive.to_owned(),
            cause: cause.to_string(),
        }
    }

    pub(super) fn unpack_tar(
        &self,
        archive: &str,
        reader: impl Read,
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        use tar::EntryType as T;
        // Checked on the unpacked side: a small compressed input is read in one go, and the time
        // goes into inflating it.
        let mut ar = tar::Archive::new(Cancellable {
            inner: reader,
            cancel: self.ctx.cancel,
        });
        let mut budget = self.limit;
        let entries = ar.entries().map_err(|e| self.archive_err(archive, e))?;
        for (count, entry) in entries.enumerate() {
            if count >= MAX_ENTRIES {
                return Err(self.archive_err(archive, format!("more than {MAX_ENTRIES} entries")));
            }
            self.check_cancel()?;
            let mut entry = entry.map_err(|e| self.archive_err(archive, e))?;
            let raw = entry
                .path()
                .map_err(|e| self.archive_err(archive, e))?
                .into_owned();
            let shown = raw.display().to_string();
            let kind = entry.header().entry_type();
            if matches!(kind, T::XGlobalHeader | T::XHeader | T::GNULongName) {
                continue;
            }
            let rel = safe_relative(&raw).map_err(|r| self.refused(archive, &shown, r))?;
            let Some(rel) = rel else { continue };
            let abs = dest.join(&rel);
            match kind {
                T::Regular | T::Continuous => {
                    let size = entry.size();
                    if size > budget {
                        return Err(self.too_large(archive));
                    }
                    budget -= size;
                    let exec = entry
                        .header()
                        .mode()
                        .map(|m| m & 0o111 != 0)
                        .unwrap_or(false);
                    if let Some(parent) = abs.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| self.io(parent, "cannot create", e))?;
                    }
                    let written = write_file(&abs, &mut (&mut entry).take(size), exec)
                        .map_err(|e| self.entry_err(archive, &shown, &abs, e))?;
                    if written != size {
                        return Err(self.refused(
                            archive,
                            &shown,
                            &format!(
                                "the archive ends inside this entry ({written} of its {size} bytes)"
                            ),
                        ));
                    }
                }
                T::Directory => {
                    std::fs::create_dir_all(&abs).map_err(|e| self.io(&abs, "cannot create", e))?
                }
                T::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.archive_err(archive, e))?
                        .ok_or_else(|| self.refused(archive, &shown, "link without target"))?
                        .into_owned();
                    if target.is_absolute() {
                        return Err(self.refused(
                            archive,
                            &shown,
                            "symbolic link to an absolute path",
                        ));
                    }
                    links.push(PendingLink { rel, target });
                }
                T::Link => return Err(self.refused(archive, &shown, "hard links are not allowed")),
                other => {
                    return Err(self.refused(
                        archive,
                        &shown,
                        &format!(
                            "entry type {other:?} is not allowed (only files, directories, links)"
                        ),
                    ));
                }
            }
        }
        // Read to the end of the stream: a compressed archive's trailer (its checksum and length)
        // is checked only there. What follows the last entry counts against the limit too.
        let mut rest = ar.into_inner().take(budget.saturating_add(1));
        let trailing = std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| {
            if self.ctx.cancelled() {
                DeployError::Cancelled {
                    app: self.app.clone(),
                }
            } else {
                self.archive_err(archive, format!("corrupt after the last entry: {e}"))
            }
        })?;
        if trailing > budget {
            return Err(self.too_large(archive));
        }
        Ok(())
    }

    /// A failure while unpacking entry `entry` to `abs`: corrupt data (a checksum or the
    /// compressed stream) names the entry; anything else is a write failure.
    pub(super) fn entry_err(
        &self,
        archive: &str,
        entry: &str,
        abs: &Path,
        e: std::io::Error,
    ) -> DeployError {
        if self.ctx.cancelled() {
            return DeployError::Cancelled {
                app: self.app.clone(),
            };
        }
        match e.kind() {
            std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::UnexpectedEof => {
                self.refused(archive, entry, &format!("corrupt data: {e}"))
            }
            _ => self.io(abs, "cannot write", e),
        }
    }

    pub(super) fn unpack_zip(
        &self,
        archive: &str,
        bytes: &[u8],
        dest: &Path,
        links: &mut Vec<PendingLink>,
    ) -> Result<(), DeployError> {
        let reader = Cancellable {
            inner: std::io::Cursor::new(bytes),
            cancel: self.ctx.cancel,
        };
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| self.archive_err(archive, e))?;
        if zip.len() > MAX_ENTRIES {
            return Err(self.archive_err(archive, format!("more than {MAX_ENTRIES} entries")));
        }
        let mut budget = self.limit;
        for i in 0..zip.len() {
            self.check_cancel()?;
            let mut file = zip.by_index(i).map_err(|e| self.archive_err(archive, e))?;
            let name = file.name().to_owned();
            if name.contains('\\') {
                return Err(self.refused(archive, &name, "backslash in a path"));
            }
            let rel =
                safe_relative(Path::new(&name)).map_err(|r| self.refused(archive, &name, r))?;
            let Some(rel) = rel else { continue };
            let abs = dest.join(&rel);
            let mode = file.unix_mode();
            let is_link = mode.is_some_and(|m| m & 0o170000 == 0o120000);
            if file.is_dir() {
                std::fs::create_dir_all(&abs).map_err(|e| self.io(&abs, "cannot create", e))?;
                continue;
            }
            let size = file.size();
            if size > budget {
                return Err(self.too_large(archive));
            }
            budget -= size;
            if is_link {
                let mut target = String::new();
                (&mut file)
                    .take(4096)
                    .read_to_string(&mut target)
                    .map_err(|e| self.entry_err(archive, &name, &abs, e))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    return Err(self.refused(archive, &name, "symbolic link to an absolute path"));
                }
                links.push(PendingLink { rel, target });
                continue;
            }
            if let Some(m) = mode
                && m & 0o170000 != 0
                && m & 0o170000 != 0o100000
            {
                return Err(self.refused(
                    archive,
                    &name,
                    "only files, directories and links are allowed",
                ));
            }
            if let Some(parent) = abs.parent() {
                std::fs::create_dir_all(parent).map_err(|e| self.io(parent, "cannot create", e))?;
            }
            let exec = mode.is_some_and(|m| m & 0o111 != 0);
            // One byte more than declared: a stream longer than its size field is caught (and
            // bounded), and the reader reaches the entry's end, where it checks the CRC-32.
            let mut data = Cancellable {
                inner: (&mut file).take(size + 1),
                cancel: self.ctx.cancel,
            };
            let written = write_file(&abs, &mut data, exec)
                .map_err(|e| self.entry_err(archive, &name, &abs, e))?;
            if written != size {
                return Err(self.refused(
                    archive,
                    &name,
                    &if written > size {
                        format!("its data is longer than its declared size of {size} bytes")
                    } else {
                        format!("its data ends after {written} of its declared {size} bytes")
                    },
                ));
            }
        }
        Ok(())
    }
}

/// The path of an archive entry as a plain relative path: `None` for the root itself, an error
/// for anything that could leave the image.
pub(super) fn safe_relative(path: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in a path"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_cannot_escape() {
        assert_eq!(
            safe_relative(Path::new("./a/b")).ok().flatten(),
            Some(PathBuf::from("a/b"))
        );
        assert!(safe_relative(Path::new("a/../../b")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
        assert_eq!(safe_relative(Path::new("./")).ok().flatten(), None);
    }
}
