//! The pin: which commit of the domain repository the domain runs, and the record of every pin and
//! rejection.
//!
//! Two pieces of state, both crash-safe on their own:
//! - `refs/steward/pinned` in the bare repository, moved only by compare-and-swap on its previous
//!   value (a gix ref transaction, which takes git's own `.lock` file, so it also excludes a
//!   concurrent `git update-ref`). A ref is written to a lock file and renamed: never half-written.
//! - `DOMAIN_HOME/config/pins.jsonl`, one JSON record per line, appended with `O_APPEND` and
//!   `fsync`ed per record. A crash mid-write can leave a torn last line; readers skip it and the next
//!   append starts on a fresh line, so one torn record never swallows the next.
//!
//! The ref is the truth; the history explains it. The ref moves first and the record follows, so a
//! crash in between leaves a pin without its record, which [`PinStore::recover`] detects and records
//! on the next start (never the reverse: a record claiming a pin that did not happen).
//!
//! Over 600 lines only with its tests: the code (about 440 lines) is the one store of the ref and
//! its history, whose crash-safety argument needs both in view.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gix::refs::Target;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use serde::{Deserialize, Serialize};

use crate::git::Oid;

/// The ref that names the pinned commit.
pub const PINNED_REF: &str = "refs/steward/pinned";

/// Every commit ever pinned keeps a ref under here, so no force-push and `git gc` can prune a
/// commit a rollback may return to.
pub const PINS_PREFIX: &str = "refs/steward/pins/";
/// The history file's name, next to `domain.git` in `DOMAIN_HOME/config`.
pub const HISTORY_FILE: &str = "pins.jsonl";
/// A record keeps at most this many problems; `more_problems` counts the rest, so one rejection of
/// a badly broken commit stays one small line.
pub const RECORD_PROBLEMS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: cannot open the domain repository: {cause}")]
    Open { path: PathBuf, cause: String },
    #[error("cannot read {PINNED_REF}: it is a symbolic ref")]
    Symbolic,
    #[error("cannot read {PINNED_REF}: {0}")]
    Read(Box<gix::Error>),
    #[error("{PINNED_REF} moved concurrently: expected {expected}, found {found}")]
    Conflict { expected: String, found: String },
    #[error("{branch} moved concurrently: expected {expected}")]
    BranchMoved { branch: String, expected: String },
    #[error("cannot move {PINNED_REF} to {commit}: {cause}")]
    Write { commit: String, cause: String },
    #[error("cannot move {branch} back: {cause}")]
    Unmove { branch: String, cause: String },
    #[error("{path}: {what}: {error}")]
    History {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
}

type Result<T, E = PinError> = std::result::Result<T, E>;

/// Where a pin or rejection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `steward init`: the first commit.
    Init,
    /// A push over the Master's Git smart HTTP.
    Push,
    /// A ref change noticed in the repository (a push by file path or ssh through the hook).
    Watch,
    /// Mirror mode: the upstream poll.
    Poll,
    /// Mirror mode: a webhook call.
    Webhook,
    /// An operator pinned an older commit.
    Rollback,
    /// The Master found the ref ahead of the history after a crash and recorded the pin.
    Recovered,
    /// Mirror mode: an operator resumed following the upstream after a hold.
    Resume,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Init => "init",
            Source::Push => "push",
            Source::Watch => "watch",
            Source::Poll => "poll",
            Source::Webhook => "webhook",
            Source::Rollback => "rollback",
            Source::Recovered => "recovered",
            Source::Resume => "resume",
        }
    }
}

/// What happened to a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pinned,
    Rejected,
    /// Mirror mode while the domain is held: valid, recorded, not pinned.
    Held,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pinned => "pinned",
            Outcome::Rejected => "rejected",
            Outcome::Held => "held",
        }
    }
}

/// One line of `pins.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub outcome: Outcome,
    /// Full hex id of the commit pinned or rejected.
    pub commit: String,
    /// The pin before this one (for a rejection: the pin that stayed).
    #[serde(default)]
    pub previous: Option<String>,
    /// When it happened, RFC 3339 UTC.
    pub at: String,
    pub source: Source,
    /// The commit's author, `Name <email>`.
    #[serde(default)]
    pub author: Option<String>,
    /// The authenticated user whose push brought the commit, when known.
    #[serde(default)]
    pub pusher: Option<String>,
    /// The commit message's first line.
    #[serde(default)]
    pub summary: String,
    /// For rejections: the validator's problems, as in `steward validate --format json`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<serde_json::Value>,
    /// Problems beyond the first [`RECORD_PROBLEMS`], counted but not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_problems: usize,
    /// For rollbacks: the head of the followed branch when the operator pinned an older commit.
    /// That head counts as decided, so the Master does not re-pin it (also after a restart); the
    /// next commit on the branch is pinned as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_head: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Record {
    /// Keeps the first [`RECORD_PROBLEMS`] of `problems` and counts the rest.
    pub fn set_problems(&mut self, mut problems: Vec<serde_json::Value>, more: usize) {
        let over = problems.len().saturating_sub(RECORD_PROBLEMS);
        problems.truncate(RECORD_PROBLEMS);
        self.problems = problems;
        self.more_problems = more + over;
    }

    /// The branch head this record settled: what the Master need not decide on again.
    pub fn decided_head(&self) -> &str {
        self.branch_head.as_deref().unwrap_or(&self.commit)
    }
}

/// The pin ref and history of one domain home.
#[derive(Debug, Clone)]
pub struct PinStore {
    git_dir: PathBuf,
    history: PathBuf,
}

impl PinStore {
    /// The store of the domain home `home` (`home/config/domain.git`, `home/config/pins.jsonl`).
    pub fn for_home(home: &Path) -> PinStore {
        let config = home.join("config");
        PinStore::new(config.join("domain.git"), config.join(HISTORY_FILE))
    }

    pub fn new(git_dir: PathBuf, history: PathBuf) -> PinStore {
        PinStore { git_dir, history }
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    pub fn history_path(&self) -> &Path {
        &self.history
    }

    /// Opened afresh on each call: a long-lived gix handle caches packed refs, and the pin must
    /// always be read from disk as git last wrote it.
    fn repo(&self) -> Result<gix::Repository> {
        gix::open_opts(&self.git_dir, gix::open::Options::isolated()).map_err(|e| PinError::Open {
            path: self.git_dir.clone(),
            cause: e.to_string(),
        })
    }

    /// The pinned commit, `None` when nothing was ever pinned.
    pub fn pinned(&self) -> Result<Option<Oid>> {
        read_ref(&self.repo()?)
    }

    /// [`PinStore::pinned`] through `repo`, this store's repository as opened for one decision
    /// (opening it is a good part of a decision's time; one decision needs it three times).
    pub(crate) fn pinned_in(&self, repo: &gix::Repository) -> Result<Option<Oid>> {
        read_ref(repo)
    }

    /// Moves the pin to `new` if, and only if, it is still `expected` (`None`: not pinned yet).
    /// Callers validate `new` first: this only guarantees the move is atomic and not lost to a race.
    pub fn set(&self, new: Oid, expected: Option<Oid>) -> Result<()> {
        self.transact(&self.repo()?, new, expected, None)
    }

    /// [`PinStore::set`] that also moves `branch` from `branch_expected` to `new`, in the same
    /// transaction: a hosted rollback's commit becomes the branch head and the pin together, or
    /// neither moves (a push that moved the branch meanwhile makes it fail with
    /// [`PinError::BranchMoved`]).
    pub fn set_with_branch(
        &self,
        new: Oid,
        expected: Option<Oid>,
        branch: &str,
        branch_expected: Oid,
    ) -> Result<()> {
        self.transact(
            &self.repo()?,
            new,
            expected,
            Some((branch, branch_expected)),
        )
    }

    fn transact(
        &self,
        repo: &gix::Repository,
        new: Oid,
        expected: Option<Oid>,
        branch: Option<(&str, Oid)>,
    ) -> Result<()> {
        let previous = match expected {
            Some(old) => PreviousValue::MustExistAndMatch(Target::Object(old.as_gix().to_owned())),
            None => PreviousValue::MustNotExist,
        };
        let name = PINNED_REF
            .try_into()
            .map_err(|e: gix::validate::reference::name::Error| PinError::Write {
                commit: new.to_hex(),
                cause: e.to_string(),
            })?;
        let edit = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: "steward: pin".into(),
                },
                expected: previous,
                new: Target::Object(new.as_gix().to_owned()),
            },
            name,
            deref: false,
        };
        let keep_name = format!("{PINS_PREFIX}{}", new.to_hex())
            .try_into()
            .map_err(|e: gix::validate::reference::name::Error| PinError::Write {
                commit: new.to_hex(),
                cause: e.to_string(),
            })?;
        // In the same transaction: the pin and the ref that keeps its commit are written together.
        let keep = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: "steward: keep a pinned commit".into(),
                },
                expected: PreviousValue::Any,
                new: Target::Object(new.as_gix().to_owned()),
            },
            name: keep_name,
            deref: false,
        };
        let mut edits = vec![edit, keep];
        if let Some((branch, old)) = branch {
            edits.push(RefEdit {
                change: Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: "steward: rollback".into(),
                    },
                    expected: PreviousValue::MustExistAndMatch(Target::Object(
                        old.as_gix().to_owned(),
                    )),
                    new: Target::Object(new.as_gix().to_owned()),
                },
                name: branch
                    .try_into()
                    .map_err(|e: gix::validate::reference::name::Error| PinError::Write {
                        commit: new.to_hex(),
                        cause: e.to_string(),
                    })?,
                deref: false,
            });
        }
        if let Err(e) = repo.edit_references(edits) {
            // Tell a lost race apart from an I/O failure: the caller re-reads and retries on the former.
            let found = read_ref(repo)?;
            if found != expected {
                return Err(PinError::Conflict {
                    expected: expected.map_or("nothing".into(), |o| o.to_hex()),
                    found: found.map_or("nothing".into(), |o| o.to_hex()),
                });
            }
            if let Some((branch, old)) = branch {
                let now = repo
                    .try_find_reference(branch)
                    .ok()
                    .flatten()
                    .and_then(|r| r.target().try_id().map(|id| id.to_owned()));
                if now.as_deref() != Some(old.as_gix()) {
                    return Err(PinError::BranchMoved {
                        branch: branch.to_owned(),
                        expected: old.to_hex(),
                    });
                }
            }
            return Err(PinError::Write {
                commit: new.to_hex(),
                cause: e.to_string(),
            });
        }
        Ok(())
    }

    /// Moves `branch` back from `from` to `to` (`None`: deletes it), only if it is still at
    /// `from`: for a push git accepted but the Master could not pin. A branch that moved meanwhile
    /// is left alone ([`PinError::BranchMoved`]).
    pub fn unmove_branch(&self, branch: &str, from: Oid, to: Option<Oid>) -> Result<()> {
        let repo = self.repo()?;
        let unmove = |cause: String| PinError::Unmove {
            branch: branch.to_owned(),
            cause,
        };
        let expected = PreviousValue::MustExistAndMatch(Target::Object(from.as_gix().to_owned()));
        let log = LogChange {
            mode: RefLog::AndReference,
            force_create_reflog: false,
            message: "steward: push not pinned".into(),
        };
        let change = match to {
            Some(to) => Change::Update {
                log,
                expected,
                new: Target::Object(to.as_gix().to_owned()),
            },
            None => Change::Delete {
                expected,
                log: RefLog::AndReference,
            },
        };
        let name = branch
            .try_into()
            .map_err(|e: gix::validate::reference::name::Error| unmove(e.to_string()))?;
        let edit = RefEdit {
            change,
            name,
            deref: false,
        };
        if let Err(e) = repo.edit_references([edit]) {
            let now = repo
                .try_find_reference(branch)
                .ok()
                .flatten()
                .and_then(|r| r.target().try_id().map(|id| id.to_owned()));
            if now.as_deref() != Some(from.as_gix()) {
                return Err(PinError::BranchMoved {
                    branch: branch.to_owned(),
                    expected: from.to_hex(),
                });
            }
            return Err(unmove(e.to_string()));
        }
        Ok(())
    }

    /// Moves the pin (compare-and-swap) and then records it. When the record cannot be written
    /// (a full disk, an unwritable history) the pin is moved back, so that nothing is pinned
    /// without its record and the caller can refuse what it was pinning; only if that fails too
    /// does the pin stay, to be recorded by [`PinStore::recover`] at the next start.
    pub fn pin(&self, new: Oid, expected: Option<Oid>, record: &Record) -> Result<()> {
        self.pin_in(&self.repo()?, new, expected, record)
    }

    /// [`PinStore::pin`] through `repo` (see [`PinStore::pinned_in`]).
    pub(crate) fn pin_in(
        &self,
        repo: &gix::Repository,
        new: Oid,
        expected: Option<Oid>,
        record: &Record,
    ) -> Result<()> {
        self.transact(repo, new, expected, None)?;
        let appended = self.append(record);
        if appended.is_err()
            && let Some(old) = expected
        {
            let _ = self.transact(repo, old, Some(new), None);
        }
        appended
    }

    /// Appends one record, durably: the record is on disk when this returns.
    pub fn append(&self, record: &Record) -> Result<()> {
        let err = |what| {
            let path = self.history.clone();
            move |error| PinError::History { path, what, error }
        };
        let mut line = serde_json::to_vec(record)
            .map_err(|e| err("cannot encode a record")(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.history)
            .map_err(err("cannot open the history"))?;
        // After a torn write the file does not end in a newline; start a fresh line so the torn
        // fragment stays one unreadable line instead of corrupting this record too.
        if ends_without_newline(&mut file).map_err(err("cannot read the history"))? {
            line.insert(0, b'\n');
        }
        // One write call: with O_APPEND the record lands contiguously at the end.
        file.write_all(&line)
            .map_err(err("cannot append to the history"))?;
        file.sync_data().map_err(err("cannot sync the history"))
    }

    /// Every readable record, oldest first. Lines that do not parse (a torn last write) are skipped.
    pub fn history(&self) -> Result<Vec<Record>> {
        let text = match std::fs::read(&self.history) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(PinError::History {
                    path: self.history.clone(),
                    what: "cannot read the history",
                    error,
                });
            }
        };
        Ok(text
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }

    /// The last `pinned` record, if any.
    pub fn last_pin(&self) -> Result<Option<Record>> {
        Ok(self
            .history()?
            .into_iter()
            .rev()
            .find(|r| r.outcome == Outcome::Pinned))
    }

    /// After a crash between moving the ref and appending its record, the ref is ahead of the
    /// history: record the pin now (source `recovered`). Returns the record written, if any.
    pub fn recover(&self, describe: impl FnOnce(Oid) -> Record) -> Result<Option<Record>> {
        let Some(pinned) = self.pinned()? else {
            return Ok(None);
        };
        let last = self.last_pin()?;
        if last.as_ref().is_some_and(|r| r.commit == pinned.to_hex()) {
            return Ok(None);
        }
        let mut record = describe(pinned);
        record.source = Source::Recovered;
        record.previous = last.map(|r| r.commit);
        self.append(&record)?;
        Ok(Some(record))
    }
}

fn read_ref(repo: &gix::Repository) -> Result<Option<Oid>> {
    match repo.try_find_reference(PINNED_REF) {
        Ok(None) => Ok(None),
        Ok(Some(r)) => match r.target().try_id() {
            Some(id) => Ok(Some(Oid::from(id.to_owned()))),
            None => Err(PinError::Symbolic),
        },
        Err(e) => Err(PinError::Read(Box::new(e))),
    }
}

fn ends_without_newline(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// RFC 3339 stamps, from [`crate::time`].
pub use crate::time::{now_rfc3339, rfc3339};

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("steward-pin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn record(commit: &str, outcome: Outcome) -> Record {
        Record {
            outcome,
            commit: commit.into(),
            previous: None,
            at: now_rfc3339(),
            source: Source::Push,
            author: Some("A <a@example.com>".into()),
            pusher: None,
            summary: "change".into(),
            problems: vec![],
            more_problems: 0,
            branch_head: None,
        }
    }

    /// A bare repository with two commits made by the git binary; returns (store, first, second).
    fn repo_with_commits(dir: &Path) -> (PinStore, Oid, Oid) {
        let git = dir.join("domain.git");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .output()
                .expect("git runs");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_owned()
        };
        let g = git.to_str().expect("utf-8 path");
        run(&["init", "-q", "--bare", g]);
        let tree = run(&[
            "--git-dir",
            g,
            "hash-object",
            "-t",
            "tree",
            "-w",
            "/dev/null",
        ]);
        let a = run(&["--git-dir", g, "commit-tree", &tree, "-m", "one"]);
        let b = run(&["--git-dir", g, "commit-tree", &tree, "-p", &a, "-m", "two"]);
        let store = PinStore::new(git, dir.join(HISTORY_FILE));
        (
            store,
            Oid::from_hex(&a).expect("id"),
            Oid::from_hex(&b).expect("id"),
        )
    }

    #[test]
    fn compare_and_swap() {
        let dir = tmp("cas");
        let (store, a, b) = repo_with_commits(&dir);
        assert_eq!(store.pinned().expect("read"), None);
        store.set(a, None).expect("first pin");
        assert!(matches!(store.set(b, None), Err(PinError::Conflict { .. })));
        assert!(matches!(
            store.set(b, Some(b)),
            Err(PinError::Conflict { .. })
        ));
        assert_eq!(store.pinned().expect("read"), Some(a));
        store.set(b, Some(a)).expect("swap");
        assert_eq!(store.pinned().expect("read"), Some(b));
        // git itself sees the same ref.
        let out = std::process::Command::new("git")
            .args(["--git-dir"])
            .arg(store.git_dir())
            .args(["rev-parse", PINNED_REF])
            .output()
            .expect("git");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), b.to_hex());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn branch_and_pin_move_together_or_not_at_all() {
        let dir = tmp("branch");
        let (store, a, b) = repo_with_commits(&dir);
        let branch = "refs/heads/main";
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(store.git_dir())
                .args(args)
                .output()
                .expect("git");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        git(&["update-ref", branch, &a.to_hex()]);
        store.set(a, None).expect("pin a");
        // The branch moved meanwhile (a push): neither ref moves.
        git(&["update-ref", branch, &b.to_hex()]);
        assert!(matches!(
            store.set_with_branch(b, Some(a), branch, a),
            Err(PinError::BranchMoved { .. })
        ));
        assert_eq!(store.pinned().expect("read"), Some(a));
        assert_eq!(git(&["rev-parse", branch]), b.to_hex());
        // The pin moved meanwhile: neither moves either.
        assert!(matches!(
            store.set_with_branch(b, None, branch, b),
            Err(PinError::Conflict { .. })
        ));
        assert_eq!(git(&["rev-parse", branch]), b.to_hex());
        // Both as read: both move.
        git(&["update-ref", branch, &a.to_hex()]);
        store
            .set_with_branch(b, Some(a), branch, a)
            .expect("branch and pin");
        assert_eq!(store.pinned().expect("read"), Some(b));
        assert_eq!(git(&["rev-parse", branch]), b.to_hex());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_pinned_commit_survives_gc() {
        let dir = tmp("keep");
        let (store, a, b) = repo_with_commits(&dir);
        store.set(b, None).expect("pin b");
        store.set(a, Some(b)).expect("roll back to a");
        // Nothing but the pin history refers to b now; expire every reflog and prune.
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("--git-dir")
                .arg(store.git_dir())
                .args(args)
                .output()
                .expect("git")
        };
        assert!(
            git(&["reflog", "expire", "--expire=now", "--all"])
                .status
                .success()
        );
        assert!(git(&["gc", "-q", "--prune=now"]).status.success());
        let kept = git(&["cat-file", "-e", &format!("{}^{{commit}}", b.to_hex())]);
        assert!(kept.status.success(), "a once-pinned commit was pruned");
        let refs = git(&["for-each-ref", "--format=%(refname)", PINS_PREFIX]);
        let refs = String::from_utf8_lossy(&refs.stdout);
        assert!(
            refs.contains(&b.to_hex()) && refs.contains(&a.to_hex()),
            "{refs}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn history_survives_a_torn_last_line() {
        let dir = tmp("torn");
        let store = PinStore::new(dir.join("domain.git"), dir.join(HISTORY_FILE));
        assert!(store.history().expect("empty").is_empty());
        store.append(&record("a", Outcome::Pinned)).expect("append");
        store
            .append(&record("b", Outcome::Rejected))
            .expect("append");
        // Simulate a crash in the middle of a write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.history_path())
            .expect("open");
        f.write_all(br#"{"outcome":"pinned","comm"#)
            .expect("torn write");
        drop(f);
        let h = store.history().expect("read");
        assert_eq!(
            h.iter().map(|r| r.commit.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        store
            .append(&record("c", Outcome::Pinned))
            .expect("append after torn");
        let h = store.history().expect("read");
        assert_eq!(
            h.iter().map(|r| r.commit.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            store.last_pin().expect("read").map(|r| r.commit),
            Some("c".into())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recover_records_a_pin_missing_from_history() {
        let dir = tmp("recover");
        let (store, a, b) = repo_with_commits(&dir);
        store
            .pin(a, None, &record(&a.to_hex(), Outcome::Pinned))
            .expect("pin");
        assert_eq!(
            store
                .recover(|c| record(&c.to_hex(), Outcome::Pinned))
                .expect("noop"),
            None
        );
        // Crash after the ref moved, before the record.
        store.set(b, Some(a)).expect("move");
        let rec = store
            .recover(|c| record(&c.to_hex(), Outcome::Pinned))
            .expect("recover")
            .expect("a record");
        assert_eq!(rec.source, Source::Recovered);
        assert_eq!(rec.previous, Some(a.to_hex()));
        assert_eq!(
            store.last_pin().expect("read").map(|r| r.commit),
            Some(b.to_hex())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_that_cannot_be_recorded_is_moved_back() {
        let dir = tmp("unrecorded");
        let (store, a, b) = repo_with_commits(&dir);
        store
            .pin(a, None, &record(&a.to_hex(), Outcome::Pinned))
            .expect("pin");
        // A real fault: the history's path is taken by a directory.
        let history = store.history_path().to_owned();
        std::fs::remove_file(&history).expect("remove");
        std::fs::create_dir(&history).expect("dir");
        let e = store.pin(b, Some(a), &record(&b.to_hex(), Outcome::Pinned));
        assert!(matches!(e, Err(PinError::History { .. })), "{e:?}");
        assert_eq!(store.pinned().expect("read"), Some(a));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_branch_is_moved_back_only_from_where_it_was() {
        let dir = tmp("unmove");
        let (store, a, b) = repo_with_commits(&dir);
        let branch = "refs/heads/main";
        let head = |store: &PinStore| {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(store.git_dir())
                .args(["rev-parse", "--verify", "-q", branch])
                .output()
                .expect("git runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let set = |to: Oid| {
            std::process::Command::new("git")
                .arg("--git-dir")
                .arg(store.git_dir())
                .args(["update-ref", branch, &to.to_hex()])
                .status()
                .expect("git runs")
        };
        assert!(set(b).success());
        // Not at `a`: a push moved it meanwhile; left alone.
        let e = store.unmove_branch(branch, a, None);
        assert!(matches!(e, Err(PinError::BranchMoved { .. })), "{e:?}");
        assert_eq!(head(&store), b.to_hex());
        store.unmove_branch(branch, b, Some(a)).expect("back to a");
        assert_eq!(head(&store), a.to_hex());
        store.unmove_branch(branch, a, None).expect("deleted");
        assert_eq!(head(&store), "");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_keep_a_bounded_number_of_problems() {
        let mut r = record("a", Outcome::Rejected);
        let many: Vec<_> = (0..6000)
            .map(|i| serde_json::json!({ "line": i }))
            .collect();
        r.set_problems(many, 0);
        assert_eq!(r.problems.len(), RECORD_PROBLEMS);
        assert_eq!(r.more_problems, 6000 - RECORD_PROBLEMS);
        let line = serde_json::to_string(&r).expect("json");
        assert!(line.len() < 8 * 1024, "{}", line.len());
        r.set_problems(vec![serde_json::json!({})], 7);
        assert_eq!((r.problems.len(), r.more_problems), (1, 7));
    }
}
