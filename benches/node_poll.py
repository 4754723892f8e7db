#!/usr/bin/env python3
"""Benchmark: the Master with many node agents (issue 14, item 4: measure first).

    python3 benches/node_poll.py [--nodes 200] [--per-node 5] [--window 10] [--orders 20]
                                 [--debug | --exe PATH]

Makes a domain of NODES declared nodes with PER-NODE servers each (the example's accounts),
runs its Master, and has every server report once (SHUTDOWN, as stopped servers leave it). Then:

1. the Master idle, no agent polling: CPU time (user+sys) over WINDOW seconds and resident memory;
2. NODES simulated agents (threads of this process, each long-polling
   `POST /v1/nodes/NAME/poll` on a new connection per poll, as `steward node` does): the same
   figures, beside the first;
3. ORDERS starts (`POST /v1/servers/NAME/start`): the time from the request to the order reaching
   the agent of the server's node, median and p90, beside the poll interval an agent without the
   long poll would wait up to.

The agents are simulated: they take orders and do not start anything (the end-to-end tests
start real servers through real agents).
"""
import argparse, base64, http.client, json, os, shutil, statistics, subprocess, sys, tempfile
import threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_pin import git_run, start_master, steward_exe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()
TICK = os.sysconf("SC_CLK_TCK")


def make_domain(path, nodes, per):
    os.makedirs(os.path.join(path, "security"))
    for f in ("accounts.toml", "policies.toml"):
        shutil.copy(os.path.join(ROOT, "examples/domain1/security", f),
                    os.path.join(path, "security", f))
    out = ['[domain]\nname = "wide"\n\n[master]\nnode = "m"\nlisten = "127.0.0.1:9736"\n'
           'heartbeat-interval = "2s"\nheartbeat-timeout = "10s"\n\n[nodes.m]\naddress = "127.0.0.1"\n']
    for n in range(nodes):
        out.append(f'[nodes.n{n:03}]\naddress = "10.0.{n // 250}.{n % 250 + 1}"\n')
        for k in range(per):
            out.append(f'[servers.s{n:03}_{k}]\nnode = "n{n:03}"\nlisten = "0.0.0.0:{20000 + 2 * k}"\n')
    with open(os.path.join(path, "domain.toml"), "w") as f:
        f.write("\n".join(out))
    git_run(path, "init", "-q", "-b", "main")
    git_run(path, "add", "-A")
    git_run(path, "commit", "-qm", "wide domain")


def request(port, method, path, body=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": AUTH}
    if body is not None or method == "POST":
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def cpu_and_rss(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return cpu, rss


def measure(pid, window):
    c0, _ = cpu_and_rss(pid)
    time.sleep(window)
    c1, rss = cpu_and_rss(pid)
    return (c1 - c0) / window * 100, rss / 1024


class Agents:
    def __init__(self, port, nodes):
        self.port, self.stop = port, False
        self.got = {}  # server -> time the order arrived
        self.polls = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(f"n{n:03}",), daemon=True)
                        for n in range(nodes)]
        for t in self.threads:
            t.start()

    def run(self, node):
        report = json.dumps({"pid": os.getpid(), "started_at": "2026-01-01T00:00:00Z",
                             "commit": None, "servers": [], "wait_ms": 2000})
        while not self.stop:
            try:
                status, data = request(self.port, "POST", f"/v1/nodes/{node}/poll", report)
            except OSError:
                time.sleep(0.5)
                continue
            now = time.perf_counter()
            if status != 200:
                time.sleep(0.5)
                continue
            with self.lock:
                self.polls += 1
                for o in json.loads(data)["orders"]:
                    self.got[o["server"]] = now


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--per-node", type=int, default=5)
    p.add_argument("--window", type=float, default=10)
    p.add_argument("--orders", type=int, default=20)
    p.add_argument("--exe")
    p.add_argument("--debug", action="store_true", help="use the dev build (not for figures)")
    a = p.parse_args()
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-nodepoll-")
    master = None
    try:
        src = os.path.join(tmp, "src")
        make_domain(src, a.nodes, a.per_node)
        _, port, master = start_master(exe, src, tmp, subprocess.DEVNULL)
        for n in range(a.nodes):
            for k in range(a.per_node):
                s = f"s{n:03}_{k}"
                body = json.dumps({"name": s, "state": "SHUTDOWN", "mode": "DEPENDENT"})
                status, data = request(port, "POST", f"/v1/servers/{s}/heartbeat", body)
                if status != 200:
                    sys.exit(f"heartbeat {s}: {status} {data[:200]!r}")
        servers = a.nodes * a.per_node
        idle_cpu, idle_rss = measure(master.pid, a.window)
        agents = Agents(port, a.nodes)
        time.sleep(3)  # every agent polled once (the first password check of each connection)
        polls0 = agents.polls
        busy_cpu, busy_rss = measure(master.pid, a.window)
        rate = (agents.polls - polls0) / a.window
        lat = []
        for i in range(a.orders):
            n = (i * 37) % a.nodes
            server = f"s{n:03}_{i % a.per_node}"
            t0 = time.perf_counter()
            status, data = request(port, "POST", f"/v1/servers/{server}/start")
            if status != 202:
                sys.exit(f"start {server}: {status} {data[:300]!r}")
            deadline = t0 + 10
            while server not in agents.got and time.perf_counter() < deadline:
                time.sleep(0.0005)
            if server not in agents.got:
                sys.exit(f"the order for {server} never reached its agent")
            lat.append((agents.got[server] - t0) * 1000)
        agents.stop = True
        lat.sort()
        print(f"Master with {a.nodes} nodes x {a.per_node} servers ({servers} servers), "
              f"{a.window:.0f} s windows, {'debug' if a.debug else 'release'} build")
        print(f"  {'':34} {'CPU %':>8} {'RSS MiB':>8}")
        print(f"  {'idle, no agent':34} {idle_cpu:8.1f} {idle_rss:8.1f}")
        print(f"  {f'{a.nodes} agents long-polling':34} {busy_cpu:8.1f} {busy_rss:8.1f}"
              f"   ({rate:.0f} polls/s)")
        print(f"  order -> its agent, {a.orders} starts: median {statistics.median(lat):.1f} ms, "
              f"p90 {lat[int(len(lat) * 0.9) - 1]:.1f} ms "
              f"(a plain poll every heartbeat-interval: up to 2000 ms)")
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
