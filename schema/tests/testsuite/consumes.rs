//! Message-driven components: `consumes` checked where it is written (its form by the loader,
//! the destinations against the servers the application is deployed to), and planned live.

use schema::plan::{AppAction, plan};
use schema::settings::Effect;

use crate::timers::{at, validate};

/// server3 declares the queue `orders` (examples/domain1); the topic `prices` is added here.
const MDB: &str = r#"
[servers.server3.messaging.topics.prices]

[applications.orders]
kind = "component"
source = "apps/api"
targets = ["server3"]
command = "bin/api"
consumes = ["queue:orders", "topic:prices", "queue:orders.dlq"]
"#;

#[test]
fn a_component_consumes_declared_queues_and_topics() {
    let v = validate(MDB);
    let loaded = v
        .loaded
        .unwrap_or_else(|| panic!("{}", v.report.render_short()));
    let app = &loaded.domain.config.applications["orders"];
    assert_eq!(
        app.consumes,
        ["queue:orders", "topic:prices", "queue:orders.dlq"]
    );
    assert_eq!(
        schema::model::Consume::parse(&app.consumes[1])
            .unwrap()
            .destination(),
        "/topic/prices"
    );
}

#[test]
fn bad_consumes_are_reported_where_they_are_written_with_a_fix() {
    for (extra, needle, says, hint) in [
        (
            MDB.replace("\"queue:orders\",", "\"exchange:orders\","),
            "\"exchange:orders\"",
            "starts with `exchange:`; a component consumes `queue:NAME` or `topic:NAME`",
            "",
        ),
        (
            MDB.replace("\"queue:orders\",", "\"orders\","),
            "\"orders\"",
            "names no kind of destination; write `queue:orders` or `topic:orders`",
            "",
        ),
        (
            MDB.replace("\"queue:orders\",", "\"queue:\","),
            "\"queue:\"",
            "is not a destination name",
            "",
        ),
        (
            MDB.replace("\"topic:prices\"", "\"topic:quotes\""),
            "\"topic:quotes\"",
            "application `orders` consumes `topic:quotes`, which is not declared on server `server3`",
            "declare it with `[servers.server3.messaging.topics.quotes]`",
        ),
        (
            // Deployed to a cluster too: its servers declare no queue.
            MDB.replace(
                "targets = [\"server3\"]",
                "targets = [\"server3\", \"cluster1\"]",
            ),
            "\"queue:orders\"",
            "not declared on servers `server1`, `server2`",
            "or remove it from `consumes`",
        ),
        (
            MDB.replace(
                "kind = \"component\"",
                "kind = \"process\"\ncontext-path = \"/o\"",
            ),
            "[\"queue:orders\"",
            "process application `orders` has `consumes`; only `component` applications consume messages",
            "set `kind = \"component\"`",
        ),
        (
            MDB.replace("\"topic:prices\",", "\"queue:orders\","),
            "\"queue:orders\", \"queue:orders.dlq\"",
            "is listed twice",
            "",
        ),
    ] {
        let v = validate(&extra);
        let report = v.report.render_short();
        assert!(v.loaded.is_none(), "{extra}: accepted");
        let want = at(&extra, needle);
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(says)),
            "expected `{want}: … {says}` in:\n{report}"
        );
        let full = v.report.render_short();
        assert!(full.contains(hint), "hint {hint:?} in:\n{full}");
    }
}

#[test]
fn consumes_changes_are_live_updates() {
    let a = validate(MDB).loaded.unwrap();
    let b = validate(&MDB.replace(", \"topic:prices\"", ""))
        .loaded
        .unwrap();
    let p = plan(Some(&a), &b);
    let apps = &p.server("server3").unwrap().applications;
    let orders = apps.iter().find(|a| a.name == "orders").unwrap();
    assert_eq!(orders.action, AppAction::Update, "{}", p.render_human());
    let effects: Vec<Effect> = orders.changes.iter().map(|c| c.effect).collect();
    assert!(
        !effects.is_empty() && effects.iter().all(|e| *e == Effect::Live),
        "{}",
        p.render_human()
    );
}
