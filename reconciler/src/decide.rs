//! The Master's pin decisions, on the domain repository: what runs now ([`load_pinned`]), whether
//! the followed branch's head is pinned or rejected ([`decide_head`]), and rollbacks — by pinning
//! an older commit ([`rollback`], mirror mode, where the upstream owns the branch) or by writing a
//! commit that restores it on the branch ([`revert`], hosted mode). The Master's HTTP shell calls
//! these under its decision lock and publishes what they return.

use std::path::PathBuf;

use crate::git::{GitError, NewCommit, Oid, Repo};
use crate::pin::{Outcome, PinError, PinStore, Record, Source};

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(
        "{0}: nothing is pinned; the domain home is damaged (re-create it with `steward init`)"
    )]
    NothingPinned(PathBuf),
    #[error(
        "the pinned commit {commit} does not validate with this version of steward:\n{problems}"
    )]
    PinnedInvalid { commit: String, problems: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Pin(#[from] PinError),
}

type Result<T> = std::result::Result<T, DecideError>;

/// What the domain runs: the pinned commit, since when, and its configuration.
pub struct Pinned {
    pub commit: Oid,
    /// RFC 3339 time of the pin (empty when its record is gone).
    pub at: String,
    pub domain: schema::model::Domain,
}

/// Loads the pinned commit's domain; errors name the problem.
pub fn load_pinned(store: &PinStore) -> Result<Pinned> {
    let commit = store
        .pinned()?
        .ok_or_else(|| DecideError::NothingPinned(store.git_dir().to_owned()))?;
    let repo = Repo::open(store.git_dir())?;
    let v = schema::validate(&repo.tree(commit)?);
    let Some(loaded) = v.loaded else {
        return Err(DecideError::PinnedInvalid {
            commit: commit.to_hex(),
            problems: v.report.render_short(),
        });
    };
    let at = store
        .history()?
        .into_iter()
        .rev()
        .find(|r| r.outcome == Outcome::Pinned && r.commit == commit.to_hex())
        .map(|r| r.at)
        .unwrap_or_default();
    Ok(Pinned {
        commit,
        at,
        domain: loaded.domain,
    })
}

/// A record describing `commit` (author and summary from the commit itself).
pub fn describe(repo: &Repo, commit: Oid, outcome: Outcome, source: Source) -> Record {
    let info = repo.commit_info(commit).ok();
    Record {
        outcome,
        commit: commit.to_hex(),
        previous: None,
        at: crate::pin::now_rfc3339(),
        source,
        author: info
            .as_ref()
            .map(|i| format!("{} <{}>", i.author_name, i.author_email)),
        pusher: None,
        summary: info.map(|i| i.summary).unwrap_or_default(),
        problems: Vec::new(),
        more_problems: 0,
        branch_head: None,
    }
}

/// A decision on the branch head: the head, its record, and the new pin when it was pinned.
pub struct Decision {
    pub head: Oid,
    pub record: Record,
    pub pinned: Option<Pinned>,
}

/// Validates the head of `branch` and pins it if valid, records it as rejected if not (or, while
/// the domain is `held`, records a valid head as held without pinning it). `None` when there is
/// nothing new to decide: the branch is gone (the pin stays), or its head is the pinned commit or
/// `last`, the head decided on last time (a rejected head is recorded once). `checked`: models
/// of commits validated already, by this same validator (the Master's check of a push).
pub fn decide_head(
    store: &PinStore,
    branch: &str,
    last: Option<Oid>,
    source: Source,
    pusher: Option<String>,
    held: bool,
    checked: &[(Oid, schema::Loaded)],
) -> Result<Option<Decision>> {
    let repo = Repo::open(store.git_dir())?;
    let Some(head) = repo.resolve(branch)? else {
        return Ok(None);
    };
    let pinned = store.pinned_in(repo.gix())?;
    if Some(head) == pinned || Some(head) == last {
        return Ok(None);
    }
    // Validate again even though the hook did (a ref can be moved without a push, and an invalid
    // commit is never pinned), unless the Master's own check of the push made this very model.
    let loaded = match checked.iter().find(|(id, _)| *id == head) {
        Some((_, loaded)) => Ok(loaded.clone()),
        None => {
            let v = schema::validate(&repo.tree(head)?);
            v.loaded.ok_or(v.report)
        }
    };
    let mut record = describe(&repo, head, Outcome::Pinned, source);
    record.pusher = pusher;
    record.previous = pinned.map(|p| p.to_hex());
    match loaded {
        Ok(_) if held => {
            record.outcome = Outcome::Held;
            store.append(&record)?;
            Ok(Some(Decision {
                head,
                record,
                pinned: None,
            }))
        }
        Ok(loaded) => {
            store.pin_in(repo.gix(), head, pinned, &record)?;
            let pinned = Pinned {
                commit: head,
                at: record.at.clone(),
                domain: loaded.domain,
            };
            Ok(Some(Decision {
                head,
                record,
                pinned: Some(pinned),
            }))
        }
        Err(report) => {
            record.outcome = Outcome::Rejected;
            let (problems, omitted) = report_problems(&report);
            record.set_problems(problems, omitted);
            store.append(&record)?;
            Ok(Some(Decision {
                head,
                record,
                pinned: None,
            }))
        }
    }
}

/// How a rollback ended.
pub enum Rollback {
    /// The branch head to remember as decided, the record, the new pin.
    Done(Box<(Option<Oid>, Record, Pinned)>),
    /// The commit is pinned already.
    Unchanged(Oid),
    NotFound,
    /// The commit does not validate: its problems, as `steward validate --format json` gives them.
    Invalid(Vec<serde_json::Value>),
}

/// A rollback target's configuration, or why it cannot be pinned.
fn rollback_target(tree: &dyn schema::tree::Tree) -> std::result::Result<schema::Loaded, Rollback> {
    let v = schema::validate(tree);
    v.loaded
        .ok_or_else(|| Rollback::Invalid(report_problems(&v.report).0))
}

/// A report's problems as `steward validate --format json` gives them, and how many more the
/// validator itself left out.
fn report_problems(report: &schema::diag::Report) -> (Vec<serde_json::Value>, usize) {
    let json = report.to_json();
    let problems = json["problems"].as_array().cloned().unwrap_or_default();
    (problems, json["omitted"].as_u64().unwrap_or(0) as usize)
}

/// Mirror mode's rollback (and hosted mode's when the branch is gone): pins `rev` itself; the
/// branch is not touched.
pub fn rollback(store: &PinStore, branch: &str, rev: &str, user: String) -> Result<Rollback> {
    let repo = Repo::open(store.git_dir())?;
    let Ok(Some(commit)) = repo.resolve(rev) else {
        return Ok(Rollback::NotFound);
    };
    let pinned = store.pinned()?;
    if pinned == Some(commit) {
        return Ok(Rollback::Unchanged(commit));
    }
    let loaded = match rollback_target(&repo.tree(commit)?) {
        Ok(loaded) => loaded,
        Err(invalid) => return Ok(invalid),
    };
    let head = repo.resolve(branch)?;
    let mut record = describe(&repo, commit, Outcome::Pinned, Source::Rollback);
    record.pusher = Some(user);
    record.previous = pinned.map(|p| p.to_hex());
    record.branch_head = Some(head.map(|h| h.to_hex()).unwrap_or_default());
    store.pin(commit, pinned, &record)?;
    let pinned = Pinned {
        commit,
        at: record.at.clone(),
        domain: loaded.domain,
    };
    Ok(Rollback::Done(Box::new((head, record, pinned))))
}

/// The committer of rollback commits.
const COMMITTER: (&str, &str) = ("Steward Master", "steward@localhost");
/// How many rolled-back commits a rollback's message lists one by one.
const LISTED: usize = 50;

/// Hosted mode's rollback: a commit on the branch whose tree is `rev`'s, authored by the
/// operator, naming the rolled-back range in its message; the branch and the pin move to it in
/// one ref transaction, each compared with what was read (a push in between fails it cleanly).
pub fn revert(store: &PinStore, branch: &str, rev: &str, user: String) -> Result<Rollback> {
    let repo = Repo::open(store.git_dir())?;
    let Ok(Some(target)) = repo.resolve(rev) else {
        return Ok(Rollback::NotFound);
    };
    let Some(head) = repo.resolve(branch)? else {
        // No branch to write on (it was deleted): pin the commit itself.
        return rollback(store, branch, rev, user);
    };
    let pinned = store.pinned()?;
    let tree = repo.tree_id(target)?;
    if pinned == Some(head) && repo.tree_id(head)? == tree {
        return Ok(Rollback::Unchanged(head));
    }
    let loaded = match rollback_target(&repo.tree(target)?) {
        Ok(loaded) => loaded,
        Err(invalid) => return Ok(invalid),
    };
    let message = message(&repo, target, head, &user)?;
    let commit = repo.write_commit(&NewCommit {
        tree,
        parents: vec![head],
        // The operator's account has no e-mail address; git accepts an empty one.
        author: (&user, ""),
        committer: COMMITTER,
        message,
    })?;
    let mut record = describe(&repo, commit, Outcome::Pinned, Source::Rollback);
    record.pusher = Some(user);
    record.previous = pinned.map(|p| p.to_hex());
    record.branch_head = Some(commit.to_hex());
    store.set_with_branch(commit, pinned, branch, head)?;
    store.append(&record)?;
    let pinned = Pinned {
        commit,
        at: record.at.clone(),
        domain: loaded.domain,
    };
    Ok(Rollback::Done(Box::new((Some(commit), record, pinned))))
}

/// The rollback commit's message: what it restores, who did it, and the commits it undoes.
fn message(
    repo: &Repo,
    target: Oid,
    head: Oid,
    user: &str,
) -> std::result::Result<String, GitError> {
    let info = repo.commit_info(target)?;
    let (undone, reached) = repo.first_parents(head, target, LISTED)?;
    let mut out = format!(
        "Roll back to {}: {}\n\n{user} rolled the domain back through the Master \
         (POST /v1/domain/pin). This commit restores the configuration of\n{}.\n",
        target.short(),
        info.summary,
        target.to_hex()
    );
    if reached {
        out.push_str(&format!(
            "\nRolled back: {}..{}\n\n",
            target.short(),
            head.short()
        ));
    } else {
        out.push_str(&format!(
            "\nReplaced: the branch head {} (not a descendant of {} within {LISTED} commits), \
             most recent first:\n\n",
            head.short(),
            target.short()
        ));
    }
    for c in &undone {
        let i = repo.commit_info(*c)?;
        out.push_str(&format!("  {} {}\n", i.short_id, i.summary));
    }
    if !reached && undone.len() == LISTED {
        out.push_str("  …\n");
    }
    Ok(out)
}
