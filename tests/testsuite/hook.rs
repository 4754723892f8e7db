//! The pre-receive hook on a real bare repository: invalid pushes are refused with every
//! problem shown by the git client; valid pushes go through.

use crate::util::{Repo, TempDir, git};

#[test]
fn the_installed_hook_gates_pushes() {
    let server = TempDir::new("bare");
    let bare = server.path().join("domain.git");
    assert_eq!(
        git(
            server.path(),
            &["init", "-q", "--bare", "-b", "main", "domain.git"]
        )
        .code,
        0
    );
    let r = crate::util::steward(
        server.path(),
        &["hook", "install", "--repo", bare.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(bare.join("hooks/pre-receive").exists());

    let repo = Repo::example("pusher");
    repo.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    let r = git(repo.path(), &["push", "-q", "origin", "main"]);
    assert_eq!(r.code, 0, "valid push refused: {}", r.stderr);

    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    repo.set("domain.toml", "servers.server3.restart-policy", "sometimes");
    let bad = repo.commit("two mistakes");
    let r = git(repo.path(), &["push", "origin", "main"]);
    assert_ne!(r.code, 0, "invalid push accepted");
    let line = repo
        .read("domain.toml")
        .lines()
        .position(|l| l == "prot = 8088")
        .unwrap()
        + 1;
    assert!(
        r.stderr.contains(&format!(
            "remote: domain.toml:{line}:1: error[unknown-key]: unknown key `prot`"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("`sometimes` is not a valid value"),
        "every problem is shown: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("pre-receive hook declined"),
        "{}",
        r.stderr
    );
    // The bare repository did not move.
    let head = git(&bare, &["rev-parse", "main"]).stdout;
    assert_ne!(head.trim(), bad);

    repo.edit("domain.toml", "prot = 8088", "port = 8088");
    repo.set("domain.toml", "servers.server3.restart-policy", "auto");
    let good = repo.commit("fixed");
    let r = git(repo.path(), &["push", "origin", "main"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(git(&bare, &["rev-parse", "main"]).stdout.trim(), good);
}

#[test]
fn install_refuses_a_non_bare_directory() {
    let dir = TempDir::new("notbare");
    let r = crate::util::steward(
        dir.path(),
        &["hook", "install", "--repo", dir.path().to_str().unwrap()],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("bare"), "{}", r.stderr);
}
