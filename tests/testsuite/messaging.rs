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

def conn(user='app', password='reader', client_id=None):
    c = stomp.Connection12([('127.0.0.1', port)], heartbeats=(0, 0))
    l = Collect()
    c.set_listener('c', l)
    headers = {'client-id': client_id} if client_id else {}
    c.connect(user, password, wait=True, headers=headers)
    return c, l

def subscribe(c, l, dest, id, ack='auto', durable=None):
    headers = {'receipt': 'sub-' + id}
    if durable:
        headers['durable-subscription-name'] = durable
    c.subscribe(dest, id=id, ack=ack, headers=headers)
    l.wait('subscription ' + id, lambda s: 'sub-' + id in s.receipts)

printing = threading.Lock()
def emit(*words):
    # One whole line at a time: several threads print.
    with printing:
        sys.stdout.write(' '.join(words) + '\n')
        sys.stdout.flush()

class Exit(stomp.ConnectionListener):
    # The server is gone (kill -9): what was printed is the record.
    def on_disconnected(self):
        import os; os._exit(0)

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
    for n in range(1, int(sys.argv[3]) + 1):
        l.wait('delivery %d' % n, lambda s: len(s.messages) == n)
        c.nack(l.messages[-1].headers['ack'])
    d, ld = conn()
    subscribe(d, ld, '/queue/jobs.dlq', 'd')
    ld.wait('the dead letter', lambda s: len(s.messages) == 1)
    out = {'deliveries': len(l.messages), 'redelivered': [m.headers.get('redelivered') for m in l.messages],
           'dead': bodies(ld)}
elif mode == 'durable':
    # Subscribes as client-id `auditor`, durable subscription `audit`, takes argv[3] messages,
    # acknowledges them and leaves (the subscription stays); argv[4] == 'remove' removes it.
    c, l = conn(client_id='auditor')
    subscribe(c, l, '/topic/events', 'd', ack='client-individual', durable='audit')
    want = int(sys.argv[3])
    l.wait('%d kept messages' % want, lambda s: len(s.messages) >= want)
    for m in l.messages:
        c.ack(m.headers['ack'], receipt='ack-' + m.headers['ack'])
    l.wait('the acks', lambda s: len([r for r in s.receipts if r.startswith('ack-')]) == len(l.messages))
    if len(sys.argv) > 4 and sys.argv[4] == 'remove':
        c.unsubscribe('d', headers={'durable-subscription-name': 'audit', 'receipt': 'gone'})
        l.wait('the removal', lambda s: 'gone' in s.receipts)
    out = {'bodies': bodies(l)}
elif mode == 'publish':
    c, l = conn()
    for b in sys.argv[3:]:
        c.send('/topic/events', b, headers={'receipt': b})
    l.wait('the receipts', lambda s: len(s.receipts) == len(sys.argv) - 3)
elif mode == 'send':
    c, l = conn()
    for b in sys.argv[4:]:
        c.send(sys.argv[3], b, headers={'receipt': b})
    l.wait('the receipts', lambda s: len(s.receipts) == len(sys.argv) - 4)
elif mode == 'produce-consume':
    # Four producers send to /queue/store with receipts, one after the other each; a consumer
    # acknowledges what it gets. Prints `R body` per receipt, `C body redelivered` per message
    # consumed, until the server goes away.
    def produce(k):
        c, l = conn()
        c.set_listener('exit', Exit())
        for i in range(1000000):
            b = 'p%d-%06d' % (k, i)
            c.send('/queue/store', b, headers={'receipt': b})
            l.wait('receipt ' + b, lambda s: b in s.receipts, secs=60)
            emit('R', b)
    class Consume(stomp.ConnectionListener):
        def on_message(self, frame):
            emit('C', frame.body, frame.headers.get('redelivered', 'false'))
            cc.ack(frame.headers['ack'])
        def on_disconnected(self):
            import os; os._exit(0)
    cc = stomp.Connection12([('127.0.0.1', port)], heartbeats=(0, 0))
    cc.set_listener('c', Consume())
    cc.connect('app', 'reader', wait=True)
    cc.subscribe('/queue/store', id='c', ack='client-individual')
    for k in range(4):
        threading.Thread(target=produce, args=(k,), daemon=True).start()
    threading.Event().wait()
elif mode == 'drain':
    c, l = conn()
    subscribe(c, l, sys.argv[3], 'd', ack='client-individual')
    want, acked = int(sys.argv[4]), 0
    # Acknowledged as they come: a subscription holds at most 100 unacknowledged.
    while acked < want:
        l.wait('%d messages' % want, lambda s: len(s.messages) > acked, secs=60)
        got = l.messages[acked:]
        for m in got:
            c.ack(m.headers['ack'])
        acked += len(got)
    c.disconnect(receipt='bye')
    out = {'got': [[m.body, m.headers.get('redelivered', 'false')] for m in l.messages]}
elif mode == 'pressure':
    # Sends to /queue/load with receipts, one at a time, reconnecting after each refusal:
    # prints `R body` per receipt and `X` per refusal, until a line arrives on stdin.
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    i = 0
    while not stop.is_set():
        c, l = conn()
        while not stop.is_set():
            b = 'l%06d' % i
            i += 1
            c.send('/queue/load', b, headers={'receipt': b})
            l.wait('an answer', lambda s: b in s.receipts or s.errors)
            if l.errors:
                emit('X', b)
                break
            emit('R', b)
        try:
            c.disconnect()
        except Exception:
            pass
    emit('done')
    sys.exit(0)
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

/// A running Master and server1 (not stopped: the caller holds `Servers`) with a STOMP
/// listener, users `app` (every queue, `/topic/news` and `/topic/events`) and `viewer`
/// (nothing), and the messaging settings `destinations`.
struct Env {
    _repo: Repo,
    tmp: TempDir,
    home: std::path::PathBuf,
    _master: Master,
    mport: u16,
    s1: u16,
    stomp_port: u16,
}

fn setup(name: &str, destinations: &str) -> Env {
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
{destinations}"
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
            "{policies}\n[roles.messaging-app]\npermissions = [\"messaging:send:/queue/*\", \"messaging:receive:/queue/*\", \"messaging:send:/topic/news\", \"messaging:receive:/topic/news\", \"messaging:send:/topic/events\", \"messaging:receive:/topic/events\"]\nusers = [\"app\"]\n"
        ),
    );
    repo.commit("messaging on server1");
    let tmp = TempDir::new(name);
    let home = tmp.path().join("domain1");
    let r = crate::util::steward(
        repo.path(),
        &["init", home.to_str().unwrap(), "--from", "."],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let master = Master::start_on(&home, mport);
    start_server(&home, "server1", mport);
    running(s1);
    Env {
        _repo: repo,
        tmp,
        home,
        _master: master,
        mport,
        s1,
        stomp_port,
    }
}

fn running(s1: u16) {
    eventually("server1 runs", 30, || {
        request(s1, "GET", "/v1/status", ADMIN)
            .ok()
            .filter(|r| r.body.contains("\"state\":\"RUNNING\""))
    });
}

#[test]
fn stomp_clients_use_queues_and_topics() {
    let env = setup(
        "messaging-home",
        "
[servers.server1.messaging.queues.orders]
max-depth = 1000

[servers.server1.messaging.queues.jobs]

[servers.server1.messaging.queues.small]
max-depth = 2

[servers.server1.messaging.topics.news]
max-subscribers = 10
",
    );
    let _servers = Servers(&env.home, &["server1"]);
    let (mport, s1, stomp_port, tmp) = (env.mport, env.s1, env.stomp_port, &env.tmp);

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
    let v = stomp("dead-letter", stomp_port, &["6"]);
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
        &[
            (
                "[servers.server1.messaging.queues.small]\nmax-depth = 2",
                "[servers.server1.messaging.queues.small]\nmax-depth = 4\n\n[servers.server1.messaging.queues.added]",
            ),
            (
                "[servers.server1.messaging.queues.jobs]",
                "[servers.server1.messaging.queues.jobs]\nmax-redeliveries = 1",
            ),
        ],
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

    // max-redeliveries, changed live to 1: the second delivery's NACK dead-letters.
    let v = stomp("dead-letter", stomp_port, &["2"]);
    assert_eq!(v["redelivered"], serde_json::json!([null, "true"]), "{v}");
    assert_eq!(strings(&v["dead"]), ["poison"]);
    let jobs = destination(s1, "/queue/jobs");
    assert_eq!(
        (
            jobs["dead_lettered"].clone(),
            jobs["max_redeliveries"].clone()
        ),
        (2.into(), 1.into()),
        "{jobs}"
    );
}

/// Reads `R body` / `C body flag` / `X body` lines of a scenario until `until` holds; returns
/// what was read.
fn lines_until(
    out: &mut impl BufRead,
    seen: &mut Vec<String>,
    mut until: impl FnMut(&[String]) -> bool,
) {
    while !until(seen) {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read");
        assert!(n > 0, "the scenario ended early after {seen:?}");
        seen.push(line.trim_end().to_owned());
    }
}

fn words<'a>(lines: &'a [String], tag: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(tag))
        .map(|r| r.split(' ').next().unwrap_or_default())
        .collect()
}

fn kill9_server(home: &std::path::Path) {
    let pid = crate::util::master::pid_of(home, "server1");
    let killed = Command::new("kill")
        .args(["-s", "KILL", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());
}

fn push_live(env: &Env, clone: &std::path::Path, edits: &[(&str, &str)]) {
    let pushed = push_edits(clone, "domain.toml", edits);
    eventually("server1 applies the push", 30, || {
        Some(crate::util::http::status(env.s1)).filter(|s| s["applied_commit"] == pushed.as_str())
    });
}

#[test]
fn persistent_messages_survive_kill_9_and_durable_subscribers_catch_up() {
    let env = setup(
        "messaging-store",
        "
[servers.server1.messaging.queues.store]
max-depth = 1000000

[servers.server1.messaging.queues.volatile]
persistent = false

[servers.server1.messaging.queues.load]
max-depth = 1000000

[servers.server1.messaging.topics.events]
",
    );
    let _servers = Servers(&env.home, &["server1"]);
    let port = env.stomp_port;
    let clone = clone_domain(env.mport, env.tmp.path().join("clone"));

    // A durable subscriber takes e0, leaves, misses e1 and e2, and gets them on return.
    let subscriber = std::thread::spawn(move || stomp("durable", port, &["1"]));
    eventually("the durable subscription exists", 30, || {
        destination(env.s1, "/topic/events")["durable_subscriptions"]
            .as_array()
            .filter(|d| d.len() == 1 && d[0]["connected"] == true)
            .map(|_| ())
    });
    stomp("publish", port, &["e0"]);
    let v = subscriber.join().expect("subscriber");
    assert_eq!(strings(&v["bodies"]), ["e0"]);
    stomp("publish", port, &["e1", "e2"]);
    let events = destination(env.s1, "/topic/events");
    let d = &events["durable_subscriptions"][0];
    assert_eq!(
        (
            d["client_id"].clone(),
            d["name"].clone(),
            d["depth"].clone(),
            d["connected"].clone()
        ),
        ("auditor".into(), "audit".into(), 2.into(), false.into()),
        "{events}"
    );
    let v = stomp("durable", port, &["2"]);
    assert_eq!(strings(&v["bodies"]), ["e1", "e2"]);
    // e3 is missed, and must outlive the kill below.
    stomp("publish", port, &["e3"]);

    // `volatile` is memory-only until a push makes it persistent: what it holds then is
    // written.
    stomp("send", port, &["/queue/volatile", "v1", "v2"]);
    push_live(
        &env,
        &clone,
        &[(
            "[servers.server1.messaging.queues.volatile]\npersistent = false",
            "[servers.server1.messaging.queues.volatile]\npersistent = true",
        )],
    );

    // Four producers with receipts and a consumer with client acks; kill -9 mid-stream.
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, "produce-consume", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut before = Vec::new();
    lines_until(&mut out, &mut before, |l| {
        l.iter().filter(|x| x.starts_with("R ")).count() >= 400
    });
    kill9_server(&env.home);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("read");
    before.extend(rest.lines().map(str::to_owned));
    let _ = child.wait();
    let receipted: std::collections::BTreeSet<&str> = words(&before, "R ").into_iter().collect();
    let consumed: std::collections::BTreeSet<&str> = words(&before, "C ").into_iter().collect();

    start_server(&env.home, "server1", env.mport);
    running(env.s1);
    let kept = destination(env.s1, "/queue/store")["depth"]
        .as_u64()
        .expect("depth");
    let v = stomp("drain", port, &["/queue/store", &kept.to_string()]);
    let after: Vec<(String, String)> = v["got"]
        .as_array()
        .expect("got")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut seen_after = std::collections::BTreeSet::new();
    for (body, redelivered) in &after {
        assert!(
            seen_after.insert(body.as_str()),
            "{body} twice after the restart"
        );
        if consumed.contains(body.as_str()) {
            assert_eq!(
                redelivered, "true",
                "{body} was delivered before the kill: flagged"
            );
        }
    }
    let lost: Vec<&&str> = receipted
        .iter()
        .filter(|b| !consumed.contains(**b) && !seen_after.contains(**b))
        .collect();
    assert!(
        lost.is_empty(),
        "receipted and never delivered: {lost:?} ({} receipted, {} consumed before, {} after)",
        receipted.len(),
        consumed.len(),
        after.len()
    );
    assert_eq!(destination(env.s1, "/queue/store")["depth"], 0);
    assert!(
        crate::util::master::server_log(&env.home, "server1").contains("MSG-0003"),
        "the recovery is logged"
    );

    // Made persistent live before the kill: kept. The durable subscription and e3: kept.
    let v = stomp("drain", port, &["/queue/volatile", "2"]);
    assert_eq!(
        v["got"],
        serde_json::json!([["v1", "false"], ["v2", "false"]])
    );
    let v = stomp("durable", port, &["1", "remove"]);
    assert_eq!(strings(&v["bodies"]), ["e3"]);
    assert!(
        destination(env.s1, "/topic/events")
            .get("durable_subscriptions")
            .is_none(),
        "removed by UNSUBSCRIBE with durable-subscription-name"
    );

    // max-depth lowered and raised live under a producer: refusals start, then stop; every
    // receipted message is there.
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, "pressure", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    lines_until(&mut out, &mut lines, |l| l.len() >= 50);
    push_live(
        &env,
        &clone,
        &[(
            "[servers.server1.messaging.queues.load]\nmax-depth = 1000000",
            "[servers.server1.messaging.queues.load]\nmax-depth = 20",
        )],
    );
    lines_until(&mut out, &mut lines, |l| {
        l.iter().any(|x| x.starts_with("X "))
    });
    push_live(
        &env,
        &clone,
        &[(
            "[servers.server1.messaging.queues.load]\nmax-depth = 20",
            "[servers.server1.messaging.queues.load]\nmax-depth = 1000000",
        )],
    );
    let refused_at = lines.len();
    lines_until(&mut out, &mut lines, |l| {
        l[refused_at..].iter().any(|x| x.starts_with("R "))
    });
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"stop\n")
        .expect("write");
    lines_until(&mut out, &mut lines, |l| {
        l.last().is_some_and(|x| x == "done")
    });
    assert!(child.wait().expect("wait").success());
    let receipted: Vec<&str> = words(&lines, "R ");
    let depth = destination(env.s1, "/queue/load")["depth"]
        .as_u64()
        .expect("depth");
    assert_eq!(
        depth,
        receipted.len() as u64,
        "refused messages are not queued"
    );
    let v = stomp("drain", port, &["/queue/load", &depth.to_string()]);
    let drained: Vec<&str> = v["got"]
        .as_array()
        .expect("got")
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(drained, receipted, "every receipted message, in order");
}
