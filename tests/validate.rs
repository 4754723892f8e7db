//! `steward validate` on real repositories: every kind of problem, every output format.

mod util;

use insta::assert_snapshot;
use util::Repo;

#[test]
fn the_example_domain_is_valid() {
    let repo = Repo::example("valid");
    let r = repo.steward(&["validate"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.ends_with("is valid\n"), "{}", r.stdout);
}

#[test]
fn syntax_errors_are_located() {
    let repo = Repo::example("syntax");
    repo.edit("domain.toml", "name = \"domain1\"", "name = \"domain1");
    repo.commit("broken string");
    let r = repo.steward(&["validate"]);
    assert_eq!(r.code, 1);
    assert_snapshot!("syntax", r.stdout);
}

#[test]
fn every_schema_problem_at_once() {
    let repo = Repo::example("schema");
    // unknown key with a suggestion, wrong type, out of range, bad enum, invalid name, bad duration
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    repo.edit(
        "domain.toml",
        "runtime-threads = 2",
        "runtime-threads = \"two\"",
    );
    repo.edit("domain.toml", "port = 8089", "port = 70000");
    repo.edit(
        "domain.toml",
        "restart-policy = \"auto\"",
        "restart-policy = \"automatic\"",
    );
    repo.edit(
        "domain.toml",
        "[clusters.cluster1]",
        "[clusters.\"1cluster\"]",
    );
    repo.edit(
        "domain.toml",
        "heartbeat-timeout = \"10s\"",
        "heartbeat-timeout = \"10\"",
    );
    repo.commit("many mistakes");
    let r = repo.steward(&["validate"]);
    assert_eq!(r.code, 1);
    assert_snapshot!("schema_problems", r.stdout);
}

#[test]
fn references_and_conflicts() {
    let repo = Repo::example("semantic");
    let extra = r#"
[servers.server4]
listen = "127.0.0.1:9771"

[servers.server4.web.listeners.http]
port = 8088

[clusters.cluster2]
servers = ["server2", "server9"]

[applications.shop2]
kind = "static"
source = "apps/shop2"
context-path = "/shop"
targets = ["cluster1", "clustr2"]
"#;
    let text = repo.read("domain.toml") + extra;
    repo.write("domain.toml", &text);
    repo.edit(
        "security/accounts.toml",
        "groups = [\"administrators\"]",
        "groups = [\"administrator\"]",
    );
    repo.commit("references");
    let r = repo.steward(&["validate"]);
    assert_eq!(r.code, 1);
    assert_snapshot!("references_and_conflicts", r.stdout);
}

#[test]
fn plain_and_malformed_passwords_are_refused() {
    let repo = Repo::example("passwords");
    let accounts = repo.read("security/accounts.toml");
    let hash = accounts
        .lines()
        .find(|l| l.starts_with("password"))
        .unwrap()
        .to_owned();
    repo.write(
        "security/accounts.toml",
        &(accounts.replace(&hash, "password = \"admin\"")
            + "\n[users.ops]\npassword = \"$argon2id$v=19$m=19456$broken\"\n"),
    );
    repo.commit("passwords");
    let r = repo.steward(&["validate"]);
    assert_eq!(r.code, 1);
    assert_snapshot!("passwords", r.stdout);
}

#[test]
fn missing_files_are_reported() {
    let repo = Repo::example("missing");
    repo.git(&["rm", "-q", "security/policies.toml"]);
    repo.commit("no policies");
    let r = repo.steward(&["validate"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("`security/policies.toml` is missing"),
        "{}",
        r.stdout
    );
}

#[test]
fn json_format_is_versioned_and_located() {
    let repo = Repo::example("json");
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    repo.commit("typo");
    let r = repo.steward(&["validate", "--format", "json"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["valid"], false);
    let p = &v["problems"][0];
    assert_eq!(p["code"], "unknown-key");
    assert_eq!(p["file"], "domain.toml");
    assert_eq!(p["severity"], "error");
    let line = p["line"].as_u64().unwrap() as usize;
    assert_eq!(
        repo.read("domain.toml").lines().nth(line - 1).unwrap(),
        "prot = 8088"
    );
    assert_eq!(p["column"], 1);
    assert_eq!(p["source_line"], "prot = 8088");
    assert_eq!(p["hint"], "did you mean `port`?");
}

#[test]
fn github_format_annotates() {
    let repo = Repo::example("github");
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    repo.commit("typo");
    let r = repo.steward(&["validate", "--format", "github"]);
    assert_eq!(r.code, 1);
    let first = r.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("::error file=domain.toml,line=")
            && first.contains(",title=steward unknown-key::unknown key `prot`"),
        "{first}"
    );
    assert!(first.contains("%0Ahelp: did you mean `port`?"), "{first}");
}

#[test]
fn worktree_and_other_revisions() {
    let repo = Repo::example("worktree");
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    // HEAD is still valid; the working tree is not.
    assert_eq!(repo.steward(&["validate"]).code, 0);
    let r = repo.steward(&["validate", "--worktree"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("working tree is invalid"), "{}", r.stdout);
    repo.commit("typo");
    assert_eq!(repo.steward(&["validate", "--rev", "HEAD~1"]).code, 0);
    let r = repo.steward(&["validate", "--rev", "nope"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("`nope` does not name a commit"),
        "{}",
        r.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let repo = Repo::example("usage");
    assert_eq!(repo.steward(&["validate", "--format", "yaml"]).code, 2);
    assert_eq!(
        repo.steward(&["validate", "--rev", "HEAD", "--worktree"])
            .code,
        2
    );
}

#[test]
fn a_base_port_conflicts_with_a_listener() {
    let repo = Repo::example("baseport");
    // server4's management port is server1's web port; localhost and 127.0.0.1 are one node.
    let text = repo.read("domain.toml")
        + "\n[servers.server4]\nnode = \"127.0.0.1\"\nlisten = \"127.0.0.1:8088\"\n";
    repo.write("domain.toml", &text);
    repo.commit("base port clash");
    let r = repo.steward(&["validate", "--format", "json"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    let base = problems
        .iter()
        .find(|p| {
            p["message"]
                .as_str()
                .unwrap()
                .contains("by the base port of server `server4`")
        })
        .expect("the base port conflict");
    assert_eq!(base["code"], "port-conflict");
    assert!(
        base["message"].as_str().unwrap().contains("port 8088"),
        "{base}"
    );
    assert_eq!(base["source_line"], "listen = \"127.0.0.1:8088\"");
    // Its default web listener (base port + 1 = 8089) takes server2's port too.
    assert!(
        problems
            .iter()
            .any(|p| p["message"].as_str().unwrap().contains("port 8089")),
        "{}",
        r.stdout
    );
}
