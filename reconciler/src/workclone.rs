//! The work clone of `steward admin set/unset/deploy/undeploy`: a checkout of the Master's domain
//! repository, kept in the operator's cache directory, brought to the branch head before each
//! edit, committed to and pushed from (docs/admin.md).
//!
//! Through the `git` binary, unlike the rest of this crate: gix has no push, and a checkout with
//! reset and clean would need gix's worktree features, which the build leaves out. The Master
//! already needs `git` (it serves the repository with `git http-backend`). The operator's password
//! reaches git as an `http.extraHeader` in `GIT_CONFIG_*` variables of the child process only:
//! never on a command line (`ps`), in a URL, or in `.git/config`.
//!
//! It is a cache: everything in it may be thrown away, and [`WorkClone::sync`] does (hard reset
//! and clean) before each edit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64ct::Encoding;

use crate::git::Oid;

#[derive(Debug, thiserror::Error)]
pub enum WorkCloneError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run git (it must be installed and on PATH): {0}")]
    Spawn(std::io::Error),
    #[error("`git {args}` failed in {dir}: {stderr}")]
    Git {
        args: String,
        dir: PathBuf,
        stderr: String,
    },
    #[error("`git {args}` printed {output:?}, not a commit id")]
    NotAnId { args: String, output: String },
}

type Result<T, E = WorkCloneError> = std::result::Result<T, E>;

/// How git logs in to the Master: an `Authorization` header, given to each git process in its
/// environment.
#[derive(Clone)]
pub struct Credentials {
    header: String,
}

impl Credentials {
    pub fn basic(user: &str, password: &str) -> Credentials {
        let token = base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes());
        Credentials {
            header: format!("Authorization: Basic {token}"),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Accepted,
    /// Refused: by the Master's validation, or because the branch moved (the caller tells which
    /// by fetching). `remote` holds what the Master said (`remote:` lines, prefix removed), then
    /// git's own lines.
    Refused {
        remote: String,
    },
}

/// A checkout of one branch of a remote, locked by this process while it exists.
#[derive(Debug)]
pub struct WorkClone {
    dir: PathBuf,
    branch: String,
    credentials: Credentials,
    /// Held for the life of this value: two `steward admin` edits never share the checkout.
    _lock: File,
}

impl WorkClone {
    /// The checkout in `dir` of `branch` at `url`, created (empty) if missing; waits for another
    /// process using it to finish.
    pub fn open(
        dir: &Path,
        url: &str,
        branch: &str,
        credentials: Credentials,
    ) -> Result<WorkClone> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| WorkCloneError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Beside the checkout, not in it: `clean` would remove it.
        let mut lock_path = dir.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let clone = WorkClone {
            dir: dir.to_owned(),
            // The Master names it as a ref (`refs/heads/main`).
            branch: branch.trim_start_matches("refs/heads/").to_owned(),
            credentials,
            _lock: lock,
        };
        if !dir.join(".git").exists() {
            clone.git(&["init", "-q", "-b", &clone.branch])?;
        }
        // The URL carries no credentials; set each time, in case the Master moved.
        if clone.git(&["remote", "get-url", "origin"]).is_ok() {
            clone.git(&["remote", "set-url", "origin", url])?;
        } else {
            clone.git(&["remote", "add", "origin", url])?;
        }
        Ok(clone)
    }

    /// The working directory: edit files here.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn remote_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    /// Fetches the branch and puts the checkout exactly at its head (reset and clean: anything
    /// left from an earlier edit goes). Returns the head.
    pub fn sync(&self) -> Result<Oid> {
        // Left by a git killed mid-way; nobody else uses this checkout while we hold the lock.
        let stale = self.dir.join(".git/index.lock");
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(|source| WorkCloneError::Io {
                path: stale.clone(),
                source,
            })?;
        }
        let head = self.fetch()?;
        self.git(&[
            "checkout",
            "-q",
            "-f",
            "-B",
            &self.branch,
            &self.remote_ref(),
        ])?;
        self.git(&["clean", "-q", "-ffdx"])?;
        Ok(head)
    }

    /// Fetches the branch; returns its head.
    pub fn fetch(&self) -> Result<Oid> {
        let spec = format!("+refs/heads/{}:{}", self.branch, self.remote_ref());
        self.git(&["fetch", "-q", "--no-tags", "origin", &spec])?;
        self.rev(&self.remote_ref())
    }

    /// Whether the checkout has `commit` (a pin may be older than the branch head).
    pub fn has(&self, commit: &str) -> bool {
        self.git(&["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .is_ok()
    }

    /// The commit `rev` names.
    pub fn rev(&self, rev: &str) -> Result<Oid> {
        let out = self.git(&["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")])?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Oid::from_hex(&text).map_err(|_| WorkCloneError::NotAnId {
            args: format!("rev-parse {rev}"),
            output: text,
        })
    }

    /// Whether the files differ from the head commit (anything to commit).
    pub fn changed(&self) -> Result<bool> {
        self.git(&["add", "-A"])?;
        let out = self.git(&["status", "--porcelain"])?;
        Ok(!out.stdout.is_empty())
    }

    /// Commits every file of the checkout; `author` is `Name <mail>`, also the committer.
    pub fn commit(&self, author: &str, message: &str) -> Result<Oid> {
        let (name, mail) = split_author(author);
        self.git(&["add", "-A"])?;
        let args = [
            "commit",
            "-q",
            "--no-verify",
            "--author",
            author,
            "-m",
            message,
        ];
        let mut cmd = self.command(&args);
        cmd.env("GIT_COMMITTER_NAME", name)
            .env("GIT_COMMITTER_EMAIL", mail);
        self.run(&mut cmd, &args)?;
        self.rev("HEAD")
    }

    /// Pushes HEAD to the branch.
    pub fn push(&self) -> Result<Pushed> {
        let refspec = format!("HEAD:refs/heads/{}", self.branch);
        let args = ["push", "--porcelain", "origin", refspec.as_str()];
        let out = self
            .command(&args)
            .output()
            .map_err(WorkCloneError::Spawn)?;
        if out.status.success() {
            return Ok(Pushed::Accepted);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut remote = String::new();
        let mut own = String::new();
        for line in stderr.lines() {
            match line.strip_prefix("remote: ") {
                Some(l) => {
                    remote.push_str(l.trim_end());
                    remote.push('\n');
                }
                None if line == "remote:" => remote.push('\n'),
                None => {
                    own.push_str(line);
                    own.push('\n');
                }
            }
        }
        remote.push_str(&own);
        Ok(Pushed::Refused { remote })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.dir)
            .args(args)
            // Never ask on the terminal: a refusal is an answer.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "3")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", &self.credentials.header)
            .env("GIT_CONFIG_KEY_1", "commit.gpgSign")
            .env("GIT_CONFIG_VALUE_1", "false")
            .env("GIT_CONFIG_KEY_2", "core.hooksPath")
            .env("GIT_CONFIG_VALUE_2", self.dir.join(".git/hooks"))
            .stdin(Stdio::null());
        cmd
    }

    fn git(&self, args: &[&str]) -> Result<Output> {
        self.run(&mut self.command(args), args)
    }

    /// Runs `cmd` (made by [`Self::command`] with `args`); its output if it succeeded.
    fn run(&self, cmd: &mut Command, args: &[&str]) -> Result<Output> {
        let out = cmd.output().map_err(WorkCloneError::Spawn)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(WorkCloneError::Git {
                args: args.join(" "),
                dir: self.dir.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// `Name <mail>` into its parts; without `<…>` the whole text is the name and the mail is empty.
pub fn split_author(author: &str) -> (&str, &str) {
    match author.split_once('<') {
        Some((name, rest)) => (name.trim(), rest.trim_end().trim_end_matches('>').trim()),
        None => (author.trim(), ""),
    }
}

/// The cache directory's name for a Master: its URL with everything but letters, digits, `.`
/// and `-` made `_` (`http_127.0.0.1_9736`).
pub fn dir_name(master: &str) -> String {
    master
        .trim_end_matches('/')
        .replace("://", "_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authors_and_directory_names() {
        assert_eq!(
            split_author("Alice Doe <alice@example.com>"),
            ("Alice Doe", "alice@example.com")
        );
        assert_eq!(split_author("alice"), ("alice", ""));
        assert_eq!(
            dir_name("https://master.example.com:9736/"),
            "https_master.example.com_9736"
        );
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Other")
            .env("GIT_AUTHOR_EMAIL", "other@example.com")
            .env("GIT_COMMITTER_NAME", "Other")
            .env("GIT_COMMITTER_EMAIL", "other@example.com")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A bare `origin` with one commit on `main`, and a second clone of it for "another
    /// operator".
    fn origin(tmp: &Path) -> (PathBuf, PathBuf) {
        let bare = tmp.join("origin.git");
        let other = tmp.join("other");
        git(
            tmp,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git(
            tmp,
            &[
                "clone",
                "-q",
                bare.to_str().unwrap(),
                other.to_str().unwrap(),
            ],
        );
        std::fs::write(other.join("domain.toml"), "# first\n").unwrap();
        git(&other, &["add", "-A"]);
        git(&other, &["commit", "-qm", "first"]);
        git(&other, &["push", "-q", "origin", "HEAD:main"]);
        (bare, other)
    }

    #[test]
    fn sync_commit_push_and_a_lost_race() {
        let tmp = tempfile::tempdir().unwrap();
        let (bare, other) = origin(tmp.path());
        let dir = tmp.path().join("cache/work");
        let url = bare.to_str().unwrap();
        let clone =
            WorkClone::open(&dir, url, "refs/heads/main", Credentials::basic("a", "b")).unwrap();
        let first = clone.sync().unwrap();
        assert_eq!(first.to_hex(), git(&other, &["rev-parse", "HEAD"]));
        assert!(!clone.changed().unwrap());

        // Anything left in the checkout goes at the next sync: it is a cache.
        std::fs::write(dir.join("stray.txt"), "x").unwrap();
        std::fs::write(dir.join("domain.toml"), "# edited\n").unwrap();
        assert!(clone.changed().unwrap());
        assert_eq!(clone.sync().unwrap(), first);
        assert!(!dir.join("stray.txt").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("domain.toml")).unwrap(),
            "# first\n"
        );

        std::fs::write(dir.join("domain.toml"), "# second\n").unwrap();
        let ours = clone
            .commit("Alice Doe <alice@example.com>", "steward admin: second")
            .unwrap();
        assert_eq!(clone.push().unwrap(), Pushed::Accepted);
        assert_eq!(
            git(&bare, &["log", "-1", "--format=%H %an <%ae> %cn %s"]),
            format!(
                "{} Alice Doe <alice@example.com> Alice Doe steward admin: second",
                ours.to_hex()
            )
        );

        // Another push lands first: ours is refused, and a fetch shows the branch moved.
        git(&other, &["pull", "-q", "origin", "main"]);
        std::fs::write(other.join("domain.toml"), "# theirs\n").unwrap();
        git(&other, &["commit", "-qam", "theirs"]);
        git(&other, &["push", "-q", "origin", "HEAD:main"]);
        std::fs::write(dir.join("domain.toml"), "# third\n").unwrap();
        clone
            .commit("Alice Doe <alice@example.com>", "third")
            .unwrap();
        assert!(matches!(clone.push().unwrap(), Pushed::Refused { .. }));
        let theirs = clone.fetch().unwrap();
        assert_eq!(theirs.to_hex(), git(&other, &["rev-parse", "HEAD"]));
        assert_eq!(clone.sync().unwrap(), theirs);
        assert!(clone.has(&ours.to_hex()));
        // A second user of the checkout waits for the lock: held by `clone` until dropped.
        drop(clone);
        assert!(WorkClone::open(&dir, url, "main", Credentials::basic("a", "b")).is_ok());
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials::basic("alice", "s3cret");
        assert_eq!(format!("{c:?}"), "Credentials(***)");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
