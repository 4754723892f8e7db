//! The planner as a pure function: two in-memory revisions in, per-server actions out.

use schema::plan::{AppAction, ServerState, plan};
use schema::settings::{Effect, FileKind};
use schema::tree::MemTree;

const DOMAIN: &str = include_str!("../../examples/domain1/domain.toml");
const ACCOUNTS: &str = include_str!("../../examples/domain1/security/accounts.toml");
const POLICIES: &str = include_str!("../../examples/domain1/security/policies.toml");

fn load(name: &str, domain: &str, shop_page: &str) -> schema::Loaded {
    let tree = MemTree::new(name)
        .with(FileKind::Domain.path(), domain)
        .with(FileKind::Accounts.path(), ACCOUNTS)
        .with(FileKind::Policies.path(), POLICIES)
        .with("apps/shop/index.html", shop_page)
        .with("apps/api/bin/api", "x")
        .with("libs/common/README.txt", "x");
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
