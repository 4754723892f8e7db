#!/usr/bin/env python3
"""Benchmark: Steward's messaging engine beside RabbitMQ's STOMP plugin, same client, same
machine, same run (issue 12, "Benchmarks"; docs/messaging.md, "Performance").

    python3 benches/messaging_throughput.py                       # RUNS=3, 8 s windows
    RUNS=5 DURATION=20 FILL=1000000 python3 benches/messaging_throughput.py

The client is `benches/stomp_load.rs` (compiled, one thread), for both brokers:
- throughput: PRODUCERS (4) connections send 1 KB messages to one queue, each SEND with a
  `receipt`, at most WINDOW (128) receipts outstanding per producer; CONSUMERS (2) connections
  subscribe with `ack:client-individual` (prefetch 100) and ACK each message. Counted over
  DURATION seconds after a 2 s warm-up: messages receipted per second, and consumed.
- latency: one producer at RATE (500) msg/s, same receipts, one consumer; each body carries its
  send time; p50/p99/max of send -> receive. The rate is below what RabbitMQ sustains here
  (about 2,000 persistent msg/s on the shared 2-core machine): at or above it, its latency is
  its backlog, not its latency.
- fill: each broker restarted, then FILL (100000) messages with receipts into a queue nobody
  consumes, and the broker process's resident memory (VmRSS of /proc/PID/status) before and
  after. FILL=1000000 is the issue's figure (RabbitMQ takes 5 to 15 minutes for it here).
Runs alternate between the brokers (the order flips each round); medians of RUNS are printed.

What each broker does before the receipt of a SEND:
- RabbitMQ (Debian's rabbitmq-server, its own node, MNESIA/LOG dirs in a temp dir, a user with a
  password, STOMP on a loopback port): the queue is `/queue/NAME` declared `durable:true`
  (`auto-delete:false`), each SEND carries `persistent:true`; the plugin sends the RECEIPT of a
  persistent SEND only once the broker confirmed the message (publisher confirms: written to
  disk and fsynced, or already consumed and acknowledged).
- Steward: the queue is configured `persistent = true`. Whether this build honours that (the
  message durable before the RECEIPT) is measured, not assumed: the script prints the server's
  `GET /v1/messaging` entry and how much the server's `.workspace` grew while FILL messages were
  queued. A store that did not grow means the messages are in memory only and the comparison is
  not like for like: it says so in the result.
The same SEND frames go to both (with RabbitMQ's `persistent`, `durable` and `auto-delete`
headers, which Steward keeps as message headers); SUBSCRIBE carries RabbitMQ's queue headers only
for RabbitMQ.

Both brokers and the generator run at `nice -n -10` (the machine is shared), which needs root;
otherwise they run at normal priority and the script says so. Installs `rabbitmq-server` with
apt-get when missing. Builds the release `steward` binary and the example unless STEWARD_EXE and
STOMP_LOAD name binaries.

Before the rounds, the generator is shown not to be the bottleneck: RabbitMQ's throughput with
PRODUCERS and with twice as many, and the generator's CPU (1.0 = one core busy).
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from push_to_applied import free_ports, start_domain  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "3"))
DURATION = float(os.environ.get("DURATION", "8"))
PRODUCERS = int(os.environ.get("PRODUCERS", "4"))
CONSUMERS = int(os.environ.get("CONSUMERS", "2"))
WINDOW = int(os.environ.get("WINDOW", "128"))
RATE = int(os.environ.get("RATE", "500"))
FILL = int(os.environ.get("FILL", "100000"))
SIZE = 1024
RMQ_USER, RMQ_PASS = "bench", "bench-secret"
SEND_HEADERS = ["persistent:true", "durable:true", "auto-delete:false"]
RMQ_SUBSCRIBE = ["durable:true", "auto-delete:false"]
AUTH = "Basic YWRtaW46YWRtaW4="  # admin:admin, start_domain's administrator
NICE = ["nice", "-n", "-10"] if os.geteuid() == 0 else []


def build():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe, load = os.environ.get("STEWARD_EXE"), os.environ.get("STOMP_LOAD")
    if not (exe and load):
        print("building steward and stomp_load (release) ...", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "steward", "-p", "steward-runtime",
                        "--bin", "steward", "--example", "stomp_load"], cwd=ROOT, check=True)
    return (exe or os.path.join(target, "release/steward"),
            load or os.path.join(target, "release/examples/stomp_load"))


def need_rabbitmq():
    if os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        return
    print("installing rabbitmq-server ...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def stomp_ready(port, login, passcode, secs=60):
    """Waits until a STOMP CONNECT on `port` is answered CONNECTED."""
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}\n\n\0".encode())
                if s.recv(4096).startswith(b"CONNECTED"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"no STOMP broker answers on port {port}")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


class RabbitMQ:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "rabbitmq")
        os.makedirs(self.dir)
        amqp, dist, self.port = free_ports(3)
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
                    f"stomp.listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                    f"default_user = {RMQ_USER}\ndefault_pass = {RMQ_PASS}\n"
                    "loopback_users = none\n")
        d = self.dir
        # Its own node, cookie (HOME), data, logs and plugin list: nothing of a system RabbitMQ.
        self.env = dict(os.environ, HOME=d, RABBITMQ_NODENAME=f"bench{self.port}@localhost",
                        RABBITMQ_DIST_PORT=str(dist), RABBITMQ_CONFIG_FILE=os.path.join(d, "rabbitmq"),
                        RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"), RABBITMQ_LOG_BASE=os.path.join(d, "log"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "enabled_plugins"),
                        RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(d, "plugins"),
                        RABBITMQ_PID_FILE=os.path.join(d, "rabbitmq.pid"))
        subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmq-plugins", "enable", "--offline", "rabbitmq_stomp"],
                       env=self.env, check=True, stdout=subprocess.DEVNULL)
        self.proc, self.pid = None, None

    def start(self):
        d = self.dir
        self.out = open(os.path.join(d, "server.out"), "w")
        self.proc = subprocess.Popen(NICE + ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=self.env,
                                     stdout=self.out, stderr=subprocess.STDOUT)
        stomp_ready(self.port, RMQ_USER, RMQ_PASS, secs=120)
        with open(self.env["RABBITMQ_PID_FILE"]) as f:
            self.pid = int(f.read().strip())
        self.login = ["--login", RMQ_USER, "--passcode", RMQ_PASS]
        self.subscribe = RMQ_SUBSCRIBE

    def depth(self, queue):
        out = subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "list_queues", "-q", "name", "messages"],
                             env=self.env, capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == queue:
                return int(parts[1])
        return None

    def restart(self):
        self.stop()
        self.start()

    def stop(self):
        if self.proc is None:
            return
        subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "stop"], env=self.env, capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, 9)  # the Erlang VM (the script's child), from its pid file
            self.proc.kill()
        self.proc = None


class Steward:
    def __init__(self, exe, tmp):
        self.exe = exe
        master, base, self.port = free_ports(3)
        self.base = base
        src, self.home = os.path.join(tmp, "src"), os.path.join(tmp, "home")
        domain = (f'[domain]\nname = "bench"\n\n[master]\nlisten = "127.0.0.1:{master}"\n\n'
                  f'[servers.s0]\nlisten = "127.0.0.1:{base}"\nrestart-policy = "manual"\n\n'
                  f'[servers.s0.messaging.listener]\naddress = "127.0.0.1"\nport = {self.port}\n\n'
                  # Room for what the producers may get ahead of the consumers, and the fill.
                  f'[servers.s0.messaging.queues.bench]\nmax-depth = 100000000\npersistent = true\n\n'
                  f'[servers.s0.messaging.queues.fill]\nmax-depth = 100000000\npersistent = true\n')
        self.procs, self.started = [], False
        self.args = (src, domain, master)

    def start(self):
        exe, (src, domain, master) = self.exe, self.args
        self.env, self.procs = start_domain(exe, src, self.home, domain, master)
        self.start_server()

    def start_server(self):
        r = subprocess.run([self.exe, "start-server", "--domain-home", self.home, "--server", "s0",
                            "--master-url", f"127.0.0.1:{self.args[2]}"], env=self.env, capture_output=True,
                           text=True)
        self.started = True
        if r.returncode != 0:
            sys.exit(f"start-server failed:\n{r.stdout}{r.stderr}")
        stomp_ready(self.port, "admin", "admin")
        self.pid = self.get("/v1/status")["pid"]
        if NICE:
            # Every thread: a nice value is per thread on Linux, and the server's are running.
            tids = os.listdir(f"/proc/{self.pid}/task")
            subprocess.run(["renice", "-n", "-10", "-p", *tids], check=True, stdout=subprocess.DEVNULL)
        self.login = ["--login", "admin", "--passcode", "admin"]
        self.subscribe = []
        self.workspace = os.path.join(self.home, "servers", "s0", ".workspace")

    def get(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.base}{path}", headers={"Authorization": AUTH})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def queue(self, name):
        return next(d for d in self.get("/v1/messaging")["destinations"] if d["destination"] == f"/queue/{name}")

    def depth(self, name):
        return self.queue(name)["depth"]

    def stop_server(self):
        if self.started:
            subprocess.run([self.exe, "stop-server", "--domain-home", self.home, "--server", "s0"], capture_output=True)
        self.started = False

    def restart(self):
        self.stop_server()
        self.start_server()

    def stop(self):
        self.stop_server()
        for p in self.procs:
            p.terminate()
            p.wait()


def load(exe, broker, mode, *args, dest="bench"):
    cmd = NICE + [exe, mode, "--port", str(broker.port), "--dest", f"/queue/{dest}", "--size", str(SIZE),
                  *broker.login, *args]
    for h in SEND_HEADERS:
        cmd += ["--send-header", h]
    for h in broker.subscribe:
        cmd += ["--subscribe-header", h]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"stomp_load {mode} against {type(broker).__name__} failed: {r.stderr}")
    return json.loads(r.stdout)


def throughput(exe, broker, producers=PRODUCERS):
    return load(exe, broker, "throughput", "--producers", str(producers), "--consumers", str(CONSUMERS),
                "--window", str(WINDOW), "--seconds", str(DURATION))


def latency(exe, broker):
    return load(exe, broker, "latency", "--rate", str(RATE), "--consumers", "1", "--seconds", str(DURATION))


def main():
    need_rabbitmq()
    exe, gen = build()
    if not NICE:
        print("not root: brokers and generator run at normal priority (nice -n -10 needs root)")
    tmp = tempfile.mkdtemp(prefix="steward-msg-bench-")
    # RabbitMQ starts Erlang's port mapper daemon when none runs; stopped at the end if so
    # (`epmd -kill` refuses while another node is registered).
    epmd_was_running = subprocess.run(["epmd", "-names"], capture_output=True).returncode == 0
    brokers = {}
    try:
        brokers["steward"] = Steward(exe, tmp)
        brokers["steward"].start()
        brokers["rabbitmq"] = RabbitMQ(tmp)
        brokers["rabbitmq"].start()
        v = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True, text=True)
        print(f"rabbitmq-server {v.stdout.strip()} (STOMP plugin), steward {exe}")
        print(f"load: {gen}; {SIZE} B messages, receipts on every SEND, {CONSUMERS} consumers "
              f"ack:client-individual; {'nice -n -10' if NICE else 'normal priority'}; machine: {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")

        # The generator is not the bottleneck: more producers do not raise RabbitMQ's figure,
        # and the generator's CPU stays below a core.
        print("\nsaturation check (RabbitMQ):")
        for p in (PRODUCERS, 2 * PRODUCERS):
            r = throughput(gen, brokers["rabbitmq"], p)
            print(f"  {p:2} producers: {r['receipted_per_s']:9.0f} msg/s receipted, {r['consumed_per_s']:9.0f} consumed, "
                  f"generator cpu {r['cpu']:.2f} core")

        results = {n: {"tput": [], "cons": [], "cpu": [], "p50": [], "p99": [], "max": []} for n in brokers}
        for i in range(RUNS):
            order = ["steward", "rabbitmq"] if i % 2 == 0 else ["rabbitmq", "steward"]
            for name in order:
                t = throughput(gen, brokers[name])
                l = latency(gen, brokers[name])
                res = results[name]
                res["tput"].append(t["receipted_per_s"])
                res["cons"].append(t["consumed_per_s"])
                res["cpu"].append(t["cpu"])
                for k in ("p50", "p99", "max"):
                    res[k].append(l[f"{k}_us"] / 1000)
                print(f"run {i + 1} {name:8}: {t['receipted_per_s']:8.0f} msg/s receipted, {t['consumed_per_s']:8.0f} consumed "
                      f"(generator cpu {t['cpu']:.2f}); at {RATE}/s p50 {l['p50_us'] / 1000:.2f} ms, "
                      f"p99 {l['p99_us'] / 1000:.2f} ms, max {l['max_us'] / 1000:.2f} ms ({l['samples']} samples)",
                      file=sys.stderr)

        # Memory holding FILL queued messages, each broker restarted first (so that what the
        # rounds left allocated does not count); and whether Steward's store took them.
        mem = {}
        ws_before = du(brokers["steward"].workspace)
        for name, b in brokers.items():
            b.restart()
            before = rss_kb(b.pid)
            f = load(gen, b, "fill", "--count", str(FILL), "--producers", str(PRODUCERS), "--consumers", "0",
                     "--window", str(WINDOW), dest="fill")
            mem[name] = (before, rss_kb(b.pid), b.depth("fill"), f["receipted_per_s"])
        ws_grew = du(brokers["steward"].workspace) - ws_before
        report = brokers["steward"].queue("fill")
        durable = ws_grew >= FILL * SIZE

        med = lambda xs: statistics.median(xs)
        s, r = results["steward"], results["rabbitmq"]
        print(f"\nmedians of {RUNS} runs ({DURATION:g} s windows; {PRODUCERS} producers, window {WINDOW}):")
        print(f"{'':10}{'msg/s receipted':>16}{'consumed':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}   (at {RATE} msg/s)")
        for name, x in (("steward", s), ("rabbitmq", r)):
            print(f"{name:10}{med(x['tput']):16.0f}{med(x['cons']):10.0f}{med(x['p50']):9.2f}{med(x['p99']):9.2f}{med(x['max']):9.2f}")
        print(f"{'ratio':10}{med(s['tput']) / med(r['tput']):16.2f}{med(s['cons']) / med(r['cons']):10.2f}"
              f"{med(s['p50']) / med(r['p50']):9.2f}{med(s['p99']) / med(r['p99']):9.2f}{'':9}   (steward / rabbitmq)")
        print(f"generator cpu during throughput: steward runs {', '.join(f'{c:.2f}' for c in s['cpu'])}; "
              f"rabbitmq runs {', '.join(f'{c:.2f}' for c in r['cpu'])} (cores)")
        print(f"\nresident memory holding {FILL} queued {SIZE} B messages (VmRSS):")
        for name, (before, after, depth, rate) in mem.items():
            print(f"  {name:9} {after / 1024:8.0f} MiB (before the fill {before / 1024:.0f} MiB; queue depth {depth}; "
                  f"filled at {rate:.0f} msg/s)")
        print(f"\nsteward's queue: GET /v1/messaging says persistent={report.get('persistent')}; its .workspace grew "
              f"{ws_grew / 1e6:.1f} MB while {FILL} messages ({FILL * SIZE / 1e6:.0f} MB of bodies) were queued")
        if durable:
            print("  -> the messages were written to the server's store: both brokers persist before the receipt")
        else:
            print("  -> NOT persistent in this build: Steward held the messages in memory only and sent each "
                  "receipt without a disk write, while RabbitMQ confirmed to disk. The figures are not like for like.")
    finally:
        for b in brokers.values():
            b.stop()
        if not epmd_was_running:
            subprocess.run(["epmd", "-kill"], capture_output=True)
        if os.environ.get("KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
