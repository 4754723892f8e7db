//! `steward diff`: per-server effects of a change, in every format.

mod util;

use insta::assert_snapshot;
use util::Repo;

/// One commit with a live, a redeploy and a restart change, plus new content for the shop.
fn changed_repo(name: &str) -> Repo {
    let repo = Repo::example(name);
    repo.edit("domain.toml", "level = \"info\"", "level = \"debug\""); // server1 live
    repo.edit("domain.toml", "port = 8089", "port = 8090"); // server2 restart
    repo.edit(
        "domain.toml",
        "GREETING = \"hello from the api\"",
        "GREETING = \"hi\"",
    ); // api redeploy
    repo.edit(
        "domain.toml",
        "context-path = \"/shop\"",
        "context-path = \"/store\"",
    ); // shop live
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
    repo.edit(
        "domain.toml",
        "max = 64 }\n\n[servers.server1.web",
        "max = 128 }\n\n[servers.server1.web",
    );
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
