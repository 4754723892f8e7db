//! What the deployment and web engine tests share: the `git` binary, a server home, an
//! application definition.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use runtime::layout::ServerHome;
use schema::model::{AppKind, Application};
use schema::values::Dur;

/// Runs git in `dir` isolated from the user's and system's configuration; fails the test on a
/// non-zero exit; returns the trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The home of `server1` in a domain under `dir`, with its directories made.
pub fn home(dir: &Path) -> ServerHome {
    let h = ServerHome::new(&dir.join("domain"), "server1").expect("home");
    h.create().expect("layout");
    h
}

/// An application of `kind` at `context`, from `src`, with defaults for the rest.
pub fn application(kind: AppKind, context: &str) -> Application {
    Application {
        kind,
        source: "src".to_owned(),
        context_path: Some(context.to_owned()),
        targets: vec![],
        description: String::new(),
        env: BTreeMap::new(),
        command: None,
        args: vec![],
        libraries: vec![],
        index: "index.html".to_owned(),
        health_path: "/".to_owned(),
        start_timeout: Dur::secs(10),
        max_unpacked_size: schema::model::default_max_unpacked_size(),
        timers: BTreeMap::new(),
        consumes: Vec::new(),
    }
}
