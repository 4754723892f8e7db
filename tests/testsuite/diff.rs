//! `steward diff`: per-server effects of a change, in every format.

use crate::util::Repo;
use crate::util::http::post;
use crate::util::master::Master;
use insta::assert_snapshot;

/// One commit with a live, a redeploy and a restart change, plus new content for the shop.
fn changed_repo(name: &str) -> Repo {
    let repo = Repo::example(name);
    repo.set("domain.toml", "servers.server1.logging.level", "debug"); // server1 live
    repo.set(
        "domain.toml",
        "servers.server2.web.listeners.http.port",
        8090,
    ); // server2 restart
    repo.set("domain.toml", "applications.api.env.GREETING", "hi"); // api redeploy
    repo.set("domain.toml", "applications.shop.context-path", "/store"); // shop live
    repo.write("apps/shop/new.html", "<p>new</p>\n"); // shop content → redeploy
    repo.commit("a change of every kind");
    repo
}

#[test]
fn human_plan_names_every_effect() {
    let repo = changed_repo("diff-human");
    let r = repo.steward(&["diff"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert_snapshot!("plan_human", r.stdout);
}

#[test]
fn json_plan_is_structured() {
    let repo = changed_repo("diff-json");
    let r = repo.steward(&["diff", "--format", "json"]);
    assert_eq!(r.code, 2);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["restart"], serde_json::json!(["server2"]));
    let server2 = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "server2")
        .unwrap();
    assert_eq!(
        server2["pending_restart"],
        serde_json::json!(["servers.server2.web.listeners.http.port"])
    );
    let server3 = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "server3")
        .unwrap();
    assert_eq!(server3["applications"][0]["action"], "redeploy");
    assert_eq!(server3["pending_restart"], serde_json::json!([]));
}

#[test]
fn markdown_plan_is_a_pr_comment() {
    let repo = changed_repo("diff-md");
    let r = repo.steward(&["diff", "--format", "markdown", "--text"]);
    assert_eq!(r.code, 2);
    assert_snapshot!("plan_markdown", r.stdout);
}

#[test]
fn no_change_exits_0() {
    let repo = Repo::example("diff-none");
    repo.write("NOTES.md", "not part of the domain\n");
    repo.commit("notes only");
    let r = repo.steward(&["diff"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("No changes."));
}

#[test]
fn secrets_never_print() {
    let repo = Repo::example("diff-secret");
    let old_hash = repo
        .read("security/accounts.toml")
        .lines()
        .find(|l| l.starts_with("password"))
        .unwrap()
        .to_owned();
    let new_hash = "password = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ\"";
    repo.edit("security/accounts.toml", &old_hash, new_hash);
    repo.commit("rotate the admin password");
    for format in ["human", "json", "markdown"] {
        let r = repo.steward(&["diff", "--text", "--format", format]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stdout.contains("(secret changed)"),
            "{format}: {}",
            r.stdout
        );
        assert!(
            !r.stdout.contains("argon2"),
            "{format} leaks a hash: {}",
            r.stdout
        );
    }
}

#[test]
fn secrets_in_inline_tables_never_print() {
    let repo = Repo::example("diff-secret-inline");
    let text = repo.read("security/accounts.toml");
    let hash = text
        .lines()
        .find(|l| l.starts_with("password"))
        .unwrap()
        .to_owned();
    let value = hash.trim_start_matches("password = ");
    // The same user, written as an inline table under [users].
    let start = text.find("[users.admin]").unwrap();
    let end = text.find("[groups.administrators]").unwrap();
    let inline =
        format!("[users]\nadmin = {{ password = {value}, groups = [\"administrators\"] }}\n\n");
    repo.write(
        "security/accounts.toml",
        &(text[..start].to_owned() + &inline + &text[end..]),
    );
    repo.commit("inline table");
    let r = repo.steward(&["diff", "--text"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("(secret "), "{}", r.stdout);
    assert!(!r.stdout.contains("argon2"), "leaks a hash: {}", r.stdout);
}

#[test]
fn worktree_diff_and_root_commit() {
    let repo = Repo::example("diff-worktree");
    // The root commit: everything is new.
    let r = repo.steward(&["diff"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stdout.contains("server server1 (new server: start it)"),
        "{}",
        r.stdout
    );
    // Uncommitted edits against HEAD.
    let pool = "servers.server1.web.listeners.http.thread-pool.max";
    repo.set("domain.toml", pool, 128);
    let r = repo.steward(&["diff", "--worktree"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("servers.server1.web.listeners.http.thread-pool.max  64 → 128  [live]"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("no restart needed"), "{}", r.stdout);
}

#[test]
fn an_invalid_target_is_an_error() {
    let repo = Repo::example("diff-invalid");
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    repo.commit("typo");
    let r = repo.steward(&["diff"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unknown key `prot`"), "{}", r.stderr);
    assert!(
        r.stderr.contains("invalid; nothing would be applied"),
        "{}",
        r.stderr
    );
}

#[test]
fn text_names_every_changed_file() {
    let repo = Repo::example("diff-text-all");
    std::fs::write(
        repo.path().join("apps/shop/logo.png"),
        b"\x89PNG\r\n\x1a\n\0\0\0",
    )
    .unwrap();
    repo.commit("a logo");
    std::fs::write(
        repo.path().join("apps/shop/logo.png"),
        b"\x89PNG\r\n\x1a\n\0\0\x01",
    )
    .unwrap();
    repo.write("apps/shop/index.html", "<p>a new front</p>\n");
    repo.commit("new logo and page");
    for (format, binary) in [
        ("human", "Binary file apps/shop/logo.png changed"),
        ("markdown", "`apps/shop/logo.png`: binary file changed"),
    ] {
        let r = repo.steward(&["diff", "--text", "--format", format]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stdout.contains(binary), "{format}: {}", r.stdout);
        assert!(
            r.stdout.contains("+++ b/apps/shop/index.html")
                && r.stdout.contains("+<p>a new front</p>"),
            "{format}: {}",
            r.stdout
        );
        // Unchanged files are not listed.
        assert!(!r.stdout.contains("domain.toml"), "{format}: {}", r.stdout);
    }
    // The working tree too: a removed file.
    std::fs::remove_file(repo.path().join("apps/shop/logo.png")).unwrap();
    let r = repo.steward(&["diff", "--worktree", "--text"]);
    assert!(
        r.stdout.contains("Binary file apps/shop/logo.png removed"),
        "{}",
        r.stdout
    );
}

/// Each one-shot command with its standard output closed before it writes: no panic, its own
/// exit code (`steward validate --format json | head -1` panicked with "Broken pipe").
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let repo = changed_repo("diff-epipe");
    for (args, code) in [
        (&["validate", "--format", "json"][..], 0),
        (&["validate"][..], 0),
        (&["diff", "--text"][..], 2),
        (&["diff", "--format", "json"][..], 2),
        (&["schema"][..], 0),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
            .args(args)
            .current_dir(repo.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written: every write meets EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // And through a shell pipe, as the user typed it.
    for _ in 0..5 {
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "{} validate --format json | head -1",
                    env!("CARGO_BIN_EXE_steward")
                ),
            ])
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "{\n");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn changing_the_servers_account_warns() {
    let repo = Repo::example("diff-account");
    let old_hash = repo
        .read("security/accounts.toml")
        .lines()
        .find(|l| l.starts_with("password"))
        .unwrap()
        .to_owned();
    let new_hash = "password = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ\"";
    repo.edit("security/accounts.toml", &old_hash, new_hash);
    repo.commit("rotate the admin password");
    let r = repo.steward(&["diff"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Warning: account `admin` can sign servers in to the Master")
            && r.stdout
                .contains("would lose contact with the Master (server1, server2, server3)"),
        "{}",
        r.stdout
    );
    let r = repo.steward(&["diff", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["warnings"][0]["reasons"],
        serde_json::json!(["password changed"])
    );
    assert_eq!(
        v["warnings"][0]["servers"],
        serde_json::json!(["server1", "server2", "server3"])
    );
}

/// The whole story of a rollback in hosted mode: push A, push B, roll back to A, fetch, edit,
/// push. The rollback is a commit on the branch, `steward diff` in a clone compares with what
/// runs, a push of the rolled-back head is refused, and the next change builds on the rollback.
#[test]
fn rollback_fetch_edit_push() {
    let src = Repo::example("diff-rollback");
    let ports = crate::util::example_on_free_ports(&src);
    let tmp = crate::util::TempDir::new("diff-rollback-home");
    let home = tmp.path().join("home");
    let r = crate::util::steward(
        tmp.path(),
        &[
            "init",
            home.to_str().unwrap(),
            "--from",
            src.path().to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let port = ports[0];
    let master = Master::start_on(&home, port);
    let pinned = || master.pinned();

    let wc = tmp.path().join("wc");
    let url = format!("http://admin:admin@127.0.0.1:{port}/git/domain.git");
    let r = crate::util::git(tmp.path(), &["clone", "-q", &url, wc.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let git = |args: &[&str]| {
        let r = crate::util::git(&wc, args);
        assert_eq!(r.code, 0, "git {args:?}: {}", r.stderr);
        r.stdout.trim().to_owned()
    };
    // The refspec docs/ci.md gives: the clone follows the pin too.
    git(&[
        "config",
        "--add",
        "remote.origin.fetch",
        "+refs/steward/pinned:refs/remotes/origin/steward/pinned",
    ]);
    let edit = |from: &str, to: &str| {
        let path = wc.join("domain.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    edit("level = \"info\"", "level = \"warn\"");
    git(&["commit", "-qam", "A: quieter server1"]);
    git(&["push", "-q", "origin", "main"]);
    let a = git(&["rev-parse", "HEAD"]);
    edit("GREETING = \"hello from the api\"", "GREETING = \"bad\"");
    git(&["commit", "-qam", "B: a bad greeting"]);
    git(&["push", "-q", "origin", "main"]);
    let b = git(&["rev-parse", "HEAD"]);
    assert_eq!(pinned(), b);

    // Roll back to A: a new commit on the branch, with A's tree, pinned.
    let r = post(
        port,
        "/v1/domain/pin",
        ("admin", "admin"),
        &format!("{{\"commit\": \"{a}\"}}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let rollback = v["pinned"]["commit"].as_str().unwrap().to_owned();
    assert_ne!(rollback, a);
    assert_eq!(pinned(), rollback);

    // Before fetching, the clone still believes B runs: no change from B to B.
    git(&["fetch", "-q", "origin"]);
    assert_eq!(git(&["rev-parse", "origin/main"]), rollback);
    assert_eq!(git(&["rev-parse", "origin/steward/pinned"]), rollback);
    // What runs is A's configuration: the diff of the local head (B) says B's change comes back.
    let r = crate::util::steward(&wc, &["diff"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "Compared with the pinned commit `{}` (refs/remotes/origin/steward/pinned).",
            &rollback[..7]
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\"hello from the api\" → \"bad\""),
        "{}",
        r.stdout
    );
    // `--from` still decides when given.
    let r = crate::util::steward(&wc, &["diff", "--from", &a, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["base"], format!("`{a}` (--from)"));

    // Pushing the rolled-back head again is refused: the branch moved on.
    let refused = crate::util::git(&wc, &["push", "-q", "origin", "main"]);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert_eq!(pinned(), rollback);

    // The rollback commit: A's tree, on top of B, by the operator, naming the range.
    git(&["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(git(&["rev-parse", "HEAD"]), rollback);
    assert_eq!(
        git(&["rev-parse", "HEAD^{tree}"]),
        git(&["rev-parse", &format!("{a}^{{tree}}")])
    );
    assert_eq!(git(&["rev-parse", "HEAD^"]), b);
    assert_eq!(git(&["log", "-1", "--format=%an"]), "admin");
    let message = git(&["log", "-1", "--format=%B"]);
    assert!(
        message.starts_with(&format!("Roll back to {}: A: quieter server1", &a[..7]))
            && message.contains(&format!("Rolled back: {}..{}", &a[..7], &b[..7]))
            && message.contains("B: a bad greeting"),
        "{message}"
    );

    // Edit, diff (against the pin: only the new change), push: pinned, built on the rollback.
    edit("context-path = \"/shop\"", "context-path = \"/store\"");
    git(&["commit", "-qam", "C: the store"]);
    let r = crate::util::steward(&wc, &["diff"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.contains("\"/shop\" → \"/store\""), "{}", r.stdout);
    assert!(!r.stdout.contains("GREETING"), "{}", r.stdout);
    git(&["push", "-q", "origin", "main"]);
    let c = git(&["rev-parse", "HEAD"]);
    assert_eq!(pinned(), c);
    git(&["merge-base", "--is-ancestor", &rollback, &c]);
    assert!(
        !std::fs::read_to_string(wc.join("domain.toml"))
            .unwrap()
            .contains("\"bad\"")
    );
}

/// A clone that fetched the pin: plans of commits and of the working tree start from it.
#[test]
fn the_pinned_commit_is_the_base_when_known() {
    let repo = Repo::example("diff-pinned-base");
    let pinned = repo.git(&["rev-parse", "HEAD"]).stdout.trim().to_owned();
    repo.set("domain.toml", "servers.server1.logging.level", "debug");
    repo.commit("one");
    repo.set(
        "domain.toml",
        "servers.server2.web.listeners.http.port",
        8090,
    );
    repo.commit("two");
    repo.git(&[
        "remote",
        "add",
        "origin",
        "https://example.invalid/domain.git",
    ]);
    repo.git(&["update-ref", "refs/remotes/origin/steward/pinned", &pinned]);
    let r = repo.steward(&["diff"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let base = format!(
        "Compared with the pinned commit `{}` (refs/remotes/origin/steward/pinned).",
        &pinned[..7]
    );
    // Both commits since the pin, not only the last one.
    assert!(
        r.stdout.contains(&base)
            && r.stdout.contains("\"info\" → \"debug\"")
            && r.stdout.contains("8089 → 8090"),
        "{}",
        r.stdout
    );
    repo.set(
        "domain.toml",
        "servers.server1.web.listeners.http.port",
        8087,
    );
    let r = repo.steward(&["diff", "--worktree"]);
    assert!(
        r.stdout.contains(&base)
            && r.stdout.contains("8088 → 8087")
            && r.stdout.contains("8089 → 8090"),
        "{}",
        r.stdout
    );
    // The Master's own repository names it refs/steward/pinned, which comes first.
    repo.git(&["update-ref", "refs/steward/pinned", "HEAD"]);
    let r = repo.steward(&["diff", "--format", "json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["base"]
            .as_str()
            .unwrap()
            .ends_with("(refs/steward/pinned)"),
        "{}",
        v["base"]
    );
}
