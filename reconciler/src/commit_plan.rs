//! A commit's plan for operators (`GET /v1/commits/{rev}/plan`, `steward admin show`, the WebAdmin
//! page): what the commit changes against its first parent, the same plan `steward diff` prints.

use crate::git::{GitError, Oid, Repo};

/// What a commit's plan came to.
pub enum CommitPlan {
    /// `rev` names no commit of the repository.
    NotFound,
    /// The commit does not validate, so there is nothing to apply: its problems, as `steward
    /// validate --format json` gives them.
    Invalid(Vec<serde_json::Value>),
    Plan(Box<schema::plan::Plan>),
}

/// The plan of `rev` against its first parent (the mainline it was pinned on). A parent that does
/// not validate itself (a rejected commit) gives no base: the plan is then from nothing, and its
/// base says why.
pub fn commit_plan(repo: &Repo, rev: &str) -> Result<CommitPlan, GitError> {
    let Ok(Some(commit)) = repo.resolve(rev) else {
        return Ok(CommitPlan::NotFound);
    };
    let to = schema::validate(&repo.tree(commit)?);
    let Some(to) = to.loaded else {
        let json = to.report.to_json();
        return Ok(CommitPlan::Invalid(
            json["problems"].as_array().cloned().unwrap_or_default(),
        ));
    };
    let (from, base) = match repo.parent(commit)? {
        None => (
            None,
            format!("nothing: `{}` is a root commit", commit.short()),
        ),
        Some(parent) => base(repo, parent)?,
    };
    let mut plan = schema::plan::plan(from.as_ref(), &to);
    plan.base = Some(base);
    Ok(CommitPlan::Plan(Box::new(plan)))
}

fn base(repo: &Repo, parent: Oid) -> Result<(Option<schema::Loaded>, String), GitError> {
    let v = schema::validate(&repo.tree(parent)?);
    Ok(match v.loaded {
        Some(l) => (Some(l), format!("its parent `{}`", parent.short())),
        None => (
            None,
            format!("nothing: its parent `{}` does not validate", parent.short()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/domain1")
    }

    #[test]
    fn plans_against_the_parent_and_tells_invalid_and_unknown_commits() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("domain");
        std::fs::create_dir_all(&dir).expect("dir");
        let out = Command::new("cp")
            .args([
                "-r",
                &format!("{}/.", example().display()),
                dir.to_str().expect("utf-8"),
            ])
            .output()
            .expect("cp");
        assert!(out.status.success());
        git(&dir, &["init", "-q", "-b", "main"]);
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-qm", "first"]);
        let toml = std::fs::read_to_string(dir.join("domain.toml")).expect("domain.toml");
        std::fs::write(dir.join("domain.toml"), format!("{toml}\nnot toml [\n")).expect("write");
        git(&dir, &["commit", "-qam", "broken"]);
        let broken = git(&dir, &["rev-parse", "HEAD"]);
        std::fs::write(dir.join("domain.toml"), &toml).expect("write");
        git(&dir, &["commit", "-qam", "fixed"]);
        let repo = Repo::open(&dir.join(".git")).expect("open");

        let Ok(CommitPlan::Plan(root)) = commit_plan(&repo, "HEAD~2") else {
            panic!("no plan for the root commit");
        };
        assert!(root.base.as_deref().unwrap_or("").contains("root commit"));
        assert!(!root.is_empty(), "everything is new against nothing");

        let Ok(CommitPlan::Invalid(problems)) = commit_plan(&repo, &broken) else {
            panic!("the broken commit has a plan");
        };
        assert!(!problems.is_empty());

        let Ok(CommitPlan::Plan(fixed)) = commit_plan(&repo, "HEAD") else {
            panic!("no plan for the fixed commit");
        };
        assert!(
            fixed
                .base
                .as_deref()
                .unwrap_or("")
                .contains("does not validate"),
            "{:?}",
            fixed.base
        );
        assert!(matches!(
            commit_plan(&repo, "0123456789abcdef0123456789abcdef01234567"),
            Ok(CommitPlan::NotFound)
        ));
    }
}
