//! `steward validate` on real repositories: every kind of problem, every output format.

use crate::util::Repo;
use insta::assert_snapshot;

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
    repo.set(
        "domain.toml",
        "servers.server1.process.runtime-threads",
        "two",
    );
    repo.set(
        "domain.toml",
        "servers.server2.web.listeners.http.port",
        70000,
    );
    repo.set("domain.toml", "servers.server3.restart-policy", "automatic");
    repo.edit(
        "domain.toml",
        "[clusters.cluster1]",
        "[clusters.\"1cluster\"]",
    );
    repo.set("domain.toml", "master.heartbeat-timeout", "10");
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
    let groups = toml_edit::Array::from_iter(["administrator"]);
    repo.set("security/accounts.toml", "users.admin.groups", groups);
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

/// Messages and codes of a JSON report.
fn json_problems(r: &crate::util::Run) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap().to_owned(),
                p["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn schema_errors_do_not_hide_references_and_conflicts() {
    let repo = Repo::example("everything");
    // A misspelt key (in server2), a port clash (server3's default listener, 9762, taken by a
    // new server), and an application targeting a server that does not exist.
    repo.edit(
        "domain.toml",
        "level = \"info\"\n\n# server3",
        "levl = \"info\"\n\n# server3",
    );
    let text = repo.read("domain.toml")
        + "\n[servers.server4]\nlisten = \"127.0.0.1:9762\"\n\
           \n[applications.extra]\nkind = \"static\"\nsource = \"apps/shop\"\n\
           context-path = \"/extra\"\ntargets = [\"server9\"]\n";
    repo.write("domain.toml", &text);
    repo.commit("three mistakes");
    let r = repo.steward(&["validate", "--format", "json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let codes: Vec<String> = json_problems(&r).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        codes,
        ["unknown-key", "port-conflict", "unknown-target"],
        "{}",
        r.stdout
    );
}

#[test]
fn nothing_is_said_about_what_did_not_parse() {
    let repo = Repo::example("holes");
    // server3 has a schema error: the application targeting it is not "targeting an unknown
    // server", and nothing is said about its ports.
    repo.edit(
        "domain.toml",
        "restart-policy = \"auto\"",
        "restart-policy = \"sometimes\"",
    );
    // The Master's section has one too: its port is not taken to be the default 9736.
    repo.edit(
        "domain.toml",
        "heartbeat-interval = \"2s\"",
        "heartbeat-intervall = \"2s\"",
    );
    let text = repo.read("domain.toml") + "\n[servers.server4]\nlisten = \"0.0.0.0:9736\"\n";
    repo.write("domain.toml", &text);
    // A user with a bad password: roles naming it are not "naming an unknown user", and no
    // "no administrator" warning follows from its absence.
    repo.edit(
        "security/accounts.toml",
        "groups = [\"administrators\"]",
        "groups = [\"administrators\"]\npasword = \"x\"",
    );
    repo.commit("schema errors only");
    let r = repo.steward(&["validate", "--format", "json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let codes: Vec<String> = json_problems(&r).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        codes,
        ["unknown-key", "invalid-value", "unknown-key"],
        "{}",
        r.stdout
    );
    // A syntax error in one file: the others are still checked.
    repo.edit("domain.toml", "name = \"domain1\"", "name = \"domain1");
    let text = repo.read("security/policies.toml") + "\n[roles.extra]\nusers = [\"nobody\"]\n";
    repo.write("security/policies.toml", &text);
    repo.commit("syntax and a reference");
    let r = repo.steward(&["validate", "--format", "json"]);
    let problems = json_problems(&r);
    assert!(
        problems.iter().any(|(c, _)| c == "syntax")
            && problems
                .iter()
                .any(|(c, m)| c == "unknown-user" && m.contains("nobody")),
        "{}",
        r.stdout
    );
}

#[test]
fn secrets_are_never_shown() {
    let repo = Repo::example("secrets");
    let accounts = repo.read("security/accounts.toml");
    let hash = accounts
        .lines()
        .find(|l| l.starts_with("password"))
        .unwrap()
        .trim_start_matches("password = ")
        .to_owned();
    // A misspelt key holding a real hash, a plain-text password, and one in an environment.
    repo.write(
        "security/accounts.toml",
        &(accounts.replace("password = ", "pasword = ")
            + "\n[users.ops]\npassword = \"hunter2-plain\"\n"),
    );
    repo.edit(
        "domain.toml",
        "env = { STEWARD_EXAMPLE = \"server1\" }",
        "env = { DB_PASSWORD = \"s3cr3t-value\", bad = 1 }",
    );
    repo.commit("secrets");
    let secret_of_hash = hash
        .trim_matches('"')
        .split('$')
        .next_back()
        .unwrap()
        .to_owned();
    for format in ["human", "json", "github"] {
        let r = repo.steward(&["validate", "--format", format]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        for secret in [secret_of_hash.as_str(), "hunter2-plain", "s3cr3t-value"] {
            assert!(
                !r.stdout.contains(secret),
                "{format} shows {secret}:\n{}",
                r.stdout
            );
        }
        // The key and the place stay visible.
        if format != "github" {
            assert!(r.stdout.contains("pasword = <redacted>"), "{}", r.stdout);
            assert!(
                r.stdout.contains("DB_PASSWORD = <redacted>"),
                "{}",
                r.stdout
            );
        }
    }
    // The pusher's terminal: the pre-receive hook of a bare repository.
    let server = crate::util::TempDir::new("secrets-bare");
    let bare = server.path().join("domain.git");
    let bare = bare.to_str().unwrap();
    assert_eq!(
        crate::util::git(server.path(), &["init", "-q", "--bare", bare]).code,
        0
    );
    assert_eq!(
        crate::util::steward(server.path(), &["hook", "install", "--repo", bare]).code,
        0
    );
    let push = crate::util::git(repo.path(), &["push", bare, "HEAD:refs/heads/main"]);
    assert_ne!(push.code, 0, "{}", push.stderr);
    assert!(push.stderr.contains("pasword"), "{}", push.stderr);
    for secret in [secret_of_hash.as_str(), "hunter2-plain", "s3cr3t-value"] {
        assert!(
            !push.stderr.contains(secret),
            "the hook shows {secret}:\n{}",
            push.stderr
        );
    }
}

#[test]
fn a_flood_of_problems_is_bounded() {
    let repo = Repo::example("flood");
    let text = repo.read("domain.toml") + &"= = =\n".repeat(50_000);
    repo.write("domain.toml", &text);
    repo.commit("50,000 broken lines");
    let r = repo.steward(&["validate", "--format", "json"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let shown = v["problems"].as_array().unwrap().len();
    assert_eq!(shown, schema::diag::MAX_PROBLEMS);
    assert_eq!(v["errors"], 200_000);
    assert_eq!(v["omitted"], 200_000 - shown);
    let r = repo.steward(&["validate"]);
    assert!(r.stdout.len() < 100_000, "{} bytes", r.stdout.len());
    assert!(
        r.stdout.contains("… and 199,800 more problems (not shown"),
        "{}",
        &r.stdout[r.stdout.len() - 300..]
    );
    let r = repo.steward(&["validate", "--format", "github"]);
    assert_eq!(r.stdout.lines().count(), schema::diag::MAX_PROBLEMS + 2);
    // A reader that stops after the first line (`| head -1`): no panic, the exit code stays.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["validate", "--format", "json"])
        .current_dir(repo.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A file over the size limit is refused without being parsed.
    let big = "#".repeat(schema::syntax::MAX_FILE_SIZE + 1);
    repo.write("domain.toml", &big);
    let r = repo.steward(&["validate", "--worktree", "--format", "json"]);
    let problems = json_problems(&r);
    assert!(
        problems.iter().any(|(c, _)| c == "too-large"),
        "{}",
        r.stdout
    );
}

#[test]
fn the_default_listener_binds_the_base_address() {
    let repo = Repo::example("listener");
    // server3 has no listener: its web engine takes 127.0.0.1:9762, like its base address. A
    // server on another address of the node may take port 9762; one on 0.0.0.0 may not.
    let text = repo.read("domain.toml")
        + "\n[servers.server4]\nnode = \"localhost\"\nlisten = \"127.0.0.2:9762\"\n\
           \n[servers.server5]\nlisten = \"0.0.0.0:9700\"\n\
           [servers.server5.web.listeners.http]\nport = 9762\n";
    repo.write("domain.toml", &text);
    repo.commit("listeners");
    let r = repo.steward(&["validate", "--format", "json"]);
    let problems = json_problems(&r);
    let conflicts: Vec<&String> = problems
        .iter()
        .filter(|(c, _)| c == "port-conflict")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(conflicts.len(), 1, "{}", r.stdout);
    assert!(
        conflicts[0].contains("port 9762")
            && conflicts[0].contains("server3")
            && conflicts[0].contains("server5"),
        "{}",
        r.stdout
    );
}

/// Without `[nodes]` a server's `node` is a host name (the example: all on `localhost`); once
/// nodes are declared, every server names one of them.
#[test]
fn servers_run_on_declared_nodes() {
    let repo = Repo::example("val-nodes");
    repo.edit(
        "domain.toml",
        "[servers.server1]\n",
        "[nodes.localhost]\naddress = \"127.0.0.1\"\n\n[servers.server1]\n",
    );
    repo.set("domain.toml", "servers.server2.node", "localhots");
    repo.set("domain.toml", "servers.server3.node", "elsewhere");
    let r = repo.steward(&["validate", "--worktree"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "server `server2` runs on node `localhots`, which is not declared in `[nodes]`"
        ) && r.stdout.contains("did you mean `localhost`?"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("declare it as `[nodes.elsewhere]`"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("server1"), "{}", r.stdout);
    repo.set("domain.toml", "servers.server2.node", "localhost");
    repo.set("domain.toml", "servers.server3.node", "localhost");
    let r = repo.steward(&["validate", "--worktree"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
}
