//! The messaging engine end to end (docs/messaging.md): a real Master and server1 with a STOMP
//! listener, spoken to by a client nobody here wrote (Python's `stomp.py`, run as a subprocess
//! by [`stomp`]), and by hand over a raw socket for frames no client would send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::http::{ADMIN, request};
use crate::util::master::{Master, Servers, clone_domain, hashes, push_edits, start_server};
use crate::util::{Repo, TempDir, eventually, free_ports_besides};

/// The client side of each scenario, in stomp.py; prints one JSON object.
const SCRIPT: &str = r#"
import json, sys, threading, time
import stomp

mode, port = sys.argv[1], int(sys.argv[2])

class Collect(stomp.ConnectionListener):
    def __init__(self):
        self.messages, self.errors, self.receipts = [], [], set()
        self.cond = threading.Condition()
    def on_message(self, frame):
        with self.cond:
            self.messages.append(frame); self.cond.notify_all()
    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame.headers.get('message', '')); self.cond.notify_all()
    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers['receipt-id']); self.cond.notify_all()
    def wait(self, what, pred, secs=20):
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self), timeout=secs):
                raise SystemExit('timed out waiting for %s: %d messages, errors %r'
                                 % (what, len(self.messages), self.errors))

def conn(user='app', password='reader'):
    c = stomp.Connection12([('127.0.0.1', port)], heartbeats=(0, 0))
    l = Collect()
    c.set_listener('c', l)
    c.connect(user, password, wait=True)
    return c, l

def subscribe(c, l, dest, id, ack='auto'):
    c.subscribe(dest, id=id, ack=ack, headers={'receipt': 'sub-' + id})
    l.wait('subscription ' + id, lambda s: 'sub-' + id in s.receipts)

def bodies(l):
    return [m.body for m in l.messages]

out = {}
if mode == 'compete':
    c1, l1 = conn(); c2, l2 = conn(); p, lp = conn()
    subscribe(c1, l1, '/queue/orders', 'a')
    subscribe(c2, l2, '/queue/orders', 'b')
    for i in range(20):
        p.send('/queue/orders', 'm%02d' % i)
    p.send('/queue/orders', 'm20', headers={'receipt': 'r'})
    lp.wait('the receipt', lambda s: 'r' in s.receipts)
    l1.wait('all messages', lambda s: len(s.messages) + len(l2.messages) == 21)
    out = {'a': bodies(l1), 'b': bodies(l2)}
elif mode == 'redeliver':
    c, l = conn()
    subscribe(c, l, '/queue/orders', 'x', ack='client-individual')
    c.send('/queue/orders', 'again')
    l.wait('the message', lambda s: len(s.messages) == 1)
    first = l.messages[0]
    c.nack(first.headers['ack'])
    l.wait('the redelivery', lambda s: len(s.messages) == 2)
    second = l.messages[1]
    c.ack(second.headers['ack'])
    # Client mode, then a disconnect without ACK: the next consumer gets it flagged.
    c2, l2 = conn()
    subscribe(c2, l2, '/queue/jobs', 'y', ack='client')
    c2.send('/queue/jobs', 'unacked', headers={'receipt': 'sent'})
    l2.wait('the job', lambda s: len(s.messages) == 1)
    c2.disconnect()
    c3, l3 = conn()
    subscribe(c3, l3, '/queue/jobs', 'z', ack='client')
    l3.wait('the job again', lambda s: len(s.messages) == 1)
    c3.ack(l3.messages[0].headers['ack'], receipt='acked')
    l3.wait('the ack receipt', lambda s: 'acked' in s.receipts)
    out = {
        'first': [first.body, first.headers.get('redelivered')],
        'second': [second.body, second.headers.get('redelivered')],
        'job': [l3.messages[0].body, l3.messages[0].headers.get('redelivered')],
    }
elif mode == 'full':
    c, l = conn()
    for i in range(int(sys.argv[3])):
        c.send('/queue/small', 'fill%d' % i, headers={'receipt': 'f%d' % i})
    l.wait('the receipts', lambda s: len(s.receipts) == int(sys.argv[3]) or s.errors)
    c.send('/queue/small', 'one too many', headers={'receipt': 'over'})
    l.wait('the refusal', lambda s: s.errors)
    out = {'errors': l.errors, 'receipts': sorted(l.receipts)}
elif mode == 'topic':
    c1, l1 = conn(); c2, l2 = conn()
    subscribe(c1, l1, '/topic/news', 'a')
    subscribe(c2, l2, '/topic/news', 'b')
    for i in range(3):
        c1.send('/topic/news', 'n%d' % i)
    l1.wait('the news', lambda s: len(s.messages) == 3 and len(l2.messages) == 3)
    out = {'a': bodies(l1), 'b': bodies(l2)}
elif mode == 'refused':
    try:
        conn('app', 'wrong')
        out['wrong_password'] = 'connected'
    except stomp.exception.ConnectFailedException:
        out['wrong_password'] = 'refused'
    c, l = conn('viewer', 'reader')
    c.subscribe('/queue/orders', id='v', headers={'receipt': 'sub'})
    l.wait('the refusal', lambda s: s.errors)
    out['no_permission'] = l.errors
elif mode == 'transaction':
    c, l = conn()
    subscribe(c, l, '/queue/jobs', 't', ack='client-individual')
    c.begin('t1')
    c.send('/queue/jobs', 'aborted', headers={'transaction': 't1'})
    c.abort('t1')
    c.begin('t2')
    c.send('/queue/jobs', 'committed', headers={'transaction': 't2'})
    c.commit('t2', headers={'receipt': 'c2'})
    l.wait('the committed message', lambda s: len(s.messages) == 1 and 'c2' in s.receipts)
    ack = l.messages[0].headers['ack']
    # An ACK in an aborted transaction acknowledges nothing: it is still in flight.
    c.begin('t3')
    c.ack(ack, transaction='t3')
    c.abort('t3', headers={'receipt': 'a3'})
    l.wait('the abort', lambda s: 'a3' in s.receipts)
    print(json.dumps({'bodies': bodies(l)}), flush=True)
    sys.stdin.readline()
    c.begin('t4')
    c.ack(ack, transaction='t4')
    c.commit('t4', headers={'receipt': 'c4'})
    l.wait('the commit', lambda s: 'c4' in s.receipts)
    sys.exit(0)
elif mode == 'dead-letter':
    c, l = conn()
    subscribe(c, l, '/queue/jobs', 'p', ack='client-individual')
    c.send('/queue/jobs', 'poison')
    for n in range(1, 7):
        l.wait('delivery %d' % n, lambda s: len(s.messages) == n)
        c.nack(l.messages[-1].headers['ack'])
    d, ld = conn()
    subscribe(d, ld, '/queue/jobs.dlq', 'd')
    ld.wait('the dead letter', lambda s: len(s.messages) == 1)
    out = {'deliveries': len(l.messages), 'redelivered': [m.headers.get('redelivered') for m in l.messages],
           'dead': bodies(ld)}
elif mode == 'added':
    c, l = conn()
    subscribe(c, l, '/queue/added', 'a')
    c.send('/queue/added', 'hello')
    l.wait('the message', lambda s: len(s.messages) == 1)
    out = {'added': bodies(l)}
print(json.dumps(out))
"#;

/// Runs scenario `mode` of [`SCRIPT`] against the listener on `port`.
fn stomp(mode: &str, port: u16, extra: &[&str]) -> Value {
    let out = Command::new("python3")
        .args(["-c", SCRIPT, mode, &port.to_string()])
        .args(extra)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "stomp.py scenario {mode}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// One destination of `GET /v1/messaging`.
fn destination(port: u16, name: &str) -> Value {
    let r = request(port, "GET", "/v1/messaging", ADMIN).expect("GET /v1/messaging");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    v["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["destination"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .clone()
}

/// Sends `frames` on a raw connection and returns everything the server answers until it
/// closes.
fn raw(port: u16, frames: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(frames).expect("write");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn stomp_clients_use_queues_and_topics() {
    let repo = Repo::example("messaging-repo");
    let ports = crate::util::example_on_free_ports(&repo);
    let (mport, s1) = (ports[0], ports[1]);
    let stomp_port = free_ports_besides(1, &ports)[0];
    let domain = repo.read("domain.toml");
    repo.write(
        "domain.toml",
        &format!(
            "{domain}
[servers.server1.messaging.listener]
address = \"127.0.0.1\"
port = {stomp_port}

[servers.server1.messaging.queues.orders]
max-depth = 1000

[servers.server1.messaging.queues.jobs]

[servers.server1.messaging.queues.small]
max-depth = 2

[servers.server1.messaging.topics.news]
max-subscribers = 10
"
        ),
    );
    let reader = &hashes().1;
    let accounts = repo.read("security/accounts.toml");
    repo.write(
        "security/accounts.toml",
        &format!(
            "{accounts}\n[users.app]\npassword = \"{reader}\"\n\n[users.viewer]\npassword = \"{reader}\"\ngroups = [\"viewers\"]\n"
        ),
    );
    let policies = repo.read("security/policies.toml");
    repo.write(
        "security/policies.toml",
        &format!(
            "{policies}\n[roles.messaging-app]\npermissions = [\"messaging:send:/queue/*\", \"messaging:receive:/queue/*\", \"messaging:send:/topic/news\", \"messaging:receive:/topic/news\"]\nusers = [\"app\"]\n"
        ),
    );
    repo.commit("messaging on server1");
    let tmp = TempDir::new("messaging-home");
    let home = tmp.path().join("domain1");
    let r = crate::util::steward(
        repo.path(),
        &["init", home.to_str().unwrap(), "--from", "."],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let _m = Master::start_on(&home, mport);
    let _servers = Servers(&home, &["server1"]);
    start_server(&home, "server1", mport);
    eventually("server1 runs", 30, || {
        request(s1, "GET", "/v1/status", ADMIN)
            .ok()
            .filter(|r| r.body.contains("\"state\":\"RUNNING\""))
    });

    // Two competing consumers: each message to exactly one, each consumer's share in order.
    let v = stomp("compete", stomp_port, &[]);
    let (a, b) = (strings(&v["a"]), strings(&v["b"]));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both consumers get work: {v}"
    );
    for share in [&a, &b] {
        let mut sorted = share.clone();
        sorted.sort();
        assert_eq!(&sorted, share, "in order per consumer");
    }
    let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
    all.sort();
    let want: Vec<String> = (0..=20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(all, want);

    // NACK and a disconnect without ACK redeliver, flagged.
    let v = stomp("redeliver", stomp_port, &[]);
    assert_eq!(v["first"], serde_json::json!(["again", null]), "{v}");
    assert_eq!(v["second"], serde_json::json!(["again", "true"]), "{v}");
    assert_eq!(v["job"], serde_json::json!(["unacked", "true"]), "{v}");
    let orders = destination(s1, "/queue/orders");
    assert_eq!(orders["enqueued"], 22, "{orders}");
    assert_eq!(orders["dequeued"], 22, "{orders}");
    assert_eq!(orders["redelivered"], 1, "{orders}");
    assert_eq!(orders["depth"], 0, "{orders}");
    assert_eq!(destination(s1, "/queue/jobs")["redelivered"], 1);

    // Transactions: an aborted SEND never arrives, a committed one does; an ACK takes effect
    // at COMMIT only.
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, "transaction", &stomp_port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(strings(&v["bodies"]), ["committed"], "{v}");
    let jobs = destination(s1, "/queue/jobs");
    assert_eq!(
        (jobs["depth"].clone(), jobs["in_flight"].clone()),
        (1.into(), 1.into()),
        "{jobs}"
    );
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    assert_eq!(destination(s1, "/queue/jobs")["depth"], 0);

    // NACKed past the redelivery limit: into the dead-letter queue.
    let v = stomp("dead-letter", stomp_port, &[]);
    assert_eq!(v["deliveries"], 6, "{v}");
    assert_eq!(
        v["redelivered"],
        serde_json::json!([null, "true", "true", "true", "true", "true"])
    );
    assert_eq!(strings(&v["dead"]), ["poison"]);
    let jobs = destination(s1, "/queue/jobs");
    assert_eq!(
        (jobs["dead_lettered"].clone(), jobs["depth"].clone()),
        (1.into(), 0.into()),
        "{jobs}"
    );
    assert_eq!(destination(s1, "/queue/jobs.dlq")["enqueued"], 1);

    // max-depth: the third message to `small` is refused with an ERROR naming the queue.
    let v = stomp("full", stomp_port, &["2"]);
    assert_eq!(strings(&v["receipts"]), ["f0", "f1"], "{v}");
    let errors = strings(&v["errors"]);
    assert!(
        errors.len() == 1
            && errors[0].contains("/queue/small")
            && errors[0].contains("max-depth 2"),
        "{v}"
    );
    assert_eq!(destination(s1, "/queue/small")["depth"], 2);

    // Topics: every subscriber gets each message.
    let v = stomp("topic", stomp_port, &[]);
    assert_eq!(strings(&v["a"]), ["n0", "n1", "n2"]);
    assert_eq!(strings(&v["b"]), ["n0", "n1", "n2"]);

    // A wrong password, and a user without the destination's permission.
    let v = stomp("refused", stomp_port, &[]);
    assert_eq!(v["wrong_password"], "refused", "{v}");
    let errors = strings(&v["no_permission"]);
    assert!(errors[0].contains("messaging:receive:/queue/orders"), "{v}");

    // Malformed frames get an ERROR and a closed connection; the server goes on serving.
    let login = b"CONNECT\naccept-version:1.2\nlogin:app\npasscode:reader\n\n\0";
    let answer = raw(stomp_port, &[&login[..], b"BOGUS\n\n\0"].concat());
    assert!(answer.starts_with("CONNECTED\n"), "{answer:?}");
    assert!(
        answer.contains("ERROR\n") && answer.contains("unknown command"),
        "{answer:?}"
    );
    let answer = raw(
        stomp_port,
        &[
            &login[..],
            b"SEND\ndestination:/queue/orders\ncontent-length:999999999\n\n",
        ]
        .concat(),
    );
    assert!(
        answer.contains("ERROR\n") && answer.contains("exceeds"),
        "{answer:?}"
    );
    let answer = raw(
        stomp_port,
        &[&login[..], b"ACK\nid:99999999\n\n\0"].concat(),
    );
    assert!(answer.contains("unknown delivery 99999999"), "{answer:?}");
    let answer = raw(stomp_port, b"SEND\nbad\\escape:x\n\n\0");
    assert!(answer.starts_with("ERROR\n"), "{answer:?}");

    // Who may read GET /v1/messaging: whoever may read the status, after authenticating.
    assert_eq!(
        request(s1, "GET", "/v1/messaging", None).unwrap().status,
        401
    );
    assert_eq!(
        request(s1, "GET", "/v1/messaging", Some(("app", "reader")))
            .unwrap()
            .status,
        403
    );

    // Live: a new queue and a larger max-depth apply without a restart; `small` keeps its two.
    let clone = clone_domain(mport, tmp.path().join("clone"));
    let pushed = push_edits(
        &clone,
        "domain.toml",
        &[(
            "[servers.server1.messaging.queues.small]\nmax-depth = 2",
            "[servers.server1.messaging.queues.small]\nmax-depth = 4\n\n[servers.server1.messaging.queues.added]",
        )],
    );
    eventually("server1 applies the push", 30, || {
        Some(crate::util::http::status(s1)).filter(|s| s["applied_commit"] == pushed.as_str())
    });
    let status = crate::util::http::status(s1);
    assert_eq!(status["pending_restart"], serde_json::json!([]), "{status}");
    let v = stomp("added", stomp_port, &[]);
    assert_eq!(strings(&v["added"]), ["hello"]);
    let v = stomp("full", stomp_port, &["2"]);
    assert_eq!(strings(&v["receipts"]), ["f0", "f1"], "{v}");
    assert!(strings(&v["errors"])[0].contains("max-depth 4"), "{v}");
    let small = destination(s1, "/queue/small");
    assert_eq!(
        (small["depth"].clone(), small["max_depth"].clone()),
        (4.into(), 4.into())
    );
}
