//! Configuration as commits: `steward admin set`, `unset`, `deploy`, `undeploy` (docs/admin.md).
//! Each brings the work clone ([`reconciler::workclone`]) to the branch head, edits `domain.toml`
//! with [`schema::edit`] (and copies an application's content), validates the result with the
//! one validator, shows the plan with each change marked, and on confirmation commits as the
//! operator and pushes to the Master. A push that loses a race with another one is rebased: the
//! same edit is made again on the new head, validated and planned again, and pushed.

use std::path::{Path, PathBuf};

use reconciler::git::{Repo, WorkTree};
use reconciler::wire::RepositoryMode;
use reconciler::workclone::{Credentials, Pushed, WorkClone, WorkCloneError};
use schema::edit::Op;
use schema::plan::Plan;

use super::{Api, ApiError};

/// Pushes tried before giving up on a branch that keeps moving.
pub const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    WorkClone(#[from] WorkCloneError),
    #[error(transparent)]
    Edit(#[from] schema::edit::EditError),
    #[error(transparent)]
    Git(#[from] reconciler::git::GitError),
    #[error("{0}")]
    Tree(#[from] schema::tree::TreeError),
    #[error(
        "the domain mirrors {url} (mirror mode): its configuration changes there, not through the Master"
    )]
    Mirror { url: String },
    #[error("no cache directory for the work clone: set XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--author {0:?}: write it as `Name <mail>`")]
    Author(String),
    #[error("validating the running revision panicked")]
    Panicked,
    #[error("{path}: not a file or directory to deploy")]
    NotContent { path: PathBuf },
    #[error(
        "the branch {branch} moved under each of {attempts} pushes (others are pushing); nothing was changed: try again"
    )]
    Raced { branch: String, attempts: usize },
}

/// Content to put into the repository before the edit: `from` on this machine, `to` a path in
/// the repository (replaced whole).
#[derive(Debug, Clone)]
pub struct Copy {
    pub from: PathBuf,
    pub to: String,
    /// Removed first (`to` or a directory holding it), so no stale file stays.
    pub replace: String,
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub ops: Vec<Op>,
    pub copies: Vec<Copy>,
    pub dry_run: bool,
    /// `Name <mail>`; default: the Master user.
    pub author: Option<String>,
    /// Default: what the edit does.
    pub message: Option<String>,
}

/// What the command shows and asks while it works.
pub trait Ui {
    fn plan(&mut self, plan: &Plan);
    fn invalid(&mut self, report: &schema::diag::Report);
    /// Whether to commit and push the plan just shown.
    fn confirm(&mut self) -> bool;
    /// The branch moved since the edit began: it is made again on `onto`.
    fn rebasing(&mut self, onto: &str);
}

/// How an edit ended.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The files are already so.
    Unchanged,
    /// The edit makes the configuration invalid; nothing was committed.
    Invalid {
        report: serde_json::Value,
    },
    DryRun {
        plan: serde_json::Value,
    },
    Declined {
        plan: serde_json::Value,
    },
    Pushed {
        commit: String,
        plan: serde_json::Value,
        /// 1, or more when the branch moved and the edit was rebased.
        attempts: usize,
    },
    /// The Master's validation refused the push.
    Rejected {
        commit: String,
        problems: Vec<serde_json::Value>,
        /// What the Master and git said.
        remote: String,
    },
}

/// Where the work clone of `master` lives: the user's cache directory.
pub fn clone_dir(master: &str) -> Result<PathBuf, EditError> {
    let dirs = directories::ProjectDirs::from("", "", "steward").ok_or(EditError::NoCacheDir)?;
    Ok(dirs
        .cache_dir()
        .join("admin")
        .join(reconciler::workclone::dir_name(master)))
}

/// The default commit message: what the edit does, and who made it how.
pub fn message(ops: &[Op], user: &str) -> String {
    let what: Vec<String> = ops.iter().map(ToString::to_string).collect();
    format!(
        "steward admin: {}\n\nMade with `steward admin` by {user}.\n",
        what.join("; ")
    )
}

pub fn run(api: &Api, req: &Request, ui: &mut dyn Ui) -> Result<Outcome, EditError> {
    let domain = api.domain()?;
    if domain.mode == RepositoryMode::Mirror {
        return Err(EditError::Mirror {
            url: domain.upstream.map(|u| u.url).unwrap_or_default(),
        });
    }
    let author = req
        .author
        .clone()
        .unwrap_or_else(|| format!("{0} <{0}@{1}>", api.connection().user, domain.name));
    // Git would take a bare name for a pattern to search earlier authors with.
    let (name, mail) = reconciler::workclone::split_author(&author);
    if name.is_empty() || mail.is_empty() || !author.trim_end().ends_with('>') {
        return Err(EditError::Author(author));
    }
    // Refusals as the API's own errors (which permission is missing), before any git runs.
    api.git_access(false)?;
    if !req.dry_run {
        api.git_access(true)?;
    }
    let conn = api.connection();
    let clone = WorkClone::open(
        &clone_dir(&conn.master)?,
        &format!("{}/git/domain.git", conn.master),
        &domain.branch,
        Credentials::basic(&conn.user, &conn.password),
    )?;
    let message = req
        .message
        .clone()
        .unwrap_or_else(|| message(&req.ops, &conn.user));
    let mut confirmed = false;
    for attempt in 1..=MAX_ATTEMPTS {
        let head = clone.sync()?;
        apply(&clone, req)?;
        if !clone.changed()? {
            return Ok(Outcome::Unchanged);
        }
        // From what runs: the pin (in hosted mode the head, unless a push is being decided).
        let pin = match attempt {
            1 => domain.pinned.commit.clone(),
            _ => api.domain()?.pinned.commit,
        };
        let pinned = pin.as_str();
        let (base, described) = match pinned.is_empty() || !clone.has(pinned) {
            true => (head, format!("the branch head {}", head.short())),
            false => {
                let pin = clone.rev(pinned)?;
                (pin, format!("the pinned commit {}", pin.short()))
            }
        };
        // The two revisions validate on two threads, as `steward diff` does; trees are not
        // `Send`, so the second thread opens the repository itself.
        let (proposed, running) = std::thread::scope(|s| {
            let running = s.spawn(|| -> Result<Option<schema::Loaded>, EditError> {
                let repo = Repo::open(clone.path())?;
                Ok(schema::validate(&repo.tree(base)?).loaded)
            });
            let proposed = schema::validate(&Proposed(WorkTree::new(clone.path())));
            (proposed, running.join())
        });
        let Some(new) = proposed.loaded else {
            ui.invalid(&proposed.report);
            return Ok(Outcome::Invalid {
                report: proposed.report.to_json(),
            });
        };
        let running = running.map_err(|_| EditError::Panicked)??;
        let mut plan = schema::plan::plan(running.as_ref(), &new);
        plan.from = base.short();
        plan.to = "this change".into();
        plan.base = Some(described);
        ui.plan(&plan);
        if req.dry_run {
            return Ok(Outcome::DryRun {
                plan: plan.to_json(),
            });
        }
        if !confirmed {
            if !ui.confirm() {
                return Ok(Outcome::Declined {
                    plan: plan.to_json(),
                });
            }
            confirmed = true;
        }
        let commit = clone.commit(&author, &message)?;
        match clone.push()? {
            Pushed::Accepted => {
                return Ok(Outcome::Pushed {
                    commit: commit.to_hex(),
                    plan: plan.to_json(),
                    attempts: attempt,
                });
            }
            Pushed::Refused { remote } => {
                let now = clone.fetch()?;
                if now != head {
                    // Another push won the race: make the same edit on its result.
                    ui.rebasing(&now.short());
                    continue;
                }
                let problems = api
                    .history(50)?
                    .into_iter()
                    .find(|r| r.commit == commit.to_hex())
                    .map(|r| r.problems)
                    .unwrap_or_default();
                return Ok(Outcome::Rejected {
                    commit: commit.to_hex(),
                    problems,
                    remote,
                });
            }
        }
    }
    Err(EditError::Raced {
        branch: domain.branch,
        attempts: MAX_ATTEMPTS,
    })
}

/// The work clone's files, named as the operator knows them in messages (`this change is
/// invalid`, not `working tree is invalid`).
struct Proposed(WorkTree);

impl schema::tree::Tree for Proposed {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, schema::tree::TreeError> {
        self.0.read(path)
    }

    fn entry(&self, path: &str) -> Result<Option<schema::tree::Entry>, schema::tree::TreeError> {
        self.0.entry(path)
    }

    fn label(&self) -> String {
        "this change".into()
    }
}

/// The edit itself, on a checkout at the branch head: content first, then `domain.toml`, then
/// the content no application uses any more.
fn apply(clone: &WorkClone, req: &Request) -> Result<(), EditError> {
    for c in &req.copies {
        remove(&clone.path().join(&c.replace))?;
        // The source named on the command line may be a link to the content; links inside it
        // are content and stay links.
        let from = std::fs::canonicalize(&c.from).map_err(io(&c.from))?;
        copy(&from, &clone.path().join(&c.to))?;
    }
    let file = clone.path().join(schema::edit::FILE);
    let text = std::fs::read_to_string(&file).map_err(|source| EditError::Io {
        path: file.clone(),
        source,
    })?;
    let applied = schema::edit::apply(&text, &req.ops)?;
    std::fs::write(&file, &applied.text).map_err(|source| EditError::Io {
        path: file.clone(),
        source,
    })?;
    for path in &applied.orphaned {
        if schema::values::check_repo_path(path).is_ok() {
            remove(&clone.path().join(path))?;
        }
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EditError + '_ {
    move |source| EditError::Io {
        path: path.to_owned(),
        source,
    }
}

fn remove(path: &Path) -> Result<(), EditError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(io(path))
    } else {
        std::fs::remove_file(path).map_err(io(path))
    }
}

/// Copies a file or a directory tree (symbolic links as links, modes kept; `.git` left out).
fn copy(from: &Path, to: &Path) -> Result<(), EditError> {
    let meta = std::fs::symlink_metadata(from).map_err(io(from))?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if meta.is_symlink() {
        let target = std::fs::read_link(from).map_err(io(from))?;
        std::os::unix::fs::symlink(target, to).map_err(io(to))
    } else if meta.is_file() {
        std::fs::copy(from, to).map(drop).map_err(io(from))
    } else if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(io(to))?;
        for entry in std::fs::read_dir(from).map_err(io(from))? {
            let entry = entry.map_err(io(from))?;
            if entry.file_name() == ".git" {
                continue;
            }
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        Err(EditError::NotContent {
            path: from.to_owned(),
        })
    }
}

/// Where `deploy` puts content from `source` for application `app`: an archive (by its name:
/// `.tar`, `.tar.gz`, `.tgz`, `.zip`) as `apps/APP.EXT`, a directory as `apps/APP`, any other
/// file inside `apps/APP/`.
pub fn deploy_path(app: &str, source: &Path) -> Result<String, EditError> {
    let meta = std::fs::metadata(source).map_err(io(source))?;
    if meta.is_dir() {
        return Ok(format!("apps/{app}"));
    }
    if !meta.is_file() {
        return Err(EditError::NotContent {
            path: source.to_owned(),
        });
    }
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".tar.gz", ".tgz", ".tar", ".zip"] {
        if name.to_ascii_lowercase().ends_with(ext) {
            return Ok(format!("apps/{app}{ext}"));
        }
    }
    Ok(format!("apps/{app}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lands_where_the_example_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("site");
        std::fs::create_dir(&dir).unwrap();
        let zip = tmp.path().join("Site.ZIP");
        let page = tmp.path().join("index.html");
        let tgz = tmp.path().join("b.tar.gz");
        for f in [&zip, &page, &tgz] {
            std::fs::write(f, "x").unwrap();
        }
        assert_eq!(deploy_path("blog", &dir).unwrap(), "apps/blog");
        assert_eq!(deploy_path("blog", &zip).unwrap(), "apps/blog.zip");
        assert_eq!(deploy_path("blog", &tgz).unwrap(), "apps/blog.tar.gz");
        assert_eq!(deploy_path("blog", &page).unwrap(), "apps/blog/index.html");
        assert!(deploy_path("blog", &tmp.path().join("missing")).is_err());
    }

    #[test]
    fn the_default_message_says_what_changed_and_who() {
        let ops = [
            Op::parse_assignment("servers.server1.logging.level=debug").unwrap(),
            Op::Unset {
                path: "domain.description".into(),
            },
        ];
        assert_eq!(
            message(&ops, "alice"),
            "steward admin: set servers.server1.logging.level=debug; unset domain.description\n\nMade with `steward admin` by alice.\n"
        );
    }
}
