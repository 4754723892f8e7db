//! The planner as a pure function: two in-memory revisions in, per-server actions out.

use schema::model::RestartPolicy;
use schema::plan::{AppAction, ServerState, plan};
use schema::settings::Effect;

use crate::example::{ACCOUNTS, DOMAIN, POLICIES};

fn load(name: &str, domain: &str, shop_page: &str) -> schema::Loaded {
    load_with(name, domain, shop_page, ACCOUNTS, POLICIES)
}

fn load_with(
    name: &str,
    domain: &str,
    shop_page: &str,
    accounts: &str,
    policies: &str,
) -> schema::Loaded {
    let tree = crate::example::tree(name, domain, accounts, policies, shop_page);
    let v = schema::validate(&tree);
    v.loaded
        .unwrap_or_else(|| panic!("{}", v.report.render_human(false)))
}

#[test]
fn identical_revisions_plan_nothing() {
    let a = load("a", DOMAIN, "x");
    let b = load("b", DOMAIN, "x");
    let p = plan(Some(&a), &b);
    assert!(p.is_empty());
    assert_eq!(p.summary(), "No changes.");
}

#[test]
fn cluster_membership_moves_applications() {
    let a = load("a", DOMAIN, "x");
    // server3 joins cluster1: the shop deploys there; nothing else changes.
    let b = load(
        "b",
        &DOMAIN.replace(
            "servers = [\"server1\", \"server2\"]",
            "servers = [\"server1\", \"server2\", \"server3\"]",
        ),
        "x",
    );
    let p = plan(Some(&a), &b);
    assert_eq!(p.servers.len(), 1, "{}", p.render_human());
    let s3 = p.server("server3").unwrap();
    assert_eq!(s3.state, ServerState::Changed);
    assert_eq!(s3.applications.len(), 1);
    assert_eq!(
        (s3.applications[0].name.as_str(), s3.applications[0].action),
        ("shop", AppAction::Deploy)
    );
    assert!(!s3.needs_restart());
    assert_eq!(p.domain[0].path, "clusters.cluster1.servers");
    // And back: undeploy.
    let back = plan(Some(&b), &a);
    assert_eq!(
        back.server("server3").unwrap().applications[0].action,
        AppAction::Undeploy
    );
}

#[test]
fn added_and_removed_servers() {
    let a = load("a", DOMAIN, "x");
    let extra = "\n[servers.server4]\nlisten = \"127.0.0.1:9781\"\n";
    let b = load("b", &(DOMAIN.to_owned() + extra), "x");
    let p = plan(Some(&a), &b);
    assert_eq!(p.server("server4").unwrap().state, ServerState::Added);
    let p = plan(Some(&b), &a);
    assert_eq!(p.server("server4").unwrap().state, ServerState::Removed);
    // From nothing, every server is new and every deployment a deploy.
    let p = plan(None, &a);
    assert_eq!(p.servers.len(), 3);
    assert!(p.servers.iter().all(|s| s.state == ServerState::Added));
    assert_eq!(
        p.server("server1").unwrap().applications[0].action,
        AppAction::Deploy
    );
}

#[test]
fn content_change_redeploys_on_every_target_only() {
    let a = load("a", DOMAIN, "x");
    let b = load("b", DOMAIN, "y");
    let p = plan(Some(&a), &b);
    let names: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["server1", "server2"]);
    for s in &p.servers {
        assert_eq!(s.applications[0].action, AppAction::Redeploy);
        assert!(s.applications[0].reasons[0].contains("content of `apps/shop` changed"));
    }
    assert!(p.restarts().is_empty());
}

#[test]
fn effects_come_from_the_table() {
    let a = load("a", DOMAIN, "x");
    let b = load(
        "b",
        &DOMAIN
            .replace(
                "env = { STEWARD_EXAMPLE = \"server1\" }",
                "env = { STEWARD_EXAMPLE = \"one\" }",
            )
            .replace("listen = \"127.0.0.1:9736\"", "listen = \"127.0.0.1:9737\""),
        "x",
    );
    let p = plan(Some(&a), &b);
    let s1 = p.server("server1").unwrap();
    assert_eq!(
        s1.pending_restart,
        ["servers.server1.process.env.STEWARD_EXAMPLE"]
    );
    assert_eq!(s1.changes[0].effect, Effect::Restart);
    assert!(p.master_restart());
    assert!(
        p.summary().contains("the Master needs a restart"),
        "{}",
        p.summary()
    );
}

#[test]
fn each_restart_says_who_restarts_the_server() {
    let a = load("a", DOMAIN, "x");
    // server1 is `rolling` in cluster1, server3 `auto`; a fourth server, `manual` by default.
    let extra = "\n[servers.server4]\nlisten = \"127.0.0.1:9781\"\n";
    let before = DOMAIN.to_owned() + extra;
    let a4 = load("a4", &before, "x");
    let after = before
        .replace("STEWARD_EXAMPLE = \"server1\"", "STEWARD_EXAMPLE = \"one\"")
        .replace("127.0.0.1:9761", "127.0.0.1:9771")
        .replace("127.0.0.1:9781", "127.0.0.1:9791");
    let b = load("b", &after, "x");
    let p = plan(Some(&a4), &b);
    let restart = |name: &str| p.server(name).unwrap().restart.clone().unwrap();
    let s1 = restart("server1");
    assert_eq!(
        (s1.policy, s1.cluster.as_deref()),
        (RestartPolicy::Rolling, Some("cluster1"))
    );
    assert!(
        s1.description
            .contains("restarted by the Master, one at a time in cluster cluster1"),
        "{}",
        s1.description
    );
    let s3 = p.server("server3").unwrap();
    assert_eq!(s3.pending_restart.len(), 2, "{}", p.render_human());
    assert_eq!(s3.restart.as_ref().unwrap().policy, RestartPolicy::Auto);
    assert!(
        s3.restart
            .as_ref()
            .unwrap()
            .description
            .contains("restarts on apply")
    );
    let s4 = restart("server4");
    assert_eq!((s4.policy, s4.cluster), (RestartPolicy::Manual, None));
    assert!(s4.description.contains("waits for an operator"));
    // Every renderer says it per server.
    let human = p.render_human();
    assert!(
        human.contains("server server4 (restart required: waits for an operator"),
        "{human}"
    );
    let md = p.render_markdown();
    assert!(md.contains("- `server3`: restarts on apply (auto)"), "{md}");
    let json = p.to_json();
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers[0]["restart"]["policy"], "rolling");
    assert_eq!(servers[0]["restart"]["cluster"], "cluster1");
    // No restart, no restart plan.
    let live = plan(
        Some(&a),
        &load(
            "c",
            &DOMAIN.replace("level = \"info\"", "level = \"debug\""),
            "x",
        ),
    );
    assert!(
        live.servers.iter().all(|s| s.restart.is_none()),
        "{}",
        live.render_human()
    );
}

/// The admin password line of the example accounts.
fn admin_password() -> &'static str {
    ACCOUNTS
        .lines()
        .find(|l| l.starts_with("password"))
        .unwrap()
}

#[test]
fn changing_an_account_servers_may_use_warns() {
    const OTHER_HASH: &str = "password = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ\"";
    // A reader that holds `git:read` only: not an account servers can use.
    let reader =
        |password: &str| format!("\n[users.reader]\n{password}\ngroups = [\"operators\"]\n");
    let accounts = format!("{ACCOUNTS}{}", reader(OTHER_HASH));
    let a = load_with("a", DOMAIN, "x", &accounts, POLICIES);
    let check = |accounts: &str, policies: &str| {
        let b = load_with("b", DOMAIN, "x", accounts, policies);
        plan(Some(&a), &b)
    };
    // The reader's password changes: no server can use it.
    let p = check(&format!("{ACCOUNTS}{}", reader(admin_password())), POLICIES);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // The admin's password changes.
    let p = check(
        &accounts.replacen(admin_password(), OTHER_HASH, 1),
        POLICIES,
    );
    assert_eq!(p.warnings.len(), 1, "{}", p.render_human());
    let w = &p.warnings[0];
    assert_eq!(w.account, "admin");
    assert_eq!(w.reasons, ["password changed"]);
    assert_eq!(w.servers, ["server1", "server2", "server3"]);
    assert!(
        w.message.contains("would lose contact with the Master"),
        "{}",
        w.message
    );
    assert!(
        p.summary()
            .starts_with("3 servers affected; no restart needed; ")
            && p.summary()
                .contains("servers signing in as `admin` would lose contact"),
        "{}",
        p.summary()
    );
    assert!(p.render_human().contains("Warning: account `admin`"));
    assert!(
        p.render_markdown()
            .contains(":warning: **Warning:** account `admin`")
    );
    assert_eq!(p.to_json()["warnings"][0]["account"], "admin");
    // The admin leaves the administrators group.
    let p = check(
        &accounts.replacen("groups = [\"administrators\"]", "groups = []", 1),
        POLICIES,
    );
    assert_eq!(
        p.warnings[0].reasons,
        ["no longer holds servers:register, domain:read, git:read, events:read"]
    );
    // A role loses one of the permissions.
    let p = check(
        &accounts,
        &POLICIES.replacen(
            "permissions = [\"*\"]",
            "permissions = [\"domain:read\", \"git:read\"]",
            1,
        ),
    );
    assert_eq!(
        p.warnings[0].reasons,
        ["no longer holds servers:register, events:read"]
    );
    // The account is removed.
    let start = accounts.find("[users.admin]").unwrap();
    let end = accounts.find("[groups.administrators]").unwrap();
    let removed = accounts[..start].to_owned() + &accounts[end..];
    let p = check(&removed, POLICIES);
    assert_eq!(p.warnings[0].reasons, ["removed"]);
}
