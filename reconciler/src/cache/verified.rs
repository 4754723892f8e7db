//! Which objects of the cache were already read with their hash checked, so that opening the
//! cache costs what is new rather than re-hashing every tree, large archives included (seconds
//! per resync).
//!
//! The record, `domain.git/steward-verified`, holds the ids of the objects checked and a stamp
//! (size, inode, modification and change times) of every file of the object stores (the cache's
//! own and its alternates) as they were then. It is trusted only while every stamped file is
//! unchanged: a changed or vanished file (damage, a repack) drops the whole record and everything
//! is read again. A file that appeared since (a fetch's pack, the Master's new loose objects)
//! only adds objects; if it holds a copy of an object already recorded, the record is dropped
//! too, since the copy read could be the new one.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "steward-verified";
/// Past this many ids the record starts again (one full read) rather than grow without bound.
const MAX_IDS: usize = 500_000;

/// What identifies one version of a file: size, inode, mtime and ctime (seconds, nanoseconds).
/// Rewriting a file in place changes its ctime even if its size and mtime are put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp(u64, u64, i64, i64, i64, i64);

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp(
            meta.len(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
    }
}

pub(super) type Files = BTreeMap<PathBuf, Stamp>;

/// How the object stores changed since the record was written.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// A recorded file changed or vanished: nothing recorded can be trusted.
    Changed,
    /// Every recorded file is as it was; these files are new.
    Added(Vec<PathBuf>),
}

/// Compares the stores' files now with those recorded.
pub(super) fn compare(recorded: &Files, current: &Files) -> Change {
    if recorded
        .iter()
        .any(|(path, stamp)| current.get(path) != Some(stamp))
    {
        return Change::Changed;
    }
    Change::Added(
        current
            .keys()
            .filter(|p| !recorded.contains_key(*p))
            .cloned()
            .collect(),
    )
}

#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    files: Files,
    ids: Vec<String>,
}

/// The objects checked, valid for the files stamped.
#[derive(Default)]
pub(super) struct Verified {
    files: Files,
    ids: HashSet<gix::ObjectId>,
}

impl Verified {
    /// The record in `git_dir`; an absent or unreadable one is empty (everything is read again).
    pub(super) fn load(git_dir: &Path) -> Verified {
        let Some(disk) = std::fs::read(git_dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<OnDisk>(&b).ok())
        else {
            return Verified::default();
        };
        let ids: Option<HashSet<_>> = disk
            .ids
            .iter()
            .map(|h| gix::ObjectId::from_hex(h.as_bytes()).ok())
            .collect();
        match ids {
            Some(ids) => Verified {
                files: disk.files,
                ids,
            },
            None => Verified::default(),
        }
    }

    /// Brings the record up to date with the object stores as they are now (see the module).
    pub(super) fn refresh(&mut self, git_dir: &Path, hash: gix::hash::Kind) {
        let current = listing(git_dir);
        match compare(&self.files, &current) {
            Change::Changed => self.ids.clear(),
            Change::Added(new) => {
                for path in new {
                    let Some(held) = ids_in(&path, hash) else {
                        // Cannot tell what it holds (unreadable, a multi-pack index): start over.
                        self.ids.clear();
                        break;
                    };
                    if held.iter().any(|id| self.ids.contains(id)) {
                        self.ids.clear();
                        break;
                    }
                }
            }
        }
        self.files = current;
    }

    pub(super) fn ids(&self) -> &HashSet<gix::ObjectId> {
        &self.ids
    }

    pub(super) fn extend(&mut self, checked: HashSet<gix::ObjectId>) {
        self.ids.extend(checked);
        if self.ids.len() > MAX_IDS {
            self.ids.clear();
        }
    }

    /// Writes the record (temp file, then rename). A failure costs only a full read next time.
    pub(super) fn save(&self, git_dir: &Path) -> std::io::Result<()> {
        let disk = OnDisk {
            files: self.files.clone(),
            ids: self.ids.iter().map(|id| id.to_string()).collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(std::io::Error::other)?;
        let tmp = git_dir.join(format!("{FILE}.tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, git_dir.join(FILE))
    }
}

/// The cache's object directory and those of its alternates.
fn object_dirs(git_dir: &Path) -> Vec<PathBuf> {
    let objects = git_dir.join("objects");
    let alternates = std::fs::read_to_string(objects.join("info/alternates")).unwrap_or_default();
    let mut dirs = vec![objects.clone()];
    dirs.extend(
        alternates
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| objects.join(l)),
    );
    dirs
}

/// Every file that holds objects: packs, their indexes, multi-pack indexes, loose objects.
fn listing(git_dir: &Path) -> Files {
    let mut files = Files::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            files.insert(path, Stamp::of(&meta));
        }
    };
    for dir in object_dirs(git_dir) {
        for entry in read_dir(&dir.join("pack")) {
            let name = entry.to_string_lossy();
            if name.ends_with(".pack") || name.ends_with(".idx") || name == "multi-pack-index" {
                add(dir.join("pack").join(entry));
            }
        }
        for sub in read_dir(&dir) {
            if is_fan_out(&sub.to_string_lossy()) {
                for entry in read_dir(&dir.join(&sub)) {
                    add(dir.join(&sub).join(entry));
                }
            }
        }
    }
    files
}

fn read_dir(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default()
}

fn is_fan_out(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The ids of the objects a new file holds; `None` when that cannot be told.
fn ids_in(path: &Path, hash: gix::hash::Kind) -> Option<Vec<gix::ObjectId>> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    if name.ends_with(".pack") {
        // Its objects are listed by its index, itself a new file when the pack is.
        return Some(Vec::new());
    }
    if name.ends_with(".idx") {
        let index = gix::odb::pack::index::File::at(path, hash).ok()?;
        return Some(index.iter().map(|e| e.oid).collect());
    }
    let dir = path.parent()?.file_name()?.to_string_lossy().into_owned();
    if is_fan_out(&dir) {
        return gix::ObjectId::from_hex(format!("{dir}{name}").as_bytes())
            .ok()
            .map(|id| vec![id]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, u64)]) -> Files {
        entries
            .iter()
            .map(|(p, len)| (PathBuf::from(p), Stamp(*len, 1, 2, 3, 4, 5)))
            .collect()
    }

    #[test]
    fn unchanged_files_keep_the_record_and_new_ones_are_named() {
        let before = files(&[("a.pack", 10), ("a.idx", 2)]);
        assert_eq!(compare(&before, &before), Change::Added(vec![]));
        let after = files(&[("a.pack", 10), ("a.idx", 2), ("b.idx", 3)]);
        assert_eq!(
            compare(&before, &after),
            Change::Added(vec![PathBuf::from("b.idx")])
        );
    }

    #[test]
    fn a_changed_or_vanished_file_drops_the_record() {
        let before = files(&[("a.pack", 10), ("a.idx", 2)]);
        assert_eq!(
            compare(&before, &files(&[("a.pack", 11), ("a.idx", 2)])),
            Change::Changed
        );
        assert_eq!(compare(&before, &files(&[("a.idx", 2)])), Change::Changed);
        let mut touched = before.clone();
        touched.insert("a.pack".into(), Stamp(10, 1, 2, 3, 4, 6));
        assert_eq!(compare(&before, &touched), Change::Changed);
    }

    #[test]
    fn a_loose_object_names_itself() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let path = PathBuf::from(format!("/x/objects/{}/{}", &id[..2], &id[2..]));
        let ids = ids_in(&path, gix::hash::Kind::Sha1).expect("an id");
        assert_eq!(ids[0].to_string(), id);
        assert!(
            ids_in(
                Path::new("/x/objects/pack/multi-pack-index"),
                gix::hash::Kind::Sha1
            )
            .is_none()
        );
    }
}
