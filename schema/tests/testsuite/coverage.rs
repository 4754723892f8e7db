//! The classification table and the typed model must describe the same settings.
//!
//! `maximal()` builds a domain with every field set, written without `..Default::default()` so
//! a new field does not compile until it is added here; its serialized leaves must then all be
//! classified, and every row of the table must be reached.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use schema::model::*;
use schema::plan::flatten;
use schema::settings::{self, FileKind, SETTINGS};
use schema::values::{ByteSize, Dur};

fn one<T>(name: &str, v: T) -> BTreeMap<String, T> {
    BTreeMap::from([(name.to_owned(), v)])
}

fn maximal() -> Domain {
    let pool = ThreadPool { min: 1, max: 2 };
    let server = Server {
        node: "localhost".into(),
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9741),
        restart_policy: RestartPolicy::Auto,
        description: "d".into(),
        stop_timeout: Dur::secs(3),
        process: Process {
            env: one("K", "v".into()),
            args: vec!["a".into()],
            runtime_threads: 4,
        },
        web: Web {
            listeners: one(
                "http",
                Listener {
                    address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port: 8088,
                    thread_pool: pool,
                    queue_timeout: Dur::secs(1),
                    request_timeout: Dur::secs(1),
                },
            ),
            access_log: AccessLog {
                enabled: false,
                format: AccessLogFormat::Json,
            },
        },
        component: Component {
            thread_pool: pool,
            timer_service: TimerService {
                enabled: false,
                max_retries: 1,
                retry_delay: Dur::secs(1),
            },
            message_timeout: Dur::secs(1),
        },
        messaging: Messaging {
            listener: Some(MessagingListener {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 9000,
            }),
            queues: one(
                "q",
                Queue {
                    max_depth: 1,
                    persistent: false,
                    max_redeliveries: 1,
                },
            ),
            topics: one(
                "t",
                Topic {
                    max_subscribers: 1,
                    persistent: false,
                    durable_max_depth: 1,
                },
            ),
        },
        logging: Logging {
            level: LogLevel::Debug,
            format: LogFormat::Json,
            rotation: Rotation {
                max_size: ByteSize(1),
                daily: false,
                keep: 1,
            },
        },
    };
    Domain {
        config: DomainFile {
            domain: DomainSection {
                name: "d".into(),
                description: "d".into(),
            },
            master: Master {
                node: "localhost".into(),
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9736),
                tls: Some(Tls {
                    certificate: "c".into(),
                    key: "k".into(),
                }),
                heartbeat_interval: Dur::secs(1),
                heartbeat_timeout: Dur::secs(1),
                upstream: Some(Upstream {
                    url: "u".into(),
                    branch: "b".into(),
                    poll_interval: Dur::secs(1),
                    webhook_secret_env: Some("E".into()),
                }),
            },
            nodes: one(
                "n1",
                Node {
                    address: "h".into(),
                    description: "d".into(),
                    restart_max: 1,
                    restart_window: Dur::secs(1),
                    restart_backoff: Dur::secs(1),
                },
            ),
            servers: one("s1", server),
            clusters: one(
                "c1",
                Cluster {
                    servers: vec!["s1".into()],
                    description: "d".into(),
                },
            ),
            applications: one(
                "a1",
                Application {
                    kind: AppKind::Process,
                    source: "apps/a".into(),
                    context_path: Some("/a".into()),
                    targets: vec!["c1".into()],
                    description: "d".into(),
                    env: one("K", "v".into()),
                    command: Some("bin/a".into()),
                    args: vec!["x".into()],
                    libraries: vec!["libs/l".into()],
                    index: "i".into(),
                    health_path: "/h".into(),
                    start_timeout: Dur::secs(1),
                    max_unpacked_size: ByteSize(1 << 20),
                    // Every key at once (the loader allows one of schedule/interval/at).
                    timers: one(
                        "t1",
                        Timer {
                            schedule: Some("0 3 * * *".into()),
                            time_zone: "Asia/Seoul".into(),
                            interval: Some(Dur::secs(60)),
                            at: Some("2027-01-01T00:00:00Z".into()),
                            persistent: false,
                            misfire: Misfire::FireAll,
                        },
                    ),
                    consumes: vec!["queue:q".into()],
                },
            ),
        },
        accounts: AccountsFile {
            users: one(
                "u1",
                User {
                    password: "$argon2id$…".into(),
                    groups: vec!["g1".into()],
                    description: "d".into(),
                },
            ),
            groups: one(
                "g1",
                Group {
                    description: "d".into(),
                },
            ),
        },
        policies: PoliciesFile {
            roles: one(
                "r1",
                Role {
                    permissions: vec!["*".into()],
                    groups: vec!["g1".into()],
                    users: vec!["u1".into()],
                    description: "d".into(),
                },
            ),
        },
    }
}

fn leaves(v: &impl serde::Serialize) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    flatten("", &serde_json::to_value(v).unwrap(), &mut out);
    out
}

/// Every leaf of the maximal model, with the file it belongs to.
fn model_leaves(d: &Domain) -> Vec<(FileKind, String)> {
    let mut out = Vec::new();
    for (file, l) in [
        (FileKind::Domain, leaves(&d.config)),
        (FileKind::Accounts, leaves(&d.accounts)),
        (FileKind::Policies, leaves(&d.policies)),
    ] {
        out.extend(l.into_keys().map(|k| (file, k)));
    }
    out
}

#[test]
fn every_model_leaf_is_classified() {
    let mut missing = Vec::new();
    for (file, path) in model_leaves(&maximal()) {
        if settings::lookup(file, &path).is_none() {
            missing.push(format!("{}: {path}", file.path()));
        }
    }
    assert!(
        missing.is_empty(),
        "unclassified settings (add them to SETTINGS):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_table_row_is_a_model_field() {
    let used: BTreeSet<(FileKind, &str)> = model_leaves(&maximal())
        .iter()
        .filter_map(|(f, p)| settings::lookup(*f, p).map(|s| (*f, s.path)))
        .collect();
    let stale: Vec<&str> = SETTINGS
        .iter()
        .filter(|s| !used.contains(&(s.file, s.path)))
        .map(|s| s.path)
        .collect();
    assert!(
        stale.is_empty(),
        "table rows with no model field: {stale:?}"
    );
}

#[test]
fn table_defaults_match_the_model() {
    // A server, listener and application written with only required keys, loaded through serde:
    // what the model fills in must be what the table documents.
    let minimal: DomainFile = toml::from_str(
        r#"
        [domain]
        name = "d"
        [servers.s1]
        listen = "127.0.0.1:9741"
        [servers.s1.web.listeners.http]
        port = 8088
        [servers.s1.messaging.listener]
        port = 9000
        [servers.s1.messaging.queues.q]
        [servers.s1.messaging.topics.t]
        [master.upstream]
        url = "u"
        [clusters.c1]
        [nodes.n1]
        address = "h"
        [applications.a1]
        kind = "static"
        source = "a"
        context-path = "/a"
        [applications.a1.timers.t1]
        interval = "1m"
        "#,
    )
    .unwrap();
    let accounts: AccountsFile =
        toml::from_str("[users.u1]\npassword = \"$x\"\n[groups.g1]\n").unwrap();
    let policies: PoliciesFile = toml::from_str("[roles.r1]\n").unwrap();
    let mut values = BTreeMap::new();
    for (file, l) in [
        (FileKind::Domain, leaves(&minimal)),
        (FileKind::Accounts, leaves(&accounts)),
        (FileKind::Policies, leaves(&policies)),
    ] {
        for (path, v) in l {
            if let Some(s) = settings::lookup(file, &path) {
                values.insert((file, s.path), v);
            }
        }
    }
    let mut wrong = Vec::new();
    for s in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
        let documented: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", s.default))
            .unwrap()
            .remove("v")
            .unwrap();
        let documented = serde_json::to_value(documented).unwrap();
        let empty_collection = documented.as_object().is_some_and(|m| m.is_empty())
            || documented.as_array().is_some_and(|a| a.is_empty());
        match values.get(&(s.file, s.path)) {
            Some(actual) if *actual == documented => {}
            // Empty maps flatten to no leaf at all.
            None if empty_collection => {}
            other => wrong.push(format!(
                "{}: table says {}, model gives {other:?}",
                s.path, s.default
            )),
        }
    }
    assert!(wrong.is_empty(), "defaults disagree:\n{}", wrong.join("\n"));
}

#[test]
fn secrets_are_marked() {
    let secret: Vec<&str> = SETTINGS
        .iter()
        .filter(|s| s.secret)
        .map(|s| s.path)
        .collect();
    assert_eq!(secret, ["users.*.password"]);
}
