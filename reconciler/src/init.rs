//! `steward init`: create a domain home whose `config/domain.git` holds the first commit of a
//! domain directory, pinned.
//!
//! Objects, the commit and the refs are written with gix (no `git` binary needed to create a
//! domain). The whole home is built in a hidden directory next to the target and renamed into
//! place at the end, so a failed or killed init leaves no half-made domain home (at worst a
//! `.NAME.steward-init-PID` directory beside it, never the home itself).

use std::path::{Path, PathBuf};

use gix::objs::tree::EntryKind;

use crate::git::{Oid, Repo, WorkTree};
use crate::pin::{Outcome, PinStore, Record, Source};

/// The branch the Master follows and `init` creates.
pub const BRANCH: &str = "refs/heads/main";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}: already exists and is not empty; refusing to overwrite a domain home")]
    Exists(PathBuf),
    #[error("{0}: no such directory")]
    NoSource(PathBuf),
    /// The source directory does not validate; the report says why, with every problem.
    #[error("{}: not a valid domain:\n{}", .dir.display(), .report.render_short())]
    Invalid {
        dir: PathBuf,
        report: Box<schema::diag::Report>,
    },
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("{path}: {what}: {cause}")]
    Git {
        path: PathBuf,
        what: &'static str,
        cause: String,
    },
    #[error(transparent)]
    Pin(#[from] crate::pin::PinError),
    #[error(transparent)]
    Hook(#[from] crate::hook::HookError),
}

type Result<T, E = InitError> = std::result::Result<T, E>;

/// What `init` made.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub home: PathBuf,
    pub commit: Oid,
    /// The configuration of the first commit (validated).
    pub domain: Box<schema::model::Domain>,
    /// Warnings the validator found in the source (the domain is valid, but they are worth showing).
    pub warnings: String,
}

/// Creates the domain home `home` from the domain directory `from`, named `source` in the first
/// commit's message (a path, or "the example domain built into steward"); `steward_exe` is what
/// the installed pre-receive hook runs.
pub fn init(home: &Path, from: &Path, source: &str, steward_exe: &Path) -> Result<Initialized> {
    if !from.is_dir() {
        return Err(InitError::NoSource(from.to_owned()));
    }
    // Validate before anything is written: the problems are about the user's files, labelled as such.
    let validation = schema::validate(&WorkTree::new(from));
    let Some(loaded) = validation.loaded else {
        return Err(InitError::Invalid {
            dir: from.to_owned(),
            report: Box::new(validation.report),
        });
    };
    let warnings = validation.report.render_short();
    let home = std::path::absolute(home).map_err(io(home, "cannot make the path absolute"))?;
    match std::fs::read_dir(&home) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(InitError::Exists(home));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(InitError::Exists(home));
        }
        Err(e) => return Err(io(&home, "cannot inspect")(e)),
    }
    let parent = home.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&parent).map_err(io(&parent, "cannot create the parent directory"))?;
    let name = home
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "domain".into());
    let staging = parent.join(format!(".{name}.steward-init-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(io(&staging, "cannot remove a stale staging directory"))?;
    }
    let built = build(
        &staging,
        from,
        source,
        steward_exe,
        &loaded.domain.config.domain.name,
    );
    let commit = match built {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // rename(2) replaces an empty directory atomically; anything else was refused above.
    if let Err(e) = std::fs::rename(&staging, &home) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(&home, "cannot move the new domain home into place")(e));
    }
    if let Ok(dir) = std::fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(Initialized {
        home,
        commit,
        domain: Box::new(loaded.domain),
        warnings,
    })
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
    let path = path.to_owned();
    move |error| InitError::Io { path, what, error }
}

/// Builds the complete domain home in `root` and returns the pinned commit.
fn build(root: &Path, from: &Path, source: &str, steward_exe: &Path, domain: &str) -> Result<Oid> {
    for dir in ["config", "lib/application", "servers", ".cache"] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p).map_err(io(&p, "cannot create"))?;
    }
    let git_dir = root.join("config").join("domain.git");
    let commit = commit_directory(&git_dir, from, source, domain)?;

    // Never pin what the Master would not: validate the commit itself, not just the directory.
    let repo = Repo::open(&git_dir).map_err(|e| git_err(&git_dir, "cannot reopen", e))?;
    let tree = repo
        .tree(commit)
        .map_err(|e| git_err(&git_dir, "cannot read the new commit", e))?;
    let v = schema::validate(&tree);
    if !v.report.is_valid() {
        return Err(InitError::Invalid {
            dir: from.to_owned(),
            report: Box::new(v.report),
        });
    }
    let info = repo
        .commit_info(commit)
        .map_err(|e| git_err(&git_dir, "cannot read the new commit", e))?;

    let store = PinStore::for_home(root);
    let record = Record {
        outcome: Outcome::Pinned,
        commit: commit.to_hex(),
        previous: None,
        at: crate::pin::now_rfc3339(),
        source: Source::Init,
        author: Some(format!("{} <{}>", info.author_name, info.author_email)),
        pusher: None,
        summary: info.summary,
        problems: Vec::new(),
        more_problems: 0,
        branch_head: None,
    };
    store.pin(commit, None, &record)?;
    crate::hook::install(&git_dir, steward_exe)?;
    Ok(commit)
}

fn git_err(path: &Path, what: &'static str, e: impl std::fmt::Display) -> InitError {
    InitError::Git {
        path: path.to_owned(),
        what,
        cause: e.to_string(),
    }
}

/// Creates the bare repository `git_dir` with one commit on `main` holding every file under
/// `from` (as `WorkTree` sees them: `.git` skipped, empty directories dropped, as Git does).
fn commit_directory(git_dir: &Path, from: &Path, source: &str, domain: &str) -> Result<Oid> {
    let repo =
        gix::init_bare(git_dir).map_err(|e| git_err(git_dir, "cannot create the repository", e))?;
    // The branch the Master follows, whatever init.defaultBranch says on this machine.
    let head = git_dir.join("HEAD");
    std::fs::write(&head, format!("ref: {BRANCH}\n")).map_err(io(&head, "cannot write"))?;
    // Pushes (by HTTP, ssh or file path) must never move the pin themselves: only the Master
    // does, after validating. Hidden refs refuse pushes and can still be fetched.
    let config = git_dir.join("config");
    let mut text = std::fs::read_to_string(&config).map_err(io(&config, "cannot read"))?;
    text.push_str("[receive]\n\thideRefs = refs/steward\n");
    std::fs::write(&config, text).map_err(io(&config, "cannot write"))?;

    let empty = gix::ObjectId::empty_tree(repo.object_hash());
    let mut editor = repo
        .edit_tree(empty)
        .map_err(|e| git_err(git_dir, "cannot start a tree", e))?;
    let mut stack = vec![(from.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(io(&dir, "cannot list"))?;
        for entry in entries {
            let entry = entry.map_err(io(&dir, "cannot list"))?;
            let name = entry.file_name();
            if name == ".git" {
                continue;
            }
            let Some(name) = name.to_str() else {
                return Err(git_err(
                    &entry.path(),
                    "file name is not UTF-8",
                    "rename it",
                ));
            };
            let path = entry.path();
            let child = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path, "cannot inspect"))?;
            let (kind, bytes) = if meta.is_dir() {
                stack.push((path, child));
                continue;
            } else if meta.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(io(&path, "cannot read the link"))?;
                let Some(target) = target.to_str() else {
                    return Err(git_err(&path, "link target is not UTF-8", "change it"));
                };
                (EntryKind::Link, target.as_bytes().to_vec())
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).map_err(io(&path, "cannot read"))?;
                (
                    if crate::git::is_executable(&meta) {
                        EntryKind::BlobExecutable
                    } else {
                        EntryKind::Blob
                    },
                    bytes,
                )
            } else {
                continue; // sockets, fifos: not content
            };
            let id = repo
                .write_blob(&bytes)
                .map_err(|e| git_err(&path, "cannot store", e))?
                .detach();
            editor
                .upsert(child.as_str(), kind, id)
                .map_err(|e| git_err(&path, "cannot add to the tree", e))?;
        }
    }
    let tree = editor
        .write()
        .map_err(|e| git_err(git_dir, "cannot write the tree", e))?
        .detach();
    let now = gix::date::Time::now_local_or_utc();
    let mut time = gix::date::parse::TimeBuf::default();
    let sig = gix::actor::SignatureRef {
        name: "steward init".into(),
        email: "steward@localhost".into(),
        time: now.to_str(&mut time),
    };
    let message = format!(
        "Initial configuration of domain {domain}\n\nImported by `steward init` from {source}.\n"
    );
    let id = repo
        .commit_as(sig, sig, BRANCH, message, tree, Vec::<gix::ObjectId>::new())
        .map_err(|e| git_err(git_dir, "cannot commit", e))?;
    Ok(Oid::from(id.detach()))
}
