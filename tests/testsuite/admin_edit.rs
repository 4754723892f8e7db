//! `steward admin set/unset/deploy/undeploy` end to end: the real binary edits the commented
//! example domain through its work clone, validates, plans, commits as the operator and pushes to
//! a real Master; a concurrent push is rebased; bad input and a missing permission are refused.
//! Long because each test checks the whole text an operator sees and the repository it leaves.

use std::path::{Path, PathBuf};

use crate::util::master::{Master, Servers, init, init_home, start_server, upstream};
use crate::util::{Repo, Run, TempDir, eventually, example_dir, git_ok, steward_cmd, text};

/// `steward admin ARGS` against the Master on `port` as `user`, its work clone under `cache`.
fn admin_in(cache: &Path, port: u16, user: &str, password: &str, args: &[&str]) -> Run {
    let out = steward_cmd(&["admin"])
        .args(args)
        .env("STEWARD_MASTER", format!("http://127.0.0.1:{port}"))
        .env("STEWARD_USER", user)
        .env("STEWARD_PASSWORD", password)
        .env("STEWARD_CREDENTIALS", "/nonexistent/steward-credentials")
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("run steward admin");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// The example domain (every comment of it) in a domain home, its Master running.
fn example_master(tmp: &TempDir) -> (Master, PathBuf) {
    let home = tmp.path().join("home");
    init(&home, &example_dir());
    let master = Master::start(&home, tmp.path().join("master.log"));
    (master, tmp.path().join("cache"))
}

/// A fresh clone of the Master's repository in `tmp/name`.
fn fresh_clone(master: &Master, tmp: &TempDir, name: &str) -> PathBuf {
    crate::util::master::clone_domain(master.port, tmp.path().join(name))
}

/// Lines only in `new`, and lines only in `old` (as multisets, in order).
fn line_changes(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let mut removed: Vec<&str> = old.lines().collect();
    let mut added = Vec::new();
    for l in new.lines() {
        match removed.iter().position(|r| *r == l) {
            Some(i) => {
                removed.remove(i);
            }
            None => added.push(l.to_owned()),
        }
    }
    (added, removed.into_iter().map(str::to_owned).collect())
}

#[test]
fn set_keeps_every_comment_and_the_change_is_pinned() {
    let tmp = TempDir::new("admin-edit-set");
    let (master, cache) = example_master(&tmp);
    let before = master.pinned();
    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &[
            "set",
            "servers.server1.logging.level=debug",
            "servers.server3.process.runtime-threads=4",
            "--yes",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("  ~ servers.server1.logging.level  \"info\" → \"debug\"  [LIVE]\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("  ~ servers.server3.process.runtime-threads  2 → 4  [RESTART]\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("; the Master pinned it.\n"),
        "{}",
        r.stdout
    );

    // The Master's repository, seen from a fresh clone: the two changes and nothing else.
    let clone = fresh_clone(&master, &tmp, "fresh");
    let head = git_ok(&clone, &["rev-parse", "HEAD"]);
    assert_eq!(master.pinned(), head);
    assert_ne!(before, head);
    let original = std::fs::read_to_string(example_dir().join("domain.toml")).unwrap();
    let edited = std::fs::read_to_string(clone.join("domain.toml")).unwrap();
    let (added, removed) = line_changes(&original, &edited);
    assert_eq!(removed, vec!["level = \"info\"".to_owned()], "{edited}");
    assert_eq!(
        added,
        vec![
            "level = \"debug\"".to_owned(),
            "[servers.server3.process]".to_owned(),
            "runtime-threads = 4".to_owned(),
            String::new(),
        ],
        "{edited}"
    );
    // Every comment, in place: the file is the original with those lines changed.
    let comments = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.contains('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(comments(&original), comments(&edited));
    assert!(
        edited.contains(
            "[servers.server1.logging]\nlevel = \"debug\"\nrotation = { max-size = \"10MiB\""
        ),
        "{edited}"
    );
    // The operator is the author; the message says what changed.
    let log = git_ok(&clone, &["log", "-1", "--format=%an <%ae>%n%s"]);
    assert_eq!(
        log,
        "admin <admin@domain1>\nsteward admin: set servers.server1.logging.level=debug; set servers.server3.process.runtime-threads=4"
    );
    let history = master.history();
    assert_eq!(history[0]["commit"], head.as_str());
    assert_eq!(history[0]["pusher"], "admin");

    // Unset takes it back out, with the table it leaves empty; --author and --message override.
    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &[
            "unset",
            "servers.server3.process.runtime-threads",
            "--yes",
            "--format",
            "json",
            "--author",
            "Alice Doe <alice@example.com>",
            "--message",
            "back to the default",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "pushed", "{v}");
    assert_eq!(v["pinned"], true, "{v}");
    assert_eq!(v["plan"]["restart"], serde_json::json!(["server3"]), "{v}");
    let commit = v["commit"].as_str().unwrap();
    git_ok(&clone, &["pull", "-q"]);
    assert_eq!(git_ok(&clone, &["rev-parse", "HEAD"]), commit);
    let (added, removed) = line_changes(
        &original,
        &std::fs::read_to_string(clone.join("domain.toml")).unwrap(),
    );
    assert_eq!(
        (added, removed),
        (
            vec!["level = \"debug\"".to_owned()],
            vec!["level = \"info\"".to_owned()]
        )
    );
    assert_eq!(
        git_ok(&clone, &["log", "-1", "--format=%an <%ae>%n%s"]),
        "Alice Doe <alice@example.com>\nback to the default"
    );
}

#[test]
fn a_dry_run_prints_the_marked_plan_and_changes_nothing() {
    let tmp = TempDir::new("admin-edit-dry");
    let (master, cache) = example_master(&tmp);
    let pin = master.pinned();
    let records = master.history().len();
    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &[
            "set",
            "servers.server2.web.listeners.http.port=8099",
            "applications.shop.env.MODE=test",
            "clusters.cluster1.description=The front",
            "--dry-run",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let short = &pin[..7];
    assert_eq!(
        r.stdout,
        format!(
            "Plan {short} → this change
Compared with the pinned commit {short}.

server server1
  ~ redeploy application shop (changed: env.MODE)  [REDEPLOY]
      applications.shop.env.MODE  (unset) → \"test\"  [REDEPLOY]

server server2 (restart required: restarted by the Master, one at a time in cluster cluster1 (rolling))
  ~ servers.server2.web.listeners.http.port  8089 → 8099  [RESTART]
  ~ redeploy application shop (changed: env.MODE)  [REDEPLOY]
      applications.shop.env.MODE  (unset) → \"test\"  [REDEPLOY]

domain
  ~ clusters.cluster1.description  \"The shop front\" → \"The front\"  [LIVE]

Restart required:
  server2: restarted by the Master, one at a time in cluster cluster1 (rolling)

2 servers affected; 1 needs a restart (server2); application deployments: 2 to redeploy.

Dry run: nothing was committed.
"
        )
    );
    assert_eq!(master.pinned(), pin);
    assert_eq!(master.history().len(), records);
    let clone = fresh_clone(&master, &tmp, "fresh");
    assert_eq!(git_ok(&clone, &["rev-parse", "HEAD"]), pin);

    // JSON: the plan as `steward diff --format json` gives it.
    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &[
            "set",
            "servers.server1.logging.level=warn",
            "--dry-run",
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "dry-run");
    assert_eq!(
        v["plan"]["servers"][0]["changes"][0]["effect"], "live",
        "{v}"
    );
    assert_eq!(master.pinned(), pin);
}

#[test]
fn bad_input_is_refused_with_what_to_do_and_nothing_is_pushed() {
    let tmp = TempDir::new("admin-edit-bad");
    let (master, cache) = example_master(&tmp);
    let pin = master.pinned();
    let run = |user: &str, password: &str, args: &[&str]| {
        admin_in(&cache, master.port, user, password, args)
    };

    let r = run(
        "admin",
        "admin",
        &["set", "servers.server9.node=localhost", "--yes"],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        r.stderr,
        "error: no server `server9` in domain.toml; did you mean `server1`? (servers: server1, server2, server3)\n"
    );
    let r = run(
        "admin",
        "admin",
        &["set", "servers.server1.restart_policy=auto", "--yes"],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: `servers.server1.restart_policy` is not a setting of domain.toml; did you mean `servers.server1.restart-policy`?\n"
    );

    // A value of the wrong type: the validator's own message, at its place in the file.
    let r = run(
        "admin",
        "admin",
        &[
            "set",
            "servers.server1.process.runtime-threads=many",
            "--yes",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "error[wrong-type]: `servers.server1.process.runtime-threads` must be a integer 1..=1024, found string"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("runtime-threads = \"many\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("error: this change is invalid: 1 error, 0 warnings\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .ends_with("error: this change would make the configuration invalid (above); nothing was committed\n"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // For scripts: the validation report, as `steward validate --format json` gives it.
    let r = run(
        "admin",
        "admin",
        &[
            "set",
            "servers.server1.process.runtime-threads=many",
            "--yes",
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "invalid", "{v}");
    let p = &v["report"]["problems"][0];
    assert_eq!(p["code"], "wrong-type", "{v}");
    assert_eq!(p["file"], "domain.toml", "{v}");
    assert_eq!(p["line"], 30, "{v}");
    // An invalid value the validator checks semantically: every problem, as validate prints it.
    let r = run(
        "admin",
        "admin",
        &["set", "servers.server1.restart-policy=sometimes", "--yes"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("error[invalid-value]: `sometimes` is not a valid value for `servers.server1.restart-policy`"),
        "{}",
        r.stderr
    );

    // An author git would take for a search pattern.
    let r = run(
        "admin",
        "admin",
        &[
            "set",
            "servers.server1.logging.level=debug",
            "--yes",
            "--author",
            "alice",
        ],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: --author \"alice\": write it as `Name <mail>`\n"
    );

    // No terminal and no --yes: refused before anything is done.
    let r = run(
        "admin",
        "admin",
        &["set", "servers.server1.logging.level=debug"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("pass --yes"), "{}", r.stderr);

    assert_eq!(master.pinned(), pin);
    let clone = fresh_clone(&master, &tmp, "fresh");
    assert_eq!(git_ok(&clone, &["rev-parse", "HEAD"]), pin);
}

#[test]
fn a_user_who_may_not_push_gets_403_and_a_clear_error() {
    let tmp = TempDir::new("admin-edit-403");
    let home = init_home(&tmp);
    let master = Master::start(&home, tmp.path().join("master.log"));
    let cache = tmp.path().join("cache");
    let pin = master.pinned();
    // `reader` may fetch (`git:read`): the plan is theirs to see.
    let r = admin_in(
        &cache,
        master.port,
        "reader",
        "reader",
        &["set", "servers.server1.logging.level=debug", "--dry-run"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("[LIVE]"), "{}", r.stdout);
    let r = admin_in(
        &cache,
        master.port,
        "reader",
        "reader",
        &["set", "servers.server1.logging.level=debug", "--yes"],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        r.stderr,
        "error: user `reader` lacks the permission `git:push` (403): an administrator can grant it to one of the user's roles in security/policies.toml\n"
    );
    let r = admin_in(
        &cache,
        master.port,
        "reader",
        "wrong",
        &["set", "servers.server1.logging.level=debug", "--yes"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("refused the credentials of user `reader` (401)"),
        "{}",
        r.stderr
    );
    assert_eq!(master.pinned(), pin);
}

#[test]
fn a_mirrored_domain_is_changed_upstream_not_through_the_master() {
    let tmp = TempDir::new("admin-edit-mirror");
    let (bare, _work) = upstream(&tmp);
    let home = init_home(&tmp);
    let master = Master::start_with(
        &home,
        tmp.path().join("master.log"),
        &["--upstream", bare.to_str().unwrap()],
    );
    let r = admin_in(
        &tmp.path().join("cache"),
        master.port,
        "admin",
        "admin",
        &["set", "servers.server1.logging.level=debug", "--dry-run"],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        r.stderr,
        format!(
            "error: the domain mirrors {} (mirror mode): its configuration changes there, not through the Master\n",
            bare.display()
        )
    );
}

#[test]
fn a_concurrent_push_is_rebased_and_both_changes_land() {
    let tmp = TempDir::new("admin-edit-race");
    let (master, cache) = example_master(&tmp);
    // The work clone exists after a first (dry) run; its pre-push hook pushes another operator's
    // commit once, between our fetch and our push: a real race, lost by our first push.
    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &["set", "servers.server1.logging.level=debug", "--dry-run"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let work = std::fs::read_dir(cache.join("steward/admin"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("the work clone");
    let other = fresh_clone(&master, &tmp, "other");
    crate::util::edit_text(
        &other.join("domain.toml"),
        "description = \"The shop front\"",
        "description = \"The shop front, edited meanwhile\"",
    );
    git_ok(&other, &["commit", "-qam", "another operator's change"]);
    let other_commit = git_ok(&other, &["rev-parse", "HEAD"]);
    let marker = tmp.path().join("raced");
    let hook = work.join(".git/hooks/pre-push");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n[ -e '{marker}' ] && exit 0\ntouch '{marker}'\nunset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_CONFIG_COUNT\ncd '{other}' && git push -q origin main >&2\n",
            marker = marker.display(),
            other = other.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &["set", "servers.server1.logging.level=debug", "--yes"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(marker.exists(), "the hook never ran");
    assert!(
        r.stdout.contains(&format!(
            "The branch moved (another push, now {}): making the same change on it.",
            &other_commit[..7]
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("(after 1 rebase(s)); the Master pinned it."),
        "{}",
        r.stdout
    );
    let clone = fresh_clone(&master, &tmp, "fresh");
    let parent = git_ok(&clone, &["rev-parse", "HEAD^"]);
    assert_eq!(parent, other_commit);
    let domain = std::fs::read_to_string(clone.join("domain.toml")).unwrap();
    assert!(domain.contains("edited meanwhile"), "{domain}");
    assert!(
        domain.contains("[servers.server1.logging]\nlevel = \"debug\""),
        "{domain}"
    );
    assert_eq!(master.pinned(), git_ok(&clone, &["rev-parse", "HEAD"]));
}

#[test]
fn deploy_of_a_directory_serves_it_and_undeploy_takes_it_away() {
    let tmp = TempDir::new("admin-edit-deploy");
    let repo = Repo::example("admin-edit-deploy-repo");
    let ports = crate::util::example_on_free_ports(&repo);
    repo.commit("on free ports");
    let home = tmp.path().join("home");
    init(&home, repo.path());
    let master = Master::start_on(&home, ports[0]);
    let cache = tmp.path().join("cache");
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", master.port);
    let web = ports[4];
    let page = |path: &str| crate::util::http::get(web, path).ok();
    eventually("server1 serves the shop", 20, || {
        page("/shop/index.html").filter(|r| r.status == 200)
    });

    let site = tmp.path().join("site");
    std::fs::create_dir_all(site.join("css")).unwrap();
    std::fs::write(site.join("index.html"), "hello from the blog\n").unwrap();
    std::fs::write(site.join("css/blog.css"), "body {}\n").unwrap();
    let run = |args: &[&str]| admin_in(&cache, master.port, "admin", "admin", args);

    // A target that does not exist: the validator's message, nothing pushed.
    let site_arg = site.to_str().unwrap();
    let r = run(&[
        "deploy", "blog", "--source", site_arg, "--target", "sever1", "--yes",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("`sever1`"), "{}", r.stderr);
    assert!(r.stderr.contains("server1"), "{}", r.stderr);

    let r = run(&[
        "deploy", "blog", "--source", site_arg, "--target", "server1", "--yes",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("server server1\n  + deploy application blog  [REDEPLOY]\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("the Master pinned it."), "{}", r.stdout);
    let body = eventually("server1 serves the blog", 20, || {
        page("/blog/index.html").filter(|r| r.status == 200)
    })
    .body;
    assert_eq!(body, "hello from the blog\n");
    let clone = fresh_clone(&master, &tmp, "fresh");
    assert_eq!(
        std::fs::read_to_string(clone.join("apps/blog/css/blog.css")).unwrap(),
        "body {}\n"
    );
    let domain = std::fs::read_to_string(clone.join("domain.toml")).unwrap();
    assert!(
        domain.ends_with(
            "[applications.blog]\nkind = \"static\"\nsource = \"apps/blog\"\ncontext-path = \"/blog\"\ntargets = [\"server1\"]\n"
        ),
        "{domain}"
    );

    // New content for the same application: a redeploy of it alone; a removed file goes.
    std::fs::write(site.join("index.html"), "second edition\n").unwrap();
    std::fs::remove_file(site.join("css/blog.css")).unwrap();
    let r = run(&["deploy", "blog", "--source", site_arg, "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "  ~ redeploy application blog (content of `apps/blog` changed)  [REDEPLOY]\n"
        ),
        "{}",
        r.stdout
    );
    eventually("server1 serves the second edition", 20, || {
        page("/blog/index.html").filter(|r| r.body == "second edition\n")
    });

    // An archive, named through a link: `apps/docs.tar`, unpacked on the server.
    let tar = tmp.path().join("docs.tar");
    std::fs::write(
        &tar,
        crate::util::tar_with(&[("index.html", b"the manual\n".as_slice())]),
    )
    .unwrap();
    let link = tmp.path().join("latest.tar");
    std::os::unix::fs::symlink(&tar, &link).unwrap();
    let r = run(&[
        "deploy",
        "docs",
        "--source",
        link.to_str().unwrap(),
        "--target",
        "server1",
        "--context-path",
        "/manual",
        "--yes",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    eventually("server1 serves the manual", 20, || {
        page("/manual/index.html").filter(|r| r.body == "the manual\n")
    });
    git_ok(&clone, &["pull", "-q"]);
    assert!(clone.join("apps/docs.tar").is_file());
    assert!(
        std::fs::read_to_string(clone.join("domain.toml"))
            .unwrap()
            .contains("[applications.docs]\nkind = \"static\"\nsource = \"apps/docs.tar\"\ncontext-path = \"/manual\"\n")
    );
    let r = run(&["undeploy", "docs", "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    let r = run(&["undeploy", "blog", "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("  - undeploy application blog  [REDEPLOY]\n"),
        "{}",
        r.stdout
    );
    eventually("the blog is gone", 20, || {
        page("/blog/index.html").filter(|r| r.status == 404)
    });
    git_ok(&clone, &["pull", "-q"]);
    assert!(!clone.join("apps/blog").exists());
    let after = std::fs::read_to_string(clone.join("domain.toml")).unwrap();
    let original = std::fs::read_to_string(example_dir().join("domain.toml")).unwrap();
    assert!(!after.contains("blog"), "{after}");
    // Back to the example with its ports moved: nothing else left behind.
    assert_eq!(after.lines().count(), original.lines().count(), "{after}");
    assert!(page("/shop/index.html").is_some_and(|r| r.status == 200));
}

#[test]
fn a_push_the_masters_validation_refuses_prints_its_problems() {
    let tmp = TempDir::new("admin-edit-refused");
    let (master, cache) = example_master(&tmp);
    let pin = master.pinned();
    // A Master whose validation disagrees with this client's (a newer Steward, a site policy):
    // its hook refuses every push with a problem in the validator's format.
    let hook = tmp.path().join("home/config/domain.git/hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\ncat >/dev/null\necho 'domain.toml:8:1: error[policy]: every change needs a ticket (help: name it in the message)' >&2\nexit 1\n",
    )
    .unwrap();
    let r = admin_in(
        &cache,
        master.port,
        "admin",
        "admin",
        &["set", "servers.server1.logging.level=debug", "--yes"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("[LIVE]"), "{}", r.stdout);
    let (head, problems) = r
        .stderr
        .split_once(":\n")
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        head.starts_with("error: the Master refused "),
        "{}",
        r.stderr
    );
    assert_eq!(
        problems,
        "domain.toml:8:1: error[policy]: every change needs a ticket\n  = help: name it in the message\n"
    );
    assert_eq!(master.pinned(), pin);
    assert_eq!(master.history()[0]["outcome"], "rejected");
}

#[test]
fn on_a_terminal_it_asks_before_committing() {
    let tmp = TempDir::new("admin-edit-ask");
    let (master, cache) = example_master(&tmp);
    let pin = master.pinned();
    // `script` gives the command a terminal; the answer comes on it.
    let ask = |answer: &str| -> String {
        use std::io::Write;
        let cmdline = format!(
            "'{}' admin set servers.server1.logging.level=debug",
            env!("CARGO_BIN_EXE_steward")
        );
        let mut child = std::process::Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .env(
                "STEWARD_MASTER",
                format!("http://127.0.0.1:{}", master.port),
            )
            .env("STEWARD_USER", "admin")
            .env("STEWARD_PASSWORD", "admin")
            .env("STEWARD_CREDENTIALS", "/nonexistent/steward-credentials")
            .env("XDG_CACHE_HOME", &cache)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script(1) runs");
        let mut stdin = child.stdin.take().unwrap();
        // After the plan is printed: the prompt reads a line from the terminal.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stdin.write_all(answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        text(&out.stdout).replace('\r', "")
    };
    let no = ask("n\n");
    assert!(no.contains("[LIVE]"), "{no}");
    assert!(
        no.contains("Commit this change and push it to the Master? [y/N]"),
        "{no}"
    );
    assert!(no.contains("Nothing was committed."), "{no}");
    assert_eq!(master.pinned(), pin);
    let yes = ask("y\n");
    assert!(yes.contains("the Master pinned it."), "{yes}");
    assert_ne!(master.pinned(), pin);
}
