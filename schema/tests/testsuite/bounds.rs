//! The validator's output is bounded, hides secrets, and its semantic checks run on what parsed
//! without reporting what a problem elsewhere explains. No timings here: `benches/` measures.

use schema::diag::MAX_PROBLEMS;
use schema::settings::FileKind;
use schema::tree::MemTree;

use crate::example::{ACCOUNTS, DOMAIN, POLICIES};

fn tree(domain: &str, accounts: &str) -> MemTree {
    crate::example::tree("t", domain, accounts, POLICIES, "x")
}

fn codes(v: &schema::Validation) -> Vec<&'static str> {
    v.report.problems.iter().map(|p| p.code).collect()
}

#[test]
fn a_flood_of_problems_keeps_the_first_and_counts_the_rest() {
    let domain = format!("{DOMAIN}{}", "= = =\n".repeat(20_000));
    // The accounts file is missing: a problem about a whole file is kept whatever the flood.
    let t = MemTree::new("t").with(FileKind::Domain.path(), domain.as_str());
    let v = schema::validate(&t);
    let r = &v.report;
    assert_eq!(r.problems.len(), MAX_PROBLEMS);
    assert_eq!(r.errors(), 80_000 + 2);
    assert_eq!(r.omitted.total(), 80_000 + 2 - MAX_PROBLEMS);
    assert!(
        r.problems
            .iter()
            .filter(|p| p.code == "missing-file")
            .count()
            == 2
    );
    // The first ones in file order.
    let first = r.problems.iter().find(|p| p.code == "syntax").unwrap();
    let line = DOMAIN.lines().count() + 1;
    assert_eq!(r.location(first), format!("domain.toml:{line}:1"));
    let json = r.to_json();
    assert_eq!(json["omitted"], 80_000 + 2 - MAX_PROBLEMS);
    assert_eq!(json["problems"].as_array().unwrap().len(), MAX_PROBLEMS);
    for text in [r.render_human(false), r.render_short(), r.render_github()] {
        assert!(text.contains("… and 79,802 more problems"), "{text}");
        assert!(text.lines().count() < 10 * MAX_PROBLEMS);
    }
}

#[test]
fn a_snippet_shows_its_lines_not_the_file() {
    // A problem about the whole document (no `[domain]`) and a port clash 10,000 lines apart.
    let filler = "# filler\n".repeat(10_000);
    let domain = DOMAIN
        .replacen("[domain]\nname = \"domain1\"", "", 1)
        .replacen("port = 8089", &format!("port = 8089\n{filler}"), 1)
        + "[servers.server4]\nlisten = \"127.0.0.1:9800\"\n[servers.server4.web.listeners.http]\nport = 8088\n";
    let v = schema::validate(&tree(&domain, ACCOUNTS));
    let human = v.report.render_human(false);
    assert!(human.lines().count() < 60, "{human}");
    assert!(!human.contains("# filler"), "{human}");
    // (`description` is left at the top level, an unknown key.)
    assert_eq!(
        codes(&v),
        ["missing-key", "unknown-key", "port-conflict"],
        "{human}"
    );
}

#[test]
fn secret_values_are_redacted_in_every_format() {
    let accounts = ACCOUNTS.replacen("password = ", "pasword = ", 1)
        + "\n[users.ops]\npassword = \"plain-secret\"\n";
    let v = schema::validate(&tree(DOMAIN, &accounts));
    let r = &v.report;
    let json = r.to_json().to_string();
    for text in [
        r.render_human(false),
        r.render_short(),
        r.render_github(),
        json.clone(),
    ] {
        assert!(!text.contains("plain-secret"), "{text}");
        assert!(!text.contains("$argon2id$v=19$m=19456"), "{text}");
    }
    assert!(
        json.contains(r#""source_line":"pasword = <redacted>""#),
        "{json}"
    );
    assert!(
        json.contains(r#""source_line":"password = <redacted>""#),
        "{json}"
    );
}

#[test]
fn semantic_checks_run_past_schema_errors() {
    // A misspelt key, a port clash and an unknown target: all three at once.
    let domain = DOMAIN.replacen("heartbeat-timeout", "heartbeat-timout", 1)
        + "[servers.server4]\nlisten = \"127.0.0.1:9762\"\n\
           [applications.x]\nkind = \"static\"\nsource = \"apps/shop\"\n\
           context-path = \"/x\"\ntargets = [\"nowhere\"]\n";
    let v = schema::validate(&tree(&domain, ACCOUNTS));
    assert_eq!(
        codes(&v),
        ["unknown-key", "port-conflict", "unknown-target"],
        "{}",
        v.report.render_short()
    );
    assert!(v.loaded.is_none());
}

#[test]
fn holes_explain_nothing_away_wrongly() {
    // `[severs.x]` is probably `servers`: no target is said to be unknown while it is broken.
    let domain = DOMAIN.replacen("[servers.server3]", "[severs.server3]", 1);
    let v = schema::validate(&tree(&domain, ACCOUNTS));
    // (`[servers.server3.component…]` still names a server3 without `listen`.)
    assert_eq!(
        codes(&v),
        ["unknown-key", "missing-key"],
        "{}",
        v.report.render_short()
    );
    // A broken accounts file: no "no users", and the domain is still checked.
    let domain = DOMAIN.replacen("targets = [\"server3\"]", "targets = [\"server9\"]", 1);
    let v = schema::validate(&tree(&domain, "[users.admin\n"));
    assert_eq!(
        codes(&v),
        ["unknown-target", "syntax"],
        "{}",
        v.report.render_short()
    );
}

#[test]
fn the_default_listener_is_on_the_base_address() {
    let v = schema::validate(&tree(DOMAIN, ACCOUNTS));
    let loaded = v.loaded.expect("valid");
    let server3 = &loaded.domain.config.servers["server3"];
    let http = &server3.web.listeners[schema::model::DEFAULT_LISTENER];
    assert_eq!(http.address, server3.listen.ip());
    assert_eq!(http.port, server3.listen.port() + 1);
}
