//! `GET /metrics` of the Master and of a Managed Server (docs/metrics.md), end to end: a real
//! Master and server, a push, requests to an application, then both scrapes parsed by
//! Prometheus's own text parser (the Python `prometheus_client`, run as a subprocess), and the
//! values that must follow from what the test did. Also who may scrape: 401 without credentials,
//! 403 without `metrics:read`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::http::{ADMIN, HttpConn, request};
use crate::util::master::{clone_domain, init_and_start, push_edits};
use crate::util::{Repo, TempDir, eventually};

const SCRAPER: Option<(&str, &str)> = Some(("scraper", "scraper"));
const VIEWER: Option<(&str, &str)> = Some(("viewer", "reader"));

/// One sample as the parser gave it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Families by name: their type and samples.
type Families = BTreeMap<String, (String, Vec<Sample>)>;

/// Parses a scrape with `prometheus_client.parser.text_string_to_metric_families` (what
/// Prometheus's client library offers to read the 0.0.4 text format); panics with the parser's
/// error if it refuses the text.
fn parse(text: &str) -> Families {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = [f.type, [[s.name, s.labels, s.value] for s in f.samples]]
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut families = Families::new();
    for (name, f) in v.as_object().expect("object") {
        let samples = f[1]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| Sample {
                name: s[0].as_str().expect("name").to_owned(),
                labels: serde_json::from_value(s[1].clone()).expect("labels"),
                value: s[2].as_f64().expect("value"),
            })
            .collect();
        families.insert(
            name.clone(),
            (f[0].as_str().expect("type").to_owned(), samples),
        );
    }
    families
}

/// The value of the sample `sample` of family `family` whose labels include `labels`.
fn value(f: &Families, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, samples) = f
        .get(family)
        .unwrap_or_else(|| panic!("no family {family} in {:?}", f.keys()));
    samples
        .iter()
        .find(|s| {
            s.name == sample
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {sample} {labels:?} in {samples:?}"))
        .value
}

fn kind<'a>(f: &'a Families, family: &str) -> &'a str {
    &f.get(family)
        .unwrap_or_else(|| panic!("no family {family}"))
        .0
}

/// A scrape as `who`: its status, and the families when it is 200 (after checking the
/// content type).
fn scrape(port: u16, who: Option<(&str, &str)>) -> (u16, Option<Families>) {
    let r = request(port, "GET", "/metrics", who).expect("scrape");
    if r.status != 200 {
        return (r.status, None);
    }
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    (200, Some(parse(&r.body)))
}

#[test]
fn master_and_server_metrics_follow_a_push_and_requests() {
    let repo = Repo::example("metrics-repo");
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1, web1) = (ports[0], ports[1], ports[4]);
    // A person who may watch the domain but not scrape it (the example's viewer role).
    crate::util::master::add_viewer(&repo);
    repo.commit("a viewer");
    let tmp = TempDir::new("metrics-home");
    let home = tmp.path().join("domain1");
    let (_m, _servers) = init_and_start(repo.path(), &home, mport, &["server1"]);
    eventually("server1 registers", 20, || {
        request(mport, "GET", "/v1/servers/server1", ADMIN)
            .ok()
            .filter(|r| r.body.contains("\"state\":\"RUNNING\""))
    });

    // Who may scrape: nobody without credentials, not a viewer, the scraper.
    assert_eq!(scrape(mport, None).0, 401);
    assert_eq!(scrape(mport, VIEWER).0, 403);
    assert_eq!(scrape(s1, None).0, 401);
    assert_eq!(scrape(s1, VIEWER).0, 403);
    // The server's status needs credentials too; a viewer holds servers:read.
    assert_eq!(request(s1, "GET", "/v1/status", None).unwrap().status, 401);
    assert_eq!(
        request(s1, "GET", "/v1/status", VIEWER).unwrap().status,
        200
    );
    // Credentials come before the route: no path or method is revealed to a stranger.
    assert_eq!(request(s1, "GET", "/nowhere", None).unwrap().status, 401);
    assert_eq!(
        request(s1, "DELETE", "/v1/status", None).unwrap().status,
        401
    );
    assert_eq!(request(s1, "GET", "/nowhere", ADMIN).unwrap().status, 404);

    let before = scrape(mport, SCRAPER).1.expect("master metrics");
    assert_eq!(kind(&before, "steward_master_pins"), "counter");
    let pins_before = value(
        &before,
        "steward_master_pins",
        "steward_master_pins_total",
        &[("source", "push")],
    );

    // A push (a live change of server1), applied by server1.
    let clone = clone_domain(mport, tmp.path().join("clone"));
    let pushed = push_edits(
        &clone,
        "domain.toml",
        &[(
            "[servers.server1.logging]\nlevel = \"info\"",
            "[servers.server1.logging]\nlevel = \"debug\"",
        )],
    );
    eventually("server1 applies the push", 30, || {
        Some(crate::util::http::status(s1)).filter(|s| s["applied_commit"] == pushed.as_str())
    });

    // Requests to the shop (static, on server1's web listener), and one no application takes.
    const N: usize = 25;
    let mut conn = HttpConn::connect(web1).expect("connect");
    for _ in 0..N {
        let r = conn.get("/shop/").expect("GET /shop/");
        assert_eq!(r.status, 200);
    }
    assert_eq!(conn.get("/nowhere").expect("GET").status, 404);

    // The Master.
    let m = scrape(mport, SCRAPER).1.expect("master metrics");
    let pins = value(
        &m,
        "steward_master_pins",
        "steward_master_pins_total",
        &[("source", "push")],
    );
    assert_eq!(pins, pins_before + 1.0, "the push was pinned");
    assert_eq!(
        value(
            &m,
            "steward_master_rejections",
            "steward_master_rejections_total",
            &[("source", "push")]
        ),
        0.0
    );
    assert_eq!(
        kind(&m, "steward_master_push_validation_duration_seconds"),
        "histogram"
    );
    let validation = "steward_master_push_validation_duration_seconds";
    assert_eq!(
        value(&m, validation, &format!("{validation}_count"), &[]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            validation,
            &format!("{validation}_bucket"),
            &[("le", "+Inf")]
        ),
        1.0
    );
    assert!(value(&m, validation, &format!("{validation}_sum"), &[]) > 0.0);
    let git_requests = |service, outcome| {
        value(
            &m,
            "steward_master_git_requests",
            "steward_master_git_requests_total",
            &[("service", service), ("outcome", outcome)],
        )
    };
    // The clone and the push each make an advertisement request and a pack request.
    assert!(git_requests("git-receive-pack", "ok") >= 2.0);
    assert!(git_requests("git-upload-pack", "ok") >= 2.0);
    assert_eq!(kind(&m, "steward_master_servers"), "gauge");
    let servers = |state, mode| {
        value(
            &m,
            "steward_master_servers",
            "steward_master_servers",
            &[("state", state), ("mode", mode)],
        )
    };
    assert_eq!(servers("RUNNING", "DEPENDENT"), 1.0);
    // server2 and server3 never reported.
    assert_eq!(servers("UNKNOWN", ""), 2.0);
    // server1 follows the Master's events.
    assert!(
        value(
            &m,
            "steward_master_event_subscribers",
            "steward_master_event_subscribers",
            &[]
        ) >= 1.0
    );

    // The server.
    let s = scrape(s1, SCRAPER).1.expect("server metrics");
    assert_eq!(kind(&s, "steward_server_http_requests"), "counter");
    let shop_2xx = value(
        &s,
        "steward_server_http_requests",
        "steward_server_http_requests_total",
        &[("application", "shop"), ("class", "2xx")],
    );
    assert!(shop_2xx >= N as f64, "{shop_2xx}");
    let duration = "steward_server_http_request_duration_seconds";
    assert_eq!(kind(&s, duration), "histogram");
    let count = value(
        &s,
        duration,
        &format!("{duration}_count"),
        &[("application", "shop")],
    );
    assert!(count >= N as f64, "{count}");
    assert_eq!(
        value(
            &s,
            duration,
            &format!("{duration}_bucket"),
            &[("application", "shop"), ("le", "+Inf")]
        ),
        count
    );
    assert_eq!(
        value(
            &s,
            "steward_server_http_unrouted_requests",
            "steward_server_http_unrouted_requests_total",
            &[]
        ),
        1.0
    );
    assert_eq!(kind(&s, "steward_server_http_requests_in_flight"), "gauge");
    assert_eq!(
        value(
            &s,
            "steward_server_http_pool_rejections",
            "steward_server_http_pool_rejections_total",
            &[("listener", "http")]
        ),
        0.0
    );
    assert!(
        value(
            &s,
            "steward_server_http_pool_capacity",
            "steward_server_http_pool_capacity",
            &[("listener", "http")]
        ) >= 1.0
    );
    // Deployed at boot; the push changed nothing of the shop (a live logging change).
    assert!(
        value(
            &s,
            "steward_server_deploys",
            "steward_server_deploys_total",
            &[("application", "shop")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &s,
            "steward_server_deploy_failures",
            "steward_server_deploy_failures_total",
            &[("application", "shop")]
        ),
        0.0
    );
    // Boot, then the push.
    let apply = "steward_server_apply_duration_seconds";
    assert_eq!(kind(&s, apply), "histogram");
    assert!(value(&s, apply, &format!("{apply}_count"), &[]) >= 2.0);
    assert_eq!(
        value(
            &s,
            "steward_server_pending_restart_settings",
            "steward_server_pending_restart_settings",
            &[]
        ),
        0.0
    );
}

/// The client side of [`messaging_series_follow_the_engine`], in stomp.py (a client nobody here
/// wrote): three messages sent with receipts; the first refused (NACK) until it is
/// dead-lettered, the second acknowledged, the third kept in flight; then it prints `ready` and
/// holds its connection and subscription open until its stdin closes.
const STOMP_SCRIPT: &str = r#"
import sys, threading
import stomp

class L(stomp.ConnectionListener):
    def __init__(self):
        self.messages, self.receipts, self.cond = [], set(), threading.Condition()
    def on_message(self, f):
        with self.cond:
            self.messages.append(f); self.cond.notify_all()
    def on_receipt(self, f):
        with self.cond:
            self.receipts.add(f.headers['receipt-id']); self.cond.notify_all()
    def on_error(self, f):
        sys.exit('ERROR ' + f.headers.get('message', ''))
    def wait(self, pred):
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self), timeout=20):
                sys.exit('timed out: %d messages, receipts %r' % (len(self.messages), self.receipts))

c = stomp.Connection12([('127.0.0.1', int(sys.argv[1]))], heartbeats=(0, 0))
l = L()
c.set_listener('l', l)
c.connect('admin', 'admin', wait=True)
for i in range(3):
    c.send('/queue/orders', 'm%d' % i, headers={'receipt': 's%d' % i})
l.wait(lambda s: len(s.receipts) == 3)
c.subscribe('/queue/orders', id='x', ack='client-individual')
l.wait(lambda s: len(s.messages) == 3)
# MAX_REDELIVERIES (5) redeliveries, then the sixth NACK moves m0 to the dead-letter queue.
for n in range(6):
    m0 = [m for m in l.messages if m.body == 'm0'][-1]
    c.nack(m0.headers['ack'])
    if n < 5:
        l.wait(lambda s: sum(m.body == 'm0' for m in s.messages) == n + 2)
m1 = [m for m in l.messages if m.body == 'm1'][0]
c.ack(m1.headers['ack'], receipt='acked')
l.wait(lambda s: 'acked' in s.receipts)
print('ready', flush=True)
sys.stdin.readline()
c.disconnect()
"#;

#[test]
fn messaging_series_follow_the_engine() {
    let repo = Repo::example("metrics-messaging-repo");
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1) = (ports[0], ports[1]);
    let stomp_port = crate::util::free_ports_besides(1, &ports)[0];
    let domain = repo.read("domain.toml");
    repo.write(
        "domain.toml",
        &format!(
            "{domain}\n[servers.server1.messaging.listener]\naddress = \"127.0.0.1\"\nport = {stomp_port}\n\n[servers.server1.messaging.queues.orders]\n\n[servers.server1.messaging.topics.news]\n"
        ),
    );
    repo.commit("messaging on server1");
    let tmp = TempDir::new("metrics-messaging-home");
    let home = tmp.path().join("domain1");
    let (_m, _servers) = init_and_start(repo.path(), &home, mport, &["server1"]);
    eventually("server1 runs", 30, || {
        request(s1, "GET", "/v1/status", ADMIN)
            .ok()
            .filter(|r| r.body.contains("\"state\":\"RUNNING\""))
    });

    // Before any client: every destination is written, at zero.
    let s = scrape(s1, SCRAPER).1.expect("server metrics");
    let connections = "steward_server_messaging_connections";
    assert_eq!(kind(&s, connections), "gauge");
    assert_eq!(value(&s, connections, connections, &[]), 0.0);
    for dest in ["/queue/orders", "/queue/orders.dlq", "/topic/news"] {
        let at = [("destination", dest)];
        let enqueued = "steward_server_messaging_enqueued";
        assert_eq!(kind(&s, enqueued), "counter");
        assert_eq!(value(&s, enqueued, &format!("{enqueued}_total"), &at), 0.0);
        let depth = "steward_server_messaging_depth";
        assert_eq!(value(&s, depth, depth, &at), 0.0);
    }

    let mut client = Command::new("python3")
        .args(["-c", STOMP_SCRIPT, &stomp_port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    if line.trim() != "ready" {
        let out = client.wait_with_output().expect("client");
        panic!("stomp.py: {line}{}", String::from_utf8_lossy(&out.stderr));
    }

    // The client holds its connection, its subscription and m2 in flight.
    let s = scrape(s1, SCRAPER).1.expect("server metrics");
    let r = request(s1, "GET", "/v1/messaging", ADMIN).expect("GET /v1/messaging");
    let report: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let series = |family: &str, dest: &str| {
        let sample = match kind(&s, family) {
            "counter" => format!("{family}_total"),
            _ => family.to_owned(),
        };
        value(&s, family, &sample, &[("destination", dest)])
    };
    let m = |family: &str| format!("steward_server_messaging_{family}");
    assert_eq!(value(&s, connections, connections, &[]), 1.0);
    let orders = [
        ("depth", 1.0),
        ("in_flight", 1.0),
        ("consumers", 1.0),
        ("enqueued", 3.0),
        ("dequeued", 1.0),
        ("redelivered", 5.0),
        ("dead_lettered", 1.0),
        ("discarded", 0.0),
        ("draining", 0.0),
    ];
    for (field, want) in orders {
        assert_eq!(series(&m(field), "/queue/orders"), want, "{field}");
    }
    assert_eq!(series(&m("depth"), "/queue/orders.dlq"), 1.0);
    assert_eq!(series(&m("enqueued"), "/queue/orders.dlq"), 1.0);
    // Every series is the report's number, for every destination.
    for d in report["destinations"].as_array().expect("destinations") {
        let dest = d["destination"].as_str().expect("destination");
        for (field, _) in orders {
            let want = match &d[field] {
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                v => v.as_f64().unwrap_or_else(|| panic!("{field} of {d}")),
            };
            assert_eq!(series(&m(field), dest), want, "{field} of {dest}");
        }
    }
    drop(client.stdin.take());
    let out = client.wait_with_output().expect("client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The client gone (the server notices the close after the DISCONNECT's receipt): m2 went
    // back to the queue, counted as redelivered.
    let s = eventually("the client's connection is closed", 20, || {
        scrape(s1, SCRAPER)
            .1
            .filter(|s| value(s, connections, connections, &[]) == 0.0)
    });
    let series = |family: &str| {
        let family = m(family);
        let sample = match kind(&s, &family) {
            "counter" => format!("{family}_total"),
            _ => family.clone(),
        };
        value(&s, &family, &sample, &[("destination", "/queue/orders")])
    };
    assert_eq!(series("consumers"), 0.0);
    assert_eq!(series("in_flight"), 0.0);
    assert_eq!(series("depth"), 1.0);
    assert_eq!(series("redelivered"), 6.0);
}
