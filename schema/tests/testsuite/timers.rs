//! Component applications and their declared timers: checked where they are written, and
//! planned as live changes.

use schema::plan::{AppAction, plan};
use schema::settings::Effect;

use crate::example::{ACCOUNTS, DOMAIN, POLICIES};

const COMPONENT: &str = r#"
[applications.billing]
kind = "component"
source = "apps/api"
targets = ["server3"]
command = "bin/api"

[applications.billing.timers.nightly]
schedule = "0 3 * * *"
time-zone = "Asia/Seoul"

[applications.billing.timers.poll]
interval = "5m"
misfire = "fire-all"
"#;

pub(crate) fn validate(extra: &str) -> schema::Validation {
    let tree = crate::example::tree("t", DOMAIN.to_owned() + extra, ACCOUNTS, POLICIES, "x");
    schema::validate(&tree)
}

/// `domain.toml:LINE:COL` of the first occurrence of `needle` in the domain file.
pub(crate) fn at(extra: &str, needle: &str) -> String {
    let text = DOMAIN.to_owned() + extra;
    let offset = text.find(needle).expect(needle);
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("domain.toml:{line}:{col}")
}

#[test]
fn a_component_without_a_context_path_and_its_timers_load() {
    let v = validate(COMPONENT);
    let loaded = v
        .loaded
        .unwrap_or_else(|| panic!("{}", v.report.render_short()));
    let app = &loaded.domain.config.applications["billing"];
    assert_eq!(app.context_path, None);
    assert_eq!(app.timers.len(), 2);
    assert_eq!(app.timers["nightly"].time_zone, "Asia/Seoul");
    assert!(app.timers["poll"].persistent);
}

#[test]
fn bad_timers_are_reported_where_they_are_written() {
    for (extra, needle, says) in [
        (
            COMPONENT.replace("0 3 * * *", "0 25 * * *"),
            "\"0 25 * * *\"",
            "hour 25 is out of range 0–23",
        ),
        (
            COMPONENT.replace("Asia/Seoul", "Asia/Atlantis"),
            "\"Asia/Atlantis\"",
            "not a time zone",
        ),
        (
            COMPONENT.replace("interval = \"5m\"", "at = \"2027-01-01 00:00\""),
            "\"2027-01-01 00:00\"",
            "not an RFC 3339 instant",
        ),
        (
            COMPONENT.replace("misfire = \"fire-all\"", "misfire = \"fire-some\""),
            "\"fire-some\"",
            "not a valid value",
        ),
        (
            COMPONENT.replace(
                "interval = \"5m\"",
                "interval = \"5m\"\nat = \"2027-01-01T00:00:00Z\"",
            ),
            "\"2027-01-01T00:00:00Z\"",
            "has `interval` and `at`; a timer has exactly one",
        ),
        (
            COMPONENT.replace(
                "kind = \"component\"",
                "kind = \"process\"\ncontext-path = \"/b\"",
            ),
            "[applications.billing.timers.nightly]",
            "only `component` applications have timers",
        ),
        (
            COMPONENT.replace("interval = \"5m\"", "persistent = false"),
            "[applications.billing.timers.poll]",
            "says nothing about when it fires",
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
    }
}

#[test]
fn static_and_process_applications_still_need_a_context_path() {
    let extra = COMPONENT
        .replace("kind = \"component\"", "kind = \"process\"")
        .replace(
            "[applications.billing.timers.nightly]\nschedule = \"0 3 * * *\"\ntime-zone = \"Asia/Seoul\"\n\n[applications.billing.timers.poll]\ninterval = \"5m\"\nmisfire = \"fire-all\"\n",
            "",
        );
    let v = validate(&extra);
    let report = v.report.render_short();
    assert!(
        report.contains("process application `billing` has no `context-path`"),
        "{report}"
    );
}

#[test]
fn timer_changes_are_live_updates() {
    let a = validate(COMPONENT).loaded.unwrap();
    let changed = COMPONENT
        .replace("0 3 * * *", "30 4 * * *")
        .replace("interval = \"5m\"", "interval = \"10m\"");
    let b = validate(&changed).loaded.unwrap();
    let p = plan(Some(&a), &b);
    let apps = &p.server("server3").unwrap().applications;
    let billing = apps.iter().find(|a| a.name == "billing").unwrap();
    assert_eq!(billing.action, AppAction::Update, "{}", p.render_human());
    let paths: Vec<(&str, Effect)> = billing
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c.effect))
        .collect();
    assert_eq!(
        paths,
        [
            ("applications.billing.timers.nightly.schedule", Effect::Live),
            ("applications.billing.timers.poll.interval", Effect::Live),
        ]
    );
}
